"""The native runner's streaming resampler (deploy/native/src/resample.cc) against
deploy/resample.py on real ECG at the common rates, its invariance to chunking, and
`mscnn-run --fs`: a 360 Hz record streamed (or a window at 360 Hz) gives the beats of the
Python path, in the record's clock; a rate the filter cannot take is one error line.

The resampler runs alone as mscnn-resample (raw float32 in and out); `mscnn-run` tests use
the session's stream and window detector bundles."""

import json
import re
import subprocess

import numpy as np
import pytest
from deploy_cli import cpsc_record
from hypothesis import given, settings
from hypothesis import strategies as st
from native_runner import resample_tool, run_native

from deploy.detect import detect
from deploy.resample import resample

RATES = (128, 250, 256, 360, 500, 512, 1000)


def native_resample(x: np.ndarray, fs_in: int, fs_out: int, leads: int = 1, chunks=None):
    """x (samples, leads) or (samples,) through mscnn-resample; (samples, leads) float32."""
    args = [str(resample_tool()), str(fs_in), str(fs_out), str(leads)]
    args += [",".join(map(str, chunks))] if chunks else []
    done = subprocess.run(args, input=np.ascontiguousarray(x, "<f4").tobytes(),
                          capture_output=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    return np.frombuffer(done.stdout, "<f4").reshape(-1, leads)


@pytest.fixture(scope="module")
def minute() -> np.ndarray:
    """A minute of real ECG (six CPSC2019 records back to back), 500 Hz float32 mV."""
    return np.concatenate([cpsc_record(i) for i in range(6)])


@pytest.mark.parametrize("fs", RATES)
def test_native_resampler_equals_python_at_the_common_rates(minute, fs):
    """Both sides design the same filter in double and accumulate each output's products
    in double, then round to float32; only the order of the additions may differ (numpy
    sums in blocks), which moves the double sum by ~1e-16 relative and can flip the
    float32 rounding of a value on a boundary: one float32 step (2**-23 relative) at most.
    Both directions: the record at fs to the bundle's 500 Hz, and 500 Hz to fs."""
    record = resample(minute, 500, fs)  # a real record at fs
    for x, fs_in, fs_out in ((record, fs, 500), (minute, 500, fs)):
        want = resample(x, fs_in, fs_out)
        got = native_resample(x, fs_in, fs_out)[:, 0]
        assert got.shape == want.shape, (fs_in, fs_out)
        assert np.all(np.abs(got - want) <= np.spacing(np.abs(want))), (fs_in, fs_out)


@settings(max_examples=20, deadline=None)
@given(
    rates=st.sampled_from([(r, 500) for r in RATES] + [(500, 360), (44, 500)]),
    chunks=st.lists(st.integers(1, 700), min_size=1, max_size=6),
    leads=st.sampled_from([1, 3]),
)
def test_native_chunking_gives_the_offline_samples(minute, rates, chunks, leads):
    """Any chunking (sizes cycled) gives the whole record's samples, bit for bit; leads are
    resampled independently (interleaved in, interleaved out)."""
    x = np.stack([minute[:4000], -minute[4000:8000], minute[8000:12000] * 0.5], axis=1)[:, :leads]
    whole = native_resample(x, *rates, leads)
    assert np.array_equal(native_resample(x, *rates, leads, chunks), whole)
    for lead in range(leads):
        one = native_resample(x[:, lead], *rates)[:, 0]
        assert np.array_equal(whole[:, lead], one)


def test_a_stream_at_360_hz_gives_the_python_beats(qrs_stream_bundles, minute, tmp_path):
    """30 s of real ECG at 360 Hz streamed through mscnn-run --stream --fs 360: the
    beats (samples and seconds of the 360 Hz clock) equal deploy detect --fs 360's, line
    for line (deploy stream --fs 360 prints the same: test_stream_rates.py); --json the
    same, with the rates."""
    bundle = qrs_stream_bundles["x86_64"]
    x = resample(minute[:15000], 500, 360)
    x.tofile(tmp_path / "rec.f32")
    want = detect(bundle, x, 360)
    assert len(want.beats) >= 25 and want.fs_input == 360

    done = run_native("x86_64", bundle.path, "--stream", "--detect", "--fs", "360",
                      "--input", tmp_path / "rec.f32")  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines == [f"beat {b} {b / 360:.3f}" for b in want.beats.tolist()]
    assert "resampled from 360 Hz" in done.stderr

    done = run_native("x86_64", bundle.path, "--stream", "--detect", "--json", "--fs", "360",
                      "--input", tmp_path / "rec.f32")  # fmt: skip
    got = json.loads(done.stdout)
    assert got["beats"] == want.beats.tolist() and got["heart_rate_bpm"] == want.heart_rate_bpm
    assert (got["fs"], got["fs_input"], got["samples"], got["seconds"]) == (500, 360, len(x), 30.0)


def test_a_window_at_250_hz_gives_the_python_beats(qrs_bundles, tmp_path):
    """--fs on a window detector: a 10 s record at 250 Hz (2500 samples) resampled to the
    window's 5000; another length is refused with the length it needs."""
    bundle = qrs_bundles["x86_64"]
    x = resample(cpsc_record(7), 500, 250)
    np.save(tmp_path / "rec.npy", x)
    want = detect(bundle, x, 250)
    assert len(want.beats) >= 5
    done = run_native("x86_64", bundle.path, "--detect", "--json", "--fs", "250", "--input",
                      tmp_path / "rec.npy")  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["beats"] == want.beats.tolist() and got["heart_rate_bpm"] == want.heart_rate_bpm
    assert (got["fs_input"], got["samples"], got["seconds"]) == (250, 2500, 10.0)

    np.save(tmp_path / "short.npy", x[:2400])
    error = one_error(run_native("x86_64", bundle.path, "--detect", "--fs", "250", "--input",
                                 tmp_path / "short.npy"))  # fmt: skip
    assert "2400 samples at 250 Hz" in error and "give 2500 samples at 250 Hz" in error, error


def one_error(done) -> str:
    assert done.returncode == 2, (done.stdout[-500:], done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("fs", "message"),
    [
        ("0", r"--fs 0: expected the record's sampling rate as a whole, positive number of Hz"),
        ("360.5", r"--fs 360.5: expected .* whole, positive number of Hz"),
        ("-360", r"--fs -360: expected"),
        ("abc", r"--fs abc: expected"),
        ("1999", r"1999 Hz -> 500 Hz is the ratio 500/1999; up and down must be <= 1000"),
        ("1001", r"ratio 500/1001"),
    ],
)
def test_bad_rates_are_one_line(qrs_stream_bundles, tmp_path, fs, message):
    np.zeros(1000, "<f4").tofile(tmp_path / "rec.f32")
    done = run_native("x86_64", qrs_stream_bundles["x86_64"].path, "--stream", "--detect",
                      "--fs", fs, "--input", tmp_path / "rec.f32")  # fmt: skip
    assert re.search(message, one_error(done)), done.stderr
    assert done.stdout == ""
