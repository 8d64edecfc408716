"""The numpy polyphase resampler: any chunking gives the offline samples bit for bit, and
it agrees with scipy.signal.resample_poly (test-only here) on a real record."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mscnn
from deploy.errors import DeployError
from deploy.resample import RatePair, Resampler, rate_pair, resample
from mscnn import data as ecg_data

RATES = (128, 250, 256, 360, 500, 512, 1000)


@pytest.fixture(scope="module")
def ecg() -> np.ndarray:
    try:
        return ecg_data.cpsc2019_records().signals[0].astype(np.float64)
    except mscnn.MscnnError as exc:
        pytest.skip(f"the CPSC2019 records are not here: {exc}")


@pytest.mark.parametrize("fs_out", RATES)
def test_matches_scipy_resample_poly(ecg, fs_out):
    signal = pytest.importorskip("scipy.signal", reason="the comparison needs scipy (test-only)")
    y = resample(ecg, 500, fs_out)
    want = signal.resample_poly(ecg, fs_out, 500)
    assert y.dtype == np.float32 and y.shape == want.shape
    # same filter design (windowed sinc, Kaiser beta 5, 10 taps per side per factor), summed
    # in another order and returned as float32
    assert np.abs(y - want).max() < 1e-5


rng_rates = st.sampled_from([(500, r) for r in RATES] + [(360, 500), (128, 500), (1000, 500)])


@settings(max_examples=40, deadline=None)
@given(rates=rng_rates, seed=st.integers(0, 2**32 - 1), leads=st.sampled_from([None, 1, 3]))
def test_any_chunking_gives_the_offline_samples(rates, seed, leads):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 1500))
    x = rng.normal(0, 1, n if leads is None else (leads, n)).astype(np.float32)
    offline = resample(x, *rates)
    r, pieces, at = Resampler(*rates), [], 0
    while at < n or not pieces:
        step = int(rng.integers(0, 200))
        pieces.append(r.push(x[..., at : at + step]))
        at += step
    pieces.append(r.flush())
    streamed = np.concatenate(pieces, axis=-1)
    assert streamed.shape == offline.shape == (*x.shape[:-1], RatePair(*rates).output_length(n))
    assert np.array_equal(streamed, offline)


def test_beats_map_back_to_the_input_clock():
    pair = rate_pair(360, 500)  # 25 / 18
    assert (pair.up, pair.down) == (25, 18)
    assert pair.to_input_clock(np.array([0, 25, 100, 4999])).tolist() == [0, 18, 72, 3599]


@pytest.mark.parametrize(
    ("fs_in", "message"),
    [
        (360.5, r"input rate 360.5 Hz: expected a whole, positive number of Hz"),
        (0, r"input rate 0 Hz"),
        (1001, r"ratio 500/1001; up and down must be <= 1000"),
    ],
)
def test_bad_rates_are_refused(fs_in, message):
    with pytest.raises(DeployError, match=message):
        Resampler(fs_in, 500)
