"""The bundle kinds, one registry: a kind is found by what a request names (precision,
and whether it streams), never by an if/elif chain in the build. Each kind lives in its
own module and shares steps through compile/bundles/common.py (and quantized.py for the
int8 kinds); compile/build.py asks `kind_for` and imports no kind.

    fp32 window   window.py       fp16 window   window.py
    fp32 stream   stream.py       int8 window   int8_window.py
    int8 stream   int8_stream.py
"""

from __future__ import annotations

from ..errors import CompileError
from . import int8_stream, int8_window, stream, window
from .kind import BuildOptions, BundleKind, Job

KINDS: dict[tuple[str, bool], BundleKind] = {
    (kind.precision, kind.streaming): kind
    for module in (window, stream, int8_window, int8_stream)
    for kind in module.KINDS
}

# The precisions a bundle can have, in the registry's order; the manifest's schema
# (deploy/manifest.py, which cannot import compile/) names the same ones (a test keeps it).
PRECISIONS: tuple[str, ...] = tuple(dict.fromkeys(p for p, _ in KINDS))


def kind_for(precision: str, hop: int | None) -> BundleKind:
    """The kind that builds `precision` bundles, streaming when a hop is given; a
    CompileError naming the valid choices otherwise."""
    if precision not in PRECISIONS:
        raise CompileError(f"--precision {precision!r}; choose from: {', '.join(PRECISIONS)}")
    kind = KINDS.get((precision, hop is not None))
    if kind is None:
        streams = " or ".join(p for p, streaming in KINDS if streaming)
        raise CompileError(
            f"--hop with --precision {precision}: stream bundles are {streams} "
            f"(the {precision} bundles compute whole windows)"
        )
    return kind


__all__ = ["KINDS", "PRECISIONS", "BuildOptions", "BundleKind", "Job", "kind_for"]
