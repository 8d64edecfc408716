"""`deploy stream`: a record in (raw float32 samples from a file or stdin, or a .npy file),
frames or beats out as the stream completes them.

Raw input is checked before it is believed (deploy/records.py): a stream that starts like
a .npy, a zip or a text file is refused, a file that starts like a .npy is read as one,
and a sample no ECG in mV holds stops the stream, naming its index and value. Memory stays
bounded whatever a raw stream's length; a .npy is read whole (files.MAX_NPY_BYTES at most).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bundle import Bundle, load_bundle
from .detect import BeatStream, Detection, as_record, check_rate
from .errors import DeployError
from .files import open_regular, read_npy_fd, show
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
    samples: int = 0
    _leftover: list[int] = field(default_factory=list, init=False, repr=False)
    _last_segment: int = field(default=0, init=False, repr=False)  # samples, at the end
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
        """`frame <index> <values...>`, or with `detect` `beat <sample> <seconds>`; and
        `gap <start> <samples>` for each NaN run once it has ended, in order. Frame
        indices count the frames printed: after a gap the next segment's frames follow."""
        if detect:
            for event in self.beats():
                gap = isinstance(event, Gap)
                yield f"gap {event.start} {event.samples}" if gap else _beat_line(event, self.fs)
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
        """R-peaks (sample indices) as they become final, by the manifest's rule, and each
        gap (a Gap) once it has ended; the rule restarts at every gap."""
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
        events = list(self.beats())
        gaps = tuple(e for e in events if isinstance(e, Gap))
        found = np.array([e for e in events if not isinstance(e, Gap)], np.int64)
        fs = self.bundle.manifest.detect.fs
        rate = heart_rate_bpm(found, fs, [g.start for g in gaps])
        return Detection(found, rate, fs, self.samples, self.fs_assumed, gaps=gaps)

    def _frames(self) -> Iterator[np.ndarray | Cut | Gap]:
        """The stream's frames as they complete; at a NaN run's first sample a Cut (the
        segment before it ended: its last frames came first), and the run as one Gap once
        it has ended (runs cut by chunk boundaries joined)."""
        stream, open_gap = self.stream, None
        for piece in self._records():
            if isinstance(piece, Gap):
                segment = stream.samples - stream.start
                yield stream.gap(piece.samples)
                yield Cut(segment, piece.samples)
                if open_gap is not None:  # the run went on past a chunk's end
                    piece = Gap(open_gap.start, open_gap.samples + piece.samples)
                open_gap = piece
                continue
            if open_gap is not None:
                yield open_gap
                open_gap = None
            yield stream.push(piece)
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
    given `fs` must be the bundle's, none is assumed to be and says so (`fs_assumed`).
    `detect`: the bundle must be an R-peak detector."""
    bundle = load_bundle(bundle_path)
    stream = open_stream(bundle)
    if detect:
        _rule(bundle)
    assumed = check_rate(bundle.manifest, fs)
    return StreamRun(bundle, stream, source, chunk or bundle.manifest.stream.hop, assumed)


@dataclass(frozen=True)
class Cut:
    """The segment of `segment` samples before a gap of `gap` samples has ended."""

    segment: int
    gap: int


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
