"""fp32 stream bundles: the model's step function (mscnn.StepModule) compiled for one
target, with a real record streamed hop by hop as its golden case.

    Step 1. Variant    the reduced-lead model, and its step for the hop
    Step 2. Golden     a record (the real CPSC2019 records concatenated, for a 1-lead
                       model; a synthetic ECG otherwise) and the offline model's frames
    Step 3. ONNX       the step exported (compile/export.py), streamed in ONNX Runtime
    Step 4. TVM        the step compiled like a window model
    Step 5. Manifest   the window manifest's fields plus the stream's (hop, state, ...)
    Step 6. Parity     the bundle streamed as a device streams it (deploy.stream)
"""

from __future__ import annotations

import copy

import numpy as np
import torch

import mscnn
from deploy.bundle import LIBRARY, ONNX_FILE
from deploy.manifest import Manifest, Parity, Verdict
from deploy.parity import TOLERANCES, compare

from ..errors import ParityError
from ..export import export_step_onnx, stream_onnx
from ..golden import write_cases
from ..targets import Target
from ..variants import variant_model
from .common import (
    as_stream,
    check_built,
    check_hop,
    compile_library,
    describe,
    golden_record,
    step_of,
    task_of,
    verdict,
    write_manifest,
)
from .kind import BuildOptions, BundleKind, Job


def build_stream_into(job: Job) -> Manifest:
    folder, loaded, variant, options = job.folder, job.loaded, job.variant, job.options
    target, journal = job.target, job.journal
    with job.stage("variant"):  # Step 1
        model = variant_model(loaded, variant)
        step_model = step_of(model, options.hop)
    with job.stage("golden"):  # Step 2
        record, name_ = golden_record(variant, loaded.fs, options.seed)
        with torch.no_grad():
            offline = model(torch.from_numpy(record)[None])[0].numpy()
        if task_of(model) == "qrs_detection":
            offline = np.ascontiguousarray(offline.T)  # (frames, classes) -> time last
        [case] = write_cases(folder, {name_: (record, offline)})
    with job.stage("onnx"):  # Step 3
        export_step_onnx(copy.deepcopy(model), options.hop, folder / ONNX_FILE)
        ort = compare(stream_onnx(folder / ONNX_FILE, record), offline, "cpu")
        journal.write(f"ONNX Runtime (streamed) vs PyTorch (offline): {ort}")
        if not ort.passed:
            raise ParityError(f"the streamed ONNX step disagrees with PyTorch: {ort}")
    with job.stage("tvm"):  # Step 4
        shape = (1, step_model.leads, options.hop)
        library = compile_library(
            folder / ONNX_FILE, target, shape, folder / LIBRARY, journal.path, options
        )
    with job.stage("manifest"):  # Step 5
        parity = Parity(TOLERANCES[target.device], verdict(ort), Verdict.not_run("not run"), None)
        base = describe(job.name, loaded, model, target, variant, shape, [], library, parity)
        manifest = write_manifest(folder, as_stream(base, step_model, case))
    with job.stage("parity"):  # Step 6
        manifest = check_built(folder, manifest, target)
        journal.write(f"TVM (streamed) vs PyTorch: {manifest.parity.tvm}")
    return manifest


def check_stream_request(loaded: mscnn.LoadedModel, target: Target, options: BuildOptions) -> None:
    """A hop the model can stream with, or a CompileError naming what is wrong."""
    check_hop(loaded, options.hop)


KINDS = (
    BundleKind(
        "fp32 stream",
        "fp32",
        True,
        build_stream_into,
        check_stream_request,
        summary="the step function: a hop of samples and the state in, frames out",
    ),
)
