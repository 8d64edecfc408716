"""torch_ecg's recurrent and global-attention layers of a whole model: the stacked LSTM
(`rnn.name` lstm), global context (`attn.name` gc) and non-local attention (nl).

Module and parameter names are torch_ecg's, so its state dicts load with `strict=True`:

    rnn.lstm_{i} / rnn.bidirectional_lstm_{i}   nn.LSTM, one layer each (i from 1), its own
                                                hidden size; rnn.dropout_{i} between layers
    attn.conv_mask, attn.channel_{mul,add}_conv.{0,1,3}          GlobalContextBlock
    attn.mid_layers.{g,theta,phi}.conv.conv1d, attn.W.conv1d[, .batch_norm]   NonLocalBlock

Every layer here works on the head's (batch, channels, frames) layout. torch_ecg's
StackedLSTM starts every layer from zero state (it drops the previous layer's final state)
and, with `retseq` false, returns the last frame's output (for a bidirectional layer, the
backward direction's output there has seen only that frame): both kept as they are.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .config import ConvSpec, positive_int
from .errors import MscnnError
from .model import ConvBnActivation

LSTM_KEYS = ("hidden_sizes", "bias", "dropouts", "bidirectional", "retseq")
GC_KEYS = ("ratio", "reduction", "pooling_type", "fusion_types")
GC_POOLING = ("attn", "avg")
GC_FUSIONS = ("add", "mul")
NL_LAYERS = ("g", "theta", "phi", "W")
NL_KEYS = ("filter_lengths", "subsample_length", "batch_norm", "norm", "mid_channels")


# --------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class LstmSpec:
    """torch_ecg's StackedLSTM: one nn.LSTM per hidden size."""

    input_size: int
    hidden_sizes: tuple[int, ...]
    bias: tuple[bool, ...]
    dropouts: tuple[float, ...]  # after every layer but the last
    bidirectional: bool
    retseq: bool

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def out_features(self) -> int:
        return self.hidden_sizes[-1] * self.directions

    def layer_sizes(self) -> list[tuple[int, int]]:
        """(input size, hidden size) of every layer."""
        inputs = [self.input_size] + [h * self.directions for h in self.hidden_sizes[:-1]]
        return list(zip(inputs, self.hidden_sizes, strict=True))

    def layer_names(self) -> list[str]:
        prefix = "bidirectional_lstm" if self.bidirectional else "lstm"
        return [f"{prefix}_{i + 1}" for i in range(len(self.hidden_sizes))]

    def count_macs(self, frames: int) -> int:
        """Multiply-accumulates per window: the input projection and the recurrence of the
        four gates, every direction and layer (the gates' elementwise work not counted)."""
        return frames * self.directions * sum(4 * h * (i + h) for i, h in self.layer_sizes())


@dataclass(frozen=True)
class GcSpec:
    channels: int
    mid: int
    pooling: str
    fusions: tuple[str, ...]


@dataclass(frozen=True)
class NlSpec:
    channels: int
    mid: int
    kernels: Mapping[str, int]
    subsample: int
    norm: Any  # torch_ecg's Conv_Bn_Activation `norm` of W (False, True or a norm name)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise MscnnError(f"{where}: expected true or false, got {value!r}")
    return value


def _rate(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise MscnnError(f"{where}: expected a rate in [0, 1), got {value!r}")
    return float(value)


def _per_layer(value: Any, n: int, where: str) -> list:
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        if len(value) != n:
            raise MscnnError(f"{where}: {len(value)} values for {n} LSTM layers; give one each")
        return list(value)
    return [value] * n


def _keys(section: Mapping[str, Any], valid: Sequence[str], where: str) -> None:
    unknown = sorted(set(section) - set(valid) - {"kernel_initializer", "kw_initializer"})
    if unknown:
        raise MscnnError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: "
            f"{', '.join(valid)}"
        )


def resolve_lstm(
    section: Mapping[str, Any], where: str, input_size: int
) -> tuple[dict[str, Any], LstmSpec]:
    _keys(section, LSTM_KEYS, where)
    missing = [k for k in LSTM_KEYS if k not in section]
    if missing:
        raise MscnnError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")
    hidden = section["hidden_sizes"]
    if isinstance(hidden, str | bytes) or not isinstance(hidden, Sequence) or not hidden:
        raise MscnnError(f"{where}['hidden_sizes']: expected a non-empty list, got {hidden!r}")
    hidden = [positive_int(h, f"{where}['hidden_sizes'][{i}]") for i, h in enumerate(hidden)]
    n = len(hidden)
    bias = [
        _bool(b, f"{where}['bias']") for b in _per_layer(section["bias"], n, f"{where}['bias']")
    ]
    drops = _per_layer(section["dropouts"], n, f"{where}['dropouts']")
    drops = [_rate(p, f"{where}['dropouts'][{i}]") for i, p in enumerate(drops)]
    spec = LstmSpec(
        input_size,
        tuple(hidden),
        tuple(bias),
        tuple(drops),
        _bool(section["bidirectional"], f"{where}['bidirectional']"),
        _bool(section["retseq"], f"{where}['retseq']"),
    )
    config = {
        "hidden_sizes": hidden,
        "bias": bias,
        "dropouts": drops,
        "bidirectional": spec.bidirectional,
        "retseq": spec.retseq,
    }
    return config, spec


def resolve_gc(section: Mapping[str, Any], where: str, channels: int) -> tuple[dict, GcSpec]:
    _keys(section, GC_KEYS, where)
    ratio = positive_int(section.get("ratio", 16), f"{where}['ratio']")
    reduction = _bool(section.get("reduction", True), f"{where}['reduction']")
    mid = channels // ratio if reduction else channels * ratio
    if mid < 1:
        raise MscnnError(
            f"{where}['ratio']: {ratio} leaves no hidden units for {channels} channels; "
            f"use at most {channels}"
        )
    pooling = section.get("pooling_type", "attn")
    if pooling not in GC_POOLING:
        raise MscnnError(f"{where}['pooling_type']: {pooling!r}; choose from: attn, avg")
    fusions = section.get("fusion_types", ["add"])
    if isinstance(fusions, str) or not isinstance(fusions, Sequence) or not fusions:
        raise MscnnError(f"{where}['fusion_types']: expected a non-empty list of add, mul")
    bad = [f for f in fusions if f not in GC_FUSIONS]
    if bad:
        raise MscnnError(f"{where}['fusion_types']: {bad!r}; choose from: add, mul")
    spec = GcSpec(channels, mid, pooling, tuple(fusions))
    config = {"ratio": ratio, "reduction": reduction, "pooling_type": pooling}
    return {**config, "fusion_types": list(fusions)}, spec


def resolve_nl(section: Mapping[str, Any], where: str, channels: int) -> tuple[dict, NlSpec]:
    _keys(section, NL_KEYS, where)
    lengths = section.get("filter_lengths", 1)
    if isinstance(lengths, Mapping):
        unknown = sorted(set(lengths) - set(NL_LAYERS))
        if unknown:
            raise MscnnError(
                f"{where}['filter_lengths']: unknown layer(s) {unknown}; valid: g, theta, phi, W"
            )
        kernels = {k: lengths.get(k, 1) for k in NL_LAYERS}
    else:
        kernels = dict.fromkeys(NL_LAYERS, lengths)
    kernels = {k: positive_int(v, f"{where}['filter_lengths'][{k!r}]") for k, v in kernels.items()}
    subsample = positive_int(section.get("subsample_length", 2), f"{where}['subsample_length']")
    mid = section.get("mid_channels") or (channels // 2) or 1
    mid = positive_int(mid, f"{where}['mid_channels']")
    norm = section.get("norm", section.get("batch_norm"))
    if norm not in (None, False, True, "batch_norm"):
        raise MscnnError(f"{where}['batch_norm']: {norm!r}; choose from: true, false")
    spec = NlSpec(channels, mid, kernels, subsample, bool(norm))
    config = {"filter_lengths": kernels, "subsample_length": subsample, "batch_norm": bool(norm)}
    return {**config, "mid_channels": mid}, spec


# --------------------------------------------------------------------------------------
# Layers


class StackedLstm(nn.Sequential):
    """torch_ecg's StackedLSTM on the head's layout: (batch, channels, frames) in,
    (batch, directions * hidden, frames) out, or (batch, directions * hidden) for the last
    frame when `retseq` is false."""

    def __init__(self, spec: LstmSpec) -> None:
        super().__init__()
        self.spec = spec
        layers = zip(spec.layer_names(), spec.layer_sizes(), spec.bias, strict=True)
        for i, (name, (inputs, hidden), bias) in enumerate(layers):
            lstm = nn.LSTM(
                inputs, hidden, num_layers=1, bias=bias, bidirectional=spec.bidirectional
            )
            self.add_module(name, lstm)
            if spec.dropouts[i] > 0 and i < len(spec.hidden_sizes) - 1:
                self.add_module(f"dropout_{i + 1}", nn.Dropout(spec.dropouts[i]))

    def forward(self, x: Tensor) -> Tensor:
        out = x.permute(2, 0, 1)  # (frames, batch, channels), as nn.LSTM wants
        for module in self:
            out = module(out)[0] if isinstance(module, nn.LSTM) else module(out)
        if not self.spec.retseq:
            return out[-1]  # (batch, directions * hidden)
        return out.permute(1, 2, 0)


class GlobalContext(nn.Module):
    """torch_ecg's GlobalContextBlock: a context vector (softmax-weighted or mean over
    frames) turned into a per-channel scale (sigmoid) and/or shift."""

    def __init__(self, spec: GcSpec) -> None:
        super().__init__()
        self.spec = spec
        if spec.pooling == "attn":
            self.conv_mask = nn.Conv1d(spec.channels, 1, kernel_size=1)
            self.softmax = nn.Softmax(dim=2)
        else:
            self.avg_pool = nn.AdaptiveAvgPool1d(1)
        for fusion in GC_FUSIONS:
            conv = None
            if fusion in spec.fusions:
                conv = nn.Sequential(
                    nn.Conv1d(spec.channels, spec.mid, kernel_size=1),
                    nn.LayerNorm([spec.mid, 1]),
                    nn.ReLU(inplace=True),
                    nn.Conv1d(spec.mid, spec.channels, kernel_size=1),
                )
            setattr(self, f"channel_{fusion}_conv", conv)

    def context(self, x: Tensor) -> Tensor:
        """(batch, channels, frames) -> (batch, channels, 1)."""
        if self.spec.pooling == "avg":
            return self.avg_pool(x)
        weights = self.softmax(self.conv_mask(x))  # (batch, 1, frames)
        return torch.matmul(x, weights.transpose(1, 2))

    def forward(self, x: Tensor) -> Tensor:
        context = self.context(x)
        out = x
        if self.channel_mul_conv is not None:
            out = out * torch.sigmoid(self.channel_mul_conv(context))
        if self.channel_add_conv is not None:
            out = out + self.channel_add_conv(context)
        return out


def _conv_block(inputs: int, outputs: int, kernel: int, norm: bool) -> ConvBnActivation:
    block = {
        "bias": True,
        "kernel_initializer": None,
        "kw_initializer": {},
        "batch_norm": norm,
        "activation": None,
        "kw_activation": {},
    }
    return ConvBnActivation(ConvSpec(inputs, outputs, kernel, 1), 1, block)


class NonLocal(nn.Module):
    """torch_ecg's NonLocalBlock: every frame attends (softmax over frames) to every
    subsampled frame; the result, projected back by W, is added to the input."""

    def __init__(self, spec: NlSpec) -> None:
        super().__init__()
        self.spec = spec
        self.mid_layers = nn.ModuleDict()
        for k in ("g", "theta", "phi"):
            layer = nn.Sequential()
            layer.add_module("conv", _conv_block(spec.channels, spec.mid, spec.kernels[k], False))
            if spec.subsample > 1 and k != "theta":
                layer.add_module("max_pool", nn.MaxPool1d(kernel_size=spec.subsample))
            self.mid_layers[k] = layer
        self.W = _conv_block(spec.mid, spec.channels, spec.kernels["W"], spec.norm)

    def forward(self, x: Tensor) -> Tensor:
        g = self.mid_layers["g"](x).permute(0, 2, 1)  # (batch, frames', mid)
        theta = self.mid_layers["theta"](x).permute(0, 2, 1)  # (batch, frames, mid)
        phi = self.mid_layers["phi"](x)  # (batch, mid, frames')
        weights = torch.softmax(torch.matmul(theta, phi), dim=-1)  # (batch, frames, frames')
        y = self.W(torch.matmul(weights, g).permute(0, 2, 1))
        diff = x.shape[-1] - y.shape[-1]
        if diff:
            y = nn.functional.pad(y, (diff // 2, diff - diff // 2))
        return y + x


__all__ = [
    "GcSpec",
    "GlobalContext",
    "LstmSpec",
    "NlSpec",
    "NonLocal",
    "StackedLstm",
    "resolve_gc",
    "resolve_lstm",
    "resolve_nl",
]
