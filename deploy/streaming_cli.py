"""`deploy stream`: a record in (raw float32 samples from a file or stdin, or a .npy file),
frames or beats out as the stream completes them.

Raw input is checked before it is believed (deploy/records.py): a stream that starts like
a .npy, a zip or a text file is refused, a file that starts like a .npy is read as one,
and a sample no ECG in mV holds stops the stream, naming its index and value. Memory stays
bounded whatever a raw stream's length; a .npy is read whole (files.MAX_NPY_BYTES at most).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bundle import Bundle, load_bundle
from .detect import BeatStream, Detection, as_record
from .errors import DeployError
from .files import open_regular, read_npy_fd, show
from .input_rate import InputRate
from .records import SNIFF_BYTES, Gap, check_mv_or_gap, is_npy, refuse_foreign, split_gaps
from .rpeaks import RPeakRule, heart_rate_bpm
from .stream import Stream, open_stream


@dataclass
class StreamRun:
    """One record streamed through a stream bundle: `lines` as they complete, or the
    whole record's `detection` at its end; `samples` counts the samples streamed."""

    bundle: Bundle
    stream: Stream
    source: Path
    chunk: int
    fs_assumed: bool  # no --fs: the bundle's rate is taken (detect.rate_note)
    rate: InputRate  # the record's rate: resampled to the bundle's on the way in
    samples: int = 0
    _leftover: list[int] = field(default_factory=list, init=False, repr=False)
    _last_segment: int = field(default=0, init=False, repr=False)  # samples, at the end
    _segments: list[Segment] = field(default_factory=lambda: [Segment(0, 0)], init=False)
    _chunks: Iterator[np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        """Look at the input now (a .npy read, a raw stream's first bytes checked), so
        that a foreign input is refused before anything is printed."""
        chunks = self._read()
        first = next(chunks, None)
        if first is None:
            leads = len(self.bundle.leads)
            part = f" ({self._leftover[0]} byte(s))" if self._leftover else ""
            raise DeployError(
                f"{self._where} holds no samples{part}; one sample is {4 * leads} bytes "
                f"({leads} lead(s) of float32): give a record, raw float32 mV or a .npy file"
            )
        self._chunks = itertools.chain([first], chunks)

    @property
    def fs(self) -> int:
        return self.bundle.manifest.fs

    def lines(self, detect: bool) -> Iterator[str]:
        """`frame <index> <values...>`, or with `detect` `beat <sample> <seconds>` (in the
        record's clock; frames are the model's, at the bundle's rate); and `gap <start>
        <samples>` for each NaN run once it has ended, in order. Frame indices count the
        frames printed: after a gap the next segment's frames follow."""
        if detect:
            for event in self.beats():
                gap = isinstance(event, Gap)
                yield (
                    f"gap {event.start} {event.samples}" if gap else _beat_line(event, self.rate.fs)
                )
            return
        index = 0
        for event in self._frames():
            if isinstance(event, Gap):
                yield f"gap {event.start} {event.samples}"
                continue
            for column in event.T if isinstance(event, np.ndarray) else ():
                yield f"frame {index} " + " ".join(f"{v:.6g}" for v in column)
                index += 1
        self._check_end()

    def beats(self) -> Iterator[int | Gap]:
        """R-peaks (the record's sample indices) as they become final, by the manifest's
        rule, and each gap (a Gap) once it has ended; the rule restarts at every gap."""
        for event in self._events():
            yield event if isinstance(event, Gap) else self._to_record(event)

    def _events(self) -> Iterator[int | Gap]:
        """R-peaks at the bundle's rate (the model's clock) and the gaps (the record's)."""
        beats = BeatStream(_rule(self.bundle))
        for event in self._frames():
            if isinstance(event, np.ndarray):
                yield from beats.push(event[0])
            elif isinstance(event, Cut):
                yield from beats.gap(event.gap, event.segment)
            else:
                yield event
        yield from beats.flush(self._last_segment)
        self._check_end()

    def detection(self) -> Detection:
        """The whole record's beats, gaps and heart rate, as `deploy detect` gives them."""
        events = list(self._events())
        gaps = tuple(e for e in events if isinstance(e, Gap))
        found = np.array([e for e in events if not isinstance(e, Gap)], np.int64)
        beats = np.array([self._to_record(b) for b in found], np.int64)
        fs = self.bundle.manifest.detect.fs
        if gaps:  # as detect() does: intervals in the record's clock, none across a gap
            rate = heart_rate_bpm(beats, self.rate.fs, [g.start for g in gaps])
        else:
            rate = heart_rate_bpm(found, fs)
        fs_input = self.rate.fs if self.rate.resampled else None
        return Detection(beats, rate, fs, self.samples, self.fs_assumed, fs_input, gaps)

    def _to_record(self, beat: int) -> int:
        """A beat in the model's clock as a sample of the record: in its segment, taken
        back through the resampler's ratio (nearest, at most the segment's last sample,
        or the last one received while the segment goes on)."""
        seg = next(s for s in reversed(self._segments) if s.model_start <= beat)
        received = seg.record_samples
        received = self.samples - seg.record_start if received is None else received
        return seg.record_start + int(self.rate.to_record([beat - seg.model_start], received)[0])

    def _frames(self) -> Iterator[np.ndarray | Cut | Gap]:
        """The stream's frames as they complete; at a NaN run's first sample a Cut (the
        segment before it ended, its last frames first), and the run as one Gap once it
        has ended (runs cut by chunk boundaries joined). Each segment is resampled alone,
        as deploy detect does; `_segments` says where each starts in both clocks."""
        stream, open_gap, leads = self.stream, None, len(self.bundle.leads)
        for piece in self._records():
            if isinstance(piece, Gap):
                yield stream.push(self.rate.flush(leads))  # the segment's resampled tail
                self.rate.restart()
                segment = stream.samples - stream.start
                gap = self.rate.model_samples(piece.samples)
                yield stream.gap(gap)
                yield Cut(segment, gap)
                self._segments[-1] = self._segments[-1].ended(piece.start)
                self._segments.append(Segment(stream.start, piece.start + piece.samples))
                if open_gap is not None:  # the run went on past a chunk's end
                    piece = Gap(open_gap.start, open_gap.samples + piece.samples)
                open_gap = piece
                continue
            if open_gap is not None:
                yield open_gap
                open_gap = None
            yield stream.push(self.rate.push(piece))
        yield stream.push(self.rate.flush(leads))
        self._segments[-1] = self._segments[-1].ended(self.samples)
        self._last_segment = stream.samples - stream.start
        yield stream.flush()
        if open_gap is not None:
            yield open_gap

    def _check_end(self) -> None:
        """After the output of every whole sample: a stream cut inside a sample."""
        if self._leftover:
            leads = len(self.bundle.leads)
            raise DeployError(
                f"{self._where}: the stream ended {self._leftover[0]} byte(s) into a "
                f"sample ({4 * leads} bytes: {leads} lead(s) of float32); the "
                "samples before it were streamed and their output written"
            )

    def _records(self) -> Iterator[np.ndarray | Gap]:
        """The input's (leads, n) float32 chunks, each checked as mV before it is streamed,
        split at NaN runs (records.split_gaps: a sample with NaN on any lead is a gap)."""
        for x in self._chunks:
            try:
                check_mv_or_gap(x, self._where, self.samples, self.bundle.leads)
            except DeployError as exc:
                done = "; the samples before it were streamed" if self.samples else ""
                raise DeployError(f"{exc}{done}") from None
            first, self.samples = self.samples, self.samples + x.shape[1]
            yield from split_gaps(x, first)

    @property
    def _where(self) -> str:
        return "stdin" if str(self.source) == "-" else show(self.source)

    def _read(self) -> Iterator[np.ndarray]:
        stdin = str(self.source) == "-"
        fd = sys.stdin.buffer.fileno() if stdin else open_regular(self.source)
        try:
            if not stdin and is_npy(fd):
                yield from self._npy_chunks(read_npy_fd(fd, self._where), self._where)
            else:
                leads = len(self.bundle.leads)
                yield from _raw_chunks(fd, self._where, leads, self.chunk, self._leftover)
        finally:
            if not stdin:
                os.close(fd)

    def _npy_chunks(self, record: np.ndarray, where: str) -> Iterator[np.ndarray]:
        try:
            x = as_record(self.bundle, record)
        except DeployError as exc:
            raise DeployError(f"{where}: {exc}") from None
        check_mv_or_gap(x, where, 0, self.bundle.leads)  # the whole file, before any output
        for at in range(0, x.shape[1], self.chunk):
            yield x[:, at : at + self.chunk]


def open_run(
    bundle_path: Path,
    source: Path,
    fs: int | None = None,
    chunk: int | None = None,
    detect: bool = False,
) -> StreamRun:
    """A stream bundle opened for one record from `source` (a path, or - for stdin); a
    given `fs` other than the bundle's is resampled to it, none is assumed to be the
    bundle's and says so (`fs_assumed`). `detect`: the bundle must be an R-peak detector."""
    bundle = load_bundle(bundle_path)
    stream = open_stream(bundle)
    if detect:
        _rule(bundle)
    rate = InputRate(fs, bundle.manifest.fs)
    chunk = chunk or bundle.manifest.stream.hop
    return StreamRun(bundle, stream, source, chunk, fs is None, rate)


@dataclass(frozen=True)
class Cut:
    """The segment of `segment` samples before a gap of `gap` samples has ended."""

    segment: int
    gap: int


@dataclass(frozen=True)
class Segment:
    """Where a segment between gaps starts in the model's clock and in the record's, and
    (once known) how many record samples it holds."""

    model_start: int
    record_start: int
    record_samples: int | None = None

    def ended(self, record_end: int) -> Segment:
        return dataclasses.replace(self, record_samples=record_end - self.record_start)


def _beat_line(sample: int, fs: int) -> str:
    return f"beat {sample} {sample / fs:.3f}"


def _rule(bundle: Bundle) -> RPeakRule:
    if bundle.manifest.detect is None:
        raise DeployError(f"--detect: bundle {bundle.name} is not an R-peak detector")
    return bundle.manifest.detect


def _raw_chunks(
    fd: int, where: str, leads: int, samples: int, leftover: list
) -> Iterator[np.ndarray]:
    """(leads, n) float32 chunks of an interleaved raw stream, refused up front when its
    first bytes are not raw samples; a stream that ends mid-sample is an error naming the
    leftover bytes, after the whole samples before it."""
    frame = 4 * leads
    head = b""
    while len(head) < SNIFF_BYTES and (data := os.read(fd, SNIFF_BYTES - len(head))):
        head += data  # a pipe may hand over a few bytes at a time
    refuse_foreign(head, where)
    rest, data = b"", head
    while data:
        data = rest + data
        whole = len(data) // frame * frame
        rest = data[whole:]
        if whole:
            yield np.frombuffer(data[:whole], "<f4").reshape(-1, leads).T.copy()
        data = os.read(fd, samples * frame)
    if rest:  # the whole samples before it are streamed and flushed first
        leftover.append(len(rest))
