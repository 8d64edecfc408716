"""Build an int8 stream bundle: the int8 step (compile/int8_stream.py) compiled with our
integer kernels for one CPU target, a real record streamed hop by hop as its golden case,
judged bit for bit against the int8 reference on the whole record.

    Step 1. Variant    the model, its fp32 step (the plan), the target's int8 ISA
    Step 2. Quantize   as the int8 window bundles (compile/int8_build.py)
    Step 3. Golden     a minute of real ECG (compile/stream_build.py's record) and the
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

import mscnn
from deploy.bundle import LIBRARY
from deploy.files import write_npy
from deploy.manifest import GoldenCase, Manifest, Schedule

from . import quantize
from .int8_build import _as_int8, _parity, _quantization, quantize_variant
from .int8_stream import Int8Step, build_step
from .publish import Journal
from .stream_build import _as_stream, _step_of, check_built_stream, golden_record
from .targets import Target, check_compiler, check_machine, int8_target
from .variants import Variant, variant_model


def build_int8_stream_into(
    folder: Path,
    name: str,
    loaded: mscnn.LoadedModel,
    target: Target,
    variant: Variant,
    options,
    journal: Journal,
) -> Manifest:
    from .build import Library, describe, write_manifest

    def step(stage: str):
        return journal.stage(stage, options.progress)

    with step("variant"):  # Step 1
        model = variant_model(loaded, variant).eval()
        fp32_step, built_for = _step_of(model, options.hop), int8_target(target)
    with step("quantize"):  # Step 2
        qm, saturated = quantize_variant(loaded, model, variant, journal)
        int8_step = Int8Step(fp32_step, qm)
    with step("golden"):  # Step 3
        case, outputs = _golden(folder, model, qm, variant, loaded.fs, options.seed)
    with step("tvm"):  # Step 4
        compiled = build_step(int8_step, built_for.tvm, require=built_for.int8.isa)
        compiler = check_compiler(target)
        compiled.export(folder / LIBRARY, cc=compiler)
        check_machine(folder / LIBRARY, target)
        journal.write(f"int8 step: {compiled.isa.name}, {len(compiled.kernels)} kernels")
    with step("manifest"):  # Step 5
        schedule = Schedule(f"mscnn int8 kernels ({compiled.isa.name})", None, None)
        library = Library(compiler, schedule, None, None)
        shape = (1, int8_step.leads, options.hop)
        base = describe(
            name, loaded, model, built_for, variant, shape, [], library, _parity(None)
        )  # fmt: skip
        quant = _quantization(qm, compiled, saturated, outputs)
        streamed = _as_stream(base, int8_step, case)
        manifest = write_manifest(folder, _as_int8(streamed, quant, compiled.constant_bytes))
    with step("parity"):  # Step 6
        manifest = check_built_stream(folder, manifest, built_for)
        journal.write(f"int8 step (streamed) vs the int8 reference: {manifest.parity.tvm}")
    return manifest


def _golden(folder: Path, model, qm, variant: Variant, fs: int, seed: int):
    """The golden record (stream_build's) and the int8 reference's frames on it, time
    last; returns the case and, for the quantization record, {name: (int8, fp32)}."""
    import torch

    record, name = golden_record(variant, fs, seed)
    with torch.no_grad():
        fp32 = model(torch.from_numpy(record)[None]).numpy()
    int8 = quantize.run_int8(qm, record[None])
    if qm.head:  # (1, frames, classes) -> time last, as a stream gives them
        fp32, int8 = fp32.transpose(0, 2, 1), int8.transpose(0, 2, 1)
    (folder / "golden").mkdir()
    case = GoldenCase(name, f"golden/{name}.input.npy", f"golden/{name}.output.npy")
    write_npy(folder / case.input, record)
    write_npy(folder / case.output, np.ascontiguousarray(int8[0]))
    return case, {name: (int8, fp32)}
