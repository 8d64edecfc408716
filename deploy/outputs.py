"""What `deploy detect` writes besides its summary: a CSV of beats, WFDB annotations, the
heart rate per minute and a plot of a chosen span.

Every output is planned (`plan_outputs`) before the record is read: a path that cannot be
written, a missing package, a span that makes no sense are refused then, with one line
and nothing written. After the run each file is written beside its destination under a
temporary name created with O_EXCL, then renamed into place, so a failed run leaves
nothing behind and a planted file or symlink is never written through.

- CSV: `sample,seconds,rr_ms`, one beat per row, in the record's own clock; rr_ms is the
  interval from the previous beat (empty for the first).
- WFDB annotations through `wfdb.wrann` (the format of PhysioNet's `.atr` files), symbol
  `N` at each beat's sample in the record's clock, at the record's rate; written as
  `<record>.qrs` by default, beside the reference `.atr` a PhysioNet record has, never
  over it (`bxb -r 100 -a atr qrs` compares them).
- The heart rate of each whole or partial minute: 60 / the mean RR interval ending in it.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DeployError
from .files import show
from .recordings import RECORDS_EXTRA

ANNOTATION_EXTENSION = "qrs"  # a detector's beats, beside a record's reference .atr
MAX_PLOT_SECONDS = 600.0  # a longer span shows no single beat: a long record is a span
DEFAULT_PLOT_SECONDS = 60.0  # without --plot-span: the record's first minute
_WFDB_NAME = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class OutputPlan:
    """Where each output goes, checked before the run (None: not asked for)."""

    csv: Path | None = None  # Path("-"): stdout
    annotations: Path | None = None  # folder/record.extension
    plot: Path | None = None
    span: tuple[float, float] | None = None  # seconds of the record to plot

    def plot_samples(self, fs: int) -> tuple[int, int] | None:
        """The plotted span in the record's samples."""
        if self.plot is None:
            return None
        start, end = self.span or (0.0, DEFAULT_PLOT_SECONDS)
        return round(start * fs), round(end * fs)


def parse_span(text: str) -> tuple[float, float]:
    """`START:END` in seconds, 0 <= START < END, at most MAX_PLOT_SECONDS apart."""
    start, sep, end = text.partition(":")
    try:
        span = float(start), float(end)
    except ValueError:
        span = None
    if not sep or span is None or not all(math.isfinite(v) for v in span):
        raise DeployError(f"--plot-span {show(text)!r}: expected START:END in seconds, e.g. 60:90")
    if not 0 <= span[0] < span[1]:
        raise DeployError(f"--plot-span {show(text)!r}: expected 0 <= START < END")
    if span[1] - span[0] > MAX_PLOT_SECONDS:
        raise DeployError(
            f"--plot-span {show(text)!r}: {span[1] - span[0]:g} s is more than a plot shows "
            f"beat by beat; choose at most {MAX_PLOT_SECONDS:g} s"
        )
    return span


def plan_outputs(
    csv: Path | None, annotations: Path | None, plot: Path | None, span: str | None, record: Path
) -> OutputPlan:
    """Check every output path (and the packages the outputs need) before the run."""
    if span is not None and plot is None:
        raise DeployError("--plot-span goes with --plot FILE.png")
    if csv is not None and str(csv) != "-":
        _check_file(csv, "--csv", "beats.csv")
    if plot is not None:
        _check_file(plot, "--plot", "beats.png")
        _require("matplotlib", "pip install matplotlib==3.11.2", "--plot")
    if annotations is not None:
        annotations = _annotation_path(annotations, record)
        _require("wfdb", f"{RECORDS_EXTRA} (or pip install wfdb==4.3.1)", "--annotations")
    return OutputPlan(csv, annotations, plot, parse_span(span) if span is not None else None)


def _check_file(path: Path, option: str, example: str) -> None:
    if path.is_dir():
        raise DeployError(f"{option} {show(path)} is a folder; give a file name such as {example}")
    if path.exists() and not path.is_file():
        raise DeployError(f"{option} {show(path)} is not a regular file; give a file name")
    folder = path.parent
    if not folder.is_dir():
        raise DeployError(f"{option} {show(path)}: no folder {show(folder)}; create it first")
    if not os.access(folder, os.W_OK):
        raise DeployError(f"{option} {show(path)}: folder {show(folder)} is not writable")


def _annotation_path(path: Path, record: Path) -> Path:
    """folder/record.extension from a folder (the record's name, .qrs) or a file name."""
    if path.is_dir():
        path = path / f"{record.stem}.{ANNOTATION_EXTENSION}"
    elif not path.suffix:
        path = path.with_name(f"{path.name}.{ANNOTATION_EXTENSION}")
    name, extension = path.stem, path.suffix[1:]
    if not _WFDB_NAME.fullmatch(name) or not extension.isalpha() or not extension.isascii():
        raise DeployError(
            f"--annotations {show(path)}: WFDB names a record with letters, digits, - and _ "
            "and its annotations with a letters-only extension; give a name such as "
            f"out/rec100.{ANNOTATION_EXTENSION}"
        )
    _check_file(path, "--annotations", f"out/{name}.{ANNOTATION_EXTENSION}")
    return path


def _require(module: str, install: str, option: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise DeployError(
            f"{option} needs the {module} package, not installed here: {install}"
        ) from None


# --------------------------------------------------------------------------------------
# The outputs


def per_minute_bpm(
    beats: np.ndarray, fs: int, samples: int, breaks: Sequence[int] = ()
) -> list[float | None]:
    """The heart rate of each minute of the record (the last one partial): 60 s over the
    mean RR interval of the beats in that minute (each interval counted in the minute of
    its later beat, none that spans one of the gaps starting at `breaks`); None for a
    minute with no interval."""
    minutes = max(1, -(-samples // (60 * fs)))
    b = np.asarray(beats, np.int64)
    across = np.zeros(max(len(b) - 1, 0), bool)
    for start in breaks:  # an interval from before a gap's start to after it
        across |= (b[:-1] < start) & (b[1:] >= start)
    rr, minute = np.diff(b)[~across], b[1:][~across] // (60 * fs)
    total = np.bincount(minute, weights=rr, minlength=minutes)
    count = np.bincount(minute, minlength=minutes)
    return [round(60.0 * fs * c / t, 1) if c else None for t, c in zip(total, count, strict=True)]


def beats_csv(beats: np.ndarray, fs: int) -> str:
    """`sample,seconds,rr_ms`, one beat per row (rr_ms empty for the first)."""
    b = np.asarray(beats, np.int64)
    rows = ["sample,seconds,rr_ms"]
    rr = np.diff(b) * 1000.0 / fs
    for i, s in enumerate(b.tolist()):
        rows.append(f"{s},{s / fs:.3f},{'' if i == 0 else f'{rr[i - 1]:.1f}'}")
    return "\n".join(rows) + "\n"


def write_text(path: Path, text: str) -> None:
    """Write beside `path` under an O_EXCL temporary name, fsync, rename into place."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except OSError as exc:
        raise DeployError(f"cannot write {show(path)}: {exc.strerror}") from None
    finally:
        Path(temp).unlink(missing_ok=True)


def write_annotations(path: Path, beats: np.ndarray, fs: int) -> bool:
    """WFDB annotations (symbol N) at `beats`; False where there are none to write (a
    WFDB annotation file holds at least one)."""
    import wfdb

    if len(beats) == 0:
        return False
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        samples = np.asarray(beats, np.int64)
        wfdb.wrann(
            path.stem, path.suffix[1:], samples, symbol=["N"] * len(samples), fs=fs,
            write_dir=str(folder),
        )  # fmt: skip
        os.replace(folder / path.name, path)
    except OSError as exc:
        raise DeployError(f"cannot write {show(path)}: {exc.strerror}") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return True
