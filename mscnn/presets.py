"""Named model configurations, as data.

Backbones (`head` None: the output is the feature map): all three share torch_ecg's
`multi_scopic` layout: three branches of scopes (dilations) 1/2/4 growing per block,
filter lengths 11/7/5, subsample 2 by max pooling, dropout 0.2 after the middle block.
They differ in leads, groups and width.

Whole models (a torch_ecg head on one of those backbones; the config is torch_ecg's
ECG_SEQ_LAB_NET / ECG_CRNN config shape, see `mscnn.heads`):

- `cpsc2019_qrs`: the demo QRS detector. ECG_SEQ_LAB_NET on the `cpsc2019` backbone,
  1 lead, no rnn, no attention, classifier 256 -> 64 -> 1: one logit per frame of 8
  samples (16 ms at 500 Hz), class "N": an R peak lies near this frame.
- `leadwise_classifier`: ECG_CRNN on the `multi_scopic_leadwise` backbone, 12 CinC leads,
  squeeze-excitation, global max pooling, classifier 1024 -> classes (torch_ecg's
  ECG_CRNN defaults), one logit per class for a set of PhysioNet/CinC 2021 scored
  diagnoses (`CINC2021_CLASSES`, SNOMED CT codes). Lead-wise, so its reduced-lead
  variants are exact.
- `seq_lab_crnn`: torch_ecg's default ECG_SEQ_LAB_NET_CONFIG unchanged, the CRNN a
  torch_ecg user trains for QRS detection: the `cpsc2019` backbone, a two-layer
  bidirectional LSTM (256, 256), SE attention, classifier 256 -> 64 -> 1; 1 lead.
- `leadwise_crnn`: `leadwise_classifier` with torch_ecg's ECG_CRNN_CONFIG LSTM
  (bidirectional, 192, 192, dropout 0.2) between the backbone and SE; 12 CinC leads, its
  reduced-lead variants exact (the dropped leads' constant inputs kept, see
  `mscnn.ConstantInputsModel`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MscnnError
from .leads import LEADS_12

_SCOPES = [
    [[1], [1, 1], [1, 1, 1]],
    [[2], [2, 4], [8, 8, 8]],
    [[4], [4, 8], [16, 32, 64]],
]


def _layout(filters: list[int], groups: int) -> dict[str, Any]:
    return {
        "groups": groups,
        "scopes": _SCOPES,
        "num_filters": [filters] * 3,
        "filter_lengths": [[11, 7, 5]] * 3,
        "subsample_lengths": [2, 2, 2],
        "dropouts": [[0, 0.2, 0]] * 3,
        "block": {
            "subsample_mode": "max",
            "batch_norm": False,
            "activation": "relu",
            "kw_activation": {"inplace": True},
            "kernel_initializer": "he_normal",
            "kw_initializer": {},
            "bias": True,
            "kw_bn": {},
        },
    }


# A few PhysioNet/CinC 2021 scored diagnoses (SNOMED CT code: name), as the challenge's
# dx_mapping_scored table names them; the classifier's classes are the codes.
CINC2021_CLASSES: dict[str, str] = {
    "426783006": "sinus rhythm",
    "164889003": "atrial fibrillation",
    "426177001": "sinus bradycardia",
    "427084000": "sinus tachycardia",
    "284470004": "premature atrial contraction",
    "427172004": "premature ventricular contractions",
    "164934002": "T wave abnormal",
    "59118001": "right bundle branch block",
}
QRS_CLASSES: dict[str, str] = {"N": "an R peak lies within this output frame's neighbourhood"}


WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class Preset:
    """A named model: a backbone (`head` None) or a whole model (`head` names the class)."""

    name: str
    description: str
    leads: tuple[str, ...]
    fs: int
    config: Mapping[str, Any] = field(repr=False)
    head: str | None = None  # "ECG_SEQ_LAB_NET" or "ECG_CRNN"
    task: str = "features"  # "features", "qrs_detection" or "classification"
    classes: tuple[str, ...] = ()
    class_names: Mapping[str, str] = field(default_factory=dict, repr=False)
    weights: str | None = None  # trained weights shipped in mscnn/weights/, the default

    @property
    def weights_path(self) -> Path | None:
        return WEIGHTS_DIR / self.weights if self.weights else None

    @property
    def in_channels(self) -> int:
        return len(self.leads)

    @property
    def backbone_config(self) -> Mapping[str, Any]:
        """The MultiScopicCNN config (of the whole model's `cnn`, for a whole model)."""
        if self.head is None:
            return self.config
        return self.config["cnn"][self.config["cnn"]["name"]]


def _whole(cnn: str, backbone: dict[str, Any], attn: str, **keys: Any) -> dict[str, Any]:
    """A torch_ecg whole-model config with every key written out."""
    se = {
        "reduction": 8,
        "activation": "relu",
        "kw_activation": {"inplace": True},
        "bias": True,
        "dropouts": [0.0, 0.0],
    }
    return {
        "fs": 500,
        "cnn": {"name": cnn, cnn: backbone},
        "rnn": {"name": "none"},
        "attn": {"name": "none"} if attn == "none" else {"name": "se", "se": se},
        **keys,
    }


# torch_ecg's default classifiers: ECG_SEQ_LAB_NET's 256 -> 64 -> classes, ECG_CRNN's
# 1024 -> classes; Mish, dropout 0.2 after every hidden layer.
_SEQ_LAB_CLF = {
    "out_channels": [256, 64],
    "activation": "mish",
    "bias": True,
    "dropouts": [0.2, 0.2, 0.0],
}
_CRNN_CLF = {"out_channels": [1024], "activation": "mish", "bias": True, "dropouts": [0.2, 0.0]}


def _lstm(hidden: list[int], dropouts: float) -> dict[str, Any]:
    """torch_ecg's StackedLSTM config (bidirectional, every frame returned)."""
    lstm = {"hidden_sizes": hidden, "bias": True, "dropouts": dropouts}
    return {"name": "lstm", "lstm": {**lstm, "bidirectional": True, "retseq": True}}


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "cpsc2019",
            "1-lead R-peak detector backbone of the CPSC2019 winner "
            "(torch_ecg ECG_SEQ_LAB_NET_CONFIG.cnn.multi_scopic)",
            ("ECG",),  # CPSC2019 records are single-lead; the lead is not named
            500,
            _layout([16, 32, 64], groups=1),
        ),
        Preset(
            "multi_scopic",
            "12-lead, all leads mixed from the first conv (torch_ecg multi_scopic)",
            LEADS_12,
            500,
            _layout([96, 192, 384], groups=1),
        ),
        Preset(
            "multi_scopic_leadwise",
            "12-lead, every lead its own channel group, so reduced-lead variants are exact "
            "(torch_ecg multi_scopic_leadwise)",
            LEADS_12,
            500,
            _layout([192, 384, 768], groups=12),
        ),
        Preset(
            "cpsc2019_qrs",
            "1-lead QRS detector: ECG_SEQ_LAB_NET on the cpsc2019 backbone, one logit per "
            "8-sample frame; trained on the 50 CPSC2019 sample records (a demo)",
            ("ECG",),
            500,
            _whole(
                "multi_scopic",
                _layout([16, 32, 64], groups=1),
                "none",
                clf=_SEQ_LAB_CLF,
                global_pool="none",
                global_pool_size=1,
                recover_length=False,
            ),
            head="ECG_SEQ_LAB_NET",
            task="qrs_detection",
            classes=tuple(QRS_CLASSES),
            class_names=QRS_CLASSES,
            weights="cpsc2019_qrs.pt",  # `make train`; recipe and sha256 beside it
        ),
        Preset(
            "leadwise_classifier",
            "12-lead CinC 2021 classifier: ECG_CRNN on the multi_scopic_leadwise backbone, "
            "SE attention, global max pooling; exact reduced-lead variants",
            LEADS_12,
            500,
            _whole(
                "multi_scopic_leadwise",
                _layout([192, 384, 768], groups=12),
                "se",
                clf=_CRNN_CLF,
                global_pool="max",
                global_pool_size=1,
            ),
            head="ECG_CRNN",
            task="classification",
            classes=tuple(CINC2021_CLASSES),
            class_names=CINC2021_CLASSES,
        ),
        Preset(
            "seq_lab_crnn",
            "1-lead QRS detector CRNN: torch_ecg's default ECG_SEQ_LAB_NET_CONFIG (cpsc2019 "
            "backbone, BiLSTM 256/256, SE, classifier 256-64); seeded weights",
            ("ECG",),
            500,
            {
                **_whole(
                    "multi_scopic",
                    _layout([16, 32, 64], groups=1),
                    "se",
                    clf=_SEQ_LAB_CLF,
                    global_pool="none",
                    global_pool_size=1,
                    recover_length=False,
                ),
                "rnn": _lstm([256, 256], 0.0),
            },
            head="ECG_SEQ_LAB_NET",
            task="qrs_detection",
            classes=tuple(QRS_CLASSES),
            class_names=QRS_CLASSES,
        ),
        Preset(
            "leadwise_crnn",
            "12-lead CinC 2021 classifier CRNN: ECG_CRNN on the multi_scopic_leadwise "
            "backbone, BiLSTM 192/192, SE, global max pooling; exact reduced-lead variants",
            LEADS_12,
            500,
            {
                **_whole(
                    "multi_scopic_leadwise",
                    _layout([192, 384, 768], groups=12),
                    "se",
                    clf=_CRNN_CLF,
                    global_pool="max",
                    global_pool_size=1,
                ),
                "rnn": _lstm([192, 192], 0.2),
            },
            head="ECG_CRNN",
            task="classification",
            classes=tuple(CINC2021_CLASSES),
            class_names=CINC2021_CLASSES,
        ),
    )
}
DEFAULT_PRESET = "multi_scopic_leadwise"


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise MscnnError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}") from None
