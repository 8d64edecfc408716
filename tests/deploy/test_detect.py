"""`deploy detect` on the QRS detector, as a new user meets it: the rate assumed is said,
a record too long for a window bundle names the stream bundle that takes it, a file of
another kind says what it is."""

import json
import subprocess
import sys

import numpy as np
import pytest

import mscnn
from mscnn import data as ecg_data

pytestmark = pytest.mark.slow

NOTE = "note: assuming 500 Hz, the bundle's rate; pass --fs if the record was sampled otherwise"


@pytest.fixture(scope="module")
def record() -> np.ndarray:
    try:
        return ecg_data.cpsc2019_records().signals[5].astype("<f4")
    except mscnn.MscnnError as exc:
        pytest.skip(f"the CPSC2019 records are not here: {exc}")


def deploy(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deploy", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_detect_says_which_rate_it_assumed(qrs_bundles, record, tmp_path):
    bundle = qrs_bundles["x86_64"].path
    np.save(tmp_path / "rec.npy", record)
    as_json = deploy("detect", bundle, "--input", tmp_path / "rec.npy", "--json")
    found = json.loads(as_json.stdout)
    assert (found["fs"], found["fs_assumed"]) == (500, True) and as_json.stderr.strip() == NOTE
    text = deploy("detect", bundle, "--input", tmp_path / "rec.npy")
    assert text.returncode == 0 and text.stderr.strip() == NOTE
    assert text.stdout.startswith(f"{len(found['beats'])} beats in 10 s")
    given = deploy("detect", bundle, "--input", tmp_path / "rec.npy", "--json", "--fs", "500")
    assert json.loads(given.stdout) == {**found, "fs_assumed": False} and given.stderr == ""


def test_a_long_record_names_the_stream_bundle(qrs_bundles, qrs_stream_bundles, record, tmp_path):
    """The stream bundle named is the one that build command makes (its folder name)."""
    np.save(tmp_path / "long.npy", np.tile(record, 3))
    done = deploy("detect", qrs_bundles["x86_64"].path, "--input", tmp_path / "long.npy")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    stream = qrs_stream_bundles["x86_64"]  # built as --preset cpsc2019_qrs --hop 512
    assert stream.path.name == stream.name == "cpsc2019_qrs-1lead-stream512"
    assert (
        "error: record of 15000 samples (30 s); this window bundle takes 5000 samples (10 s "
        "at 500 Hz); for a record of any length use the stream bundle "
        "cpsc2019_qrs-1lead-stream512, built with `python -m compile build --preset "
        "cpsc2019_qrs --targets x86_64 --variants 1 --hop 512`"
    ) in done.stderr
    streamed = deploy("detect", stream.path, "--input", tmp_path / "long.npy", "--json")
    assert streamed.returncode == 0 and json.loads(streamed.stdout)["samples"] == 15000


def test_detect_names_a_file_of_another_kind(qrs_bundles, record, tmp_path):
    bundle = qrs_bundles["x86_64"].path
    np.savez(tmp_path / "rec.npz", ecg_mv=record[None])
    record.tofile(tmp_path / "rec.f32")
    counts = record * 5000  # ADC counts of a 24-bit front end (0.2 uV each), not mV
    np.save(tmp_path / "counts.npy", counts)
    cases = {
        "rec.npz": "rec.npz is a zip archive such as .npz",
        "rec.f32": "rec.f32 is not a .npy file (it starts with ",
        "counts.npy": "record: sample ",
    }
    for name, message in cases.items():
        done = deploy("detect", bundle, "--input", tmp_path / name)
        assert done.returncode == 2 and done.stderr.startswith("error: "), done.stderr
        assert message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    raw = deploy("detect", bundle, "--input", tmp_path / "rec.f32")
    assert "or stream raw float32 samples with `python -m deploy stream BUNDLE" in raw.stderr
    first = int(np.argmax(np.abs(counts) > 1e4))
    done = deploy("detect", bundle, "--input", tmp_path / "counts.npy")
    assert f"sample {first} (lead ECG) is {counts[first]:g}; not an ECG in mV" in done.stderr
