"""compile: torch -> ONNX (checked) -> TVM Relax -> a bundle per target and variant."""

from .build import BuildOptions, Variant, build, default_variants, resolve_variant
from .errors import CompileError
from .targets import TARGETS, Target, get_target

__all__ = [
    "TARGETS",
    "BuildOptions",
    "CompileError",
    "Target",
    "Variant",
    "build",
    "default_variants",
    "get_target",
    "resolve_variant",
]
