"""torch -> ONNX, checked twice before anything else builds on it: by the ONNX checker
(full check, with shape inference) and against PyTorch through ONNX Runtime."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from deploy.parity import ParityResult, compare, worst

from .errors import CompileError

INPUT_NAME = "ecg"
OUTPUT_NAME = "features"
OPSET = 17


def export_onnx(model: torch.nn.Module, path: Path, *, batch: int, samples: int) -> Path:
    """Export `model` (eval mode) with a static (batch, leads, samples) input to `path`.

    The TorchScript exporter is used: it needs no extra packages, and with static shapes
    the graph is plain Conv/MaxPool/Relu/BatchNorm/Concat that every backend takes.
    """
    if model.training:
        raise CompileError("export: the model is in training mode; call model.eval() first")
    example = torch.zeros(batch, model.in_channels, samples)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # legacy exporter notice
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        onnx.save(fold_constants(onnx.load(str(path))), str(path))
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise CompileError(f"export to ONNX failed: {type(exc).__name__}: {exc}") from exc
    return path


# Shape arithmetic the TorchScript exporter leaves in the graph (e.g. the pads of the
# (1, 0) zero pad after even-kernel convs); TVM's ONNX importer wants constants there.
_FOLDABLE = {
    "Constant",
    "ConstantOfShape",
    "Concat",
    "Reshape",
    "Slice",
    "Transpose",
    "Cast",
    "Unsqueeze",
    "Squeeze",
    "Gather",
}


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace the nodes that compute only from constants (shape arithmetic, not layers)
    by initializers holding their values, evaluated with ONNX's reference evaluator."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    known, folded = set(weights), []
    for node in graph.node:  # nodes are in topological order
        if node.op_type in _FOLDABLE and all(not i or i in known for i in node.input):
            folded.append(node)
            known.update(node.output)
    if not folded:
        return model
    kept = [n for n in graph.node if n not in folded]
    wanted = {i for n in kept for i in n.input} | {o.name for o in graph.output}
    outputs = [o for n in folded for o in n.output if o in wanted]
    inputs = {i for n in folded for i in n.input if i in weights}
    sub = helper.make_model(
        helper.make_graph(
            folded,
            "constants",
            [],
            [helper.make_empty_tensor_value_info(o) for o in outputs],
            [weights[i] for i in sorted(inputs)],
        ),
        opset_imports=model.opset_import,
    )
    values = ReferenceEvaluator(sub).run(None, {})
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(
        numpy_helper.from_array(v, o) for o, v in zip(outputs, values, strict=True)
    )
    used = {i for n in kept for i in n.input} | {o.name for o in graph.output}
    unused = [t for t in graph.initializer if t.name not in used]
    for t in unused:
        graph.initializer.remove(t)
    return model


def check_onnx(path: Path, inputs: dict[str, np.ndarray], expected: dict[str, np.ndarray]):
    """Run the ONNX file in ONNX Runtime on every golden input; the worst ParityResult."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    results: list[ParityResult] = []
    for name, x in inputs.items():
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
        results.append(compare(got, expected[name], "cpu"))
    return worst(results)
