"""Exact streaming inference: a pure step function with explicit state, and a stream on it.

A wearable sees an endless signal, not 10 s windows. Re-running a window every hop
recomputes each sample many times and holds the whole window's activations; a dilated
CNN only needs, per conv, the past samples its kernel still reaches (Fast WaveNet's
per-layer queues; Rybakov et al. 2020, "Streaming keyword spotting on mobile devices").

Semantics (what "exact" means). Streaming a record of any length L in chunks of any
size and then flushing gives the frames the offline model gives on the whole record at
once: `torch.cat(pushes + [flush()], -1)` equals `model(x[None])[0]` for the backbone
(channels, frames), and `model(x[None])[0].T` for a sequence-labelling head (classes,
frames): streaming output is always time-last. Every conv's zero padding is reproduced
exactly: at the start the conv states are zeros; at the end the flush tells the step the
record's length, and every layer zeroes the samples past its offline length (pooling
floors, "same" padding, the (1, 0) pad after even kernels) before the next conv sees them.

The step (`StepModule`, pure, static shapes, exportable):

    forward(x, n_valid, *states) -> (frames, valid, *new_states)

- `x` (1, leads, hop) float32, `hop` a positive multiple of the total subsampling R;
  `n_valid` (1,) int64, the real samples at the front of `x` (the rest is ignored).
  While streaming, n_valid == hop. To end a record of L samples: send its last partial
  hop with n_valid = L mod hop (an empty one, n_valid = 0, when L is a multiple of hop),
  then hops with n_valid = 0 until a step returns valid[1] < frames_per_step; at most
  `flush_steps` hops end any record. (A record the offline model refuses, too short
  for its pooling, has no frames to give: StreamingModel.flush refuses it the same way.)
- `states`: `state_specs()` lists them, in order, with names, shapes and dtypes; all
  start at zero (`initial_states()`). The first two are counters: `clock.step` (hops
  done) and `clock.length` (real samples so far), both (1,) int64; the record has
  ended once length < step * hop. The rest are float32 (1, channels, n): per conv the
  last n = dilation * (kernel - 1) samples of its input, per down-sampler and branch the
  few samples that align pooling windows and the branches' delays; for a unidirectional
  LSTM head the frames that align its hops with offline frame 0, then h and c
  (1, 1, hidden) per layer.
- `frames` (1, channels, m) (classes for a head), m = hop / R; `valid` (2,) int64
  [start, stop): `frames[..., start:stop]` are the next offline frames, in order. The
  step lags `delay_frames` frames behind its input (look-ahead plus alignment), so the
  first steps start later than 0; after the end, stop stops short of m.

`StreamingModel(model, hop)` buffers arbitrary chunks to whole hops and drives exactly
this step, so the reference and a compiled step share one semantics.

Refused, naming the layer and why: anything with global context (SE attention, global
pooling, bidirectional LSTMs, normalisation over time, interpolation back to the input
length), training mode, and layers this module does not know.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import MscnnError
from .heads import ECG_SEQ_LAB_NET, FrameMlp, ReducedLeadModel, SqueezeExcitation, WholeModel
from .model import ACTIVATIONS, MultiScopicCNN
from .recurrent import GlobalContext, NonLocal, StackedLstm

log = logging.getLogger(__name__)

# Layers applied to every sample on its own (nn.Linear, in the head, to every frame).
_ELEMENTWISE = (*ACTIVATIONS.values(), nn.Dropout, nn.Dropout1d, nn.AlphaDropout)
_GLOBAL = {
    nn.GroupNorm: "normalises over the whole record (its statistics need every sample)",
    nn.InstanceNorm1d: "normalises over the whole record (its statistics need every sample)",
    nn.LayerNorm: "normalises over the last axis, which is time here",
    nn.AdaptiveAvgPool1d: "is a global pooling over the whole record",
    nn.AdaptiveMaxPool1d: "is a global pooling over the whole record",
    nn.RNNBase: "is recurrent over the whole record",
    nn.MultiheadAttention: "attends over the whole record",
    nn.Upsample: "interpolates to the record's length",
}


@dataclass(frozen=True)
class StateSpec:
    """One state tensor of the step: a runner allocates it zeroed and passes it back."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # "float32" or "int64"

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


class _Ctx:
    """What one step's ops share: the clock, the end flag, and the states in and out."""

    def __init__(self, step: Tensor, ended: Tensor, states: Iterator[Tensor]) -> None:
        self.step, self.ended, self._states = step, ended, states
        self.new: list[Tensor] = []

    def take(self) -> Tensor:
        return next(self._states)

    def give(self, state: Tensor) -> None:
        self.new.append(state)

    def positions(self, n: int, delay: int) -> Tensor:
        """Offline indices of a chunk of n samples lagging `delay` behind the clock."""
        return self.step * n - delay + torch.arange(n, dtype=torch.int64)

    def inside(self, n: int, delay: int, start: int, length: Tensor) -> Tensor:
        """(n,) bool: the chunk's samples inside [start, length) (no end before the end)."""
        idx = self.positions(n, delay)
        return (idx >= start) & ((idx < length) | ~self.ended)


# --------------------------------------------------------------------------------------
# Stream ops, one per layer (public: compile/int8/step.py plans the int8 step on them).
# Each knows its input rate (input samples per raw sample, as a divisor), its delay in and
# out (samples of its own rate that its chunk lags behind the clock), its channels, its
# states, how it maps the offline length, and `need(t)`: the last input index its output
# t reads. `bind(hop)` fixes the chunk sizes.


class StreamOp(nn.Module):
    def __init__(self, name: str, rate: int, delay: int, channels: int) -> None:
        super().__init__()
        self.name, self.rate, self.delay_in, self.channels = name, rate, delay, channels
        self.rate_out, self.delay_out, self.channels_out = rate, delay, channels
        self.n = self.n_out = 0

    def bind(self, hop: int) -> None:
        self.n = hop // self.rate
        self.n_out = hop // self.rate_out

    def states(self) -> list[tuple[str, tuple[int, ...]]]:
        return []

    def length(self, length: Any) -> Any:
        return length

    def need(self, t: int) -> int:
        return t

    def macs(self) -> int:
        return 0


class ConvOp(StreamOp):
    """Stride-1 conv with symmetric zero padding: its state is its last `span` inputs."""

    def __init__(self, name: str, rate: int, delay: int, conv: nn.Conv1d) -> None:
        super().__init__(name, rate, delay, conv.in_channels)
        self.conv, self.channels_out = conv, conv.out_channels
        self.span = conv.dilation[0] * (conv.kernel_size[0] - 1)
        self.pad = conv.padding[0]
        self.delay_out = delay + self.span - self.pad  # out[t] reads in[t + span - pad]

    def states(self):
        return [(self.name, (1, self.channels, self.span))] if self.span else []

    def length(self, length):
        return length + 2 * self.pad - self.span

    def need(self, t):
        return t + self.span - self.pad

    def macs(self):
        c = self.conv
        return self.n * c.out_channels * c.in_channels // c.groups * c.kernel_size[0]

    def forward(self, x: Tensor, length: Tensor, ctx: _Ctx) -> Tensor:
        # The conv's zero padding: its input outside the offline record is zero.
        x = torch.where(ctx.inside(self.n, self.delay_in, 0, length), x, 0.0)
        if self.span:
            x = torch.cat([ctx.take(), x], dim=-1)
            ctx.give(x[..., self.n :])  # the last span of span + n
        c = self.conv
        return F.conv1d(x, c.weight, c.bias, 1, 0, c.dilation, c.groups)


class PadOp(StreamOp):
    """A zero pad (left, right): a relabelling by `left`, zeros where it pads."""

    def __init__(self, name: str, rate: int, delay: int, channels: int, pad: Sequence[int]):
        super().__init__(name, rate, delay, channels)
        self.left, self.right = pad
        self.delay_out = delay - self.left

    def length(self, length):
        return length + self.left + self.right

    def need(self, t):
        return t - self.left

    def forward(self, x: Tensor, length: Tensor, ctx: _Ctx) -> Tensor:
        keep = ctx.inside(self.n, self.delay_out, self.left, length + self.left)
        return torch.where(keep, x, 0.0)


class PointwiseOp(StreamOp):
    """A layer applied to each sample on its own (a Linear layer: to each frame)."""

    def __init__(self, name: str, rate: int, delay: int, channels: int, layer: nn.Module):
        super().__init__(name, rate, delay, channels)
        self.layer, self.per_frame = layer, isinstance(layer, nn.Linear)
        if self.per_frame:
            self.channels_out = layer.out_features

    def macs(self):
        return self.n * self.channels * self.channels_out if self.per_frame else 0

    def forward(self, x: Tensor, length: Tensor, ctx: _Ctx) -> Tensor:
        if self.per_frame:  # (1, channels, n) -> (1, n, channels) -> back
            return self.layer(x.transpose(1, 2)).transpose(1, 2)
        return self.layer(x)


class DecimateOp(StreamOp):
    """Pooling (kernel = stride = s) or a strided 1x1 conv. A delay line of
    (-delay) mod s samples aligns its windows with the offline ones."""

    def __init__(self, name: str, rate: int, delay: int, channels: int, layer: nn.Module, s: int):
        super().__init__(name, rate, delay, channels)
        self.layer, self.s = layer, s
        self.pool = not isinstance(layer, nn.Conv1d)
        if not self.pool:
            self.channels_out = layer.out_channels
        self.align = (-delay) % s
        self.rate_out, self.delay_out = rate * s, (delay + self.align) // s

    def states(self):
        return [(f"{self.name}.align", (1, self.channels, self.align))] if self.align else []

    def length(self, length):
        if self.pool:  # pooling drops an incomplete last window; a strided conv keeps it
            return length // self.s
        return (length + self.s - 1) // self.s

    def need(self, t):
        return t * self.s + (self.s - 1 if self.pool else 0)

    def macs(self):
        c = self.layer
        return 0 if self.pool else self.n_out * c.out_channels * c.in_channels // c.groups

    def forward(self, x: Tensor, length: Tensor, ctx: _Ctx) -> Tensor:
        if self.align:
            x = torch.cat([ctx.take(), x], dim=-1)
            ctx.give(x[..., self.n :])
            x = x[..., : self.n]
        return self.layer(x)


class DelayOp(StreamOp):
    """A delay line of `by` samples: lines a branch up with the slowest before the concat."""

    def __init__(self, name: str, rate: int, delay: int, channels: int, by: int) -> None:
        super().__init__(name, rate, delay, channels)
        self.by, self.delay_out = by, delay + by

    def states(self):
        return [(self.name, (1, self.channels, self.by))] if self.by else []

    def forward(self, x: Tensor, length: Tensor, ctx: _Ctx) -> Tensor:
        if not self.by:
            return x
        x = torch.cat([ctx.take(), x], dim=-1)
        ctx.give(x[..., self.n :])
        return x[..., : self.n]


class LstmOp(StreamOp):
    """A unidirectional StackedLstm (one nn.LSTM per layer): its state is h and c per
    layer, carried from hop to hop and zero at the start (torch_ecg starts every layer
    from zero state). A delay line of (-delay) mod m frames (m frames per hop) makes each
    hop's frames start at a multiple of m, so the frames before offline frame 0 (the
    step's lag) fill whole hops, and those hops leave h and c at zero. Frames past the
    record's end come after its last frame, which they cannot change (the LSTM is causal)."""

    def __init__(self, name: str, rate: int, delay: int, channels: int, rnn: StackedLstm):
        super().__init__(name, rate, delay, channels)
        lstms = [(n, m) for n, m in rnn.named_children() if isinstance(m, nn.LSTM)]
        self.layers = [(f"{name}.{n}", m) for n, m in lstms]
        self.lstms = nn.ModuleList(m for _, m in self.layers)
        self.channels_out = rnn.spec.out_features
        self.align = 0

    def aligned(self, frames: int) -> None:
        """Fix the delay line for hops of `frames` frames (before the ops after it plan)."""
        self.align = (-self.delay_in) % frames
        self.delay_out = self.delay_in + self.align

    def states(self):
        out = [(f"{self.name}.align", (1, self.channels, self.align))] if self.align else []
        for name, lstm in self.layers:
            shape = (1, 1, lstm.hidden_size)
            out += [(f"{name}.h", shape), (f"{name}.c", shape)]
        return out

    def macs(self):
        return self.n * sum(4 * m.hidden_size * (m.input_size + m.hidden_size) for m in self.lstms)

    def forward(self, x: Tensor, length: Tensor, ctx: _Ctx) -> Tensor:
        if self.align:
            x = torch.cat([ctx.take(), x], dim=-1)
            ctx.give(x[..., self.n :])
            x = x[..., : self.n]
        started = ctx.positions(self.n, self.delay_out)[:1] >= 0  # the whole hop, once aligned
        seq = x.permute(2, 0, 1)  # (frames, 1, channels), as nn.LSTM wants
        for lstm in self.lstms:  # dropout between layers: identity in eval mode
            h0, c0 = ctx.take(), ctx.take()
            seq, (h, c) = lstm(seq, (h0, c0))
            ctx.give(torch.where(started, h, h0))
            ctx.give(torch.where(started, c, c0))
        return seq.permute(1, 2, 0)


# --------------------------------------------------------------------------------------
# The layer walk: module structure -> stream ops, refusing what cannot stream.


def _plan_sequence(seq: nn.Module, name: str, cursor: tuple[int, int, int], per_frame: bool):
    """Ops for the children of a plain nn.Sequential, in order; the cursor is the
    (rate, delay, channels) going in. Returns the ops and the cursor coming out."""
    ops: list[StreamOp] = []
    for child_name, child in seq.named_children():
        path = f"{name}.{child_name}"
        if isinstance(child, nn.Sequential) and type(child).forward is nn.Sequential.forward:
            new, cursor = _plan_sequence(child, path, cursor, per_frame)
        else:
            op = _plan_layer(child, path, cursor, per_frame)
            new = [op] if op is not None else []
            if op is not None:
                cursor = (op.rate_out, op.delay_out, op.channels_out)
        ops += new
    return ops, cursor


def _plan_layer(layer: nn.Module, name: str, cursor, per_frame: bool) -> StreamOp | None:
    """The stream op of one leaf layer, or MscnnError naming it and why it cannot stream."""
    kind = type(layer).__name__
    if isinstance(layer, nn.Conv1d) and not per_frame:
        return _plan_conv(layer, name, cursor)
    if isinstance(layer, nn.ConstantPad1d | nn.ZeroPad1d) and not per_frame:
        if layer.value != 0:
            raise _refuse(name, kind, f"pads with {layer.value}, not zeros")
        return PadOp(name, *cursor, layer.padding)
    if isinstance(layer, nn.MaxPool1d | nn.AvgPool1d) and not per_frame:
        return _plan_pool(layer, name, cursor)
    if isinstance(layer, nn.Identity):
        return None
    if isinstance(layer, nn.BatchNorm1d) and type(layer) is nn.BatchNorm1d:
        if layer.running_mean is None:
            raise _refuse(
                name,
                kind,
                "normalises with the whole record's statistics (track_running_stats=False)",
            )
        return PointwiseOp(name, *cursor, layer)
    if isinstance(layer, nn.Linear) and per_frame:
        return PointwiseOp(name, *cursor, layer)
    if isinstance(layer, _ELEMENTWISE):
        return PointwiseOp(name, *cursor, layer)
    if isinstance(layer, nn.Softmax | nn.LogSoftmax) and per_frame and layer.dim in (-1, 2):
        return PointwiseOp(name, *cursor, _PerFrame(layer))
    for cls, why in _GLOBAL.items():
        if isinstance(layer, cls):
            raise _refuse(name, kind, f"{why}, so a frame would need the future")
    known = (
        "convs, zero pads, pooling, batch norm in eval mode, element-wise "
        "activations, per-frame Linear"
    )
    raise _refuse(name, kind, f"is not a layer known to stream ({known})")


class _PerFrame(nn.Module):
    """Applies a channels-last layer (softmax over classes) to (1, channels, n)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.inner = layer

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x.transpose(1, 2)).transpose(1, 2)


def _plan_conv(conv: nn.Conv1d, name: str, cursor) -> StreamOp:
    kind = type(conv).__name__
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise _refuse(
            name,
            kind,
            f"pads {conv.padding!r} in mode {conv.padding_mode!r}; "
            "only explicit zero padding streams",
        )
    stride = conv.stride[0]
    if stride == 1:
        return ConvOp(name, *cursor[:2], conv)
    if conv.kernel_size[0] == 1 and conv.padding[0] == 0:
        return DecimateOp(name, *cursor, conv, stride)
    raise _refuse(
        name,
        kind,
        f"has stride {stride} with kernel {conv.kernel_size[0]} and "
        "padding; only stride 1, or a 1x1 down-sampling conv, streams",
    )


def _plan_pool(pool: nn.Module, name: str, cursor) -> StreamOp:
    def one(v):
        return v[0] if isinstance(v, tuple) else v

    k, s, p = one(pool.kernel_size), one(pool.stride), one(pool.padding)
    dilation = one(getattr(pool, "dilation", 1))
    if k != s or p != 0 or dilation != 1 or pool.ceil_mode:
        raise _refuse(
            name,
            type(pool).__name__,
            f"has kernel {k}, stride {s}, padding {p}, "
            f"dilation {dilation}, ceil_mode {pool.ceil_mode}; only kernel = stride "
            "without padding streams",
        )
    return DecimateOp(name, *cursor, pool, s)


def _refuse(name: str, kind: str, why: str) -> MscnnError:
    return MscnnError(f"cannot stream: layer {name} ({kind}) {why}")


def _plan_backbone(cnn: MultiScopicCNN, prefix: str) -> tuple[list[list[StreamOp]], tuple]:
    """Ops per branch, with the delay line that lines each up with the slowest; and the
    (rate, delay, channels) of the concatenated output."""
    names = list(cnn.branches)
    plans = [_plan_branch(cnn, prefix, name, 0) for name in names]
    ends = [end for _, end in plans]
    if len({rate for rate, _, _ in ends}) > 1:
        raise MscnnError(
            f"cannot stream: the branches subsample by {[e[0] for e in ends]} in total, so "
            "their frames never line up (nor do their offline lengths)"
        )
    reduction, delay = ends[0][0], max(d for _, d, _ in ends)
    branches = []
    for name, (ops, (_, d, channels)) in zip(names, plans, strict=True):
        # The delay line goes where it is smaller: on the branch's input (leads x
        # reduction samples per frame) or on its output (channels per frame). Shifting
        # the input by whole frames keeps every pooling window aligned.
        if d < delay and cnn.in_channels * reduction < channels:
            ops, _ = _plan_branch(cnn, prefix, name, (delay - d) * reduction)
        elif d < delay:
            ops.append(DelayOp(f"{prefix}branches.{name}.delay", reduction, d, channels, delay - d))
        branches.append(ops)
    return branches, (reduction, delay, sum(c for _, _, c in ends))


def _plan_branch(cnn: MultiScopicCNN, prefix: str, name: str, by: int):
    """The ops of one branch, after an input delay line of `by` samples (none if 0)."""
    ops = [DelayOp(f"{prefix}branches.{name}.delay", 1, 0, cnn.in_channels, by)] if by else []
    start = (1, by, cnn.in_channels)
    more, end = _plan_sequence(cnn.branches[name], f"{prefix}branches.{name}", start, False)
    return ops + more, end


def _plan_model(model: nn.Module, hop: Any):
    """(branches, head ops, (reduction, delay, channels), backbone) of a streamable model
    (the hop fixes an LSTM's delay line; it is checked in full by the caller)."""
    if isinstance(model, MultiScopicCNN):
        branches, end = _plan_backbone(model, "")
        return branches, [], end, model
    if isinstance(model, ReducedLeadModel):
        raise MscnnError(
            f"cannot stream this reduced-lead {model.head}: it folds the dropped leads' "
            "features in per record length; stream the full model on zero-filled leads "
            "(mscnn.zero_fill), or a reduced-lead backbone"
        )
    if not isinstance(model, WholeModel):
        raise MscnnError(
            f"cannot stream a model of type {type(model).__name__}: streaming knows "
            "MultiScopicCNN and the per-frame head ECG_SEQ_LAB_NET"
        )
    if model.spec.recover_length:
        raise MscnnError(
            "cannot stream: recover_length=True interpolates the frames back to the "
            "record's length (align_corners), so every output depends on where the record "
            "ends; stream the model with recover_length=False"
        )
    branches, end = _plan_backbone(model.cnn, "cnn.")
    rnn_ops: list[StreamOp] = []
    if isinstance(model.rnn, StackedLstm):
        rnn_ops, end = _plan_lstm(model.rnn, end, hop)
    if isinstance(model.rnn, FrameMlp):  # per frame, like the classifier
        rnn_ops, end = _plan_sequence(model.rnn, "rnn", end, per_frame=True)
    if isinstance(model.attn, GlobalContext | NonLocal):
        why = "weighs every frame against the whole record (softmax over frames)"
        raise _refuse("attn", type(model.attn).__name__, f"{why}, so a frame would need the future")
    if isinstance(model.attn, SqueezeExcitation):
        why = "scales every channel by its mean over the whole record"
        raise _refuse("attn", "SqueezeExcitation", f"{why}, so a frame would need the future")
    if hasattr(model, "pool"):  # ECG_CRNN: a global pooling, refused naming it
        _plan_layer(model.pool, "pool", end, per_frame=True)
    if not isinstance(model, ECG_SEQ_LAB_NET):
        raise MscnnError(f"cannot stream a {model.head}: it has no per-frame output")
    head, _ = _plan_sequence(model.clf, "clf", end, per_frame=True)
    return branches, rnn_ops + head, end, model.cnn


def _plan_lstm(rnn: StackedLstm, cursor, hop: Any) -> tuple[list[StreamOp], tuple]:
    """The LSTM's op, its delay line fixed for the hop; a bidirectional one is refused."""
    if rnn.spec.bidirectional:
        why = (
            "runs backwards from the end of the record, so the first frame needs the "
            "whole record; see docs/streaming.md for the look-ahead a bounded "
            "approximation would need, or train a unidirectional LSTM"
        )
        raise _refuse(f"rnn.{rnn.spec.layer_names()[0]}", "LSTM", why)
    op = LstmOp("rnn", *cursor, rnn)
    op.aligned(_check_hop(hop, cursor[0]) // cursor[0])
    return [op], (op.rate_out, op.delay_out, op.channels_out)


def _backbone_of(model: nn.Module) -> MultiScopicCNN:
    """The MultiScopicCNN whose lengths decide the model's (offline) output length."""
    return model if isinstance(model, MultiScopicCNN) else model.cnn


def _check_eval(model: nn.Module) -> None:
    odd = sorted({str(p.dtype) for p in model.parameters()} - {"torch.float32"})
    if odd:
        raise MscnnError(
            f"cannot stream: the model holds {', '.join(odd)} weights; streaming "
            "runs float32 (model.float())"
        )
    for name, module in model.named_modules():
        if module.training:
            raise MscnnError(
                f"cannot stream: {name or 'the model'} is in training mode (batch "
                "statistics, dropout); call model.eval() first"
            )


def _check_hop(hop: Any, reduction: int) -> int:
    whole = isinstance(hop, int | np.integer) and not isinstance(hop, bool)
    if not whole or hop <= 0 or hop % reduction:
        near = reduction * max(1, round(hop / reduction)) if whole else reduction
        raise MscnnError(
            f"hop {hop!r}: expected a positive multiple of the model's total subsampling "
            f"{reduction} (e.g. {near})"
        )
    return int(hop)


# --------------------------------------------------------------------------------------
# The step


class StepModule(nn.Module):
    """The pure step `forward(x, n_valid, *states) -> (frames, valid, *new_states)`.

    No Python-side state and static shapes, so it exports (ONNX, then TVM) as one
    function a runner calls per hop; the protocol is in this module's docstring.
    """

    def __init__(self, model: nn.Module, hop: int) -> None:
        super().__init__()
        _check_eval(model)
        branches, head, (reduction, delay, channels), backbone = _plan_model(model, hop)
        self.hop = _check_hop(hop, reduction)
        self.reduction, self.delay_frames, self.leads = reduction, delay, backbone.in_channels
        self.frames_per_step = self.hop // reduction
        self.channels = head[-1].channels_out if head else channels
        for op in [*(op for ops in branches for op in ops), *head]:
            op.bind(self.hop)
        self.branches = nn.ModuleList(nn.ModuleList(ops) for ops in branches)
        self.head = nn.ModuleList(head)
        self.flush_steps = self._flush_steps()
        super().train(False)  # shares the model's layers: never flip them to training
        log.debug("step: hop %d, delay %d frames, %d state bytes", hop, delay, self.state_bytes)

    def train(self, mode: bool = True) -> StepModule:
        if mode:
            raise MscnnError("a StepModule runs in eval mode only (it shares the model's layers)")
        return super().train(False)

    # -- what a runner needs to know --------------------------------------------------------
    def state_specs(self) -> list[StateSpec]:
        """Names, shapes and dtypes of the states, in the order forward takes them."""
        specs = [StateSpec("clock.step", (1,), "int64"), StateSpec("clock.length", (1,), "int64")]
        for ops in [*self.branches, self.head]:  # the order forward takes them in
            specs += [StateSpec(n, s, "float32") for op in ops for n, s in op.states()]
        return specs

    def initial_states(self) -> list[Tensor]:
        """The state of a stream before its first sample: zeros (the offline zero padding)."""
        dtypes = {"float32": torch.float32, "int64": torch.int64}
        return [torch.zeros(s.shape, dtype=dtypes[s.dtype]) for s in self.state_specs()]

    @property
    def state_bytes(self) -> int:
        """Bytes of the per-layer float32 state (the two int64 counters add 16)."""
        return sum(s.nbytes for s in self.state_specs() if s.dtype == "float32")

    @property
    def look_ahead(self) -> int:
        """Input samples after a frame's own `reduction` samples that the frame depends on:
        the model's latency, whatever the hop (the step adds its alignment and the hop)."""
        last = 0
        for ops in self.branches:
            t = 0
            for op in reversed([*ops, *self.head]):
                t = op.need(t)
            last = max(last, t)
        return max(0, last - (self.reduction - 1))

    def output_length(self, samples: int) -> int:
        """Frames of a record of `samples` samples, by the step's own length arithmetic."""
        length = samples
        for op in [*self.branches[0], *self.head]:
            length = op.length(length)
        return max(0, length)

    def count_macs(self) -> int:
        """Multiply-accumulates of one step (convs and Linear layers)."""
        return sum(op.macs() for op in self.modules() if isinstance(op, StreamOp))

    def _flush_steps(self) -> int:
        """The most steps that end a record (its partial hop, then empty hops), for a
        runner's loop bound; the length arithmetic repeats with period `hop`."""
        m, hop, worst = self.frames_per_step, self.hop, 1
        base = (self.delay_frames // m + 2) * hop
        for samples in range(base, base + hop):
            end = self.output_length(samples) - 1 + self.delay_frames  # last frame, as clock
            extra = 1 if (end + 1) % m == 0 else 0  # ends a chunk: one more empty step says so
            worst = max(worst, end // m - samples // hop + 1 + extra)
        return worst

    # -- the step -------------------------------------------------------------------------
    def forward(self, x: Tensor, n_valid: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        # x: (1, leads, hop); n_valid, states[0:2]: (1,) int64 -> frames (1, channels, m)
        step, seen = states[0], states[1]
        length = seen + n_valid
        ended = length < (step + 1) * self.hop
        ctx = _Ctx(step, ended, iter(states[2:]))
        x = torch.where(ctx.inside(self.hop, 0, 0, length), x, 0.0)  # no padding gets in
        outs = []
        for ops in self.branches:
            y, frames = x, length
            for op in ops:
                y, frames = op(y, frames, ctx), op.length(frames)
            outs.append(y)
        y = torch.cat(outs, dim=1)
        for op in self.head:
            y, frames = op(y, frames, ctx), op.length(frames)
        return (y, self._valid(step, ended, frames), step + 1, length, *ctx.new)

    def _valid(self, step: Tensor, ended: Tensor, frames: Tensor) -> Tensor:
        """[start, stop) of this step's frames that are offline frames (int64 (2,))."""
        m = self.frames_per_step
        first = step * m - self.delay_frames  # offline index of the step's frame 0
        start = torch.clamp(-first, 0, m)
        stop = torch.where(ended, torch.clamp(frames - first, 0, m), torch.full_like(first, m))
        return torch.cat([start, torch.maximum(stop, start)])


# --------------------------------------------------------------------------------------
# The stream


class StreamingModel:
    """Push chunks of any size, get the frames completed so far; flush at the end.

    `torch.cat([push(a), push(b), ..., flush()], -1)` equals the offline model on the
    whole record (time last: (channels, frames), or (classes, frames) for a sequence-
    labelling head, i.e. its offline (frames, classes) output transposed). Built on
    `StepModule`: chunks are buffered to whole hops and the step runs per hop, so this
    reference and a compiled step share one semantics. After `flush()` the stream is
    reset for the next record. A refused chunk (NaN/Inf, wrong leads or dtype) leaves the
    stream as it was. A step is many small ops: run it with torch.set_num_threads(1)
    (measured on a busy 2-core machine: two threads made each step 5-25x slower).
    """

    def __init__(self, model: nn.Module, hop: int, fs: int = 500) -> None:
        self.step_module = StepModule(model, hop)
        self._offline = model
        self.fs = fs
        self.reset()

    # -- properties -----------------------------------------------------------------------
    @property
    def hop(self) -> int:
        return self.step_module.hop

    @property
    def reduction(self) -> int:
        """Total subsampling: input samples per frame."""
        return self.step_module.reduction

    @property
    def look_ahead(self) -> int:
        """Future input samples a frame needs beyond its own (see StepModule.look_ahead)."""
        return self.step_module.look_ahead

    @property
    def look_ahead_ms(self) -> float:
        return 1000.0 * self.look_ahead / self.fs

    @property
    def state_bytes(self) -> int:
        return self.step_module.state_bytes

    @property
    def samples(self) -> int:
        """Samples pushed since the last reset or flush."""
        return self._length

    # -- the stream -----------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the record so far: a new stream starts from the zero state."""
        self._states = self.step_module.initial_states()
        self._pending = torch.zeros(1, self.step_module.leads, 0)
        self._length = 0

    def push(self, x: Tensor | np.ndarray) -> Tensor:
        """Feed `x` (leads, n) float32, any n >= 0; the frames completed so far (C, k)."""
        x = self._check(x)
        pending = torch.cat([self._pending, x[None]], dim=-1)
        whole = pending.shape[-1] // self.hop * self.hop
        frames = [
            self._step(pending[..., i : i + self.hop], self.hop)[0]
            for i in range(0, whole, self.hop)
        ]
        self._pending = pending[..., whole:]
        self._length += x.shape[-1]
        return self._cat(frames)

    def flush(self) -> Tensor:
        """End the record: the remaining frames (C, k); the stream is then reset.

        A record shorter than the model accepts offline is refused the same way, and the
        stream is kept (push more samples, or reset()).
        """
        if self._length == 0:
            return self._cat([])
        backbone = self._backbone()
        try:
            backbone.compute_output_shape(self._length)
        except MscnnError as exc:
            raise MscnnError(f"flush: {exc}; push more samples or reset()") from None
        hop, pending = self.hop, self._pending
        x = torch.cat([pending, torch.zeros(1, pending.shape[1], hop - pending.shape[-1])], -1)
        frames, stop = self._step(x, pending.shape[-1])
        out, steps = [frames], 1
        while stop == self.step_module.frames_per_step:
            if steps == self.step_module.flush_steps:  # the bound a runner relies on
                raise RuntimeError(f"the record did not end within {steps} steps")
            frames, stop = self._step(torch.zeros_like(x), 0)
            out.append(frames)
            steps += 1
        self.reset()
        return self._cat(out)

    # -- helpers --------------------------------------------------------------------------
    def _step(self, x: Tensor, n_valid: int) -> tuple[Tensor, int]:
        with torch.no_grad():
            frames, valid, *self._states = self.step_module(
                x, torch.tensor([n_valid], dtype=torch.int64), *self._states
            )
        start, stop = (int(v) for v in valid)
        return frames[0, :, start:stop], stop

    def _cat(self, frames: list[Tensor]) -> Tensor:
        if not frames:
            return torch.zeros(self.step_module.channels, 0)
        return torch.cat(frames, dim=-1)

    def _backbone(self) -> MultiScopicCNN:
        return _backbone_of(self._offline)

    def _check(self, x: Any) -> Tensor:
        leads = self.step_module.leads
        if isinstance(x, np.ndarray):
            if x.dtype != np.float32:
                raise MscnnError(f"push: dtype {x.dtype}; expected float32 (x.astype(np.float32))")
            x = torch.from_numpy(np.ascontiguousarray(x))
        elif not isinstance(x, Tensor):
            raise MscnnError(
                f"push: expected a float32 tensor or numpy array, got {type(x).__name__}"
            )
        elif x.dtype != torch.float32:
            raise MscnnError(f"push: dtype {x.dtype}; expected torch.float32 (x.float())")
        if x.dim() != 2 or x.shape[0] != leads:
            raise MscnnError(f"push: shape {tuple(x.shape)}; expected ({leads} leads, samples)")
        if not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).nonzero()[0, 1])
            raise MscnnError(
                f"push: the chunk holds NaN or Inf (first at sample {bad}); it was not taken "
                "and the stream is as before: send a clean chunk or reset()"
            )
        return x.detach().cpu()


def window_activation_bytes(model: nn.Module, samples: int) -> int:
    """Bytes of every layer's output for one offline window of `samples` (batch 1), summed
    without buffer reuse: the window's activation memory that a stream's state is set
    against (a runtime that reuses buffers holds less at once, but at least the largest)."""
    total = 0

    def count(_module, _inputs, output) -> None:
        nonlocal total
        if isinstance(output, Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model(torch.zeros(1, _backbone_of(model).in_channels, samples))
    finally:
        for hook in hooks:
            hook.remove()
    return total
