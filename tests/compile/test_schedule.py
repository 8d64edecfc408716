"""Our conv schedule: applied to every conv kernel it can take, harmless to the rest."""

import logging

import numpy as np
import pytest
import torch

import mscnn
from compile import TARGETS, BuildOptions, build, resolve_variant
from compile.export import export_onnx
from compile.lowering.pipeline import front_passes
from compile.lowering.schedule import kernel_kind, schedule_pass
from compile.targets import runnable_here, tvm_target
from deploy import Predictor, compare

CPU_TARGETS = [name for name, t in TARGETS.items() if t.tile is not None and t.default]


def scheduled_module(model, target, folder, samples=256, path=None):
    """(the fused kernels, the same scheduled) of `model` or of the ONNX file `path`."""
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    path = path or export_onnx(model, folder / "m.onnx", batch=1, samples=samples)
    graph = onnx.load(str(path))
    inputs = {i.name: i.type.tensor_type for i in graph.graph.input}
    dtype = onnx.helper.tensor_dtype_to_np_dtype
    mod = from_onnx(
        graph,
        shape_dict={n: [d.dim_value for d in t.shape.dim] for n, t in inputs.items()},
        dtype_dict={n: dtype(t.elem_type).name for n, t in inputs.items()},
    )
    mod = relax.transform.DecomposeOpsForInference()(mod)
    tv = tvm_target(target)
    with tv:
        mod = tvm.transform.Sequential(front_passes(tv))(mod)
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
    scheduled = {n: scheduled_conv(kernels, n) for n in convs}
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


def scheduled_conv(kernels, name):
    """The scheduled kernel of conv kernel `name`: alone, or with the max-pool after it."""
    pooled = [f for n, f in kernels.items() if n.startswith(f"{name}_max_pool") and n[-2:] == "_s"]
    return kernels.get(f"{name}_s") or (pooled[0] if len(pooled) == 1 else None)


def kernels_of(mod, kind):
    from tvm import tirx

    return {
        gv.name_hint
        for gv, f in mod.functions.items()
        if isinstance(f, tirx.PrimFunc) and kernel_kind(f) == kind
    }


@pytest.mark.parametrize("name", CPU_TARGETS)
def test_a_detectors_head_is_scheduled(name, tmp_path):
    """The per-frame linear layers (matmul + bias + Mish) take the register tile; the
    last one, a single output feature, is no vector and keeps TVM's loops."""
    model = mscnn.load_model("cpsc2019_qrs").model
    before, after = scheduled_module(model, TARGETS[name], tmp_path)
    matmuls = kernels_of(before, "matmul")
    assert len(matmuls) == 3
    names = {gv.name_hint for gv in after.functions}
    kept = {n for n in matmuls if f"{n}_s" not in names}
    assert len(kept) == 1 and all(n in names for n in kept)
    # Mish's exp and tanh are TVM's vectorisable approximations (FastMathTransform),
    # not one libm call per lane; its log stays exact.
    mish = [f.script() for gv, f in after.functions.items() if gv.name_hint.endswith("_s")]
    assert all("T.tanh(" not in text and "T.exp(" not in text for text in mish)
    assert any("T.log(" in text for text in mish)


@pytest.mark.parametrize("name", CPU_TARGETS)
def test_every_conv_of_a_stream_step_is_scheduled(name, tmp_path):
    """A stream step's convs carry its end-of-record mask (index arithmetic before the
    conv, a `where` after it): the index blocks are inlined into the epilogue."""
    from compile.export import export_step_onnx

    model = mscnn.load_model("cpsc2019_qrs").model.eval()
    path = export_step_onnx(model, 512, tmp_path / "step.onnx")
    before, after = scheduled_module(None, TARGETS[name], tmp_path, path=path)
    convs = kernels_of(before, "conv")
    assert len(convs) == 18 and any("where" in n for n in convs)
    kernels = {gv.name_hint: f for gv, f in after.functions.items()}
    missed = sorted(n for n in convs if scheduled_conv(kernels, n) is None)
    assert not missed


def test_unsupported_kernels_keep_default_loops_and_stay_correct(tmp_path, caplog):
    """6 filters is no multiple of 8 lanes: that conv keeps TVM's loops, parity holds."""
    config = {**mscnn.PRESETS["cpsc2019"].config, "num_filters": [[6, 16, 16]] * 3}
    model = mscnn.MultiScopicCNN(1, **config)
    mscnn.seeded_init(model, 3)
    loaded = mscnn.LoadedModel(model.eval(), None, ("ECG",), 500, "test model")
    with caplog.at_level(logging.INFO, logger="compile.lowering.schedule"):
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


def _layout_kernels():
    """TE kernels shaped like a CRNN's glue: (name, its tensors with the output last, numpy
    reference of the output from the inputs). The transposes are the BiLSTM -> SE and
    SE -> classifier moves."""
    from tvm import te, topi

    lstm = te.placeholder((625, 2, 1, 256), name="lstm")
    gate = te.placeholder((1, 512), name="gate")
    channels = te.placeholder((1, 512, 625), name="channels")
    small = te.placeholder((4, 2, 1, 16), name="small")

    def to_channels(x):  # (T, 2, 1, H) -> (1, 2H, T)
        t, d, _, h = (int(v) for v in x.shape)
        return topi.transpose(
            topi.reshape(topi.transpose(x, (0, 2, 1, 3)), (t, 1, d * h)), (1, 2, 0)
        )

    scaled = topi.transpose(topi.multiply(channels, topi.expand_dims(gate, 2)), (0, 2, 1))
    mean = topi.divide(topi.sum(channels, axis=2, keepdims=True), 625.0)
    flat = topi.reshape(topi.transpose(lstm, (0, 2, 1, 3)), (1, 625, 512))
    return [
        ("transpose", [lstm, to_channels(lstm)], lambda x: x.reshape(625, 512).T[None]),
        ("scaled", [channels, gate, scaled], lambda c, g: (c * g[:, :, None]).transpose(0, 2, 1)),
        ("copy", [lstm, flat], lambda x: x.reshape(1, 625, 512)),
        ("small", [small, to_channels(small)], lambda x: x.reshape(4, 32).T[None]),
        ("mean", [channels, mean], lambda c: c.mean(axis=2, keepdims=True)),
    ]


@pytest.mark.parametrize("case", range(5), ids=["transpose", "scaled", "copy", "small", "mean"])
def test_layout_kernels_run_in_parallel_and_compute_the_same(case):
    """The data-movement and reduction kernels between a BiLSTM's layers and around its SE
    block run on every thread (tiled where they transpose) and compute what TVM's default
    loops compute; a kernel too small to gain keeps its loops."""
    import tvm
    from tvm import te

    from compile.lowering.schedule import _reduce, schedule_layout

    name, tensors, reference = _layout_kernels()[case]
    func = te.create_prim_func(tensors)
    kind = kernel_kind(func)
    assert kind == ("reduce" if name == "mean" else "layout")
    schedule = schedule_layout if kind == "layout" else _reduce
    if name == "small":
        with pytest.raises(ValueError, match="too small"):
            schedule(func)
        return
    scheduled = schedule(func)
    assert "T.parallel" in scheduled.script()
    target = TARGETS["x86_64"].tvm
    rng = np.random.default_rng(2)
    inputs = [
        rng.standard_normal([int(d) for d in t.shape]).astype("float32") for t in tensors[:-1]
    ]
    out = tensors[-1]
    results = []
    for f in (func, scheduled):
        library = tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target)
        result = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], "float32"))
        library(*[tvm.runtime.tensor(x) for x in inputs], result)
        results.append(result.numpy())
    np.testing.assert_array_equal(results[1], results[0])
    np.testing.assert_allclose(results[1], reference(*inputs), rtol=1e-5, atol=1e-6)


def _run(mod, target, x):
    """Compile a module the schedule pass has run on and call it on `x`."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    tv = tvm_target(target)
    rest = tvm.transform.Sequential(cpu.dataflow_lower_passes(tv) + cpu.finalize_passes(tv))
    with tv:
        executable = tvm.compile(mod, target=tv, relax_pipeline=rest)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x, tvm.cpu())).numpy()


@pytest.mark.parametrize("name", CPU_TARGETS)
def test_each_max_pool_is_merged_into_the_conv_before_it(name, tmp_path):
    """Every block's max-pool (window 2, stride 2) runs inside the conv kernel before
    it, and (on the targets this machine runs in process; the ARM bundles are held to
    PyTorch under qemu by the parity tests) the output is bit for bit the output with
    the pools left on their own."""
    from compile.lowering.pools import pool_window

    model = mscnn.load_model("multi_scopic_leadwise").model
    target = TARGETS[name]
    before, after = scheduled_module(model, target, tmp_path, samples=512)
    pools = [n for n, f in before.functions.items() if pool_window(f) == 2]
    assert len(pools) >= 3  # 9 pool calls share 3 kernels (one per shape)
    kernels = [gv.name_hint for gv in after.functions]
    assert not any(n.startswith("max_pool") for n in kernels)
    assert sum("_max_pool" in n for n in kernels) == 9
    with tvm_target(target):
        apart = schedule_pass(target.tile, pools=False)(before)
    assert sum(n.name_hint.startswith("max_pool") for n in apart.functions) == 3
    if not runnable_here(target)[0]:
        return
    x = np.random.default_rng(2).standard_normal((1, 12, 512), np.float32)
    np.testing.assert_array_equal(_run(after, target, x), _run(apart, target, x))


def test_a_pool_that_is_not_its_strides_window_keeps_its_own_kernel(tmp_path):
    """Overlapping windows (3, stride 2) and padding leave the pool alone, and right."""
    pooled = torch.nn.Sequential(
        torch.nn.Conv1d(1, 16, 5, padding=2),
        torch.nn.ReLU(),
        torch.nn.MaxPool1d(3, 2),
        torch.nn.Conv1d(16, 16, 3, padding=1),
        torch.nn.MaxPool1d(2, 2, padding=1),
    ).eval()
    pooled.in_channels = 1
    target = TARGETS["x86_64"]
    _, after = scheduled_module(pooled, target, tmp_path, samples=256)
    kernels = [gv.name_hint for gv in after.functions]
    assert sum(n.startswith("max_pool") for n in kernels) == 2, kernels
    x = np.random.default_rng(3).standard_normal((1, 1, 256), np.float32)
    with torch.no_grad():
        expected = pooled(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(after, target, x), expected, rtol=1e-5, atol=1e-6)


class _SharedConv(torch.nn.Module):
    """A conv whose output a max-pool and a strided slice both read."""

    in_channels = 1

    def __init__(self):
        super().__init__()
        self.conv, self.pool = torch.nn.Conv1d(1, 16, 5, padding=2), torch.nn.MaxPool1d(2, 2)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return torch.cat([self.pool(y), y[:, :, ::2] * 2.0], 1)


def test_a_conv_output_another_kernel_reads_keeps_its_pool_apart(tmp_path):
    """Merged, the conv's whole output would no longer exist for its other reader."""
    model = _SharedConv().eval()
    target = TARGETS["x86_64"]
    _, after = scheduled_module(model, target, tmp_path, samples=256)
    kernels = [gv.name_hint for gv in after.functions]
    assert sum(n.startswith("max_pool") for n in kernels) == 1, kernels
    x = np.random.default_rng(4).standard_normal((1, 1, 256), np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(after, target, x), expected, rtol=1e-5, atol=1e-6)
