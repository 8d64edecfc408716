"""The TFLite Micro side-by-side: the Keras copy of the detector is the PyTorch network
(the runner checks it before converting), TFLM runs the converted model on the held-out
records, and the report holds both sides' accuracy and memory. TFLM runs in `.venv-tflm`
(`make test` and `make tflm` make it)."""

import json

import numpy as np
import pytest

import mscnn
from compile.bench import tflm
from compile.errors import CompileError


@pytest.fixture(scope="module")
def detector():
    return mscnn.load_model("cpsc2019_qrs").model


def test_spec_holds_every_layer_of_the_detector(detector):
    spec, arrays = tflm.network_spec(detector, 5000)
    convs = [c for branch in spec["branches"] for block in branch for c in block["convs"]]
    assert len(convs) == 18 and len(spec["head"]) == 3
    assert [d["activation"] for d in spec["head"]] == ["mish", "mish", None]
    assert all(block["post"] is not None for b in spec["branches"] for block in b)
    params = sum(a.size for a in arrays.values())
    folded = sum(p.numel() for p in detector.parameters())  # BN folds to scale and shift
    assert params == folded


def test_refusals(detector, tmp_path):
    classifier = mscnn.load_model("leadwise_classifier").model
    with pytest.raises(CompileError, match="takes the QRS detector"):
        tflm.network_spec(classifier, 5000)
    with pytest.raises(CompileError, match="run `make tflm`"):
        tflm.run_runner(tmp_path / "spec.npz", tmp_path, python=tmp_path / "no-python")


@pytest.mark.slow
def test_side_by_side(tmp_path):
    if not tflm.TFLM_PYTHON.is_file():
        pytest.skip(f"no {tflm.TFLM_PYTHON}: `make test` (or `make tflm`) makes it")
    done = tflm.compare(tmp_path)
    assert done.keras_error <= 1e-4  # the network TFLM got is PyTorch's
    fp32, ours, other = done.sides
    assert ours.score >= fp32.score - 0.01  # our int8 keeps the fp32 score
    # TFLM really ran the held-out records: a score and F1 from its own beats
    assert 0.0 <= other.score <= 1.0 and other.f1 > 0.5
    # its flatbuffer holds the int8 weights (and the graph): about our int8 weights' bytes
    assert 0.9 * ours.weights_bytes < other.weights_bytes < 1.5 * ours.weights_bytes
    assert other.arena_bytes > 0 and done.stream_arena_bytes < ours.arena_bytes
    report = json.loads((tmp_path / tflm.REPORT).read_text())
    assert [s["name"] for s in report["sides"]] == [s.name for s in done.sides]
    assert (tmp_path / "detector_int8.tflite").stat().st_size == other.weights_bytes
    assert np.isfinite(report["keras_error"])
