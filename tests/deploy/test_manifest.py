"""The typed manifest: the one reader of the JSON keys, and what it refuses.

These tests build manifests in memory (no compilation), so they can afford to try every
field and many hostile variations: a manifest is hostile until checked."""

import dataclasses
import json
import os
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploy import DeployError
from deploy.files import read_npy, write_npy
from deploy.manifest import (
    DecisionAccuracy,
    FileEntry,
    Footprint,
    GoldenCase,
    Manifest,
    ManifestError,
    McuFootprint,
    McuKernel,
    McuReport,
    McuSample,
    McuSpeed,
    ModelInfo,
    Parity,
    PartFit,
    Quantization,
    Saturation,
    Schedule,
    StreamFacts,
    TargetInfo,
    TaskAccuracy,
    TensorInfo,
    Verdict,
)

SHA = "ab" * 32


def sample() -> Manifest:
    files = {
        rel: FileEntry(SHA, 10)
        for rel in ("model.so", "model.onnx", "golden/ecg.input.npy", "golden/ecg.output.npy")
    }
    return Manifest(
        name="cpsc2019-1lead",
        target=TargetInfo(
            "x86_64", {"kind": "llvm"}, None, "x86_64", "cpu", "native", None, ["avx2"], None
        ),
        model=ModelInfo("cpsc2019", "seeded", {"groups": 1}, 1, 100, 1984, ["ECG"]),
        leads=["ECG"],
        lead_indices=[0],
        fs=500,
        input=TensorInfo("ecg", (1, 1, 512), "float32", "batch, leads, samples"),
        output=TensorInfo("features", (1, 192, 64), "float32", "batch, channels, frames"),
        golden=[GoldenCase("ecg", "golden/ecg.input.npy", "golden/ecg.output.npy")],
        schedule=Schedule("mscnn conv schedule", {"vec": 8}, None),
        footprint=Footprint(10, 4, 8, 2),
        parity=Parity(1e-5, Verdict(True, 1e-7, 1e-7, 1e-5, ""), Verdict.not_run("not run"), None),
        tools={"torch": "2.13.0"},
        files=files,
    )


def as_dict() -> dict:
    return json.loads(sample().to_json())


def parse(data) -> Manifest:
    text = data if isinstance(data, str | bytes) else json.dumps(data)
    return Manifest.from_json(text, "manifest.json")


def int8_sample() -> Manifest:
    return dataclasses.replace(
        sample(),
        precision="int8",
        quantization=Quantization(
            "avx512vnni", "int16", "percentile", [0, 1], 100, 400, 180,
            [Saturation("branch_0.block_0.ca_0", 3, 1000)], 2.0, 0.5, 0.05,
            TaskAccuracy([2, 3], 0.9, 0.98, 0.89, 0.975),
        ),
    )  # fmt: skip


def test_round_trip():
    for m in (sample(), int8_sample()):
        assert Manifest.from_json(m.to_json()) == m
        assert parse(json.loads(m.to_json())).to_json() == m.to_json()
    fp16 = dataclasses.replace(sample(), precision="fp16")
    assert Manifest.from_json(fp16.to_json()) == fp16 and fp16.tolerance_kind == "fp16"
    assert sample().tolerance_kind == "cpu" and int8_sample().tolerance_kind == "int8"
    assert parse(as_dict()).precision == "fp32" and '"precision": "fp32"' in sample().to_json()


QUANTIZATION_REQUIRED = [
    k
    for k in json.loads(int8_sample().to_json())["quantization"]
    if k not in ("accuracy", "decisions")
]


def test_a_classifiers_decisions_round_trip_and_are_checked():
    decisions = DecisionAccuracy([25, 26], 16, 15, 0.2, 0.1)
    base = int8_sample()
    m = dataclasses.replace(
        base, quantization=dataclasses.replace(base.quantization, decisions=decisions)
    )
    assert Manifest.from_json(m.to_json()) == m
    data = json.loads(m.to_json())
    data["quantization"]["decisions"]["agreed"] = 17
    with pytest.raises(ManifestError, match="agreed 17 of 16"):
        parse(data)
    data["quantization"]["decisions"].pop("records")
    with pytest.raises(ManifestError, match="lacks 'quantization.decisions.records'"):
        parse(data)


@pytest.mark.parametrize("key", QUANTIZATION_REQUIRED)
def test_each_quantization_field(key):
    data = json.loads(int8_sample().to_json())
    data["quantization"].pop(key)
    with pytest.raises(ManifestError, match=re.escape(f"lacks 'quantization.{key}'")):
        parse(data)


# Every field a reader relies on, written out: removing any of them must be refused, and
# removing anything else must not be (optional fields and opaque objects).
REQUIRED = {
    "name",
    "target",
    "target.name",
    "target.tvm",
    "target.arch",
    "target.device",
    "target.run",
    "target.cpu_flags",
    "model",
    "model.source",
    "model.config",
    "model.in_channels",
    "model.num_parameters",
    "model.receptive_field",
    "model.variant_of",
    "model.task",
    "model.classes",
    "leads",
    "lead_indices",
    "fs",
    "input",
    "input.name",
    "input.shape",
    "input.dtype",
    "input.layout",
    "output",
    "output.name",
    "output.shape",
    "output.dtype",
    "output.layout",
    "golden",
    "schedule",
    "schedule.kind",
    "footprint",
    "footprint.library_bytes",
    "parity",
    "parity.tolerance",
    "parity.onnxruntime",
    "parity.tvm",
    "tools",
    "files",
}
OPAQUE = {"target.tvm", "model.config", "schedule.tile", "tools", "files"}


def _paths(data: dict, prefix: str = ""):
    for key, value in data.items():
        path = f"{prefix}{key}"
        if path in ("schema", "schema_version"):
            continue
        yield path
        if isinstance(value, dict) and path not in OPAQUE and not path.startswith("parity."):
            yield from _paths(value, path + ".")


@pytest.mark.parametrize("path", sorted(set(_paths(as_dict())) | REQUIRED))
def test_each_required_field(path):
    data = as_dict()
    *parents, key = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    node.pop(key)
    if path in REQUIRED:
        with pytest.raises(ManifestError, match=re.escape(f"lacks '{path}'")):
            parse(data)
    else:
        parse(data)  # optional: still a valid manifest


def _edit(fn):
    data = as_dict()
    fn(data)
    return json.dumps(data)


HOSTILE = {
    "duplicate key": ('{"schema": "mscnn-edge/bundle", "schema": "x"}', "duplicate key"),
    "NaN literal": (
        _edit(lambda d: d.update(fs=1)).replace('"fs": 1', '"fs": NaN'),
        "NaN is not a JSON number",
    ),
    "5000 digits": (
        _edit(lambda d: d.update(fs=1)).replace('"fs": 1', '"fs": ' + "9" * 5000),
        "integer of 5000 digits",
    ),
    "deep nesting": ("[" * 100000 + "]" * 100000, "nests too deeply"),
    "version 1.0": (_edit(lambda d: d.update(schema_version=1.0)), "schema version 1.0"),
    "version true": (_edit(lambda d: d.update(schema_version=True)), "schema version True"),
    "fs string": (_edit(lambda d: d.update(fs="500")), "'fs' must be an integer"),
    "shape 2-D": (_edit(lambda d: d["input"].update(shape=[1, 512])), "3 positive sizes"),
    "shape not list": (_edit(lambda d: d["input"].update(shape="1,1,512")), "list of integers"),
    "shape zero": (_edit(lambda d: d["input"].update(shape=[1, 0, 512])), "integers >= 1"),
    "shape huge": (
        _edit(lambda d: d["input"].update(shape=[10**9, 10**9, 10**9])),
        "3 positive sizes",
    ),
    "golden empty": (_edit(lambda d: d.update(golden=[])), "must be a list \\(not empty\\)"),
    "golden not list": (_edit(lambda d: d.update(golden={})), "'golden' must be a list"),
    "golden no name": (_edit(lambda d: d["golden"][0].pop("name")), "lacks 'golden\\[0\\].name'"),
    "golden twice": (_edit(lambda d: d["golden"].append(d["golden"][0])), "unique"),
    "target not object": (_edit(lambda d: d.update(target="x86_64")), "'target' must be an"),
    "unknown device": (_edit(lambda d: d["target"].update(device="tpu")), "one of cpu, cuda"),
    "NUL in files key": (
        _edit(lambda d: d["files"].update({"a\0b": {"sha256": SHA, "bytes": 1}})),
        "not a path inside the bundle",
    ),
    "lone surrogate": (
        '{"files": {"\\ud800": 1}, "schema": "mscnn-edge/bundle", "schema_version": 2}',
        "not a path inside the bundle",
    ),
    "parent path": (
        _edit(lambda d: d["files"].update({"../x": {"sha256": SHA, "bytes": 1}})),
        "not a path inside the bundle",
    ),
    "absolute path": (
        _edit(lambda d: d["files"].update({"/etc/passwd": {"sha256": SHA, "bytes": 1}})),
        "not a path inside the bundle",
    ),
    "bad sha": (_edit(lambda d: d["files"]["model.so"].update(sha256="0")), "64 lower-case hex"),
    "negative size": (_edit(lambda d: d["files"]["model.so"].update(bytes=-1)), "integer >= 0"),
    "newline in name": (
        _edit(lambda d: d.update(name="x\nerror: forged")),
        "without control characters, got x\\\\nerror",
    ),
    "leads mismatch": (_edit(lambda d: d.update(leads=["I", "II"])), "one index per lead"),
    "precision bf16": (_edit(lambda d: d.update(precision="bf16")), "one of fp32, int8, fp16"),
    "fp16 quantized": (
        int8_sample().to_json().replace('"precision": "int8"', '"precision": "fp16"'),
        "present exactly when precision is int8",
    ),
    "int8 unquantized": (
        _edit(lambda d: d.update(precision="int8")),
        "present exactly when precision is int8",
    ),
    "fp32 quantized": (
        int8_sample().to_json().replace('"precision": "int8"', '"precision": "fp32"'),
        "present exactly when precision is int8",
    ),
    "int8 NaN error": (
        int8_sample().to_json().replace('"fp32_max_abs": 2.0', '"fp32_max_abs": "x"'),
        "'quantization.fp32_max_abs' must be a finite number",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_manifests_are_one_clear_line(case):
    text, message = HOSTILE[case]
    with pytest.raises(ManifestError, match=message) as caught:
        parse(text)
    assert "\n" not in str(caught.value)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_manifests_never_crash(data):
    """Byte flips, cuts and splices of a valid manifest: parsed or refused, nothing else."""
    text = bytearray(sample().to_json().encode())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "dup"]))
        if op == "flip":
            text[at] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del text[at : at + data.draw(st.integers(1, 40))]
        else:
            text[at:at] = text[at : at + data.draw(st.integers(1, 40))]
    try:
        Manifest.from_json(bytes(text))
    except ManifestError as exc:
        assert "\n" not in str(exc)


# --------------------------------------------------------------------------------------
# .npy files from outside


def _npy(tmp_path, header: dict, data: bytes, name="x.npy") -> os.PathLike:
    text = repr(header).encode()
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    path = tmp_path / name
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data)
    return path


NPY = {
    "header length lies": lambda p: p.write_bytes(b"\x93NUMPY\x01\x00\xff\xff{'descr'"),
    "10^12 elements in 20 KB": lambda p: _npy(
        p.parent,
        {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)},
        b"\0" * 20000,
        p.name,
    ),
    "20-digit dimension": lambda p: _npy(
        p.parent, {"descr": "<f4", "fortran_order": False, "shape": (10**19,)}, b"\0" * 16, p.name
    ),
    "trailing bytes": lambda p: _npy(
        p.parent, {"descr": "<f4", "fortran_order": False, "shape": (2,)}, b"\0" * 12, p.name
    ),
    "object dtype": lambda p: _npy(
        p.parent, {"descr": "|O", "fortran_order": False, "shape": (1,)}, b"\0" * 8, p.name
    ),
    "not npy": lambda p: p.write_bytes(b"hello"),
}


@pytest.mark.parametrize("case", list(NPY))
def test_hostile_npy_is_one_clear_line(tmp_path, case):
    path = tmp_path / "x.npy"
    NPY[case](path)
    with pytest.raises(DeployError) as caught:
        read_npy(path)
    assert "\n" not in str(caught.value)


def test_npy_reader_reads_what_numpy_writes(tmp_path):
    for array in (
        np.arange(12, dtype="<f4").reshape(3, 4),
        np.zeros((2, 0, 3), "<f4"),
        np.asfortranarray(np.ones((2, 3), "<f8")),
    ):
        np.save(tmp_path / "a.npy", array)
        got = read_npy(tmp_path / "a.npy")
        assert got.dtype == array.dtype and np.array_equal(got, array)


def test_a_fifo_or_device_is_not_read(tmp_path):
    fifo = tmp_path / "fifo.npy"
    os.mkfifo(fifo)
    with pytest.raises(DeployError, match="not a regular file"):
        read_npy(fifo)  # returns at once: no writer is waited for
    with pytest.raises(DeployError, match="not a regular file"):
        read_npy("/dev/zero")


def test_write_npy_never_writes_through_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / f".y.npy.partial-{os.getpid()}").symlink_to(victim)
    with pytest.raises(FileExistsError):
        write_npy(tmp_path / "y.npy", np.zeros(3, "<f4"))
    assert victim.read_text() == "precious"
    assert not (tmp_path / "y.npy").exists()


def test_manifest_keys_are_read_in_one_module():
    """No module outside deploy/manifest.py indexes a manifest by string key."""
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    pattern = re.compile(r"manifest\s*(\[\s*[\"']|\.get\()")
    offenders = [
        str(p.relative_to(root))
        for pkg in ("mscnn", "compile", "deploy")
        for p in (root / pkg).rglob("*.py")
        if p.name != "manifest.py" and pattern.search(p.read_text())
    ]
    assert offenders == []
    assert pattern.search('m = manifest["files"]')  # the pattern does see such code


def test_setting_tvm_threads_leaves_this_threads_cpus():
    """TVM's pool configuration pins the calling thread; set_threads gives its CPUs
    back, so runtimes started afterwards (ONNX Runtime, PyTorch) are not confined."""
    from deploy.predictor import set_threads

    before = os.sched_getaffinity(0)
    set_threads(max(1, len(before)))
    assert os.sched_getaffinity(0) == before


def test_set_threads_gives_tvm_as_many_workers_as_asked():
    """TVM's pool must run what set_threads asks for: its "big cores first" mode ran one
    worker for two on VMs whose cores report no frequency, silently."""
    from deploy.predictor import set_threads, tvm_threads

    cpus = len(os.sched_getaffinity(0))
    for threads in sorted({1, min(2, cpus), cpus}):
        set_threads(threads)
        assert tvm_threads() == threads


# -- the Cortex-M report (mcu.json) ------------------------------------------------------


def mcu_sample(**changes) -> McuReport:
    report = McuReport(
        board="mps2-an500",
        core="cortex-m7",
        precision="int8",
        weights="int16",
        samples=5000,
        hop=200,
        stream=StreamFacts(200, 6, 124, 988, 39292),
        footprint=McuFootprint(430396, 532928, 156800, 200, 16384, 1340),
        speed=McuSpeed(20787293, 0.4, 480_000_000, 20816161),
        parity=Verdict(True, 0.0, 0.0, 0.0, "", "qemu-system-arm -M mps2-an500"),
        beats_equal=True,
        fits={"stm32h7": PartFit(True, 0.459, 0.165), "nrf52840": PartFit(True, 0.919, 0.661)},
    )
    return dataclasses.replace(report, **changes)


def test_mcu_report_round_trips_with_its_derived_figures():
    r = mcu_sample()
    assert McuReport.from_json(r.to_json()) == r
    data = json.loads(r.to_json())
    assert data["footprint"]["flash"] == 430396 + 532928 and data["footprint"]["ram"] == 173384
    assert data["speed"]["cpu_load"] == pytest.approx(20787293 / 0.4 / 480e6)
    fp32 = mcu_sample(precision="fp32", weights=None, hop=None, stream=None, beats_equal=None)
    assert McuReport.from_json(fp32.to_json()) == fp32
    assert McuReport.from_json(mcu_sample(fs=500).to_json()).fs == 500


def test_mcu_report_carries_the_sensors_rate():
    """compile mcu --input-fs: the rate the firmware takes; older reports read as None."""
    data = json.loads(mcu_sample(fs=500, input_fs=250).to_json())
    assert data["input_fs"] == 250 and McuReport.from_json(json.dumps(data)).input_fs == 250
    del data["input_fs"]
    assert McuReport.from_json(json.dumps(data)).input_fs is None
    data["input_fs"] = 0
    with pytest.raises(ManifestError, match="input_fs"):
        McuReport.from_json(json.dumps(data))


def test_mcu_report_carries_regions_the_rate_and_the_sample_and_reads_older_ones():
    fit = PartFit(False, 0.541, 0.627, "AXI_SRAM", 524288, 1.18, "the arena needs 604.1 KiB")
    r = mcu_sample(
        fits={"stm32h7": fit},
        fs=500,
        firmware_beats_equal=True,
        sample=McuSample("record-data_00014", 5000, (272, 648, 1024)),
    )
    assert McuReport.from_json(r.to_json()) == r
    data = json.loads(r.to_json())
    assert data["fits"]["stm32h7"]["arena_region"] == "AXI_SRAM" and data["fs"] == 500
    assert data["sample"]["beats"] == [272, 648, 1024]
    # a report from before regions, rate and sample: the new fields read as None
    for key in ("fs", "firmware_beats_equal", "sample"):
        del data[key]
    data["fits"]["stm32h7"] = {"fits": True, "flash_used": 0.5, "ram_used": 0.6}
    old = McuReport.from_json(json.dumps(data))
    assert old.fs is None and old.sample is None and old.firmware_beats_equal is None
    assert old.fits["stm32h7"] == PartFit(True, 0.5, 0.6)
    data["sample"] = {"record": "r", "samples": 10, "beats": [1, -2]}
    with pytest.raises(ManifestError, match="'sample.beats' must be a list of sample indices"):
        McuReport.from_json(json.dumps(data))


def test_mcu_report_carries_the_profile_and_the_cycle_estimate_and_reads_older_ones(
    tmp_path, capsys
):
    from deploy.cli import main

    speed = McuSpeed(20787293, 0.4, 480_000_000, 20816161, 15_000_000, "llvm-mca, cortex-m7")
    profile = (
        McuKernel(0, "quantize", 1000, None, 1.0),
        McuKernel(1, "branch0_op1_conv", 3_000_000, 2_000_000, 0.7),
        McuKernel(2, "clf_lin0", 1_500_000, 1_000_000, None),
        McuKernel(3, "branch0_op2_pool", 2_000_000, None, 0.8),
        McuKernel(4, "branch0_op3_conv", 500_000, 250_000, 0.9),
    )
    r = mcu_sample(speed=speed, profile=profile)
    assert McuReport.from_json(r.to_json()) == r
    data = json.loads(r.to_json())
    assert data["macs"] == 3_250_000 and data["profile"][1]["instructions_per_mac"] == 1.5
    assert data["speed"]["cycle_load"] == pytest.approx(15e6 / 0.4 / 480e6)
    (tmp_path / "mcu.json").write_text(r.to_json())
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "5 kernel calls per step, 3.25 M MACs, 6.40 instructions/MAC" in out
    assert "cycles   37.5 M per s of ECG, 7.8% at 480 MHz (estimate: llvm-mca" in out
    shown = [line.split(":")[0].strip() for line in out.splitlines() if "M instructions (" in line]
    assert shown == ["branch0_op1_conv", "branch0_op2_pool", "clf_lin0"]  # the costliest 3
    for key in ("profile", "macs"):
        del data[key]
    for key in ("cycles", "cycle_method", "cycle_load"):
        del data["speed"][key]
    old = McuReport.from_json(json.dumps(data))
    assert old.profile is None and old.speed.cycles is None and old.speed.cycle_load is None
    data["profile"] = [{"call": 0, "kernel": "k", "instructions": -1}]
    with pytest.raises(ManifestError, match="'profile\\[0\\].instructions' must be"):
        McuReport.from_json(json.dumps(data))


def _mcu_data(edit):
    data = json.loads(mcu_sample().to_json())
    edit(data)
    return json.dumps(data)


MCU_HOSTILE = {
    "schema": (lambda d: d.update(schema="mscnn-edge/bundle"), "deploy reads mscnn-edge/mcu"),
    "version": (lambda d: d.update(schema_version=7), "version 7; deploy reads"),
    "precision": (lambda d: d.update(precision="int4"), "'precision' must be one of fp32, int8"),
    "fp32 weights": (lambda d: d.update(precision="fp32"), "'weights' must be given exactly"),
    "hop": (lambda d: d.update(stream=None), "'stream' must be present exactly when hop is"),
    "seconds": (lambda d: d["speed"].update(window_seconds=0), "a positive number"),
    "negative": (lambda d: d["footprint"].update(ram_arena=-1), "'footprint.ram_arena'"),
    "fit": (lambda d: d["fits"]["stm32h7"].update(fits="yes"), "'fits.stm32h7.fits'"),
    "missing": (lambda d: d.pop("board"), "lacks 'board'"),
}


def test_info_on_a_cortex_m_build_is_readable(tmp_path, capsys):
    """Figures at 3 significant digits, not a float's repr; the rate where the report
    gives it (older reports do not: no line then)."""
    from deploy.cli import main

    parity = Verdict(True, 4.6734427952297546e-07, 1.2e-06, 1e-05, "", "qemu-system-arm")
    (tmp_path / "mcu.json").write_text(mcu_sample(parity=parity, fs=500).to_json())
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "normalised error 4.67e-07 (tolerance 1e-05)" in out and "4.6734" not in out
    assert "rate    500 Hz (5000 samples = 10 s)" in out
    data = json.loads(mcu_sample(parity=parity).to_json())
    del data["fs"]
    (tmp_path / "mcu.json").write_text(json.dumps(data))
    assert main(["info", str(tmp_path)]) == 0
    assert "rate" not in capsys.readouterr().out


@pytest.mark.parametrize("case", list(MCU_HOSTILE))
def test_hostile_mcu_reports_are_one_clear_line(case):
    edit, message = MCU_HOSTILE[case]
    with pytest.raises(ManifestError, match=message) as caught:
        McuReport.from_json(_mcu_data(edit))
    assert "\n" not in str(caught.value)
    assert McuReport.from_json(_mcu_data(lambda d: None)) == mcu_sample()


def test_info_says_why_a_part_does_not_fit(tmp_path, capsys):
    from deploy.cli import main

    why = "the arena needs 604.1 KiB in one block, AXI_SRAM holds 512.0 KiB"
    report = dataclasses.replace(
        mcu_sample(),
        fits={"stm32h7": PartFit(False, 0.541, 0.627, "AXI_SRAM", 524288, 1.18, why),
              "nrf52840": PartFit(True, 0.919, 0.661)},
    )  # fmt: skip
    (tmp_path / "mcu.json").write_text(report.to_json())
    assert main(["info", str(tmp_path)]) == 0
    assert f"stm32h7: no ({why}); nrf52840: yes" in capsys.readouterr().out
