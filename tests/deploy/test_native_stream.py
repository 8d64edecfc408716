"""The native runner's detector and stream modes: `--detect` applies the manifest's R-peak
rule as deploy/rpeaks.py does, `--stream` drives a stream bundle's step as deploy/stream.py
does (beats as deploy/detect.py's BeatStream reports them), and `--check` compares a
detector's beats, natively and under qemu for the ARM builds."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from native_runner import run_native

from deploy.parity import TOLERANCES
from deploy.rpeaks import RPeakRule, detect_rpeaks, heart_rate_bpm
from mscnn import data as ecg_data

ARM = ("aarch64", "armv7")
needs_cpsc = pytest.mark.skipif(
    not (ecg_data.data_dir() / ecg_data.CPSC2019_FILE).is_file(),
    reason=f"no {ecg_data.CPSC2019_FILE} in {ecg_data.data_dir()} (set MSCNN_DATA to the "
    "shared/data folder)",
)
pytestmark = needs_cpsc


@pytest.fixture(scope="module")
def records():
    return ecg_data.cpsc2019_records()


@pytest.fixture(scope="module")
def five_minutes(records, qrs, tmp_path_factory):
    """30 real records back to back (150000 samples) as a raw float32 file, and the beats
    of PyTorch's output on the whole of it (the offline rule)."""
    x = np.ascontiguousarray(records.signals[:30].reshape(-1), dtype="<f4")
    path = tmp_path_factory.mktemp("five-minutes") / "ecg.f32"
    x.tofile(path)
    with torch.no_grad():
        logits = qrs.model(torch.from_numpy(x.reshape(1, 1, -1).copy())).numpy()[0, :, 0]
    beats = detect_rpeaks(logits, RPeakRule(), n_samples=len(x))
    assert len(beats) > 300 or qrs.source.startswith("seeded")  # trained: ~1 beat a second
    return path, beats


def streamed_beats(done) -> np.ndarray:
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(re.fullmatch(r"beat \d+ \d+\.\d{3}", line) for line in lines), lines[:3]
    samples = np.array([int(line.split()[1]) for line in lines], dtype=np.int64)
    seconds = [float(line.split()[2]) for line in lines]
    assert seconds == [round(s / 500, 3) for s in samples.tolist()]
    return samples


def one_error(done) -> str:
    assert done.returncode == 2, (done.stdout[-500:], done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def edited_copy(bundle, tmp_path, **keys):
    """A copy of a bundle with manifest keys replaced (the manifest is not among the
    hashed files, so the copy still verifies)."""
    out = tmp_path / bundle.name
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.update(keys)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_check_on_a_detector_compares_the_beats_of_every_record(qrs_bundles):
    done = run_native("x86_64", qrs_bundles["x86_64"].path, "--check")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    summary = done.stdout.splitlines()[-1]
    assert re.fullmatch(r"check: pass (\d+)/\1 worst_normalised=\S+ beats=50/50", summary), summary


@pytest.mark.slow
@pytest.mark.cross
@pytest.mark.parametrize("arch", ARM)
def test_arm_check_compares_beats_under_qemu(arch, qrs_bundles, tmp_path):
    """Under qemu all 52 cases take minutes: a copy whose manifest lists 5 of them (noise
    and four records spread over the sample; the files stay listed and hashed)."""
    bundle = qrs_bundles[arch].path
    golden = json.loads((bundle / "manifest.json").read_text())["golden"]
    keep = [golden[0]] + [g for g in golden if g["name"].startswith("record-")][::16]
    done = run_native(arch, edited_copy(bundle, tmp_path, golden=keep), "--check")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    summary = done.stdout.splitlines()[-1]
    assert re.fullmatch(r"check: pass 5/5 worst_normalised=\S+ beats=4/4", summary), summary


def test_detect_gives_the_rule_on_pytorchs_output(qrs, qrs_bundles, records, tmp_path):
    bundle = qrs_bundles["x86_64"].path
    x = records.signals[7].astype("<f4")
    np.save(tmp_path / "x.npy", x)
    with torch.no_grad():
        logits = qrs.model(torch.from_numpy(x.reshape(1, 1, -1).copy())).numpy()[0, :, 0]
    expected = detect_rpeaks(logits, RPeakRule(), n_samples=len(x))
    assert len(expected) >= 2 or qrs.source.startswith("seeded")

    done = run_native("x86_64", bundle, "--input", tmp_path / "x.npy", "--detect")
    assert done.returncode == 0, done.stderr
    beats_line, rate_line = done.stdout.splitlines()
    count, *samples = beats_line.removeprefix("beats: ").split()
    assert int(count) == len(expected) and [int(s) for s in samples] == expected.tolist()
    rate = heart_rate_bpm(expected)
    assert rate_line == (f"heart_rate: {rate:.1f} bpm" if rate else "heart_rate: n/a")

    done = run_native("x86_64", bundle, "--input", tmp_path / "x.npy", "--detect", "--json")
    got = json.loads(done.stdout)
    assert got["beats"] == expected.tolist() and got["heart_rate_bpm"] == rate
    assert (got["fs"], got["samples"], got["seconds"]) == (500, 5000, 10.0)


def test_detect_and_stream_refuse_bundles_without_them(qrs_bundles, tmp_path):
    bundle = qrs_bundles["x86_64"].path
    np.save(tmp_path / "x.npy", np.zeros(5000, "<f4"))
    features = edited_copy(bundle, tmp_path, detect=None)
    error = one_error(run_native("x86_64", features, "--input", tmp_path / "x.npy", "--detect"))
    assert "not an R-peak detector" in error
    error = one_error(run_native("x86_64", bundle, "--stream", "--input", tmp_path / "x.npy"))
    assert "window bundle" in error and "--hop" in error
    error = one_error(run_native("x86_64", bundle, "--check", "--detect"))
    assert "--detect" in error


def test_stream_check_and_frames_equal_the_offline_model(qrs_stream_bundles, tmp_path):
    bundle = qrs_stream_bundles["x86_64"].path
    done = run_native("x86_64", bundle, "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.fullmatch(r"check: pass 1/1 worst_normalised=\S+ beats=1/1",
                        done.stdout.splitlines()[-1])  # fmt: skip

    # The golden record streamed as raw samples: frame lines equal the offline frames.
    record = np.load(bundle / "golden" / "record-cpsc2019-stream.input.npy")
    expected = np.load(bundle / "golden" / "record-cpsc2019-stream.output.npy")
    record.T.astype("<f4").tofile(tmp_path / "raw.f32")
    done = run_native("x86_64", bundle, "--stream", "--input", tmp_path / "raw.f32")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    assert [r[0] for r in rows] == ["frame"] * expected.shape[1]
    assert [int(r[1]) for r in rows] == list(range(expected.shape[1]))
    got = np.array([[float(v) for v in r[2:]] for r in rows]).T
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() / scale <= TOLERANCES["cpu"] + 1e-6  # %.6g printing


def test_a_stream_ending_mid_sample_or_with_nan_is_refused(qrs_stream_bundles, tmp_path):
    bundle = qrs_stream_bundles["x86_64"].path
    raw = np.sin(np.arange(1000) / 50).astype("<f4").tobytes()
    (tmp_path / "cut.f32").write_bytes(raw + b"\x00\x01\x02")
    done = run_native("x86_64", bundle, "--stream", "--input", tmp_path / "cut.f32")
    error = one_error(done)
    assert "3 byte(s) into a sample" in error
    # ... after the 1000 whole samples were streamed and flushed: all their frames.
    assert len(done.stdout.splitlines()) == 1000 // 8

    bad = np.zeros(3000, "<f4")
    bad[2345] = np.nan
    bad.tofile(tmp_path / "nan.f32")
    error = one_error(run_native("x86_64", bundle, "--stream", "--input", tmp_path / "nan.f32"))
    assert "sample 2345 (lead 0) is NaN or Inf" in error


def test_stream_detect_over_five_minutes_equals_the_offline_beats(qrs_stream_bundles,
                                                                  five_minutes):  # fmt: skip
    path, expected = five_minutes
    bundle = qrs_stream_bundles["x86_64"].path
    got = streamed_beats(run_native("x86_64", bundle, "--stream", "--detect", "--input", path))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.slow
@pytest.mark.cross
@pytest.mark.parametrize("arch", ARM)
def test_arm_stream_detect_and_check_under_qemu(arch, qrs_stream_arm_bundles, five_minutes):
    path, expected = five_minutes
    bundle = qrs_stream_arm_bundles[arch].path
    done = run_native(arch, bundle, "--check")
    assert done.returncode == 0 and "beats=1/1" in done.stdout, done.stdout + done.stderr
    got = streamed_beats(run_native(arch, bundle, "--stream", "--detect", "--input", path))
    np.testing.assert_array_equal(got, expected)
