"""The steps both int8 kinds (window and stream) share: quantize a variant on real ECG,
judge its accuracy against fp32, and record it all in the manifest.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

import mscnn
from deploy.bundle import LIBRARY
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

from ..errors import CompileError
from ..int8 import quantize
from ..publish import Journal
from ..targets import Target, check_compiler, check_machine, int8_target
from ..variants import Variant
from .common import Library, verdict

PRECISION = "int8"


def quantize_variant(
    loaded: mscnn.LoadedModel, model: torch.nn.Module, variant: Variant, journal: Journal
) -> tuple[quantize.QuantizedModel, list[Saturation]]:
    """The variant quantized on the calibration records of its leads, and the layers
    whose activations clip on them (reported, in the manifest). A whole lead-wise
    model's variant is the full model's quantization with its leads reduced
    (quantize.reduce_leads): bit for bit the full int8 model on zero-filled leads, as
    the fp32 variant is the fp32 model's."""
    if isinstance(model, ReducedLeadModel):
        full, calibration = quantize.calibrated(loaded.model, loaded.leads, loaded.preset)
        qm = quantize.reduce_leads(full, variant.indices)
        calibration = np.ascontiguousarray(calibration[:, list(variant.indices)])
    else:
        qm, calibration = quantize.calibrated(model, variant.leads, loaded.preset)
    saturated = [
        Saturation(s.name, s.clipped, s.total)
        for s in quantize.saturation(qm, calibration)
        if s.clipped
    ]
    for s in saturated:
        journal.write(f"int8 saturation: {s.layer} clips {s.clipped} of {s.total} values")
    return qm, saturated


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


def int8_parity(contract) -> Parity:
    return Parity(
        TOLERANCES[PRECISION],
        Verdict.not_run("int8: no ONNX model (ONNX Runtime's own int8 is in make bench)"),
        Verdict.not_run("not run"),
        verdict(contract),
    )


def quantization_record(qm, program, saturated: list[Saturation], outputs: dict) -> Quantization:
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


def as_int8(base: Manifest, quant: Quantization, constant_bytes: int) -> Manifest:
    output_bytes = 4 * int(np.prod(base.output.shape))
    return dataclasses.replace(
        base,
        precision=PRECISION,
        quantization=quant,
        footprint=Footprint(0, constant_bytes, None, output_bytes),
    )


def link_int8(program, folder: Path, target: Target, journal: Journal, what: str) -> Library:
    """Export an int8 program (window or step) as the bundle's library, linked by the
    target's compiler and checked to be the target's machine code."""
    compiler = check_compiler(target)
    program.export(folder / LIBRARY, cc=compiler)
    check_machine(folder / LIBRARY, target)
    journal.write(f"{what}: {program.isa.name}, {len(program.kernels)} kernels")
    schedule = Schedule(f"mscnn int8 kernels ({program.isa.name})", None, None)
    return Library(compiler, schedule, None, None)


def check_int8_request(loaded: mscnn.LoadedModel, target: Target, options) -> None:
    """Refused before any work: a target with no int8 kernels, a model the quantizer
    does not take."""
    int8_target(target)
    quantize.check_quantizable(loaded.model)
