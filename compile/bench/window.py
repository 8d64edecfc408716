"""Latency side by side: PyTorch eager vs ONNX Runtime vs TVM, same input, same threads.

TVM comes four ways: the bundle as built (our schedule with the target's tuning records,
"tvm"), our schedule with the default tile everywhere ("tvm-default-tile"), the rule ARM
builds use untuned, i.e. our schedule with the aarch64 tile (4-lane vectors), compiled
for this CPU ("tvm-arm-rule"), and TVM's default CPU pipeline without any schedule
("tvm-untuned"); all but the first are compiled here from the bundle's ONNX file, for
CPU bundles.

Each runtime is timed in rounds that alternate between the runtimes, with a pause
between them: ONNX Runtime's and PyTorch's worker threads keep spinning for a while after
a run and would otherwise steal a core from whichever runtime is timed next. Per runtime:
warm-up, then up to `runs` timed calls per round (fewer for a runtime whose call takes
long: a round gets about a second; untuned TVM takes seconds per call); median, p90 and
min over all calls. Achieved GFLOP/s = 2 x the model's conv MACs / median time. Timings
are never asserted in tests.

Beside the ratio of medians, each runtime's ratio to ONNX Runtime is also taken round by
round (its median in a round over ONNX Runtime's in the same round, the two timed one
after the other) and the median of those is reported as the paired ratio. On a small
virtual machine the host switches both cores between a fast and a slow mode every few
seconds (ONNX Runtime at 31.5 and 40.8 ms, TVM at 29 and 33.5 ms, in consecutive rounds
of one run): a ratio of medians over all rounds then depends on which runtime's rounds
the slow spells fell on, a paired one less so.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

RUNTIMES = ("pytorch", "onnxruntime", "tvm", "tvm-default-tile", "tvm-arm-rule", "tvm-untuned")
# the peers' fp32 windows (compile/bench/peers.py), where `--peers` asks for them
PEER_RUNTIMES = ("executorch-fp32", "litert-fp32")
PEER_LABELS = {"executorch-fp32": "ExecuTorch", "litert-fp32": "LiteRT"}
ROUND_SECONDS = 1.0  # a runtime's share of one round, at least one call


@dataclass
class Timing:
    runtime: str
    median_ms: float
    p90_ms: float
    min_ms: float
    runs: int
    gflops: float
    ratio_to_ort: float | None = None
    paired_ratio_to_ort: float | None = None  # median over rounds of the rounds' ratios


@dataclass
class BenchRow:
    preset: str
    variant: str
    target: str
    batch: int
    samples: int
    macs: int
    library_bytes: int
    weights_bytes: int
    activation_bytes: int | None
    tuned_kernels: str = ""  # "18/18": conv kernels that took a tuned tile
    timings: dict[str, Timing] = field(default_factory=dict)
    peer_refusals: dict[str, str] = field(default_factory=dict)  # peer model -> its error
    # TVM's share of the FMA loop timed in the same rounds, right after it (median over
    # rounds), for the bundle held to the peak goal
    paired_peak_share: float | None = None


def peak_gflops(threads: int) -> tuple[float, str]:
    """A nominal FP32 peak and how it was derived (an estimate, stated as such)."""
    from deploy.bundle import cpu_flags, cpuinfo

    flags = cpu_flags()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    mhz = max((float(v) for v in cpuinfo("cpu MHz")), default=0.0)
    peak = threads * mhz / 1000 * lanes * 2 * 2
    how = (
        f"{threads} core(s) x {mhz / 1000:.2f} GHz (/proc/cpuinfo) x {lanes} f32 lanes x "
        "2 FMA pipes x 2 FLOP per FMA (assumed: two FMA units of the widest vectors)"
    )
    return peak, how


def _time(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def bench_bundle(
    bundle_path: Path,
    model,
    threads: int,
    rounds: int,
    runs: int,
    pause: float = 0.5,
    runtimes=RUNTIMES,
    peer_timers: dict | None = None,
    peak=None,
) -> BenchRow:
    """Time one bundle against PyTorch and ONNX Runtime on its golden ECG input (and the
    peers' timers, which were given that same input). `peak`, where given, is (a call of
    the FMA peak loop, its FLOP), timed right after TVM in every round."""
    from deploy import Predictor

    predictor = Predictor(bundle_path)
    m = predictor.bundle.manifest
    x, _ = predictor.bundle.golden["ecg"]
    calls = _calls(predictor, model, threads, x, runtimes)
    timers = {}
    for name, call in calls.items():
        timers[name] = local_timer(call)
        if name == "tvm" and peak is not None:  # the FMA loop right after TVM, each round
            timers[PEAK_TIMER] = local_timer(peak[0])
    by_round: dict[str, list[list[float]]] = {}
    samples = time_timers({**timers, **(peer_timers or {})}, rounds, runs, pause, by_round)
    row = _row(m, model)
    if peak is not None:
        del samples[PEAK_TIMER]
        row.paired_peak_share = paired_peak_share(
            by_round["tvm"], by_round[PEAK_TIMER], 2 * row.macs, peak[1]
        )
    for name, values in samples.items():
        median = statistics.median(values)
        row.timings[name] = Timing(
            name,
            median,
            float(np.percentile(values, 90)),
            min(values),
            len(values),
            2 * row.macs / median / 1e6,
        )
    for name, t in row.timings.items():
        t.ratio_to_ort = t.median_ms / row.timings["onnxruntime"].median_ms
        t.paired_ratio_to_ort = paired_ratio(by_round[name], by_round["onnxruntime"])
    return row


def paired_peak_share(
    ours: list[list[float]], loop: list[list[float]], flop: float, loop_flop: float
) -> float:
    """The median over rounds of (our FLOP/s at our median in a round / the FMA loop's
    at its fastest call in the same round, timed right after): the share of the peak
    with both measured in the same spell of the host's fast or slow mode."""
    shares = [
        (flop / statistics.median(a)) / (loop_flop / min(b))
        for a, b in zip(ours, loop, strict=True)
    ]
    return statistics.median(shares)


def paired_ratio(ours: list[list[float]], theirs: list[list[float]]) -> float:
    """The median over rounds of (our median in a round / theirs in the same round)."""
    ratios = [
        statistics.median(a) / statistics.median(b) for a, b in zip(ours, theirs, strict=True)
    ]
    return statistics.median(ratios)


def _calls(predictor, model, threads: int, x: np.ndarray, runtimes) -> dict:
    """One call per runtime asked for, on the same input, same thread count (TVM with
    other schedules compiled here from the bundle's ONNX, for CPU bundles)."""
    import onnxruntime as ort
    import torch

    from ..targets import TARGETS

    m, path = predictor.bundle.manifest, predictor.bundle.path
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(path / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    torch.set_num_threads(threads)
    xt = torch.from_numpy(x)

    def run_torch():
        with torch.inference_mode():
            model(xt)

    calls = {
        "pytorch": run_torch,
        "onnxruntime": lambda: session.run(None, {m.input.name: x}),
        "tvm": lambda: predictor(x),
    }
    others = {
        "tvm-default-tile": ("default-tile", None),
        "tvm-arm-rule": ("default-tile", TARGETS["aarch64"].tile),
        "tvm-untuned": ("none", None),
    }
    for name, (schedule, tile) in others.items():
        if name in runtimes and not m.target.is_gpu:
            calls[name] = _compiled(path, m, schedule, x, tile)
    return {name: call for name, call in calls.items() if name in runtimes}


def time_rounds(calls: dict, rounds: int, runs: int, pause: float) -> dict[str, list[float]]:
    """Milliseconds per call, per runtime, over rounds that alternate the runtimes."""
    timers = {name: local_timer(call) for name, call in calls.items()}
    return time_timers(timers, rounds, runs, pause)


def local_timer(call):
    """n -> the times in ms of n back-to-back calls of `call` in this process."""
    return lambda n: _time(call, n)


def time_timers(
    timers: dict, rounds: int, runs: int, pause: float, by_round: dict | None = None
) -> dict[str, list[float]]:
    """time_rounds over timers (n -> n call times in ms): a runtime timed in another
    process (compile.bench.peers) takes its turn in the same rounds as ours. `by_round`,
    where given, receives each runtime's samples round by round."""
    samples: dict[str, list[float]] = {name: [] for name in timers}
    rounds_of = by_round if by_round is not None else {}
    rounds_of.update({name: [] for name in timers})
    per_round = {}
    for name, timer in timers.items():  # warm-up; a slow runtime gets fewer calls per round
        warm = min(timer(2))
        per_round[name] = max(1, min(runs, int(ROUND_SECONDS * 1e3 / max(warm, 1e-3))))
    for _ in range(rounds):
        for name, timer in timers.items():
            time.sleep(pause)
            rounds_of[name].append(timer(per_round[name]))
            samples[name] += rounds_of[name][-1]
    return samples


def _row(m, model) -> BenchRow:
    batch, _, length = m.input.shape
    tuning = m.schedule.tuning or {}
    kernels = tuning.get("conv_tuned", 0) + tuning.get("conv_default_tile", 0)
    return BenchRow(
        preset=m.model.preset or "custom",
        variant=m.name,
        target=m.target.name,
        batch=batch,
        samples=length,
        macs=model.count_macs(length, batch),
        library_bytes=m.files["model.so"].bytes,
        weights_bytes=m.footprint.weights_bytes or 4 * m.model.num_parameters,
        activation_bytes=m.footprint.activation_bytes,
        tuned_kernels=f"{tuning.get('conv_tuned', 0)}/{kernels}" if tuning else "none",
    )


def _compiled(bundle_path: Path, manifest, schedule: str, x: np.ndarray, tile=None):
    """A call of the bundle's ONNX model compiled here with another schedule (and tile)."""
    import dataclasses

    import tvm
    from tvm import relax

    from ..lowering.pipeline import compile_executable
    from ..targets import get_target

    target = get_target(manifest.target.name)
    if tile is not None:
        target = dataclasses.replace(target, tile=tile)
    shape = manifest.input.shape
    compiled = compile_executable(bundle_path / "model.onnx", target, shape, schedule=schedule)
    executable = compiled.executable
    main = relax.VirtualMachine(executable, tvm.cpu(0))["main"]
    # numpy in, numpy out, as ONNX Runtime and the bundle's Predictor are timed
    return lambda: main(tvm.runtime.tensor(x)).numpy()


def save(rows: list[BenchRow], threads: int, out: Path, extra=None) -> tuple[Path, Path]:
    """JSON with every figure (and `extra`'s), a PNG chart of the ratios to ORT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peak, how = peak_gflops(threads)
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "threads": threads,
        "peak_gflops": peak,
        "peak_derivation": how,
        "machine": os.uname().machine,
        "rows": [asdict(r) for r in rows],
        **(extra or {}),
    }
    json_path = out / "bench.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    short = {"multi_scopic_leadwise": "leadwise", "multi_scopic": "mixed"}
    labels = []
    for r in rows:
        name = r.variant
        for long, brief in short.items():
            name = name.replace(long, brief)
        labels.append(f"{name} {r.target.replace('x86_64-', '')} b{r.batch}")
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows)), 5))
    shown = (*RUNTIMES, *PEER_RUNTIMES)
    names = [n for n in shown if n != "tvm-untuned" and any(n in r.timings for r in rows)]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar(
            [j + (i - (len(names) - 1) / 2) * width for j in range(len(rows))],
            [r.timings[name].ratio_to_ort if name in r.timings else 0 for r in rows],
            width,
            label=name,
        )
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(0.8, color="grey", linestyle="--", linewidth=0.8, label="goal 0.8x")
    ax.set_xticks(range(len(rows)), labels, fontsize=7, rotation=40, ha="right")
    ax.set_ylabel("median latency / ONNX Runtime's")
    untuned = [r.timings["tvm-untuned"].ratio_to_ort for r in rows if "tvm-untuned" in r.timings]
    note = (
        f"\nuntuned TVM ({min(untuned):.0f}-{max(untuned):.0f}x) is in bench.json"
        if untuned
        else ""
    )
    ax.set_title(
        f"Latency relative to ONNX Runtime ({threads} threads, lower is better){note}", fontsize=9
    )
    top = max(
        (r.timings[n].ratio_to_ort for r in rows for n in names if n in r.timings), default=1.0
    )
    ax.set_ylim(0, max(top, 1.0) * 1.35)  # room for the legend above the bars
    ax.legend(fontsize=8, ncol=3, loc="upper left")
    fig.tight_layout()
    png_path = out / "bench.png"
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return json_path, png_path


def bundle_paths(folders: list[Path], targets: list[str]) -> list[Path]:
    """The bundles of `targets` under the build folders."""
    from deploy.bundle import MANIFEST

    return sorted(
        p.parent for folder in folders for t in targets for p in (folder / t).glob(f"*/{MANIFEST}")
    )


def run_bench(
    paths: list[Path],
    threads: int,
    rounds: int,
    runs: int,
    checkpoint: Path | None = None,
    untuned: bool = True,
    say=lambda text: None,
    peers: tuple[str, ...] = (),
) -> list[BenchRow]:
    """Time every bundle that runs here against PyTorch (the model it was built from,
    re-derived for its lead variant), ONNX Runtime and the `peers`' fp32 windows."""
    import tempfile

    from deploy.predictor import set_threads

    from .peers import close_all

    set_threads(threads)
    rows, models, started = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for path in paths:
                row = _bench_one(path, threads, (rounds, runs), checkpoint, untuned, say,
                                 (peers, tmp, started, models))  # fmt: skip
                rows += [row] if row is not None else []
        finally:
            for processes, _ in started.values():
                close_all(processes)
    return rows


def _bench_one(path: Path, threads: int, how, checkpoint, untuned: bool, say, shared):
    """One bundle's row (None for a bundle this benchmark does not time); `shared`: the
    peers asked for, a folder, the peers started so far and the models loaded so far."""
    import mscnn
    from deploy.bundle import load_bundle

    from ..variants import Variant, variant_model

    peers, tmp, started, models = shared
    bundle = load_bundle(path)
    runs_here, why = bundle.runnable_here()
    if not runs_here:
        say(f"skipped {path}: {why}")
        return None
    m = bundle.manifest
    if m.stream is not None or m.precision != "fp32":
        kind = "stream" if m.stream is not None else m.precision
        say(f"skipped {path}: {kind} bundles are timed by bench-stream and int8_bench")
        return None
    if m.model.preset not in models:
        models[m.model.preset] = mscnn.load_model(m.model.preset, checkpoint)
    variant = Variant(m.name, tuple(m.leads), tuple(m.lead_indices))
    model = variant_model(models[m.model.preset], variant)
    key = (m.model.preset, m.name, tuple(bundle.input_shape))
    if peers and key not in started:  # one set of peers per model and shape, for every target
        started[key] = _window_peers(model, bundle.golden["ecg"][0], tmp, threads, peers)
    timers, refusals = _peer_timers(started.get(key))
    say(f"timing {path} ...")
    # Untuned TVM takes seconds per call on the big models: batch 1 only.
    skip_untuned = not untuned or bundle.input_shape[0] > 1
    runtimes = [r for r in RUNTIMES if not (skip_untuned and r == "tvm-untuned")]
    peak = _peak_loop(m, bundle.input_shape, threads)
    row = bench_bundle(path, model, threads, *how, runtimes=runtimes, peer_timers=timers, peak=peak)
    row.peer_refusals = refusals
    return row


def _peak_loop(manifest, shape, threads: int):
    """(call, FLOP) of the 512-bit FMA loop for the bundle held to the peak goal (the
    12-lead lead-wise model, x86_64-avx512, batch 1) on an AVX-512 CPU; else None."""
    from deploy.bundle import cpu_flags

    from ..int8 import kernels as int8
    from .peaks import peak_call

    held = (manifest.name, manifest.target.name, shape[0]) == (
        PEAK_GOAL[0],
        "x86_64-avx512",
        1,
    )
    return peak_call("fma", threads, int8.X86_VNNI) if held and "avx512f" in cpu_flags() else None


def _window_peers(model, x: np.ndarray, tmp: str, threads: int, names):
    """The peers' fp32 windows of `model` at the input `x` (compile.bench.peers.window_spec)."""
    import tempfile

    from .peers import open_peers, window_spec

    folder = Path(tempfile.mkdtemp(dir=tmp))
    specs, status = window_spec(model, x, folder, names)
    processes, more = open_peers(specs, folder, threads, tuple(specs))
    return processes, {**status, **more}


def _peer_timers(started) -> tuple[dict, dict]:
    """(fp32 timers, refusals) of one started set of peers."""
    from .peers import model_calls

    if started is None:
        return {}, {}
    processes, status = started
    timers, _ = model_calls(processes)
    refusals = {n: st["error"] for n, st in status.items() if not st["ok"]}
    return {n: t for n, t in timers.items() if n in PEER_RUNTIMES}, refusals


def table(rows: list[BenchRow], threads: int):
    """The rich table `make bench` prints."""
    from rich.table import Table

    peak, _ = peak_gflops(threads)
    out = Table(
        title=f"median ms ({threads} threads); TVM as built (tuned) / ONNX Runtime, as a "
        "ratio of medians and paired (the median of the rounds' ratios); "
        f"GFLOP/s of a {peak:.0f} GFLOP/s nominal peak"
    )
    peers = [n for n in PEER_RUNTIMES if any(n in r.timings for r in rows)]  # columns if run
    columns = (
        "variant",
        "target",
        "batch",
        "PyTorch",
        "ONNX Runtime",
        "TVM tuned",
        "TVM default tile",
        "ARM rule",
        "TVM untuned",
        *(PEER_LABELS[n] for n in peers),
        "tuned kernels",
        "TVM/ORT",
        "paired",
        "TVM GFLOP/s",
        "library",
        "weights",
        "activations",
    )
    for column in columns:
        out.add_column(column, no_wrap=column == "variant")
    for r in rows:
        t = r.timings
        out.add_row(
            r.variant.replace("multi_scopic_leadwise", "leadwise"),
            r.target,
            str(r.batch),
            *(f"{t[n].median_ms:.2f}" if n in t else "-" for n in (*RUNTIMES, *peers)),
            r.tuned_kernels,
            f"{t['tvm'].ratio_to_ort:.2f}",
            f"{t['tvm'].paired_ratio_to_ort:.2f}",
            f"{t['tvm'].gflops:.0f}",
            f"{r.library_bytes / 2**20:.1f} MiB",
            f"{r.weights_bytes / 2**20:.1f} MiB",
            f"{r.activation_bytes / 2**20:.1f} MiB" if r.activation_bytes else "-",
        )
    return out


GOAL_PEERS = ("onnxruntime", *PEER_RUNTIMES)  # the fp32 runtimes a user would pick instead
PEAK_GOAL = ("multi_scopic_leadwise-12lead", 0.80)  # the variant held to a share of the peak
PEAK_TIMER = "fma-peak"  # the FMA loop's timer, beside TVM's in that variant's rounds


def goals(rows: list[BenchRow], fma_peak: float | None, threads: int) -> list[str]:
    """The fp32 goals of the avx512 window bundles at batch 1, computed: TVM against the
    fastest fp32 runtime a user would pick instead (ratio of medians, and paired), and
    the 12-lead lead-wise model's share of the measured FMA peak."""
    lines = []
    for r in rows:
        t = r.timings
        if r.target != "x86_64-avx512" or r.batch != 1 or "tvm" not in t:
            continue
        peers = {n: t[n] for n in GOAL_PEERS if n in t}
        name = min(peers, key=lambda n: peers[n].median_ms)
        ratio = t["tvm"].median_ms / peers[name].median_ms
        paired = t["tvm"].paired_ratio_to_ort if name == "onnxruntime" else None
        lines.append(
            f"goal: {r.variant} TVM / fastest fp32 peer ({name}) = {ratio:.2f}"
            + (f", paired {paired:.2f}" if paired is not None else "")
            + " (<= 1.0)"
        )
        variant, share = PEAK_GOAL
        if r.variant != variant:
            continue
        if fma_peak is None:
            lines.append(f"goal: {variant}'s share of the FMA peak not measured: no AVX-512")
        else:
            paired = r.paired_peak_share
            lines.append(
                f"goal: {variant} TVM at {100 * t['tvm'].gflops / fma_peak:.0f}% of the "
                f"measured FMA peak ({fma_peak:.0f} GFLOP/s on {threads} threads)"
                + (f", paired {100 * paired:.0f}%" if paired is not None else "")
                + f" (>= {100 * share:.0f}%)"
            )
    return lines


def peak_note(rows: list[BenchRow], threads: int) -> str:
    peak, how = peak_gflops(threads)
    best = max(t.gflops for r in rows for t in r.timings.values())
    note = f"peak: {how}"
    if best > peak:
        note += (
            f"\nnote: {best:.0f} GFLOP/s was achieved, above that nominal peak: the cores "
            "run faster than the clock /proc/cpuinfo reports (boost), so read the peak "
            "as a lower bound"
        )
    return note


def machine_name() -> str:
    """The CPU model, as /proc/cpuinfo names it (every figure is quoted with it)."""
    from deploy.bundle import cpu_model

    return cpu_model() or os.uname().machine
