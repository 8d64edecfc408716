"""Our conv schedule: applied to every conv kernel it can take, harmless to the rest."""

import logging

import numpy as np
import pytest
import torch

import mscnn
from compile import TARGETS, BuildOptions, build, resolve_variant
from compile.export import INPUT_NAME, export_onnx
from compile.schedule import kernel_kind, schedule_pass
from compile.targets import tvm_target
from deploy import Predictor, compare

CPU_TARGETS = [name for name, t in TARGETS.items() if t.tile is not None]


def scheduled_module(model, target, folder, samples=256):
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.relax.frontend.onnx import from_onnx

    path = export_onnx(model, folder / "m.onnx", batch=1, samples=samples)
    mod = from_onnx(
        onnx.load(str(path)),
        shape_dict={INPUT_NAME: [1, model.in_channels, samples]},
        dtype_dict={INPUT_NAME: "float32"},
    )
    mod = relax.transform.DecomposeOpsForInference()(mod)
    tv = tvm_target(target)
    with tv:
        mod = tvm.transform.Sequential(cpu.library_dispatch_passes(tv) + cpu.legalize_passes(tv))(
            mod
        )
        return mod, schedule_pass(target.tile)(mod)


def conv_kernels(mod):
    from tvm import tirx

    return {
        gv.name_hint: f
        for gv, f in mod.functions.items()
        if isinstance(f, tirx.PrimFunc) and kernel_kind(f) == "conv"
    }


@pytest.mark.parametrize("name", CPU_TARGETS)
@pytest.mark.parametrize("preset", ["cpsc2019", "multi_scopic_leadwise"])
def test_every_conv_kernel_is_scheduled(name, preset, tmp_path):
    model = mscnn.load_model(preset).model
    before, after = scheduled_module(model, TARGETS[name], tmp_path)
    convs = conv_kernels(before)
    assert len(convs) == 18  # 3 branches x (1 + 2 + 3) convs
    kernels = {gv.name_hint: f for gv, f in after.functions.items()}
    scheduled = {n: kernels.get(f"{n}_s") for n in convs}
    assert None not in scheduled.values() and not set(convs) & set(kernels)
    assert all(f.attrs["tirx.is_scheduled"] for f in scheduled.values())
    # The weights are repacked to [F/vec, C, K, vec] at compile time.
    vec = TARGETS[name].tile.vec
    shapes = [
        tuple(p.ty.shape)
        for f in scheduled.values()
        for p in f.params
        if len(getattr(p.ty, "shape", ())) == 4
    ]
    assert len(shapes) == 18 and all(s[-1] == vec for s in shapes)


def test_unsupported_kernels_keep_default_loops_and_stay_correct(tmp_path, caplog):
    """6 filters is no multiple of 8 lanes: that conv keeps TVM's loops, parity holds."""
    config = {**mscnn.PRESETS["cpsc2019"].config, "num_filters": [[6, 16, 16]] * 3}
    model = mscnn.MultiScopicCNN(1, **config)
    mscnn.seeded_init(model, 3)
    loaded = mscnn.LoadedModel(model.eval(), None, ("ECG",), 500, "test model")
    with caplog.at_level(logging.INFO, logger="compile.schedule"):
        bundle = build(
            loaded,
            TARGETS["x86_64"],
            resolve_variant(loaded, "1"),
            tmp_path,
            BuildOptions(samples=256),
        )
    assert "no multiple of 8 lanes" in caplog.text
    # Run here, as a device runs it, on an input the build never saw: not the manifest's
    # verdict, which only a passing build publishes.
    predictor = Predictor(bundle.path)
    x = np.random.default_rng(5).standard_normal(predictor.bundle.input_shape, np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert compare(predictor(x), expected).passed


def test_no_global_rng_use(tmp_path):
    """Building leaves torch's global RNG as it was (seeded generators only)."""
    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    scheduled_module(mscnn.load_model("cpsc2019").model, TARGETS["x86_64"], tmp_path)
    assert torch.equal(torch.rand(2), expected)
