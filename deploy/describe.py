"""What `deploy info` and package READMEs say about a bundle, from its manifest only (or
about a Cortex-M build, from its report)."""

from __future__ import annotations

from pathlib import Path

from .bundle import LIBRARY, MANIFEST, Bundle
from .errors import DeployError
from .files import open_inside, read_capped, show
from .manifest import MAX_MANIFEST_BYTES, ManifestError, McuReport
from .signing import describe_signature

# What a bundle's output means, by the manifest's task: the output tensor's name alone
# ("features" for every window model) says nothing of it.
TASK_MEANING = {
    "features": "backbone features, no task head",
    "qrs_detection": "R-peak detector, one logit per frame",
    "classification": "classifier, one logit per class",
}


def describe(bundle: Bundle) -> list[tuple[str, str]]:
    """(field, text) lines describing a verified bundle; nothing is loaded. A detector
    shows its R-peak rule, a stream bundle its step, since both decide what a run gives."""
    m = bundle.manifest
    runs, why = bundle.runnable_here()
    shape = {t: f"{t.name} {t.shape} {t.dtype}: {t.layout}" for t in (m.input, m.output)}
    lines = [
        ("bundle", f"{bundle.name} ({bundle.path})"),
        ("target", f"{m.target.name} ({m.target.arch}, {m.target.device})"),
        ("model", f"{m.model.preset} — {m.model.source}"),
        ("task", _task(m.model)),
        ("leads", ", ".join(m.leads) + f" at {m.fs} Hz"),
        ("input", shape[m.input]),
        ("output", shape[m.output]),
        ("library", f"{m.files[LIBRARY].bytes / 1024:.0f} KiB, sha256 verified"),
        ("signature", _signature(bundle)),
        ("runs here", "yes" if runs else f"no: {why}"),
    ]
    if m.stream is not None:
        lines.insert(7, ("stream", _stream(m.stream, m.fs)))
    if m.detect is not None:
        lines.insert(7, ("R-peaks", _rule(m.detect)))
    if m.quantization is not None:
        lines.insert(5, ("precision", _precision(m.quantization)))
    return lines


def _signature(bundle: Bundle) -> str:
    """Signed or not, by which key (fingerprint), and whether it verifies."""
    if bundle.signer is not None:  # load_bundle checked it against the trusted key
        return f"signed by ed25519 key {bundle.signer}, verified: the trusted key"
    with open_inside(bundle.path, MANIFEST) as fd:
        data = read_capped(fd, MAX_MANIFEST_BYTES, MANIFEST)
    return describe_signature(bundle.path, data)


def _task(model) -> str:
    head = f" ({model.head})" if model.head is not None else ""
    text = f"{model.task}{head}: {TASK_MEANING.get(model.task, 'see the manifest')}"
    return text + (f"; classes {', '.join(model.classes)}" if model.classes else "")


def _rule(rule) -> str:
    return (
        f"a frame ({rule.reduction} samples) is positive when sigmoid(logit) > "
        f"{rule.threshold:g}; each run of positive frames is one beat; beats closer than "
        f"{rule.min_rr_ms} ms are one (the stronger kept); none within {rule.edge_ms} ms of "
        f"the record's ends; at {rule.fs} Hz"
    )


def _stream(info, fs: int) -> str:
    ms = 1000 / fs
    return (
        f"hop {info.hop} samples ({info.hop * ms:.0f} ms), look-ahead {info.look_ahead} "
        f"samples ({info.look_ahead * ms:.0f} ms), state {info.state_bytes / 1024:.1f} KiB in "
        f"{len(info.states)} tensors, flush {info.flush_steps} steps at most"
    )


def _precision(q) -> str:
    text = (
        f"int8 ({q.isa} kernels, {q.input_dtype} input), weights {q.weights_bytes / 1024:.0f} "
        f"KiB (fp32: {q.fp32_weights_bytes / 1024:.0f} KiB); vs fp32: median normalised "
        f"error {q.fp32_median_normalised:.3g}"
    )
    if q.decisions is not None:
        d = q.decisions
        text += (
            f"; held-out decisions {d.agreed}/{d.decisions} as fp32, logits' normalised "
            f"error {d.normalised:.3g}"
        )
    if q.accuracy is not None:
        a = q.accuracy
        text += (
            f"; held-out score {a.int8_score:.3f} (fp32 {a.fp32_score:.3f}), F1 "
            f"{100 * a.int8_f1:.2f} (fp32 {100 * a.fp32_f1:.2f})"
        )
    return text


MCU_REPORT = "mcu.json"


def load_mcu_report(folder: Path) -> McuReport:
    """The typed report of a Cortex-M build folder (python -m compile mcu's output)."""
    try:
        with open_inside(folder, MCU_REPORT) as fd:
            text = read_capped(fd, MAX_MANIFEST_BYTES, MCU_REPORT)
        return McuReport.from_json(text, MCU_REPORT)
    except (ManifestError, DeployError) as exc:
        raise DeployError(f"Cortex-M build {show(folder)}: {exc}") from None


def describe_mcu(folder: Path) -> list[tuple[str, str]]:
    """(field, text) lines of a Cortex-M build's report: what it is, what it holds, how
    fast it is estimated to run, and whether it was proven."""
    r = load_mcu_report(folder)
    fp, speed, kib = r.footprint, r.speed, 1024
    what = f"stream step, hop {r.hop}" if r.hop else f"window of {r.samples} samples"
    if r.precision == "int8":
        what += f", int8 ({r.weights} weights)"
    lines = [
        ("build", f"{show(folder)}"),
        ("board", f"{r.board} ({r.core})"),
        ("model", what),
        ("flash", f"{fp.flash / kib:.0f} KiB ({fp.flash_code / kib:.0f} code + "
                  f"{fp.flash_weights / kib:.0f} weights)"),
        ("RAM", f"{fp.ram / kib:.0f} KiB ({fp.ram_arena / kib:.0f} arena, stack peak "
                f"{fp.stack_peak} B of {fp.stack_reserved / kib:.0f} KiB)"),
        ("speed", f"{speed.instructions_per_second / 1e6:.1f} M instructions per s of ECG, "
                  f"{100 * speed.cpu_load:.1f}% at {speed.clock_hz / 1e6:g} MHz (estimate: "
                  "qemu's count, 1 instruction per cycle)"),
        ("parity", f"{'pass' if r.parity.passed else 'FAIL'} under {r.parity.how}, "
                   f"normalised error {_figure(r.parity.normalised)} (tolerance "
                   f"{_figure(r.parity.tolerance)})"),
        ("fits", "; ".join(_fit(n, f) for n, f in r.fits.items())),
    ]  # fmt: skip
    if r.stream is not None:
        s = r.stream
        text = f"state {s.state_bytes / kib:.1f} KiB, look-ahead {s.look_ahead} samples"
        lines.insert(3, ("stream", f"{text}, flush {s.flush_steps} steps"))
    if speed.cycles is not None:
        lines.insert(-2, ("cycles", f"{speed.cycles / speed.window_seconds / 1e6:.1f} M per s "
                                    f"of ECG, {100 * speed.cycle_load:.1f}% at "
                                    f"{speed.clock_hz / 1e6:g} MHz (estimate: "
                                    f"{speed.cycle_method})"))  # fmt: skip
    if r.energy is not None:
        lines.insert(-2, ("energy", _energy(r.energy)))
    lines += _profile_lines(r)
    if r.beats_equal is not None:
        lines.append(("beats", "the reference's" if r.beats_equal else "DIFFER"))
    if r.fs is not None:
        rate = f"{r.fs} Hz ({r.samples} samples = {r.samples / r.fs:g} s)"
        if r.input_fs is not None:
            rate += f"; the sensor's {r.input_fs} Hz resampled on the device, beats in its clock"
        lines.insert(3, ("rate", rate))
    return lines


PROFILE_SHOWN = 3  # `deploy info` lists this many of the costliest kernels


def _profile_lines(r: McuReport) -> list[tuple[str, str]]:
    """The per-kernel profile's summary and its costliest kernels, or nothing."""
    if not r.profile:
        return []
    speed, per = r.speed, "step" if r.hop else "window"
    total = f"{len(r.profile)} kernel calls per {per}"
    if r.macs:
        total += f", {r.macs / 1e6:.2f} M MACs, {speed.instructions / r.macs:.2f} instructions/MAC"
    lines = [("kernels", total)]
    for k in sorted(r.profile, key=lambda k: -k.instructions)[:PROFILE_SHOWN]:
        text = f"{k.kernel}: {k.instructions / 1e6:.2f} M instructions "
        text += f"({100 * k.instructions / speed.instructions:.1f}%)"
        if k.macs:
            text += f", {k.macs / 1e6:.2f} M MACs, {k.instructions_per_mac:.2f}/MAC"
        if k.cycles_per_instruction is not None:
            text += f", {k.cycles_per_instruction:.2f} cycles/instruction"
        lines.append(("", text))
    return lines


def _energy(e) -> str:
    """The energy estimate in one line: µJ per second of ECG and the duty cycle at the
    part's clock, with the figure's source, or why there is none."""
    at = f"{e.part} at {e.clock_hz / 1e6:g} MHz"
    duty = (
        f"the core sleeps {100 * e.sleep_share:.1f}% of each second"
        if e.load <= 1
        else f"does not keep up ({100 * e.load:.0f}% of its cycles)"
    )
    why = e.provenance.split(":", 1)[0] + " (mcu.json: energy.provenance)"
    active = e.active_uj_per_second
    if active is None:
        return f"{at}: {duty}; no energy estimate: {why}"
    text = f"{active / 1e3:.2f} mJ per s of ECG ({active / 1e3:.2f} mW) on {at}, {duty}"
    if e.average_uw is not None:
        text += f", {e.average_uw / 1e3:.2f} mW with its sleep current"
    figure = f"{e.active_ua_per_mhz:.1f} µA/MHz at {e.supply_v:g} V from {e.source}"
    verdict = "confirmed" if e.confirmed else f"NOT CONFIRMED, {why}"
    return f"{text} (estimate: {e.cycles_from} cycles x {figure}; {verdict})"


def _figure(value: float | None) -> str:
    """3 significant digits (4.67e-07, not 4.6734427952297546e-07); n/a for none."""
    return "n/a" if value is None else f"{value:.3g}"


def _fit(name: str, fit) -> str:
    """A part's verdict, with the reason where it does not fit (the region, the sizes)."""
    if fit.fits:
        return f"{name}: yes"
    return f"{name}: no ({fit.why})" if fit.why else f"{name}: no"
