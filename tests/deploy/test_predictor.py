"""The predictor runs what the golden data says, and refuses signals it cannot take."""

import numpy as np
import pytest

from deploy import DeployError, Predictor, check_parity, compare
from deploy.parity import TOLERANCES


@pytest.fixture(scope="module")
def predictor(cpsc_bundles):
    return Predictor(cpsc_bundles["x86_64"].path)


def test_golden_parity(cpsc_bundles, leadwise_bundles):
    for bundle in [cpsc_bundles["x86_64"], *leadwise_bundles.values()]:
        verdict, results = check_parity(bundle.path)
        assert verdict.passed and set(results) == {"noise", "ecg"}
        assert verdict.normalised <= TOLERANCES["cpu"]


def test_output_matches_golden(predictor):
    x, expected = predictor.bundle.golden["ecg"]
    assert compare(predictor(x), expected).passed


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda x: x[:, :0], "input is empty"),
        (lambda x: np.concatenate([x, x], axis=1), r"2 leads, expected 1 \(ECG, in this order\)"),
        (lambda x: x[:, :, :-1], r"511 samples, expected 512 \(1.024 s at 500 Hz\)"),
        (lambda x: np.concatenate([x, x]), "batch 2, expected 1"),
        (lambda x: x[0], "2 dimensions, expected 3"),
        (lambda x: x.astype(np.float64), "input dtype float64: expected float32"),
        (lambda x: x.astype(np.int16), "input dtype int16"),
        (
            lambda x: np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x).astype(x.dtype),
            "NaN or Inf .*sample 7",
        ),
        (lambda x: np.full_like(x, np.inf), "NaN or Inf"),
        (lambda x: x.tolist(), "expected a numpy array"),
    ],
    ids=["empty", "leads", "samples", "batch", "ndim", "float64", "int16", "nan", "inf", "list"],
)
def test_bad_signals(predictor, make, message):
    x, _ = predictor.bundle.golden["ecg"]
    with pytest.raises(DeployError, match=message):
        predictor(make(x))


def test_byte_order_and_layout_do_not_matter(predictor):
    """Big-endian float32 is float32 to numpy; a Fortran-ordered array is made contiguous."""
    x, expected = predictor.bundle.golden["noise"]
    swapped = x.astype(">f4")
    if swapped.dtype == np.float32:  # numpy treats it as float32 only if native
        assert compare(predictor(swapped), expected).passed
    fortran = np.asfortranarray(x)
    assert compare(predictor(fortran), expected).passed


def test_nan_output_never_passes():
    expected = np.ones((1, 2, 3), np.float32)
    got = expected.copy()
    got[0, 0, 0] = np.nan
    assert not compare(got, expected).passed
    assert not compare(expected[:, :1], expected).passed
    assert compare(expected + 1e-7, expected).passed
    assert not compare(expected + 1e-3, expected).passed
