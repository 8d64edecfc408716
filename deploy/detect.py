"""R-peak detection with a detector bundle: a record in, beats and heart rate out.

The bundle's manifest carries the post-processing rule (deploy/rpeaks.py), so a device
finds the same beats from the same model output; `plot` draws a record with its beats
(matplotlib is imported only there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundle import Bundle, load_bundle
from .errors import DeployError
from .files import show
from .predictor import Predictor
from .rpeaks import detect_rpeaks, heart_rate_bpm


@dataclass(frozen=True)
class Detection:
    beats: np.ndarray  # R-peak sample indices, rising
    heart_rate_bpm: float | None
    fs: int
    samples: int

    def to_json(self) -> dict:
        return {
            "beats": self.beats.tolist(),
            "heart_rate_bpm": self.heart_rate_bpm,
            "fs": self.fs,
            "samples": self.samples,
            "seconds": self.samples / self.fs,
        }


def as_window(bundle: Bundle, record: np.ndarray, fs: int | None = None) -> np.ndarray:
    """A record of shape (samples,), (leads, samples) or (1, leads, samples) as the
    bundle's (1, leads, samples) input; a DeployError names what does not fit."""
    m = bundle.manifest
    if fs is not None and fs != m.fs:
        raise DeployError(
            f"record sampled at {fs} Hz; this bundle takes {m.fs} Hz: "
            f"resample the record to {m.fs} Hz first"
        )
    if not isinstance(record, np.ndarray) or record.ndim not in (1, 2, 3):
        raise DeployError(
            "record: expected an array of shape (samples,), (leads, samples) or (1, leads, samples)"
        )
    x = record.reshape((1, 1, -1) if record.ndim == 1 else (1, *record.shape[-2:]))
    if record.ndim == 3 and record.shape[0] != 1:
        raise DeployError(f"record: batch {record.shape[0]}; give one record at a time")
    want = m.input.shape[2]
    if x.shape[2] != want:
        raise DeployError(
            f"record of {x.shape[2]} samples ({x.shape[2] / m.fs:g} s); this "
            f"window bundle takes {want} samples ({want / m.fs:g} s at {m.fs} Hz)"
        )
    return x


def detect(
    bundle: Bundle | str | Path,
    record: np.ndarray,
    fs: int | None = None,
    predictor: Predictor | None = None,
) -> Detection:
    """Run a detector bundle on one record and apply the manifest's R-peak rule."""
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    rule = bundle.manifest.detect
    if rule is None:
        raise DeployError(
            f"bundle {bundle.name} is a {bundle.manifest.model.task} model, not "
            "an R-peak detector (its manifest has no detection rule)"
        )
    x = as_window(bundle, record, fs)
    logits = (predictor or Predictor(bundle))(x)[0, :, 0]
    beats = detect_rpeaks(logits, rule, n_samples=x.shape[2])
    return Detection(beats, heart_rate_bpm(beats, rule.fs), rule.fs, x.shape[2])


def plot(record: np.ndarray, detection: Detection, path: Path, title: str = "") -> Path:
    """The record (first lead) with its detected beats marked, as a PNG."""
    try:
        import matplotlib
    except ImportError:
        raise DeployError(
            "--plot needs matplotlib, which is not installed here; run "
            "`pip install matplotlib` or leave out --plot"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    signal = np.asarray(record, dtype=np.float64).reshape(-1, detection.samples)[0]
    t = np.arange(detection.samples) / detection.fs
    fig, ax = plt.subplots(figsize=(max(6, detection.samples / detection.fs), 3))
    ax.plot(t, signal, linewidth=0.8, color="black")
    ax.plot(
        detection.beats / detection.fs,
        signal[detection.beats],
        "v",
        color="red",
        label=f"{len(detection.beats)} beats",
    )
    rate = detection.heart_rate_bpm
    ax.set_title(title + (f"  {rate:.0f} bpm" if rate else ""), fontsize=9)
    ax.set_xlabel("s")
    ax.set_ylabel("mV")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise DeployError(f"cannot write {show(path)}: {exc.strerror}") from None
    finally:
        plt.close(fig)
    return path
