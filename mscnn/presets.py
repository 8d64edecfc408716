"""Named model configurations, as data.

All three share torch_ecg's `multi_scopic` layout: three branches of scopes (dilations)
1/2/4 growing per block, filter lengths 11/7/5, subsample 2 by max pooling, dropout 0.2
after the middle block. They differ in leads, groups and width.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    leads: tuple[str, ...]
    fs: int
    config: Mapping[str, Any] = field(repr=False)

    @property
    def in_channels(self) -> int:
        return len(self.leads)


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
    )
}
DEFAULT_PRESET = "multi_scopic_leadwise"


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise MscnnError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}") from None
