"""Whole models with an LSTM head compile: the ONNX LSTM lowered to one input-projection
matmul per layer plus a TIR recurrence kernel (compile/lowering/lstm.py), checked
against PyTorch on real ECG in process (x86_64) and under qemu with the native runner
(aarch64, armv7), the CUDA library built (no GPU here); refused for Cortex-M with its cost.

The model is torch_ecg's default ECG_SEQ_LAB_NET_CONFIG (multi_scopic backbone,
bidirectional LSTM, SE, 256-64 classifier) with 4/4/8 filters per branch and hidden sizes
32/32 instead of 256/256, so that a build takes about a minute; docs/whole-models.md has
the full-size figures. Built at 512 samples (1 s), one bundle per target, once per
module."""

import copy
import warnings

import numpy as np
import pytest
import torch
from native_runner import run_native

import mscnn
from compile import TARGETS, BuildOptions, build, resolve_variant
from compile.errors import CompileError
from compile.lowering.lstm import LstmConverter
from deploy.predictor import Predictor
from mscnn import data as ecg_data

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torch_ecg.model_configs import ECG_SEQ_LAB_NET_CONFIG

SAMPLES = 512


def seq_lab_crnn(bidirectional=True, attn="se"):
    config = copy.deepcopy(ECG_SEQ_LAB_NET_CONFIG)
    config.cnn.multi_scopic.num_filters = [[4, 4, 8]] * 3  # a quick backbone under qemu
    config.rnn.lstm.hidden_sizes = [32, 32]
    config.rnn.lstm.bidirectional = bidirectional
    config.attn.name = attn
    model = mscnn.ECG_SEQ_LAB_NET(["qrs"], 1, config)
    mscnn.seeded_init(model, 5)
    return model.eval()


@pytest.fixture(scope="module")
def crnn(tmp_path_factory):
    path = tmp_path_factory.mktemp("crnn") / "crnn.pt"
    mscnn.save_checkpoint(path, seq_lab_crnn(), leads=["II"], fs=500)
    return mscnn.load_checkpoint(path)


@pytest.fixture(scope="module")
def crnn_bundles(tmp_path_factory, crnn):
    out = tmp_path_factory.mktemp("crnn_bundles")
    variant = resolve_variant(crnn, "1")
    options = BuildOptions(samples=SAMPLES)
    targets = ("x86_64", "aarch64", "armv7")  # armv7: ~21 s more, its qemu check ~8 s
    return {n: build(crnn, TARGETS[n], variant, out, options) for n in targets}


def cpsc_signals():
    try:
        return ecg_data.cpsc2019_records().signals
    except mscnn.MscnnError as exc:
        pytest.skip(f"the CPSC2019 records are not here: {exc}")


def real_windows(n=4):
    signals = cpsc_signals()
    starts = (0, 1500, 3000, 4400)[:n]
    return [
        signals[k * 7][None, None, s : s + SAMPLES].astype(np.float32) for k, s in enumerate(starts)
    ]


def normalised(got, expected):
    assert np.isfinite(got).all()
    return float(np.abs(got - expected).max() / np.abs(expected).max())


@pytest.mark.slow
def test_x86_bundle_equals_pytorch_on_real_ecg(crnn_bundles, crnn):
    bundle = crnn_bundles["x86_64"]
    assert bundle.manifest.parity.tvm.passed and bundle.manifest.detect is not None
    predictor = Predictor(bundle)
    for x in real_windows():
        with torch.no_grad():
            expected = crnn.model(torch.from_numpy(x)).numpy()
        assert normalised(predictor(x), expected) <= 1e-5


@pytest.mark.slow
@pytest.mark.cross
@pytest.mark.parametrize("arch", ["aarch64", "armv7"])
def test_arm_bundles_pass_their_golden_cases_under_qemu(crnn_bundles, arch, monkeypatch):
    """The device's own output (mscnn-run --check under qemu) on every golden case: the
    50 CPSC2019 records (their first 512 samples) and PyTorch's beats on them. One TVM
    thread: on a loaded 2-core host the runtime's spinning workers under qemu made a
    single window take minutes."""
    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    done = run_native(arch, crnn_bundles[arch].path, "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("check: pass 52/52") and "beats=50/50" in last


def lstm_reference(p, r, h0, c0, reverse):
    """ONNX's LSTM recurrence in float64 (gates i, o, f, c) from the projected inputs."""
    steps, directions, hidden = p.shape[0], r.shape[0], r.shape[2]
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    y = np.zeros((steps, directions, p.shape[1], hidden))
    c = c0.astype(np.float64).copy()
    for d in range(directions):
        h = h0[d].astype(np.float64)
        frames = range(steps - 1, -1, -1) if (d + reverse) % 2 else range(steps)
        for t in frames:
            g = p[t, :, d * 4 * hidden : (d + 1) * 4 * hidden] + h @ r[d].T.astype(np.float64)
            i, o, f, cand = (g[:, q * hidden : (q + 1) * hidden] for q in range(4))
            c[d] = sigmoid(f) * c[d] + sigmoid(i) * np.tanh(cand)
            h = y[t, d] = sigmoid(o) * np.tanh(c[d])
    return y, c


CPU_TARGETS = [name for name, t in TARGETS.items() if t.tile is not None]


@pytest.mark.parametrize("target", CPU_TARGETS)
@pytest.mark.parametrize("directions,reverse", [(2, False), (1, True)])
def test_the_register_tiled_recurrence_equals_the_lstm_equations(target, directions, reverse):
    """Each CPU target's register tile (hidden 96: 2 to 12 tiles of gates, zig-zag over
    them), compiled for this host, against ONNX's equations in float64: both directions
    of a BiLSTM and a lone reverse one, two batch rows, a carried initial state."""
    import tvm

    from compile.lowering.lstm import pack_recurrent_weights, recurrence_func, recurrence_tile

    steps, batch, hidden = 9, 2, 96
    tile = recurrence_tile(hidden, TARGETS[target].tile.vec, TARGETS[target].tile.registers)
    assert 4 * hidden // tile.width >= 2
    rng = np.random.default_rng(directions)
    p = rng.normal(0, 1, (steps, batch, directions * 4 * hidden)).astype(np.float32)
    r = rng.uniform(-0.1, 0.1, (directions, 4 * hidden, hidden)).astype(np.float32)
    h0, c0 = rng.normal(0, 0.5, (2, directions, batch, hidden)).astype(np.float32)
    func = recurrence_func(steps, batch, hidden, directions, reverse, tile)
    mod = tvm.IRModule({"rec": func.with_attr("global_symbol", "rec")})
    lib = tvm.compile(mod, target={"kind": "llvm"})
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in (p, pack_recurrent_weights(r, tile), h0, c0)]
    y = tvm.runtime.empty((steps, directions, batch, hidden), "float32", dev)
    c = tvm.runtime.empty((directions, batch, hidden), "float32", dev)
    lib["rec"](*args, y, c)
    want_y, want_c = lstm_reference(p, r, h0, c0, reverse)
    assert np.abs(y.numpy() - want_y).max() < 2e-6
    assert np.abs(c.numpy() - want_c).max() < 1e-5


def test_converter_refuses_what_torch_does_not_export():
    with pytest.raises(CompileError, match=r"attribute clip=1\.0 is not supported"):
        LstmConverter.convert(None, [], {"hidden_size": 4, "clip": 1.0}, None)


@pytest.mark.parametrize("target", ["x86_64-avx512", "x86_64"])
def test_the_recurrences_vectorised_sigmoid_and_tanh_match_float64(target):
    """The gate nonlinearities (our exp, vectorised) over [-100, 100] and at the float32
    extremes: within 1.5e-7 of float64 (TVM's own scalar ones, by libm: 8.9e-8),
    saturated exactly where the true value rounds to 0 or +-1, never NaN."""
    import tvm
    from tvm.script import tirx as T

    from compile.lowering.lstm import _sigmoid, _tanh

    n = 1 << 16

    @T.prim_func
    def gates(
        x: T.Buffer((n,), "float32"), s: T.Buffer((n,), "float32"), t: T.Buffer((n,), "float32")
    ):
        for o in range(n // 16):
            for i in T.vectorized(16):
                s[o * 16 + i] = _sigmoid(x[o * 16 + i])
                t[o * 16 + i] = _tanh(x[o * 16 + i])

    lib = tvm.compile(tvm.IRModule({"main": gates}), target=TARGETS[target].tvm)
    x = np.linspace(-100, 100, n - 4, dtype=np.float32)
    x = np.concatenate([x, np.float32([-3.4e38, 3.4e38, -1e-30, 1e-30])])
    out = [tvm.runtime.empty((n,), "float32", tvm.cpu()) for _ in range(2)]
    lib(tvm.runtime.tensor(x, tvm.cpu()), *out)
    sig, tanh = (o.numpy() for o in out)
    x64 = x.astype(np.float64)
    assert np.isfinite(sig).all() and np.isfinite(tanh).all()
    with np.errstate(over="ignore"):  # exp(3.4e38) is inf in float64 too: sigmoid 0
        assert np.abs(sig - 1 / (1 + np.exp(-x64))).max() < 1.5e-7
    assert np.abs(tanh - np.tanh(x64)).max() < 1.5e-7
    assert sig[x > 17].min() == 1 and tanh[x > 9].min() == 1 and tanh[x < -9].max() == -1
    assert sig[x < -100].max() < 1e-37 and sig[-2] == 0.5 and tanh[-1] == 0


def test_compile_mcu_refuses_an_lstm_head_with_its_cost(tmp_path):
    """torch_ecg's default seq-lab model: the refusal states MACs per second of ECG
    against the M7's clock and the weights against its flash; nothing is written."""
    from compile.mcu.firmware import build_mcu

    model = mscnn.ECG_SEQ_LAB_NET(["qrs"], 1, copy.deepcopy(ECG_SEQ_LAB_NET_CONFIG)).eval()
    with pytest.raises(CompileError) as info:
        build_mcu(model, "mps2-an500", tmp_path / "mcu")
    # 2 directions x 4 gates x 256 x ((192 + 256) + (512 + 256)) per frame, 62.5 frames/s
    assert "costs 155.6 M MAC per second of ECG (32% of stm32h7's 480 MHz" in str(info.value)
    assert "9.53 MiB of fp32 weights" in str(info.value)
    assert not (tmp_path / "mcu").exists()


@pytest.mark.slow
def test_cuda_library_holds_the_compiled_recurrence(tmp_path):
    """The recurrence's GPU form (a block per batch row, a thread per hidden unit, barriers
    per frame) compiles to a cubin of the target's SM (build only: parity needs a GPU)."""
    from compile.export import export_onnx
    from compile.lowering.cuda import compile_cuda_library, cubin_archs

    onnx_path = export_onnx(seq_lab_crnn(), tmp_path / "m.onnx", batch=1, samples=SAMPLES)
    library = tmp_path / "model.so"
    compile_cuda_library(onnx_path, "cuda", (1, 1, SAMPLES), library, tmp_path / "build.log")
    assert TARGETS["cuda"].tvm["arch"] in cubin_archs(library)
    assert b"__global__" not in library.read_bytes()


def test_int8_refuses_an_lstm_head_naming_it():
    from compile.int8 import quantize

    with pytest.raises(CompileError, match=r"int8: rnn 'lstm' has no integer form"):
        quantize.check_quantizable(seq_lab_crnn())


# --------------------------------------------------------------------------------------
# A unidirectional LSTM detector streams: its step carries h and c per layer


@pytest.fixture(scope="module")
def uni_stream(tmp_path_factory):
    """The small CRNN with a unidirectional LSTM and no SE (SE needs the whole record):
    its step for hops of 512 samples, x86_64 only (about 35 s to build on 2 busy cores)."""
    out = tmp_path_factory.mktemp("uni_stream")
    mscnn.save_checkpoint(
        out / "uni.pt", seq_lab_crnn(bidirectional=False, attn="none"), leads=["II"], fs=500
    )
    loaded = mscnn.load_checkpoint(out / "uni.pt")
    variant = resolve_variant(loaded, "1")
    return loaded, build(loaded, TARGETS["x86_64"], variant, out, BuildOptions(hop=512))


@pytest.mark.slow
def test_unidirectional_lstm_stream_bundle_equals_the_offline_model(uni_stream):
    """The build streamed its golden record (the 50 CPSC2019 records back to back) through
    the native runner: within tolerance, the same beats. Here the Python runtime streams
    20 s of other real ECG in uneven chunks: the offline model's logits."""
    from deploy.parity import compare
    from deploy.stream import open_stream

    loaded, bundle = uni_stream
    m = bundle.manifest
    names = {s.name: s.shape for s in m.stream.states}
    assert names["rnn.lstm_1.h"] == names["rnn.lstm_2.c"] == (1, 1, 32)
    assert m.parity.tvm.passed and m.parity.tvm.how == "native" and m.parity.task.passed
    x = cpsc_signals()[[2, 33]].reshape(1, -1).astype(np.float32)
    stream = open_stream(bundle)
    parts = [stream.push(x[:, a:b]) for a, b in ((0, 700), (700, 4321), (4321, 10_000))]
    got = np.concatenate([*parts, stream.flush()], axis=1)
    with torch.no_grad():
        expected = loaded.model(torch.from_numpy(x)[None])[0].numpy().T
    assert compare(got, expected, "cpu").passed, compare(got, expected, "cpu")
