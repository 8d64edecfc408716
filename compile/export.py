"""torch -> ONNX, checked twice before anything else builds on it: by the ONNX checker
(full check, with shape inference) and against PyTorch through ONNX Runtime.

Two exports: the window model (`export_onnx`), and the streaming step (mscnn.StepModule,
`export_step_onnx`) with ONNX Runtime driving it hop by hop (`stream_onnx`). A stream
bundle's one function is the step `(ecg, n_valid, *states) -> (frames, valid,
*next_states)`; its protocol is in `mscnn.streaming`'s docstring. Here it is exported with
static shapes (one hop) and checked the way a device will run it: only the step, called
once per hop with the states passed back in, then the end of the record signalled with
`n_valid` and empty hops; the frames it yields must be the offline model's.

ONNX names: inputs `ecg` (1, leads, hop) float32, `n_valid` (1,) int64, then the states
under their `state_specs()` names; outputs `frames` (1, channels, hop / reduction)
float32, `valid` (2,) int64, then `next.<state name>` in the same order.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from deploy.parity import ParityResult, compare, worst
from mscnn import MscnnError
from mscnn.streaming import StepModule

from .errors import CompileError

INPUT_NAME = "ecg"
OUTPUT_NAME = "features"
OPSET = 17

log = logging.getLogger(__name__)


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
    "Expand",  # an LSTM's zero initial states
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


# --------------------------------------------------------------------------------------
# The streaming step

N_VALID = "n_valid"
FRAMES = "frames"
VALID = "valid"
NEXT = "next."
META = "mscnn.stream."


def export_step_onnx(model: torch.nn.Module, hop: int, path: Path) -> Path:
    """Export the step of `model` (eval mode) for hops of `hop` samples to `path`.

    The TorchScript exporter with static shapes, the same opset and constant folding as
    the window export (compile.export), then the ONNX checker with shape inference.
    """
    try:
        step = StepModule(model, hop)  # refuses what cannot stream, naming the layer
    except MscnnError as exc:
        raise CompileError(str(exc)) from None
    specs = step.state_specs()
    example = (torch.zeros(1, step.leads, hop), torch.tensor([hop]), *step.initial_states())
    inputs = [INPUT_NAME, N_VALID, *(s.name for s in specs)]
    outputs = [FRAMES, VALID, *(NEXT + s.name for s in specs)]
    path = Path(path)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # legacy exporter and tracer notices
            torch.onnx.export(
                step,
                example,
                str(path),
                input_names=inputs,
                output_names=outputs,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        graph = fold_constants(onnx.load(str(path)))
        onnx.helper.set_model_props(graph, stream_facts(step))
        onnx.save(graph, str(path))
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise CompileError(
            f"export of the streaming step to ONNX failed: {type(exc).__name__}: {exc}"
        ) from exc
    log.info(
        "step for hop %d exported to %s (%d states, %d state bytes)",
        hop,
        path,
        len(specs),
        step.state_bytes,
    )
    return path


def stream_facts(step: StepModule) -> dict[str, str]:
    """What a runner needs beyond the shapes, stored in the ONNX file's metadata."""
    facts = {
        "hop": step.hop,
        "reduction": step.reduction,
        "delay_frames": step.delay_frames,
        "look_ahead": step.look_ahead,
        "flush_steps": step.flush_steps,
        "state_bytes": step.state_bytes,
    }
    return {f"{META}{k}": str(v) for k, v in facts.items()}


def stream_onnx(path: Path, signal: np.ndarray) -> np.ndarray:
    """Stream `signal` (leads, samples) through the exported step in ONNX Runtime, hop by
    hop, then end it as the protocol says; the frames (channels, frames), time last.

    Uses only what the ONNX file says (shapes, names, metadata), as a device runner would.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ins = session.get_inputs()
    dtypes = {"tensor(float)": np.float32, "tensor(int64)": np.int64}
    states = [np.zeros(i.shape, dtypes[i.type]) for i in ins[2:]]
    names = [i.name for i in ins[2:]]

    def step(x, n_valid, states):
        feed = {INPUT_NAME: x, N_VALID: n_valid} | dict(zip(names, states, strict=True))
        frames, valid, *states = session.run(None, feed)
        return frames, valid, states

    leads = ins[0].shape[1]
    if np.ndim(signal) != 2 or np.shape(signal)[0] != leads:
        raise CompileError(f"stream: signal shape {np.shape(signal)}; expected ({leads}, n)")
    flush_steps = int(session.get_modelmeta().custom_metadata_map[f"{META}flush_steps"])
    return stream_record(step, signal, states, ins[0].shape[-1], flush_steps)


def stream_record(step, signal: np.ndarray, states: list, hop: int, flush_steps: int):
    """A runner's loop over any runtime's step: `step(x, n_valid, states) -> (frames,
    valid, states)` on numpy arrays, `states` the zeroed initial ones. Whole hops while
    the record lasts, then its partial (maybe empty) hop, then empty hops until a step's
    valid frames stop short of the hop's frames; the frames (channels, frames)."""
    signal = np.asarray(signal, np.float32)
    if signal.ndim != 2:
        raise CompileError(f"stream: signal shape {signal.shape}; expected (leads, samples)")
    out, leads, end = [], signal.shape[0], signal.shape[1] // hop
    for k in range(end + flush_steps):
        x = np.zeros((1, leads, hop), np.float32)
        chunk = signal[:, k * hop : (k + 1) * hop]
        x[0, :, : chunk.shape[1]] = chunk
        frames, valid, states = step(x, np.array([chunk.shape[1]], np.int64), states)
        start, stop = (int(v) for v in np.asarray(valid))
        out.append(np.asarray(frames)[0, :, start:stop])
        if k >= end and stop < np.shape(frames)[-1]:
            return np.concatenate(out, axis=-1)
    raise CompileError(f"stream: the record did not end within {flush_steps} steps")
