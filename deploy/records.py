"""ECG records from outside (a .npy file, or raw float32 samples from a file or stdin),
checked before anything believes them.

Any bytes read as float32 are numbers. A .npy file's 128-byte header read as raw samples
is 32 absurd values followed by the record shifted by 32 samples, and the detector still
answers, confidently. So the first bytes of a raw stream are looked at before its samples
are used (`refuse_foreign`: a .npy header, a zip such as .npz, a line of text), a file
that starts like a .npy is read as one (`open_record`), and every sample must be a value
an ECG in mV can hold (`check_mv`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DeployError
from .files import map_npy_fd, open_regular, read_npy_fd, show

# |x| above this many mV is not an ECG: microvolts, ADC counts or bytes that are no signal
# (an ECG spans a few mV; 1e4 leaves room for any gain error, not for a unit error). The
# C++ runner refuses the same samples.
MAX_ABS_MV = 1e4
SNIFF_BYTES = 64  # enough to tell a .npy, a zip or a text line from raw float32
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
_UTF8_BOM = b"\xef\xbb\xbf"
_TEXT = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}  # printable ASCII, tab, CR, LF


def foreign_format(head: bytes) -> str | None:
    """What a would-be raw float32 stream is, from its first bytes: "npy", "zip", "text",
    or None for raw samples.

    Text is a head of printable ASCII only (with tabs and newlines): raw float32 ECG holds
    bytes outside it in nearly every sample (zeros, mantissa bytes >= 0x80), so 64 bytes of
    text by chance do not happen; a text file's first line is that by definition."""
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(ZIP_MAGIC):
        return "zip"
    body = head.removeprefix(_UTF8_BOM)
    if body.strip() and set(body) <= _TEXT:
        return "text"
    return None


def refuse_foreign(head: bytes, where: str) -> None:
    """A DeployError when `head`, the first bytes of a raw float32 stream, says it is
    something else; the message says what was found and how to give it instead."""
    kind = foreign_format(head)
    if kind == "npy":
        raise DeployError(
            f"{where} starts with a .npy header (\\x93NUMPY), not raw float32 samples: "
            "give the file as --input FILE.npy (read as .npy), or send raw samples, "
            "e.g. np.load('rec.npy').astype('<f4').tofile('rec.f32')"
        )
    if kind == "zip":
        raise DeployError(
            f"{where} is a zip archive such as .npz (it starts with PK\\x03\\x04), not ECG "
            "samples (raw float32 or .npy): save one record of it as .npy, e.g. "
            "np.save('rec.npy', np.load('x.npz')['ecg_mv'][0]), and give --input rec.npy"
        )
    if kind == "text":
        line = head.removeprefix(_UTF8_BOM).split(b"\n")[0].strip().decode("ascii")
        shown = show(line[:48]) + ("..." if len(line) > 48 else "")
        raise DeployError(
            f"{where} starts with a line of text ('{shown}'), such as a WFDB header (.hea) "
            "or CSV, not ECG samples (raw float32 or .npy): convert the signal first, e.g. "
            "np.save('rec.npy', np.loadtxt('rec.csv', delimiter=',', dtype='<f4')) or, "
            "for WFDB, wfdb.rdrecord('rec').p_signal.T.astype('<f4'), and give --input rec.npy"
        )


def check_mv(x: np.ndarray, where: str, first: int = 0, leads: Sequence[str] = ()) -> None:
    """Refuse the first sample no ECG in mV holds: NaN, Inf, or |x| > MAX_ABS_MV.

    `x` is (leads, n), its column 0 sample `first` of the record, so the message names the
    record's own sample index (not the chunk's) and the value found there."""
    values = x if x.dtype.kind == "f" else x.astype(np.float64)
    finite = np.isfinite(values)
    bad = ~finite | (np.abs(np.where(finite, values, 0)) > MAX_ABS_MV)
    if not bad.any():
        return
    k, lead = (int(i) for i in np.argwhere(bad.T)[0])  # the earliest sample, then lead
    name = f" (lead {leads[lead]})" if leads else f" (lead {lead})" if x.shape[0] > 1 else ""
    value = float(values[lead, k])
    if not finite[lead, k]:
        why = "NaN or Inf is no ECG sample: clean or interpolate the record"
    else:
        why = (
            f"not an ECG in mV (|x| <= {MAX_ABS_MV:g}); microvolts or ADC counts? divide "
            "by the gain to give mV"
        )
    raise DeployError(f"{where}: sample {first + k}{name} is {value:g}; {why}")


@dataclass(frozen=True)
class Gap:
    """A gap in a record: `samples` samples from sample `start` (the record's clock) that
    the sensor did not give (lead-off: NaN in the file, or a gap the caller declared)."""

    start: int
    samples: int

    def to_json(self, fs: int) -> dict:
        return {"start": self.start, "samples": self.samples, "seconds": self.samples / fs}


def gap_mask(x: np.ndarray) -> np.ndarray:
    """(n,) bool: the samples of a (leads, n) record that are gaps. A sample with NaN on
    any lead is one: the model needs every lead, so one lead off is no sample either."""
    if x.dtype.kind != "f":
        return np.zeros(x.shape[-1], bool)
    return np.isnan(x).any(axis=0)


def split_gaps(x: np.ndarray, first: int = 0) -> Iterator[np.ndarray | Gap]:
    """A (leads, n) chunk, column 0 the record's sample `first`, as its runs in order: the
    samples between gaps as (leads, k) arrays, each run of NaN samples as a Gap."""
    gap = gap_mask(x)
    edges = np.flatnonzero(np.diff(gap.view(np.int8))) + 1
    for a, b in zip([0, *edges.tolist()], [*edges.tolist(), len(gap)], strict=True):
        yield Gap(first + a, b - a) if gap[a] else x[:, a:b]


def check_mv_or_gap(x: np.ndarray, where: str, first: int = 0, leads: Sequence[str] = ()) -> None:
    """check_mv on the samples that are not gaps (gap_mask): NaN marks a gap, while Inf
    and values no ECG in mV holds are refused as before."""
    gap = gap_mask(x)
    if gap.any():
        x = x.copy()
        x[:, gap] = 0
    check_mv(x, where, first, leads)


def is_npy(fd: int) -> bool:
    """Whether the file behind `fd` starts with the .npy magic (read at offset 0)."""
    return os.pread(fd, len(NPY_MAGIC), 0) == NPY_MAGIC


def read_record(path: str | Path, mapped: bool = False) -> np.ndarray:
    """A .npy record file, read without pickles; a .npz or a text file given instead is
    refused saying what it is and how to convert it (numpy's own error says less).
    `mapped`: a read-only view of the mapped file instead of a copy in memory."""
    fd = open_regular(path)
    try:
        head = os.pread(fd, SNIFF_BYTES, 0)
        if not head.startswith(NPY_MAGIC):
            refuse_foreign(head, show(path))
            raise DeployError(
                f"{show(path)} is not a .npy file (it starts with {show(repr(head[:8]))}): "
                "save the record with np.save, or stream raw float32 samples with "
                "`python -m deploy stream BUNDLE --input FILE --detect`"
            )
        return (map_npy_fd if mapped else read_npy_fd)(fd, show(path))
    finally:
        os.close(fd)
