"""mscnn: the reference PyTorch MultiScopicCNN (torch_ecg-compatible), its presets,
lead sets, reduced-lead variants and checkpoints. Knows nothing of ONNX or TVM."""

from .checkpoint import LoadedModel, load_checkpoint, load_model, save_checkpoint, seeded_init
from .config import resolve_config
from .errors import MscnnError
from .leads import LEAD_SETS, LEADS_12, derive_variant, resolve_leads, zero_fill
from .model import MultiScopicCNN
from .presets import DEFAULT_PRESET, PRESETS, Preset, get_preset

__all__ = [
    "DEFAULT_PRESET",
    "LEADS_12",
    "LEAD_SETS",
    "PRESETS",
    "LoadedModel",
    "MscnnError",
    "MultiScopicCNN",
    "Preset",
    "derive_variant",
    "get_preset",
    "load_checkpoint",
    "load_model",
    "resolve_config",
    "resolve_leads",
    "save_checkpoint",
    "seeded_init",
    "zero_fill",
]
