"""Training is deterministic and leaves no global state behind; the committed QRS detector
finds the real beats of its records through the deployed post-processing."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import mscnn
from deploy.rpeaks import RPeakRule, detect_rpeaks, score_rpeaks
from mscnn import MscnnError
from mscnn import data as ecg_data
from mscnn.train import CHECKPOINT, TrainConfig, frame_labels, main, sha256_of, train

RECIPE = CHECKPOINT.with_suffix(".json")
HAVE_DATA = (ecg_data.data_dir() / ecg_data.CPSC2019_FILE).is_file()
needs_data = pytest.mark.skipif(
    not HAVE_DATA,
    reason=f"no CPSC2019 sample in {ecg_data.data_dir()} (set MSCNN_DATA to shared/data)",
)
TINY = TrainConfig(epochs=1, batch_size=2, crop_samples=1024)


def test_frame_labels():
    # peak 100, 50 ms = 25 samples: frame centres 8i + 4 in [75, 125] -> i = 9..15
    labels = frame_labels(np.array([100]), frames=40, reduction=8, fs=500, label_ms=50)
    assert np.flatnonzero(labels).tolist() == list(range(9, 16))
    labels = frame_labels(np.array([100, 4990]), frames=625, reduction=8, fs=500, label_ms=50)
    assert np.flatnonzero(labels).tolist() == [*range(9, 16), *range(621, 625)]
    assert frame_labels(np.zeros(0, np.int64), 10, 8, 500, 50).sum() == 0


@pytest.fixture(scope="module")
def synthetic():
    """Four seeded 2048-sample records with a spike train (no real data needed)."""
    rng = np.random.default_rng(3)
    signals = rng.normal(0, 0.05, (4, 2048)).astype(np.float32)
    peaks = [np.arange(150 + 40 * i, 2000, 400) for i in range(4)]
    for x, p in zip(signals, peaks, strict=True):
        x[p] += 1.5
    return signals, peaks


def test_training_is_deterministic(synthetic):
    signals, peaks = synthetic
    rng_before = torch.random.get_rng_state()
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    first = train(signals, peaks, TINY, seed=5)
    second = train(signals, peaks, TINY, seed=5)
    other = train(signals, peaks, TINY, seed=6)
    untrained = train(signals, peaks, replace(TINY, epochs=0), seed=5)
    # training left the caller's torch as it found it
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    a, b, c = first.state_dict(), second.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
    # it trained: weights moved away from the seeded initialisation
    init = untrained.state_dict()
    assert not torch.equal(a["clf.lin_2.weight"], init["clf.lin_2.weight"])
    assert not first.training


def test_training_starts_from_seeded_weights_not_the_shipped_ones():
    """A cross-validation fold must not start from weights trained on its held-out records."""
    signals = np.zeros((2, 1024), np.float32)
    untrained = train(signals, [np.array([500])] * 2, replace(TINY, epochs=0), seed=0)
    shipped = mscnn.load_checkpoint(CHECKPOINT).model.state_dict()
    init = untrained.state_dict()
    assert not any(torch.equal(init[k], shipped[k]) for k in init if k.endswith("weight"))


def test_training_refuses_bad_input(synthetic):
    signals, peaks = synthetic
    with pytest.raises(MscnnError, match="float32"):
        train(signals.astype(np.float64), peaks, TINY)
    with pytest.raises(MscnnError, match="4 records but 3 R-peak arrays"):
        train(signals, peaks[:3], TINY)
    bad = signals.copy()
    bad[1, 7] = np.nan
    with pytest.raises(MscnnError, match="NaN"):
        train(bad, peaks, TINY)
    with pytest.raises(MscnnError, match="crop_samples 1020 is not a multiple"):
        train(signals, peaks, TrainConfig(epochs=1, crop_samples=1020))


def test_cli_refuses_an_unreadable_recipe(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "m.pt"), "--expect", str(tmp_path / "no.json")]) == 2
    assert "error: recipe" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


# --- the committed checkpoint ------------------------------------------------------------


@pytest.fixture(scope="module")
def committed():
    return mscnn.load_checkpoint(CHECKPOINT)


def test_recipe_describes_the_committed_checkpoint(committed):
    recipe = json.loads(RECIPE.read_text())
    assert recipe["sha256"] == sha256_of(CHECKPOINT)
    assert recipe["config"] == TrainConfig().to_dict()  # the defaults made it
    assert len(recipe["records"]) == 50 and recipe["seed"] == committed.metadata["seed"]
    assert committed.preset == "cpsc2019_qrs" and committed.fs == 500


@needs_data
def test_committed_checkpoint_finds_the_beats(committed):
    records = ecg_data.cpsc2019_records()
    with torch.no_grad():
        logits = committed.model(torch.from_numpy(records.signals)[:, None]).numpy()
    assert logits.shape == (50, 625, 1)
    found = [detect_rpeaks(out) for out in logits]
    result = score_rpeaks(records.r_peaks, found)
    # seen in training, so optimistic; chance (no detector) scores 0
    assert result.score > 0.8 and result.f1 > 0.97


def test_committed_checkpoint_finds_nothing_in_a_flat_record(committed):
    flat = torch.tensor([0.0, 1.0, -2.0])[:, None, None].expand(3, 1, 5000).contiguous()
    with torch.no_grad():
        logits = committed.model(flat).numpy()
    for out in logits:
        assert detect_rpeaks(out, RPeakRule()).size == 0


@needs_data
def test_cli_refuses_an_unwritable_output_before_training(capsys):
    assert main(["--out", "/proc/no-such-folder/m.pt"]) == 2
    assert "error: cannot write /proc/no-such-folder/m.pt" in capsys.readouterr().err


def test_cli_refuses_a_non_positive_count():
    with pytest.raises(SystemExit) as exit_info:
        main(["--threads", "0"])
    assert exit_info.value.code == 2
