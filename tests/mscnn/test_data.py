"""The real ECG samples load checked; a missing or foreign file is refused by name."""

from pathlib import Path

import numpy as np
import pytest

from mscnn import MscnnError
from mscnn import data as ecg_data

HAVE_DATA = (ecg_data.data_dir() / ecg_data.CPSC2019_FILE).is_file() and (
    ecg_data.data_dir() / ecg_data.CINC2021_FILE
).is_file()
needs_data = pytest.mark.skipif(
    not HAVE_DATA,
    reason=f"no ECG samples in {ecg_data.data_dir()} (set MSCNN_DATA to the shared/data folder)",
)


@needs_data
def test_cpsc2019_records():
    signals, r_peaks, names, fs = ecg_data.cpsc2019_records()
    assert signals.shape == (50, 5000) and signals.dtype == np.float32
    assert fs == 500 and len(names) == len(set(names)) == 50 and names[0] == "data_00014"
    assert len(r_peaks) == 50 and sum(len(p) for p in r_peaks) == 775
    for p in r_peaks:
        assert p.dtype == np.int64 and (np.diff(p) > 0).all() and p[0] >= 0 and p[-1] < 5000
        # physiological: 30..250 bpm over 10 s, RR at least 200 ms
        assert 5 <= len(p) <= 42 and np.diff(p).min() >= 100
    # mV, not ADC counts: a QRS is around a millivolt
    assert 0.1 < np.median(np.abs(signals).max(axis=1)) < 10


@needs_data
def test_cinc2021_records():
    signals, leads, names, dx, fs = ecg_data.cinc2021_records()
    assert signals.shape == (50, 12, 5000) and signals.dtype == np.float32
    assert leads == ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    assert fs == 500 and len(names) == 50 and len(dx) == 50
    assert all(codes and all(c.isdigit() for c in codes) for codes in dx)
    assert 0.1 < np.median(np.abs(signals).max(axis=2)) < 10
    # Einthoven: III = II - I, to the ADC's resolution (1 uV)
    assert np.abs(signals[:, 2] - (signals[:, 1] - signals[:, 0])).max() < 0.0025


def test_missing_data_says_where_and_how(monkeypatch, tmp_path):
    monkeypatch.setenv("MSCNN_DATA", str(tmp_path))
    with pytest.raises(MscnnError, match=f"no cpsc2019_sample.npz in {tmp_path}.*MSCNN_DATA"):
        ecg_data.cpsc2019_records()
    with pytest.raises(MscnnError, match="no cinc2021_sample.npz"):
        ecg_data.cinc2021_records()


def test_default_location_is_next_to_the_repository(monkeypatch):
    monkeypatch.delenv("MSCNN_DATA", raising=False)
    repo = Path(__file__).resolve().parents[2]
    assert ecg_data.data_dir() == repo.parent / "shared" / "data"


def write_cpsc(folder, **override):
    arrays = {
        "ecg_mv": np.zeros((2, 5000), np.float32),
        "records": np.array(["a", "b"]),
        "r_peaks": np.array([100, 600, 200], np.int32),
        "r_peak_offsets": np.array([0, 2, 3], np.int64),
        "fs": np.int32(500),
    }
    arrays.update(override)
    np.savez(folder / "cpsc2019_sample.npz", **{k: v for k, v in arrays.items() if v is not None})


def test_a_well_formed_file_loads(monkeypatch, tmp_path):
    monkeypatch.setenv("MSCNN_DATA", str(tmp_path))
    write_cpsc(tmp_path)
    records = ecg_data.cpsc2019_records()
    assert [p.tolist() for p in records.r_peaks] == [[100, 600], [200]]
    assert records.names == ["a", "b"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"fs": np.int32(250)}, "fs is .*250.*expected 500"),
        ({"fs": None}, "missing array.*fs"),
        ({"ecg_mv": np.zeros((2, 4000), np.float32)}, r"ecg_mv has shape \(2, 4000\)"),
        ({"ecg_mv": np.zeros((2, 5000), np.float64)}, "dtype float64"),
        ({"ecg_mv": np.full((2, 5000), np.nan, np.float32)}, "NaN"),
        ({"records": np.array(["a"])}, "records has shape"),
        ({"r_peak_offsets": np.array([0, 2, 4])}, "rise from 0 to len"),
        ({"r_peaks": np.array([600, 100, 200], np.int32)}, "record a: R-peaks not strictly"),
        ({"r_peaks": np.array([100, 600, 5000], np.int32)}, "record b: R-peaks"),
    ],
)
def test_a_malformed_file_is_refused(monkeypatch, tmp_path, override, message):
    monkeypatch.setenv("MSCNN_DATA", str(tmp_path))
    write_cpsc(tmp_path, **override)
    with pytest.raises(MscnnError, match=message):
        ecg_data.cpsc2019_records()


def test_a_file_that_is_not_an_archive_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("MSCNN_DATA", str(tmp_path))
    (tmp_path / "cpsc2019_sample.npz").write_bytes(b"not a zip archive")
    with pytest.raises(MscnnError, match="cpsc2019_sample.npz"):
        ecg_data.cpsc2019_records()
    (tmp_path / "cinc2021_sample.npz").mkdir()
    with pytest.raises(MscnnError, match="not a regular file"):
        ecg_data.cinc2021_records()
