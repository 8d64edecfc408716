"""Sensor gaps: a NaN run in a record is a gap, not an error. The segment before it ends (its
beats final, as at a record's end), the model's state and the R-peak rule restart, and the
beats after it keep the record's clock; the report lists the gaps, and no RR interval across
one counts towards the heart rate. The offline rule on each segment alone, offsets added,
is what the stream reports, on real ECG, wherever the gaps fall and however it is chunked."""

import json

import numpy as np
import pytest
import torch
from deploy_cli import cpsc_record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy import DeployError
from deploy.cli import main
from deploy.detect import detect
from deploy.records import Gap
from deploy.rpeaks import RPeakRule, detect_rpeaks, heart_rate_bpm
from deploy.stream import open_stream
from deploy.streaming_cli import open_run

SECONDS = 30


@pytest.fixture(scope="module")
def ecg() -> np.ndarray:
    """30 s of real ECG: three CPSC2019 records back to back, float32 mV at 500 Hz."""
    return np.concatenate([cpsc_record(i) for i in (5, 6, 7)])


def with_gaps(x: np.ndarray, gaps: list[Gap]) -> np.ndarray:
    y = x.copy()
    for g in gaps:
        y[g.start : g.start + g.samples] = np.nan
    return y


def offline_beats(model, x: np.ndarray, gaps: list[Gap]) -> list[int]:
    """PyTorch's model on each segment between the gaps alone, the rule on its logits
    (a segment under one frame has none), offsets added."""
    beats, at = [], 0
    for g in [*gaps, Gap(len(x), 0)]:
        segment = x[at : g.start]
        if len(segment) >= RPeakRule().reduction:
            with torch.no_grad():
                logits = model(torch.from_numpy(segment[None, None].copy())).numpy()[0, :, 0]
            beats += (detect_rpeaks(logits, RPeakRule(), len(segment)) + at).tolist()
        at = g.start + g.samples
    return beats


@st.composite
def gap_lists(draw) -> list[Gap]:
    """One to three gaps of 1 sample to 3 s anywhere (the record's ends included), apart."""
    n = SECONDS * 500
    ends = sorted(draw(st.lists(st.integers(0, n), min_size=2, max_size=6, unique=True)))
    gaps = []
    for start, stop in zip(ends[::2], ends[1::2], strict=False):
        gaps.append(Gap(start, min(stop - start, 1500)))
    return gaps


@settings(max_examples=5, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gaps=gap_lists(), chunk=st.integers(50, 4000))
def test_streamed_beats_are_the_offline_rule_on_each_segment(
    qrs, qrs_stream_bundles, ecg, tmp_path, gaps, chunk
):
    """`deploy stream --detect` on raw samples with NaN runs: the beats are the offline
    rule's on each segment, the gaps are reported once each (runs cut by chunk boundaries
    joined), and every line comes in order: a segment's beats before its gap's line."""
    x = with_gaps(ecg, gaps)
    x.tofile(tmp_path / "gaps.f32")
    run = open_run(qrs_stream_bundles["x86_64"].path, tmp_path / "gaps.f32", chunk=chunk)
    lines = [line.split() for line in run.lines(detect=True)]
    beats = [int(w[1]) for w in lines if w[0] == "beat"]
    assert beats == offline_beats(qrs.model, ecg, gaps)
    assert [Gap(int(w[1]), int(w[2])) for w in lines if w[0] == "gap"] == gaps
    clock = [int(w[1]) + (int(w[2]) if w[0] == "gap" else 0) for w in lines]
    assert clock == sorted(clock)  # a beat after a gap lies after its end
    assert run.samples == len(x)


def test_gap_ends_the_segment_and_keeps_the_clock(qrs_stream_bundles, ecg):
    """Stream.gap(n): the frames that end the segment (as flush gives them), a fresh state,
    the clock advanced; the next segment's frames are those of a stream of it alone."""
    stream = open_stream(qrs_stream_bundles["x86_64"])
    a, b = ecg[None, :3001], ecg[None, 4000:9000]
    before = np.concatenate([stream.push(a), stream.gap(999)], axis=1)
    assert (stream.samples, stream.start) == (4000, 4000)
    after = np.concatenate([stream.push(b), stream.flush()], axis=1)
    assert np.array_equal(before, open_stream(qrs_stream_bundles["x86_64"]).run(a))
    assert np.array_equal(after, stream.run(b))
    assert (stream.samples, stream.start) == (0, 0)  # flush: a new record
    assert stream.gap(5).shape[1] == 0 and stream.gap(5).shape[1] == 0  # nothing to end
    assert stream.samples == 10
    for bad in (0, -3, 2.5, True):
        with pytest.raises(DeployError, match="give a whole number of samples >= 1"):
            stream.gap(bad)
    chunk = ecg[None, :100].copy()
    chunk[0, 50] = np.nan  # push takes samples; a gap is said with gap(n)
    with pytest.raises(DeployError, match=r"NaN or Inf.*stream is as before.*gap\(n\)"):
        stream.push(chunk)
    assert stream.samples == 10


def test_frames_and_gap_lines_in_order(qrs_stream_bundles, ecg, tmp_path):
    """Without --detect: the first segment's frames (all of them: it was flushed), the gap's
    line, then the next segment's frames; frame indices count on."""
    x = ecg[:3000].copy()
    x[2345:2350] = np.nan
    x.tofile(tmp_path / "gap.f32")
    lines = list(open_run(qrs_stream_bundles["x86_64"].path, tmp_path / "gap.f32").lines(False))
    assert lines[2345 // 8] == "gap 2345 5" and len(lines) == 2345 // 8 + 1 + 650 // 8
    frames = [line.split() for line in lines if line.startswith("frame ")]
    assert [int(f[1]) for f in frames] == list(range(len(frames)))


def test_heart_rate_counts_no_interval_across_a_gap():
    beats = np.array([0, 500, 1000, 5000, 5400])
    assert heart_rate_bpm(beats) == 60.0 * 500 * 4 / 5400  # no gap: as before
    assert heart_rate_bpm(beats, breaks=[2000]) == pytest.approx(60.0 * 500 * 3 / 1400)
    assert heart_rate_bpm(beats, breaks=[600, 3000]) == pytest.approx(60.0 * 500 * 2 / 900)
    assert heart_rate_bpm(beats, breaks=[-5, 6000]) == heart_rate_bpm(beats)
    assert heart_rate_bpm(np.array([100, 900]), breaks=[300]) is None


def cli(capsys, *args) -> tuple[int, str, str]:
    """`python -m deploy ARGS` in this process (the TVM runtime is loaded once): the exit
    status, stdout and stderr."""
    status = main([str(a) for a in args])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_detect_and_stream_report_the_same_gaps(
    qrs_stream_bundles, qrs_bundles, ecg, tmp_path, capsys
):
    """`deploy detect` on a .npy with NaN runs (a stream bundle) gives `deploy stream`'s
    JSON: segments detected alone, gaps listed; a window bundle refuses, naming the stream
    bundle; Inf is still refused. A segment of fewer samples than a frame (3) has no beat."""
    gaps = [Gap(0, 300), Gap(7000, 1500), Gap(8503, 10), Gap(12000, 1)]
    np.save(tmp_path / "gaps.npy", with_gaps(ecg, gaps))
    bundle = qrs_stream_bundles["x86_64"]
    status, detected, _ = cli(
        capsys, "detect", bundle.path, "--input", tmp_path / "gaps.npy", "--json"
    )
    assert status == 0
    found = json.loads(detected)
    status, streamed, _ = cli(
        capsys, "stream", bundle.path, "--input", tmp_path / "gaps.npy", "--detect", "--json"
    )
    assert status == 0 and json.loads(streamed) == found
    assert found["gaps"] == [{"start": g.start, "samples": g.samples, "seconds": g.samples / 500}
                             for g in gaps]  # fmt: skip
    assert found["samples"] == len(ecg) and len(found["beats"]) >= 20
    rate = heart_rate_bpm(np.array(found["beats"]), 500, [g.start for g in gaps])
    assert found["heart_rate_bpm"] == rate != heart_rate_bpm(np.array(found["beats"]))
    assert found["beats"] == detect(bundle, with_gaps(ecg, gaps)).beats.tolist()
    _, text, _ = cli(capsys, "detect", bundle.path, "--input", tmp_path / "gaps.npy")
    assert text.splitlines()[-4:] == ["gap 0 300", "gap 7000 1500", "gap 8503 10", "gap 12000 1"]

    np.save(tmp_path / "window.npy", with_gaps(ecg[:5000], [Gap(1000, 250)]))
    status, _, error = cli(capsys, "detect", qrs_bundles["x86_64"].path, "--input",
                           tmp_path / "window.npy")  # fmt: skip
    assert status == 2 and len(error.strip().splitlines()) == 1
    assert "record holds a gap (NaN from sample 1000, 250 samples)" in error
    assert "use the stream bundle cpsc2019_qrs-1lead-stream512" in error
    bad = with_gaps(ecg, gaps)
    bad[9000] = np.inf
    np.save(tmp_path / "inf.npy", bad)
    status, _, error = cli(capsys, "detect", bundle.path, "--input", tmp_path / "inf.npy")
    assert status == 2 and "sample 9000 (lead ECG) is inf" in error
