"""Streaming cost, side by side: the stream bundle's step per hop against re-running a
10 s window every hop (ONNX Runtime, and the TVM window bundle), same machine, same
threads, one run. Compute is stated per second of ECG; memory as state bytes against the
window's activation bytes."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
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

    @property
    def per_second(self) -> dict[str, float]:
        """Microseconds of compute per second of ECG, each way."""
        calls = 1000.0 / self.hop_ms
        return {
            "stream": self.step_us * calls,
            "window_tvm": self.window_tvm_us * calls,
            "window_ort": self.window_ort_us * calls,
        }


def bench_stream(
    window: Path, streams: list[Path], threads: int, rounds: int = 5, runs: int = 50
) -> list[StreamRow]:
    """Time the stream bundles' steps and the window bundle (TVM and ONNX Runtime)."""
    import onnxruntime as ort

    from deploy.predictor import Predictor, set_threads
    from deploy.stream import open_stream

    from .window import time_rounds

    set_threads(threads)
    predictor = Predictor(window)
    x, _ = predictor.bundle.golden["ecg"]
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(window / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    name = predictor.bundle.manifest.input.name
    rows = []
    for path in streams:
        stream = open_stream(path)
        info = stream.info
        chunk = x[0, :, : info.hop]
        calls = {
            "step": lambda s=stream, c=chunk: s.push(c),
            "tvm": lambda: predictor(x),
            "ort": lambda: session.run(None, {name: x}),
        }
        med = {
            k: 1000 * statistics.median(v) for k, v in time_rounds(calls, rounds, runs, 0.2).items()
        }
        rows.append(
            StreamRow(
                info.hop,
                1000 * info.hop / predictor.bundle.manifest.fs,
                med["step"],
                med["tvm"],
                med["ort"],
                info.state_bytes,
                predictor.bundle.manifest.footprint.activation_bytes,
            )
        )
    return rows


def save(rows: list[StreamRow], threads: int, machine: str, out: Path) -> tuple[Path, Path]:
    """JSON with every figure, and a PNG of compute per second of ECG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    data = {
        "threads": threads,
        "machine": machine,
        "rows": [{**asdict(r), "per_second_us": r.per_second} for r in rows],
    }
    json_path = out / "stream.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [f"hop {r.hop} ({r.hop_ms:.0f} ms)" for r in rows]
    for i, key in enumerate(("stream", "window_tvm", "window_ort")):
        ax.bar(
            np.arange(len(rows)) + (i - 1) * 0.27,
            [r.per_second[key] / 1000 for r in rows],
            0.27,
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
