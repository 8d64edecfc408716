"""torch -> ONNX, checked twice before anything else builds on it: by the ONNX checker
(full check, with shape inference) and against PyTorch through ONNX Runtime."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from deploy.parity import ParityResult, compare, worst

from .errors import CompileError

log = logging.getLogger(__name__)

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
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise CompileError(f"export to ONNX failed: {type(exc).__name__}: {exc}") from exc
    return path


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
