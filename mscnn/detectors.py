"""The QRS detectors `mscnn.train` trains: the CNN (preset `cpsc2019_qrs`) and its CRNN forms.

A CRNN here is the CNN detector with one LSTM layer between the backbone and the
per-frame classifier (torch_ecg's ECG_SEQ_LAB_NET with `rnn.name` lstm, no attention):

- `cpsc2019_qrs_bilstm`: bidirectional, 32 units each way (64 features per frame into
  the classifier). Every frame sees the whole window; it cannot stream.
- `cpsc2019_qrs_lstm`: unidirectional, 64 units. Every frame sees only the past (and the
  backbone's receptive field), so it streams exactly with h and c as its state.

Both are small on purpose: 58k and 66k LSTM parameters (279k and 287k in all, against the
CNN's 254k, since the classifier's first layer now reads 64 features, not the backbone's
192) and 33.2M and 33.7M multiply-adds per second of ECG against the CNN's 31.6M. A
wearable runs the detector continuously; torch_ecg's default (two bidirectional layers of
256, no attention) would hold 2.5M LSTM parameters and need 192M multiply-adds per
second, 6x the CNN. They are not presets
(`mscnn.presets`): a trained checkpoint carries its config, so it loads with
`mscnn.load_checkpoint` and builds with no `--preset`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import MscnnError
from .presets import PRESETS, get_preset

CNN = "cpsc2019_qrs"


@dataclass(frozen=True)
class Detector:
    """A trainable detector: the model `build_model(head, in_channels, config, classes)`."""

    name: str
    head: str
    in_channels: int
    config: Mapping[str, Any] = field(repr=False)
    classes: tuple[str, ...]
    leads: tuple[str, ...]


def _crnn(name: str, hidden: int, bidirectional: bool) -> Detector:
    base = get_preset(CNN)
    config = copy.deepcopy(dict(base.config))
    config["rnn"] = {
        "name": "lstm",
        "lstm": {
            "hidden_sizes": [hidden],
            "bidirectional": bidirectional,
            "bias": True,
            "dropouts": 0.0,
            "retseq": True,
        },
    }
    return Detector(name, base.head, base.in_channels, config, base.classes, base.leads)


CRNNS: dict[str, Detector] = {
    d.name: d
    for d in (
        _crnn("cpsc2019_qrs_bilstm", hidden=32, bidirectional=True),
        _crnn("cpsc2019_qrs_lstm", hidden=64, bidirectional=False),
    )
}


def get_detector(name: str) -> Detector:
    """A CRNN above, or any whole-model preset (the CNN detector among them)."""
    if name in CRNNS:
        return CRNNS[name]
    if name in PRESETS and PRESETS[name].head is not None:
        p = PRESETS[name]
        return Detector(name, p.head, p.in_channels, p.config, p.classes, p.leads)
    wholes = [n for n, p in PRESETS.items() if p.head is not None]
    raise MscnnError(
        f"unknown model {name!r} to train; choose from: {', '.join([*wholes, *CRNNS])}"
    )
