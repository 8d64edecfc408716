"""The QRS detector through TensorFlow Lite for Microcontrollers, beside ours.

`make tflm` (`python -m compile.bench.tflm`): the same trained detector, calibrated on the same
CPSC2019 records 0-24 and judged on the same held-out records 25-49, quantized the way a
TFLM user gets by default (TensorFlow Lite's post-training full-integer quantization) and
run by TFLM's interpreter, against our int8 build:

- accuracy: the held-out CPSC2019 score and F1 of fp32 (PyTorch), of our int8 (its
  reference, which the firmware equals bit for bit) and of TFLM's int8;
- memory for a 10 s window: TFLM's flatbuffer (weights and graph, flash) and the
  smallest arena its interpreter accepts (RAM), against our program's weights and arena
  for a Cortex-M7 (TVM's memory plan, as the firmware links it); and our int8 stream
  step's arena, which TFLM has no counterpart for.

TFLM runs in its own virtual environment (`.venv-tflm`: tensorflow-cpu and tflite-micro,
pinned in the Makefile), through compile/bench/tflm_runner.py. What this does not give: TFLM's
speed or code size on a Cortex-M (building TFLM and CMSIS-NN for Arm needs their
sources, which no package here ships).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import mscnn
from mscnn.heads import ECG_SEQ_LAB_NET

from ..errors import CompileError
from ..int8 import quantize

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("tflm_runner.py")
TFLM_PYTHON = ROOT / ".venv-tflm" / "bin" / "python"
FLOAT_OPS = ("EXP", "LOG")  # Mish's softplus: TFLM has float kernels only for these
ACTIVATIONS = {"Mish": "mish", "ReLU": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid"}
REPORT = "tflm_compare.json"


@dataclass(frozen=True)
class Side:
    """One implementation's figures on the held-out records."""

    name: str
    score: float  # CPSC2019 score
    f1: float
    weights_bytes: int | None  # what flash holds for the model (None: fp32 reference)
    arena_bytes: int | None  # RAM for activations


@dataclass(frozen=True)
class TflmComparison:
    records: tuple[int, ...]
    sides: tuple[Side, ...]
    stream_arena_bytes: int  # our int8 stream step's arena (hop 200): no TFLM counterpart
    keras_error: float  # the Keras copy against PyTorch (normalised)

    def table(self) -> str:
        rows = [
            "| | held-out score | F1 | model bytes (flash) | arena bytes (RAM), 10 s window |",
            "|---|---:|---:|---:|---:|",
        ]
        for s in self.sides:
            size = f"{s.weights_bytes / 1024:.0f} KiB" if s.weights_bytes else "-"
            arena = f"{s.arena_bytes / 1024:.0f} KiB" if s.arena_bytes else "-"
            rows.append(f"| {s.name} | {s.score:.3f} | {s.f1:.4f} | {size} | {arena} |")
        rows.append(f"(our int8 stream step, hop 200: {self.stream_arena_bytes / 1024:.0f} KiB)")
        return "\n".join(rows)


def network_spec(model: torch.nn.Module, samples: int) -> tuple[dict, dict[str, np.ndarray]]:
    """The detector as data the runner builds in Keras: per branch and block the convs
    (conv-level norms folded), the block's BatchNorm as an affine after its last ReLU, the
    pool; then the per-frame head."""
    if (
        not isinstance(model, ECG_SEQ_LAB_NET)
        or not isinstance(model.attn, torch.nn.Identity)
        or model.spec.rnn is not None
    ):
        raise CompileError("tflm: the side-by-side takes the QRS detector (ECG_SEQ_LAB_NET)")
    arrays: dict[str, np.ndarray] = {}

    def put(name: str, value) -> str:
        arrays[name] = np.ascontiguousarray(value, dtype=np.float32)
        return name

    branches = []
    for b, blocks in enumerate(quantize.float_blocks(model.cnn, "cnn.")):
        branch = []
        for k, (convs, pool, _) in enumerate(blocks):
            specs, post = [], None
            for c, fc in enumerate(convs):
                key = f"b{b}k{k}c{c}"
                if fc.groups != 1:
                    raise CompileError(f"tflm: {fc.name} is a grouped conv; not mapped")
                specs.append(
                    {"weight": put(key + ".w", fc.weight), "bias": put(key + ".b", fc.bias),
                     "dilation": fc.dilation}
                )  # fmt: skip
                if fc.post is not None:
                    post = [put(key + ".scale", fc.post[0]), put(key + ".shift", fc.post[1])]
            branch.append({"convs": specs, "post": post, "pool": pool})
        branches.append(branch)
    return {
        "samples": samples,
        "leads": model.in_channels,
        "branches": branches,
        "head": _head_spec(model, put),
        "float_ops": list(FLOAT_OPS),
    }, arrays


def _head_spec(model, put) -> list[dict]:
    children = dict(model.clf.named_children())
    head = []
    for name, lin in children.items():
        if not name.startswith("lin_"):
            continue
        act = children.get(name.replace("lin_", "act_"))
        kind = type(act).__name__ if act is not None else None
        if kind is not None and kind not in ACTIVATIONS:
            raise CompileError(f"tflm: activation {kind} has no Keras counterpart mapped")
        head.append(
            {"weight": put(name + ".w", lin.weight.detach().numpy()),
             "bias": put(name + ".b", lin.bias.detach().numpy()),
             "activation": ACTIVATIONS.get(kind)}
        )  # fmt: skip
    return head


def run_runner(spec_npz: Path, out: Path, python: Path = TFLM_PYTHON, timeout: float = 1800):
    """compile/bench/tflm_runner.py under TFLM's interpreter; its results as a dict of arrays."""
    if not Path(python).is_file():
        raise CompileError(
            f"tflm: no {python}; run `make tflm`, which makes it (tensorflow-cpu, tflite-micro)"
        )
    result, model = out / "tflm_result.npz", out / "detector_int8.tflite"
    done = subprocess.run(
        [str(python), str(RUNNER), str(spec_npz), str(result), str(model)],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise CompileError(f"tflm: the TFLM runner failed: {' / '.join(tail)}")
    return dict(np.load(result))


def compare(out: Path, python: Path = TFLM_PYTHON) -> TflmComparison:
    """The side-by-side (module docstring), written to out/tflm_compare.json."""
    out.mkdir(parents=True, exist_ok=True)
    loaded = mscnn.load_model("cpsc2019_qrs")
    model, leads = loaded.model.eval(), tuple(loaded.leads)
    calibration = quantize.real_ecg(leads, quantize.CALIBRATION_RECORDS)
    held = quantize.real_ecg(leads, quantize.HELD_OUT_RECORDS)
    with torch.no_grad():
        expected = model(torch.from_numpy(held)).numpy()
    spec, arrays = network_spec(model, held.shape[2])
    np.savez(
        out / "tflm_spec.npz", spec=json.dumps(spec), calibration=calibration,
        held_out=held, expected=expected, **arrays,
    )  # fmt: skip
    log.info("tflm: converting and running TFLM in %s", python)
    result = run_runner(out / "tflm_spec.npz", out, python)
    qm = quantize.quantize_model(model, calibration, record_ids=quantize.CALIBRATION_RECORDS)
    ours = quantize.evaluate_detector(model, qm)
    tflm_score = _score(result["outputs"], quantize.HELD_OUT_RECORDS)
    weights, arena, stream = _our_memory(model, qm, out)
    comparison = TflmComparison(
        tuple(quantize.HELD_OUT_RECORDS),
        (
            Side("PyTorch fp32", ours.fp32.score, ours.fp32.f1, None, None),
            Side("ours int8 (Cortex-M7 build)", ours.int8.score, ours.int8.f1, weights, arena),
            Side(
                "TFLite Micro int8 (post-training, min/max)",
                *tflm_score,
                int(result["flatbuffer_bytes"]),
                int(result["arena_bytes"]),
            ),
        ),
        stream,
        float(result["keras_error"]),
    )
    (out / REPORT).write_text(json.dumps(asdict(comparison), indent=2) + "\n")
    return comparison


def _score(outputs: np.ndarray, records) -> tuple[float, float]:
    from deploy.rpeaks import RPeakRule, detect_rpeaks, score_rpeaks
    from mscnn import data as ecg_data

    data, records = ecg_data.cpsc2019_records(), list(records)
    samples = data.signals.shape[1]
    rule = RPeakRule(reduction=samples // outputs.shape[1], fs=data.fs)
    beats = [detect_rpeaks(y, rule, samples) for y in outputs]
    s = score_rpeaks([data.r_peaks[i] for i in records], beats, data.fs)
    return float(s.score), float(s.f1)


def _our_memory(model, qm, out: Path) -> tuple[int, int, int]:
    """(weights, arena) of our int8 window (5000 samples, int8 weights) and the arena of
    our int8 stream step (hop 200), as the Cortex-M7 firmware links them: TVM's memory
    plan plus the kernels' workspace pool."""
    from mscnn.streaming import StepModule

    from ..int8.kernels import register_intrinsics, relax_program, select_isa
    from ..int8.step import Int8Step, step_module
    from ..mcu.aot import compile_kernels, lower_module
    from ..mcu.boards import CORES
    from ..mcu.firmware import STATES_FROM

    register_intrinsics()
    core = CORES["cortex-m7"].tvm
    step = Int8Step(StepModule(model, 200), qm)
    modules = {
        "window": relax_program(qm, core, 5000, "dsp-int8w")[0],
        "stream": step_module(step, select_isa(core, "dsp-int8w"))[0],
    }
    sizes = {}
    for name, mod in modules.items():
        lowered = lower_module(mod, core, STATES_FROM if name == "stream" else None)
        kernels = compile_kernels(lowered, core, out / f"ours_{name}_kernels.o")
        program = lowered.program
        sizes[name] = (program.weights_bytes, program.arena_bytes + kernels.workspace_bytes)
    return *sizes["window"], sizes["stream"][1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compile.bench.tflm", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("build/tflm"))
    parser.add_argument("--python", type=Path, default=TFLM_PYTHON, help="TFLM's interpreter")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        comparison = compare(args.out, args.python)
    except (CompileError, mscnn.MscnnError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(comparison.table())
    print(f"wrote {args.out / REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
