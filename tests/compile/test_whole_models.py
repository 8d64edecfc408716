"""Whole models in bundles: the QRS detector judged by the beats it finds on real ECG,
the lead-wise classifier by its decisions; `deploy detect` on records."""

import json

import numpy as np
import pytest
import torch
from deploy_cli import deploy
from native_runner import run_native

import mscnn
from compile import TARGETS, BuildOptions, build, resolve_variant
from deploy.predictor import Predictor
from deploy.rpeaks import detect_rpeaks
from mscnn import data as ecg_data

pytestmark = pytest.mark.slow


def records():
    try:
        return ecg_data.cpsc2019_records()
    except mscnn.MscnnError as exc:
        pytest.skip(f"the CPSC2019 records are not here: {exc}")


def pytorch_beats(model, x: np.ndarray, rule) -> np.ndarray:
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    return detect_rpeaks(logits[0, :, 0], rule, x.shape[-1])


def test_detector_manifest_says_what_the_output_means(qrs_bundles, qrs):
    m = qrs_bundles["x86_64"].manifest
    assert m.model.task == "qrs_detection" and m.model.head == "ECG_SEQ_LAB_NET"
    assert m.model.classes == list(qrs.model.classes)
    assert m.output.shape == (1, 5000 // 8, 1) and "logits" in m.output.layout
    assert m.detect is not None and m.detect.reduction == 8 and m.detect.fs == 500


def test_detector_finds_pytorchs_beats_on_every_record(qrs_bundles, qrs):
    """Computed here from the model, not read from the golden files or the manifest."""
    data = records()
    bundle = qrs_bundles["x86_64"]
    predictor, rule = Predictor(bundle), bundle.manifest.detect
    golden = [g for g in bundle.manifest.golden if g.is_record]
    assert len(golden) == len(data.names) == 50
    for signal in data.signals:
        x = signal[None, None, :].astype(np.float32)
        got = detect_rpeaks(predictor(x)[0, :, 0], rule, 5000)
        assert np.array_equal(got, pytorch_beats(qrs.model.eval(), x, rule))
    task = bundle.manifest.parity.task
    assert (task.kind, task.cases, task.identical) == ("beats", 50, 50)


@pytest.mark.cross
@pytest.mark.parametrize("name", ["aarch64", "armv7"])
def test_arm_detector_finds_pytorchs_beats_under_qemu(qrs_bundles, qrs, name, tmp_path):
    """The device's own output (native runner under qemu) gives PyTorch's beats."""
    data = records()
    bundle = qrs_bundles[name]
    rule = bundle.manifest.detect
    for k in (0, 17, 33, 49):  # records spread over the sample
        x = data.signals[k][None, None, :].astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        done = run_native(
            TARGETS[name].arch,
            bundle.path,
            "--input",
            tmp_path / "x.npy",
            "--output",
            tmp_path / "y.npy",
        )
        assert done.returncode == 0, done.stderr
        got = detect_rpeaks(np.load(tmp_path / "y.npy")[0, :, 0], rule, 5000)
        assert np.array_equal(got, pytorch_beats(qrs.model.eval(), x, rule))
        (tmp_path / "y.npy").unlink()


def test_deploy_detect_prints_beats_and_heart_rate(qrs_bundles, qrs, tmp_path):
    data = records()
    bundle = qrs_bundles["x86_64"]
    np.save(tmp_path / "rec.npy", data.signals[5])
    done = deploy(
        "detect",
        bundle.path,
        "--input",
        tmp_path / "rec.npy",
        "--json",
        "--plot",
        tmp_path / "rec.png",
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    x = data.signals[5][None, None, :].astype(np.float32)
    expected = pytorch_beats(qrs.model.eval(), x, bundle.manifest.detect)
    assert found["beats"] == expected.tolist()
    if len(expected) >= 2:
        rate = 60 * 500 * (len(expected) - 1) / (expected[-1] - expected[0])
        assert found["heart_rate_bpm"] == pytest.approx(rate)
    assert (tmp_path / "rec.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("record", "extra", "message"),
    [
        (np.zeros(4000, "<f4"), (), "record of 4000 samples (8 s at 500 Hz); this window bundle"),
        (np.zeros(2000, "<f4"), ("--fs", "250"), "record of 4000 samples (8 s at 500 Hz); this"),
        # NaN is a sensor gap, which a window bundle cannot take; it names the stream bundle
        (np.full(5000, np.nan, "<f4"), (), "record holds a gap (NaN from sample 0"),
        (np.zeros((3, 5000), "<f4"), (), "record of 3 leads; this bundle takes 1 (ECG)"),
    ],
    ids=["length", "fs", "nan", "leads"],
)
def test_deploy_detect_refuses_bad_records(qrs_bundles, tmp_path, record, extra, message):
    np.save(tmp_path / "rec.npy", record)
    done = deploy("detect", qrs_bundles["x86_64"].path, "--input", tmp_path / "rec.npy", *extra)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_flat_record_has_no_beats(qrs_bundles, tmp_path):
    for value in (0.0, 1.5):
        np.save(tmp_path / "flat.npy", np.full(5000, value, "<f4"))
        done = deploy(
            "detect", qrs_bundles["x86_64"].path, "--input", tmp_path / "flat.npy", "--json"
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["beats"] == []


def test_detect_refuses_a_backbone_bundle(cpsc_bundles, tmp_path, bundle_samples):
    np.save(tmp_path / "rec.npy", np.zeros(bundle_samples, "<f4"))
    done = deploy("detect", cpsc_bundles["x86_64"].path, "--input", tmp_path / "rec.npy")
    assert done.returncode == 2 and "not an R-peak detector" in done.stderr


def test_reduced_lead_classifier_bundle_makes_pytorchs_decisions(tmp_path):
    """A 3-lead variant of the lead-wise classifier: its decisions on real 12-lead records
    (the kept leads) equal the full model's on the zero-filled records."""
    try:
        cinc = ecg_data.cinc2021_records()
    except mscnn.MscnnError as exc:
        pytest.skip(f"the CinC 2021 records are not here: {exc}")
    loaded = mscnn.load_model("leadwise_classifier")
    variant = resolve_variant(loaded, "3")
    bundle = build(loaded, TARGETS["x86_64"], variant, tmp_path, BuildOptions(samples=5000))
    task = bundle.manifest.parity.task
    assert task.kind == "decisions" and task.cases == task.identical == 10
    predictor = Predictor(bundle)
    kept = list(variant.indices)
    for x12 in cinc.signals[10:14]:
        x = np.ascontiguousarray(x12[None, kept], dtype=np.float32)
        with torch.no_grad():
            full = loaded.model.eval()(mscnn.zero_fill(torch.from_numpy(x), kept, 12)).numpy()
        assert np.array_equal(predictor(x) > 0, full > 0)
