"""`deploy stream`: raw float32 samples in (a file or stdin), frames or beats out as the
stream completes them. Memory stays bounded whatever the stream's length."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .bundle import load_bundle
from .detect import BeatStream
from .errors import DeployError
from .files import open_regular, show
from .stream import open_stream


def _chunks(source: Path, leads: int, samples: int, leftover: list) -> Iterator[np.ndarray]:
    """(leads, n) float32 chunks of an interleaved raw stream; a stream that ends
    mid-sample is an error naming the leftover bytes, after the whole samples before it."""
    import os

    fd = sys.stdin.buffer.fileno() if str(source) == "-" else open_regular(source)
    frame = 4 * leads
    rest = b""
    try:
        while True:
            data = os.read(fd, samples * frame)
            if not data:
                break
            data = rest + data
            whole = len(data) // frame * frame
            rest = data[whole:]
            if whole:
                yield np.frombuffer(data[:whole], "<f4").reshape(-1, leads).T.copy()
    finally:
        if str(source) != "-":
            os.close(fd)
    if rest:  # the whole samples before it are streamed and flushed first
        leftover.append(len(rest))


def stream_file(
    bundle_path: Path, source: Path, detect: bool, chunk: int | None = None
) -> Iterator[str]:
    """Lines to print: `frame <index> <values...>` or `beat <sample> <seconds>`."""
    bundle = load_bundle(bundle_path)
    stream = open_stream(bundle)
    rule = bundle.manifest.detect
    if detect and rule is None:
        raise DeployError(f"--detect: bundle {bundle.name} is not an R-peak detector")
    beats = BeatStream(rule) if detect else None
    index, fs = 0, bundle.manifest.fs
    leftover: list[int] = []
    leads = len(bundle.leads)
    for chunk_ in _chunks(source, leads, chunk or bundle.manifest.stream.hop, leftover):
        lines, index = _lines(stream.push(chunk_), beats, index, fs, end=False)
        yield from lines
    lines, _ = _lines(stream.flush(), beats, index, fs, end=True)
    yield from lines
    if leftover:
        raise DeployError(
            f"{show(source)}: the stream ended {leftover[0]} byte(s) into a "
            f"sample ({4 * leads} bytes: {leads} lead(s) of float32); the "
            "samples before it were streamed and their output written"
        )


def _lines(
    frames: np.ndarray, beats: BeatStream | None, index: int, fs: int, end: bool
) -> tuple[list[str], int]:
    if beats is not None:
        found = beats.push(frames[0]) + (beats.flush() if end else [])
        return [f"beat {s} {s / fs:.3f}" for s in found], index
    lines = [
        f"frame {index + k} " + " ".join(f"{v:.6g}" for v in column)
        for k, column in enumerate(frames.T)
    ]
    return lines, index + frames.shape[1]
