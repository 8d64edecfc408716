"""Build one bundle: a model variant compiled for one target, with the evidence that it
computes what PyTorch computes.

    Step 1. Variant    the reduced-lead model (compile/variants.py)
    Step 2. Golden     seeded inputs and the PyTorch outputs for them (.npy), and the
                       variant's contract with the full model
    Step 3. ONNX       export, checker, ONNX Runtime vs PyTorch
    Step 4. TVM        ONNX -> Relax -> the target's pipeline -> library, (cross-)linked
    Step 5. Manifest   the typed manifest (deploy/manifest.py) with every file's sha256
    Step 6. Parity     the bundle loaded as a device loads it (deploy.check_parity), vs
                       PyTorch, where it runs here; then renamed into place (publish.py)

Each step is a function that takes and returns plain values. A bundle whose parity
fails is not published: it is kept as `<name>.failed/` with its log, and the build
raises CompileError.
"""

from __future__ import annotations

import dataclasses
import platform
import subprocess
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

import mscnn
from deploy.bundle import BUILD_LOG, LIBRARY, MANIFEST, ONNX_FILE, Bundle
from deploy.files import sha256_file, write_npy
from deploy.manifest import (
    FileEntry,
    Footprint,
    GoldenCase,
    Manifest,
    ModelInfo,
    Parity,
    Schedule,
    TargetInfo,
    TensorInfo,
    Verdict,
)
from deploy.parity import TOLERANCES, ParityResult, compare
from deploy.predictor import check_bundle
from deploy.rpeaks import RPeakRule

from .cuda import compile_cuda_library, cubin_archs
from .errors import CompileError, ParityError
from .export import INPUT_NAME, OUTPUT_NAME, check_onnx, export_onnx
from .golden import golden_inputs, real_inputs
from .int8_build import build_int8_into
from .int8_stream_build import build_int8_stream_into
from .pipeline import MemoryPlan, compile_executable
from .publish import Journal, keep_failed, publish, start
from .quantize import check_quantizable
from .records import load_records
from .schedule import KernelCounts
from .stream_build import build_stream_into, check_hop
from .targets import (
    Target,
    check_compiler,
    check_machine,
    precision_target,
    runnable_here,
)
from .variants import Variant, default_variants, is_whole, resolve_variant, variant_model

__all__ = ["BuildOptions", "Variant", "build", "bundle_dir", "default_variants", "resolve_variant"]


@dataclass
class BuildOptions:
    samples: int = 5000
    batch: int = 1
    seed: int = 0
    progress: Callable[[str], None] = field(default=lambda stage: None)
    tuning: bool = True  # apply the target's tuning records (compile/tuning/<target>/)
    records_dir: Path | None = None  # another records folder (tests)
    hop: int | None = None  # a stream bundle of the model's step for this hop (samples)
    precision: str = "fp32"  # one of PRECISIONS: "int8" builds with compile/int8_build.py


# fp16: the fp32 graph with half-precision storage and products, fp32 accumulation.
PRECISIONS = ("fp32", "int8", "fp16")


def bundle_dir(
    out: Path,
    target: Target,
    preset: str | None,
    variant: Variant,
    hop: int | None = None,
    precision: str = "fp32",
) -> Path:
    stream = f"-stream{hop}" if hop else ""
    suffix = "" if precision == "fp32" else f"-{precision}"
    return Path(out) / target.name / f"{preset or 'custom'}-{variant.name}{stream}{suffix}"


def build(
    loaded: mscnn.LoadedModel,
    target: Target,
    variant: Variant,
    out: Path,
    options: BuildOptions | None = None,
) -> Bundle:
    """Build and publish one bundle into `out/<target>/<preset>-<variant>/`."""
    options = options or BuildOptions()
    _check_shape(loaded, options, target)
    check_compiler(target)
    final = bundle_dir(out, target, loaded.preset, variant, options.hop, options.precision)
    tmp = start(final)
    journal = Journal(tmp / BUILD_LOG)
    build_into = _build_into
    if options.hop is not None:
        build_into = build_int8_stream_into if options.precision == "int8" else build_stream_into
    elif options.precision == "int8":
        build_into = build_int8_into
    try:
        manifest = build_into(tmp, final.name, loaded, target, variant, options, journal)
    except BaseException as exc:
        journal.write(traceback.format_exc())
        kept = keep_failed(tmp, final)
        if not isinstance(exc, Exception):  # KeyboardInterrupt: clean up, re-raise
            raise
        raise _failure(exc, f"{final.name} for {target.name}", journal.current, kept) from (
            None if isinstance(exc, CompileError | OSError) else exc
        )
    publish(tmp, final)
    return Bundle(final, manifest)


def _failure(exc: Exception, label: str, stage: str, kept: Path | None) -> CompileError:
    where = f"; log kept at {kept / BUILD_LOG}" if kept else ""
    if isinstance(exc, CompileError):
        return type(exc)(f"{label}: {exc}{where}")
    if isinstance(exc, OSError) and exc.strerror:  # disk full, permissions: no traceback
        return CompileError(
            f"{label}: {stage} could not write: {exc.strerror} ({exc.filename}){where}"
        )
    return CompileError(f"{label}: {stage} failed: {type(exc).__name__}: {exc}{where}")


def _check_shape(loaded: mscnn.LoadedModel, options: BuildOptions, target: Target) -> None:
    for key in ("samples", "batch"):
        value = getattr(options, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CompileError(f"--{key}: expected a positive integer, got {value!r}")
    try:
        loaded.model.compute_output_shape(options.samples, options.batch)
    except mscnn.MscnnError as exc:
        raise CompileError(f"--samples {options.samples}: {exc}") from None
    if options.precision not in PRECISIONS:
        raise CompileError(
            f"--precision {options.precision!r}; choose from: {', '.join(PRECISIONS)}"
        )
    if options.precision != "fp32":
        precision_target(target, options.precision)  # refused up front where it has none
        if options.precision == "int8":
            check_quantizable(loaded.model)
        if options.hop is not None and options.precision == "fp16":
            raise CompileError(
                "--hop with --precision fp16: stream bundles are fp32 or int8 (the fp16 "
                "bundles compute whole windows)"
            )
    if options.hop is not None:
        check_hop(loaded, options.hop)


def _build_into(
    folder: Path,
    name: str,
    loaded: mscnn.LoadedModel,
    target: Target,
    variant: Variant,
    options: BuildOptions,
    journal: Journal,
) -> Manifest:
    def step(stage: str):
        return journal.stage(stage, options.progress)

    with step("variant"):  # Step 1
        model = variant_model(loaded, variant)
        shape = (options.batch, model.in_channels, options.samples)
        target = precision_target(target, options.precision)  # fp16: its own TVM target
    with step("golden"):  # Step 2
        inputs, expected = write_golden(folder, model, variant, loaded.fs, options)
        contract = variant_contract(loaded, model, variant, inputs["ecg"])
    with step("onnx"):  # Step 3
        ort = export_checked(model, folder / ONNX_FILE, shape, inputs, expected)
        journal.write(f"ONNX Runtime vs PyTorch: {ort}")
    with step("tvm"):  # Step 4
        library = compile_library(
            folder / ONNX_FILE, target, shape, folder / LIBRARY, journal.path, options
        )
    with step("manifest"):  # Step 5
        manifest = write_manifest(
            folder,
            describe(
                name,
                loaded,
                model,
                target,
                variant,
                shape,
                list(inputs),
                library,
                Parity(
                    TOLERANCES[tolerance_kind(target, options.precision)],
                    verdict(ort),
                    Verdict.not_run("not run"),
                    verdict(contract),
                ),
            ),
        )
        if options.precision != "fp32":
            manifest = write_manifest(
                folder, dataclasses.replace(manifest, precision=options.precision)
            )
    with step("parity"):  # Step 6
        manifest = check_built(folder, manifest, target)
        journal.write(f"TVM vs PyTorch: {manifest.parity.tvm}; task: {manifest.parity.task}")
    return manifest


# --------------------------------------------------------------------------------------
# The steps


def write_golden(
    folder: Path, model: torch.nn.Module, variant: Variant, fs: int, options: BuildOptions
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The golden inputs and PyTorch's outputs for them, written as plain .npy: seeded
    noise and a synthetic ECG, and for a whole model real records (compile/golden.py)."""
    inputs = golden_inputs(variant.leads, options.samples, fs, options.batch, options.seed)
    if task_of(model) != "features":
        records, _ = real_inputs(task_of(model), variant.leads, options.samples, options.batch)
        inputs.update(records)
    expected = {}
    (folder / "golden").mkdir()
    with torch.no_grad():
        for key, x in inputs.items():
            expected[key] = model(torch.from_numpy(x)).numpy()
            write_npy(folder / "golden" / f"{key}.input.npy", x)
            write_npy(folder / "golden" / f"{key}.output.npy", expected[key])
    return inputs, expected


def tolerance_kind(target: Target, precision: str) -> str:
    """The tolerance row a bundle is judged by (deploy.manifest.Manifest.tolerance_kind)."""
    return target.device if precision == "fp32" else precision


def task_of(model: torch.nn.Module) -> str:
    """What the model's output means: "features" (a bare backbone) or its head's task."""
    return getattr(model, "task", "features")


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
    """Load the bundle as a device would and compare with PyTorch, where it runs here:
    tensors, and for whole models the beats or decisions on the real records. The
    manifest is rewritten with the result (or why it was not run)."""
    runs, how = runnable_here(target)
    if runs:
        done = check_bundle(folder, how)
        tvm, task = verdict(done.verdict, how), done.task
    else:
        done, tvm, task = None, Verdict.not_run(f"not run: {how}"), None
    parity = dataclasses.replace(manifest.parity, tvm=tvm, task=task)
    manifest = write_manifest(folder, dataclasses.replace(manifest, parity=parity))
    if done is not None and not done.verdict.passed:
        raise ParityError(f"TVM disagrees with PyTorch: {done.verdict}")
    if task is not None and not task.passed and manifest.task_gates:
        raise ParityError(
            f"TVM finds other {task.kind} than PyTorch on "
            f"{task.cases - task.identical} of {task.cases} real records"
        )
    return manifest


def tool_versions(compiler: str) -> dict[str, str]:
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
