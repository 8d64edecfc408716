"""`deploy stream` with what a new user hands it: a .npy is read as one, not as raw
samples; a .npy on stdin, a .npz, a text file and samples no ECG in mV holds are refused,
saying what was found and what to give instead; the assumed rate is said; `--detect
--json` prints `deploy detect --json`'s object."""

import json

import numpy as np
import pytest
from deploy_cli import RATE_NOTE, cpsc_record, deploy

from deploy import load_bundle
from deploy.detect import detect

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def record() -> np.ndarray:
    return cpsc_record()


def beats_of(stdout: str) -> list[int]:
    return [int(line.split()[1]) for line in stdout.splitlines()]


def test_a_npy_file_is_read_as_npy(qrs_stream_bundles, record, tmp_path):
    """Its 128-byte header is not 32 samples: the beats are the record's own, at their
    own times, as raw float32 of the same record gives them."""
    bundle = qrs_stream_bundles["x86_64"]
    np.save(tmp_path / "rec.npy", record)
    record.tofile(tmp_path / "rec.f32")
    npy = deploy("stream", bundle.path, "--input", tmp_path / "rec.npy", "--detect")
    raw = deploy("stream", bundle.path, "--input", tmp_path / "rec.f32", "--detect")
    assert npy.returncode == raw.returncode == 0, npy.stderr
    expected = detect(bundle, record).beats.tolist()
    assert len(expected) >= 5
    assert beats_of(npy.stdout) == beats_of(raw.stdout) == expected
    assert npy.stderr.strip() == RATE_NOTE  # no --fs: the rate taken is said


def foreign_inputs(record, tmp_path) -> dict:
    """(arguments after the bundle, stdin bytes, the message) of each refused input."""
    np.save(tmp_path / "rec.npy", record)
    np.savez(tmp_path / "rec.npz", ecg_mv=record[None])
    (tmp_path / "rec.hea").write_text("data_00005 1 500 5000\ndata_00005.dat 16 1000 16\n")
    csv = "ecg_mv\n" + "\n".join(f"{v:.4f}" for v in record[:200])
    return {
        "npy_on_stdin": (
            (),
            (tmp_path / "rec.npy").read_bytes(),
            "stdin starts with a .npy header (\\x93NUMPY), not raw float32 samples: "
            "give the file as --input FILE.npy",
        ),
        "npz": (
            ("--input", tmp_path / "rec.npz"),
            None,
            "rec.npz is a zip archive such as .npz (it starts with PK\\x03\\x04)",
        ),
        "wfdb_header": (
            ("--input", tmp_path / "rec.hea"),
            None,
            "rec.hea starts with a line of text ('data_00005 1 500 5000'), such as a WFDB "
            "header (.hea) or CSV",
        ),
        "csv_on_stdin": ((), csv.encode(), "stdin starts with a line of text ('ecg_mv')"),
    }


@pytest.mark.parametrize("case", ["npy_on_stdin", "npz", "wfdb_header", "csv_on_stdin"])
def test_foreign_input_is_refused_before_any_output(qrs_stream_bundles, record, tmp_path, case):
    args, stdin, message = foreign_inputs(record, tmp_path)[case]
    done = deploy("stream", qrs_stream_bundles["x86_64"].path, "--detect", *args, stdin=stdin)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: ") and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (2.5e5, "stdin: sample 1234 (lead ECG) is 250000; not an ECG in mV (|x| <= 10000)"),
        (-np.inf, "stdin: sample 1234 (lead ECG) is -inf; NaN or Inf is no ECG sample"),
    ],
    ids=["microvolts", "inf"],
)
def test_absurd_raw_samples_are_refused_by_index(qrs_stream_bundles, record, value, message):
    x = record.copy()
    x[1234] = value
    done = deploy("stream", qrs_stream_bundles["x86_64"].path, "--detect", stdin=x.tobytes())
    assert done.returncode == 2
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: {message}"), done.stderr
    assert "Traceback" not in done.stderr


def test_a_nan_sample_is_a_gap_not_a_refusal(qrs_stream_bundles, record):
    """NaN is the sensor giving nothing (lead-off): a gap of one sample here, reported in
    its place among the beats, which keep the record's clock."""
    x = record.copy()
    x[1234] = np.nan
    done = deploy("stream", qrs_stream_bundles["x86_64"].path, "--detect", stdin=x.tobytes())
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines.count("gap 1234 1") == 1 and len(lines) >= 6
    beats = [int(line.split()[1]) for line in lines if line.startswith("beat ")]
    at = lines.index("gap 1234 1")
    assert all(b < 1234 for b in beats[:at]) and all(b > 1234 for b in beats[at:])


def test_stream_detect_json_is_detects_json(qrs_stream_bundles, record, tmp_path):
    bundle = qrs_stream_bundles["x86_64"].path
    np.save(tmp_path / "rec.npy", record)
    streamed = deploy("stream", bundle, "--input", tmp_path / "rec.npy", "--detect", "--json")
    assert streamed.returncode == 0, streamed.stderr
    found = json.loads(streamed.stdout)
    window = deploy("detect", bundle, "--input", tmp_path / "rec.npy", "--json")
    assert found == json.loads(window.stdout)
    assert found["beats"] == detect(load_bundle(bundle), record).beats.tolist()
    assert (found["fs"], found["fs_assumed"], found["samples"]) == (500, True, 5000)
    assert found["seconds"] == 10.0 and found["heart_rate_bpm"] > 30
    assert streamed.stderr.strip() == RATE_NOTE
    raw = deploy("stream", bundle, "--detect", "--json", "--fs", "500", stdin=record.tobytes())
    assert json.loads(raw.stdout) == {**found, "fs_assumed": False}
    assert raw.stderr == ""  # a rate given is not assumed


def test_stream_refusals_name_the_fix(qrs_stream_bundles, record):
    bundle = qrs_stream_bundles["x86_64"].path
    frames = deploy("stream", bundle, "--json", stdin=record.tobytes())
    assert frames.returncode == 2 and "--json goes with --detect" in frames.stderr
    other = deploy("stream", bundle, "--detect", "--fs", "1999", stdin=record.tobytes())
    assert other.returncode == 2 and other.stdout == ""  # a ratio the filter cannot take
    assert other.stderr == (
        "error: 1999 Hz -> 500 Hz is the ratio 500/1999; up and down must be <= 1000 (a "
        "39981-tap filter): resample to a rate with a simpler ratio first\n"
    )
    empty = deploy("stream", bundle, "--detect", "--json", stdin=b"")
    assert empty.returncode == 2 and empty.stderr.startswith("error: stdin holds no samples")
    cut = deploy("stream", bundle, "--detect", "--json", stdin=record.tobytes() + b"\x00")
    assert cut.returncode == 2 and cut.stdout == ""  # no JSON of a record cut short
    assert "error: stdin: the stream ended 1 byte(s) into a sample" in cut.stderr
