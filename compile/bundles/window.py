"""fp32 and fp16 window bundles: the model on a fixed window, traced to ONNX and compiled
by TVM's pipeline for one target.

    Step 1. Variant    the reduced-lead model (compile/variants.py)
    Step 2. Golden     seeded inputs and the PyTorch outputs for them (.npy), and the
                       variant's contract with the full model
    Step 3. ONNX       export, checker, ONNX Runtime vs PyTorch
    Step 4. TVM        ONNX -> Relax -> the target's pipeline -> library, (cross-)linked
    Step 5. Manifest   the typed manifest (deploy/manifest.py) with every file's sha256
    Step 6. Parity     the bundle loaded as a device loads it (deploy.check_parity), vs
                       PyTorch, where it runs here
"""

from __future__ import annotations

import dataclasses

import torch

import mscnn
from deploy.bundle import LIBRARY, ONNX_FILE
from deploy.manifest import Manifest, Parity, Verdict
from deploy.parity import TOLERANCES

from ..golden import window_cases, write_cases
from ..targets import Target, precision_target
from ..variants import variant_model
from .common import (
    check_built,
    compile_library,
    describe,
    export_checked,
    task_of,
    tolerance_kind,
    variant_contract,
    verdict,
    write_manifest,
)
from .kind import BuildOptions, BundleKind, Job


def build_window_into(job: Job) -> Manifest:
    folder, loaded, variant, options = job.folder, job.loaded, job.variant, job.options
    target, journal = job.target, job.journal
    with job.stage("variant"):  # Step 1
        model = variant_model(loaded, variant)
        shape = (options.batch, model.in_channels, options.samples)
        target = precision_target(target, options.precision)  # fp16: its own TVM target
    with job.stage("golden"):  # Step 2
        inputs = window_cases(
            task_of(model), variant.leads, options.samples, loaded.fs, options.batch, options.seed
        )
        with torch.no_grad():
            expected = {key: model(torch.from_numpy(x)).numpy() for key, x in inputs.items()}
        write_cases(folder, {key: (x, expected[key]) for key, x in inputs.items()})
        contract = variant_contract(loaded, model, variant, inputs["ecg"])
    with job.stage("onnx"):  # Step 3
        ort = export_checked(model, folder / ONNX_FILE, shape, inputs, expected)
        journal.write(f"ONNX Runtime vs PyTorch: {ort}")
    with job.stage("tvm"):  # Step 4
        library = compile_library(
            folder / ONNX_FILE, target, shape, folder / LIBRARY, journal.path, options
        )
    with job.stage("manifest"):  # Step 5
        parity = Parity(
            TOLERANCES[tolerance_kind(target, options.precision)],
            verdict(ort),
            Verdict.not_run("not run"),
            verdict(contract),
        )
        base = describe(
            job.name, loaded, model, target, variant, shape, list(inputs), library, parity
        )
        manifest = write_manifest(folder, dataclasses.replace(base, precision=options.precision))
    with job.stage("parity"):  # Step 6
        manifest = check_built(folder, manifest, target)
        journal.write(f"TVM vs PyTorch: {manifest.parity.tvm}; task: {manifest.parity.task}")
    return manifest


def _check_fp16(loaded: mscnn.LoadedModel, target: Target, options: BuildOptions) -> None:
    precision_target(target, "fp16")  # refused up front where the target has none


KINDS = (
    BundleKind(
        "fp32 window", "fp32", False, build_window_into, summary="the model on a fixed window"
    ),
    BundleKind(
        "fp16 window",
        "fp16",
        False,
        build_window_into,
        _check_fp16,
        summary="half-precision storage and products, fp32 accumulation",
    ),
)
