"""Cross-validation: fixed, disjoint folds covering every record; every record scored once."""

import json

import numpy as np
import pytest

from compile.bench.evaluate import cross_validate, fold_indices
from compile.errors import CompileError
from mscnn import data as ecg_data
from mscnn.train import TrainConfig


def test_folds_partition_the_records_and_depend_on_the_seed():
    folds = fold_indices(50, 5, seed=0)
    assert [len(f) for f in folds] == [10] * 5
    assert sorted(np.concatenate(folds).tolist()) == list(range(50))
    assert [f.tolist() for f in fold_indices(50, 5, seed=0)] == [f.tolist() for f in folds]
    assert [f.tolist() for f in fold_indices(50, 5, seed=1)] != [f.tolist() for f in folds]
    assert [len(f) for f in fold_indices(7, 3, seed=0)] == [3, 2, 2]
    with pytest.raises(CompileError, match="1 folds over 50 records"):
        fold_indices(50, 1, seed=0)


@pytest.mark.skipif(
    not (ecg_data.data_dir() / ecg_data.CPSC2019_FILE).is_file(),
    reason=f"no CPSC2019 sample in {ecg_data.data_dir()} (set MSCNN_DATA)",
)
def test_a_tiny_cross_validation_scores_every_record_once():
    tiny = TrainConfig(epochs=1, batch_size=25, crop_samples=512)
    result = cross_validate(k=2, seed=0, config=tiny)
    assert len(result.folds) == 2
    held = [name for f in result.folds for name in f.records]
    assert sorted(held) == sorted(ecg_data.cpsc2019_records().names)
    assert len(result.pooled.record_scores) == 50
    assert sum(len(f.score.record_scores) for f in result.folds) == 50
    data = json.loads(json.dumps(result.to_dict()))
    assert data["k"] == 2 and data["config"]["epochs"] == 1
    assert "pooled" in result.table()
