"""int8: the reference's arithmetic pinned by hand, the quantized weights' size, the TVM
program bit for bit against the reference on real records, the dot-product instructions in
the generated code, refusals, and the detector's accuracy against fp32 on held-out records."""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import mscnn
from compile.errors import CompileError
from compile.int8 import kernels as int8
from compile.int8 import quantize
from compile.int8.quantize import Requant, make_requant, quantize_multiplier, requantize
from deploy.bundle import cpu_flags, host_arch
from mscnn.train import CHECKPOINT


def real(leads, records):
    try:
        return quantize.real_ecg(leads, records)
    except CompileError as exc:
        pytest.skip(f"the real ECG records are not here: {exc}")


@pytest.fixture(scope="module")
def detector():
    """The trained detector where its weights are in the repository, else seeded ones
    (every test but the accuracy gate holds for any weights)."""
    if CHECKPOINT.is_file():
        return mscnn.load_model("cpsc2019_qrs", checkpoint=CHECKPOINT)
    return mscnn.load_model("cpsc2019_qrs")


@pytest.fixture(scope="module")
def qdetector(detector):
    records = quantize.CALIBRATION_RECORDS
    return quantize.quantize_model(detector, real(detector.leads, records), record_ids=records)


@pytest.fixture(scope="module")
def vnni_program(qdetector):
    if host_arch() != "x86_64" or "avx512_vnni" not in cpu_flags():
        pytest.skip("this CPU has no AVX-512 VNNI: the x86 int8 program cannot run here")
    return int8.build_int8(qdetector, int8.X86_VNNI, batch=1, samples=5000)


# -- the arithmetic, by hand -------------------------------------------------------------


def test_multiplier_is_31_bit_fixed_point():
    # 0.75 = 0.75 * 2^31 / 2^31; 0.3 = round(0.6 * 2^31) / 2^32
    m, s = quantize_multiplier(np.array([0.75, 0.3, 1.0]))
    assert m.tolist() == [1610612736, 1288490189, 1073741824]
    assert s.tolist() == [31, 32, 30]


def test_requantization_matches_a_hand_computed_example():
    rq = make_requant(np.array([0.75]), np.array([0.0]), relu=False, lo=-128, hi=127)
    assert (int(rq.multiplier[0]), int(rq.shift[0]), int(rq.rounding[0])) == (1610612736, 31, 2**30)
    acc = np.array([[1000, 3, -3, 2, -2, 7]])
    # 750 -> clipped to 127; 2.25 -> 2; -2.25 -> -2; 1.5 -> 2 and -1.5 -> -1 (half up);
    # 5.25 -> 5
    assert requantize(acc.T, rq).ravel().tolist() == [127, 2, -2, 2, -1, 5]
    relu = Requant(rq.multiplier, rq.shift, rq.rounding, True, 0, 255)
    assert requantize(acc.T, relu).ravel().tolist() == [255, 2, 0, 2, 0, 5]
    # an offset of 10 output units (a folded BatchNorm shift) is added before rounding
    shifted = make_requant(np.array([0.75]), np.array([10.0]), relu=False, lo=-128, hi=127)
    assert requantize(acc.T, shifted).ravel().tolist() == [127, 12, 8, 12, 9, 15]


def _helium_requant(acc: np.ndarray, rq: Requant) -> np.ndarray:
    """What the Helium kernels' vector requantization computes, instruction by
    instruction (int32 lanes): vqdmulh (the doubled high product), a shift by one, vmul
    (the low product, wrapping), an unsigned compare for the carry, the shift left."""
    m, high_r, low_not, sh32 = (v.astype(np.int64) for v in int8.mulh_constants(rq))
    a = np.maximum(acc, 0) if rq.relu else acc
    doubled = np.clip((2 * a * m) >> 32, -(2**31), 2**31 - 1)  # vqdmulh.s32
    low = (a * m) & 0xFFFFFFFF  # vmul.i32, as unsigned
    carry = low > (low_not & 0xFFFFFFFF)  # vcmp.u32 hi
    y = ((doubled >> 1) + high_r + carry) >> sh32
    assert (np.abs((doubled >> 1) + high_r + carry) < 2**31).all()  # no lane overflows
    return np.clip(y, rq.lo, rq.hi)


@settings(max_examples=300, deadline=None)
@given(
    real=st.floats(1e-9, 0.4999),
    offset=st.floats(-300.0, 300.0),
    relu=st.booleans(),
    acc=st.lists(st.integers(-(2**31) + 1, 2**31 - 1), min_size=1, max_size=64),
)
def test_helium_vector_requantization_is_the_int64_one(real, offset, relu, acc):
    """Helium requantizes four output channels as one vector from the 32-bit high and
    low products (`kernels._requant_mulh`, for shifts of at least 32): the same integers
    as the int64 reference for any accumulator, multiplier and folded offset."""
    lo, hi = (0, 255) if relu else (-128, 127)
    rq = make_requant(np.array([real]), np.array([offset]), relu=relu, lo=lo, hi=hi)
    assert int(rq.shift[0]) >= 32  # multipliers below 1/2 (the kernels' int64 form below)
    a = np.array(acc, dtype=np.int64)[None]
    assert (_helium_requant(a, rq) == requantize(a, rq)).all()


def test_input_quantization_rounds_half_to_even():
    x = np.array([0.5, 1.5, 2.5, -0.5, 1e9, -1e9], dtype=np.float32)
    assert quantize.quantize_input(x, np.float32(1.0), "int8").tolist() == [0, 2, 2, 0, 127, -128]


def test_reference_conv_is_the_integer_convolution():
    """conv_accumulate against torch's conv1d in float64 (exact for these integers)."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (8, 3, 5)).astype(np.int8)
    conv = quantize.QConv(
        "c",
        w,
        rng.integers(-999, 999, 8).astype(np.int32),
        np.ones(8),
        dilation=3,
        groups=2,
        in_dtype="uint8",
        requant=None,
        out_dtype="int32",
        out_scale=1.0,
    )
    x = rng.integers(0, 256, (2, 6, 40))
    want = torch.nn.functional.conv1d(
        torch.from_numpy(x).double(),
        torch.from_numpy(w).double(),
        torch.from_numpy(conv.bias).double(),
        padding=6,
        dilation=3,
        groups=2,
    ).numpy()
    assert np.array_equal(quantize.conv_accumulate(x, conv), want.astype(np.int64))


# -- the quantized model -----------------------------------------------------------------


def test_a_quantization_and_its_reference_outputs_are_computed_once_per_weights(detector):
    """Builds of one model for several targets share its quantization and the int8
    reference's outputs; a caller's writes do not reach the memo; changed weights
    quantize again."""
    model = copy.deepcopy(detector.model).eval()
    real(detector.leads, quantize.CALIBRATION_RECORDS)  # skips where the records are not
    first, calibration = quantize.calibrated(model, detector.leads, "cpsc2019_qrs")
    again, _ = quantize.calibrated(model, detector.leads, "cpsc2019_qrs")
    assert again is first and not calibration.flags.writeable
    x = np.array(calibration[:1])
    y = quantize.run_int8(first, x)
    fresh = quantize._run_int8(first, x, None)
    assert np.array_equal(y, fresh) and np.abs(fresh).max() > 0
    y[...] = 0
    assert np.array_equal(quantize.run_int8(first, x), fresh)
    with torch.no_grad():
        next(model.parameters()).mul_(0.5)
    changed, _ = quantize.calibrated(model, detector.leads, "cpsc2019_qrs")
    assert changed is not first


def test_weights_are_int8_and_four_times_smaller(qdetector, detector):
    layers = qdetector.layers()
    assert all(c.weight.dtype == np.int8 for c in layers)
    assert all(np.abs(c.weight).max() <= 127 for c in layers)
    int8_bytes, fp32_bytes = qdetector.weight_bytes()
    weights = [
        m.weight
        for m in detector.model.modules()
        if isinstance(m, torch.nn.Conv1d | torch.nn.Linear)
    ]
    assert fp32_bytes == sum(4 * w.numel() for w in weights) == 4 * int8_bytes
    # With biases, requantization and tables: still under 30% of the fp32 parameters.
    fp32_params = 4 * sum(p.numel() for p in detector.model.parameters())
    assert qdetector.constant_bytes() < 0.3 * fp32_params


def test_saturation_is_reported_per_layer(qdetector, detector):
    x = real(detector.leads, [30, 31])
    report = {s.name: s for s in quantize.saturation(qdetector, x)}
    assert set(report) == {"input"} | {c.name for c in qdetector.layers()[:-1]}
    assert report["input"].clipped == 0  # 16 bits and the calibration's maximum
    # Calibrated on signals ten times smaller, ordinary records must saturate.
    small = quantize.quantize_model(detector, real(detector.leads, range(0, 5)) / 10)
    clipped = [s for s in quantize.saturation(small, x) if s.clipped]
    assert clipped and all(0 < s.fraction <= 1 for s in clipped)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((0, 1, 5000), np.float32), "is empty"),
        (np.zeros((3, 2, 5000), np.float32), "expected (records, 1 leads"),
        (np.zeros((3, 5000), np.float32), "expected (records, 1 leads"),
        (np.full((2, 1, 5000), np.nan, np.float32), "NaN or Inf (first at record 0"),
        ([[0.1, 0.2]], "expected a numpy array"),
    ],
)
def test_bad_calibration_sets_are_refused_by_name(detector, bad, message):
    with pytest.raises(CompileError, match="calibration set") as info:
        quantize.quantize_model(detector, bad)
    assert message in str(info.value)


def test_a_target_without_the_isa_asked_for_is_refused_naming_the_feature(qdetector):
    haswell = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}
    with pytest.raises(CompileError, match="has no avx512vnni"):
        int8.build_int8(qdetector, haswell, require="avx512vnni")
    with pytest.raises(CompileError, match="has no dotprod"):
        int8.select_isa(int8.X86_VNNI, require="dotprod")
    with pytest.raises(CompileError, match="has no avxvnni .* alderlake for avxvnni"):
        int8.select_isa(haswell, require="avxvnni")  # AVX2 alone
    assert int8.select_isa(int8.X86_AVXVNNI).name == "avxvnni"  # by its LLVM feature
    assert int8.select_isa(int8.X86_VNNI).name == "avx512vnni"  # cascadelake: no avxvnni


# -- the TVM program ---------------------------------------------------------------------


def test_program_equals_the_reference_bit_for_bit_on_real_records(vnni_program, qdetector):
    x = real(("ECG",), [25, 3, 40])  # record 3 clips at 33 mV, beyond every scale
    for i in range(len(x)):
        got = vnni_program(x[i : i + 1])
        assert got.dtype == np.float32 and got.shape == (1, 625, 1)
        assert np.array_equal(got, quantize.run_int8(qdetector, x[i : i + 1]))


def test_x86_kernels_use_vpdpbusd(vnni_program):
    asm = vnni_program.asm()
    assert asm.count("vpdpbusd") >= 100  # every 8-bit conv and linear
    assert "vpdpwssd" in asm  # the int16 input layer


@pytest.mark.slow
def test_avxvnni_kernels_compile_to_vex_vpdpbusd_on_ymm(qdetector):
    """x86_64-avxvnni: compiled only (no CPU here has AVX-VNNI without AVX-512, so it is
    not run): every 8-bit dot is vpdpbusd in its VEX form on ymm, none on zmm (which
    would need AVX-512), and the int16 input layer vpdpwssd likewise."""
    from compile.targets import TARGETS, int8_target

    target = int8_target(TARGETS["x86_64-avxvnni"])
    program = int8.build_int8(qdetector, target.tvm, batch=1, samples=256)
    assert program.isa.name == "avxvnni" and "avx_vnni" in target.cpu_flags
    dots = [line.split() for line in program.asm().splitlines() if "vpdp" in line]
    assert sum(d[:2] == ["{vex}", "vpdpbusd"] for d in dots) >= 100  # every conv and linear
    assert any(d[:2] == ["{vex}", "vpdpwssd"] for d in dots)
    assert all(d[0] == "{vex}" and "%zmm" not in " ".join(d) and "%ymm" in d[-1] for d in dots)


@pytest.mark.slow
def test_aarch64_kernels_use_sdot(qdetector):
    program = int8.build_int8(qdetector, int8.AARCH64_DOTPROD, batch=1, samples=1000)
    assert program.isa.name == "dotprod"
    assert "sdot\tv" in program.asm() or "sdot v" in program.asm()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mcpu", "isa", "instruction", "flags"),
    [
        ("haswell", "avx2", "vpmaddubsw", {"avx2", "fma"}),  # AVX2 without VNNI
        # The plain loops ("generic") ship on armv7, checked bit for bit under qemu
        # (test_int8_bundles.py); on x86 they would only serve pre-AVX2 CPUs.
    ],
)
def test_x86_kernels_without_vnni_are_bit_exact(qdetector, mcpu, isa, instruction, flags):
    """A CPU without VNNI: AVX2's byte pairs (vpmaddubsw, whose int16 sums the operands'
    ranges keep from saturating): the same integers as the reference."""
    target = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu}
    if host_arch() != "x86_64" or not flags <= cpu_flags():
        pytest.skip(f"this CPU cannot run {mcpu} code (it lacks {sorted(flags)})")
    program = int8.build_int8(qdetector, target, batch=1, samples=5000)
    asm = program.asm()
    assert program.isa.name == isa and "vpdpbusd" not in asm and instruction in asm
    x = real(("ECG",), [26, 3])  # record 3 clips at 33 mV: the widest activations
    for i in range(len(x)):
        assert np.array_equal(program(x[i : i + 1]), quantize.run_int8(qdetector, x[i : i + 1]))


def vpmaddubsw_dot(u: np.ndarray, w: np.ndarray) -> np.ndarray:
    """What AVX2's `vpmaddubsw` then `vpmaddwd` by ones give for unsigned bytes u and
    signed bytes w over their last axis (a multiple of 4): each pair of products summed
    and saturated to int16, then the pairs added in int32."""
    p = u.astype(np.int64) * w.astype(np.int64)
    return np.clip(p[..., 0::2] + p[..., 1::2], -(2**15), 2**15 - 1).sum(-1)


@given(
    weights=st.lists(st.integers(-127, 127), min_size=24, max_size=24),
    span=st.integers(1, 255),
    seed=st.integers(0, 2**16),
)
@example(weights=[64, 0, 0, 64] + [0] * 20, span=255, seed=0)  # 255 x 128: fits
@example(weights=[64, 0, 0, 65] + [0] * 20, span=255, seed=0)  # 255 x 129: saturates
@example(weights=[0] * 12 + [-64, 0, 0, -65] + [0] * 8, span=254, seed=0)  # -32766: fits
@example(weights=[0] * 12 + [-65, 0, 0, -65] + [0] * 8, span=255, seed=0)  # -33150
def test_unsigned_pairs_fit_exactly_when_no_pair_saturates(weights, span, seed):
    """The check that lets a layer take `vpmaddubsw`: it passes exactly when the
    activations in [0, span] that push some pair furthest (span where the weight has the
    pair's sign, 0 elsewhere) leave every int16 pair sum unsaturated, and then random
    activations give the exact dot product too."""
    w = np.array(weights, dtype=np.int8).reshape(2, 4, 3)  # (out, in, kernel)
    conv = SimpleNamespace(weight=w)
    rows = w.transpose(0, 2, 1).reshape(-1, 4)  # one instruction's 4 weights per row
    extremes = np.stack([span * (rows > 0), span * (rows < 0)])  # the furthest pairs
    exact = (extremes * rows.astype(np.int64)).sum(-1)
    fits = int8.unsigned_pairs_fit(conv, span)
    assert fits == np.array_equal(vpmaddubsw_dot(extremes, rows), exact)
    if fits:
        u = np.random.default_rng(seed).integers(0, span, size=(50, 1, 4), endpoint=True)
        assert np.array_equal(vpmaddubsw_dot(u, rows), (u * rows.astype(np.int64)).sum(-1))


def test_avx2_takes_unsigned_bytes_only_where_the_pairs_fit(qdetector):
    """On AVX2 a head layer after an activation table takes `vpmaddubsw` with its input
    offset to start at 0 where the table's range and the weights allow, else int16 pairs
    (`vpmaddwd`); other ISAs keep their byte dot."""
    avx2, vnni = int8.ISAS["avx2"], int8.ISAS["avx512vnni"]
    for prev, lin in zip(qdetector.head, qdetector.head[1:], strict=False):
        low, high = int(prev.lut.min()), int(prev.lut.max())
        dot, offset = int8.byte_dot(avx2, lin.conv, low, high)
        if int8.unsigned_pairs_fit(lin.conv, high - low):
            assert (dot.intrin, dot.operand, offset) == ("mscnn_vpmaddubsw", "uint8", -low)
        else:
            assert (dot.intrin, offset) == ("mscnn_vpmaddwd", None)
        assert int8.byte_dot(vnni, lin.conv, low, high) == (vnni.byte, None)
    conv = qdetector.branches[0][1].convs[0]  # full int8 range: 255 x pairs of 127
    assert int8.byte_dot(avx2, conv)[0].intrin == "mscnn_vpmaddwd"


@pytest.mark.slow
def test_lead_variant_program_is_bit_exact(qdetector):
    """A grouped (lead-wise) backbone, reduced to two leads: the other conv layout."""
    if host_arch() != "x86_64" or "avx512_vnni" not in cpu_flags():
        pytest.skip("this CPU has no AVX-512 VNNI: the x86 int8 program cannot run here")
    full = mscnn.load_model("multi_scopic_leadwise").model
    variant = mscnn.derive_variant(full, [0, 1]).eval()
    x = real(["I", "II"], range(0, 4))[:, :, :1000]
    qm = quantize.quantize_model(variant, x[:3])
    program = int8.build_int8(qm, int8.X86_VNNI, batch=1, samples=1000)
    assert np.array_equal(program(x[3:]), quantize.run_int8(qm, x[3:]))


@pytest.mark.slow
def test_negative_batchnorm_scales_are_bit_exact():
    """A BatchNorm with negative scales makes requantization decreasing: the fused
    max-pool must then take the window's smallest accumulator (the min path)."""
    if host_arch() != "x86_64" or "avx512_vnni" not in cpu_flags():
        pytest.skip("this CPU has no AVX-512 VNNI: the x86 int8 program cannot run here")
    model = mscnn.load_model("cpsc2019").model
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.weight[::2] *= -1
    x = real(("ECG",), range(0, 4))[:, :, :1000]
    qm = quantize.quantize_model(model, x[:3])
    assert any((c.requant.multiplier < 0).any() for c in qm.layers())
    program = int8.build_int8(qm, int8.X86_VNNI, batch=1, samples=1000)
    assert np.array_equal(program(x[3:]), quantize.run_int8(qm, x[3:]))


# -- accuracy ----------------------------------------------------------------------------


@pytest.mark.slow
def test_detector_int8_holds_fp32s_score_on_held_out_records(detector, qdetector):
    """The goal: CPSC2019 score within 0.01 and F1 within 0.5 points of fp32, on records
    the calibration never saw (and, note, that training did see: a fidelity check)."""
    if not CHECKPOINT.is_file():
        pytest.skip(f"no trained detector at {CHECKPOINT}: seeded weights detect nothing")
    acc = quantize.evaluate_detector(detector.model, qdetector)
    assert acc.fp32.score > 0.8  # the trained detector, not an untrained one
    assert abs(acc.score_drop) <= 0.01 and abs(acc.f1_drop_points) <= 0.5, acc.table()
    with pytest.raises(CompileError, match="calibrated this model"):
        quantize.evaluate_detector(detector.model, qdetector, records=[0, 30])
