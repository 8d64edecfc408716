"""The one parity check: its tolerances pinned at their boundaries, and what never passes.

The design fixes the numbers (fp32 on a CPU passes at error normalised by max |reference|
<= 1e-5, on a GPU at <= 1e-4; int8 bundles equal their integer reference bit for bit;
fp16 bundles pass at <= 2e-2; NaN never passes). They are written out here, not read back
from deploy.parity.TOLERANCES, so that a looser table fails these tests."""

import math

import numpy as np
import pytest

from deploy.parity import TOLERANCES, ParityResult, compare, worst

DESIGN = {"cpu": 1e-5, "cuda": 1e-4, "int8": 0.0, "fp16": 2e-2}


def test_the_table_is_the_designs():
    assert TOLERANCES == DESIGN


def reference() -> np.ndarray:
    """float64, max |value| exactly 1.0 (at [0, 1, 2]), so the normalised error is the
    absolute error; element [0, 0, 0] is 0.0, where an added error is exact."""
    x = np.linspace(-0.75, 0.75, 24).reshape(2, 3, 4)
    x[0, 0, 0] = 0.0
    x[0, 1, 2] = -1.0
    return x


def off_by(error: float, at=(0, 0, 0)) -> np.ndarray:
    got = reference()
    got[at] += error
    return got


FP32 = ["cpu", "cuda", "fp16"]  # float rows: a boundary to pin


def test_int8_is_bit_for_bit():
    """int8 bundles are judged against their integer reference: equal passes, the
    smallest float32 step anywhere fails, however large the values."""
    for scale in (1e-3, 1.0, 250.0):
        expected = (reference() * scale).astype(np.float32)
        assert compare(expected.copy(), expected, "int8").passed
        for at in ((0, 0, 0), (1, 2, 3)):
            got = expected.copy()
            got[at] = np.nextafter(got[at], np.float32(np.inf))
            result = compare(got, expected, "int8")
            assert not result.passed and result.tolerance == 0.0


@pytest.mark.parametrize("device", FP32)
def test_boundary_is_inclusive_and_tight(device):
    tol = DESIGN[device]
    exact = compare(off_by(tol), reference(), device)
    assert exact.passed is True and exact.normalised == tol and exact.max_abs == tol
    assert exact.tolerance == tol and exact.detail == ""
    assert compare(off_by(tol * (1 - 1e-6)), reference(), device).passed
    assert not compare(off_by(tol * (1 + 1e-6)), reference(), device).passed
    assert not compare(off_by(-tol * (1 + 1e-6), at=(1, 2, 3)), reference(), device).passed


@pytest.mark.parametrize("device", FP32)
def test_error_is_normalised_by_the_largest_reference_value(device):
    tol = DESIGN[device]
    for scale in (1e-3, 1.0, 250.0):
        expected = reference() * scale
        inside = compare(off_by(0.99 * tol) * scale, expected, device)
        outside = compare(off_by(1.01 * tol) * scale, expected, device)
        assert inside.passed and not outside.passed, scale
        assert inside.normalised == pytest.approx(0.99 * tol, rel=1e-9)
        assert inside.max_abs == pytest.approx(0.99 * tol * scale, rel=1e-9)


def test_float32_outputs_within_and_beyond_the_cpu_tolerance():
    rng = np.random.default_rng(0)
    expected = rng.standard_normal((1, 192, 625)).astype(np.float32)
    scale = float(np.abs(expected).max())
    noise = rng.uniform(-1, 1, expected.shape)
    inside = (expected + noise * 0.5e-5 * scale).astype(np.float32)
    outside = (expected + noise * 3e-5 * scale).astype(np.float32)
    assert compare(inside, expected).passed
    assert not compare(outside, expected).passed
    assert compare(outside, expected, "cuda").passed  # 10x looser on a GPU, with a reason


def test_cpu_is_stricter_than_cuda_by_ten():
    between = off_by(5e-5)
    assert not compare(between, reference(), "cpu").passed
    assert compare(between, reference(), "cuda").passed
    assert compare(between, reference()).tolerance == 1e-5  # the default is the CPU's


@pytest.mark.parametrize("device", list(DESIGN))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_or_inf_in_the_output_never_passes(device, bad):
    for at in [(0, 0, 0), (1, 2, 3)]:
        got = reference()
        got[at] = bad
        result = compare(got, reference(), device)
        assert result.passed is False and result.detail == "output holds NaN or Inf"
        assert math.isnan(result.max_abs) and math.isnan(result.normalised)
        assert result.tolerance == DESIGN[device]
        assert result.to_json()["normalised"] is None
    everywhere = np.full((2, 3, 4), bad)
    assert not compare(everywhere, everywhere, device).passed
    assert not compare(everywhere.astype(np.float32), everywhere.astype(np.float32)).passed


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_or_inf_in_the_reference_never_passes(bad):
    expected = reference()
    expected[1, 1, 1] = bad
    assert not compare(reference(), expected).passed


def test_a_shape_mismatch_never_passes():
    expected = reference()
    for got in (expected[:1], expected[None], expected.reshape(4, 3, 2), expected[0]):
        result = compare(got, expected)
        assert result.passed is False, got.shape
        assert result.detail == f"shape {got.shape} != expected {expected.shape}"
        assert math.isinf(result.max_abs) and math.isinf(result.normalised)
        assert result.tolerance == DESIGN["cpu"]
    # broadcastable is not equal: one row against two
    assert not compare(expected[:1], expected[:, :, :]).passed


def test_an_all_zero_reference_is_judged_by_the_absolute_error():
    zeros = np.zeros((1, 2, 3), np.float32)
    assert compare(zeros, zeros).passed
    assert compare(zeros + 1e-6, zeros).passed
    assert not compare(zeros + 2e-5, zeros).passed
    empty = np.zeros((1, 0, 3), np.float32)
    assert compare(empty, empty).passed


def test_an_unknown_device_kind_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown device kind 'tpu'; choose from: cpu, cuda"):
        compare(reference(), reference(), "tpu")


def test_the_report_says_pass_or_fail_with_the_figures():
    passed = compare(off_by(2e-6), reference())
    failed = compare(off_by(3e-4), reference())
    assert str(passed) == "pass: max abs 2e-06, normalised 2e-06 (tolerance 1e-05)"
    assert str(failed).startswith("FAIL: max abs 0.0003, normalised 0.0003")
    shape = compare(reference()[:1], reference())
    assert "shape (1, 3, 4) != expected (2, 3, 4)" in str(shape)
    assert passed.to_json() == {
        "max_abs": 2e-6,
        "normalised": 2e-6,
        "tolerance": 1e-5,
        "passed": True,
        "detail": "",
    }
    assert shape.to_json()["max_abs"] is None  # inf is no JSON number


def result(normalised: float, passed: bool) -> ParityResult:
    return ParityResult(normalised, normalised, 1e-5, passed)


def test_worst_is_any_failure_else_the_largest_error():
    small, large = result(1e-7, True), result(9e-6, True)
    failed, nan = result(2e-5, False), result(math.nan, False)
    assert worst([small, large, small]) is large
    assert worst([large, failed, small]) is failed
    assert worst([failed, result(5e-4, False), large]).normalised == 5e-4
    assert worst([small, nan, failed]) is nan  # NaN ranks above any finite failure
    assert worst([failed, nan]) is nan
    with pytest.raises(ValueError, match="^no parity results to judge$"):
        worst([])


def test_a_failure_outranks_a_larger_passing_error():
    """A failure is the verdict even where a passing result (judged under a looser
    tolerance) shows a larger error: failing is not a matter of size."""
    loose = ParityResult(5e-5, 5e-5, 1e-4, True)
    strict = ParityResult(2e-5, 2e-5, 1e-5, False)
    assert worst([loose, strict]) is strict
    assert worst([strict, loose]) is strict
