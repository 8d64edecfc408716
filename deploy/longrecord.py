"""A record of any length through a detector bundle, in memory that does not grow with it.

The record comes in chunks (deploy/recordings.py reads every format that way), each
checked as mV, resampled to the bundle's rate where it is another (deploy/resample.py,
streaming), and turned into frames: a stream bundle hop by hop (deploy/stream.py), a
window bundle in overlapping windows (`WindowStream`). The frames go to the R-peak rule
as they come (detect.BeatStream), so what is held at any time is one chunk, one window
and a few seconds of logits; only the beats themselves (a few per second) are kept.

Window seams are exact: a frame of the model depends on the samples within its receptive
field, so a window's frames that lie at least half that field (`halo_samples`) from both of
its edges are the frames the model gives on the whole record. Windows overlap by twice
the halo and each gives only those frames, the first window also its first frames and the
last window its last ones (the record's own edges, as the model on the whole record sees
them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .bundle import Bundle
from .detect import BeatStream, Detection, stream_bundle_hint
from .errors import DeployError
from .manifest import Manifest
from .predictor import Predictor
from .records import Gap, check_mv_or_gap, split_gaps
from .resample import Resampler, rate_pair
from .rpeaks import heart_rate_bpm


def halo_samples(m: Manifest) -> int:
    """Samples each side of a window whose frames the window's edges change: half the
    model's receptive field and one frame more, in whole frames."""
    r = m.detect.reduction if m.detect is not None else 1
    half = -(-m.model.receptive_field // 2) + r
    return -(-half // r) * r


class WindowStream:
    """A window bundle's frames over a record of any length: `push((leads, n))` gives the
    frames (classes, k) now final, `flush()` the rest once the record has ended. The
    windows overlap by twice `halo_samples`; a record shorter than one window is refused
    (the model is compiled for that length and no shorter)."""

    def __init__(self, predictor: Predictor) -> None:
        m = predictor.bundle.manifest
        self.predictor, self.manifest = predictor, m
        self.window = m.input.shape[2]
        self.reduction = self.window // m.output.shape[1]
        self.halo = halo_samples(m)
        self.step = self.window - 2 * self.halo
        if self.step < self.reduction:
            raise DeployError(
                f"bundle {m.name}: its window of {self.window} samples is too short to "
                f"stitch (the model's receptive field needs {self.halo} samples of overlap "
                f"each side); {stream_bundle_hint(m)}"
            )
        self._buf = np.zeros((len(m.leads), 0), np.float32)
        self._base = 0  # record sample of _buf[:, 0]: the last window's start
        self._next = 0  # record sample where the next window starts
        self._frames = 0  # frames given so far
        self.samples = 0

    def push(self, x: np.ndarray) -> np.ndarray:
        self._buf = np.concatenate([self._buf, x], axis=1)
        self.samples += x.shape[1]
        out = []
        # a window ends before the record's last whole frame: it is not the last window
        while self._next + self.window + self.reduction <= self.samples:
            out.append(self._take(self._next, self._next + self.window - self.halo))
        return self._cat(out)

    def flush(self) -> np.ndarray:
        """The record's last frames (the last window ends at its last whole frame)."""
        end = self.samples // self.reduction * self.reduction
        if end < self.window:
            m = self.manifest
            raise DeployError(
                f"record of {self.samples} samples ({self.samples / m.fs:g} s at {m.fs} Hz); "
                f"this window bundle takes {self.window} samples or more; " + stream_bundle_hint(m)
            )
        out = []
        while self._next + self.window < end:
            out.append(self._take(self._next, self._next + self.window - self.halo))
        out.append(self._take(end - self.window, end))
        return self._cat(out)

    def _take(self, start: int, stop: int) -> np.ndarray:
        """The frames of the window at `start` from the next one owed up to `stop`; the
        samples before it are let go (the last window starts after the one before it)."""
        self._buf = self._buf[:, start - self._base :]
        self._base, self._next = start, start + self.step
        x = np.ascontiguousarray(self._buf[None, :, : self.window])
        frames = self.predictor(x)[0].T  # (classes, window frames)
        first = self._frames - start // self.reduction
        out = frames[:, first : stop // self.reduction - start // self.reduction]
        self._frames += out.shape[1]
        return out

    def _cat(self, parts: list[np.ndarray]) -> np.ndarray:
        channels = self.manifest.output.shape[2]
        return np.concatenate(parts, axis=1) if parts else np.zeros((channels, 0), np.float32)


@dataclass(frozen=True)
class Span:
    """Samples [start, stop) of a record's first lead, kept as they streamed past."""

    start: int
    stop: int
    signal: np.ndarray


class _Segment:
    """One stretch of a record between gaps (or the whole record): its resampler, frames
    and R-peak rule from a fresh start, as a record of its own."""

    def __init__(self, model, m: Manifest, pair, start: int) -> None:
        self.model, self.pair, self.start = model, pair, start
        self.resampler = Resampler(pair.fs_in, pair.fs_out) if pair else None
        self.beats = BeatStream(m.detect)
        self.found: list[int] = []
        self.seen = self.inner = 0  # samples of the record, and at the bundle's rate

    def push(self, chunk: np.ndarray) -> None:
        x = self.resampler.push(chunk) if self.resampler else chunk
        self.inner += x.shape[1]
        self.seen += chunk.shape[1]
        self.found += self.beats.push(self.model.push(x)[0])

    def end(self) -> np.ndarray:
        """The segment's beats at the bundle's rate, its own clock (the model restarts)."""
        if self.resampler and self.seen:
            tail = self.resampler.flush()
            self.inner += tail.shape[1]
            self.found += self.beats.push(self.model.push(tail)[0])
        if self.seen:
            self.found += self.beats.push(self.model.flush()[0]) + self.beats.flush(self.inner)
        return np.asarray(self.found, np.int64)

    def in_record(self, at_rate: np.ndarray) -> np.ndarray:
        """Beats at the bundle's rate as samples of the record (nearest, in the segment)."""
        if self.pair is None:
            return at_rate + self.start
        return np.minimum(self.pair.to_input_clock(at_rate), self.seen - 1) + self.start


def detect_chunks(
    bundle: Bundle,
    chunks: Iterable[np.ndarray],
    fs: int | None = None,
    leads: tuple[str, ...] = (),
    keep: tuple[int, int] | None = None,
) -> tuple[Detection, Span | None]:
    """Beats of a record given as chunks (leads, n) of float mV at `fs` Hz (None: the
    bundle's, assumed): the manifest's R-peak rule in the record's own clock, and the
    samples `keep` = [start, stop) of its first lead (for a plot), if asked. A NaN run is
    a gap (records.gap_mask): each segment between gaps is detected alone, as
    detect.detect does, and no heart-rate interval crosses a gap; a window bundle, which
    takes whole windows, refuses a record with one, naming the stream bundle."""
    m = bundle.manifest
    if m.detect is None:
        raise DeployError(
            f"bundle {bundle.name} is a {m.model.task} model, not an R-peak detector "
            "(its manifest has no detection rule)"
        )
    pair = rate_pair(fs, m.fs) if fs is not None and fs != m.fs else None
    model = _frames_of(bundle)
    segment, done, gaps, kept, seen = _Segment(model, m, pair, 0), [], [], [], 0
    for chunk in chunks:
        check_mv_or_gap(chunk, "record", first=seen, leads=leads)
        if keep is not None and seen < keep[1] and seen + chunk.shape[1] > keep[0]:
            kept.append(chunk[0, max(0, keep[0] - seen) : keep[1] - seen])
        for piece in split_gaps(chunk, seen):
            if isinstance(piece, np.ndarray):
                segment.push(piece)
                continue
            _refuse_window_gap(m, piece)
            if gaps and gaps[-1].start + gaps[-1].samples == piece.start:  # one run, 2 chunks
                piece = Gap(gaps[-1].start, gaps[-1].samples + piece.samples)
                gaps.pop()
            else:
                done.append(segment.in_record(segment.end()))
            gaps.append(piece)
            segment = _Segment(model, m, pair, piece.start + piece.samples)
        seen += chunk.shape[1]
    if seen == 0:
        raise DeployError("record: no samples")
    at_rate = segment.end()
    done.append(segment.in_record(at_rate))
    beats = np.concatenate(done)
    if gaps:
        fs_record = pair.fs_in if pair else m.fs
        rate = heart_rate_bpm(beats, fs_record, [g.start for g in gaps])
    else:
        rate = heart_rate_bpm(at_rate, m.detect.fs)
    fs_input = pair.fs_in if pair else None
    detection = Detection(beats, rate, m.detect.fs, seen, fs is None, fs_input, tuple(gaps))
    span = None
    if keep is not None:
        signal = np.concatenate(kept) if kept else np.zeros(0, np.float32)
        span = Span(keep[0], keep[0] + len(signal), signal)
    return detection, span


def _refuse_window_gap(m: Manifest, gap: Gap) -> None:
    if m.stream is None:
        raise DeployError(
            f"record holds a gap (NaN from sample {gap.start}, {gap.samples} samples); a "
            "window bundle takes "
            "whole windows of samples, while a stream bundle reads NaN runs as sensor "
            "gaps: " + stream_bundle_hint(m)
        )


def _frames_of(bundle: Bundle):
    """What turns a bundle's input into frames chunk by chunk: its stream, or windows."""
    if bundle.manifest.stream is not None:
        from .stream import open_stream

        return open_stream(bundle)
    return WindowStream(Predictor(bundle))
