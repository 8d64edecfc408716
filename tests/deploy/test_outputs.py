"""`deploy detect`'s outputs as people use them: a CSV of beats, WFDB annotations that
wfdb reads back equal, the heart rate per minute, a plot of a chosen span; and every bad
output refused in one line before any work, with nothing written."""

import json
import sys

import numpy as np
import pytest
from deploy_cli import cpsc_record
from hypothesis import given
from hypothesis import strategies as st

from deploy.cli import main
from deploy.outputs import per_minute_bpm
from deploy.resample import resample

pytestmark = pytest.mark.slow
wfdb = pytest.importorskip("wfdb", reason="WFDB output needs wfdb (the records extra)")


@pytest.fixture(scope="module")
def record_360(tmp_path_factory):
    """65 s of real ECG resampled to 360 Hz, as a WFDB record 100 (MIT-BIH's rate)."""
    ecg = np.concatenate([cpsc_record(i) for i in range(7)])[: 65 * 500]
    signal = resample(ecg, 500, 360).astype(np.float64)
    folder = tmp_path_factory.mktemp("wfdb")
    wfdb.wrsamp(
        "100", fs=360, units=["mV"], sig_name=["MLII"], p_signal=signal[:, None], fmt=["16"],
        adc_gain=[200.0], baseline=[0], write_dir=str(folder),
    )  # fmt: skip
    return folder / "100.hea"


def test_csv_annotations_and_rate_per_minute(qrs_bundles, record_360, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    bundle = qrs_bundles["x86_64"].path
    args = ["detect", bundle, "--input", record_360, "--json", "--csv", out / "beats.csv"]
    assert main([str(a) for a in [*args, "--annotations", out]]) == 0
    stdout, stderr = capsys.readouterr()
    found = json.loads(stdout)
    beats = np.array(found["beats"])
    assert found["fs_input"] == 360 and len(beats) > 60
    # WFDB annotations, read back by wfdb: the beats, in the record's clock and rate
    ann = wfdb.rdann(str(out / "100"), "qrs")
    assert np.array_equal(ann.sample, beats) and set(ann.symbol) == {"N"} and ann.fs == 360
    # CSV: sample, seconds, RR in ms (none for the first beat)
    lines = (out / "beats.csv").read_text().splitlines()
    assert lines[0] == "sample,seconds,rr_ms" and len(lines) == len(beats) + 1
    rows = [line.split(",") for line in lines[1:]]
    assert [int(r[0]) for r in rows] == beats.tolist() and rows[0][2] == ""
    assert [float(r[1]) for r in rows] == pytest.approx(beats / 360, abs=5e-4)
    assert [float(r[2]) for r in rows[1:]] == pytest.approx(np.diff(beats) / 360 * 1000, abs=0.05)
    # one rate per minute (the second partial): the RR intervals ending in it
    minutes = found["heart_rate_per_minute"]
    assert len(minutes) == 2
    for m, rate in enumerate(minutes):
        ending = (beats[1:] >= m * 60 * 360) & (beats[1:] < (m + 1) * 60 * 360)
        assert rate == pytest.approx(60 * 360 / np.diff(beats)[ending].mean(), abs=0.05)
    assert f"wrote {out / '100.qrs'} (WFDB annotations)" in stderr


@pytest.fixture
def ten_seconds(tmp_path):
    path = tmp_path / "rec.npy"
    np.save(path, cpsc_record())
    return path


def test_csv_to_stdout_and_a_plot_of_a_span(qrs_bundles, ten_seconds, tmp_path, capsys):
    bundle = str(qrs_bundles["x86_64"].path)
    png = tmp_path / "span.png"
    args = ["detect", bundle, "--input", str(ten_seconds), "--fs", "500", "--csv", "-"]
    assert main([*args, "--plot", str(png), "--plot-span", "2:6.5"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("sample,seconds,rr_ms\n") and "beats" not in out
    assert f"wrote {png}" in err and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(args[:-2] + ["--json"]) == 0
    assert len(out.splitlines()) == len(json.loads(capsys.readouterr().out)["beats"]) + 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--csv", "{tmp}/absent/b.csv"], "no folder"),
        (["--csv", "{tmp}"], "is a folder; give a file name such as beats.csv"),
        (["--annotations", "{tmp}/rec 1.qrs"], "WFDB names a record with letters, digits"),
        (["--annotations", "{tmp}/rec.q1"], "a letters-only extension"),
        (["--plot-span", "1:5"], "--plot-span goes with --plot FILE.png"),
        (["--plot", "{tmp}/p.png", "--plot-span", "5:1"], "expected 0 <= START < END"),
        (["--plot", "{tmp}/p.png", "--plot-span", "0:900"], "choose at most 600 s"),
        (["--plot", "{tmp}/p.png", "--plot-span", "a:b"], "expected START:END in seconds"),
        (["--plot", "{tmp}/p.png", "--plot-span", "20:30"], "after the record's end (10 s)"),
        (["--json", "--csv", "-"], "both print to stdout"),
    ],
)
def test_a_bad_output_is_refused_in_one_line_and_nothing_is_written(
    qrs_bundles, ten_seconds, tmp_path, capsys, extra, message
):
    before = sorted(p.name for p in tmp_path.iterdir())
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    args = ["detect", str(qrs_bundles["x86_64"].path), "--input", str(ten_seconds), *extra]
    args += ["--csv", str(tmp_path / "beats.csv")] if "--csv" not in extra else []
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("module", "option", "install"),
    [
        ("matplotlib", "--plot", "pip install matplotlib"),
        ("wfdb", "--annotations", "pip install 'mscnn-edge[records]'"),
    ],
)
def test_a_missing_package_names_the_install(
    qrs_bundles, ten_seconds, tmp_path, capsys, monkeypatch, module, option, install
):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    target = tmp_path / ("p.png" if option == "--plot" else "rec.qrs")
    args = ["detect", str(qrs_bundles["x86_64"].path), "--input", str(ten_seconds)]
    assert main([*args, option, str(target)]) == 2
    err = capsys.readouterr().err
    assert f"{option} needs the {module} package, not installed here: {install}" in err
    assert len(err.strip().splitlines()) == 1 and not target.exists()


@given(
    rr=st.integers(150, 900),
    first=st.integers(0, 500),
    count=st.integers(2, 400),
    fs=st.sampled_from([250, 360, 500]),
)
def test_the_rate_per_minute_of_a_steady_rhythm(rr, first, count, fs):
    beats = first + rr * np.arange(count)
    samples = int(beats[-1]) + 1
    minutes = per_minute_bpm(beats, fs, samples)
    assert len(minutes) == -(-samples // (60 * fs))
    for m, rate in enumerate(minutes):
        ends = beats[1:][(beats[1:] // (60 * fs)) == m]
        assert rate == (None if len(ends) == 0 else pytest.approx(60 * fs / rr, abs=0.05))
