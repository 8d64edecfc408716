"""The real ECG the project trains, evaluates and checks on: two 50-record samples.

The records live outside the repository (`<repo>/../shared/data`, or the folder named by
the environment variable MSCNN_DATA) and are read at run time, never copied in. Both files
are `.npz` archives read without pickle; everything loaded is checked (shapes, dtypes,
sampling rate, peak indices inside their record) so that a truncated or foreign file fails
here with its name, not later as a shape error deep inside training.

- `cpsc2019_records()`: 1-lead ECG (mV) with reference R-peaks (CPSC2019, QRS detection).
- `cinc2021_records()`: 12-lead ECG (mV) with SNOMED CT diagnoses (CinC 2021, Georgia).
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path
from typing import NamedTuple, NoReturn

import numpy as np

from .errors import MscnnError

ENV_VAR = "MSCNN_DATA"
FS = 500
SAMPLES = 5000  # 10 s at 500 Hz
CPSC2019_FILE = "cpsc2019_sample.npz"
CINC2021_FILE = "cinc2021_sample.npz"
_MAX_BYTES = 64 * 2**20  # both files are ~1 MB; anything far larger is not ours


class Cpsc2019Records(NamedTuple):
    """CPSC2019 sample: `signals` (records, samples) float32 mV, `r_peaks[i]` the sorted
    int64 sample indices of record i's reference R-peaks."""

    signals: np.ndarray
    r_peaks: list[np.ndarray]
    names: list[str]
    fs: int


class Cinc2021Records(NamedTuple):
    """CinC 2021 sample: `signals` (records, 12, samples) float32 mV in `leads` order,
    `dx[i]` record i's SNOMED CT diagnosis codes."""

    signals: np.ndarray
    leads: list[str]
    names: list[str]
    dx: list[tuple[str, ...]]
    fs: int


def data_dir() -> Path:
    """Where the records are: $MSCNN_DATA if set, else `<repo>/../shared/data`."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def cpsc2019_records() -> Cpsc2019Records:
    """The 50 CPSC2019 records and their R-peaks, checked."""
    path, arrays = _load(CPSC2019_FILE, ("ecg_mv", "records", "r_peaks", "r_peak_offsets", "fs"))
    fs = _fs(path, arrays["fs"])
    signals = _float_signals(path, "ecg_mv", arrays["ecg_mv"], ndim=2)
    n = signals.shape[0]
    names = _names(path, arrays["records"], n)
    peaks, offsets = arrays["r_peaks"], arrays["r_peak_offsets"]
    if peaks.ndim != 1 or peaks.dtype.kind not in "iu":
        _bad(path, f"r_peaks has shape {peaks.shape} dtype {peaks.dtype}, expected 1-D integers")
    if offsets.shape != (n + 1,) or offsets.dtype.kind not in "iu":
        _bad(path, f"r_peak_offsets has shape {offsets.shape}, expected ({n + 1},) integers")
    if offsets[0] != 0 or offsets[-1] != len(peaks) or (np.diff(offsets) < 0).any():
        _bad(path, "r_peak_offsets must rise from 0 to len(r_peaks)")
    r_peaks = [peaks[offsets[i] : offsets[i + 1]].astype(np.int64) for i in range(n)]
    for name, p in zip(names, r_peaks, strict=True):
        if len(p) and (p[0] < 0 or p[-1] >= signals.shape[1] or (np.diff(p) <= 0).any()):
            _bad(path, f"record {name}: R-peaks not strictly rising inside the record")
    return Cpsc2019Records(signals, r_peaks, names, fs)


def cinc2021_records() -> Cinc2021Records:
    """The 50 CinC 2021 12-lead records (ADC counts converted to mV) and diagnoses, checked."""
    path, arrays = _load(
        CINC2021_FILE, ("adc", "adc_per_mv", "leads", "records", "dx_snomed", "fs")
    )
    fs = _fs(path, arrays["fs"])
    adc, gain = arrays["adc"], arrays["adc_per_mv"]
    if adc.ndim != 3 or adc.shape[1:] != (12, SAMPLES) or adc.dtype.kind not in "iu":
        _bad(
            path,
            f"adc has shape {adc.shape} dtype {adc.dtype}, expected (records, 12, "
            f"{SAMPLES}) integers",
        )
    if gain.shape != () or not np.isfinite(gain) or gain <= 0:
        _bad(path, f"adc_per_mv is {gain!r}, expected one positive number")
    signals = (adc.astype(np.float32) / np.float32(gain)).astype(np.float32)
    n = signals.shape[0]
    leads = _names(path, arrays["leads"], 12, what="leads")
    names = _names(path, arrays["records"], n)
    dx = [tuple(c for c in str(s).split(",") if c) for s in _names(path, arrays["dx_snomed"], n)]
    return Cinc2021Records(signals, leads, names, dx, fs)


def _load(filename: str, keys: tuple[str, ...]) -> tuple[Path, dict[str, np.ndarray]]:
    folder = data_dir()
    path = folder / filename
    hint = (
        f"set {ENV_VAR} to the folder holding {CPSC2019_FILE} and {CINC2021_FILE} "
        "(the torch_ecg sample-data converted to .npz, see shared/data/README.md)"
    )
    try:
        info = path.stat()
    except OSError:
        raise MscnnError(f"ECG data: no {filename} in {folder}; {hint}") from None
    if not stat.S_ISREG(info.st_mode):
        raise MscnnError(f"ECG data: {path} is not a regular file; {hint}")
    if info.st_size > _MAX_BYTES:
        _bad(path, f"{info.st_size} bytes, more than the {_MAX_BYTES} a 50-record sample takes")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in keys if k not in archive.files]
            if missing:
                _bad(path, f"missing array(s) {', '.join(missing)}")
            return path, {k: archive[k] for k in keys}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, MscnnError):
            raise
        _bad(path, f"not a readable .npz archive ({type(exc).__name__}: {exc})")


def _fs(path: Path, fs: np.ndarray) -> int:
    if fs.shape != () or fs.dtype.kind not in "iu" or int(fs) != FS:
        _bad(path, f"fs is {fs!r}, expected {FS} (Hz)")
    return FS


def _float_signals(path: Path, key: str, x: np.ndarray, ndim: int) -> np.ndarray:
    if x.ndim != ndim or x.shape[-1] != SAMPLES or x.dtype != np.float32 or x.shape[0] == 0:
        _bad(
            path,
            f"{key} has shape {x.shape} dtype {x.dtype}, expected (records, {SAMPLES}) float32",
        )
    if not np.isfinite(x).all():
        _bad(path, f"{key} holds NaN or Inf")
    return np.ascontiguousarray(x)


def _names(path: Path, x: np.ndarray, n: int, what: str = "records") -> list[str]:
    if x.shape != (n,) or x.dtype.kind != "U":
        _bad(path, f"{what} has shape {x.shape} dtype {x.dtype}, expected ({n},) strings")
    return [str(s) for s in x]


def _bad(path: Path, detail: str) -> NoReturn:
    raise MscnnError(f"ECG data {path}: {detail}; restore the file or point {ENV_VAR} elsewhere")
