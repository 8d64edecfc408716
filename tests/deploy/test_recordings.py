"""Recordings in WFDB, EDF, CSV and .npy read back in mV at their stated rate, equal to the
source within each format's quantisation; a damaged or mismatched file gives one clear
DeployError."""

import numpy as np
import pytest

import mscnn
from deploy.errors import DeployError
from deploy.recordings import read_recording, record_rate, select_leads
from mscnn import data as ecg_data

wfdb = pytest.importorskip("wfdb", reason="WFDB tests need wfdb (the records extra)")


@pytest.fixture(scope="module")
def ecg() -> np.ndarray:
    """A real 500 Hz CPSC2019 record, float64 mV."""
    try:
        return ecg_data.cpsc2019_records().signals[0].astype(np.float64)
    except mscnn.MscnnError as exc:
        pytest.skip(f"the CPSC2019 records are not here: {exc}")


def write_wfdb(folder, ecg, name="rec"):
    """Two leads at 500 Hz: MLII in mV (gain 200/mV) and V5 in uV (gain 0.2/uV)."""
    wfdb.wrsamp(
        name, fs=500, units=["mV", "uV"], sig_name=["MLII", "V5"],
        p_signal=np.stack([ecg, -ecg * 1000], axis=1), fmt=["16", "16"],
        adc_gain=[200.0, 0.2], baseline=[0, 0], write_dir=str(folder),
    )  # fmt: skip
    return folder / f"{name}.hea"


def test_wfdb_in_mv_at_its_rate(tmp_path, ecg):
    rec = read_recording(write_wfdb(tmp_path, ecg))
    assert (rec.leads, rec.fs, rec.source, rec.signals.dtype) == (
        ("MLII", "V5"),
        500.0,
        "wfdb",
        np.float32,
    )
    step = 1 / 200  # mV per ADC count, both leads
    assert np.abs(rec.signals[0] - ecg).max() <= step / 2 + 1e-6
    assert np.abs(rec.signals[1] + ecg).max() <= step / 2 + 1e-6  # uV converted to mV
    assert np.array_equal(rec.lead("V5").signals, rec.signals[1:])
    assert np.array_equal(rec.lead("0").signals, rec.signals[:1])
    assert np.array_equal(read_recording(tmp_path / "rec.dat").signals, rec.signals)


def test_edf_in_mv_at_its_rate(tmp_path, ecg):
    pyedflib = pytest.importorskip(
        "pyedflib", reason="EDF tests need pyedflib==0.1.42 (the records and test extras)"
    )
    writer = pyedflib.EdfWriter(str(tmp_path / "rec.edf"), 2, file_type=pyedflib.FILETYPE_EDFPLUS)
    common = dict(sample_frequency=500, digital_max=32767, digital_min=-32768)
    writer.setSignalHeaders([
        dict(label="II", dimension="uV", physical_max=40000, physical_min=-40000, **common),
        dict(label="V1", dimension="mV", physical_max=40, physical_min=-40, **common),
    ])  # fmt: skip
    writer.writeSamples([ecg * 1000, ecg])
    writer.close()
    rec = read_recording(tmp_path / "rec.edf")
    assert (rec.leads, rec.fs, rec.source) == (("II", "V1"), 500.0, "edf")
    step = 80 / 65535  # mV per digital step
    assert np.abs(rec.signals - ecg).max() <= step + 1e-6


def test_csv_with_and_without_a_header(tmp_path, ecg):
    rows = np.stack([ecg, ecg / 2], axis=1)
    np.savetxt(tmp_path / "named.csv", rows, delimiter=",", fmt="%.4f", header="II,V2",
               comments="")  # fmt: skip
    np.savetxt(tmp_path / "bare.csv", rows[:, :1], delimiter=",", fmt="%.4f")
    named, bare = read_recording(tmp_path / "named.csv"), read_recording(tmp_path / "bare.csv")
    assert (named.leads, named.fs, bare.leads, bare.fs) == (("II", "V2"), None, ("0",), None)
    assert np.abs(named.signals - rows.T).max() <= 5e-5 + 1e-6
    assert np.array_equal(bare.signals, named.signals[:1])


def test_npy_stays_as_it_was(tmp_path, ecg):
    np.save(tmp_path / "rec.npy", ecg.astype("<f4"))
    rec = read_recording(tmp_path / "rec.npy")
    assert (rec.leads, rec.fs, rec.signals.shape) == (("0",), None, (1, 5000))


def test_unknown_lead_lists_the_records_leads(tmp_path, ecg):
    rec = read_recording(write_wfdb(tmp_path, ecg))
    with pytest.raises(DeployError, match=r"lead 'II' is not in this record; its leads: MLII, V5"):
        rec.lead("II")
    with pytest.raises(DeployError, match=r"2 leads \(MLII, V5\); this bundle takes 1 \(ECG\)"):
        select_leads(rec, None, ("ECG",))
    assert select_leads(rec, None, ("V5",)).leads == ("V5",)


def test_a_truncated_dat_is_named(tmp_path, ecg):
    hea = write_wfdb(tmp_path, ecg)
    dat = tmp_path / "rec.dat"
    dat.write_bytes(dat.read_bytes()[:7001])
    with pytest.raises(DeployError, match=r"rec.dat is truncated: .*5000 samples \(20000 bytes\)"
                       r", the file has 7001 bytes") as caught:  # fmt: skip
        read_recording(hea)
    assert "\n" not in str(caught.value)


def test_a_header_that_disagrees_with_its_data(tmp_path, ecg):
    hea = write_wfdb(tmp_path, ecg)
    lines = hea.read_text().splitlines()
    hea.write_text("\n".join([lines[0].replace(" 2 ", " 1 ", 1), lines[1]]) + "\n")  # 1 signal
    with pytest.raises(DeployError, match=r"rec.hea disagrees with its data: 5000 samples of MLII"
                       r" need 10000 bytes, .*rec.dat has 20000"):  # fmt: skip
        read_recording(hea)


def test_a_rate_given_against_the_header_is_refused(tmp_path, ecg):
    hea = write_wfdb(tmp_path, ecg)
    rec = read_recording(hea)
    assert record_rate(rec, None, hea) == record_rate(rec, 500, hea) == 500
    with pytest.raises(DeployError, match=r"--fs 360 disagrees with .*rec.hea, whose header "
                       r"says 500 Hz; leave out --fs"):  # fmt: skip
        record_rate(rec, 360, hea)


def test_a_missing_extra_names_the_install(monkeypatch, tmp_path, ecg):
    hea = write_wfdb(tmp_path, ecg)
    monkeypatch.setitem(__import__("sys").modules, "wfdb", None)  # as if not installed
    install = r"pip install 'mscnn-edge\[records\]' \(or pip install wfdb==4.3.1\)"
    with pytest.raises(
        DeployError, match=r"needs the wfdb package, not installed here: " + install
    ):
        read_recording(hea)
