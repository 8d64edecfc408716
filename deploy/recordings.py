"""Recordings in the formats ECGs come in: WFDB, EDF/BDF, CSV and .npy, as mV samples and
the rate the file states.

WFDB (`.hea` + `.dat`, the `wfdb` package) and EDF/BDF (`pyedflib`) are host-side extras
(`pip install 'mscnn-edge[records]'`); CSV and .npy need numpy only. Units come from the
header (WFDB gain and units, EDF physical dimension) and are converted to mV; CSV and .npy
hold no units and are taken as mV (`records.check_mv` refuses what cannot be). Before
wfdb reads a `.dat`, its size is checked against what the header says it holds: wfdb
reads a truncated file as garbage or fails with a message that names neither file.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DeployError
from .files import release_pages, show
from .records import read_record

RECORDS_EXTRA = "pip install 'mscnn-edge[records]'"
FORMATS = {".hea": "wfdb", ".dat": "wfdb", ".edf": "edf", ".bdf": "edf", ".csv": "csv"}
# mV per unit, by the unit a header names (lower case)
UNITS_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "nv": 1e-6}
# bytes per sample of the WFDB formats whose size follows from the header alone
_WFDB_BYTES = {"8": 1.0, "16": 2.0, "61": 2.0, "80": 1.0, "160": 2.0, "212": 1.5, "24": 3.0,
               "32": 4.0, "310": 4 / 3, "311": 4 / 3}  # fmt: skip


@dataclass(frozen=True)
class Recording:
    """One record's signals in mV and the rate its file states (None: the file holds none)."""

    signals: np.ndarray  # (leads, samples) float32 mV
    leads: tuple[str, ...]
    fs: float | None
    source: str  # the format: wfdb, edf, csv or npy

    def lead(self, lead: str | None) -> Recording:
        """The one lead named (or numbered from 0) by `lead`; None keeps every lead."""
        if lead is None:
            return self
        i = _lead_index(self.leads, lead)
        return Recording(self.signals[i : i + 1], (self.leads[i],), self.fs, self.source)


def read_recording(path: str | Path) -> Recording:
    """A record file, its format by its suffix (.hea/.dat, .edf/.bdf, .csv, else .npy)."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower(), "npy")
    if kind == "wfdb":
        return _read_wfdb(path)
    if kind == "edf":
        return _read_edf(path)
    if kind == "csv":
        return _read_csv(path)
    x = _leads_by_samples(read_record(path), path)
    return Recording(x, tuple(map(str, range(len(x)))), None, "npy")


def _leads_by_samples(x: np.ndarray, path: Path) -> np.ndarray:
    """A .npy record as (leads, samples): (samples,) and (1, leads, samples) reshaped
    (a memory map stays one), any other shape refused."""
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim not in (1, 2) or x.size == 0:
        raise DeployError(
            f"{show(path)}: shape {x.shape}; expected (samples,), (leads, samples) or "
            "(1, leads, samples)"
        )
    return x.reshape(1, -1) if x.ndim == 1 else x


def _need(module: str, pin: str, what: str):
    try:
        return __import__(module)
    except ImportError:
        raise DeployError(
            f"reading {what} needs the {module} package, not installed here: "
            f"{RECORDS_EXTRA} (or pip install {pin})"
        ) from None


def _to_mv(unit: str, where: str) -> float:
    factor = UNITS_MV.get(unit.strip().lower())
    if factor is None:
        raise DeployError(
            f"{where}: unit {show(unit)!r} is not a voltage; known: mV, uV, V "
            "(is this lead an ECG?)"
        )
    return factor


def _read_wfdb(path: Path) -> Recording:
    wfdb = _need("wfdb", "wfdb==4.3.1", "WFDB records")
    name = str(path.with_suffix(""))
    hea = path.with_suffix(".hea")
    if not hea.is_file():
        raise DeployError(f"{show(hea)}: no such WFDB header; give the record's .hea file")
    try:
        header = wfdb.rdheader(name)
    except Exception as exc:  # wfdb raises many kinds for a malformed header
        raise DeployError(
            f"{show(hea)}: not a readable WFDB header ({show(str(exc))[:120]})"
        ) from None
    if not header.n_sig:
        raise DeployError(f"{show(hea)}: the header lists no signals")
    _check_wfdb_sizes(header, path.parent, hea)
    try:
        record = wfdb.rdrecord(name, physical=True)
    except Exception as exc:
        raise DeployError(
            f"{show(hea)}: wfdb cannot read the record ({show(str(exc))[:120]})"
        ) from None
    signals = np.asarray(record.p_signal, dtype=np.float64).T
    units = zip(record.units, record.sig_name, strict=True)
    scale = [_to_mv(u, f"{show(hea)} lead {n}") for u, n in units]
    mv = (signals * np.asarray(scale)[:, None]).astype(np.float32)
    return Recording(mv, tuple(record.sig_name), float(record.fs), "wfdb")


def _check_wfdb_sizes(header, folder: Path, hea: Path) -> None:
    """Each .dat holds exactly the bytes its header's signals need: fewer is a truncated
    file, more a header that does not describe its data."""
    per_file: dict[str, float] = {}
    offsets: dict[str, int] = {}
    for i, file_name in enumerate(header.file_name):
        width = _WFDB_BYTES.get(str(header.fmt[i]))
        if width is None or header.sig_len is None:
            return  # a compressed or headerless-length format: wfdb checks it
        spf = (header.samps_per_frame or [1] * header.n_sig)[i] or 1
        per_file[file_name] = per_file.get(file_name, 0.0) + width * spf
        offsets[file_name] = (header.byte_offset or [None] * header.n_sig)[i] or 0
    for file_name, frame_bytes in per_file.items():
        dat = folder / file_name
        try:
            size = os.stat(dat).st_size
        except OSError as exc:
            raise DeployError(f"{show(dat)} (named by {show(hea)}): {exc.strerror}") from None
        want = offsets[file_name] + int(np.ceil(header.sig_len * frame_bytes))
        if size < want:
            raise DeployError(
                f"{show(dat)} is truncated: {show(hea)} says {header.sig_len} samples "
                f"({want} bytes), the file has {size} bytes; copy the record again"
            )
        if size > want + 1:  # format 212/310 pad to a whole byte pair
            raise DeployError(
                f"{show(hea)} disagrees with its data: {header.sig_len} samples of "
                f"{', '.join(header.sig_name)} need {want} bytes, {show(dat)} has {size}; "
                "the header belongs to another .dat (check its signal count, format "
                "and length)"
            )


def _read_edf(path: Path) -> Recording:
    pyedflib = _need("pyedflib", "pyedflib==0.1.42", "EDF/BDF records")
    leads, rate, length, scale = _read_edf_header(pyedflib, path)
    reader = pyedflib.EdfReader(str(path))
    try:
        signals = np.stack([reader.readSignal(i)[:length] * scale[i] for i in range(len(leads))])
    finally:
        reader.close()
    return Recording(signals.astype(np.float32), leads, rate, "edf")


def _read_csv(path: Path) -> Recording:
    try:
        with open(path, encoding="utf-8-sig") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise DeployError(f"{show(path)}: cannot read as text CSV ({exc})") from None
    fields = [c.strip() for c in first.split(",")]
    header = not all(_is_number(c) for c in fields)
    try:
        table = np.loadtxt(
            path, delimiter=",", skiprows=int(header), dtype=np.float64, ndmin=2,
            encoding="utf-8-sig",
        )  # fmt: skip
    except ValueError as exc:
        raise DeployError(
            f"{show(path)}: not a CSV of numbers, one column per lead "
            f"({show(str(exc).splitlines()[0])[:120]})"
        ) from None
    if table.size == 0:
        raise DeployError(f"{show(path)}: no samples")
    leads = tuple(fields) if header else tuple(map(str, range(table.shape[1])))
    if len(leads) != table.shape[1]:
        raise DeployError(
            f"{show(path)}: the header names {len(leads)} columns, the rows hold {table.shape[1]}"
        )
    return Recording(table.T.astype(np.float32), leads, None, "csv")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def select_leads(rec: Recording, lead: str | None, wanted: tuple[str, ...]) -> Recording:
    """The leads a bundle taking `wanted` gets (lead_rows' choice)."""
    rows = lead_rows(rec.leads, lead, wanted)
    if rows == list(range(len(rec.leads))):
        return rec
    return Recording(rec.signals[rows], tuple(rec.leads[i] for i in rows), rec.fs, rec.source)


def lead_rows(leads: tuple[str, ...], lead: str | None, wanted: tuple[str, ...]) -> list[int]:
    """The rows a bundle taking `wanted` gets: the one `lead` names, else every row when
    the lead count fits, else the bundle's leads by name; else a DeployError that lists
    the record's leads and asks for --lead."""
    if lead is not None:
        return [_lead_index(leads, lead)]
    if len(leads) == len(wanted):
        return list(range(len(leads)))
    if set(wanted) <= set(leads):
        return [leads.index(name) for name in wanted]
    raise DeployError(
        f"the record has {len(leads)} leads ({', '.join(show(n) for n in leads)}); "
        f"this bundle takes {len(wanted)} ({', '.join(wanted)}): choose one with --lead "
        "NAME or --lead INDEX"
    )


def _lead_index(leads: tuple[str, ...], lead: str) -> int:
    if lead in leads:
        return leads.index(lead)
    if lead.isdigit() and int(lead) < len(leads):
        return int(lead)
    raise DeployError(
        f"lead {show(lead)!r} is not in this record; its leads: "
        f"{', '.join(show(n) for n in leads)} (or give an index 0-{len(leads) - 1})"
    )


def record_rate(rec: Recording, fs: int | None, path: str | Path) -> int | None:
    """The record's rate: its file's, or `fs` (--fs) where the file states none; a given
    `fs` that disagrees with the file's is refused (one of them is wrong)."""
    if rec.fs is None:
        return fs
    stated = rec.fs
    if stated != int(stated):
        raise DeployError(
            f"{show(path)} is sampled at {stated:g} Hz, not a whole number of Hz; "
            "resample it to a whole rate first"
        )
    if fs is not None and fs != stated:
        raise DeployError(
            f"--fs {fs} disagrees with {show(path)}, whose header says {stated:g} Hz; "
            "leave out --fs (the header's rate is used) or fix the header"
        )
    return int(stated)


# --------------------------------------------------------------------------------------
# A record of any length, read in chunks

CHUNK_SAMPLES = 1 << 16  # samples per lead read at a time (~2 min at 500 Hz)


@dataclass(frozen=True)
class RecordSource:
    """A record opened for reading in chunks: what its file says (leads, rate, length
    where it states one) and `chunks(rows)`, its samples in mV, (len(rows), n) float32 at
    a time, in order. Memory stays that of one chunk whatever the record's length."""

    path: Path
    leads: tuple[str, ...]
    fs: float | None
    source: str  # wfdb, edf, csv or npy
    samples: int | None  # None: known only once read (CSV)
    _read: Callable[[list[int], int], Iterator[np.ndarray]]

    def chunks(self, rows: Sequence[int], size: int = CHUNK_SAMPLES) -> Iterator[np.ndarray]:
        return self._read(list(rows), size)

    def rows(self, lead: str | None, wanted: tuple[str, ...]) -> list[int]:
        """The rows a bundle taking `wanted` gets (lead_rows); a .npy without `lead`
        gives every row, as the record is."""
        if self.source == "npy" and lead is None:
            return list(range(len(self.leads)))
        return lead_rows(self.leads, lead, wanted)


def open_recording(path: str | Path) -> RecordSource:
    """A record file opened for chunked reading, its format by its suffix (as
    read_recording); the header (or .npy header) is read and checked now."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower(), "npy")
    return {"wfdb": _open_wfdb, "edf": _open_edf, "csv": _open_csv}.get(kind, _open_npy)(path)


def _open_npy(path: Path) -> RecordSource:
    x = _leads_by_samples(read_record(path, mapped=True), path)

    def read(rows: list[int], size: int) -> Iterator[np.ndarray]:
        for at in range(0, x.shape[1], size):
            chunk = np.array(x[rows, at : at + size], dtype=np.float32)  # a copy
            release_pages(x)  # the mapped pages read so far: no longer this process's
            yield chunk

    return RecordSource(path, tuple(map(str, range(len(x)))), None, "npy", x.shape[1], read)


def _open_wfdb(path: Path) -> RecordSource:
    wfdb = _need("wfdb", "wfdb==4.3.1", "WFDB records")
    name, hea = str(path.with_suffix("")), path.with_suffix(".hea")
    if not hea.is_file():
        raise DeployError(f"{show(hea)}: no such WFDB header; give the record's .hea file")
    try:
        header = wfdb.rdheader(name)
    except Exception as exc:  # wfdb raises many kinds for a malformed header
        raise DeployError(
            f"{show(hea)}: not a readable WFDB header ({show(str(exc))[:120]})"
        ) from None
    if not header.n_sig or not header.sig_len:
        raise DeployError(f"{show(hea)}: the header lists no signals or no samples")
    _check_wfdb_sizes(header, path.parent, hea)
    leads = tuple(header.sig_name)
    scale = [_to_mv(u, f"{show(hea)} lead {n}") for u, n in zip(header.units, leads, strict=True)]

    def read(rows: list[int], size: int) -> Iterator[np.ndarray]:
        for at in range(0, header.sig_len, size):
            stop = min(at + size, header.sig_len)
            try:
                part = wfdb.rdrecord(name, sampfrom=at, sampto=stop, channels=rows)
            except Exception as exc:
                raise DeployError(
                    f"{show(hea)}: wfdb cannot read samples {at}-{stop} ({show(str(exc))[:120]})"
                ) from None
            mv = np.asarray(part.p_signal, np.float64).T * np.asarray(scale)[rows, None]
            yield mv.astype(np.float32)

    return RecordSource(path, leads, float(header.fs), "wfdb", int(header.sig_len), read)


def _open_edf(path: Path) -> RecordSource:
    pyedflib = _need("pyedflib", "pyedflib==0.1.42", "EDF/BDF records")
    full = _read_edf_header(pyedflib, path)
    leads, rate, length, scale = full

    def read(rows: list[int], size: int) -> Iterator[np.ndarray]:
        reader = pyedflib.EdfReader(str(path))
        try:
            for at in range(0, length, size):
                n = min(size, length - at)
                yield np.stack(
                    [reader.readSignal(i, start=at, n=n) * scale[i] for i in rows]
                ).astype(np.float32)
        finally:
            reader.close()

    return RecordSource(path, leads, rate, "edf", length, read)


def _read_edf_header(pyedflib, path: Path) -> tuple:
    """(leads, rate, samples, mV per unit of each lead) from an EDF/BDF header."""
    try:
        reader = pyedflib.EdfReader(str(path))
    except OSError as exc:
        raise DeployError(
            f"{show(path)}: not a readable EDF/BDF file ({show(str(exc))[:120]})"
        ) from None
    try:
        n = reader.signals_in_file
        leads = tuple(reader.getLabel(i).strip() for i in range(n))
        rates = {float(reader.getSampleFrequency(i)) for i in range(n)}
        if len(rates) != 1:
            raise DeployError(
                f"{show(path)}: leads at different rates ({', '.join(map(str, sorted(rates)))}"
                " Hz); export the ECG leads at one rate"
            )
        length = min(int(k) for k in reader.getNSamples())
        scale = [
            _to_mv(reader.getPhysicalDimension(i), f"{show(path)} lead {leads[i]}")
            for i in range(n)
        ]
    finally:
        reader.close()
    return leads, rates.pop(), length, scale


def _open_csv(path: Path) -> RecordSource:
    try:
        with open(path, encoding="utf-8-sig") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise DeployError(f"{show(path)}: cannot read as text CSV ({exc})") from None
    fields = [c.strip() for c in first.split(",")]
    header = not all(_is_number(c) for c in fields)
    leads = tuple(fields) if header else tuple(map(str, range(len(fields))))

    def read(rows: list[int], size: int) -> Iterator[np.ndarray]:
        with open(path, encoding="utf-8-sig") as f:
            lines = itertools.islice(f, int(header), None)
            got = 0
            while block := list(itertools.islice(lines, size)):
                table = _csv_rows(path, block, len(leads), got + int(header))
                got += len(block)
                if len(table):
                    yield table[:, rows].T.astype(np.float32)
        if got == 0:
            raise DeployError(f"{show(path)}: no samples")

    return RecordSource(path, leads, None, "csv", None, read)


def _csv_rows(path: Path, block: list[str], columns: int, line: int) -> np.ndarray:
    """Lines of a CSV as a (rows, columns) table; a DeployError names the line at fault."""
    try:
        table = np.loadtxt(block, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise DeployError(
            f"{show(path)}: not a CSV of numbers, one column per lead, after line {line} "
            f"({show(str(exc).splitlines()[0])[:120]})"
        ) from None
    if table.size and table.shape[1] != columns:
        raise DeployError(
            f"{show(path)}: the header names {columns} columns, the rows after line {line} "
            f"hold {table.shape[1]}"
        )
    return table
