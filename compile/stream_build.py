"""Build a stream bundle: the model's step function (mscnn.StepModule) compiled for one
target, with a real record streamed hop by hop as its golden case.

    Step 1. Variant    the reduced-lead model, and its step for the hop
    Step 2. Golden     a record (the real CPSC2019 records concatenated, for a 1-lead
                       model; a synthetic ECG otherwise) and the offline model's frames
    Step 3. ONNX       the step exported (compile/stream.py), streamed in ONNX Runtime
    Step 4. TVM        the step compiled like a window model (compile/build.py)
    Step 5. Manifest   the window manifest's fields plus the stream's (hop, state, ...)
    Step 6. Parity     the bundle streamed as a device streams it (deploy.stream)
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import torch

import mscnn
from deploy.bundle import LIBRARY, ONNX_FILE
from deploy.files import write_npy
from deploy.manifest import (
    GoldenCase,
    Manifest,
    Parity,
    StateTensor,
    StreamInfo,
    TensorInfo,
    Verdict,
)
from deploy.parity import TOLERANCES, compare
from deploy.stream import check_stream
from mscnn import data as ecg_data

from .errors import CompileError, ParityError
from .golden import RECORD_PREFIX, synthetic_ecg
from .publish import Journal
from .stream import FRAMES, export_step_onnx, stream_onnx
from .targets import Target, runnable_here
from .variants import Variant, variant_model

STREAM_RECORDS = 6  # the golden stream: 6 CPSC2019 records back to back, one minute


def build_stream_into(
    folder: Path,
    name: str,
    loaded: mscnn.LoadedModel,
    target: Target,
    variant: Variant,
    options,
    journal: Journal,
) -> Manifest:
    from .build import compile_library, describe, verdict, write_manifest

    def step(stage: str):
        return journal.stage(stage, options.progress)

    with step("variant"):  # Step 1
        model = variant_model(loaded, variant)
        step_model = _step_of(model, options.hop)
    with step("golden"):  # Step 2
        record, offline, case = golden_stream(folder, model, variant, loaded.fs, options.seed)
    with step("onnx"):  # Step 3
        export_step_onnx(copy.deepcopy(model), options.hop, folder / ONNX_FILE)
        ort = compare(stream_onnx(folder / ONNX_FILE, record), offline, "cpu")
        journal.write(f"ONNX Runtime (streamed) vs PyTorch (offline): {ort}")
        if not ort.passed:
            raise ParityError(f"the streamed ONNX step disagrees with PyTorch: {ort}")
    with step("tvm"):  # Step 4
        shape = (1, step_model.leads, options.hop)
        library = compile_library(
            folder / ONNX_FILE, target, shape, folder / LIBRARY, journal.path, options
        )
    with step("manifest"):  # Step 5
        base = describe(
            name,
            loaded,
            model,
            target,
            variant,
            shape,
            [],
            library,
            Parity(TOLERANCES[target.device], verdict(ort), Verdict.not_run("not run"), None),
        )
        manifest = write_manifest(folder, _as_stream(base, step_model, case))
    with step("parity"):  # Step 6
        manifest = check_built_stream(folder, manifest, target)
        journal.write(f"TVM (streamed) vs PyTorch: {manifest.parity.tvm}")
    return manifest


def golden_stream(
    folder: Path, model, variant: Variant, fs: int, seed: int
) -> tuple[np.ndarray, np.ndarray, GoldenCase]:
    """The golden record (leads, samples) and the offline model's frames (channels,
    frames), time last as a stream gives them, written as .npy."""
    record, name = golden_record(variant, fs, seed)
    with torch.no_grad():
        offline = model(torch.from_numpy(record)[None])[0].numpy()
    if getattr(model, "task", "features") == "qrs_detection":
        offline = np.ascontiguousarray(offline.T)  # (frames, classes) -> time last
    (folder / "golden").mkdir()
    case = GoldenCase(name, f"golden/{name}.input.npy", f"golden/{name}.output.npy")
    write_npy(folder / case.input, record)
    write_npy(folder / case.output, offline)
    return record, offline, case


def golden_record(variant: Variant, fs: int, seed: int) -> tuple[np.ndarray, str]:
    """(record, case name) of a stream bundle's golden case: a minute of CPSC2019 records
    back to back for a 1-lead model, a synthetic ECG otherwise; float32 (leads, samples)."""
    if len(variant.leads) == 1:
        try:
            signals = ecg_data.cpsc2019_records().signals[:STREAM_RECORDS]
            record = np.ascontiguousarray(signals.reshape(1, -1), dtype=np.float32)
            return record, RECORD_PREFIX + "cpsc2019-stream"
        except mscnn.MscnnError:
            pass
    record = synthetic_ecg(variant.leads, 60 * fs, fs, 1, seed)[0]
    return np.ascontiguousarray(record, dtype=np.float32), "ecg"


def _as_stream(base: Manifest, step, case: GoldenCase) -> Manifest:
    info = StreamInfo(
        hop=step.hop,
        reduction=step.reduction,
        channels=step.channels,
        delay_frames=step.delay_frames,
        look_ahead=step.look_ahead,
        flush_steps=step.flush_steps,
        state_bytes=step.state_bytes,
        states=[StateTensor(s.name, tuple(s.shape), s.dtype) for s in step.state_specs()],
    )
    frames = TensorInfo(
        FRAMES,
        (1, step.channels, step.hop // step.reduction),
        "float32",
        "batch, channels, frames (time last; classes for a detector)",
    )
    return dataclasses.replace(base, output=frames, golden=[case], stream=info)


def check_built_stream(folder: Path, manifest: Manifest, target: Target) -> Manifest:
    """Stream the golden record through the compiled step where it runs here."""
    from .build import verdict, write_manifest

    runs, how = runnable_here(target)
    if runs:
        done = check_stream(folder, how)
        parity = dataclasses.replace(
            manifest.parity, tvm=verdict(done.verdict, how), task=done.task
        )
    else:
        done, parity = (
            None,
            dataclasses.replace(manifest.parity, tvm=Verdict.not_run(f"not run: {how}")),
        )
    manifest = write_manifest(folder, dataclasses.replace(manifest, parity=parity))
    if done is not None and not done.passed:
        raise ParityError(
            f"the compiled step, streamed, disagrees with PyTorch: "
            f"{done.verdict}; task: {done.task}"
        )
    return manifest


def _step_of(model, hop: int):
    """The step of a private copy of `model`: a StepModule binds the layers it is built
    on to its hop, so the one the export builds must be the only one on `model`."""
    return mscnn.StepModule(copy.deepcopy(model), hop)


def check_hop(loaded: mscnn.LoadedModel, hop: int) -> None:
    """A hop the model can stream with, or a CompileError naming what is wrong."""
    try:
        _step_of(loaded.model.eval(), hop)
    except mscnn.MscnnError as exc:
        raise CompileError(f"--hop {hop}: {exc}") from None
