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


def records_back_to_back(records, qrs, folder, n: int):
    """`n` real records back to back (5000 samples each) as a raw float32 file, and the
    beats of PyTorch's output on the whole of it (the offline rule)."""
    x = np.ascontiguousarray(records.signals[:n].reshape(-1), dtype="<f4")
    path = folder / "ecg.f32"
    x.tofile(path)
    with torch.no_grad():
        logits = qrs.model(torch.from_numpy(x.reshape(1, 1, -1).copy())).numpy()[0, :, 0]
    beats = detect_rpeaks(logits, RPeakRule(), n_samples=len(x))
    assert len(beats) > n * 10 or qrs.source.startswith("seeded")  # trained: ~1 beat a second
    return path, beats


@pytest.fixture(scope="module")
def five_minutes(records, qrs, tmp_path_factory):
    """30 records, 150000 samples: the x86 runs stream all of it."""
    return records_back_to_back(records, qrs, tmp_path_factory.mktemp("five-minutes"), 30)


@pytest.fixture(scope="module")
def one_minute(records, qrs, tmp_path_factory):
    """6 records, 30000 samples: under qemu, five minutes would cost about 90 s per ARM
    target for no state the first minute has not already carried across 150 hops."""
    return records_back_to_back(records, qrs, tmp_path_factory.mktemp("one-minute"), 6)


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


def test_detect_on_a_record_longer_than_the_window_names_the_stream_bundle(qrs_bundles, records,
                                                                          tmp_path):  # fmt: skip
    """A 20 s record for the 10 s window: the refusal says to stream it through the model's
    stream bundle, and how that is built; not that the array has the wrong rank."""
    bundle = qrs_bundles["x86_64"].path
    x = records.signals[:2].reshape(-1).astype("<f4")
    for dims in (1, 2, 3):
        name = f"long-{dims}d.npy"
        np.save(tmp_path / name, x.reshape((1,) * (dims - 1) + x.shape))
        error = one_error(run_native("x86_64", bundle, "--input", tmp_path / name, "--detect"))
        assert "10000 samples" in error and "window of 5000 samples" in error, error
        assert "stream bundle cpsc2019_qrs-1lead-stream512" in error, error
        assert "python -m compile build --preset cpsc2019_qrs" in error and "--hop 512" in error
        assert "--stream --detect" in error and "instead of 3-D" not in error, error


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


def test_a_stream_ending_mid_sample_is_refused_and_nan_is_a_gap(qrs_stream_bundles, tmp_path):
    bundle = qrs_stream_bundles["x86_64"].path
    raw = np.sin(np.arange(1000) / 50).astype("<f4").tobytes()
    (tmp_path / "cut.f32").write_bytes(raw + b"\x00\x01\x02")
    done = run_native("x86_64", bundle, "--stream", "--input", tmp_path / "cut.f32")
    error = one_error(done)
    assert "3 byte(s) into a sample" in error
    # ... after the 1000 whole samples were streamed and flushed: all their frames.
    assert len(done.stdout.splitlines()) == 1000 // 8

    # NaN is a gap (the sensor gave nothing): the segments' frames and the gap's line.
    gap = np.zeros(3000, "<f4")
    gap[2345] = np.nan
    gap.tofile(tmp_path / "nan.f32")
    done = run_native("x86_64", bundle, "--stream", "--input", tmp_path / "nan.f32")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[2345 // 8] == "gap 2345 1" and len(lines) == 2345 // 8 + 1 + 654 // 8
    gap[2346] = np.inf  # Inf is still no sample
    gap.tofile(tmp_path / "inf.f32")
    error = one_error(run_native("x86_64", bundle, "--stream", "--input", tmp_path / "inf.f32"))
    assert "sample 2346 (lead 0) is inf; Inf is no ECG sample (NaN marks a gap)" in error


def test_stream_refuses_a_file_that_is_not_raw_samples(qrs_stream_bundles, records, tmp_path):
    """A .npy, an .npz, a CSV, a WFDB header or a text line before the samples, given to
    --stream: one error line that says what the file is and what to do, and no beat
    printed (read as float32, a .npy header would be 32 samples and shift every beat)."""
    bundle = qrs_stream_bundles["x86_64"].path
    x = records.signals[7].astype("<f4")
    np.save(tmp_path / "rec.npy", x)
    np.savez(tmp_path / "rec.npz", ecg=x)
    rows = "".join(f"{i / 500:g},{v:.4f}\n" for i, v in enumerate(x[:1000]))
    (tmp_path / "rec.csv").write_text("time,ecg\n" + rows)
    (tmp_path / "rec.hea").write_text("data_00014 1 500 5000\ndata_00014.dat 16 1000 16 0\n")
    (tmp_path / "headed.f32").write_bytes(b"ECG lead II in mV at 500 Hz, float32\n" + x.tobytes())
    expected = {
        "rec.npy": (".npy header", "np.load('rec.npy').astype('<f4').tofile('rec.f32')",
                    "python -m deploy stream"),
        "rec.npz": ("zip archive", ".npz", ".astype('<f4').tofile('rec.f32')"),
        "rec.csv": ('line of text ("time,ecg")', "CSV", ".astype('<f4').tofile('rec.f32')"),
        "rec.hea": ('line of text ("data_00014 1 500 5000")', ".hea"),
        "headed.f32": ('line of text ("ECG lead II',),
    }  # fmt: skip
    for name, needles in expected.items():
        done = run_native("x86_64", bundle, "--stream", "--detect", "--input", tmp_path / name)
        error = one_error(done)
        assert done.stdout == "", (name, done.stdout[:200])
        assert error.startswith(f"error: input {tmp_path / name} starts with a "), error
        assert all(n in error for n in needles), (name, error)
        assert "raw little-endian float32 samples" in error, error
    with open(tmp_path / "rec.npy", "rb") as f:
        done = run_native("x86_64", bundle, "--stream", "--detect", stdin=f)
    assert one_error(done).startswith("error: stdin starts with a .npy header") and not done.stdout


def test_stream_refuses_samples_that_are_not_an_ecg_in_mv(qrs_stream_bundles, records, tmp_path):
    """|x| > 1e4 is not an ECG in mV (a wrong format, byte order or scale): refused with the
    sample and its value; the limit itself passes."""
    bundle = qrs_stream_bundles["x86_64"].path
    x = np.zeros(3000, "<f4")
    x[1500] = 1e4
    x.tofile(tmp_path / "edge.f32")
    done = run_native("x86_64", bundle, "--stream", "--input", tmp_path / "edge.f32")
    assert done.returncode == 0, done.stderr
    x[2345] = -20000.5
    x.tofile(tmp_path / "big.f32")
    error = one_error(run_native("x86_64", bundle, "--stream", "--input", tmp_path / "big.f32"))
    assert "sample 2345 (lead 0) is -20000.5, not an ECG in mV" in error, error
    # A real record written big-endian: refused, not run.
    records.signals[7].astype(">f4").tofile(tmp_path / "swapped.f32")
    error = one_error(run_native("x86_64", bundle, "--stream", "--detect", "--input",
                                 tmp_path / "swapped.f32"))  # fmt: skip
    assert "not an ECG in mV" in error and "byte order" in error, error


def test_stream_detect_json_is_the_window_detect_json(qrs_bundles, qrs_stream_bundles, records,
                                                      five_minutes, tmp_path):  # fmt: skip
    """--stream --detect --json prints one object of the same keys as --detect --json on a
    window bundle, once the stream has ended: the beats of the whole stream."""
    np.save(tmp_path / "x.npy", records.signals[7].astype("<f4"))
    window = run_native("x86_64", qrs_bundles["x86_64"].path, "--input", tmp_path / "x.npy",
                        "--detect", "--json")  # fmt: skip
    assert window.returncode == 0, window.stderr
    path, expected = five_minutes
    bundle = qrs_stream_bundles["x86_64"].path
    done = run_native("x86_64", bundle, "--stream", "--detect", "--json", "--input", path)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1, done.stdout[:500]
    got = json.loads(done.stdout)
    assert list(got) == list(json.loads(window.stdout))
    assert got["beats"] == expected.tolist()
    assert got["heart_rate_bpm"] == heart_rate_bpm(expected)
    assert (got["fs"], got["samples"], got["seconds"]) == (500, 150000, 300.0)
    error = one_error(run_native("x86_64", bundle, "--stream", "--json", "--input", path))
    assert "--json goes with --detect" in error


def test_info_on_a_stream_bundle_shows_its_step(qrs_bundles, qrs_stream_bundles):
    bundle = qrs_stream_bundles["x86_64"].path
    step = json.loads((bundle / "manifest.json").read_text())["stream"]
    done = run_native("x86_64", bundle, "--info")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("stream: ")]
    assert len(lines) == 1, done.stdout
    assert lines[0].startswith(f"stream: hop {step['hop']} samples (1.024 s), look-ahead "
                               f"{step['look_ahead']} samples ("), lines[0]  # fmt: skip
    assert f"state {step['state_bytes']} bytes" in lines[0], lines[0]
    window = run_native("x86_64", qrs_bundles["x86_64"].path, "--info")
    assert window.returncode == 0 and "stream:" not in window.stdout, window.stdout


def test_stream_detect_over_five_minutes_equals_the_offline_beats(qrs_stream_bundles,
                                                                  five_minutes):  # fmt: skip
    path, expected = five_minutes
    bundle = qrs_stream_bundles["x86_64"].path
    got = streamed_beats(run_native("x86_64", bundle, "--stream", "--detect", "--input", path))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.slow
@pytest.mark.cross
@pytest.mark.parametrize("arch", ARM)
def test_arm_stream_detect_and_check_under_qemu(arch, qrs_stream_arm_bundles, one_minute,
                                                tmp_path):  # fmt: skip
    path, expected = one_minute
    bundle = qrs_stream_arm_bundles[arch].path
    done = run_native(arch, bundle, "--check")
    assert done.returncode == 0 and "beats=1/1" in done.stdout, done.stdout + done.stderr
    got = streamed_beats(run_native(arch, bundle, "--stream", "--detect", "--input", path))
    np.testing.assert_array_equal(got, expected)
    short = tmp_path / "short.f32"  # JSON on 20 s: the 5 minutes again would double the cost
    np.fromfile(path, "<f4")[:10000].tofile(short)
    text = streamed_beats(run_native(arch, bundle, "--stream", "--detect", "--input", short))
    done = run_native(arch, bundle, "--stream", "--detect", "--json", "--input", short)
    assert done.returncode == 0 and json.loads(done.stdout)["beats"] == text.tolist()
    assert len(text) > 10
    np.save(tmp_path / "rec.npy", np.fromfile(path, "<f4")[:5000])
    error = one_error(run_native(arch, bundle, "--stream", "--input", tmp_path / "rec.npy"))
    assert ".npy header" in error, error


def test_stream_gaps_are_pythons(qrs_stream_bundles, records, tmp_path):
    """NaN runs in the raw input (the sensor lost contact; one lead of two is enough) are
    gaps: the native runner reports the beats and `gap <start> <samples>` lines of
    deploy/streaming_cli.py, in the same order, and the same JSON (gaps listed, no RR
    interval across one in the heart rate)."""
    from deploy.streaming_cli import open_run

    bundle = qrs_stream_bundles["x86_64"].path
    x = records.signals[10:16].reshape(-1).astype("<f4")
    for start, samples in ((0, 40), (4321, 1500), (9999, 1), (20000, 2048), (29990, 10)):
        x[start : start + samples] = np.nan
    x.tofile(tmp_path / "gaps.f32")
    python = list(open_run(bundle, tmp_path / "gaps.f32", chunk=700).lines(detect=True))
    assert python.count("gap 4321 1500") == 1 and python[-1] == "gap 29990 10"
    done = run_native("x86_64", bundle, "--stream", "--detect", "--input", tmp_path / "gaps.f32")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == python
    found = open_run(bundle, tmp_path / "gaps.f32").detection().to_json()
    done = run_native("x86_64", bundle, "--stream", "--detect", "--json", "--input",
                      tmp_path / "gaps.f32")  # fmt: skip
    got = json.loads(done.stdout)
    assert {k: found[k] for k in got} == got and len(got["gaps"]) == 5
    assert got["heart_rate_bpm"] != heart_rate_bpm(np.array(got["beats"]))
