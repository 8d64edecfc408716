"""mscnn: the reference PyTorch MultiScopicCNN (torch_ecg-compatible), its whole-model
heads (ECG_SEQ_LAB_NET, ECG_CRNN), presets, lead sets, reduced-lead variants and
checkpoints. Knows nothing of ONNX or TVM."""

from .checkpoint import LoadedModel, load_checkpoint, load_model, save_checkpoint, seeded_init
from .config import resolve_config
from .errors import MscnnError
from .heads import (
    ECG_CRNN,
    ECG_SEQ_LAB_NET,
    HEADS,
    ConstantInputsModel,
    ReducedLeadModel,
    WholeModel,
    build_model,
)
from .leads import (
    LEAD_SETS,
    LEADS_12,
    derive_variant,
    resolve_leads,
    variant_reference,
    zero_fill,
)
from .model import MultiScopicCNN
from .presets import CINC2021_CLASSES, DEFAULT_PRESET, PRESETS, Preset, get_preset
from .streaming import StateSpec, StepModule, StreamingModel

__all__ = [
    "CINC2021_CLASSES",
    "DEFAULT_PRESET",
    "ECG_CRNN",
    "ECG_SEQ_LAB_NET",
    "HEADS",
    "LEADS_12",
    "LEAD_SETS",
    "PRESETS",
    "ConstantInputsModel",
    "LoadedModel",
    "MscnnError",
    "MultiScopicCNN",
    "Preset",
    "ReducedLeadModel",
    "StateSpec",
    "StepModule",
    "StreamingModel",
    "WholeModel",
    "build_model",
    "derive_variant",
    "get_preset",
    "load_checkpoint",
    "load_model",
    "resolve_config",
    "resolve_leads",
    "save_checkpoint",
    "seeded_init",
    "variant_reference",
    "zero_fill",
]
