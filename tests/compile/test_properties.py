"""Random valid configs: PyTorch, ONNX Runtime and TVM (x86-64, our schedule) agree."""

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from strategies import runnable

import mscnn
from compile import TARGETS
from compile.export import INPUT_NAME, export_onnx
from compile.lowering.pipeline import compile_executable
from deploy.parity import compare

# Each example compiles a model with TVM (a few seconds): fewer than the global profile.
EXAMPLES = {"ci": 6, "dev": 60}.get(os.environ.get("HYPOTHESIS_PROFILE", "ci"), 6)


@pytest.mark.slow
def test_torch_onnxruntime_and_tvm_agree(tmp_path):
    """Every example is a config the model accepts at its drawn length (strategies.runnable),
    so every example compares PyTorch with ONNX Runtime, and TVM too unless TVM hits the
    one known codegen defect below; the counts are asserted and shown as events."""
    import onnxruntime as ort
    import tvm
    from tvm import relax

    compared = {"onnxruntime": 0, "tvm": 0}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(spec=runnable(min_len=16, max_len=300, wide=True), seed=st.integers(0, 2**16))
    def check(spec, seed):
        in_channels, config, seq_len = spec
        model = mscnn.MultiScopicCNN(in_channels, **config)
        mscnn.seeded_init(model, seed)
        model.eval()
        x = np.random.default_rng(seed).standard_normal((1, in_channels, seq_len), np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        path = export_onnx(model, tmp_path / f"m{seed}.onnx", batch=1, samples=seq_len)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert compare(session.run(None, {INPUT_NAME: x})[0], expected).passed
        compared["onnxruntime"] += 1
        try:
            compiled = compile_executable(path, TARGETS["x86_64"], (1, in_channels, seq_len))
        except tvm.error.InternalError as exc:
            # A TVM 0.27 LLVM codegen defect, with or without our schedule: even kernels on
            # grouped convs of very few channels (e.g. 4 filters, groups 2, kernel 2,
            # dilation 2) fail LLVM verification. The build reports it as a failed TVM
            # stage; nothing else may fail here.
            assert "LLVM module verification failed" in str(exc), exc
            assert any(k % 2 == 0 for b in config["filter_lengths"] for k in _flat(b)), exc
            event("TVM skipped: known LLVM verification defect")
            return
        vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
        out = vm["main"](tvm.runtime.tensor(x))
        got = out.numpy() if hasattr(out, "numpy") else out[0].numpy()
        result = compare(got, expected)
        assert result.passed, (config, seq_len, str(result))
        compared["tvm"] += 1

    check()
    assert compared["onnxruntime"] >= EXAMPLES
    assert compared["tvm"] >= 1, compared  # the defect is rare: most examples reach TVM


def _flat(value):
    return [v for item in value for v in _flat(item)] if isinstance(value, list) else [value]
