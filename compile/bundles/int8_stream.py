"""int8 stream bundles: the int8 step (compile/int8/step.py) compiled with our integer
kernels for one CPU target, a real record streamed hop by hop as its golden case, judged
bit for bit against the int8 reference on the whole record.

    Step 1. Variant    the model, its fp32 step (the plan), the target's int8 ISA
    Step 2. Quantize   as the int8 window bundles (compile/bundles/quantized.py)
    Step 3. Golden     a minute of real ECG (the fp32 stream bundle's record) and the
                       int8 reference's frames on it, offline, time last
    Step 4. TVM        the int8 step built and linked (no ONNX)
    Step 5. Manifest   the stream's fields (states in their integer dtypes), precision
                       "int8", the quantization record, tolerance 0
    Step 6. Parity     the bundle streamed as a device streams it (deploy.stream), where
                       it runs
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import mscnn
from deploy.manifest import Manifest

from ..golden import write_cases
from ..int8 import quantize
from ..int8.step import Int8Step, build_step
from ..targets import Target, int8_target
from ..variants import Variant, variant_model
from .common import (
    as_stream,
    check_built,
    check_hop,
    describe,
    golden_record,
    step_of,
    write_manifest,
)
from .kind import BuildOptions, BundleKind, Job
from .quantized import (
    PRECISION,
    as_int8,
    check_int8_request,
    int8_parity,
    link_int8,
    quantization_record,
    quantize_variant,
)


def build_int8_stream_into(job: Job) -> Manifest:
    folder, loaded, variant, options = job.folder, job.loaded, job.variant, job.options
    target, journal = job.target, job.journal
    with job.stage("variant"):  # Step 1
        model = variant_model(loaded, variant).eval()
        fp32_step, built_for = step_of(model, options.hop), int8_target(target)
    with job.stage("quantize"):  # Step 2
        qm, saturated = quantize_variant(loaded, model, variant, journal)
        int8_step = Int8Step(fp32_step, qm)
    with job.stage("golden"):  # Step 3
        case, outputs = _golden(folder, model, qm, variant, loaded.fs, options.seed)
    with job.stage("tvm"):  # Step 4
        compiled = build_step(int8_step, built_for.tvm, require=built_for.int8.isa)
        library = link_int8(compiled, folder, target, journal, "int8 step")
    with job.stage("manifest"):  # Step 5
        shape = (1, int8_step.leads, options.hop)
        base = describe(
            job.name, loaded, model, built_for, variant, shape, [], library, int8_parity(None)
        )  # fmt: skip
        quant = quantization_record(qm, compiled, saturated, outputs)
        streamed = as_stream(base, int8_step, case)
        manifest = write_manifest(folder, as_int8(streamed, quant, compiled.constant_bytes))
    with job.stage("parity"):  # Step 6
        manifest = check_built(folder, manifest, built_for)
        journal.write(f"int8 step (streamed) vs the int8 reference: {manifest.parity.tvm}")
    return manifest


def _golden(folder: Path, model, qm, variant: Variant, fs: int, seed: int):
    """The golden record (the fp32 stream bundle's) and the int8 reference's frames on
    it, time last; returns the case and, for the quantization record, {name: (int8,
    fp32)}."""
    record, name = golden_record(variant, fs, seed)
    with torch.no_grad():
        fp32 = model(torch.from_numpy(record)[None]).numpy()
    int8 = quantize.run_int8(qm, record[None])
    if qm.head:  # (1, frames, classes) -> time last, as a stream gives them
        fp32, int8 = fp32.transpose(0, 2, 1), int8.transpose(0, 2, 1)
    [case] = write_cases(folder, {name: (record, np.ascontiguousarray(int8[0]))})
    return case, {name: (int8, fp32)}


def _check(loaded: mscnn.LoadedModel, target: Target, options: BuildOptions) -> None:
    check_int8_request(loaded, target, options)
    check_hop(loaded, options.hop)


KINDS = (
    BundleKind(
        "int8 stream",
        PRECISION,
        True,
        build_int8_stream_into,
        _check,
        summary="the int8 step, bit for bit the int8 reference on a streamed record",
    ),
)
