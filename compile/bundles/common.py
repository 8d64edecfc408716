"""The steps bundle kinds share (compile/bundles/): each kind's build is a short list of
these, so a fact (how a library is linked and checked, what a manifest holds, how a built
bundle is judged) has one home. Kinds import this module, never compile/build.py.
"""

from __future__ import annotations

import copy
import dataclasses
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

import mscnn
from deploy.bundle import BUILD_LOG, LIBRARY, MANIFEST
from deploy.files import sha256_file
from deploy.manifest import (
    FileEntry,
    Footprint,
    GoldenCase,
    Manifest,
    ModelInfo,
    Parity,
    Schedule,
    StateTensor,
    StreamInfo,
    TargetInfo,
    TensorInfo,
    Verdict,
)
from deploy.parity import ParityResult, compare
from deploy.predictor import check_bundle
from deploy.rpeaks import RPeakRule
from deploy.stream import check_stream
from mscnn import data as ecg_data

from ..errors import CompileError, ParityError
from ..export import FRAMES, INPUT_NAME, OUTPUT_NAME, check_onnx, export_onnx
from ..golden import RECORD_PREFIX, synthetic_ecg
from ..lowering.cuda import compile_cuda_library, cubin_archs
from ..lowering.pipeline import MemoryPlan, compile_executable
from ..lowering.records import load_records
from ..lowering.schedule import KernelCounts
from ..targets import Target, check_compiler, check_machine, runnable_here
from ..variants import Variant, is_whole
from .kind import BuildOptions


def task_of(model: torch.nn.Module) -> str:
    """What the model's output means: "features" (a bare backbone) or its head's task."""
    return getattr(model, "task", "features")


def tolerance_kind(target: Target, precision: str) -> str:
    """The tolerance row a bundle is judged by (deploy.manifest.Manifest.tolerance_kind)."""
    return target.device if precision == "fp32" else precision


def variant_contract(
    loaded: mscnn.LoadedModel, model: torch.nn.Module, variant: Variant, x: np.ndarray
) -> ParityResult | None:
    """How far the variant is from the full model fed zeros on the dropped leads (for a
    bare lead-wise backbone: on the kept leads' channels)."""
    if is_whole(loaded, variant):
        return None
    xt = torch.from_numpy(x)
    with torch.no_grad():
        reference = mscnn.variant_reference(loaded.model, xt, variant.indices)
        result = compare(model(xt).numpy(), reference.numpy(), "cpu")
    if not result.passed:
        raise CompileError(f"the variant breaks its zero-filled-leads contract: {result}")
    return result


def export_checked(
    model: torch.nn.Module, path: Path, shape: tuple[int, int, int], inputs: dict, expected: dict
) -> ParityResult:
    """Export to ONNX; the ONNX checker and ONNX Runtime vs PyTorch must both pass."""
    export_onnx(model, path, batch=shape[0], samples=shape[2])
    ort = check_onnx(path, inputs, expected)
    if not ort.passed:
        raise ParityError(f"ONNX Runtime disagrees with PyTorch: {ort}")
    return ort


@dataclass(frozen=True)
class Library:
    """A linked TVM library and what its compilation reported."""

    compiler: str
    schedule: Schedule
    memory: MemoryPlan | None
    cuda_kernels: list[str] | None


def compile_library(
    onnx_path: Path, target: Target, shape, library: Path, log: Path, options: BuildOptions
) -> Library:
    """Compile and link `library` for `target`, checking what came out (ELF machine,
    compiled CUDA kernels)."""
    compiler = check_compiler(target)
    records, files = _records(target, options)  # read once: applied, then listed
    if target.is_gpu:  # isolated: TVM's CUDA runtime is chosen at import
        compile_cuda_library(onnx_path, target.name, shape, library, log)
        compiled_memory, counts = None, None
    else:
        from tvm.support import cc

        compiled = compile_executable(
            onnx_path, target, shape, records=records, precision=options.precision
        )
        compiled.executable.export_library(str(library), fcompile=cc.cross_compiler(compiler))
        compiled_memory, counts = compiled.memory, compiled.kernels
    kernels = cubin_archs(library) if target.is_gpu else None
    if kernels is not None and target.tvm["arch"] not in kernels:
        raise CompileError(
            f"{LIBRARY} holds no compiled {target.tvm['arch']} CUDA kernels "
            f"(found: {', '.join(kernels) or 'none'})"
        )
    check_machine(library, target)
    return Library(compiler, _schedule(target, files, counts), compiled_memory, kernels)


def _records(target: Target, options: BuildOptions) -> tuple[dict, list[dict]]:
    if target.tile is None or not options.tuning:
        return {}, []
    return load_records(target, options.records_dir)


def _schedule(target: Target, files: list[dict], counts: KernelCounts | None) -> Schedule:
    """How the kernels were scheduled: the tile, and the tuning record files used."""
    if target.tile is None:
        return Schedule("tvm default GPU pipeline (dlight)", None, None)
    tuning = {"records": files, **dataclasses.asdict(counts)} if files and counts else None
    return Schedule("mscnn conv schedule", dataclasses.asdict(target.tile), tuning)


def describe(
    name: str,
    loaded: mscnn.LoadedModel,
    model,
    target: Target,
    variant: Variant,
    shape,
    golden: list[str],
    library: Library,
    parity: Parity,
) -> Manifest:
    """The bundle's manifest, files not yet hashed."""
    memory, task = library.memory, task_of(model)
    return Manifest(
        name=name,
        target=_target_info(target, library.cuda_kernels),
        model=_model_info(loaded, model),
        leads=list(variant.leads),
        lead_indices=list(variant.indices),
        fs=loaded.fs,
        input=TensorInfo(INPUT_NAME, tuple(shape), "float32", "batch, leads, samples"),
        output=TensorInfo(
            OUTPUT_NAME,
            tuple(model.compute_output_shape(shape[2], shape[0])),
            "float32",
            LAYOUTS[task],
        ),
        golden=[GoldenCase(n, f"golden/{n}.input.npy", f"golden/{n}.output.npy") for n in golden],
        schedule=library.schedule,
        footprint=Footprint(
            0,
            *(
                (memory.weights_bytes, memory.activation_bytes, memory.output_bytes)
                if memory
                else (None, None, None)
            ),
        ),
        parity=parity,
        tools=tool_versions(library.compiler),
        detect=RPeakRule(reduction=model.reduction, fs=loaded.fs)
        if task == "qrs_detection"
        else None,
    )


def _target_info(target: Target, cuda_kernels: list[str] | None) -> TargetInfo:
    host = dict(target.host) if target.host else None
    return TargetInfo(
        target.name,
        dict(target.tvm),
        host,
        target.arch,
        target.device,
        target.run,
        list(target.qemu) or None,
        list(target.cpu_flags),
        cuda_kernels,
    )


def _model_info(loaded: mscnn.LoadedModel, model) -> ModelInfo:
    return ModelInfo(
        loaded.preset,
        loaded.source,
        model.config,
        model.in_channels,
        model.num_parameters,
        model.receptive_field(),
        list(loaded.leads),
        getattr(model, "head", None),
        task_of(model),
        list(getattr(model, "classes", None) or []),
    )


LAYOUTS = {
    "features": "batch, channels, frames",
    "qrs_detection": "batch, frames, classes (logits)",
    "classification": "batch, classes (logits)",
}


def verdict(result: ParityResult | None, how: str | None = None) -> Verdict | None:
    if result is None:
        return None
    j = result.to_json()
    return Verdict(j["passed"], j["normalised"], j["max_abs"], j["tolerance"], j["detail"], how)


def write_manifest(folder: Path, manifest: Manifest) -> Manifest:
    """Hash every file of the bundle (the manifest and the log excepted) into the
    manifest, and write it."""
    paths = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.name not in (MANIFEST, BUILD_LOG)
    )
    files = {str(p.relative_to(folder)): FileEntry(sha256_file(p), p.stat().st_size) for p in paths}
    footprint = dataclasses.replace(manifest.footprint, library_bytes=files[LIBRARY].bytes)
    manifest = dataclasses.replace(manifest, files=files, footprint=footprint)
    (folder / MANIFEST).write_text(manifest.to_json())
    return manifest


def check_built(folder: Path, manifest: Manifest, target: Target) -> Manifest:
    """Load the bundle as a device would and compare with PyTorch (or the int8
    reference), where it runs here: a window bundle on its golden inputs, a stream bundle
    by streaming its golden record hop by hop; and for whole models the beats or
    decisions on the real records. The manifest is rewritten with the result (or why it
    was not run)."""
    runs, how = runnable_here(target)
    if runs:
        done = (check_stream if manifest.stream else check_bundle)(folder, how)
        tvm, task = verdict(done.verdict, how), done.task
    else:
        done, tvm, task = None, Verdict.not_run(f"not run: {how}"), None
    parity = dataclasses.replace(manifest.parity, tvm=tvm, task=task)
    manifest = write_manifest(folder, dataclasses.replace(manifest, parity=parity))
    if done is not None and manifest.stream and not done.passed:
        raise ParityError(
            f"the compiled step, streamed, disagrees with PyTorch: "
            f"{done.verdict}; task: {done.task}"
        )
    if done is not None and not done.verdict.passed:
        raise ParityError(f"TVM disagrees with PyTorch: {done.verdict}")
    if task is not None and not task.passed and manifest.task_gates:
        raise ParityError(
            f"TVM finds other {task.kind} than PyTorch on "
            f"{task.cases - task.identical} of {task.cases} real records"
        )
    return manifest


def tool_versions(compiler: str) -> dict[str, str]:
    """The versions a manifest records: Python, the pinned packages, the linker."""
    versions = {"python": platform.python_version()}
    for dist in ("torch", "onnx", "onnxruntime", "apache-tvm", "apache-tvm-ffi", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    try:
        first = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=30
        ).stdout.splitlines()
        versions["compiler"] = first[0] if first else Path(compiler).name
    except (OSError, subprocess.SubprocessError):
        versions["compiler"] = Path(compiler).name
    try:
        versions["mscnn-edge"] = metadata.version("mscnn-edge")
    except metadata.PackageNotFoundError:
        versions["mscnn-edge"] = "unknown"
    return versions


# --------------------------------------------------------------------------------------
# Stream bundles (fp32 and int8)

STREAM_RECORDS = 6  # the golden stream: 6 CPSC2019 records back to back, one minute


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


def as_stream(base: Manifest, step, case: GoldenCase) -> Manifest:
    """A window manifest turned into a stream bundle's: the step's facts and states, the
    frames of one hop as its output, the golden record as its one case."""
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


def step_of(model, hop: int):
    """The step of a private copy of `model`: a StepModule binds the layers it is built
    on to its hop, so the one the export builds must be the only one on `model`."""
    return mscnn.StepModule(copy.deepcopy(model), hop)


def check_hop(loaded: mscnn.LoadedModel, hop: int) -> None:
    """A hop the model can stream with, or a CompileError naming what is wrong."""
    try:
        step_of(loaded.model.eval(), hop)
    except mscnn.MscnnError as exc:
        raise CompileError(f"--hop {hop}: {exc}") from None
