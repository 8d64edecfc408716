"""int8 window bundles: a model variant quantized (compile/int8/quantize.py), compiled
with our integer kernels (compile/int8/kernels.py) for one CPU target, judged bit for bit
against the int8 reference, with its distance to fp32 and its accuracy reported beside.

    Step 1. Variant    the reduced-lead model, and the target's int8 ISA
    Step 2. Quantize   calibrated on real ECG (records CALIBRATION_RECORDS), saturation
                       per layer
    Step 3. Golden     the fp32 bundle's inputs; outputs from the int8 reference
                       (quantize.run_int8), and the fp32 model's for the distance
    Step 4. TVM        the int8 Relax program built and linked (no ONNX: TVM's importer
                       turns QDQ into float arithmetic)
    Step 5. Manifest   precision "int8", the quantization record, tolerance 0
    Step 6. Accuracy   a detector's CPSC2019 score and F1 on held-out records, fp32 and
                       int8
    Step 7. Parity     the bundle loaded as a device loads it, bit for bit, where it runs
"""

from __future__ import annotations

import dataclasses

import torch

from deploy.manifest import Manifest

from ..golden import window_cases, write_cases
from ..int8 import kernels, quantize
from ..targets import int8_target
from ..variants import variant_model
from .common import check_built, describe, task_of, variant_contract, write_manifest
from .kind import BundleKind, Job
from .quantized import (
    PRECISION,
    as_int8,
    check_int8_request,
    classifier_decisions,
    detector_accuracy,
    int8_parity,
    link_int8,
    quantization_record,
    quantize_variant,
)


def build_int8_into(job: Job) -> Manifest:
    folder, loaded, variant, options = job.folder, job.loaded, job.variant, job.options
    target, journal = job.target, job.journal
    with job.stage("variant"):  # Step 1
        model = variant_model(loaded, variant).eval()
        built_for = int8_target(target)
        shape = (options.batch, model.in_channels, options.samples)
    with job.stage("quantize"):  # Step 2
        qm, saturated = quantize_variant(loaded, model, variant, journal)
    with job.stage("golden"):  # Step 3
        inputs = window_cases(
            task_of(model), variant.leads, options.samples, loaded.fs, options.batch, options.seed
        )
        outputs = {}
        for key, x in inputs.items():
            with torch.no_grad():
                outputs[key] = quantize.run_int8(qm, x), model(torch.from_numpy(x)).numpy()
        write_cases(folder, {key: (x, outputs[key][0]) for key, x in inputs.items()})
        contract = variant_contract(loaded, model, variant, inputs["ecg"])
    with job.stage("tvm"):  # Step 4
        program = kernels.build_int8(
            qm, built_for.tvm, options.batch, options.samples, require=built_for.int8.isa
        )
        library = link_int8(program, folder, target, journal, "int8 kernels")
    with job.stage("manifest"):  # Step 5
        base = describe(
            job.name, loaded, model, built_for, variant, shape, list(inputs), library,
            int8_parity(contract),
        )  # fmt: skip
        quant = quantization_record(qm, program, saturated, outputs)
        manifest = write_manifest(folder, as_int8(base, quant, program.constant_bytes))
    with job.stage("accuracy"):  # Step 6
        if task_of(model) == "qrs_detection":
            quant = dataclasses.replace(quant, accuracy=detector_accuracy(model, qm, journal))
        elif task_of(model) == "classification":
            decisions = classifier_decisions(model, qm, variant, journal)
            quant = dataclasses.replace(quant, decisions=decisions)
        manifest = write_manifest(folder, dataclasses.replace(manifest, quantization=quant))
    with job.stage("parity"):  # Step 7
        manifest = check_built(folder, manifest, built_for)
        journal.write(f"int8 TVM vs the int8 reference: {manifest.parity.tvm}")
    return manifest


KINDS = (
    BundleKind(
        "int8 window",
        PRECISION,
        False,
        build_int8_into,
        check_int8_request,
        summary="post-training quantized, our integer kernels, bit for bit the int8 reference",
    ),
)
