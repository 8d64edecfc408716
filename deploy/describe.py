"""What `deploy info` and package READMEs say about a bundle, from its manifest only."""

from __future__ import annotations

from .bundle import LIBRARY, Bundle


def describe(bundle: Bundle) -> list[tuple[str, str]]:
    """(field, text) lines describing a verified bundle; nothing is loaded."""
    m = bundle.manifest
    runs, why = bundle.runnable_here()
    shape = {t: f"{t.name} {t.shape} {t.dtype}" for t in (m.input, m.output)}
    lines = [
        ("bundle", f"{bundle.name} ({bundle.path})"),
        ("target", f"{m.target.name} ({m.target.arch}, {m.target.device})"),
        ("model", f"{m.model.preset} — {m.model.source}"),
        ("task", m.model.task + (f" ({', '.join(m.model.classes)})" if m.model.classes else "")),
        ("leads", ", ".join(m.leads) + f" at {m.fs} Hz"),
        ("input", shape[m.input]),
        ("output", shape[m.output]),
        ("library", f"{m.files[LIBRARY].bytes / 1024:.0f} KiB, sha256 verified"),
        ("runs here", "yes" if runs else f"no: {why}"),
    ]
    if m.quantization is not None:
        lines.insert(5, ("precision", _precision(m.quantization)))
    return lines


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
