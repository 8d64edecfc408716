"""The streaming step exported to ONNX, run hop by hop in ONNX Runtime as a device runner
would (only the step, the states passed back in, the end signalled with n_valid), gives
the offline PyTorch frames of a real record."""

import warnings

import numpy as np
import onnx
import pytest
import torch

import mscnn
from compile import CompileError
from compile.export import META, NEXT, export_step_onnx, stream_facts, stream_onnx, stream_record
from deploy.parity import compare
from mscnn import ECG_SEQ_LAB_NET, StepModule
from mscnn import data as ecg_data

HAVE_CPSC = (ecg_data.data_dir() / ecg_data.CPSC2019_FILE).is_file()
needs_cpsc = pytest.mark.skipif(
    not HAVE_CPSC,
    reason=f"no {ecg_data.CPSC2019_FILE} in {ecg_data.data_dir()} (set MSCNN_DATA to the "
    "shared/data folder)",
)


@pytest.fixture(scope="module")
def detector():
    return mscnn.load_model("cpsc2019_qrs").model


@pytest.fixture(scope="module")
def record():
    """Three CPSC2019 records back to back, cut to a length that is not a multiple of 8."""
    if not HAVE_CPSC:
        pytest.skip(f"no {ecg_data.CPSC2019_FILE} in {ecg_data.data_dir()} (set MSCNN_DATA)")
    signals = ecg_data.cpsc2019_records().signals
    return np.ascontiguousarray(signals[:3].reshape(1, -1)[:, :14_995])


def offline(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(x)[None])[0]
    return (out.T if isinstance(model, ECG_SEQ_LAB_NET) else out).numpy()


@needs_cpsc
@pytest.mark.parametrize(("preset", "hop"), [("cpsc2019_qrs", 128), ("cpsc2019", 512)])
def test_onnx_step_streams_a_real_record(tmp_path, record, preset, hop):
    model = mscnn.load_model(preset).model
    path = export_step_onnx(model, hop, tmp_path / "step.onnx")
    got = stream_onnx(path, record)
    result = compare(got, offline(model, record), "cpu")
    assert result.passed, str(result)
    assert got.shape[-1] == 14_995 // 8


def test_onnx_interface_is_the_state_specs(tmp_path, detector):
    step = StepModule(detector, 64)
    path = export_step_onnx(detector, 64, tmp_path / "step.onnx")
    graph = onnx.load(str(path)).graph
    specs = step.state_specs()

    def shape(value):
        return tuple(d.dim_value for d in value.type.tensor_type.shape.dim)

    assert [i.name for i in graph.input] == ["ecg", "n_valid", *(s.name for s in specs)]
    assert [o.name for o in graph.output] == ["frames", "valid", *(NEXT + s.name for s in specs)]
    assert shape(graph.input[0]) == (1, 1, 64) and shape(graph.output[0]) == (1, 1, 8)
    for spec, given, returned in zip(specs, graph.input[2:], graph.output[2:], strict=True):
        assert shape(given) == shape(returned) == spec.shape
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta == stream_facts(step)
    assert meta[f"{META}hop"] == "64" and meta[f"{META}look_ahead"] == "988"


def test_short_and_empty_ends(tmp_path, detector):
    """A record ending inside the first hop, and one ending exactly on a hop (the end is
    then an empty hop)."""
    path = export_step_onnx(detector, 64, tmp_path / "step.onnx")
    rng = np.random.default_rng(0)
    for samples in (9, 640):
        x = rng.standard_normal((1, samples)).astype(np.float32)
        result = compare(stream_onnx(path, x), offline(detector, x), "cpu")
        assert result.passed, f"{samples} samples: {result}"


def test_a_model_that_cannot_stream_is_refused(tmp_path):
    config = dict(mscnn.PRESETS["cpsc2019_qrs"].config, attn={"name": "se"})
    model = ECG_SEQ_LAB_NET(["N"], 1, config).eval()
    with pytest.raises(CompileError, match=r"layer attn \(SqueezeExcitation\)"):
        export_step_onnx(model, 64, tmp_path / "step.onnx")
    assert not (tmp_path / "step.onnx").exists()


@needs_cpsc
@pytest.mark.slow
def test_tvm_compiles_the_step_and_it_streams(tmp_path, detector, record):
    """The exported step through TVM's ONNX importer and default CPU pipeline (no
    schedule): the int64 clock, the masks and the state slices all compile, and the
    compiled step streams the record exactly."""
    import tvm
    from tvm import relax

    from compile.lowering.pipeline import import_onnx

    step_module = StepModule(detector, 512)
    path = export_step_onnx(detector, 512, tmp_path / "step.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TVM renames the dotted state names
        mod = import_onnx(path, (1, 1, 512))
    vm = relax.VirtualMachine(
        tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"})), tvm.cpu()
    )

    def step(x, n_valid, states):
        args = [tvm.runtime.tensor(a) for a in (x, n_valid, *states)]
        frames, valid, *states = (r.numpy() for r in vm["main"](*args))
        return frames, valid, states

    states = [s.numpy() for s in step_module.initial_states()]
    got = stream_record(step, record, states, 512, step_module.flush_steps)
    result = compare(got, offline(detector, record), "cpu")
    assert result.passed, str(result)


@needs_cpsc
@pytest.mark.slow
def test_five_minutes_through_onnx_runtime(tmp_path, detector):
    """30 CPSC2019 records (5 min) back to back through the ONNX step at a 1 s hop."""
    x = np.ascontiguousarray(ecg_data.cpsc2019_records().signals[:30].reshape(1, -1))
    got = stream_onnx(export_step_onnx(detector, 512, tmp_path / "step.onnx"), x)
    result = compare(got, offline(detector, x), "cpu")
    assert result.passed, str(result)
