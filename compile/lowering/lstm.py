"""ONNX `LSTM` -> Relax: the input projection as one matmul over all frames, the
recurrence as one hand-written TIR kernel that loops over the frames.

TVM 0.27's Relax ONNX importer has no LSTM converter (and its PyTorch importer unrolls an
LSTM cell by cell: thousands of small kernels for a 10 s window). The model is exported
as ONNX's own LSTM op (ONNX Runtime runs it as one fused kernel, and the ONNX file is
checked against PyTorch through it like every other export); `lstm_converter` is lent to
the importer while a file is imported (`import_onnx`) and lowers each LSTM node to:

    P = X @ [W_1^T .. W_D^T] + biases          one matmul for every direction, the frames
                                               as its rows: (1, T * B, I) x (I, D * 4H),
                                               scheduled and fused like any other
    Y, C = lstm_recurrence(P, R, H0, C0)       call_tir, every direction in one call and
                                               the directions in parallel (a BiLSTM's two
                                               recurrences on two threads): for each
                                               frame t (backwards for the reverse
                                               direction) and batch row b,
                                               g = P[t, b, d] + h @ R_d^T, one register
                                               tile of gates at a time (R packed tile by
                                               tile; tiles and k in zig-zag order,
                                               forwards at even frames and backwards at
                                               odd ones, so a frame starts on the weights
                                               the last one left in cache), then
                                               ONNX's gate equations (order i, o, f, c), vectorised
                                               with our own exp (`_exp`); h and c start
                                               from the initial state (zero in a window, the
                                               carried h and c in a stream step) and stay
                                               in the kernel's own buffers
    Y (T, D, B, H) as ONNX's, Y_h = Y at the last step of each direction, Y_c = C

Only what torch's exporter writes is accepted (initial states zero, constant or a graph
tensor, as a stream step passes its carried h and c; no sequence lengths,
default activations, no clip, layout 0, no peepholes); anything else is refused naming
the attribute. The recurrence kernel is marked scheduled, so our conv schedule leaves it
alone. On a GPU target it takes its GPU form (`recurrence_func_gpu`, one call per
direction): a thread block per batch row, a thread per hidden unit, h in shared memory;
the frames stay sequential.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import CompileError

_DEFAULT_ACTIVATIONS = ("Sigmoid", "Tanh", "Tanh")


def _constant(expr, what: str) -> np.ndarray:
    if expr is None:
        return None
    if not hasattr(getattr(expr, "value", None), "numpy"):
        raise CompileError(f"ONNX LSTM: {what} is computed in the graph; export it as a constant")
    return expr.value.numpy()


def _check_attrs(attrs: dict) -> tuple[int, str]:
    activations = tuple(
        a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", ())
    )
    if activations and activations[:3] != _DEFAULT_ACTIVATIONS:
        raise CompileError(f"ONNX LSTM: activations {activations}; only sigmoid/tanh/tanh")
    for name in ("clip", "input_forget", "layout"):
        if attrs.get(name):
            raise CompileError(f"ONNX LSTM: attribute {name}={attrs[name]!r} is not supported")
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    return int(attrs["hidden_size"]), direction


# exp(x) = 2^n * e^r with n = round(x / ln 2) and |r| <= ln(2) / 2: r by Cody and Waite's
# two-part ln 2 (its high part exact in float32), e^r by a degree-7 polynomial (the
# classic single-precision minimax coefficients, within about 1 ulp of expf), 2^n built
# in the exponent bits. The same arithmetic at every lane: LLVM vectorises it, where the
# `exp` TVM's own sigmoid and tanh lower to is a scalar libm call per lane.
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2)
_EXP_POLY += (1.6666665459e-1, 5.0000001201e-1)


def _f32(value: float):
    from tvm import tirx

    return tirx.const(value, "float32")


def _exp(x):
    from tvm import tirx

    x = tirx.max(tirx.min(x, _f32(88.0)), _f32(-87.0))  # 2^n stays a normal float
    n = tirx.floor(x * _f32(1.4426950408889634) + _f32(0.5))
    r = x - n * _f32(_LN2_HI) - n * _f32(_LN2_LO)
    poly = _f32(_EXP_POLY[0])
    for coefficient in _EXP_POLY[1:]:
        poly = poly * r + _f32(coefficient)
    scale = tirx.reinterpret("float32", tirx.shift_left(tirx.Cast("int32", n) + 127, 23))
    return (poly * r * r + r + _f32(1.0)) * scale


def _sigmoid(x):
    return _f32(1.0) / (_f32(1.0) + _exp(-x))


def _tanh(x):
    """tanh as TVM lowers it (from exp(-2|x|), the sign put back), with our `_exp`."""
    from tvm import tirx

    e = _exp(_f32(-2.0) * tirx.abs(x))
    t = (_f32(1.0) - e) / (_f32(1.0) + e)
    return tirx.Select(x >= _f32(0.0), t, -t)


def _lanes(n: int, most: int) -> int:
    """The widest power of two up to `most` that divides n."""
    lanes = most
    while n % lanes:
        lanes //= 2
    return lanes


@dataclass(frozen=True)
class RecurrenceTile:
    """The CPU recurrence's register tile. Each frame's matvec g = P[t] + h @ R^T runs
    `vectors` accumulators of `lanes` floats at a time: they start from P, take one FMA
    per weight vector over k (h[k] broadcast) and are stored once (untiled, every FMA
    also loaded and stored its accumulator). Tiles and k go forwards at even frames and
    backwards at odd ones (zig-zag), so a frame starts on the weights the last one left
    in cache; each gate's sum keeps the untiled kernel's order."""

    lanes: int
    vectors: int

    @property
    def width(self) -> int:
        return self.lanes * self.vectors


# Without a target's conv tile (a Cortex-M import, which refuses an LSTM anyway): 4 x 4.
_DEFAULT_VEC, _DEFAULT_REGISTERS = 4, 8


def recurrence_tile(hidden: int, vec: int, registers: int) -> RecurrenceTile:
    """Half the ISA's vector registers as accumulators (the rest hold R's vectors and
    h's broadcast): 16 zmm on AVX-512, 8 ymm on AVX2, 16 / 8 q registers on aarch64 /
    armv7; fewer lanes or vectors where 4H does not divide."""
    gates = 4 * hidden
    lanes = _lanes(gates, vec)
    vectors = gates // lanes
    return RecurrenceTile(lanes, next(v for v in range(registers // 2, 0, -1) if vectors % v == 0))


def pack_recurrent_weights(r: np.ndarray, tile: RecurrenceTile) -> np.ndarray:
    """ONNX's R (D, 4H, H) -> (D, 4H / width, H, width): tile by tile, each tile's rows
    over k contiguous, so the kernel streams one tile's weights in order."""
    directions, gates, hidden = r.shape
    tiles = gates // tile.width
    rt = r.transpose(0, 2, 1).reshape(directions, hidden, tiles, tile.width)
    return np.ascontiguousarray(rt.transpose(0, 2, 1, 3), dtype=np.float32)


def recurrence_func(
    steps: int, batch: int, hidden: int, directions: int, reverse: bool, tile: RecurrenceTile
):
    """The TIR kernel of a layer, its directions in parallel (d backwards when d + reverse
    is 1): p, rt (packed), h0, c0 -> y (steps, D, batch, H), c; as the module says."""
    from tvm.script import tirx as T

    gates, lanes, vectors, width = 4 * hidden, tile.lanes, tile.vectors, tile.width
    tiles, vec, back0 = gates // width, _lanes(hidden, 16), int(reverse)
    loop = T.parallel if directions > 1 else T.serial

    @T.prim_func(private=True)
    def lstm_recurrence(
        p: T.Buffer((steps, batch, directions * gates), "float32"),
        rt: T.Buffer((directions, tiles, hidden, width), "float32"),
        h0: T.Buffer((directions, batch, hidden), "float32"),
        c0: T.Buffer((directions, batch, hidden), "float32"),
        y: T.Buffer((steps, directions, batch, hidden), "float32"),
        c: T.Buffer((directions, batch, hidden), "float32"),
    ):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        h = T.alloc_buffer((directions, hidden), "float32")
        acc = T.alloc_buffer((directions, gates), "float32")
        for d in loop(directions):
            reg = T.alloc_buffer((width,), "float32", scope="local")
            for b in range(batch):
                for j in range(hidden):
                    h[d, j] = h0[d, b, j]
                    c[d, b, j] = c0[d, b, j]
                for s in range(steps):
                    frame = s + (back0 + d) * (steps - 1 - 2 * s)
                    for t0 in range(tiles):  # zig-zag: forwards, then backwards
                        t = t0 + s % 2 * (tiles - 1 - 2 * t0)
                        o = d * gates + t * width
                        for v in T.unroll(vectors):
                            for gi in T.vectorized(lanes):
                                reg[v * lanes + gi] = p[frame, b, o + v * lanes + gi]
                        for k0 in range(hidden):
                            k = k0 + s % 2 * (hidden - 1 - 2 * k0)
                            for v in T.unroll(vectors):
                                for gi in T.vectorized(lanes):
                                    reg[v * lanes + gi] = (
                                        reg[v * lanes + gi] + h[d, k] * rt[d, t, k, v * lanes + gi]
                                    )
                        for v in T.unroll(vectors):
                            for gi in T.vectorized(lanes):
                                acc[d, t * width + v * lanes + gi] = reg[v * lanes + gi]
                    for jo in range(hidden // vec):
                        u = jo * vec
                        for ji in T.vectorized(vec):
                            c[d, b, u + ji] = _sigmoid(acc[d, 2 * hidden + u + ji]) * c[
                                d, b, u + ji
                            ] + _sigmoid(acc[d, u + ji]) * _tanh(acc[d, 3 * hidden + u + ji])
                        for ji in T.vectorized(vec):
                            h[d, u + ji] = _sigmoid(acc[d, hidden + u + ji]) * _tanh(
                                c[d, b, u + ji]
                            )
                            y[frame, d, b, u + ji] = h[d, u + ji]

    return lstm_recurrence


def recurrence_func_gpu(steps: int, batch: int, hidden: int, reverse: bool):
    """The kernel's GPU form: one thread block per batch row, one thread per hidden unit
    (its four gates' dot products with h, which the block shares in shared memory), two
    barriers per frame. The recurrence itself stays sequential over frames."""
    from tvm.script import tirx as T

    gates = 4 * hidden
    back = 1 if reverse else 0

    @T.prim_func(private=True)
    def lstm_recurrence(
        p: T.Buffer((steps, batch, gates), "float32"),
        rt: T.Buffer((hidden, gates), "float32"),
        h0: T.Buffer((batch, hidden), "float32"),
        c0: T.Buffer((batch, hidden), "float32"),
        y: T.Buffer((steps, batch, hidden), "float32"),
        c: T.Buffer((batch, hidden), "float32"),
    ):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for b in T.thread_binding(batch, thread="blockIdx.x"):
            for j in T.thread_binding(hidden, thread="threadIdx.x"):
                h = T.alloc_buffer((hidden,), "float32", scope="shared")
                acc = T.alloc_buffer((4,), "float32", scope="local")
                cell = T.alloc_buffer((1,), "float32", scope="local")
                h[j] = h0[b, j]
                cell[0] = c0[b, j]
                T.tvm_storage_sync("shared")
                for s in range(steps):
                    for q in range(4):
                        acc[q] = p[s + back * (steps - 1 - 2 * s), b, q * hidden + j]
                    for k in range(hidden):
                        for q in range(4):
                            acc[q] = acc[q] + h[k] * rt[k, q * hidden + j]
                    cell[0] = T.sigmoid(acc[2]) * cell[0] + T.sigmoid(acc[0]) * T.tanh(acc[3])
                    T.tvm_storage_sync("shared")
                    h[j] = T.sigmoid(acc[1]) * T.tanh(cell[0])
                    y[s + back * (steps - 1 - 2 * s), b, j] = h[j]
                    T.tvm_storage_sync("shared")
                c[b, j] = cell[0]

    return lstm_recurrence


class LstmConverter:
    """The Relax ONNX importer's converter interface (`get_converter(opset)`)."""

    gpu = False
    vec, registers = _DEFAULT_VEC, _DEFAULT_REGISTERS  # the target's vector lanes and registers

    @classmethod
    def get_converter(cls, opset):
        return cls.convert

    @classmethod
    def convert(cls, bb, inputs, attrs, params):
        from tvm import relax

        hidden, direction = _check_attrs(attrs)
        x, w, r, bias = inputs[0], inputs[1], inputs[2], inputs[3] if len(inputs) > 3 else None
        w, r = _constant(w, "W"), _constant(r, "R")
        bias = _constant(bias, "B")
        for i, name in ((4, "sequence_lens"), (7, "P")):
            value = inputs[i] if len(inputs) > i else None
            if value is None:
                continue
            array = _constant(value, name) if name != "sequence_lens" else None
            if array is None or array.any():
                raise CompileError(f"ONNX LSTM: input {name} is not supported")
        if cls.gpu and hidden > 1024:
            raise CompileError(f"ONNX LSTM: hidden size {hidden}; a GPU block holds 1024")
        steps, batch, features = (int(d) for d in x.ty.shape)
        dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]
        if bias is None:
            bias = np.zeros((len(dirs), 8 * hidden), np.float32)
        # (1, T * B, I) x (I, D * 4H), every direction in one matmul: the frames are the
        # matmul schedule's rows, so its register tile reuses each weight vector over frames
        rows = bb.emit(relax.op.reshape(x, (1, steps * batch, features)))
        weights = np.concatenate([w[d].T for d in range(len(dirs))], axis=1)
        biases = np.concatenate([b[: 4 * hidden] + b[4 * hidden :] for b in bias])
        proj = bb.emit(relax.op.matmul(rows, relax.const(np.ascontiguousarray(weights))))
        proj = bb.emit(relax.op.add(proj, relax.const(biases)))
        proj = bb.emit(relax.op.reshape(proj, (steps, batch, len(dirs) * 4 * hidden)))
        shape = (steps, batch, hidden)
        if cls.gpu:
            return _recurrences_gpu(bb, proj, r, inputs, dirs, shape)
        return _recurrence_cpu(bb, proj, r, inputs, dirs, shape, (cls.vec, cls.registers))


def _recurrence_cpu(bb, proj, r, inputs, dirs, shape, isa):
    """One call of the CPU kernel for every direction; ONNX's (Y, Y_h, Y_c). `isa`: the
    target's (vector lanes, vector registers), which size the register tile."""
    from tvm import relax

    steps, batch, hidden = shape
    n = len(dirs)
    tile = recurrence_tile(hidden, *isa)
    func = recurrence_func(steps, batch, hidden, n, dirs == [True], tile)
    gv = bb.add_func(func, "lstm_recurrence")
    rt = relax.const(pack_recurrent_weights(r, tile))
    h0, c0 = (_initial_all(inputs, i, n, batch, hidden) for i in (5, 6))
    out = bb.emit(
        relax.call_tir(
            gv,
            [proj, rt, h0, c0],
            [
                relax.TensorType((steps, n, batch, hidden), "float32"),
                relax.TensorType((n, batch, hidden), "float32"),
            ],
        )
    )
    y = bb.emit(relax.TupleGetItem(out, 0))
    hs = []
    for d, reverse in enumerate(dirs):
        last = 0 if reverse else steps - 1
        one = bb.emit(relax.op.strided_slice(y, [0, 1], [last, d], [last + 1, d + 1]))
        hs.append(bb.emit(relax.op.reshape(one, (1, batch, hidden))))
    y_h = hs[0] if n == 1 else bb.emit(relax.op.concat(hs, axis=0))
    return relax.Tuple([y, y_h, bb.emit(relax.TupleGetItem(out, 1))])


def _recurrences_gpu(bb, proj, r, inputs, dirs, shape):
    """One GPU kernel call per direction; ONNX's (Y, Y_h, Y_c)."""
    from tvm import relax

    steps, batch, hidden = shape
    ys, hs, cs = [], [], []
    for d, reverse in enumerate(dirs):
        p_d = bb.emit(relax.op.strided_slice(proj, [2], [d * 4 * hidden], [(d + 1) * 4 * hidden]))
        gv = bb.add_func(recurrence_func_gpu(steps, batch, hidden, reverse), "lstm_recurrence")
        h0, c0 = (_initial(bb, inputs, i, d, batch, hidden) for i in (5, 6))
        out = bb.emit(
            relax.call_tir(
                gv,
                [p_d, relax.const(np.ascontiguousarray(r[d].T)), h0, c0],
                [
                    relax.TensorType((steps, batch, hidden), "float32"),
                    relax.TensorType((batch, hidden), "float32"),
                ],
            )
        )
        y = bb.emit(relax.TupleGetItem(out, 0))
        ys.append(bb.emit(relax.op.expand_dims(y, 1)))
        last = 0 if reverse else steps - 1
        hs.append(bb.emit(relax.op.strided_slice(y, [0], [last], [last + 1])))
        cs.append(bb.emit(relax.op.expand_dims(relax.TupleGetItem(out, 1), 0)))
    return relax.Tuple(
        [
            bb.emit(relax.op.concat(ys, axis=1)),
            bb.emit(relax.op.concat(hs, axis=0)),
            bb.emit(relax.op.concat(cs, axis=0)),
        ]
    )


def _initial(bb, inputs, i: int, d: int, batch: int, hidden: int):
    """Direction d's initial state (batch, H) for the GPU kernel, from ONNX's initial_h /
    initial_c (input i): zeros when absent, a constant, or a tensor of the graph."""
    from tvm import relax

    value = inputs[i] if len(inputs) > i else None
    if value is None:
        return relax.const(np.zeros((batch, hidden), np.float32))
    if hasattr(getattr(value, "value", None), "numpy"):
        return relax.const(np.ascontiguousarray(value.value.numpy()[d], np.float32))
    one = bb.emit(relax.op.strided_slice(value, [0], [d], [d + 1]))
    return bb.emit(relax.op.squeeze(one, [0]))


def _initial_all(inputs, i: int, directions: int, batch: int, hidden: int):
    """ONNX's initial_h / initial_c (input i, (directions, batch, H)) for the CPU kernel:
    zeros when absent, else the constant or the graph's tensor (a stream step's state)."""
    from tvm import relax

    value = inputs[i] if len(inputs) > i else None
    if value is None:
        return relax.const(np.zeros((directions, batch, hidden), np.float32))
    return value


@contextlib.contextmanager
def lstm_converter(gpu: bool = False, isa: tuple[int, int] | None = None) -> Iterator[None]:
    """Lend the importer our LSTM converter while a file is imported. `isa`: the CPU
    target's (vector lanes, vector registers), as its conv tile states them."""
    from tvm.relax.frontend.onnx import onnx_frontend

    original = onnx_frontend._get_convert_map
    vec, registers = isa or (_DEFAULT_VEC, _DEFAULT_REGISTERS)
    converter = type(
        "LstmConverterGpu" if gpu else "LstmConverterCpu",
        (LstmConverter,),
        {"gpu": gpu, "vec": vec, "registers": registers},
    )
    onnx_frontend._get_convert_map = lambda: {**original(), "LSTM": converter}
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original
