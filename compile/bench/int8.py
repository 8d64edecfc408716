"""int8 against fp32 and ONNX Runtime's int8, same machine, one run: latency and accuracy.

What is compared, on the QRS detector (`cpsc2019_qrs`, batch 1, 5000 samples) or with
`--preset leadwise_classifier` the 12-lead classifier (seeded weights: its held-out
decisions against PyTorch fp32's stand for accuracy):

- `ort-fp32`: ONNX Runtime on the exported fp32 model;
- `ort-int8`: ONNX Runtime on its own static quantization of that model
  (`quantize_static`, QDQ, per-channel int8 weights, uint8 activations), calibrated on the
  same records as ours (`quantize.CALIBRATION_RECORDS`) with the same method (the 99.9th
  percentile; its default, MinMax, is reported too: it fails the same way ours does);
- `tvm-fp32`: the project's fp32 build (our conv schedule) for x86_64-avx512;
- `tvm-int8`: our integer program (`compile.int8.kernels`) with VNNI kernels;
- `tvm-fp32-avx2` and `tvm-int8-avx2`: the same two for the portable `x86_64` (AVX2)
  target, whose int8 kernels pair bytes with `vpmaddubsw` (most x86 edge boxes have AVX2
  and no AVX-512; the goal there is int8 at most 0.6x our own AVX2 fp32);
- the peers (compile/bench/peers.py), each in its own venv, for the detector:
  `litert-fp32` and `litert-int8` (LiteRT with the XNNPACK delegate, full-integer
  post-training quantization) and `executorch-fp32` and `executorch-int8` (ExecuTorch's
  XNNPACK backend, PT2E int8), calibrated on the same records; a peer that cannot run
  the model has its own one-line error in the table instead of a row.

Latency: numpy in, numpy out for every runtime, same threads; rounds alternate the
runtimes (compile.bench.window.time_rounds); median, p90 and min per runtime. GOP/s = 2 x the
model's MACs / median, against peaks measured here: an FMA loop (fp32 FLOP/s) and a VNNI
loop (int8 OP/s: one vpdpbusd is 64 multiply-adds), both our own TIR kernels, on the same
threads. Accuracy: the CPSC2019 score and F1 of each on the held-out records.

    python -m compile.bench.int8 [--preset P] [--threads 2] [--rounds 5] [--peers litert,...]
                                 [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CompileError
from .peaks import best_peak, peak_call
from .peers import PEERS, close_all, start_detector_peers

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------
# The runtimes


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_int8_model(fp32_onnx: Path, out: Path, calibration: np.ndarray, method: str) -> Path:
    """ONNX Runtime's static QDQ quantization of `fp32_onnx`: per-channel int8 weights,
    uint8 activations, calibrated on `calibration` ("percentile" at 99.9, or "minmax")."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from ..export import INPUT_NAME

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.records = iter(calibration[i : i + 1] for i in range(len(calibration)))

        def get_next(self):
            x = next(self.records, None)
            return None if x is None else {INPUT_NAME: x}

    calibrate = {"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax}
    quantize_static(
        str(fp32_onnx),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=calibrate[method],
        extra_options={"CalibPercentile": 99.9} if method == "percentile" else None,
    )
    return out


TIMED = ("ort-fp32", "ort-int8", "tvm-fp32", "tvm-int8", "tvm-fp32-avx2", "tvm-int8-avx2")
PEAK_TIMER = "vnni-peak"  # the VNNI loop's timer, right after tvm-int8's in each round
JUDGED = ("tvm-fp32", "tvm-int8", "tvm-int8-avx2", "ort-int8", "ort-int8-minmax")
# The int8 goals: the VNNI program's share of the measured VNNI peak, and the AVX2 int8
# program against our own AVX2 fp32 build (the FMA and VNNI loops are 512-bit: an AVX2
# row's share of them would not be its own peak, so those rows show none).
VNNI_PEAK_GOAL = 0.60
AVX2_INT8_GOAL = 0.6


def make_runtimes(loaded, programs: dict, calibration: np.ndarray, folder: Path, threads: int):
    """name -> (x -> output), numpy in and out: ORT fp32, ORT int8 (99.9th percentile and
    MinMax calibration), TVM fp32 (the project's x86_64-avx512 and x86_64 builds) and TVM
    int8 (`programs`: name -> integer program), all at the programs' input shape; and the
    ONNX files' sizes."""
    import tvm
    from tvm import relax

    from ..export import INPUT_NAME, export_onnx
    from ..lowering.pipeline import compile_executable
    from ..lowering.records import load_records
    from ..targets import get_target

    shape = programs["tvm-int8"].input_shape
    fp32 = export_onnx(loaded.model.eval(), folder / "fp32.onnx", batch=shape[0], samples=shape[2])
    onnx_files = {"ort-fp32": fp32}
    for method, name in (("percentile", "ort-int8"), ("minmax", "ort-int8-minmax")):
        onnx_files[name] = ort_int8_model(fp32, folder / f"{name}.onnx", calibration, method)
    calls = {}
    for name, path in onnx_files.items():
        session = _ort_session(path, threads)
        calls[name] = (lambda s: lambda x: s.run(None, {INPUT_NAME: x})[0])(session)
    for name, target in (("tvm-fp32", "x86_64-avx512"), ("tvm-fp32-avx2", "x86_64")):
        target = get_target(target)
        compiled = compile_executable(fp32, target, shape, records=load_records(target)[0])
        main = relax.VirtualMachine(compiled.executable, tvm.cpu())["main"]
        calls[name] = (lambda f: lambda x: f(tvm.runtime.tensor(x)).numpy())(main)
    calls.update(programs)
    return calls, {name: path.stat().st_size for name, path in onnx_files.items()}


# --------------------------------------------------------------------------------------
# The run


@dataclass
class Int8Bench:
    """Every figure of one run, with the machine it came from."""

    cpu: str
    threads: int
    samples: int
    macs: int
    peaks: dict  # "fp32-fma" GFLOP/s, "int8-vnni" GOP/s, measured
    timings: dict  # runtime -> median_ms, p90_ms, min_ms, runs, gops, vs_ort_fp32, vs_ort_int8
    accuracy: dict  # runtime -> score, f1, tp, fp, fn, normalized_error (vs PyTorch fp32)
    sizes: dict  # bytes: ONNX files, the int8 program's constants
    load: tuple  # the machine's 1/5/15-minute load averages after the timing (shared hosts)
    preset: str = "cpsc2019_qrs"
    refusals: dict = field(default_factory=dict)  # peer model -> its own error, one line

    def goals(self) -> list[str]:
        """Ours against the fastest peer of each precision (median over median), the VNNI
        program's share of the measured VNNI peak, AVX2 int8 over AVX2 fp32."""
        t, lines = self.timings, []
        for ours, kind in (("tvm-fp32", "fp32"), ("tvm-int8", "int8")):
            peers = {n: r for n, r in t.items() if kind in n and not n.startswith("tvm")}
            if ours in t and peers:
                name = min(peers, key=lambda n: peers[n]["median_ms"])
                ratio = t[ours]["median_ms"] / peers[name]["median_ms"]
                lines.append(f"goal: {ours} / fastest {kind} peer ({name}) = {ratio:.2f} (<= 1.0)")
        if "tvm-int8" in t and self.peaks.get("int8-vnni"):
            share = t["tvm-int8"]["gops"] / self.peaks["int8-vnni"]
            paired = t["tvm-int8"].get("paired_peak_share")
            lines.append(
                f"goal: tvm-int8 at {100 * share:.0f}% of the measured VNNI peak "
                f"({self.peaks['int8-vnni']:.0f} GOP/s on {self.threads} threads)"
                + (f", paired {100 * paired:.0f}%" if paired is not None else "")
                + f" (>= {100 * VNNI_PEAK_GOAL:.0f}%)"
            )
        if "tvm-int8-avx2" in t and "tvm-fp32-avx2" in t:
            ratio = t["tvm-int8-avx2"]["median_ms"] / t["tvm-fp32-avx2"]["median_ms"]
            lines.append(f"goal: tvm-int8-avx2 / tvm-fp32-avx2 = {ratio:.2f} (<= {AVX2_INT8_GOAL})")
        return lines

    def table(self) -> str:
        t = self.timings
        lines = [
            f"{self.cpu}, {self.threads} thread(s); {self.preset}, batch 1 x {self.samples} "
            f"samples, {self.macs / 1e6:.0f} M MACs; load average "
            f"{' '.join(f'{v:.1f}' for v in self.load)}",
            f"measured peaks: FMA loop {self.peaks['fp32-fma']:.0f} GFLOP/s, VNNI loop "
            f"{self.peaks['int8-vnni']:.0f} GOP/s",
            f"{'runtime':16} {'median ms':>9} {'p90':>7} {'min':>7} {'GOP/s':>6} "
            f"{'% peak':>6} {'/ort-fp32':>9} {'/ort-int8':>9} {'min/ort-fp32':>12} "
            f"{'min/ort-int8':>12}",
        ]
        for name, r in t.items():
            peak = self.peaks["int8-vnni" if "int8" in name else "fp32-fma"]
            share = "-" if name.endswith("avx2") else f"{100 * r['gops'] / peak:.1f}"
            lines.append(
                f"{name:16} {r['median_ms']:9.3f} {r['p90_ms']:7.3f} "
                f"{r['min_ms']:7.3f} {r['gops']:6.0f} {share:>6} "
                f"{r['vs_ort_fp32']:9.2f} {r['vs_ort_int8']:9.2f} "
                f"{r['min_vs_ort_fp32']:12.2f} {r['min_vs_ort_int8']:12.2f}"
            )
        lines += [f"{name:16} cannot run: {why}" for name, why in self.refusals.items()]
        lines += self.goals()
        if "score" not in next(iter(self.accuracy.values())):  # a classifier's decisions
            lines.append(f"{'held-out':16} {'decisions as fp32':>17} {'norm err':>9}")
            lines += [
                f"{n:16} {a['agreed']:>8}/{a['decisions']:<8} {a['normalized_error']:9.4f}"
                for n, a in self.accuracy.items()
            ]
            return "\n".join(lines)
        lines.append(f"{'held-out':16} {'score':>9} {'F1':>7} {'FP':>4} {'FN':>4} {'norm err':>9}")
        for name, a in self.accuracy.items():
            lines.append(
                f"{name:16} {a['score']:9.3f} {a['f1']:7.4f} {a['fp']:4d} {a['fn']:4d} "
                f"{a['normalized_error']:9.4f}"
            )
        return "\n".join(lines)


def cpu_model() -> str:
    """The CPU model and the cores this process may use."""
    from deploy.bundle import cpu_model as model_name

    return f"{model_name() or 'unknown CPU'} ({_cores()} cores)"


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _timings(calls: dict, x: np.ndarray, how, macs: int, peers: dict, peak=None) -> dict:
    """Our runtimes (`calls` on `x`) and the peers' timers (on the same `x`), in rounds
    (`how`: rounds, calls per round). `peak`, where given, is (a call of the VNNI loop,
    its OPs), timed right after tvm-int8 in every round for the paired peak share."""
    from .window import local_timer, paired_peak_share, time_timers

    timers = {}
    for name in TIMED:
        timers[name] = local_timer((lambda f: lambda: f(x))(calls[name]))
        if name == "tvm-int8" and peak is not None:
            timers[PEAK_TIMER] = local_timer(peak[0])
    by_round: dict[str, list[list[float]]] = {}
    samples = time_timers({**timers, **peers}, *how, pause=0.5, by_round=by_round)
    shared = None
    if peak is not None:
        del samples[PEAK_TIMER]
        shared = paired_peak_share(by_round["tvm-int8"], by_round[PEAK_TIMER], 2 * macs, peak[1])
    out = {}
    for name, values in samples.items():
        median = statistics.median(values)
        out[name] = {
            "median_ms": median,
            "p90_ms": float(np.percentile(values, 90)),
            "min_ms": min(values),
            "runs": len(values),
            "gops": 2 * macs / median / 1e6,
        }
    for r in out.values():
        r["vs_ort_fp32"] = r["median_ms"] / out["ort-fp32"]["median_ms"]
        r["vs_ort_int8"] = r["median_ms"] / out["ort-int8"]["median_ms"]
        # minima too: on a shared machine they are the calls least disturbed by others
        r["min_vs_ort_fp32"] = r["min_ms"] / out["ort-fp32"]["min_ms"]
        r["min_vs_ort_int8"] = r["min_ms"] / out["ort-int8"]["min_ms"]
    if shared is not None:
        out["tvm-int8"]["paired_peak_share"] = shared
    return out


def _accuracy(model, qm, calls: dict) -> dict:
    from ..int8.quantize import evaluate_detector

    out = {}
    for name in calls:
        acc = evaluate_detector(model, qm, run=calls[name])
        s = acc.int8
        out[name] = {
            "score": s.score,
            "f1": s.f1,
            "tp": s.tp,
            "fp": s.fp,
            "fn": s.fn,
            "normalized_error": acc.normalized_error,
        }
    s = acc.fp32
    out["pytorch-fp32"] = {
        "score": s.score,
        "f1": s.f1,
        "tp": s.tp,
        "fp": s.fp,
        "fn": s.fn,
        "normalized_error": 0.0,
    }
    return out


def _decisions(loaded, calls: dict) -> dict:
    """A classifier's decisions (logit > 0) per runtime against PyTorch fp32's on the
    held-out CinC records, and the logits' normalised error."""
    import torch

    from ..int8.quantize import HELD_OUT_RECORDS, real_ecg

    x = real_ecg(loaded.leads, HELD_OUT_RECORDS)
    with torch.no_grad():
        ref = loaded.model.eval()(torch.from_numpy(x)).numpy()
    out = {}
    for name in calls:
        got = np.concatenate([calls[name](x[i : i + 1]) for i in range(len(x))])
        out[name] = {
            "agreed": int(((got > 0) == (ref > 0)).sum()),
            "decisions": int(ref.size),
            "normalized_error": float(np.abs(got - ref).max() / np.abs(ref).max()),
        }
    out["pytorch-fp32"] = {
        "agreed": int(ref.size),
        "decisions": int(ref.size),
        "normalized_error": 0.0,
    }
    return out


PRESETS = ("cpsc2019_qrs", "leadwise_classifier")


def run_int8_bench(
    threads: int = 2,
    rounds: int = 5,
    runs: int = 50,
    preset: str = "cpsc2019_qrs",
    peers: tuple[str, ...] = (),
) -> Int8Bench:
    """The whole comparison on the trained detector, or the (seeded) 12-lead classifier
    (module docstring); `peers` (names in compile.bench.peers.PEERS) for the detector."""
    import mscnn
    from deploy.predictor import set_threads, tvm_threads
    from mscnn.train import CHECKPOINT

    from ..int8 import kernels as int8
    from ..int8 import quantize
    from ..targets import get_target

    if preset == "cpsc2019_qrs" and not CHECKPOINT.is_file():
        raise CompileError(f"int8 bench: no trained detector at {CHECKPOINT}; run make train")
    if peers and preset != PRESETS[0]:
        raise CompileError("int8 bench: the peers run the detector only; drop --peers")
    loaded = mscnn.load_model(preset, checkpoint=CHECKPOINT if preset == PRESETS[0] else None)
    records = quantize.CALIBRATION_RECORDS
    calibration = quantize.real_ecg(loaded.leads, records)
    qm = quantize.quantize_model(loaded, calibration, record_ids=records)
    set_threads(threads)  # TVM's pool, with this thread's CPUs given back
    if tvm_threads() != threads:
        raise CompileError(f"TVM's pool runs {tvm_threads()} threads, {threads} asked")
    samples = calibration.shape[2]
    programs = {}
    for name, target in (("tvm-int8", "x86_64-avx512"), ("tvm-int8-avx2", "x86_64")):
        spec = get_target(target).int8  # VNNI; vpmaddubsw + vpmaddwd
        programs[name] = int8.build_int8(qm, spec.tvm, 1, samples, require=spec.isa)
    program = programs["tvm-int8"]
    x = quantize.real_ecg(loaded.leads, [quantize.HELD_OUT_RECORDS[0]])
    with tempfile.TemporaryDirectory() as tmp:
        calls, sizes = make_runtimes(loaded, programs, calibration, Path(tmp), threads)
        processes, status = start_detector_peers(loaded.model, x, Path(tmp), threads, peers)
        try:
            result = _measure(loaded, qm, calls, processes, x, (threads, rounds, runs), program)
        finally:
            close_all(processes)
    result.sizes.update(sizes)
    result.sizes.update({n: st["bytes"] for n, st in status.items() if st["ok"]})
    result.refusals = {n: st["error"] for n, st in status.items() if not st["ok"]}
    return result


def _measure(loaded, qm, calls, processes, x, how, program) -> Int8Bench:
    """Peaks, the timing rounds (ours and the peers') and the held-out accuracy."""
    import os

    from ..int8 import kernels as int8
    from .peers import model_calls

    threads, rounds, runs = how
    peer_timers, peer_runs = model_calls(processes)
    macs = loaded.model.count_macs(x.shape[2])
    log.info("peaks: timing an FMA and a VNNI loop on %d thread(s)", threads)
    peaks = {
        name: best_peak(kind, threads)
        for name, kind in (("fp32-fma", "fma"), ("int8-vnni", "vnni"))
    }
    log.info("latency: %d rounds of %s", rounds, ", ".join([*TIMED, *peer_timers]))
    vnni = peak_call("vnni", threads, int8.X86_VNNI)
    timings = _timings(calls, x, (rounds, runs), macs, peer_timers, vnni)
    load = os.getloadavg()
    judged = {**{n: calls[n] for n in JUDGED}, **peer_runs}
    if loaded.model.task == "qrs_detection":
        accuracy = _accuracy(loaded.model, qm, judged)
    else:
        accuracy = _decisions(loaded, judged)
    sizes = {"tvm-int8-constants": program.constant_bytes}
    return Int8Bench(
        cpu_model(), threads, x.shape[2], macs, peaks, timings, accuracy, sizes, load, loaded.preset
    )


def _peer_names(text: str) -> tuple[str, ...]:
    names = tuple(n for n in text.split(",") if n)
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown peer {unknown[0]!r}; choose from: {', '.join(PEERS)}"
        )
    return names


def main(argv=None) -> int:
    """`python -m compile.bench.int8`: print the tables, write the JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m compile.bench.int8",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--threads", type=int, default=2, help="threads of every runtime")
    parser.add_argument("--rounds", type=int, default=5, help="rounds alternating runtimes")
    parser.add_argument("--runs", type=int, default=50, help="calls per runtime per round")
    parser.add_argument("--preset", choices=PRESETS, default=PRESETS[0], help="the model compared")
    parser.add_argument(
        "--peers",
        type=_peer_names,
        default=(),
        help=f"comma-separated peers beside ours, each in its own venv ({', '.join(PEERS)})",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("build/int8_bench"), help="folder for int8_bench.json"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if min(args.threads, args.rounds, args.runs) < 1:
        parser.error("--threads, --rounds and --runs must be positive")
    try:
        result = run_int8_bench(args.threads, args.rounds, args.runs, args.preset, args.peers)
    except CompileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.table())
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.preset == PRESETS[0] else f"_{args.preset}"
    path = args.out / f"int8_bench{suffix}.json"
    path.write_text(json.dumps({**asdict(result), "goals": result.goals()}, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
