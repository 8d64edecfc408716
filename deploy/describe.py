"""What `deploy info` and package READMEs say about a bundle, from its manifest only."""

from __future__ import annotations

from .bundle import LIBRARY, Bundle


def describe(bundle: Bundle) -> list[tuple[str, str]]:
    """(field, text) lines describing a verified bundle; nothing is loaded."""
    m = bundle.manifest
    runs, why = bundle.runnable_here()
    shape = {t: f"{t.name} {t.shape} {t.dtype}" for t in (m.input, m.output)}
    return [
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
