"""Streaming cost, side by side: the stream bundle's step per hop against re-running a
10 s window every hop (ONNX Runtime, the TVM window bundle, and the peers asked for:
LiteRT and ExecuTorch, fp32 and int8, compile/bench/peers.py; none of them has a
streaming step), same machine, same threads, one run. Compute is stated per second of
ECG; memory as state bytes against the window's activation bytes."""

from __future__ import annotations

import json
import statistics
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class StreamRow:
    hop: int
    hop_ms: float  # the hop's duration of ECG
    step_us: float  # median latency of one step (TVM, stream bundle)
    window_tvm_us: float  # one 10 s window, TVM window bundle
    window_ort_us: float  # one 10 s window, ONNX Runtime
    state_bytes: int
    window_activation_bytes: int | None
    window_peers_us: dict[str, float] = field(default_factory=dict)  # peer model -> window

    @property
    def per_second(self) -> dict[str, float]:
        """Microseconds of compute per second of ECG, each way."""
        calls = 1000.0 / self.hop_ms
        return {
            "stream": self.step_us * calls,
            "window_tvm": self.window_tvm_us * calls,
            "window_ort": self.window_ort_us * calls,
            **{f"window_{n}": us * calls for n, us in self.window_peers_us.items()},
        }


def bench_stream(
    window: Path,
    streams: list[Path],
    threads: int,
    rounds: int = 5,
    runs: int = 50,
    peers: tuple[str, ...] = (),
) -> tuple[list[StreamRow], dict[str, str]]:
    """Time the stream bundles' steps, the window bundle (TVM and ONNX Runtime) and the
    peers' windows; the rows, and the peer models that cannot run with their reasons."""
    import mscnn
    from deploy.predictor import Predictor, set_threads

    from .peers import close_all, model_calls, start_detector_peers

    set_threads(threads)
    predictor = Predictor(window)
    x, _ = predictor.bundle.golden["ecg"]
    with tempfile.TemporaryDirectory() as tmp:
        model = mscnn.load_model(predictor.bundle.manifest.model.preset).model if peers else None
        processes, status = start_detector_peers(model, x, Path(tmp), threads, peers)
        try:
            timers, _ = model_calls(processes)
            rows = [
                _stream_row(predictor, x, path, threads, timers, (rounds, runs)) for path in streams
            ]
        finally:
            close_all(processes)
    return rows, {n: st["error"] for n, st in status.items() if not st["ok"]}


def _stream_row(predictor, x, path: Path, threads: int, peer_timers: dict, how) -> StreamRow:
    """One hop: its step, and every window (ours and the peers') in the same rounds."""
    import onnxruntime as ort

    from deploy.stream import open_stream

    from .window import local_timer, time_timers

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    bundle = predictor.bundle
    session = ort.InferenceSession(
        str(bundle.path / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    name = bundle.manifest.input.name
    stream = open_stream(path)
    info = stream.info
    chunk = x[0, :, : info.hop]
    calls = {
        "step": local_timer(lambda: stream.push(chunk)),
        "tvm": local_timer(lambda: predictor(x)),
        "ort": local_timer(lambda: session.run(None, {name: x})),
        **peer_timers,
    }
    med = {k: 1000 * statistics.median(v) for k, v in time_timers(calls, *how, 0.2).items()}
    return StreamRow(
        info.hop,
        1000 * info.hop / bundle.manifest.fs,
        med["step"],
        med["tvm"],
        med["ort"],
        info.state_bytes,
        bundle.manifest.footprint.activation_bytes,
        {n: med[n] for n in peer_timers},
    )


def save(
    rows: list[StreamRow], threads: int, machine: str, out: Path, refusals: dict | None = None
) -> tuple[Path, Path]:
    """JSON with every figure (and the peers that could not run, with their reasons), and
    a PNG of compute per second of ECG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    data = {
        "threads": threads,
        "machine": machine,
        "rows": [{**asdict(r), "per_second_us": r.per_second} for r in rows],
        "peer_refusals": refusals or {},
    }
    json_path = out / "stream.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"hop {r.hop} ({r.hop_ms:.0f} ms)" for r in rows]
    keys = list(rows[0].per_second) if rows else []
    width = 0.8 / max(len(keys), 1)
    for i, key in enumerate(keys):
        ax.bar(
            np.arange(len(rows)) + (i - (len(keys) - 1) / 2) * width,
            [r.per_second[key] / 1000 for r in rows],
            width,
            label=key.replace("_", " "),
        )
    ax.set_xticks(range(len(rows)), labels)
    ax.set_ylabel("ms of compute per second of ECG")
    ax.set_yscale("log")
    ax.set_title(f"Streaming vs a 10 s window re-run every hop ({threads} threads)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png_path = out / "stream.png"
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return json_path, png_path
