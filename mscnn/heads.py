"""Whole models: MultiScopicCNN under torch_ecg's sequence-labelling and classifier heads.

`ECG_SEQ_LAB_NET(classes, n_leads, config)` labels every output frame (the CPSC2019 QRS
detector); `ECG_CRNN(classes, n_leads, config)` classifies a whole window (CinC 2021). Both
take torch_ecg's config dicts (the shape of its `ECG_SEQ_LAB_NET_CONFIG` /
`ECG_CRNN_CONFIG`) and use torch_ecg's module and parameter names, so a torch_ecg state dict
loads with `strict=True` and gives the same logits (no sigmoid, as torch_ecg's `forward`):

    cnn.branches...            MultiScopicCNN (`cnn.name` multi_scopic / multi_scopic_leadwise)
    rnn.*                      `rnn.name` lstm (StackedLSTM) or linear (MLP per frame), absent
                               for none (mscnn.recurrent)
    attn.*                     se (attn.fc.0.lin_0, .lin_1), gc or nl, absent for none
    clf.lin_{i}, .act_{i}      the classifier MLP; its last layer gives one logit per class

Data flow (batch b, channels c, frames t = samples / 8, classes k):

    ECG_SEQ_LAB_NET  (b, leads, samples) -> cnn (b, c, t) -> [rnn] -> [attn] -> clf per frame
                     (b, t, k); with `recover_length` linearly interpolated to (b, samples, k)
    ECG_CRNN         (b, leads, samples) -> cnn -> [rnn] -> [attn] -> max|avg over t -> clf
                     (b, k); an LSTM with `retseq` false: its last frame -> clf (as torch_ecg)

Supported: `rnn.name` none, lstm, linear; `attn.name` none, se, gc, nl; `global_pool` max
or avg (ECG_CRNN). Keys left out take torch_ecg's defaults. Refused up front, with the key
and the valid values named: other rnn names; attention sa / transformer (self-attention
over all frames, which we have not proven on the targets); other backbones (mscnn is the
MultiScopicCNN reference). Streaming refuses the LSTM and global attention (mscnn.streaming).

Reduced-lead variants (`mscnn.derive_variant`) of a model with a lead-wise backbone are
`ReducedLeadModel`s: exact, in eval mode, against the full model fed zeros on the dropped
leads (see that class for how the dropped leads are folded in); with an rnn or gc/nl
attention, `ConstantInputsModel`s (the dropped leads' features kept as constant inputs).
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ACTIVATIONS, ModelSpec, as_list, choice, plain, positive_int, resolve_config
from .errors import MscnnError
from .model import MultiScopicCNN, check_lead_indices, scale_config
from .recurrent import (
    GcSpec,
    GlobalContext,
    LstmSpec,
    NlSpec,
    NonLocal,
    StackedLstm,
    resolve_gc,
    resolve_lstm,
    resolve_nl,
)

CNN_NAMES = ("multi_scopic", "multi_scopic_leadwise")
RNN_NAMES = ("none", "lstm", "linear")
ATTN_NAMES = ("none", "se", "gc", "nl")
CRNN_POOLS = ("max", "avg")

# torch_ecg 0.0.33's defaults for the keys a config may leave out (its ECG_CRNN_CONFIG,
# and ECG_SEQ_LAB_NET_CONFIG merged over it); the backbone config must be given.
_SE_DEFAULTS = {
    "reduction": 8,
    "activation": "relu",
    "kw_activation": {"inplace": True},
    "bias": True,
    "dropouts": 0.0,
}
_LINEAR_DEFAULTS = {"out_channels": [256, 64], "bias": True, "dropouts": 0.2, "activation": "mish"}
_GC_DEFAULTS = {"ratio": 4, "reduction": True, "pooling_type": "attn", "fusion_types": ["mul"]}
_NL_DEFAULTS = {
    "filter_lengths": {"g": 1, "phi": 1, "theta": 1, "W": 1},
    "subsample_length": 2,
    "batch_norm": True,
}
_ATTN_DEFAULTS = {"se": _SE_DEFAULTS, "gc": _GC_DEFAULTS, "nl": _NL_DEFAULTS}
_LSTM_DEFAULTS = {"bias": True, "bidirectional": True, "retseq": True}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "ECG_CRNN": {
        "fs": 500,
        "rnn": {
            "name": "none",
            "lstm": {**_LSTM_DEFAULTS, "dropouts": 0.2, "hidden_sizes": [192, 192]},
            "linear": _LINEAR_DEFAULTS,
        },
        "attn": {"name": "se", **_ATTN_DEFAULTS},
        "global_pool": "max",
        "global_pool_size": 1,
        "clf": {"out_channels": [1024], "activation": "mish", "bias": True, "dropouts": 0.2},
    },
    "ECG_SEQ_LAB_NET": {
        "fs": 500,
        "rnn": {
            "name": "lstm",
            "lstm": {**_LSTM_DEFAULTS, "dropouts": 0, "hidden_sizes": [256, 256]},
            "linear": _LINEAR_DEFAULTS,
        },
        "attn": {"name": "se", **_ATTN_DEFAULTS},
        "global_pool": "none",
        "global_pool_size": 1,
        "recover_length": False,
        "clf": {
            "out_channels": [256, 64],
            "activation": "mish",
            "bias": True,
            "dropouts": [0.2, 0.2, 0.0],
        },
    },
}
# Read by torch_ecg's initialisation only (or not at all): accepted, unused.
_IGNORED = ("kernel_initializer", "kw_initializer")


# --------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class MlpSpec:
    """torch_ecg's SeqLin: linear -> activation -> [dropout] per layer, no last activation."""

    in_features: int
    out_features: tuple[int, ...]
    activation: str
    kw_activation: Mapping[str, Any]
    bias: bool
    dropouts: tuple[float, ...]
    last_activation: bool = False  # torch_ecg's MLP as `rnn` linear: activation after every layer


@dataclass(frozen=True)
class HeadSpec:
    """Everything needed to build a whole model; equal specs build the same layers."""

    head: str  # "ECG_SEQ_LAB_NET" or "ECG_CRNN"
    in_channels: int
    classes: tuple[str, ...]
    backbone: ModelSpec
    backbone_config: Mapping[str, Any] = field(compare=False)
    se: MlpSpec | None = None  # (channels -> channels // reduction -> channels)
    rnn: LstmSpec | MlpSpec | None = None  # between the backbone and the attention
    attention: GcSpec | NlSpec | None = None  # global context or non-local attention
    pool: str = "none"  # "none" (per frame), "max" or "avg" (over frames)
    pool_size: int = 1
    clf: MlpSpec | None = None
    recover_length: bool = False


def resolve_head_config(
    head: str, in_channels: Any, classes: Any, config: Any
) -> tuple[HeadSpec, dict[str, Any]]:
    """Check a torch_ecg whole-model config; return the spec and a canonical config.

    The canonical config is plain (JSON-able) and complete: given back to the same class
    (ours or torch_ecg's) with the same classes and leads, it builds the same model.
    """
    if head not in _DEFAULTS:
        raise MscnnError(f"unknown head {head!r}; choose from: {', '.join(_DEFAULTS)}")
    classes = _classes(classes)
    if not isinstance(config, Mapping):
        raise MscnnError(
            f"config: expected a torch_ecg {head} config mapping, got {type(config).__name__} "
            "(see mscnn.PRESETS for complete examples)"
        )
    valid = set(_DEFAULTS[head]) | {"cnn"}
    unknown = sorted(set(config) - valid)
    if unknown:
        raise MscnnError(
            f"config: unknown key(s) {', '.join(map(repr, unknown))} for {head}; valid keys: "
            f"{', '.join(sorted(valid))}"
        )
    merged = _merge(_DEFAULTS[head], config)
    name, backbone, backbone_config = _resolve_cnn(in_channels, merged.get("cnn"))
    rnn_config, rnn = _resolve_rnn(head, merged["rnn"], backbone.out_channels)
    channels = _width_after(rnn, backbone.out_channels)
    last_only = isinstance(rnn, LstmSpec) and not rnn.retseq
    attn_config = merged["attn"] if not last_only else {"name": "none"}  # torch_ecg ignores it
    attn, se, attention = _resolve_attn(attn_config, channels)
    pool, pool_size = _resolve_pool(head, merged)
    width = channels if last_only else channels * pool_size
    clf_config, clf = _resolve_clf(merged["clf"], width, len(classes))
    recover, fs = _resolve_scalars(merged)
    spec = HeadSpec(
        head,
        backbone.in_channels,
        classes,
        backbone,
        backbone_config,
        se=se,
        pool=pool,
        pool_size=pool_size,
        clf=clf,
        recover_length=recover,
        rnn=rnn,
        attention=attention,
    )
    canonical = {
        "fs": fs,
        "cnn": {"name": name, name: backbone_config},
        "rnn": rnn_config,
        "attn": attn,
        "global_pool": pool,
        "global_pool_size": pool_size,
        "clf": clf_config,
    }
    if head == "ECG_SEQ_LAB_NET":
        canonical["recover_length"] = recover
    return spec, plain(canonical, "config")


def _width_after(rnn: LstmSpec | MlpSpec | None, channels: int) -> int:
    """Channels per frame after the `rnn` layer."""
    if rnn is None:
        return channels
    return rnn.out_features if isinstance(rnn, LstmSpec) else rnn.out_features[-1]


def _resolve_scalars(config: Mapping[str, Any]) -> tuple[bool, Any]:
    """(recover_length, fs), checked."""
    recover = config.get("recover_length", False)
    if not isinstance(recover, bool):
        raise MscnnError(f"config['recover_length']: expected true or false, got {recover!r}")
    fs = config["fs"]
    if isinstance(fs, bool) or not isinstance(fs, numbers.Real) or not fs > 0:
        raise MscnnError(f"config['fs']: expected a positive sampling rate, got {fs!r}")
    return recover, fs


def _merge(defaults: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """torch_ecg's CFG.update: nested mappings merge, everything else replaces."""
    out = copy.deepcopy(dict(defaults))
    for key, value in config.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _classes(classes: Any) -> tuple[str, ...]:
    if isinstance(classes, str | bytes) or not isinstance(classes, Sequence) or not classes:
        raise MscnnError(f"classes: expected a non-empty list of class names, got {classes!r}")
    if not all(isinstance(c, str) and c for c in classes):
        raise MscnnError(f"classes: every class name must be a non-empty string, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise MscnnError(f"classes: {list(classes)} names a class more than once")
    return tuple(classes)


def _section(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MscnnError(f"{where}: expected a mapping, got {value!r}")
    return value


def _name(section: Mapping[str, Any], where: str, valid: Sequence[str]) -> str:
    name = section.get("name")
    if not isinstance(name, str) or name not in valid:
        what = "missing" if name is None else f"{name!r} is not supported"
        raise MscnnError(
            f"{where}['name']: {what}; choose from: {', '.join(valid)} (see mscnn.heads for "
            "why torch_ecg's other choices are refused)"
        )
    return name


def _resolve_cnn(in_channels: Any, cnn: Any) -> tuple[str, ModelSpec, dict[str, Any]]:
    cnn = _section(cnn, "config['cnn']")
    name = _name(cnn, "config['cnn']", CNN_NAMES)
    where = f"config['cnn'][{name!r}]"
    if name not in cnn:
        raise MscnnError(
            f"{where}: missing; give the backbone's config (e.g. mscnn.PRESETS[{name!r}].config)"
        )
    try:
        backbone, canonical = resolve_config(in_channels, _section(cnn[name], where))
    except MscnnError as exc:  # name the key by its path in the whole config
        message = str(exc)
        raise MscnnError(where + message[6:] if message.startswith("config") else message) from None
    return name, backbone, canonical


def _resolve_rnn(
    head: str, rnn: Any, channels: int
) -> tuple[dict[str, Any], LstmSpec | MlpSpec | None]:
    rnn = _section(rnn, "config['rnn']")
    name = _name(rnn, "config['rnn']", RNN_NAMES)
    if name == "none":
        return {"name": "none"}, None
    where = f"config['rnn'][{name!r}]"
    section = _section(rnn.get(name), where)
    if name == "lstm":
        config, spec = resolve_lstm(section, where, channels)
        if head == "ECG_SEQ_LAB_NET" and not spec.retseq:
            raise MscnnError(
                f"{where}['retseq']: false keeps only the last frame, but ECG_SEQ_LAB_NET "
                "labels every frame: use true (or ECG_CRNN to classify the window)"
            )
        return {"name": name, name: config}, spec
    _check_keys(section, ("out_channels", "activation", "bias", "dropouts"), where)
    widths = as_list(section["out_channels"], f"{where}['out_channels']")
    widths = [positive_int(w, f"{where}['out_channels'][{i}]") for i, w in enumerate(widths)]
    mlp = _mlp(section, where, channels, tuple(widths), {}, last_activation=True)
    config = {
        "out_channels": widths,
        "activation": mlp.activation,
        "bias": mlp.bias,
        "dropouts": list(mlp.dropouts),
    }
    return {"name": name, name: config}, mlp


def _resolve_attn(
    attn: Any, channels: int
) -> tuple[dict[str, Any], MlpSpec | None, GcSpec | NlSpec | None]:
    attn = _section(attn, "config['attn']")
    name = _name(attn, "config['attn']", ATTN_NAMES)
    if name == "none":
        return {"name": "none"}, None, None
    where = f"config['attn'][{name!r}]"
    section = _section(attn.get(name), where)
    if name in ("gc", "nl"):
        config, spec = (resolve_gc if name == "gc" else resolve_nl)(section, where, channels)
        return {"name": name, name: config}, None, spec
    config, mlp = _resolve_se(section, where, channels)
    return {"name": name, name: config}, mlp, None


def _resolve_se(se: Mapping[str, Any], where: str, channels: int) -> tuple[dict, MlpSpec]:
    _check_keys(se, ("reduction", "activation", "kw_activation", "bias", "dropouts"), where)
    reduction = positive_int(se["reduction"], f"{where}['reduction']")
    mid = channels // reduction
    if mid < 1:
        raise MscnnError(
            f"{where}['reduction']: {reduction} leaves no hidden units for the backbone's "
            f"{channels} channels; use at most {channels}"
        )
    kw = se.get("kw_activation") or {}
    if not isinstance(kw, Mapping):
        raise MscnnError(f"{where}['kw_activation']: expected a mapping of keyword arguments")
    mlp = _mlp(se, where, channels, (mid, channels), dict(kw))
    try:  # torch_ecg merges kw_activation over its default {"inplace": True}
        ACTIVATIONS[mlp.activation](**kw)
    except TypeError as exc:
        raise MscnnError(
            f"{where}['kw_activation']: {dict(kw)} does not fit activation {mlp.activation!r} "
            f"({exc}); give the activation's own keyword arguments"
        ) from None
    config = {
        "reduction": reduction,
        "activation": mlp.activation,
        "kw_activation": dict(kw),
        "bias": mlp.bias,
        "dropouts": list(mlp.dropouts),
    }
    return config, mlp


def _resolve_pool(head: str, config: Mapping[str, Any]) -> tuple[str, int]:
    pool = config["global_pool"]
    if head == "ECG_SEQ_LAB_NET":
        if pool != "none":
            raise MscnnError(
                f"config['global_pool']: {pool!r}, but ECG_SEQ_LAB_NET labels every frame: "
                "use 'none' (torch_ecg silently overrides it), or ECG_CRNN to pool"
            )
        return "none", 1
    if pool not in CRNN_POOLS:
        raise MscnnError(
            f"config['global_pool']: {pool!r} is not supported for ECG_CRNN; choose from: "
            f"{', '.join(CRNN_POOLS)} (for per-frame outputs use ECG_SEQ_LAB_NET)"
        )
    return pool, positive_int(config["global_pool_size"], "config['global_pool_size']")


def _resolve_clf(clf: Any, in_features: int, n_classes: int) -> tuple[dict[str, Any], MlpSpec]:
    where = "config['clf']"
    clf = _section(clf, where)
    _check_keys(clf, ("out_channels", "activation", "bias", "dropouts"), where)
    hidden = as_list(clf["out_channels"], f"{where}['out_channels']")
    hidden = [positive_int(h, f"{where}['out_channels'][{i}]") for i, h in enumerate(hidden)]
    # torch_ecg's ECG_CRNN passes no kw_activation to its classifier
    mlp = _mlp(clf, where, in_features, (*hidden, n_classes), {})
    config = {
        "out_channels": hidden,
        "activation": mlp.activation,
        "bias": mlp.bias,
        "dropouts": list(mlp.dropouts),
    }
    return config, mlp


def _check_keys(section: Mapping[str, Any], valid: Sequence[str], where: str) -> None:
    unknown = sorted(set(section) - set(valid) - set(_IGNORED))
    if unknown:
        raise MscnnError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: "
            f"{', '.join(valid)}"
        )
    missing = [k for k in valid if k not in section and k != "kw_activation"]
    if missing:
        raise MscnnError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")


def _mlp(
    section: Mapping[str, Any],
    where: str,
    in_features: int,
    out: tuple[int, ...],
    kw: dict,
    last_activation: bool = False,
) -> MlpSpec:
    act = section["activation"]
    choice(act, ACTIVATIONS, f"{where}['activation']")
    bias = section["bias"]
    if not isinstance(bias, bool):
        raise MscnnError(f"{where}['bias']: expected true or false, got {bias!r}")
    dropouts = section["dropouts"]
    if isinstance(dropouts, Sequence) and not isinstance(dropouts, str | bytes):
        if len(dropouts) != len(out):
            raise MscnnError(
                f"{where}['dropouts']: {len(dropouts)} rates for {len(out)} linear layers; give "
                f"one per layer (the last is the one with {out[-1]} outputs) or a single rate"
            )
    else:  # torch_ecg: one rate after every layer but the last (the only one if alone)
        dropouts = [dropouts] * (len(out) - 1) + [0.0] if len(out) > 1 else [dropouts]
    for i, p in enumerate(dropouts):
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
            raise MscnnError(f"{where}['dropouts'][{i}]: expected a rate in [0, 1), got {p!r}")
    rates = tuple(float(p) for p in dropouts)
    return MlpSpec(in_features, out, act.lower(), kw, bias, rates, last_activation)


# --------------------------------------------------------------------------------------
# Blocks


class Mlp(nn.Sequential):
    """torch_ecg's SeqLin / MLP: lin_{i} -> act_{i} -> [dropout_{i}], no last activation."""

    def __init__(self, spec: MlpSpec) -> None:
        super().__init__()
        width = spec.in_features
        last = len(spec.out_features) - 1
        for i, out in enumerate(spec.out_features):
            self.add_module(f"lin_{i}", nn.Linear(width, out, bias=spec.bias))
            if i < last or spec.last_activation:
                act = ACTIVATIONS[spec.activation](**spec.kw_activation)
                self.add_module(f"act_{i}", act)
            if spec.dropouts[i] > 0:
                self.add_module(f"dropout_{i}", nn.Dropout(spec.dropouts[i]))
            width = out

    def after_first(self, x: Tensor) -> Tensor:
        """The layers after `lin_0`, applied to `lin_0`'s output (for folded inputs)."""
        for module in list(self.children())[1:]:
            x = module(x)
        return x

    def count_macs(self, rows: int) -> int:
        return rows * sum(m.in_features * m.out_features for m in self.linears())

    def linears(self) -> Iterator[nn.Linear]:
        return (m for m in self.children() if isinstance(m, nn.Linear))


class SqueezeExcitation(nn.Module):
    """torch_ecg's SEBlock: channels scaled by sigmoid(MLP(mean over time))."""

    def __init__(self, spec: MlpSpec) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Sequential(Mlp(spec), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        # (batch, channels, frames) -> the same, each channel scaled by its excitation
        return x * self.fc(self.avg_pool(x).squeeze(-1)).unsqueeze(-1)


# --------------------------------------------------------------------------------------
# The whole models


class WholeModel(nn.Module):
    """What ECG_SEQ_LAB_NET and ECG_CRNN share: backbone, optional SE, classifier MLP.

    Attributes the pipeline reads: `head`, `task`, `classes`, `in_channels`, `config`
    (canonical, JSON-able; `type(m)(m.classes, m.in_channels, m.config)` rebuilds it),
    `is_lead_wise`, `num_parameters`, `compute_output_shape`, `receptive_field`,
    `count_macs`.
    """

    head: ClassVar[str]
    task: ClassVar[str]

    def __init__(self, classes: Sequence[str], n_leads: int, config: Mapping[str, Any]) -> None:
        super().__init__()
        spec, canonical = resolve_head_config(self.head, n_leads, classes, config)
        self.spec: HeadSpec = spec
        self.config: dict[str, Any] = canonical
        self.classes: list[str] = list(spec.classes)
        self.cnn = MultiScopicCNN(spec.in_channels, **spec.backbone_config)
        self.rnn = _rnn_layer(spec.rnn)
        self.attn = _attn_layer(spec)
        self.clf = Mlp(spec.clf)

    def features(self, x: Tensor) -> Tensor:
        """Backbone, rnn, attention: (batch, channels, frames), or (batch, features) after
        an LSTM with `retseq` false (its last frame)."""
        return self.attn(self.rnn(self.cnn(x)))

    @property
    def in_channels(self) -> int:
        return self.spec.in_channels

    @property
    def n_leads(self) -> int:  # torch_ecg's name
        return self.spec.in_channels

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def is_lead_wise(self) -> bool:
        return self.cnn.is_lead_wise

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def receptive_field(self, fs: float | None = None) -> int | float:
        """Samples (seconds if `fs`) one backbone feature sees. The SE attention and global
        pooling add a summary of the whole window on top of it."""
        return self.cnn.receptive_field(fs)

    def count_macs(self, seq_len: int, batch_size: int = 1) -> int:
        """Multiply-accumulates of the convs and linear layers for one forward pass."""
        frames = self.cnn.compute_output_shape(seq_len)[-1]
        macs = self.cnn.count_macs(seq_len) + self._head_macs(frames)
        return macs * batch_size

    def _head_macs(self, frames: int) -> int:
        spec = self.spec
        se = self.attn.fc[0].count_macs(1) if spec.se else 0
        if isinstance(spec.rnn, LstmSpec):
            se += spec.rnn.count_macs(frames)
        elif spec.rnn is not None:
            se += self.rnn.count_macs(frames)
        if isinstance(spec.attention, GcSpec):  # mask, context, the 1x1 convs
            se += 2 * frames * spec.attention.channels
            se += 2 * spec.attention.channels * spec.attention.mid * len(spec.attention.fusions)
        elif isinstance(spec.attention, NlSpec):  # 1x1 projections and the frames^2 products
            nl, sub = spec.attention, frames // spec.attention.subsample
            se += frames * nl.channels * nl.mid * 2 + 2 * sub * nl.channels * nl.mid
            se += 2 * frames * sub * nl.mid
        rows = 1 if spec.pool != "none" or self._last_only else frames
        return se + self.clf.count_macs(rows)

    @property
    def _last_only(self) -> bool:
        return isinstance(self.spec.rnn, LstmSpec) and not self.spec.rnn.retseq

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, classes={self.classes}"


class ECG_SEQ_LAB_NET(WholeModel):
    """Sequence labelling (QRS detection): one logit per class per output frame.

    Output (batch, frames, classes) with frames = samples / `reduction` (8 for the
    multi_scopic presets), or (batch, samples, classes) with `recover_length`.
    """

    head = "ECG_SEQ_LAB_NET"
    task = "qrs_detection"

    @property
    def reduction(self) -> int:
        """Input samples per output frame (1 with `recover_length`)."""
        return _frame_reduction(self.spec)

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x)  # (batch, channels, frames)
        logits = self.clf(features.permute(0, 2, 1))  # (batch, frames, classes)
        return _recover(logits, x.shape[-1]) if self.spec.recover_length else logits

    def compute_output_shape(
        self, seq_len: int | None = None, batch_size: int | None = None
    ) -> tuple[int | None, int | None, int]:
        frames = self.cnn.compute_output_shape(seq_len, batch_size)[-1]
        if self.spec.recover_length:
            frames = seq_len
        return (batch_size, frames, self.n_classes)


class ECG_CRNN(WholeModel):
    """Classification of a whole window: one logit per class. Output (batch, classes)."""

    head = "ECG_CRNN"
    task = "classification"
    reduction = None  # no time axis in the output

    def __init__(self, classes: Sequence[str], n_leads: int, config: Mapping[str, Any]) -> None:
        super().__init__(classes, n_leads, config)
        pool = {"max": nn.AdaptiveMaxPool1d, "avg": nn.AdaptiveAvgPool1d}[self.spec.pool]
        self.pool = pool(self.spec.pool_size)

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x)  # (batch, channels, frames)
        if self._last_only:  # (batch, features): torch_ecg skips attention and pooling
            return self.clf(features)
        pooled = self.pool(features).flatten(1)  # (batch, channels * pool_size), by channel
        return self.clf(pooled)  # (batch, classes)

    def compute_output_shape(
        self, seq_len: int | None = None, batch_size: int | None = None
    ) -> tuple[int | None, int]:
        self.cnn.compute_output_shape(seq_len, batch_size)  # too short an input is refused
        return (batch_size, self.n_classes)


HEADS: dict[str, type[WholeModel]] = {m.head: m for m in (ECG_SEQ_LAB_NET, ECG_CRNN)}


class FrameMlp(Mlp):
    """`rnn` linear: torch_ecg's MLP applied to every frame, (batch, channels, frames) in
    and out."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 1)).permute(0, 2, 1)


def _rnn_layer(spec: LstmSpec | MlpSpec | None) -> nn.Module:
    if spec is None:
        return nn.Identity()
    return StackedLstm(spec) if isinstance(spec, LstmSpec) else FrameMlp(spec)


def _attn_layer(spec: HeadSpec) -> nn.Module:
    if spec.se:
        return SqueezeExcitation(spec.se)
    if isinstance(spec.attention, GcSpec):
        return GlobalContext(spec.attention)
    if isinstance(spec.attention, NlSpec):
        return NonLocal(spec.attention)
    return nn.Identity()


def build_model(
    head: str | None, in_channels: int, config: Mapping[str, Any], classes: Sequence[str] = ()
) -> MultiScopicCNN | WholeModel:
    """A backbone (`head` None) or a whole model, from what a preset or checkpoint holds."""
    if head is None:
        return MultiScopicCNN(in_channels, **config)
    if head not in HEADS:
        raise MscnnError(f"unknown head {head!r}; choose from: {', '.join(HEADS)} (or none)")
    return HEADS[head](classes, in_channels, config)


def _frame_reduction(spec: HeadSpec) -> int:
    """Input samples per output frame of a sequence-labelling head."""
    if spec.recover_length:
        return 1
    return math.prod(block.subsample for block in spec.backbone.branches[0])


def _recover(logits: Tensor, samples: int) -> Tensor:
    """torch_ecg's recover_length: frames linearly interpolated back to the input length."""
    stretched = F.interpolate(
        logits.permute(0, 2, 1), size=samples, mode="linear", align_corners=True
    )
    return stretched.permute(0, 2, 1)  # (batch, samples, classes)


# --------------------------------------------------------------------------------------
# Reduced-lead variants


class ReducedLeadModel(nn.Module):
    """A whole model with a lead-wise backbone, for a subset of its leads.

    Contract (eval mode): `variant(x[:, kept]) == full(zero_fill(x, kept, n))`, every
    output, for any input length. A dropped lead is all zeros, and a lead-wise backbone
    keeps each lead's channels apart, so the dropped leads' feature map Z (channels,
    frames) is the same for every input. It is not constant over frames: zero padding
    reaches the edges, where conv bias, ReLU and normalisation give other values than in
    the middle, and which frames are "edge" depends on the input length (pooling drops odd
    samples). So Z is computed exactly for each input length, once, from the dropped
    leads' backbone (`zero_leads`, never run on an input), and folded into the head:

    - SE squeezes by the mean over frames: mean(Z) @ W0_dropped goes into the first
      linear's bias. The excitation s (sigmoid, > 0) is still computed for every channel:
      the dropped channels' scaled features Z * s_dropped feed the classifier.
    - ECG_CRNN pools over frames: max(Z * s) = s * max(Z) because s > 0 (and the same
      for the mean), so the classifier's first linear gains a term
      G @ s_dropped with G = W_dropped * pool(Z) (or, without SE, the constant
      W_dropped @ pool(Z) in its bias).
    - ECG_SEQ_LAB_NET labels each frame: the first linear gets a per-frame bias
      W_dropped @ Z[:, t] (without SE), or the term W_dropped @ (Z[:, t] * s_dropped).

    The folded constants are cached per input length; a trace or ONNX export sees them as
    constants (their computation is kept out of the trace), so an exported variant runs
    only the kept leads' convs.

    It reads like a whole model (`head`, `task`, `classes`, `in_channels` = kept leads,
    `reduction`, `compute_output_shape`, `receptive_field`, `count_macs`,
    `num_parameters`); `config` is the full model's, `full_leads` and `lead_indices` say
    which of its leads this variant takes. It is not saved: save the full model.
    """

    def __init__(self, full: WholeModel, indices: Sequence[int]) -> None:
        super().__init__()
        kept = list(indices)
        dropped = [i for i in range(full.in_channels) if i not in kept]
        self.head, self.task, self.classes = full.head, full.task, list(full.classes)
        self.spec, self.config = full.spec, copy.deepcopy(full.config)
        self.full_leads, self.lead_indices = full.in_channels, tuple(kept)
        self.cnn = _backbone_variant(full.cnn, kept)
        # Runs once per input length, on zeros: the dropped leads' features Z.
        self.zero_leads = _backbone_variant(full.cnn, dropped).eval() if dropped else None
        channels_k = full.cnn.lead_wise_channels(kept)  # positions in the full feature map
        channels_d = full.cnn.lead_wise_channels(dropped)
        self.kept_channels = len(channels_k)
        self.attn = None
        if full.spec.se:
            self.attn, se_dropped = _reduced_se(full.attn, channels_k, channels_d)
            self.register_buffer("se_dropped", se_dropped)  # (hidden, dropped channels)
        self.pool = copy.deepcopy(full.pool) if full.spec.pool != "none" else None
        self.clf, clf_dropped = _reduced_clf(full.clf, channels_k, channels_d, full.spec.pool_size)
        self.register_buffer("clf_dropped", clf_dropped)  # (hidden, dropped features)
        self._constants_cache: dict[tuple, dict[str, Tensor]] = {}
        self.train(full.training)

    # -- the interface of a whole model --------------------------------------------------
    @property
    def in_channels(self) -> int:
        return len(self.lead_indices)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def is_lead_wise(self) -> bool:
        return True

    @property
    def reduction(self) -> int | None:
        return None if self.head == "ECG_CRNN" else _frame_reduction(self.spec)

    @property
    def num_parameters(self) -> int:
        """The weights that run on an input: the kept leads' backbone, the head, and the
        folded dropped-lead terms whose size does not grow with the input length (the
        dropped leads' backbone only computes constants and is not exported). An
        ECG_SEQ_LAB_NET variant adds per-frame terms: frames x hidden without SE, dropped
        channels x frames with it."""
        skip = {id(p) for p in self.zero_leads.parameters()} if self.zero_leads else set()
        own = sum(p.numel() for p in self.parameters() if id(p) not in skip)
        if self.zero_leads is None:
            return own
        hidden, dropped = self.clf_dropped.shape[0], self.clf_dropped.shape[1]
        if self.attn is not None:  # SE bias; G (ECG_CRNN) or the dropped columns (seq-lab)
            return own + self.se_dropped.shape[0] + hidden * dropped // self.spec.pool_size
        return own + (hidden if self.pool is not None else 0)

    def compute_output_shape(self, seq_len: int | None = None, batch_size: int | None = None):
        frames = self.cnn.compute_output_shape(seq_len, batch_size)[-1]
        if self.head == "ECG_CRNN":
            return (batch_size, self.n_classes)
        return (batch_size, seq_len if self.spec.recover_length else frames, self.n_classes)

    def receptive_field(self, fs: float | None = None) -> int | float:
        return self.cnn.receptive_field(fs)

    def count_macs(self, seq_len: int, batch_size: int = 1) -> int:
        """Convs of the kept leads, the head's linears and the folded dropped-lead terms."""
        frames = self.cnn.compute_output_shape(seq_len)[-1]
        rows = frames if self.pool is None else 1
        macs = self.cnn.count_macs(seq_len) + self.clf.count_macs(rows)
        if self.attn is not None:
            macs += self.attn.fc[0].count_macs(1) + rows * self.clf_dropped.shape[0] * (
                self.clf_dropped.shape[1] // self.spec.pool_size
            )
        return macs * batch_size

    def train(self, mode: bool = True) -> ReducedLeadModel:
        super().train(mode)
        if self.zero_leads is not None:  # the constants are those of eval mode, always
            self.zero_leads.eval()
        return self

    # -- computation ----------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        features = self.cnn(x)  # (batch, kept channels, frames)
        with warnings.catch_warnings():  # a trace holds the constants of its input length,
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # as every export here
            folded = self._constants(int(x.shape[-1]))
        excite = None
        if self.attn is not None:
            squeeze = self.attn.avg_pool(features).squeeze(-1)  # (batch, kept channels)
            hidden = self.attn.fc[0].lin_0(squeeze)
            if "se_bias" in folded:
                hidden = hidden + folded["se_bias"]
            excite = self.attn.fc[1](self.attn.fc[0].after_first(hidden))  # (batch, channels)
            features = features * excite[:, : self.kept_channels, None]
            excite = excite[:, self.kept_channels :]  # (batch, dropped channels)
        if self.pool is not None:
            hidden = self.clf.lin_0(self.pool(features).flatten(1))  # (batch, hidden)
            if "clf_scale" in folded:
                hidden = hidden + excite @ folded["clf_scale"].T
            if "clf_bias" in folded:
                hidden = hidden + folded["clf_bias"]
            return self.clf.after_first(hidden)  # (batch, classes)
        hidden = self.clf.lin_0(features.permute(0, 2, 1))  # (batch, frames, hidden)
        if "frames" in folded:  # (dropped channels, frames) scaled per record
            scaled = folded["frames"].T.unsqueeze(0) * excite.unsqueeze(1)
            hidden = hidden + scaled @ self.clf_dropped.T
        if "clf_bias" in folded:  # (frames, hidden)
            hidden = hidden + folded["clf_bias"]
        logits = self.clf.after_first(hidden)  # (batch, frames, classes)
        return _recover(logits, x.shape[-1]) if self.spec.recover_length else logits

    def _constants(self, seq_len: int) -> dict[str, Tensor]:
        """The dropped leads' folded contributions for inputs of `seq_len` samples."""
        if self.zero_leads is None:
            return {}
        sources = [*self.zero_leads.parameters(), *self.zero_leads.buffers(), self.clf_dropped]
        if self.attn is not None:
            sources.append(self.se_dropped)
        key = (
            seq_len,
            self.clf_dropped.device,
            self.clf_dropped.dtype,
            tuple(t._version for t in sources),
        )
        if key not in self._constants_cache:
            with torch.no_grad(), _untraced():
                self._constants_cache = {key: self._fold(seq_len)}  # only the latest length
        return self._constants_cache[key]

    def _fold(self, seq_len: int) -> dict[str, Tensor]:
        zero = self.clf_dropped.new_zeros(1, self.zero_leads.in_channels, seq_len)
        z = self.zero_leads(zero)[0]  # (dropped channels, frames)
        folded = {}
        if self.attn is not None:
            folded["se_bias"] = self.se_dropped @ z.mean(-1)  # (se hidden,)
        w = self.clf_dropped  # (hidden, dropped channels [* pool_size])
        if self.pool is not None:
            pooled = self.pool(z.unsqueeze(0))[0]  # (dropped channels, pool_size)
            if self.attn is not None:  # G[h, c] = sum_j W[h, c, j] * pooled[c, j]
                g = w.view(w.shape[0], *pooled.shape) * pooled.unsqueeze(0)
                folded["clf_scale"] = g.sum(-1)  # (hidden, dropped channels)
            else:
                folded["clf_bias"] = w @ pooled.flatten()  # (hidden,)
        elif self.attn is not None:
            folded["frames"] = z
        else:
            folded["clf_bias"] = (w @ z).T  # (frames, hidden)
        return {k: v.contiguous() for k, v in folded.items()}

    def extra_repr(self) -> str:
        return f"{self.head}, leads {list(self.lead_indices)} of {self.full_leads}"


class _ScatteredBackbone(nn.Module):
    """The full model's feature map from the kept leads' backbone: the kept channels
    computed, the dropped leads' channels the constants Z of this input length, each at its
    position in the full map (one constant-index gather)."""

    def __init__(self, full: MultiScopicCNN, kept: list[int]) -> None:
        super().__init__()
        dropped = [i for i in range(full.in_channels) if i not in kept]
        self.kept = _backbone_variant(full, kept)
        self.zero_leads = _backbone_variant(full, dropped).eval()
        order = full.lead_wise_channels(kept) + full.lead_wise_channels(dropped)
        self.register_buffer("positions", torch.argsort(torch.tensor(order)), persistent=False)
        self.full_channels = len(order)
        self._cache: dict[tuple, Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        features = self.kept(x)  # (batch, kept channels, frames)
        with warnings.catch_warnings():  # a trace holds the constants of its input length
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            z = self._constants(int(x.shape[-1]), features.dtype, features.device)
        z = z.unsqueeze(0).expand(features.shape[0], -1, -1)
        return torch.cat([features, z], dim=1).index_select(1, self.positions)

    def _constants(self, seq_len: int, dtype, device) -> Tensor:
        sources = [*self.zero_leads.parameters(), *self.zero_leads.buffers()]
        key = (seq_len, dtype, device, tuple(t._version for t in sources))
        if key not in self._cache:
            with torch.no_grad(), _untraced():
                zero = torch.zeros(
                    1, self.zero_leads.in_channels, seq_len, dtype=dtype, device=device
                )
                self._cache = {key: self.zero_leads(zero)[0].contiguous()}
        return self._cache[key]

    def compute_output_shape(self, seq_len=None, batch_size=None):
        shape = self.kept.compute_output_shape(seq_len, batch_size)
        return (shape[0], self.full_channels, shape[2])

    def receptive_field(self, fs=None):
        return self.kept.receptive_field(fs)

    def count_macs(self, seq_len: int) -> int:
        return self.kept.count_macs(seq_len)

    def train(self, mode: bool = True) -> _ScatteredBackbone:
        super().train(mode)
        self.zero_leads.eval()  # the constants are those of eval mode, always
        return self


class ConstantInputsModel(ReducedLeadModel):
    """A reduced-lead variant of a whole model whose head does not fold exactly: an LSTM
    (`rnn` lstm, and linear alike) or global-context / non-local attention after a
    lead-wise backbone.

    Why not fold: the dropped leads' features Z (channels, frames) are input-independent
    but not constant over frames (zero padding reaches the edges, see ReducedLeadModel),
    so through an LSTM they would enter the input projection as a per-frame term
    W_ih[:, dropped] @ Z[:, t], which ONNX's LSTM op (one bias per gate) cannot hold. So
    the variant keeps the constant inputs: only the kept leads' convs run, Z (computed
    once per input length from the dropped leads' backbone on zeros) is put back at its
    channels, and the full model's head runs unchanged. Exact by construction:
    `variant(x[:, kept]) == full(zero_fill(x))`. The head costs what the full model's does.
    """

    def __init__(self, full: WholeModel, indices: Sequence[int]) -> None:
        nn.Module.__init__(self)
        kept = list(indices)
        self.head, self.task, self.classes = full.head, full.task, list(full.classes)
        self.spec, self.config = full.spec, copy.deepcopy(full.config)
        self.full_leads, self.lead_indices = full.in_channels, tuple(kept)
        self.whole = copy.deepcopy(full)
        self.whole.cnn = _ScatteredBackbone(full.cnn, kept)
        self.zero_leads = self.whole.cnn.zero_leads
        self.train(full.training)

    @property
    def reduction(self) -> int | None:
        return self.whole.reduction

    @property
    def num_parameters(self) -> int:
        """The weights that run on an input (the dropped leads' backbone only computes
        constants; the constants themselves grow with the input length)."""
        skip = {id(p) for p in self.zero_leads.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    def compute_output_shape(self, seq_len: int | None = None, batch_size: int | None = None):
        return self.whole.compute_output_shape(seq_len, batch_size)

    def receptive_field(self, fs: float | None = None) -> int | float:
        return self.whole.receptive_field(fs)

    def count_macs(self, seq_len: int, batch_size: int = 1) -> int:
        return self.whole.count_macs(seq_len, batch_size)

    def train(self, mode: bool = True) -> ConstantInputsModel:
        nn.Module.train(self, mode)
        self.whole.cnn.train(mode)
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.whole(x)

    def extra_repr(self) -> str:
        return f"{self.head}, leads {list(self.lead_indices)} of {self.full_leads}, kept inputs"


def derive_whole_variant(model: WholeModel, indices: Sequence[int]) -> nn.Module:
    """The reduced-lead model of a whole model (used by `mscnn.derive_variant`)."""
    check_lead_indices(indices, model.in_channels)
    if model.cnn.is_lead_wise and (model.spec.rnn is not None or model.spec.attention):
        return ConstantInputsModel(model, indices)
    if model.cnn.is_lead_wise:
        return ReducedLeadModel(model, indices)
    if model.cnn.groups != 1:
        raise MscnnError(
            f"reduced-lead variants need a backbone with groups = 1 or groups = in_channels "
            f"(lead-wise); this {model.head} has groups = {model.cnn.groups} for "
            f"{model.in_channels} leads"
        )
    # groups = 1: only the first convs see the leads; the rest is the same model.
    variant = type(model)(model.classes, len(indices), model.config)
    state = model.state_dict()
    for b in range(model.cnn.num_branches):
        key = f"cnn.branches.branch_{b}.block_0.ca_0.conv1d.weight"
        state[key] = state[key][:, list(indices), :]
    variant.load_state_dict(state, strict=True)
    return variant.train(model.training)


def _backbone_variant(cnn: MultiScopicCNN, indices: list[int]) -> MultiScopicCNN:
    config = scale_config(cnn.config, cnn.in_channels, len(indices))
    variant = MultiScopicCNN(len(indices), **config)
    cnn.assign_weights_lead_wise(variant, indices)
    return variant.train(cnn.training)


def _reduced_se(
    se: SqueezeExcitation, kept: list[int], dropped: list[int]
) -> tuple[SqueezeExcitation, Tensor]:
    """SE whose squeeze reads the kept channels (the dropped means are folded in per
    length) and whose excitation is computed for kept channels, then dropped ones."""
    out = copy.deepcopy(se)
    mlp = out.fc[0]
    first, second = mlp.lin_0, mlp.lin_1
    order = kept + dropped
    mlp.lin_0 = _linear(first.weight[:, kept], first.bias)
    mlp.lin_1 = _linear(second.weight[order], None if second.bias is None else second.bias[order])
    return out, first.weight[:, dropped].detach().clone()


def _reduced_clf(
    clf: Mlp, kept: list[int], dropped: list[int], pool_size: int
) -> tuple[Mlp, Tensor]:
    """The classifier with a first linear over the kept features; the dropped features'
    columns are returned for folding."""
    out = copy.deepcopy(clf)
    first = clf.lin_0

    def columns(channels: list[int]) -> list[int]:  # features are (channel, pool bin)
        return [c * pool_size + j for c in channels for j in range(pool_size)]

    out.lin_0 = _linear(first.weight[:, columns(kept)], first.bias)
    return out, first.weight[:, columns(dropped)].detach().clone()


def _linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    """A linear layer holding copies of `weight` and `bias`."""
    layer = nn.Linear(
        weight.shape[1],
        weight.shape[0],
        bias=bias is not None,
        dtype=weight.dtype,
        device=weight.device,
    )
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


@contextlib.contextmanager
def _untraced() -> Iterator[None]:
    """Keep a computation out of an ongoing torch.jit trace (e.g. an ONNX export), so its
    results enter the trace as constants."""
    get, set_ = (getattr(torch._C, n, None) for n in ("_get_tracing_state", "_set_tracing_state"))
    state = get() if get else None
    if state is not None:
        set_(None)
    try:
        yield
    finally:
        if state is not None:
            set_(state)


__all__ = [
    "ECG_CRNN",
    "ECG_SEQ_LAB_NET",
    "HEADS",
    "ConstantInputsModel",
    "FrameMlp",
    "HeadSpec",
    "ReducedLeadModel",
    "WholeModel",
    "build_model",
    "derive_whole_variant",
    "resolve_head_config",
]
