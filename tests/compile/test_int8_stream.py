"""The int8 streaming step: the numpy reference and the compiled step, each streamed hop by
hop over records of any length and chunking, equal the offline int8 model (run_int8 on
the whole record) bit for bit; the compiled step's state equals the reference's after
every hop; what cannot stream in int8 is refused by name."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mscnn
from compile.errors import CompileError
from compile.int8 import kernels as int8
from compile.int8 import quantize
from compile.int8.step import Int8Step, Int8StreamingModel, build_step
from deploy.bundle import cpu_flags, host_arch
from mscnn.streaming import StepModule


def real(leads, records):
    try:
        return quantize.real_ecg(leads, records)
    except CompileError as exc:
        pytest.skip(f"the real ECG records are not here: {exc}")


@pytest.fixture(scope="module")
def detector():
    return mscnn.load_model("cpsc2019_qrs").model


@pytest.fixture(scope="module")
def qdetector(detector):
    return quantize.quantize_model(detector, real(("ECG",), range(0, 5)))


@pytest.fixture(scope="module")
def record():
    return real(("ECG",), range(30, 31))[0]  # (1 lead, 5000), never calibrated on


@pytest.fixture(scope="module")
def backbone():
    """A 12-lead backbone with BatchNorm after every block: features, no head."""
    torch.manual_seed(0)
    model = mscnn.load_model("multi_scopic").model
    x = np.random.default_rng(1).standard_normal((4, 12, 3000)).astype(np.float32)
    return model, quantize.quantize_model(model, x), x


def stream(s, x: np.ndarray, chunks) -> np.ndarray:
    outs, i = [], 0
    for k in chunks:
        outs.append(s.push(x[:, i : i + k]))
        i += k
    outs.append(s.push(x[:, i:]))
    outs.append(s.flush())
    return torch.cat(outs, -1).numpy()


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    hop=st.sampled_from([8, 40, 200, 512]),
    length=st.integers(200, 5000),
    chunks=st.lists(st.integers(0, 900), max_size=8),
)
def test_reference_stream_equals_the_offline_int8_model(
    detector, qdetector, record, hop, length, chunks
):
    x = record[:, :length]
    got = stream(Int8StreamingModel(detector, qdetector, hop), x, chunks)
    want = quantize.run_int8(qdetector, x[None])[0].T  # (classes, frames)
    assert got.shape == want.shape and np.array_equal(got, want)


def test_backbone_features_stream_bit_for_bit(backbone):
    """12 leads, BatchNorm folded into the requantization, dequantized features."""
    model, qm, x = backbone
    s = Int8StreamingModel(model, qm, 64)
    got = stream(s, x[0, :, :2345], [100, 1000, 3])
    want = quantize.run_int8(qm, x[:1, :, :2345])[0]  # (channels, frames)
    assert got.shape == want.shape and np.array_equal(got, want)


def test_int8_state_is_a_quarter_of_fp32(detector, qdetector):
    step = Int8Step(StepModule(detector, 200), qdetector)
    assert step.state_bytes * 3.5 < StepModule(detector, 200).state_bytes
    dtypes = {s.dtype for s in step.state_specs()[2:]}
    assert dtypes <= {"int16", "int8", "uint8"} and "int16" in dtypes  # the input's context


HASWELL = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}


@pytest.fixture(scope="module", params=["avx512vnni", "avx2"])
def compiled(request, detector, qdetector):
    """The step with each x86 ISA's kernels: VNNI's vpdpbusd, AVX2's vpmaddubsw."""
    flag, target = {"avx512vnni": ("avx512_vnni", int8.X86_VNNI), "avx2": ("avx2", HASWELL)}[
        request.param
    ]
    if host_arch() != "x86_64" or flag not in cpu_flags():
        pytest.skip(f"this CPU has no {flag}: the x86 int8 step on {request.param} cannot run here")
    return build_step(Int8Step(StepModule(detector, 200), qdetector), target, require=request.param)


def test_compiled_step_equals_the_reference_state_by_state(compiled, qdetector, record):
    step, x = compiled.step, record[:, :4321]  # not a whole number of hops
    mine, ref = step.initial_states(), step.initial_states()
    k, frames = 0, []
    while True:
        chunk = np.zeros((1, step.hop), np.float32)
        n = max(0, min(step.hop, x.shape[1] - k * step.hop))
        chunk[:, :n] = x[:, k * step.hop : k * step.hop + n]
        got, valid, mine = compiled(chunk, n, mine)
        want, valid_ref, ref = step(chunk, n, ref)
        assert valid == valid_ref and np.array_equal(
            got[:, valid[0] : valid[1]], want[:, valid[0] : valid[1]]
        )
        assert all(
            np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(mine, ref, strict=True)
        )
        frames.append(got[:, valid[0] : valid[1]])
        k += 1
        if n < step.hop and valid[1] < step.frames_per_step:
            break
    assert k <= x.shape[1] // step.hop + step.flush_steps
    offline = quantize.run_int8(qdetector, x[None])[0].T
    assert np.array_equal(np.concatenate(frames, -1), offline)


def test_compiled_stream_in_chunks(compiled, detector, qdetector, record):
    s = Int8StreamingModel(detector, qdetector, 200, compiled=compiled)
    got = stream(s, record, [1, 999, 200, 17])
    assert np.array_equal(got, quantize.run_int8(qdetector, record[None])[0].T)
    bad = record[:, :300].copy()
    bad[0, 5] = np.inf
    with pytest.raises(mscnn.MscnnError, match="NaN or Inf"):
        s.push(bad)


def test_refusals(detector, qdetector, backbone):
    qm = backbone[1]
    with pytest.raises(CompileError, match="quantized model takes 12 leads, the model 1"):
        Int8StreamingModel(detector, qm, 200)
    with pytest.raises(CompileError, match="hop 100: expected a positive multiple .* 8"):
        Int8StreamingModel(detector, qdetector, 100)
    classifier = mscnn.load_model("leadwise_classifier").model
    with pytest.raises(CompileError, match="SqueezeExcitation"):
        Int8StreamingModel(classifier, qm, 200)
