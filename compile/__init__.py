"""compile: torch -> ONNX (checked) -> TVM Relax -> a bundle per target and variant."""

from .build import BuildOptions, build
from .errors import CompileError
from .targets import TARGETS, Target, get_target
from .variants import Variant, default_variants, resolve_variant, variant_model

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
    "variant_model",
]
