"""Cross-validation: fixed, disjoint folds covering every record; every record scored once;
the CNN and the CRNN split the same way and are compared on the same folds."""

import argparse
import json
from dataclasses import replace

import numpy as np
import pytest

from compile.bench.evaluate import (
    comparison,
    comparison_table,
    cross_validate,
    fold_indices,
    main,
    parse_models,
)
from compile.errors import CompileError
from mscnn import data as ecg_data
from mscnn.train import MODELS

needs_data = pytest.mark.skipif(
    not (ecg_data.data_dir() / ecg_data.CPSC2019_FILE).is_file(),
    reason=f"no CPSC2019 sample in {ecg_data.data_dir()} (set MSCNN_DATA)",
)


def test_folds_partition_the_records_and_depend_on_the_seed():
    folds = fold_indices(50, 5, seed=0)
    assert [len(f) for f in folds] == [10] * 5
    assert sorted(np.concatenate(folds).tolist()) == list(range(50))
    assert [f.tolist() for f in fold_indices(50, 5, seed=0)] == [f.tolist() for f in folds]
    assert [f.tolist() for f in fold_indices(50, 5, seed=1)] != [f.tolist() for f in folds]
    assert [len(f) for f in fold_indices(7, 3, seed=0)] == [3, 2, 2]
    with pytest.raises(CompileError, match="1 folds over 50 records"):
        fold_indices(50, 1, seed=0)


def tiny(model):
    return replace(MODELS[model], epochs=1, batch_size=25, crop_samples=512)


@pytest.fixture(scope="module")
def tiny_runs():
    """A 2-fold, 1-epoch cross-validation of the CNN and of the CRNN (seconds each)."""
    return {m: cross_validate(k=2, seed=0, config=tiny(m)) for m in ("cnn", "crnn")}


@needs_data
def test_a_tiny_cross_validation_scores_every_record_once(tiny_runs):
    result = tiny_runs["cnn"]
    assert len(result.folds) == 2
    held = [name for f in result.folds for name in f.records]
    assert sorted(held) == sorted(ecg_data.cpsc2019_records().names)
    assert len(result.pooled.record_scores) == 50
    assert sum(len(f.score.record_scores) for f in result.folds) == 50
    data = json.loads(json.dumps(result.to_dict()))
    assert data["k"] == 2 and data["config"]["epochs"] == 1
    assert "pooled" in result.table()


@needs_data
def test_the_cnn_and_the_crnn_are_compared_on_the_same_folds(tiny_runs):
    cnn, crnn = tiny_runs["cnn"], tiny_runs["crnn"]
    assert [f.records for f in cnn.folds] == [f.records for f in crnn.folds]
    assert crnn.config.preset == "cpsc2019_qrs_bilstm" and crnn.parameters > cnn.parameters
    data = json.loads(json.dumps(comparison(tiny_runs, "a CPU")))
    assert data["folds"] == [list(f.records) for f in cnn.folds]
    assert list(data["models"]) == ["cnn", "crnn"]
    for name, result in tiny_runs.items():
        figures = data["models"][name]
        assert figures["pooled"]["score"] == result.pooled.score
        assert figures["score"]["mean"] == pytest.approx(
            np.mean([f.score.score for f in result.folds])
        )
        assert figures["seconds"] >= figures["train_seconds"] > 0
    assert "CPU: a CPU" in comparison_table(data)
    # a model cross-validated on other folds is refused, not compared
    other = replace(crnn, folds=tuple(reversed(crnn.folds)))
    with pytest.raises(CompileError, match="different folds"):
        comparison({"cnn": cnn, "crnn": other}, "a CPU")


def test_models_are_named_from_the_training_models():
    assert parse_models("cnn, crnn-uni") == ["cnn", "crnn-uni"]
    for bad in ("cnn,cnn", "", "cnn,rnn"):
        with pytest.raises(argparse.ArgumentTypeError, match="distinct names from cnn, crnn"):
            parse_models(bad)


def test_cli_refuses_an_unknown_model_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--models", "lstm", "--out", str(tmp_path / "ev")])
    assert exit_info.value.code == 2
    assert "--models: expected distinct names" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()
