"""ONNX `LSTM` -> Relax: the input projection as one matmul over all frames, the
recurrence as one hand-written TIR kernel that loops over the frames.

TVM 0.27's Relax ONNX importer has no LSTM converter (and its PyTorch importer unrolls an
LSTM cell by cell: thousands of small kernels for a 10 s window). The model is exported
as ONNX's own LSTM op (ONNX Runtime runs it as one fused kernel, and the ONNX file is
checked against PyTorch through it like every other export); `lstm_converter` is lent to
the importer while a file is imported (`import_onnx`) and lowers each LSTM node to:

    P_d = X @ W_d^T + (Wb_d + Rb_d)            one matmul per direction: (T, B, 4H),
                                               scheduled and fused like any other
    Y_d, C_d = lstm_recurrence(P_d, R_d^T,     call_tir: for each frame t (backwards for
                   H0_d, C0_d)                 the reverse direction) and batch row b,
                                               g = P_d[t, b] + h @ R_d^T (4H lanes, k outer
                                               so the inner loop is a contiguous vector
                                               FMA over the gates), then ONNX's gate
                                               equations (order i, o, f, c); h and c start
                                               from the initial state (zero in a window, the
                                               carried h and c in a stream step) and stay
                                               in the kernel's own buffers
    Y = stack(Y_d) (T, D, B, H), Y_h = Y at the last step of each direction, Y_c = C_d

Only what torch's exporter writes is accepted (initial states zero, constant or a graph
tensor, as a stream step passes its carried h and c; no sequence lengths,
default activations, no clip, layout 0, no peepholes); anything else is refused naming
the attribute. The recurrence kernel is marked scheduled, so our conv schedule leaves it
alone. On a GPU target it takes its GPU form (`recurrence_func_gpu`): a thread block per
batch row, a thread per hidden unit, h in shared memory; the frames stay sequential.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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


def recurrence_func(steps: int, batch: int, hidden: int, reverse: bool):
    """The TIR kernel: p (steps, batch, 4H) projected inputs with both biases, rt (H, 4H)
    the recurrent weights transposed, h0 and c0 (batch, H) the initial state -> y (steps,
    batch, H) every h, c (batch, H) the last cell state."""
    from tvm.script import tirx as T

    gates = 4 * hidden
    lanes = 8 if hidden % 2 == 0 else 4
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
        h = T.alloc_buffer((hidden,), "float32")
        acc = T.alloc_buffer((gates,), "float32")
        for b in range(batch):
            for j in range(hidden):
                h[j] = h0[b, j]
                c[b, j] = c0[b, j]
            for s in range(steps):
                for g in range(gates):
                    acc[g] = p[s + back * (steps - 1 - 2 * s), b, g]
                for k in range(hidden):
                    for go in range(gates // lanes):
                        for gi in T.vectorized(lanes):
                            acc[go * lanes + gi] = (
                                acc[go * lanes + gi] + h[k] * rt[k, go * lanes + gi]
                            )
                for j in range(hidden):
                    cell = T.sigmoid(acc[2 * hidden + j]) * c[b, j] + T.sigmoid(acc[j]) * T.tanh(
                        acc[3 * hidden + j]
                    )
                    c[b, j] = cell
                    h[j] = T.sigmoid(acc[hidden + j]) * T.tanh(cell)
                    y[s + back * (steps - 1 - 2 * s), b, j] = h[j]

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
        steps, batch, features = (int(d) for d in x.ty.shape)
        rows = bb.emit(relax.op.reshape(x, (1, steps * batch, features)))
        dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]
        if cls.gpu and hidden > 1024:
            raise CompileError(f"ONNX LSTM: hidden size {hidden}; a GPU block holds 1024")
        ys, hs, cs = [], [], []
        for d, reverse in enumerate(dirs):
            b = np.zeros(8 * hidden, np.float32) if bias is None else bias[d]
            # (1, T * B, I) x (I, 4H): the frames are the matmul schedule's rows, so its
            # register tile reuses each weight vector over several frames
            proj = bb.emit(relax.op.matmul(rows, relax.const(np.ascontiguousarray(w[d].T))))
            proj = bb.emit(relax.op.add(proj, relax.const(b[: 4 * hidden] + b[4 * hidden :])))
            proj = bb.emit(relax.op.reshape(proj, (steps, batch, 4 * hidden)))
            make = recurrence_func_gpu if cls.gpu else recurrence_func
            gv = bb.add_func(make(steps, batch, hidden, reverse), "lstm_recurrence")
            h0, c0 = (_initial(bb, inputs, i, d, batch, hidden) for i in (5, 6))
            out = bb.emit(
                relax.call_tir(
                    gv,
                    [proj, relax.const(np.ascontiguousarray(r[d].T)), h0, c0],
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
    """Direction d's initial state (batch, H) from ONNX's initial_h / initial_c (input i,
    (directions, batch, H)): zeros when absent, a constant, or a tensor of the graph (a
    stream step's carried state)."""
    from tvm import relax

    value = inputs[i] if len(inputs) > i else None
    if value is None:
        return relax.const(np.zeros((batch, hidden), np.float32))
    if hasattr(getattr(value, "value", None), "numpy"):
        return relax.const(np.ascontiguousarray(value.value.numpy()[d], np.float32))
    one = bb.emit(relax.op.strided_slice(value, [0], [d], [d + 1]))
    return bb.emit(relax.op.squeeze(one, [0]))


@contextlib.contextmanager
def lstm_converter(gpu: bool = False) -> Iterator[None]:
    """Lend the importer our LSTM converter while a file is imported."""
    from tvm.relax.frontend.onnx import onnx_frontend

    original = onnx_frontend._get_convert_map
    converter = type(
        "LstmConverterGpu" if gpu else "LstmConverterCpu", (LstmConverter,), {"gpu": gpu}
    )
    onnx_frontend._get_convert_map = lambda: {**original(), "LSTM": converter}
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original
