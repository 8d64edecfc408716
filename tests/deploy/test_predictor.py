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
        (lambda x: x.astype(np.float64), r"input dtype <f8 \(float64\): expected little-endian"),
        (lambda x: x.astype(np.int16), r"input dtype <i2 \(int16\)"),
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


def test_big_endian_is_refused(predictor):
    """As the native runner refuses it: the library reads little-endian float32."""
    x, _ = predictor.bundle.golden["noise"]
    with pytest.raises(DeployError, match=r"input dtype >f4 \(float32\): expected little-endian"):
        predictor(x.astype(">f4"))


def test_fortran_order_gives_the_same_numbers(leadwise_bundles):
    twelve = Predictor(leadwise_bundles["12"].path)
    x, expected = twelve.bundle.golden["noise"]
    fortran = np.asfortranarray(x)
    assert not fortran.flags.c_contiguous
    assert compare(twelve(fortran), expected).passed


def _gpu_here() -> bool:
    import tvm

    return bool(tvm.cuda(0).exist)


@pytest.mark.gpu
@pytest.mark.skipif(
    not _gpu_here(),
    reason="no NVIDIA GPU visible to TVM on this machine; a CUDA bundle's parity is "
    "checked where one is (make parity on a GPU machine)",
)
def test_cuda_bundle_matches_golden_on_the_gpu(cpsc_bundles):
    """The CUDA bundle built here (NVRTC, no GPU needed to build) runs on the GPU and
    passes under the GPU tolerance, 1e-4 (tests/deploy/test_parity.py pins it)."""
    bundle = cpsc_bundles["cuda"]
    predictor = Predictor(bundle.path)
    assert predictor.bundle.device == "cuda" and predictor.device.device_type == 2  # kDLCUDA
    verdict, results = check_parity(bundle.path)
    assert set(results) == {"noise", "ecg"}
    assert verdict.passed and verdict.tolerance == 1e-4, str(verdict)
    x, expected = predictor.bundle.golden["ecg"]
    assert compare(predictor(x), expected, "cuda").passed
