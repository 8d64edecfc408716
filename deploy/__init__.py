"""deploy: load a bundle (hash-checked), run it, check parity. Needs the TVM runtime and
numpy only, so it runs on a device: it imports neither torch, onnx nor mscnn."""

from .bundle import Bundle, load_bundle
from .errors import DeployError
from .parity import TOLERANCES, ParityResult, compare
from .predictor import Predictor, check_parity, validate_input

__all__ = [
    "TOLERANCES",
    "Bundle",
    "DeployError",
    "ParityResult",
    "Predictor",
    "check_parity",
    "compare",
    "load_bundle",
    "validate_input",
]
