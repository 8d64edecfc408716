"""`deploy detect` and `deploy info` on the QRS detector, as a new user meets them: the
rate assumed is said, a record too long for a window bundle names the stream bundle that
takes it, a file of another kind says what it is, and `info` shows what the output means
(task, R-peak rule, a stream bundle's step)."""

import json
import re

import numpy as np
import pytest
from deploy_cli import RATE_NOTE, cpsc_record, deploy

from deploy.cli import main
from deploy.detect import detect

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def record() -> np.ndarray:
    return cpsc_record()


def test_detect_says_which_rate_it_assumed(qrs_bundles, record, tmp_path):
    bundle = qrs_bundles["x86_64"].path
    np.save(tmp_path / "rec.npy", record)
    as_json = deploy("detect", bundle, "--input", tmp_path / "rec.npy", "--json")
    found = json.loads(as_json.stdout)
    assert (found["fs"], found["fs_assumed"]) == (500, True) and as_json.stderr.strip() == RATE_NOTE
    text = deploy("detect", bundle, "--input", tmp_path / "rec.npy")
    assert text.returncode == 0 and text.stderr.strip() == RATE_NOTE
    assert text.stdout.startswith(f"{len(found['beats'])} beats in 10 s")
    given = deploy("detect", bundle, "--input", tmp_path / "rec.npy", "--json", "--fs", "500")
    assert json.loads(given.stdout) == {**found, "fs_assumed": False} and given.stderr == ""


def test_a_short_record_names_the_stream_bundle(qrs_bundles, qrs_stream_bundles, record, tmp_path):
    """A window bundle takes a record of its window or longer (stitched windows); a
    shorter one names the stream bundle that takes it and the command that builds it (its
    folder name)."""
    np.save(tmp_path / "short.npy", record[:3000])
    done = deploy("detect", qrs_bundles["x86_64"].path, "--input", tmp_path / "short.npy")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    stream = qrs_stream_bundles["x86_64"]  # built as --preset cpsc2019_qrs --hop 512
    assert stream.path.name == stream.name == "cpsc2019_qrs-1lead-stream512"
    assert (
        "error: record of 3000 samples (6 s at 500 Hz); this window bundle takes 5000 samples "
        "or more; for a record of any length use the stream bundle "
        "cpsc2019_qrs-1lead-stream512, built with `python -m compile build --preset "
        "cpsc2019_qrs --targets x86_64 --variants 1 --hop 512`"
    ) in done.stderr
    np.save(tmp_path / "long.npy", np.tile(record, 3))
    windowed = deploy(
        "detect", qrs_bundles["x86_64"].path, "--input", tmp_path / "long.npy", "--json"
    )
    assert windowed.returncode == 0, windowed.stderr
    found, streamed = json.loads(windowed.stdout), detect(stream.path, np.tile(record, 3))
    assert found["samples"] == 15000 and found["beats"] == streamed.beats.tolist()


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


def info(bundle, capsys) -> dict[str, str]:
    assert main(["info", str(bundle.path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    return dict(re.split(r"\s{2,}", line, maxsplit=1) for line in lines)


def test_info_shows_the_task_and_the_rpeak_rule(qrs_bundles, qrs_stream_bundles, capsys):
    window = info(qrs_bundles["x86_64"], capsys)
    assert window["task"].startswith("qrs_detection (ECG_SEQ_LAB_NET): R-peak detector")
    assert window["output"].endswith("batch, frames, classes (logits)")
    assert window["R-peaks"] == (
        "a frame (8 samples) is positive when sigmoid(logit) > 0.5; each run of positive "
        "frames is one beat; beats closer than 200 ms are one (the stronger kept); none "
        "within 50 ms of the record's ends; at 500 Hz"
    )
    assert "stream" not in window
    bundle = qrs_stream_bundles["x86_64"]
    s = bundle.manifest.stream
    stream = info(bundle, capsys)
    assert stream["R-peaks"] == window["R-peaks"]
    assert stream["stream"] == (
        f"hop 512 samples (1024 ms), look-ahead {s.look_ahead} samples "
        f"({2 * s.look_ahead} ms), state {s.state_bytes / 1024:.1f} KiB in {len(s.states)} "
        f"tensors, flush {s.flush_steps} steps at most"
    )
