"""Stream bundles: the compiled step, streamed over minutes of real ECG, equals the
offline model; the state is small; bad chunks leave the stream as it was."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import mscnn
from compile import TARGETS, BuildOptions, CompileError, build, resolve_variant
from deploy import DeployError
from deploy.parity import compare
from deploy.rpeaks import detect_rpeaks
from deploy.stream import open_stream
from mscnn import data as ecg_data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minutes():
    """All 50 CPSC2019 records back to back: 500 s of real ECG."""
    try:
        return ecg_data.cpsc2019_records().signals.reshape(1, -1).astype(np.float32)
    except mscnn.MscnnError as exc:
        pytest.skip(f"the CPSC2019 records are not here: {exc}")


def offline(model, record: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(record)[None])[0].numpy().T


def test_stream_manifest_and_state_size(qrs_stream_bundles, qrs_bundles):
    m = qrs_stream_bundles["x86_64"].manifest
    assert m.kind == "stream" and m.stream.hop == 512 and m.stream.reduction == 8
    assert m.input.shape == (1, 1, 512) and m.output.shape == (1, 1, 64)
    assert m.stream.state_bytes == sum(
        4 * int(np.prod(s.shape)) for s in m.stream.states if s.dtype == "float32"
    )
    window = qrs_bundles["x86_64"].manifest.footprint.activation_bytes
    assert m.stream.state_bytes <= window / 4  # the goal: a quarter of the window's RAM
    assert m.parity.task.passed and m.parity.tvm.normalised <= 1e-5


def test_five_minutes_stream_equal_the_offline_model(qrs_stream_bundles, qrs, minutes):
    """Over 8 minutes of real ECG, pushed in uneven chunks: tensors within the CPU
    tolerance and exactly PyTorch's beats."""
    stream = open_stream(qrs_stream_bundles["x86_64"])
    sizes = np.random.default_rng(0).integers(1, 3000, size=400)
    parts, at = [], 0
    for n in sizes:
        parts.append(stream.push(minutes[:, at : at + n]))
        at += n
    parts.append(stream.push(minutes[:, at:]))
    parts.append(stream.flush())
    got = np.concatenate(parts, axis=1)
    expected = offline(qrs.model, minutes)
    assert compare(got, expected, "cpu").passed, compare(got, expected, "cpu")
    rule = qrs_stream_bundles["x86_64"].manifest.detect
    n = minutes.shape[1]
    assert np.array_equal(detect_rpeaks(got[0], rule, n), detect_rpeaks(expected[0], rule, n))


def test_a_bad_chunk_leaves_the_stream_as_it_was(qrs_stream_bundles, minutes):
    stream = open_stream(qrs_stream_bundles["x86_64"])
    x = minutes[:, :6000]
    clean = np.concatenate([stream.push(x[:, :3000]), stream.push(x[:, 3000:]), stream.flush()], 1)
    first = stream.push(x[:, :3000])
    bad = x[:, 3000:].copy()
    bad[0, 17] = np.nan
    with pytest.raises(DeployError, match="NaN or Inf.*stream is as before"):
        stream.push(bad)
    with pytest.raises(DeployError, match="expected \\(1 leads, n\\)"):
        stream.push(np.zeros((2, 10), np.float32))
    with pytest.raises(DeployError, match="float32"):
        stream.push(x[:, 3000:].astype(np.float64))
    again = np.concatenate([first, stream.push(x[:, 3000:]), stream.flush()], axis=1)
    assert np.array_equal(again, clean)


def deploy(*args, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deploy", *map(str, args)],
        input=stdin,
        capture_output=True,
        timeout=600,
    )


def test_deploy_stream_prints_pytorchs_beats(qrs_stream_bundles, qrs, minutes):
    bundle = qrs_stream_bundles["x86_64"]
    raw = minutes[0, :60000].astype("<f4").tobytes()
    done = deploy("stream", bundle.path, "--detect", "--chunk", "700", stdin=raw)
    assert done.returncode == 0, done.stderr
    beats = [int(line.split()[1]) for line in done.stdout.decode().splitlines()]
    expected = offline(qrs.model, minutes[:, :60000])[0]
    assert beats == detect_rpeaks(expected, bundle.manifest.detect, 60000).tolist()
    cut = deploy("stream", bundle.path, "--detect", stdin=raw + b"\x00\x01")
    assert cut.returncode == 2 and b"ended 2 byte(s) into a sample" in cut.stderr
    assert cut.stdout == done.stdout  # every whole sample before it was streamed


def test_stream_refusals_at_build(tmp_path, qrs):
    variant = resolve_variant(qrs, "1")
    with pytest.raises(CompileError, match="--hop 100"):
        build(qrs, TARGETS["x86_64"], variant, tmp_path, BuildOptions(hop=100))
    classifier = mscnn.load_model("leadwise_classifier")
    with pytest.raises(CompileError, match="--hop 512.*attn"):
        build(
            classifier,
            TARGETS["x86_64"],
            resolve_variant(classifier, "2"),
            tmp_path,
            BuildOptions(hop=512),
        )
