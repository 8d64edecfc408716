"""R-peak detection with a detector bundle: a record in, beats and heart rate out.

The bundle's manifest carries the post-processing rule (deploy/rpeaks.py), so a device
finds the same beats from the same model output; `plot` draws a record with its beats
(matplotlib is imported only there).

A .npy record holds no sampling rate. Given none, the bundle's is assumed, and every result
says so (`Detection.fs_assumed`, `rate_note`): a record at another rate gives beats at the
wrong times and a confident wrong heart rate, and nothing in its samples shows it. A record
at another rate, given (`fs`), is resampled to the bundle's (deploy/resample.py) and its
beats mapped back to the record's own sample clock.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundle import Bundle, load_bundle
from .errors import DeployError
from .files import show
from .manifest import Manifest
from .predictor import Predictor
from .records import Gap, check_mv, check_mv_or_gap, gap_mask, split_gaps
from .resample import rate_pair, resample
from .rpeaks import RPeakRule, detect_rpeaks, heart_rate_bpm

STREAM_HOP = 512  # the hop suggested for a stream bundle (~1 s at 500 Hz; make build's)


@dataclass(frozen=True)
class Detection:
    beats: np.ndarray  # R-peak sample indices, rising
    heart_rate_bpm: float | None
    fs: int
    samples: int
    fs_assumed: bool = False  # no rate was given: the bundle's was taken (rate_note)
    # the record's own rate when it was resampled to `fs` (the bundle's); beats and
    # samples are in the record's clock
    fs_input: int | None = None
    gaps: tuple[Gap, ...] = ()  # runs the sensor did not give; no RR interval spans one

    @property
    def input_fs(self) -> int:
        """The rate of the record's own clock, which `beats` and `samples` count in."""
        return self.fs_input or self.fs

    @property
    def breaks(self) -> list[int]:
        """Where each gap starts: no RR interval spans one."""
        return [g.start for g in self.gaps]

    def to_json(self) -> dict:
        return {
            "beats": self.beats.tolist(),
            "beats_s": (self.beats / self.input_fs).tolist(),
            "heart_rate_bpm": self.heart_rate_bpm,
            "fs": self.fs,
            "fs_input": self.input_fs,
            "fs_assumed": self.fs_assumed,
            "samples": self.samples,
            "seconds": self.samples / self.input_fs,
            "gaps": [g.to_json(self.input_fs) for g in self.gaps],
        }


def check_rate(manifest: Manifest, fs: int | None) -> bool:
    """Whether the record's rate is assumed (`fs` None: the bundle's is taken); a
    DeployError when a given rate is not the bundle's (resampling is the caller's)."""
    if fs is not None and fs != manifest.fs:
        raise DeployError(
            f"record sampled at {fs} Hz; this bundle takes {manifest.fs} Hz: "
            f"resample the record to {manifest.fs} Hz first"
        )
    return fs is None


def rate_note(fs: int) -> str:
    """What the CLIs say on a run whose rate was assumed."""
    return f"assuming {fs} Hz, the bundle's rate; pass --fs if the record was sampled otherwise"


def as_window(bundle: Bundle, record: np.ndarray, fs: int | None = None) -> np.ndarray:
    """A record of shape (samples,), (leads, samples) or (1, leads, samples) as the
    bundle's (1, leads, samples) input; a DeployError names what does not fit."""
    m = bundle.manifest
    check_rate(m, fs)
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
            f"window bundle takes {want} samples ({want / m.fs:g} s at {m.fs} Hz); "
            + stream_bundle_hint(m)
        )
    return x


def stream_bundle_hint(m: Manifest) -> str:
    """Which stream bundle takes a record of any length, and how to build it: a window
    bundle's length is fixed, and a record cut to fit loses the beats at its ends."""
    precision = m.precision if m.name.endswith(f"-{m.precision}") else ""
    base = m.name.removesuffix(f"-{precision}") if precision else m.name
    reduction = m.detect.reduction if m.detect is not None else 1
    hop = -(-STREAM_HOP // reduction) * reduction
    n = len(m.leads)
    variant = str(n) if base.endswith(f"-{n}lead") else "+".join(m.leads)
    command = "python -m compile build" + (f" --preset {m.model.preset}" if m.model.preset else "")
    command += f" --targets {m.target.name} --variants {variant} --hop {hop}"
    command += f" --precision {precision}" if precision else ""
    name = f"{base}-stream{hop}" + (f"-{precision}" if precision else "")
    return f"for a record of any length use the stream bundle {name}, built with `{command}`"


def detect(
    bundle: Bundle | str | Path,
    record: np.ndarray,
    fs: int | None = None,
    predictor: Predictor | None = None,
) -> Detection:
    """Run a detector bundle on one record and apply the manifest's R-peak rule.

    A record at `fs` other than the bundle's rate is resampled to it first; the beats
    come back in the record's own samples (rounded to the nearest)."""
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    rule = bundle.manifest.detect
    if rule is None:
        raise DeployError(
            f"bundle {bundle.name} is a {bundle.manifest.model.task} model, not "
            "an R-peak detector (its manifest has no detection rule)"
        )
    gaps = _gaps_in(record)
    if gaps:
        return _detect_segments(bundle, record, fs, predictor, gaps)
    if fs is not None and fs != bundle.manifest.fs:
        return _detect_resampled(bundle, record, fs, predictor)
    stream = bundle.manifest.stream is not None  # a stream bundle takes any length
    x = as_record(bundle, record, fs) if stream else as_window(bundle, record, fs)[0]
    check_mv(x, "record", leads=bundle.leads)
    if stream:
        from .stream import open_stream

        logits = open_stream(bundle).run(x)[0]
    else:
        logits = (predictor or Predictor(bundle))(x[None])[0, :, 0]
    n = x.shape[-1]  # a stream of fewer samples than a frame has no frame, so no beat
    beats = detect_rpeaks(logits, rule, n) if len(logits) else np.zeros(0, np.int64)
    rate = heart_rate_bpm(beats, rule.fs)
    return Detection(beats, rate, rule.fs, x.shape[-1], fs_assumed=fs is None)


def _gaps_in(record: object) -> list[Gap]:
    """The NaN runs of a float record of 1 to 3 dimensions (records.gap_mask)."""
    x = record if isinstance(record, np.ndarray) else np.zeros(0)
    if x.dtype.kind != "f" or x.ndim not in (1, 2, 3) or x.size == 0:
        return []
    x = x.reshape(-1, x.shape[-1])
    return [g for g in split_gaps(x) if isinstance(g, Gap)] if gap_mask(x).any() else []


def _detect_segments(
    bundle: Bundle, record: np.ndarray, fs: int | None, predictor, gaps: list[Gap]
) -> Detection:
    """A record with gaps: each segment between them detected alone (as a record of its
    own: the model's state and the rule restart), beats in the record's clock, and no
    heart-rate interval across a gap. A window bundle takes one whole window of samples,
    so it refuses, naming the stream bundle."""
    m = bundle.manifest
    x = record.reshape(-1, record.shape[-1])
    check_mv_or_gap(x, "record", leads=bundle.leads if len(x) == len(bundle.leads) else ())
    if m.stream is None:
        more = f", and {len(gaps) - 1} more" if len(gaps) > 1 else ""
        raise DeployError(
            f"record holds a gap (NaN from sample {gaps[0].start}, {gaps[0].samples} "
            f"samples{more}); a window bundle takes one whole window of samples, while a "
            "stream bundle reads NaN runs as sensor gaps: " + stream_bundle_hint(m)
        )
    beats, at = [], 0
    for piece in split_gaps(x):
        if isinstance(piece, np.ndarray):
            beats.append(detect(bundle, piece, fs, predictor).beats + at)
        at += piece.samples if isinstance(piece, Gap) else piece.shape[1]
    found = np.concatenate(beats) if beats else np.zeros(0, np.int64)
    resampled = fs is not None and fs != m.fs
    fs_record = fs if resampled else m.fs
    rate = heart_rate_bpm(found, fs_record, [g.start for g in gaps])
    return Detection(
        found, rate, m.fs, x.shape[-1], fs is None, fs if resampled else None, tuple(gaps)
    )


def _detect_resampled(
    bundle: Bundle, record: np.ndarray, fs: int, predictor: Predictor | None
) -> Detection:
    pair = rate_pair(fs, bundle.manifest.fs)
    x = np.asarray(record)
    if x.ndim not in (1, 2, 3) or x.dtype.kind != "f" or (x.ndim == 3 and x.shape[0] != 1):
        raise DeployError(
            f"record of shape {x.shape} dtype {x.dtype}: expected float mV of shape "
            "(samples,), (leads, samples) or (1, leads, samples)"
        )
    x = x.reshape(-1, x.shape[-1])
    check_mv(x, "record", leads=bundle.leads if len(x) == len(bundle.leads) else ())
    found = detect(bundle, resample(x, pair.fs_in, pair.fs_out), pair.fs_out, predictor)
    beats = np.minimum(pair.to_input_clock(found.beats), x.shape[-1] - 1)
    return dataclasses.replace(found, beats=beats, samples=x.shape[-1], fs_input=pair.fs_in)


def as_record(bundle: Bundle, record: np.ndarray, fs: int | None = None) -> np.ndarray:
    """A record of any length as (leads, samples) float32 for a stream bundle."""
    m = bundle.manifest
    check_rate(m, fs)
    x = np.asarray(record)
    x = x.reshape(1, -1) if x.ndim == 1 else x.reshape(x.shape[-2:]) if x.ndim == 3 else x
    if x.ndim != 2 or x.shape[0] != len(m.leads) or x.shape[1] == 0:
        raise DeployError(
            f"record of shape {np.shape(record)}: expected ({len(m.leads)} leads, "
            "samples) or (samples,) for one lead"
        )
    if x.dtype != np.float32:
        raise DeployError(
            f"record dtype {x.dtype.str} ({x.dtype.name}): expected float32 mV, '<f4' "
            "(convert with x.astype('<f4'))"
        )
    return x


def plot(
    record: np.ndarray, detection: Detection, path: Path, title: str = "", start: int = 0
) -> Path:
    """The record (first lead) with its detected beats marked, as a PNG. `record` may be
    a span of a long record that starts at its sample `start`."""
    try:
        import matplotlib
    except ImportError:
        raise DeployError(
            "--plot needs matplotlib, which is not installed here; run "
            "`pip install matplotlib` or leave out --plot"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fs = detection.input_fs
    signal = np.asarray(record, dtype=np.float64)
    signal = signal.reshape(-1, signal.shape[-1])[0]
    t = (start + np.arange(len(signal))) / fs
    beats = detection.beats[(detection.beats >= start) & (detection.beats < start + len(signal))]
    fig, ax = plt.subplots(figsize=(min(40, max(6, len(signal) / fs)), 3))
    ax.plot(t, signal, linewidth=0.8, color="black")
    ax.plot(beats / fs, signal[beats - start], "v", color="red", label=f"{len(beats)} beats")
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


class BeatStream:
    """R-peaks from a detector's frames as they arrive, by the manifest's rule.

    The rule is global over a record (runs, then the strongest of beats closer than the
    minimum RR interval), so a beat is reported once every candidate that could still
    change it has been seen: `horizon` samples later (two minimum RR intervals and an edge,
    at least a second). Only the last few seconds of logits are kept, whatever the length
    of the stream. On real records the beats equal the offline rule's (tested over many
    minutes); a pathological chain of ever stronger beats, each within the minimum RR of
    the next, longer than the horizon could differ."""

    def __init__(self, rule: RPeakRule) -> None:
        self.rule = rule
        r = rule.reduction
        self.horizon = max(2 * rule.min_rr_samples + rule.edge_samples + 4 * r, rule.fs)
        self._keep = (2 * self.horizon) // r + 1  # frames kept behind the reporting point
        self.origin = 0  # the record's sample where the current segment began
        self._restart()

    def _restart(self) -> None:
        self._logits = np.zeros(0, np.float64)
        self._offset = 0  # frame index of _logits[0]
        self._last = -1  # last beat reported (sample of the segment)

    def push(self, logits: np.ndarray) -> list[int]:
        """New frames' logits (k,); the beats that are now final, as sample indices."""
        logits = np.asarray(logits, np.float64).reshape(-1)
        piece = max(1, self.horizon // (4 * self.rule.reduction))  # small steps: no gaps
        beats = []
        for at in range(0, len(logits), piece):
            self._logits = np.concatenate([self._logits, logits[at : at + piece]])
            end = (self._offset + len(self._logits)) * self.rule.reduction
            beats += self._beats(None, limit=end - self.horizon)
            drop = max(0, len(self._logits) - self._keep)
            self._logits, self._offset = self._logits[drop:], self._offset + drop
        return [self.origin + b for b in beats]

    def flush(self, n_samples: int | None = None) -> list[int]:
        """The end of the record: the remaining beats (the end edge rule applies).
        `n_samples`: the segment's length (default: its frames times the reduction)."""
        beats = self._end(n_samples)
        self.origin = 0
        return beats

    def gap(self, n: int, n_samples: int | None = None) -> list[int]:
        """A gap of `n` samples after a segment of `n_samples`: the segment's remaining
        beats (its end edge applies, as at a record's end); the rule restarts and later
        beats count from the gap's end, in the record's clock."""
        r = self.rule.reduction
        length = (self._offset + len(self._logits)) * r if n_samples is None else n_samples
        beats = self._end(length)
        self.origin += length + n
        return beats

    def _end(self, n_samples: int | None) -> list[int]:
        n = (self._offset + len(self._logits)) * self.rule.reduction
        n = n if n_samples is None else n_samples
        beats = self._beats(n, limit=n) if len(self._logits) else []
        origin = self.origin
        self._restart()
        return [origin + b for b in beats]

    def _beats(self, n_samples: int | None, limit: int) -> list[int]:
        r = self.rule.reduction
        start = self._offset * r
        window_n = None if n_samples is None else n_samples - start
        found = detect_rpeaks(self._logits, self._rule_for_window(), window_n) + start
        # Mid-stream, runs cut by the window's start are not beats: stay clear of it.
        lower = start + self.horizon // 2 if self._offset else -1
        new = [int(s) for s in found if max(self._last, lower) < s < limit]
        if new:
            self._last = new[-1]
        return new

    def _rule_for_window(self) -> RPeakRule:
        """Mid-stream the window's first samples are not the record's start: no edge."""
        if self._offset == 0:
            return self.rule
        return dataclasses.replace(self.rule, edge_ms=0)
