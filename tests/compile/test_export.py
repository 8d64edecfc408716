"""ONNX export is checked by the ONNX checker and against PyTorch before TVM sees it."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from compile import CompileError
from compile.export import check_onnx, export_onnx
from compile.golden import golden_inputs


def reference(model, inputs):
    with torch.no_grad():
        return {k: model(torch.from_numpy(x)).numpy() for k, x in inputs.items()}


def test_export_is_static_named_and_matches(tmp_path, cpsc):
    path = export_onnx(cpsc.model, tmp_path / "m.onnx", batch=2, samples=300)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["ecg"]
    assert [o.name for o in graph.output] == ["features"]
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 1, 300]
    inputs = golden_inputs(cpsc.leads, 300, cpsc.fs, batch=2)
    result = check_onnx(path, inputs, reference(cpsc.model, inputs))
    assert result.passed and result.normalised <= 1e-5


def test_a_wrong_onnx_file_fails_the_check(tmp_path, cpsc):
    """Scale the first conv's weights in the ONNX file: ONNX Runtime no longer agrees."""
    path = export_onnx(cpsc.model, tmp_path / "m.onnx", batch=1, samples=300)
    model = onnx.load(str(path))
    init = next(t for t in model.graph.initializer if t.name.endswith("block_0.ca_0.conv1d.weight"))
    weights = numpy_helper.to_array(init) * 1.5
    init.CopyFrom(numpy_helper.from_array(weights, init.name))
    onnx.save(model, str(path))
    inputs = golden_inputs(cpsc.leads, 300, cpsc.fs)
    result = check_onnx(path, inputs, reference(cpsc.model, inputs))
    assert not result.passed


def test_training_mode_is_refused(tmp_path, cpsc):
    model = mscnn_copy(cpsc.model).train()
    with pytest.raises(CompileError, match="training mode"):
        export_onnx(model, tmp_path / "m.onnx", batch=1, samples=300)


def test_export_failure_names_the_stage(tmp_path, cpsc):
    with pytest.raises(CompileError, match="export to ONNX failed"):
        export_onnx(cpsc.model, tmp_path / "missing-dir" / "m.onnx", batch=1, samples=300)


def test_golden_inputs_are_seeded_and_ecg_like():
    a = golden_inputs(("I", "II", "V2"), 5000, 500)
    b = golden_inputs(("I", "II", "V2"), 5000, 500)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    ecg = a["ecg"][0, 1]  # lead II: R peaks about 1.2 mV, ~72 bpm
    peaks = np.flatnonzero((ecg[1:-1] > 0.8) & (ecg[1:-1] >= ecg[:-2]) & (ecg[1:-1] >= ecg[2:]))
    assert 9 <= len(peaks) <= 15
    assert a["ecg"].dtype == np.float32 and a["noise"].shape == (1, 3, 5000)


def mscnn_copy(model):
    import copy

    return copy.deepcopy(model)


def test_shape_arithmetic_is_folded_for_tvm(tmp_path):
    """Even kernels add a (1, 0) zero pad; its pads must reach TVM as a constant."""
    import mscnn

    config = {
        **mscnn.PRESETS["cpsc2019"].config,
        "filter_lengths": [[4, 6, 4]] * 3,
        "scopes": [[[1], [1, 3], [1, 3, 5]]] * 3,
    }
    model = mscnn.MultiScopicCNN(1, **config).eval()
    path = export_onnx(model, tmp_path / "m.onnx", batch=1, samples=256)
    graph = onnx.load(str(path)).graph
    constants = {t.name for t in graph.initializer}
    pads = [n for n in graph.node if n.op_type == "Pad"]
    assert pads and all(n.input[1] in constants for n in pads)
    assert not [n for n in graph.node if n.op_type in ("ConstantOfShape", "Cast", "Slice")]
