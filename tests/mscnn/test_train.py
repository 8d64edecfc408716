"""Training is deterministic and leaves no global state behind; the committed QRS detector
finds the real beats of its records through the deployed post-processing."""

import json
from dataclasses import fields, replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mscnn
from deploy.rpeaks import RPeakRule, detect_rpeaks, score_rpeaks
from mscnn import MscnnError
from mscnn import data as ecg_data
from mscnn.checkpoint import seeded_lstm_init
from mscnn.detectors import CRNNS, get_detector
from mscnn.heads import build_model
from mscnn.train import (
    CHECKPOINT,
    MODELS,
    TrainConfig,
    checkpoint_path,
    config_from_dict,
    frame_labels,
    load_recipe,
    main,
    sha256_of,
    train,
)

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


# --- the CRNN detectors and the recipes ---------------------------------------------------


@pytest.mark.parametrize("model", ["crnn", "crnn-uni"])
def test_crnn_recipe_trains_deterministically(synthetic, model):
    signals, peaks = synthetic[0][:2], synthetic[1][:2]  # one step of two 512-sample crops
    tiny = replace(MODELS[model], epochs=1, batch_size=2, crop_samples=512)
    first, second = train(signals, peaks, tiny, seed=5), train(signals, peaks, tiny, seed=5)
    untrained = train(signals, peaks, replace(tiny, epochs=0), seed=5)
    a, b, init = first.state_dict(), second.state_dict(), untrained.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    lstm = [k for k in a if k.startswith("rnn.") and "weight_hh" in k]
    assert lstm and all(not torch.equal(a[k], init[k]) for k in lstm)  # the LSTM trained
    with torch.no_grad():
        x = torch.from_numpy(signals[:1, None])
        assert torch.equal(first(x), second(x)) and first(x).shape == (1, 2048 // 8, 1)


def test_crnns_are_the_cnn_with_an_lstm_between_backbone_and_classifier():
    cnn = get_detector(MODELS["cnn"].preset)
    assert {c.preset for c in MODELS.values()} == {cnn.name, *CRNNS}
    for model, bidirectional, hidden in (("crnn", True, 32), ("crnn-uni", False, 64)):
        crnn = get_detector(MODELS[model].preset)
        lstm = crnn.config["rnn"]["lstm"]
        assert (lstm["bidirectional"], lstm["hidden_sizes"]) == (bidirectional, [hidden])
        assert {k: v for k, v in crnn.config.items() if k != "rnn"} == {
            k: v for k, v in cnn.config.items() if k != "rnn"
        }
        assert cnn.config["rnn"] == {"name": "none"}
        # the CRNNs take the CNN's recipe: only the model and the epochs differ
        assert replace(MODELS[model], preset=cnn.name, epochs=80) == MODELS["cnn"]
    with pytest.raises(MscnnError, match="unknown model 'cpsc2019'.*cpsc2019_qrs_bilstm"):
        get_detector("cpsc2019")  # a backbone detects nothing


def test_lstm_init_is_seeded_not_global():
    crnn = get_detector(MODELS["crnn"].preset)
    models = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        models.append(build_model(crnn.head, crnn.in_channels, crnn.config, crnn.classes))
        seeded_lstm_init(models[-1], seed=7)
    a, b = (m.rnn.state_dict() for m in models)
    assert a.keys() and all(torch.equal(a[k], b[k]) for k in a)
    seeded_lstm_init(models[1], seed=8)
    assert not any(torch.equal(a[k], v) for k, v in models[1].rnn.state_dict().items())


@pytest.mark.parametrize("model", list(MODELS))
def test_each_model_has_its_recipe_committed(model):
    """Every model's recipe JSON is committed and says what `MODELS` trains; where its
    checkpoint ships (the CNN; a CRNN only where it earns its place, see
    docs/whole-models.md), the recipe's sha256 is the checkpoint's."""
    config = MODELS[model]
    recipe = load_recipe(checkpoint_path(config).with_suffix(".json"))
    assert recipe.config == config and recipe.seed == 0
    data = json.loads(checkpoint_path(config).with_suffix(".json").read_text())
    assert data["checkpoint"] == checkpoint_path(config).name
    assert data["parameters"] == sum(p.numel() for p in train_model(config).parameters())
    if model == "cnn":
        assert recipe.sha256 == sha256_of(checkpoint_path(config))


def train_model(config):
    d = get_detector(config.preset)
    return build_model(d.head, d.in_channels, d.config, d.classes)


def _recipe(tmp_path, **change):
    data = json.loads(RECIPE.read_text())
    config = {**data["config"], **change.pop("config", {})}
    for key in [k for k, v in change.items() if v is None]:
        del data[key]
        change.pop(key)
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({**data, **change, "config": config}))
    return path


@pytest.mark.parametrize("key", [f.name for f in fields(TrainConfig)])
def test_a_recipe_missing_a_config_key_is_refused_naming_it(tmp_path, key):
    data = json.loads(RECIPE.read_text())
    del data["config"][key]
    (tmp_path / "r.json").write_text(json.dumps(data))
    with pytest.raises(MscnnError, match=f"config key '{key}' is missing"):
        load_recipe(tmp_path / "r.json")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"config": {"epoch": 3}}, "config key 'epoch' is unknown; a recipe config has exactly"),
        ({"config": {"epochs": "80"}}, "config key 'epochs' is '80', expected an int >= 0"),
        ({"config": {"batch_size": 0}}, "config key 'batch_size' is 0, expected an int >= 1"),
        ({"config": {"lr": -1.0}}, "config key 'lr' is -1.0, expected a float >= 0"),
        ({"config": {"threads": True}}, "config key 'threads' is True"),
        ({"config": {"gain_range": [2.0, 0.5]}}, "'gain_range' is \\[2.0, 0.5\\]"),
        ({"config": {"preset": "cpsc2019"}}, "unknown model 'cpsc2019' to train"),
        ({"seed": "0"}, "key 'seed' is '0', expected an int"),
        ({"sha256": None}, "key 'sha256' is missing"),
        ({"format": "other"}, "'format' is 'other', expected 'mscnn-edge/train-recipe'"),
    ],
)
def test_a_malformed_recipe_is_refused_naming_the_key(tmp_path, change, message):
    with pytest.raises(MscnnError, match=message):
        load_recipe(_recipe(tmp_path, **change))


@given(st.dictionaries(st.sampled_from([f.name for f in fields(TrainConfig)]), st.none()))
@settings(max_examples=30, deadline=None)
def test_a_recipe_config_with_a_null_value_is_refused(nulls):
    defaults = MODELS["cnn"].to_dict()
    values = {**defaults, **nulls}
    if not nulls:
        assert config_from_dict(values, "here") == MODELS["cnn"]
        return
    first = next(f.name for f in fields(TrainConfig) if f.name in nulls)
    with pytest.raises(MscnnError, match=f"here: config key '{first}' is None"):
        config_from_dict(values, "here")


def test_cli_refuses_a_malformed_recipe_before_training(tmp_path, capsys):
    out = tmp_path / "m.pt"
    recipe = _recipe(tmp_path, config={"crop_sample": 4000})
    assert main(["--recipe", str(recipe), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: recipe") and "'crop_sample' is unknown" in err
    assert err.count("\n") == 1 and not out.exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "rnn"])
    assert exit_info.value.code == 2
