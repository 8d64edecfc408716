"""The R-peak rule's minimum-RR step in O(n log n) gives exactly what the plain rule gives:
every candidate compared with every kept beat, as the rule is written down."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from deploy.rpeaks import RPeakRule, detect_rpeaks
from deploy.rpeaks_bench import synthetic_logits


def reference_rpeaks(x, rule, n):
    """The rule of deploy/rpeaks.py's docstring, step by step, quadratic in step 4."""
    x = np.asarray(x, dtype=np.float64)
    r, threshold = rule.reduction, rule.logit_threshold
    candidates, i = [], 0
    while i < len(x):
        if not x[i] > threshold:
            i += 1
            continue
        a = i
        while i + 1 < len(x) and x[i + 1] > threshold:
            i += 1
        s = (a + i) * r // 2 + r // 2
        if rule.edge_samples <= s < n - rule.edge_samples:
            candidates.append((s, float(x[a : i + 1].max())))
        i += 1
    kept = []
    for s, _ in sorted(candidates, key=lambda c: (-c[1], c[0])):
        if all(abs(s - k) >= rule.min_rr_samples for k in kept):
            kept.append(s)
    return sorted(kept)


rules = st.builds(
    RPeakRule,
    threshold=st.sampled_from([0.1, 0.5, 0.9]),
    min_rr_ms=st.integers(0, 400),
    edge_ms=st.integers(0, 60),
    reduction=st.integers(1, 16),
    fs=st.sampled_from([100, 250, 500]),
)
# few distinct values so that ties in strength (and at the threshold) happen often
values = st.sampled_from([-3.0, -0.5, 0.0, 0.5, 1.0, 2.0, 2.0001, 5.0])


@settings(max_examples=300, deadline=None)
@given(x=arrays(np.float32, st.integers(1, 300), elements=values), rule=rules, cut=st.booleans())
def test_same_beats_as_the_plain_rule(x, rule, cut):
    n = len(x) * rule.reduction - (rule.reduction - 1 if cut else 0)
    assert detect_rpeaks(x, rule, n).tolist() == reference_rpeaks(x, rule, n)


def test_same_beats_on_many_candidates():
    rng = np.random.default_rng(0)
    rule = RPeakRule()
    x = synthetic_logits(0.1, rule)  # 6 min: ~450 beats, ~150 echoes to suppress
    noisy = rng.normal(0.0, 1.5, 20_000).astype(np.float32)  # ~3000 runs, most suppressed
    for logits in (x, noisy):
        beats = detect_rpeaks(logits, rule)
        assert len(beats) > 200
        assert beats.tolist() == reference_rpeaks(logits, rule, len(logits) * 8)
