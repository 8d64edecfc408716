"""The int8 streaming step: the quantized model hop by hop, equal to the offline int8 model
(`quantize.run_int8` on the whole record) bit for bit.

A microcontroller with 256 KB of RAM holds neither a 10 s window nor the fp32 step's
147 KiB of state twice over; int8 holds a quarter of it. The step is `mscnn.streaming`'s,
in `run_int8`'s integers: the same protocol (hops, `n_valid`, the end of a record, the
`valid` range), the same layer plan (per conv the last d x (k - 1) samples of its input,
per pool the samples that align its windows, per branch the delay that lines it up), so
the fp32 `StepModule` of the model *is* the plan and this module only swaps the float
layers for the quantized ones:

- the input is quantized per sample, so a hop's samples are quantized as the window's;
- a conv's input is the integers of its offline input (zero outside the record, as the
  offline zero padding: the zero point is 0), its accumulation and requantization are
  per output sample;
- max-pooling and the per-frame head are exact on integers.

So every integer the step computes is one the offline model computes, and the tests
check the frames against `run_int8` for any record length and hop.

States are time-major (1, rows, channels) in the dtype of the tensor they keep (int16
input, uint8 inside a block, int8 between blocks), after the two int64 counters; the
compiled step (`step_module`) takes them in the same order and layout, so its state can
be compared with this reference's after any hop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mscnn import MscnnError
from mscnn.streaming import (
    ConvOp,
    DecimateOp,
    DelayOp,
    PointwiseOp,
    StateSpec,
    StepModule,
    StreamingModel,
)

from ..errors import CompileError
from . import quantize
from .quantize import QConv, QuantizedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Int8Op:
    """One stateful op of a branch: the fp32 stream op (its rates, delays, chunk sizes
    and length arithmetic) and, for a conv, the quantized conv that replaces it."""

    kind: str  # "delay", "conv" or "pool"
    op: Any  # mscnn.streaming.DelayOp, ConvOp or DecimateOp, bound to the hop
    dtype: str  # the dtype of its input (and of its state)
    conv: QConv | None = None

    @property
    def rows(self) -> int:
        """Rows of state: the delay, the conv's span, or the pool's alignment."""
        return int(getattr(self.op, {"delay": "by", "conv": "span", "pool": "align"}[self.kind]))

    @property
    def state_name(self) -> str:
        return self.op.name + (".align" if self.kind == "pool" else "")


def plan_branches(step: StepModule, qm: QuantizedModel) -> list[list[Int8Op]]:
    """The int8 ops of each branch, in the fp32 step's order: its convs matched to the
    quantized convs (by name), its pools to the quantized blocks' pools. Element-wise
    layers (ReLU, the BatchNorm folded into the convs' requantization, dropout) vanish."""
    if len(step.branches) != len(qm.branches):
        raise CompileError(
            f"int8 stream: the model has {len(step.branches)} branches, its quantization "
            f"{len(qm.branches)}; quantize this model"
        )
    plans = []
    for ops, blocks in zip(step.branches, qm.branches, strict=True):
        convs = iter([c for block in blocks for c in block.convs])
        pools = iter([block.pool for block in blocks])
        dtype, plan = qm.input_dtype, []
        for op in ops:
            one = _int8_op(op, dtype, convs, pools)
            if one is not None:
                plan.append(one)
                dtype = one.conv.out_dtype if one.conv is not None else dtype
        if next(convs, None) is not None or next(pools, None) is not None:
            raise CompileError("int8 stream: the quantized model has layers the step lacks")
        plans.append(plan)
    return plans


def _int8_op(op, dtype: str, convs, pools) -> Int8Op | None:
    if isinstance(op, DelayOp):
        return Int8Op("delay", op, dtype) if op.by else None
    if isinstance(op, ConvOp):
        qc = next(convs, None)
        if qc is None or not op.name.startswith(qc.name + ".") or qc.pad != op.pad:
            raise CompileError(f"int8 stream: layer {op.name} has no quantized conv to match")
        if qc.in_dtype != dtype:
            raise CompileError(f"int8 stream: {op.name} takes {qc.in_dtype}, gets {dtype}")
        return Int8Op("conv", op, dtype, qc)
    if isinstance(op, DecimateOp) and op.pool:
        if isinstance(op.layer, nn.AvgPool1d) or next(pools, None) != op.s:
            raise CompileError(f"int8 stream: pool {op.name} is not the quantized block's")
        return Int8Op("pool", op, dtype)
    if isinstance(op, PointwiseOp) and not op.per_frame:
        return None  # folded into the conv before it (BatchNorm, ReLU) or the identity
    raise CompileError(
        f"int8 stream: layer {op.name} ({type(op).__name__}) has no int8 step; "
        "int8 streams convs, max-pools and the per-frame head"
    )


class Int8Step:
    """The int8 step in numpy: `step(x, n_valid, states) -> (frames, (start, stop),
    states)`, x (leads, hop) float32, frames (channels, hop / reduction) float32 (the
    head's logits, or the dequantized features), as mscnn.StepModule's."""

    def __init__(self, step: StepModule, qm: QuantizedModel) -> None:
        if qm.pool is not None or qm.squeeze is not None or qm.lead_map is not None:
            raise CompileError("int8 stream: a classifier has no per-frame output to stream")
        if qm.in_channels != step.leads:
            raise CompileError(
                f"int8 stream: the quantized model takes {qm.in_channels} leads, the "
                f"model {step.leads}; quantize this model"
            )
        self.fp32, self.qm = step, qm
        self.branches = plan_branches(step, qm)
        self.hop, self.leads, self.channels = step.hop, step.leads, step.channels
        self.reduction = step.reduction
        self.frames_per_step, self.delay_frames = step.frames_per_step, step.delay_frames
        self.flush_steps, self.look_ahead = step.flush_steps, step.look_ahead
        log.debug("int8 step: hop %d, %d state bytes", self.hop, self.state_bytes)

    def ops(self) -> list[Int8Op]:
        return [op for ops in self.branches for op in ops]

    def state_specs(self) -> list[StateSpec]:
        """The counters, then each op's state (1, rows, channels) in its input's dtype."""
        specs = [StateSpec("clock.step", (1,), "int64"), StateSpec("clock.length", (1,), "int64")]
        return specs + [
            StateSpec(op.state_name, (1, op.rows, op.op.channels), op.dtype)
            for op in self.ops()
            if op.rows
        ]

    def initial_states(self) -> list[np.ndarray]:
        return [np.zeros(s.shape, dtype=s.dtype) for s in self.state_specs()]

    @property
    def state_bytes(self) -> int:
        """Bytes of the per-layer state (the two int64 counters add 16)."""
        return sum(s.nbytes for s in self.state_specs()[2:])

    def final_length(self, length):
        """The offline frames of a record of `length` samples (ints or TIR expressions)."""
        for op in [*self.fp32.branches[0], *self.fp32.head]:
            length = op.length(length)
        return length

    def __call__(self, x: np.ndarray, n_valid: int, states: list[np.ndarray]):
        step, seen = int(states[0][0]), int(states[1][0])
        length = seen + n_valid
        clock = _Clock(step, length, length < (step + 1) * self.hop)
        keep = clock.inside(self.hop, 0, 0, length)
        q = quantize.quantize_input(x, self.qm.input_inv_scale, self.qm.input_dtype)
        q = np.where(keep, q.astype(np.int32), 0)  # (leads, hop)
        given, new = iter(states[2:]), []
        outs = []
        for ops in self.branches:
            outs.append(_branch(ops, q, length, clock, given, new))
        h = np.concatenate(outs, axis=0)  # (channels, frames), int8 values
        if self.qm.head:
            frames = quantize.run_mlp(self.qm.head, h.T, None).T  # (classes, frames) float32
        else:
            frames = h.astype(np.float32) * np.float32(self.qm.features_scale)
        valid = clock.valid(self.frames_per_step, self.delay_frames, self.final_length(length))
        counters = [np.array([step + 1], np.int64), np.array([length], np.int64)]
        return frames.astype(np.float32), valid, counters + new


@dataclass(frozen=True)
class _Clock:
    step: int
    length: int
    ended: bool

    def inside(self, n: int, delay: int, start: int, length: int) -> np.ndarray:
        """(n,) bool: the chunk's samples inside [start, length), as _Ctx.inside."""
        idx = self.step * n - delay + np.arange(n)
        return (idx >= start) & ((idx < length) | (not self.ended))

    def valid(self, m: int, delay: int, frames: int) -> tuple[int, int]:
        first = self.step * m - delay
        start = min(max(-first, 0), m)
        stop = min(max(frames - first, 0), m) if self.ended else m
        return start, max(stop, start)


def _branch(ops: list[Int8Op], h: np.ndarray, length: int, clock: _Clock, given, new) -> np.ndarray:
    """One branch on channel-major integers (channels, n); states are time-major. The
    fp32 ops left out of the plan (element-wise) keep the offline length."""
    for op in ops:
        h = _apply(op, h, length, clock, given, new)
        length = op.op.length(length)
    return h


def _apply(op: Int8Op, h: np.ndarray, frames: int, clock: _Clock, given, new) -> np.ndarray:
    f = op.op
    if op.kind == "conv":
        h = np.where(clock.inside(f.n, f.delay_in, 0, frames), h, 0)
    if op.rows:
        h = np.concatenate([next(given)[0].T.astype(np.int32), h], axis=1)
        new.append(np.ascontiguousarray(h[:, h.shape[1] - op.rows :].T[None]).astype(op.dtype))
    if op.kind == "conv":
        qc, n = op.conv, h.shape[1] - op.rows
        acc = quantize.conv_accumulate(h[None], qc)[0][:, qc.pad : qc.pad + n]
        return quantize.requantize(acc, qc.requant, axis=0).astype(np.int32)
    h = h[:, : f.n]
    if op.kind == "pool":
        return h.reshape(h.shape[0], -1, f.s).max(-1)
    return h


class Int8StreamingModel(StreamingModel):
    """mscnn.StreamingModel on the int8 step: push chunks, flush; the frames equal
    `quantize.run_int8(qm, record)` (transposed to time-last) bit for bit."""

    def __init__(
        self, model: nn.Module, qm: QuantizedModel, hop: int, fs: int = 500, compiled=None
    ) -> None:
        """`compiled` (a CompiledInt8Step of this model and hop) runs the steps instead
        of the numpy reference."""
        try:
            self.int8 = Int8Step(StepModule(model, hop), qm)
        except MscnnError as exc:
            raise CompileError(str(exc)) from None
        self._run = compiled if compiled is not None else self.int8
        super().__init__(model, hop, fs)

    @property
    def state_bytes(self) -> int:
        return self.int8.state_bytes

    def reset(self) -> None:
        super().reset()
        self._states = self.int8.initial_states()

    def _step(self, x: torch.Tensor, n_valid: int) -> tuple[torch.Tensor, int]:
        frames, (start, stop), self._states = self._run(x[0].numpy(), n_valid, self._states)
        return torch.from_numpy(np.ascontiguousarray(frames[:, start:stop])), stop


# --------------------------------------------------------------------------------------
# The compiled step: one Relax function of our kernels (compile/int8/kernels.py's convs, and
# small ones for the clock, masks, context windows and states).
#
#   main(x (1, leads, hop) float32, n_valid (1,) int64, *states)
#       -> (frames (1, channels, hop / reduction) float32, valid (2,) int64, *next_states)
#
# with the states and next states in `Int8Step.state_specs()` order (the counters first).


def step_module(step: Int8Step, isa: Any):
    """(IRModule, kernel names, constant bytes) of the int8 step for `isa` (an int8.Isa:
    its dot instructions, and whether kernels run in parallel)."""
    from tvm import relax

    from .kernels import Builder

    bb, specs = relax.BlockBuilder(), step.state_specs()
    x = relax.Var("x", relax.TensorType((1, step.leads, step.hop), "float32"))
    n_valid = relax.Var("n_valid", relax.TensorType((1,), "int64"))
    states = [
        relax.Var(f"s{k}", relax.TensorType(list(s.shape), s.dtype)) for k, s in enumerate(specs)
    ]
    build = Builder(bb, isa, 1)
    with bb.function("main", [x, n_valid, *states]):
        with bb.dataflow():
            counters = _clock_kernels(build, states[0], states[1], n_valid)
            clock = (states[0], counters[1])  # (step, length) tensors the masks read
            q = _quantize_kernel(build, step, x, clock)
            given, new = iter(states[2:]), []
            ends = [
                _branch_kernels(build, step, b, ops, q, clock, given, new)
                for b, ops in enumerate(step.branches)
            ]
            frames = _head_kernels(build, step, ends)
            valid = build.call("valid", _valid_func(step), list(clock), (2,), "int64")
            result = bb.emit_output(relax.Tuple([frames, valid, *counters, *new]))
        bb.emit_func_output(result)
    return bb.get(), build.names, build.constant_bytes


def _clock_kernels(build, step, seen, n_valid):
    """(step + 1, seen + n_valid): the next counters (the second is the record's length)."""
    from tvm import te

    a, b = (te.placeholder((1,), "int64", name=n) for n in ("a", "b"))
    add = _serial(te.compute((1,), lambda i: a[i] + b[i], name="add"), [a, b])
    one = _serial(te.compute((1,), lambda i: a[i] + 1, name="increment"), [a])
    return (
        build.call("clock_step", one, [step], (1,), "int64"),
        build.call("clock_length", add, [seen, n_valid], (1,), "int64"),
    )


def _serial(out, inputs):
    from .kernels import spatial

    return spatial(out, inputs, parallel=False)


def _keep(i, n: int, delay: int, start: int, lengths, clock, hop: int):
    """TIR: whether sample i of a chunk of n (its op lagging `delay` behind the clock) is
    inside [start, the offline length), as _Clock.inside; `lengths` maps the record's
    length expression to the op's own."""
    from tvm import tirx

    s, total = clock[0][0], clock[1][0]
    ended = total < (s + 1) * hop
    idx = s * n - delay + i.astype("int64")
    return tirx.all(idx >= start, tirx.any(idx < lengths(total), tirx.Not(ended)))


def _quantize_kernel(build, step: Int8Step, x, clock):
    """x (1, leads, hop) float32 -> (1, hop, leads) integers, zero past the record."""
    from tvm import te, tirx

    qm, hop = step.qm, step.hop
    lo, hi = quantize.RANGES[qm.input_dtype]
    xp = te.placeholder((1, step.leads, hop), "float32", name="x")
    c = [te.placeholder((1,), "int64", name=n) for n in ("step", "length")]
    inv = tirx.const(float(qm.input_inv_scale), "float32")

    def q(n, i, lead):
        v = tirx.max(tirx.min(tirx.nearbyint(xp[n, lead, i] * inv), float(hi)), float(lo))
        keep = _keep(i, hop, 0, 0, lambda length: length, c, hop)
        return tirx.if_then_else(keep, v, tirx.const(0.0, "float32")).astype(qm.input_dtype)

    out = te.compute((1, hop, step.leads), q, name="quantize")
    func = _serial(out, [xp, *c])
    return build.call("quantize", func, [x, *clock], (1, hop, step.leads), qm.input_dtype)


def _window_func(rows: int, n: int, channels: int, dtype: str, keep=None):
    """cat(state (1, rows, c), x (1, n, c)) on time, x's samples zeroed where `keep`
    (i, clock) is false; with rows 0, x masked alone. Two loops, the state's rows then
    the chunk's, the chunk's mask computed once per row: as one elementwise stage it chose
    the source and evaluated the 64-bit mask for every byte (10% of the int8 step's
    instructions on a Cortex-M)."""
    from tvm.script import tirx as T

    total, kept_rows = rows + n, max(rows, 1)

    def inside(j, step, length):
        return keep(j, [[step[0]], [length[0]]]) if keep is not None else True

    @T.prim_func
    def both(
        state: T.Buffer((1, kept_rows, channels), dtype),
        x: T.Buffer((1, n, channels), dtype),
        step: T.Buffer((1,), "int64"),
        length: T.Buffer((1,), "int64"),
        out: T.Buffer((1, total, channels), dtype),
    ):
        T.func_attr({"tirx.noalias": True})
        for i, ch in T.grid(rows, channels):
            out[0, i, ch] = state[0, i, ch]
        for j in range(n):
            kept: T.bool = inside(j, step, length)
            for ch in range(channels):
                out[0, rows + j, ch] = T.if_then_else(kept, x[0, j, ch], 0)

    @T.prim_func
    def unmasked(
        state: T.Buffer((1, kept_rows, channels), dtype),
        x: T.Buffer((1, n, channels), dtype),
        out: T.Buffer((1, total, channels), dtype),
    ):
        T.func_attr({"tirx.noalias": True})
        for i, ch in T.grid(rows, channels):
            out[0, i, ch] = state[0, i, ch]
        for j, ch in T.grid(n, channels):
            out[0, rows + j, ch] = x[0, j, ch]

    @T.prim_func
    def masked(
        x: T.Buffer((1, n, channels), dtype),
        step: T.Buffer((1,), "int64"),
        length: T.Buffer((1,), "int64"),
        out: T.Buffer((1, n, channels), dtype),
    ):
        T.func_attr({"tirx.noalias": True})
        for j in range(n):
            kept: T.bool = inside(j, step, length)
            for ch in range(channels):
                out[0, j, ch] = T.if_then_else(kept, x[0, j, ch], 0)

    func = (unmasked if keep is None else both) if rows else masked
    return func.with_attr("tirx.is_scheduled", True)


def _rows_func(total: int, first: int, count: int, channels: int, dtype: str):
    from tvm import te

    src = te.placeholder((1, total, channels), dtype, name="src")
    out = te.compute((1, count, channels), lambda b, i, c: src[b, i + first, c], name="rows")
    return _serial(out, [src])


def _lengths(chain: tuple):
    """The offline length after the fp32 ops `chain`, as a function of the record's."""

    def apply(length):
        for op in chain:
            length = op.length(length)
        return length

    return apply


def _conv_mask(f, chain: tuple, hop: int):
    """(i, clock) -> TIR: whether sample i of the conv `f`'s chunk is inside the record."""
    lengths = _lengths(chain)
    return lambda j, clock: _keep(j, f.n, f.delay_in, 0, lengths, clock, hop)


def _branch_kernels(build, step: Int8Step, b: int, ops, h, clock, given, new):
    """One branch's kernels on (1, n, channels): per op with state, the window (its state
    then its chunk; a conv's chunk masked to the record), the next state (the window's
    last rows), then the conv, or the delayed chunk (the window's first rows), pooled.
    Returns (the branch's frames, their channels)."""
    from .kernels import ConvKernel, fit_groups, pool_func

    chain: list = []
    for k, op in enumerate(ops):
        f, name, rows, dtype = op.op, f"branch{b}_op{k}_{op.kind}", op.rows, op.dtype
        c, n = f.channels, f.n
        keep = _conv_mask(f, tuple(chain), step.hop) if op.kind == "conv" else None
        win = h
        if rows or keep is not None:
            args = [*([next(given)] if rows else []), h, *(clock if keep else [])]
            func = _window_func(rows, n, c, dtype, keep)
            win = build.call(f"{name}_window", func, args, (1, rows + n, c), dtype)
        if rows:
            func = _rows_func(rows + n, n, rows, c, dtype)
            new.append(build.call(f"{name}_state", func, [win], (1, rows, c), dtype))
        if op.kind == "conv":
            isa = build.isa
            dot = fit_groups(isa.word if op.conv.in_dtype == "int16" else isa.byte, op.conv)
            h = build.conv(name, win, ConvKernel(op.conv, 1, n, c, dot, pad=0))
        else:
            if rows:
                func = _rows_func(rows + n, 0, n, c, dtype)
                h = build.call(f"{name}_rows", func, [win], (1, n, c), dtype)
            if op.kind == "pool":
                func = pool_func(1, n, [c], dtype, f.s, build.isa.parallel)
                h = build.call(name, func, [h], (1, n // f.s, c), dtype)
        chain.append(f)
    return h, ops[-1].op.channels_out


def _head_kernels(build, step: Int8Step, ends):
    """The branches' frames concatenated, then the per-frame head (logits) or the
    dequantized features: (1, channels, frames) float32, time last."""
    from tvm import te

    from .kernels import dequantize_func, mlp_kernels, pool_func

    m, qm = step.frames_per_step, step.qm
    widths = [c for _, c in ends]
    h = ends[0][0]
    if len(ends) > 1:  # a pool of size 1 over several inputs is their concatenation
        func = pool_func(1, m, widths, "int8", 1, build.isa.parallel)
        h = build.call("concat", func, [e[0] for e in ends], (1, m, sum(widths)), "int8")
    if not qm.head:
        func = dequantize_func(1, m, sum(widths), qm.features_scale, build.isa.parallel)
        return build.call("dequantize", func, [h], (1, sum(widths), m), "float32")
    logits, classes = mlp_kernels(build, "clf_lin", qm.head, h, sum(widths), m)
    y = te.placeholder((1, m, classes), "float32", name="y")
    out = te.compute((1, classes, m), lambda b, c, t: y[b, t, c], name="time_last")
    return build.call("time_last", _serial(out, [y]), [logits], (1, classes, m), "float32")


def _valid_func(step: Int8Step):
    """[start, stop) of the step's frames that are offline frames, as _Clock.valid."""
    from tvm import te, tirx

    c = [te.placeholder((1,), "int64", name=nm) for nm in ("step", "length")]
    m, delay, hop = step.frames_per_step, step.delay_frames, step.hop

    def clamp(v):
        return tirx.min(tirx.max(v, tirx.const(0, "int64")), tirx.const(m, "int64"))

    def value(j):
        s, total = c[0][0], c[1][0]
        first = s * m - delay
        start = clamp(-first)
        stop = clamp(step.final_length(total) - first)
        stop = tirx.if_then_else(total < (s + 1) * hop, stop, tirx.const(m, "int64"))
        return tirx.if_then_else(j == 0, start, tirx.max(stop, start))

    return _serial(te.compute((2,), value, name="valid"), c)


@dataclass
class CompiledInt8Step:
    """The int8 step built for this host: called as Int8Step is (x (leads, hop), n_valid,
    states) -> (frames, (start, stop), states), so Int8StreamingModel drives either."""

    executable: Any  # tvm.relax.Executable
    step: Int8Step
    kernels: tuple[str, ...]
    isa: Any  # compile.int8.kernels.Isa
    constant_bytes: int  # weights, biases, requantization and tables the step holds
    _vm: Any = None

    def export(self, path: Path, cc: str | None = None) -> Path:
        """Write the shared library (`cc`: a cross C++ driver for other architectures)."""
        import tvm

        fcompile = tvm.support.cc.cross_compiler(cc) if cc else None
        self.executable.export_library(str(path), fcompile=fcompile)
        return Path(path)

    def __call__(self, x: np.ndarray, n_valid: int, states: list[np.ndarray]):
        import tvm
        from tvm import relax

        if self._vm is None:
            self._vm = relax.VirtualMachine(self.executable, tvm.cpu())
        args = [x[None].astype(np.float32), np.array([n_valid], np.int64), *states]
        outs = self._vm["main"](*(tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args))
        frames, valid, *rest = (o.numpy() for o in outs)
        return frames[0], (int(valid[0]), int(valid[1])), rest


def build_step(step: Int8Step, tvm_target, require: str | None = None) -> CompiledInt8Step:
    """Compile the int8 step for `tvm_target` (run in process where it is this host's,
    or exported for a stream bundle); `require` names the ISA, as for int8.build_int8."""
    import tvm

    from .kernels import register_intrinsics, select_isa

    isa = select_isa(tvm_target, require)
    if isa.byte.intrin or isa.word.intrin:
        register_intrinsics()
    mod, names, constant_bytes = step_module(step, isa)
    target = tvm.target.Target(dict(tvm_target))
    with target:
        executable = tvm.compile(mod, target=target)
    return CompiledInt8Step(executable, step, tuple(names), isa, constant_bytes)
