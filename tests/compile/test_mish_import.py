"""TVM's import of Mish without a logarithm (compile/lowering/pipeline.py,
`mish_without_log`): the rewritten ONNX graph computes PyTorch's Mish, and only the
Softplus -> Tanh pairs change."""

import numpy as np
import onnx
import onnxruntime as ort
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import TensorProto, helper

from compile.lowering.pipeline import mish_without_log


def graph(nodes, n: int) -> onnx.ModelProto:
    io = [helper.make_tensor_value_info(v, TensorProto.FLOAT, [n]) for v in ("x", "y")]
    g = helper.make_graph(nodes, "g", io[:1], io[1:])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def mish_graph(n: int) -> onnx.ModelProto:
    """Mish as opset 17 exports it: Softplus, Tanh, Mul."""
    return graph(
        [
            helper.make_node("Softplus", ["x"], ["s"]),
            helper.make_node("Tanh", ["s"], ["t"]),
            helper.make_node("Mul", ["x", "t"], ["y"]),
        ],
        n,
    )


def run(model, x):
    return ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]


def test_the_rewrite_has_no_logarithm_and_keeps_the_rest():
    model = mish_graph(8)
    rewritten = mish_without_log(model)
    onnx.checker.check_model(rewritten)
    ops = [n.op_type for n in rewritten.graph.node]
    assert "Softplus" not in ops and "Tanh" not in ops and "Log" not in ops
    assert ops[-1] == "Mul" and rewritten.graph.node[-1].output == ["y"]
    assert [n.op_type for n in model.graph.node] == ["Softplus", "Tanh", "Mul"]  # a copy
    # A Softplus read by more than its Tanh is left alone (its value is needed as it is).
    shared = graph(
        [
            helper.make_node("Softplus", ["x"], ["s"]),
            helper.make_node("Tanh", ["s"], ["t"]),
            helper.make_node("Mul", ["s", "t"], ["y"]),
        ],
        8,
    )
    assert mish_without_log(shared) is shared


@settings(max_examples=30, deadline=None)
@given(
    arrays(
        np.float32,
        st.integers(1, 64),
        elements=st.floats(-200, 200, width=32, allow_nan=False),
    )
)
def test_the_rewrite_computes_pytorchs_mish(x):
    x = np.concatenate([x, np.float32([0.0, -0.0, 20.0, -20.0, 88.0, -88.0, 1e-30])])
    got = run(mish_without_log(mish_graph(len(x))), x)
    want = torch.nn.functional.mish(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-30)
