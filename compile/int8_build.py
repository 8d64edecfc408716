"""Build an int8 bundle: a model variant quantized (compile/quantize.py), compiled with
our integer kernels (compile/int8.py) for one CPU target, judged bit for bit against the
int8 reference, with its distance to fp32 and its accuracy reported beside.

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
from pathlib import Path

import numpy as np
import torch

import mscnn
from deploy.bundle import LIBRARY
from deploy.files import write_npy
from deploy.manifest import (
    DecisionAccuracy,
    Footprint,
    Manifest,
    Parity,
    Quantization,
    Saturation,
    Schedule,
    TaskAccuracy,
    Verdict,
)
from deploy.parity import TOLERANCES, compare
from mscnn.heads import ReducedLeadModel

from . import int8, quantize
from .errors import CompileError
from .golden import golden_inputs, real_inputs
from .publish import Journal
from .targets import Target, check_compiler, check_machine, int8_target
from .variants import Variant, variant_model

PRECISION = "int8"


def build_int8_into(
    folder: Path,
    name: str,
    loaded: mscnn.LoadedModel,
    target: Target,
    variant: Variant,
    options,
    journal: Journal,
) -> Manifest:
    from .build import Library, check_built, describe, task_of, variant_contract, write_manifest

    def step(stage: str):
        return journal.stage(stage, options.progress)

    with step("variant"):  # Step 1
        model = variant_model(loaded, variant).eval()
        built_for = int8_target(target)
        shape = (options.batch, model.in_channels, options.samples)
    with step("quantize"):  # Step 2
        qm, saturated = quantize_variant(loaded, model, variant, journal)
    with step("golden"):  # Step 3
        inputs, fp32 = write_int8_golden(folder, model, qm, variant, loaded.fs, options)
        contract = variant_contract(loaded, model, variant, inputs["ecg"])
    with step("tvm"):  # Step 4
        program = int8.build_int8(
            qm, built_for.tvm, options.batch, options.samples, require=built_for.int8.isa
        )
        compiler = check_compiler(target)
        program.export(folder / LIBRARY, cc=compiler)
        check_machine(folder / LIBRARY, target)
        journal.write(f"int8 kernels: {program.isa.name}, {len(program.kernels)} kernels")
    with step("manifest"):  # Step 5
        library = Library(
            compiler, Schedule(f"mscnn int8 kernels ({program.isa.name})", None, None), None, None
        )
        base = describe(
            name, loaded, model, built_for, variant, shape, list(inputs), library,
            _parity(contract),
        )  # fmt: skip
        quant = _quantization(qm, program, saturated, fp32)
        manifest = write_manifest(folder, _as_int8(base, quant, program.constant_bytes))
    with step("accuracy"):  # Step 6
        if task_of(model) == "qrs_detection":
            quant = dataclasses.replace(quant, accuracy=detector_accuracy(model, qm, journal))
        elif task_of(model) == "classification":
            decisions = classifier_decisions(model, qm, variant, journal)
            quant = dataclasses.replace(quant, decisions=decisions)
        manifest = write_manifest(folder, dataclasses.replace(manifest, quantization=quant))
    with step("parity"):  # Step 7
        manifest = check_built(folder, manifest, built_for)
        journal.write(f"int8 TVM vs the int8 reference: {manifest.parity.tvm}")
    return manifest


# --------------------------------------------------------------------------------------
# The steps


def quantize_variant(
    loaded: mscnn.LoadedModel, model: torch.nn.Module, variant: Variant, journal: Journal
) -> tuple[quantize.QuantizedModel, list[Saturation]]:
    """The variant quantized on the calibration records of its leads, and the layers
    whose activations clip on them (reported, in the manifest). A whole lead-wise
    model's variant is the full model's quantization with its leads reduced
    (quantize.reduce_leads): bit for bit the full int8 model on zero-filled leads, as
    the fp32 variant is the fp32 model's."""
    records = quantize.CALIBRATION_RECORDS
    if isinstance(model, ReducedLeadModel):
        calibration = quantize.real_ecg(loaded.leads, records)
        full = quantize.quantize_model(
            loaded.model, calibration, preset=loaded.preset, record_ids=records
        )
        qm = quantize.reduce_leads(full, variant.indices)
        calibration = np.ascontiguousarray(calibration[:, list(variant.indices)])
    else:
        calibration = quantize.real_ecg(variant.leads, records)
        qm = quantize.quantize_model(model, calibration, preset=loaded.preset, record_ids=records)
    saturated = [
        Saturation(s.name, s.clipped, s.total)
        for s in quantize.saturation(qm, calibration)
        if s.clipped
    ]
    for s in saturated:
        journal.write(f"int8 saturation: {s.layer} clips {s.clipped} of {s.total} values")
    return qm, saturated


def write_int8_golden(
    folder: Path, model: torch.nn.Module, qm, variant: Variant, fs: int, options
) -> tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The fp32 bundle's golden inputs, with the int8 reference's outputs written as the
    expected ones; returns the inputs and, per case, (int8, fp32) outputs."""
    from .build import task_of

    inputs = golden_inputs(variant.leads, options.samples, fs, options.batch, options.seed)
    if task_of(model) != "features":
        records, _ = real_inputs(task_of(model), variant.leads, options.samples, options.batch)
        inputs.update(records)
    (folder / "golden").mkdir()
    outputs = {}
    for key, x in inputs.items():
        got = quantize.run_int8(qm, x)
        with torch.no_grad():
            outputs[key] = got, model(torch.from_numpy(x)).numpy()
        write_npy(folder / "golden" / f"{key}.input.npy", x)
        write_npy(folder / "golden" / f"{key}.output.npy", got)
    return inputs, outputs


def detector_accuracy(model: torch.nn.Module, qm, journal: Journal) -> TaskAccuracy:
    """CPSC2019 score and F1 of fp32 and int8 on the held-out records; an int8 detector
    that loses more than ACCURACY_LIMITS is refused, not shipped."""
    acc = quantize.evaluate_detector(model, qm)
    journal.write(f"held-out accuracy, fp32 against int8:\n{acc.table()}")
    score_limit, f1_limit = ACCURACY_LIMITS
    if acc.score_drop > score_limit or acc.f1_drop_points > f1_limit:
        raise CompileError(
            f"int8 loses accuracy on the held-out records: score {acc.fp32.score:.3f} -> "
            f"{acc.int8.score:.3f}, F1 {100 * acc.fp32.f1:.2f} -> {100 * acc.int8.f1:.2f} "
            f"(limits: score {score_limit}, F1 {f1_limit} points); ship the fp32 bundle"
        )
    return TaskAccuracy(list(acc.records), acc.fp32.score, acc.fp32.f1, acc.int8.score, acc.int8.f1)


def classifier_decisions(
    model: torch.nn.Module, qm, variant: Variant, journal: Journal
) -> DecisionAccuracy:
    """How many of the int8 classifier's decisions (logit > 0, per class and record)
    equal fp32's on the held-out CinC records. Reported, not gated: no preset ships a
    trained classifier, and a seeded one's logits sit near 0, where any error flips."""
    records = list(quantize.HELD_OUT_RECORDS)
    x = quantize.real_ecg(variant.leads, records)
    got = np.concatenate([quantize.run_int8(qm, x[i : i + 1]) for i in range(len(x))])
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    err = float(np.abs(got - ref).max())
    agreed = int(((got > 0) == (ref > 0)).sum())
    journal.write(
        f"held-out decisions: int8 equals fp32 in {agreed} of {ref.size}; "
        f"logits' max abs error {err:.4g}"
    )
    return DecisionAccuracy(records, int(ref.size), agreed, err, err / float(np.abs(ref).max()))


# The int8 detector's largest loss against fp32 on held-out records: CPSC2019 score, F1
# in points.
ACCURACY_LIMITS = (0.01, 0.5)


def _parity(contract) -> Parity:
    from .build import verdict

    return Parity(
        TOLERANCES[PRECISION],
        Verdict.not_run("int8: no ONNX model (ONNX Runtime's own int8 is in make bench)"),
        Verdict.not_run("not run"),
        verdict(contract),
    )


def _quantization(qm, program, saturated: list[Saturation], outputs: dict) -> Quantization:
    """The quantization record; the distance to fp32 is over the ECG cases (the
    synthetic and the real ones), not the white noise, which no calibration covers. The
    worst case is a detector's most confident logits clipped at the output's int8 range
    (a logit of 50 stored as 15 is the same beat); the median is the typical error."""
    results = [compare(got, fp32, "cpu") for key, (got, fp32) in outputs.items() if key != "noise"]
    worst = max(results, key=lambda r: r.normalised)
    weights, fp32_weights = qm.weight_bytes()
    return Quantization(
        isa=program.isa.name,
        input_dtype=qm.input_dtype,
        method=qm.calibration["method"],
        calibration_records=list(qm.calibration["record_ids"]),
        weights_bytes=weights,
        fp32_weights_bytes=fp32_weights,
        constant_bytes=qm.constant_bytes(),
        saturated=saturated,
        fp32_max_abs=worst.max_abs,
        fp32_normalised=worst.normalised,
        fp32_median_normalised=float(np.median([r.normalised for r in results])),
        accuracy=None,
    )


def _as_int8(base: Manifest, quant: Quantization, constant_bytes: int) -> Manifest:
    output_bytes = 4 * int(np.prod(base.output.shape))
    return dataclasses.replace(
        base,
        precision=PRECISION,
        quantization=quant,
        footprint=Footprint(0, constant_bytes, None, output_bytes),
    )
