"""The energy estimate of a Cortex-M build (deploy.manifest.McuEnergy, filled by
compile.mcu.firmware.energy_of from the part's boards.PowerFigure): its arithmetic as
properties, the part table's provenance, and the report's round trip through JSON.
No toolchain, no build: each test runs in well under a second."""

import dataclasses
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compile.mcu.boards import PARTS, PowerFigure
from compile.mcu.firmware import energy_of
from deploy.manifest import (
    ManifestError,
    McuEnergy,
    McuFootprint,
    McuReport,
    McuSpeed,
    Verdict,
)

cycles_per_s = st.floats(1e3, 5e9)
clocks = st.integers(1_000_000, 1_000_000_000)
ua_per_mhz = st.floats(1.0, 1000.0)
volts = st.floats(0.6, 5.0)
sleep = st.floats(0.0, 5000.0)


def _energy(cycles, clock, active, supply, sleep_ua=None) -> McuEnergy:
    return McuEnergy("p", clock, cycles, "llvm-mca", active, supply, sleep_ua, "doc", True, "ok")


@given(cycles_per_s, clocks, ua_per_mhz, volts, sleep)
def test_energy_is_current_times_voltage_times_the_time_awake(cycles, clock, active, v, s):
    """Physics, computed apart: the core is awake cycles/clock seconds of each second,
    drawing (µA/MHz x MHz) µA at V volts; asleep the rest, at the sleep current."""
    e = _energy(cycles, clock, active, v, s)
    awake_s = cycles / clock
    current_ua = active * clock / 1e6
    assert math.isclose(e.active_uj_per_second, current_ua * v * awake_s, rel_tol=1e-9)
    assert math.isclose(e.load, awake_s, rel_tol=1e-12)
    if awake_s <= 1:
        assert math.isclose(e.sleep_share + e.load, 1.0, rel_tol=1e-9)
        asleep_uj = s * v * (1 - awake_s)
        assert math.isclose(e.average_uw, e.active_uj_per_second + asleep_uj, rel_tol=1e-9)
    else:  # it cannot keep up: no sleep, and the work's energy is all there is
        assert e.sleep_share == 0.0 and e.average_uw == e.active_uj_per_second
    assert e.average_uw >= e.active_uj_per_second


@given(cycles_per_s, clocks, ua_per_mhz, volts, st.integers(2, 8))
def test_a_faster_clock_costs_no_energy_but_sleeps_longer(cycles, clock, active, v, k):
    """With a current proportional to the clock, the same cycles cost the same energy at
    any clock; only the share of the second the core is awake changes."""
    slow, fast = _energy(cycles, clock, active, v), _energy(cycles, clock * k, active, v)
    assert math.isclose(slow.active_uj_per_second, fast.active_uj_per_second, rel_tol=1e-9)
    assert math.isclose(slow.load, k * fast.load, rel_tol=1e-9)
    assert fast.sleep_share >= slow.sleep_share


@given(st.integers(1, 10**9), st.one_of(st.none(), st.integers(1, 10**9)), st.floats(0.01, 10))
def test_energy_of_takes_the_cycle_estimate_else_the_instructions(instructions, cycles, s):
    part = PARTS["nrf52840"]
    speed = McuSpeed(instructions, s, part.clock_hz, cycles=cycles)
    e = energy_of(speed, part)
    want = (cycles if cycles is not None else instructions) / s
    assert math.isclose(e.cycles_per_second, want, rel_tol=1e-12)
    assert e.cycles_from == ("llvm-mca" if cycles is not None else "instructions")
    assert (e.part, e.clock_hz, e.source) == (part.name, part.clock_hz, part.power.source)
    assert e.active_ua_per_mhz == part.power.active_ua_per_mhz and not e.confirmed


@pytest.mark.parametrize("name", list(PARTS))
def test_every_part_names_its_figures_source_and_whether_it_was_confirmed(name):
    """A figure comes with its document and table; one not read as published says so in
    its provenance; a part without a confirmed current estimates no energy."""
    power = PARTS[name].power
    assert isinstance(power, PowerFigure) and power.source and power.provenance
    if power.confirmed:
        assert None not in (power.active_ua_per_mhz, power.supply_v)
    else:
        assert "not confirmed" in power.provenance or "upper bound" in power.provenance
    if power.active_ua_per_mhz is None:
        speed = McuSpeed(10**7, 1.0, PARTS[name].clock_hz, cycles=10**7)
        assert energy_of(speed, PARTS[name]).active_uj_per_second is None


def _report(energy: McuEnergy | None) -> McuReport:
    return McuReport(
        "mps2-an386", "cortex-m4", "fp32", None, 2400, None, None,
        McuFootprint(1, 2, 3, 4, 5), McuSpeed(10, 0.4, 64_000_000, cycles=12),
        Verdict(True, 0.0), None, {}, energy=energy,
    )  # fmt: skip


def test_the_report_carries_the_energy_through_json_and_refuses_a_bad_one():
    energy = energy_of(McuSpeed(10**7, 0.4, 64_000_000, cycles=2 * 10**7), PARTS["nrf52840"])
    text = _report(energy).to_json()
    written = json.loads(text)["energy"]
    assert math.isclose(written["active_uj_per_second"], energy.active_uj_per_second)
    assert math.isclose(written["load"], 5e7 / 64e6) and written["provenance"]
    assert McuReport.from_json(text).energy == energy
    assert McuReport.from_json(_report(None).to_json()).energy is None
    bad = json.loads(text)
    bad["energy"]["cycles_per_second"] = -1.0
    with pytest.raises(ManifestError, match="energy.cycles_per_second' must be a number >= 0"):
        McuReport.from_json(json.dumps(bad))
    bad["energy"]["cycles_per_second"], bad["energy"]["supply_v"] = 1.0, -3.0
    with pytest.raises(ManifestError, match="energy.supply_v' must be a number >= 0"):
        McuReport.from_json(json.dumps(bad))
    older = json.loads(text)
    del older["energy"]  # a report from before the estimate
    assert McuReport.from_json(json.dumps(older)).energy is None
    assert dataclasses.replace(energy, sleep_ua=None).average_uw is None
