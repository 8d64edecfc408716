"""Build one bundle: a model variant compiled for one target, with the evidence that it
computes what PyTorch computes.

    Step 1. Variant    the reduced-lead model (mscnn.derive_variant) and its contract
    Step 2. Golden     seeded inputs and the PyTorch outputs for them (.npy)
    Step 3. ONNX       export, checker, ONNX Runtime vs PyTorch
    Step 4. TVM        ONNX -> Relax -> the target's pipeline -> library, (cross-)linked
    Step 5. Manifest   config, leads, shapes, versions and the sha256 of every file
    Step 6. Parity     the bundle loaded as a device loads it (deploy.check_parity), vs
                       PyTorch, where it runs here; then renamed into place

A bundle whose parity fails is not published: it is kept as `<name>.failed/` with its
log, and the build raises CompileError.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import platform
import shutil
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import mscnn
from deploy.bundle import (
    BUILD_LOG,
    LIBRARY,
    MANIFEST,
    ONNX_FILE,
    SCHEMA,
    SCHEMA_VERSION,
    Bundle,
    sha256_file,
    write_npy,
)
from deploy.parity import TOLERANCES, compare
from deploy.predictor import check_parity

from .cuda import compile_cuda_library, cubin_archs
from .errors import CompileError, ParityError
from .export import INPUT_NAME, OUTPUT_NAME, check_onnx, export_onnx
from .golden import golden_inputs
from .pipeline import compile_executable
from .targets import Target, check_compiler, elf_machine_of, runnable_here
from .tune import load_records

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# Variants


@dataclass(frozen=True)
class Variant:
    name: str  # folder suffix: "6lead", or the lead names for a custom selection
    leads: tuple[str, ...]
    indices: tuple[int, ...]  # into the preset's leads


def default_variants(loaded: mscnn.LoadedModel) -> list[str]:
    """Every CinC lead set the model's leads contain, largest first; else its own leads."""
    sets = [k for k, names in mscnn.LEAD_SETS.items() if set(names) <= set(loaded.leads)]
    return sets or [str(len(loaded.leads))]


def resolve_variant(loaded: mscnn.LoadedModel, spec: str) -> Variant:
    """A variant from a lead count ("6": a CinC set, or all the model's leads) or a
    comma-separated list of lead names."""
    own = str(len(loaded.leads))
    valid = sorted(set(default_variants(loaded)) | {own}, key=lambda v: -int(v))
    if spec == own:
        names, indices = list(loaded.leads), list(range(len(loaded.leads)))
    elif spec.isdigit() and spec not in valid:
        raise CompileError(
            f"unknown variant {spec!r} for a model with leads {', '.join(loaded.leads)}; "
            f"choose from: {', '.join(valid)} (or a comma-separated list of lead names)"
        )
    else:
        try:
            names, indices = mscnn.resolve_leads(spec, loaded.leads)
        except mscnn.MscnnError as exc:
            raise CompileError(f"variant {spec!r}: {exc}") from None
    name = f"{len(names)}lead" if spec.isdigit() else "_".join(names)
    return Variant(name, tuple(names), tuple(indices))


# --------------------------------------------------------------------------------------
# The build


@dataclass
class BuildOptions:
    samples: int = 5000
    batch: int = 1
    seed: int = 0
    progress: Callable[[str], None] = field(default=lambda stage: None)
    tuning: bool = True  # apply the target's tuning records (compile/tuning/<target>/)
    records_dir: Path | None = None  # another records folder (tests)


def bundle_dir(out: Path, target: Target, preset: str | None, variant: Variant) -> Path:
    return Path(out) / target.name / f"{preset or 'custom'}-{variant.name}"


def build(
    loaded: mscnn.LoadedModel,
    target: Target,
    variant: Variant,
    out: Path,
    options: BuildOptions | None = None,
) -> Bundle:
    """Build and publish one bundle into `out/<target>/<preset>-<variant>/`."""
    options = options or BuildOptions()
    _check_shape(loaded, options)
    check_compiler(target)
    final = bundle_dir(out, target, loaded.preset, variant)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale(final)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as exc:
        raise CompileError(f"cannot write bundles under {out}: {exc.strerror} "
                           f"({exc.filename}); choose a writable --out") from None  # fmt: skip
    log_path = tmp / BUILD_LOG
    journal = _Journal(log_path)
    try:
        manifest = _build_into(tmp, final.name, loaded, target, variant, options, journal)
    except BaseException as exc:
        journal.write(traceback.format_exc())
        kept = _keep_failed(tmp, final)
        if not isinstance(exc, Exception):  # KeyboardInterrupt: clean up, re-raise
            raise
        where = f"; log kept at {kept / BUILD_LOG}" if kept else ""
        if isinstance(exc, CompileError):
            raise type(exc)(f"{final.name} for {target.name}: {exc}{where}") from None
        if isinstance(exc, OSError) and exc.strerror:  # disk full, permissions: no traceback
            raise CompileError(
                f"{final.name} for {target.name}: {journal.current} could not write: "
                f"{exc.strerror} ({exc.filename}){where}"
            ) from None
        raise CompileError(
            f"{final.name} for {target.name}: {journal.current} failed: {type(exc).__name__}: "
            f"{exc}{where}"
        ) from exc
    _publish(tmp, final)
    return Bundle(final, manifest)


def _check_shape(loaded: mscnn.LoadedModel, options: BuildOptions) -> None:
    for key in ("samples", "batch"):
        value = getattr(options, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CompileError(f"--{key}: expected a positive integer, got {value!r}")
    try:
        loaded.model.compute_output_shape(options.samples, options.batch)
    except mscnn.MscnnError as exc:
        raise CompileError(f"--samples {options.samples}: {exc}") from None


def _build_into(
    folder: Path,
    name: str,
    loaded: mscnn.LoadedModel,
    target: Target,
    variant: Variant,
    options: BuildOptions,
    journal: _Journal,
) -> dict[str, Any]:
    steps = options.progress

    with journal.stage("variant", steps):  # Step 1
        full = loaded.model.eval()
        whole = list(variant.indices) == list(range(full.in_channels))
        model = full if whole else mscnn.derive_variant(full, variant.indices).eval()
        shape = (options.batch, model.in_channels, options.samples)
        out_shape = model.compute_output_shape(options.samples, options.batch)

    with journal.stage("golden", steps):  # Step 2
        inputs = golden_inputs(variant.leads, options.samples, loaded.fs, options.batch,
                               options.seed)  # fmt: skip
        expected = {}
        golden_dir = folder / "golden"
        golden_dir.mkdir()
        with torch.no_grad():
            for key, x in inputs.items():
                expected[key] = model(torch.from_numpy(x)).numpy()
                write_npy(golden_dir / f"{key}.input.npy", x)
                write_npy(golden_dir / f"{key}.output.npy", expected[key])
        contract = None if whole else _variant_contract(full, model, variant, inputs)

    with journal.stage("onnx", steps):  # Step 3
        export_onnx(model, folder / ONNX_FILE, batch=options.batch, samples=options.samples)
        ort = check_onnx(folder / ONNX_FILE, inputs, expected)
        journal.write(f"ONNX Runtime vs PyTorch: {ort}")
        if not ort.passed:
            raise ParityError(f"ONNX Runtime disagrees with PyTorch: {ort}")

    with journal.stage("tvm", steps):  # Step 4
        plan: dict[str, Any] = {}
        records, schedule = _schedule_info(target, options)
        compiler = _compile_tvm(folder / ONNX_FILE, target, shape, folder / LIBRARY, plan,
                                journal.path, records, schedule)  # fmt: skip
        kernels = cubin_archs(folder / LIBRARY) if target.device == "cuda" else None
        if kernels is not None and target.tvm["arch"] not in kernels:
            raise CompileError(
                f"{LIBRARY} holds no compiled {target.tvm['arch']} CUDA kernels (found: "
                f"{', '.join(kernels) or 'none'})"
            )
        machine = elf_machine_of(folder / LIBRARY)
        if machine != target.elf_machine:
            raise CompileError(
                f"{LIBRARY} is ELF machine {machine}, expected {target.elf_machine} "
                f"({target.arch}); check the cross compiler {target.compiler}"
            )

    with journal.stage("manifest", steps):  # Step 5
        manifest = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "name": name,
            "target": {
                "name": target.name,
                "tvm": dict(target.tvm),
                "host": dict(target.host) if target.host else None,
                "arch": target.arch,
                "device": target.device,
                "run": target.run,
                "emulator": list(target.qemu) or None,  # how a non-native host runs it
                "cpu_flags": list(target.cpu_flags),
                "cuda_kernels": kernels,
            },
            "model": {
                "preset": loaded.preset,
                "source": loaded.source,
                "config": model.config,
                "in_channels": model.in_channels,
                "num_parameters": model.num_parameters,
                "receptive_field": model.receptive_field(),
                "variant_of": list(loaded.leads),
            },
            "leads": list(variant.leads),
            "lead_indices": list(variant.indices),
            "fs": loaded.fs,
            "input": {
                "name": INPUT_NAME,
                "shape": list(shape),
                "dtype": "float32",
                "layout": "batch, leads, samples",
            },
            "output": {
                "name": OUTPUT_NAME,
                "shape": list(out_shape),
                "dtype": "float32",
                "layout": "batch, channels, frames",
            },
            "golden": [
                {"name": n, "input": f"golden/{n}.input.npy", "output": f"golden/{n}.output.npy"}
                for n in inputs
            ],
            "schedule": schedule,
            # What a device must hold: flash (library, weights inside it) and RAM (the
            # static plan's storage blocks plus the outputs). Not read for GPU builds.
            "footprint": {
                "library_bytes": (folder / LIBRARY).stat().st_size,
                "weights_bytes": plan.get("weights_bytes"),
                "activation_bytes": plan.get("activation_bytes"),
                "output_bytes": plan.get("output_bytes"),
            },
            "parity": {
                "tolerance": TOLERANCES[target.device],
                "onnxruntime": ort.to_json(),
                "tvm": {"passed": None, "normalised": None, "how": "not run"},
                "variant_contract": contract,
            },
            "tools": _tool_versions(compiler),
            "files": {},
        }
        _write_manifest(folder, manifest)

    with journal.stage("parity", steps):  # Step 6: the bundle as a device would load it
        runs, how = runnable_here(target)
        if runs:
            result, _ = check_parity(folder)
            journal.write(f"TVM vs PyTorch: {result}")
            manifest["parity"]["tvm"] = {**result.to_json(), "how": how}
        else:
            manifest["parity"]["tvm"]["how"] = f"not run: {how}"
        _write_manifest(folder, manifest)
        if runs and not result.passed:
            raise ParityError(f"TVM disagrees with PyTorch: {result}")
    return manifest


def _variant_contract(full, model, variant: Variant, inputs) -> dict[str, Any] | None:
    """How far the variant is from the full model fed zeros on the dropped leads."""
    x = torch.from_numpy(inputs["ecg"])
    with torch.no_grad():
        reference = full(mscnn.zero_fill(x, variant.indices, full.in_channels))
        if full.is_lead_wise:
            reference = reference[:, full.lead_wise_channels(variant.indices)]
        result = compare(model(x).numpy(), reference.numpy(), "cpu")
    if not result.passed:
        raise CompileError(f"the variant breaks its zero-filled-leads contract: {result}")
    return result.to_json()


def _compile_tvm(onnx_path: Path, target: Target, shape, library: Path, plan: dict, log: Path,
                 records: dict, schedule: dict[str, Any]):  # fmt: skip
    """Compile and link `library`; returns the compiler used (for the manifest). For CPU
    targets `plan` receives the memory plan's figures and `schedule["tuning"]` how many
    kernels took a tuned tile."""
    compiler = check_compiler(target)
    if target.device == "cuda":  # isolated: TVM's CUDA runtime is chosen at import
        compile_cuda_library(onnx_path, target.name, shape, library, log)
        return compiler
    from tvm.support import cc

    tuning = schedule.get("tuning")
    report: dict[str, int] = {}
    executable = compile_executable(onnx_path, target, shape, plan, records=records,
                                    report=report)  # fmt: skip
    if tuning is not None:
        tuning.update(report)
    executable.export_library(str(library), fcompile=cc.cross_compiler(compiler))
    return compiler


def _schedule_info(target: Target, options: BuildOptions) -> tuple[dict, dict[str, Any]]:
    """The tuned tiles to apply, and how the kernels are scheduled (for the manifest:
    the tuning record files used, if any)."""
    if target.tile is None:
        return {}, {"kind": "tvm default GPU pipeline (dlight)", "tile": None, "tuning": None}
    info: dict[str, Any] = {"kind": "mscnn conv schedule", "tile": asdict(target.tile),
                            "tuning": None}  # fmt: skip
    records, files = load_records(target, options.records_dir) if options.tuning else ({}, [])
    if files:
        info["tuning"] = {"records": files}
    return records, info


def _tool_versions(compiler: str) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("torch", "onnx", "onnxruntime", "apache-tvm", "apache-tvm-ffi", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    try:
        first = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                               timeout=30).stdout.splitlines()  # fmt: skip
        versions["compiler"] = first[0] if first else Path(compiler).name
    except (OSError, subprocess.SubprocessError):
        versions["compiler"] = Path(compiler).name
    versions["mscnn-edge"] = _own_version()
    return versions


def _own_version() -> str:
    try:
        return metadata.version("mscnn-edge")
    except metadata.PackageNotFoundError:
        return "unknown"


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Hash every file of the bundle (the manifest and the log excepted) into it."""
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.name not in (MANIFEST, BUILD_LOG)
    )
    manifest["files"] = {
        str(p.relative_to(folder)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in files
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


# --------------------------------------------------------------------------------------
# Atomic publication


class _Journal:
    """The build log: stage timings and whatever went wrong, kept with a failed bundle."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current = "setup"

    def write(self, text: str) -> None:
        try:
            with open(self.path, "a") as f:
                f.write(text.rstrip() + "\n")
        except OSError:  # a full disk must not hide the error being reported
            pass

    @contextlib.contextmanager
    def stage(self, name: str, progress: Callable[[str], None]) -> Iterator[None]:
        self.current = name
        progress(name)
        start = time.perf_counter()
        yield
        self.write(f"{name}: {time.perf_counter() - start:.2f} s")


def _lock(final: Path):
    lock = open(final.parent / f".{final.name}.lock", "w")  # noqa: SIM115 - held until closed
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def _publish(tmp: Path, final: Path) -> None:
    """Swap the finished folder into place; concurrent builders of one bundle serialise."""
    lock = _lock(final)
    try:
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        failed = final.parent / f"{final.name}.failed"
        shutil.rmtree(failed, ignore_errors=True)
    finally:
        lock.close()


def _keep_failed(tmp: Path, final: Path) -> Path | None:
    failed = final.parent / f"{final.name}.failed"
    try:
        shutil.rmtree(failed, ignore_errors=True)
        tmp.rename(failed)
        return failed
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return None


def _clean_stale(final: Path) -> None:
    """Remove temporary folders left by builders that no longer run (killed midway)."""
    for prefix in (f".{final.name}.tmp-", f".{final.name}.old-"):
        for stale in final.parent.glob(prefix + "*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
