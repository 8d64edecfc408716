"""The R-peak rule, heart rate and the CPSC2019 score, on hand-made cases with known answers.

Samples of a beat found in frames a..b (reduction 8): (a + b) * 8 // 2 + 4. Default rule:
threshold 0.5 (logit > 0), min RR 200 ms = 100 samples, edges 50 ms = 25 samples, fs 500.
"""

import json

import numpy as np
import pytest

from deploy.errors import DeployError
from deploy.rpeaks import RPeakRule, detect_rpeaks, heart_rate_bpm, score_rpeaks

FRAMES = 625  # 5000 samples at 8 samples per frame


def logits(*runs, frames=FRAMES, low=-6.0):
    """Background `low`; each run is (first frame, last frame, value)."""
    x = np.full(frames, low, dtype=np.float32)
    for a, b, v in runs:
        x[a : b + 1] = v
    return x


# --- the rule ---------------------------------------------------------------------------


def test_runs_become_beats_at_their_centre():
    # one frame 10 -> 84; frames 100..102 -> 202*4+4 = 812; frames 300..301 -> 601*4+4 = 2408
    x = logits((10, 10, 2.0), (100, 102, 3.0), (300, 301, 1.0))
    assert detect_rpeaks(x).tolist() == [84, 812, 2408]


def test_beats_are_int64_and_a_column_vector_is_accepted():
    x = logits((50, 52, 2.0))
    beats = detect_rpeaks(x[:, None])
    assert beats.dtype == np.int64
    assert beats.tolist() == detect_rpeaks(x).tolist() == [412]


def test_threshold_is_strict_and_in_probability():
    assert detect_rpeaks(np.zeros(FRAMES, np.float32)).size == 0  # sigmoid(0) = 0.5, not > 0.5
    assert detect_rpeaks(logits((40, 40, 1e-6))).tolist() == [324]
    rule = RPeakRule(threshold=0.8)  # logit threshold log(4) = 1.386
    assert detect_rpeaks(logits((40, 40, 1.38)), rule).size == 0
    assert detect_rpeaks(logits((40, 40, 1.39)), rule).tolist() == [324]


def test_flat_logits_give_no_beats_or_one():
    for value in (-3.0, 0.0):
        assert detect_rpeaks(np.full(FRAMES, value, np.float32)).size == 0
    # all frames positive: one run 0..624, centre 624 * 4 + 4
    assert detect_rpeaks(np.full(FRAMES, 5.0, np.float32)).tolist() == [2500]


def test_too_close_beats_keep_the_stronger():
    # frames 100 (804) and 111 (892): 88 samples < 100
    assert detect_rpeaks(logits((100, 100, 1.0), (111, 111, 2.0))).tolist() == [892]
    assert detect_rpeaks(logits((100, 100, 2.0), (111, 111, 1.0))).tolist() == [804]
    # a tie keeps the earlier
    assert detect_rpeaks(logits((100, 100, 2.0), (111, 111, 2.0))).tolist() == [804]


def test_min_rr_is_measured_from_kept_beats_not_chained():
    # 804, 892 (+88), 980 (+176 from the first): the strongest first wins
    first_strong = logits((100, 100, 3.0), (111, 111, 2.0), (122, 122, 1.0))
    assert detect_rpeaks(first_strong).tolist() == [804, 980]
    middle_strong = logits((100, 100, 1.0), (111, 111, 3.0), (122, 122, 2.0))
    assert detect_rpeaks(middle_strong).tolist() == [892]


def test_beats_exactly_min_rr_apart_both_stay():
    # min RR 96 ms = 48 samples; frames 100 (804) and 106 (852) are exactly 48 apart
    rule = RPeakRule(min_rr_ms=96)
    assert detect_rpeaks(logits((100, 100, 1.0), (106, 106, 2.0)), rule).tolist() == [804, 852]
    rule = RPeakRule(min_rr_ms=98)  # 49 samples: too close
    assert detect_rpeaks(logits((100, 100, 1.0), (106, 106, 2.0)), rule).tolist() == [852]


def test_edges_drop_beats_the_record_cannot_hold():
    # frame 2 -> 20 < 25 dropped, frame 3 -> 28 kept; frame 621 -> 4972 < 4975 kept,
    # frame 622 -> 4980 dropped
    x = logits((2, 2, 2.0), (622, 622, 2.0))
    assert detect_rpeaks(x).tolist() == []
    x = logits((3, 3, 2.0), (622, 622, 2.0))
    assert detect_rpeaks(x).tolist() == [28]
    x = logits((3, 3, 2.0), (621, 621, 2.0))
    assert detect_rpeaks(x).tolist() == [28, 4972]
    assert detect_rpeaks(logits((2, 2, 2.0)), RPeakRule(edge_ms=0)).tolist() == [20]


def test_an_edge_beat_does_not_suppress_an_inner_one():
    # frame 1 (12) is strong but in the edge; frame 10 (84) is 72 samples away
    assert detect_rpeaks(logits((1, 1, 9.0), (10, 10, 1.0))).tolist() == [84]


def test_n_samples_sets_the_far_edge():
    x = logits((621, 621, 2.0))  # 4972
    assert detect_rpeaks(x).tolist() == [4972]
    assert detect_rpeaks(x, n_samples=4997).tolist() == []  # 4972 >= 4997 - 25
    with pytest.raises(DeployError, match="frames do not fit a record of 5008 samples"):
        detect_rpeaks(x, n_samples=5008)


def test_other_reductions_and_rates():
    # reduction 4, fs 250: frame 20..21 -> 41 * 2 + 2 = 84; edges 50 ms = 12 samples
    rule = RPeakRule(reduction=4, fs=250)
    assert detect_rpeaks(logits((20, 21, 1.0), frames=300), rule).tolist() == [84]
    assert rule.edge_samples == 12 and rule.min_rr_samples == 50


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.array([0.0, np.nan, 1.0], np.float32), "NaN or Inf .*frame 1"),
        (np.array([0.0, np.inf], np.float64), "NaN or Inf"),
        (np.zeros(10, np.int32), "dtype int32"),
        (np.zeros((2, 625), np.float32), r"shape \(2, 625\)"),
        (np.zeros((1, 625, 1), np.float32), r"shape \(1, 625, 1\)"),
        (np.zeros(0, np.float32), r"shape \(0,\)"),
        ([0.0, 1.0], "numpy array, got list"),
    ],
)
def test_bad_logits_are_refused(bad, message):
    with pytest.raises(DeployError, match=message):
        detect_rpeaks(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 0.0},
        {"threshold": 1.0},
        {"threshold": "0.5"},
        {"threshold": True},
        {"min_rr_ms": -1},
        {"min_rr_ms": 200.0},
        {"edge_ms": -5},
        {"reduction": 0},
        {"fs": 0},
    ],
)
def test_bad_rules_are_refused(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(DeployError, match=name):
        RPeakRule(**kwargs)


def test_rule_round_trips_through_json():
    rule = RPeakRule(threshold=0.6, min_rr_ms=250, edge_ms=40)
    data = json.loads(json.dumps(rule.to_dict()))
    assert data == {"threshold": 0.6, "min_rr_ms": 250, "edge_ms": 40, "reduction": 8, "fs": 500}
    assert RPeakRule.from_dict(data) == rule
    assert RPeakRule.from_dict({}) == RPeakRule()
    with pytest.raises(DeployError, match="unknown key.*min_rr_s"):
        RPeakRule.from_dict({"min_rr_s": 0.2})


# --- heart rate -------------------------------------------------------------------------


def test_heart_rate():
    assert heart_rate_bpm(np.array([0, 500, 1000])) == pytest.approx(60.0)
    assert heart_rate_bpm(np.array([100, 350, 600, 850])) == pytest.approx(120.0)  # 250 apart
    assert heart_rate_bpm(np.array([0, 250]), fs=250) == pytest.approx(60.0)
    assert heart_rate_bpm(np.array([1200])) is None
    assert heart_rate_bpm(np.zeros(0, np.int64)) is None
    with pytest.raises(DeployError, match="strictly rising"):
        heart_rate_bpm(np.array([500, 100]))
    with pytest.raises(DeployError, match="dtype float"):
        heart_rate_bpm(np.array([1.0, 2.0]))


# --- scoring ----------------------------------------------------------------------------

REF = np.array([1000, 2000, 3000])  # tolerance 75 ms = 37.5 samples at 500 Hz


@pytest.mark.parametrize(
    ("det", "expected", "why"),
    [
        ([1010, 1990, 3037], 1.0, "all within 37 samples"),
        ([1000, 2000], 0.3, "one missed"),
        ([1000, 1020, 2000, 3000], 0.7, "a second detection in a hit window"),
        ([1000, 1500, 2000, 3000], 0.7, "a detection between references"),
        ([1000, 2000, 3038], 0.0, "38 samples off: a miss and a false positive"),
        ([], 0.0, "nothing found"),
        ([100, 1000, 2000, 3000], 1.0, "before 0.5 s + 37.5 samples: not counted"),
        ([288, 1000, 2000, 3000], 0.7, "at 0.5 s + 37.5 samples: counted"),
        ([1000, 2000, 3000, 4800], 1.0, "after 9.5 s - 37.5 samples: not counted"),
        ([1000, 2000, 3000, 4712], 0.7, "before 9.5 s - 37.5 samples: counted"),
    ],
)
def test_record_score(det, expected, why):
    result = score_rpeaks([REF], [np.array(det, dtype=np.int64)])
    assert result.score == pytest.approx(expected), why


def test_mean_over_records_and_f1_over_peaks():
    dets = [
        np.array([1010, 1990, 3037]),
        np.array([1000, 1020, 2000, 3000]),
        np.array([1000, 3000]),
    ]
    result = score_rpeaks([REF, REF, REF], dets)
    assert result.record_scores == (1.0, 0.7, 0.3)
    assert result.score == pytest.approx(2.0 / 3.0)
    # TP 3 + 3 + 2, FP 0 + 1 + 0, FN 0 + 0 + 1
    assert (result.tp, result.fp, result.fn) == (8, 1, 1)
    assert result.f1 == pytest.approx(16 / 18)
    assert result.precision == pytest.approx(8 / 9) and result.recall == pytest.approx(8 / 9)
    assert json.loads(json.dumps(result.to_dict()))["record_scores"] == [1.0, 0.7, 0.3]


def test_a_record_without_references_scores_one():
    result = score_rpeaks([np.zeros(0, np.int64)], [np.array([1000, 2000])])
    assert (result.score, result.fp, result.f1) == (1.0, 0, 1.0)


def test_scoring_refuses_mismatched_or_malformed_input():
    with pytest.raises(DeployError, match="2 reference records and 1 detection"):
        score_rpeaks([REF, REF], [REF])
    with pytest.raises(DeployError, match="references\\[0\\].*strictly rising"):
        score_rpeaks([np.array([2000, 1000])], [REF])
    with pytest.raises(DeployError, match="detections\\[0\\].*integer"):
        score_rpeaks([REF], [np.array([1000.5])])
    with pytest.raises(DeployError, match="list of per-record"):
        score_rpeaks(np.zeros((2, 3), np.int64), np.zeros((2, 3), np.int64))


def test_score_matches_torch_ecg_compute_metrics():
    """torch_ecg's CPSC2019 scorer is the definition the data README points to."""
    cpsc2019 = pytest.importorskip("torch_ecg.databases.cpsc_databases.cpsc2019")
    rng = np.random.default_rng(7)
    refs, dets = [], []
    for _ in range(60):
        ref = np.cumsum(rng.integers(150, 600, size=20)) + int(rng.integers(0, 300))
        ref = ref[ref < 5000]
        det = ref + rng.integers(-30, 31, size=len(ref))
        if rng.random() < 0.3:  # one detection near the hit window's border
            det[rng.integers(len(det))] += rng.choice([-1, 1]) * rng.integers(35, 41)
        det = det[rng.random(len(det)) > 0.03]
        extra = rng.integers(0, 5000, size=rng.choice([0, 0, 0, 1, 2]))
        refs.append(ref)
        dets.append(np.sort(np.concatenate((det, extra))))
    expected = cpsc2019.compute_metrics(refs, dets, fs=500)
    result = score_rpeaks(refs, dets)
    assert 0.1 < result.score < 0.9  # a mix of scores, so the comparison means something
    assert round(result.score, 4) == expected
