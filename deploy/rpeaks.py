"""R-peaks from the QRS detector's per-frame logits, heart rate, and the CPSC2019 score.

The detector (`cpsc2019_qrs`) gives one logit per frame of `reduction` input samples. The
rule below turns them into R-peak sample indices. It is written so that the native runner
can reimplement it bit for bit: integer sample arithmetic, one float comparison per frame,
deterministic tie-breaks. Its parameters are one dataclass (`RPeakRule`) that a bundle
manifest carries as a plain dict (`to_dict` / `from_dict`).

The rule, for logits x[0..F-1] of a record of N samples (r = reduction):

1. Threshold: frame i is positive when sigmoid(x[i]) > threshold, computed as
   x[i] > log(threshold / (1 - threshold)) in float64 (the same test, no exp per frame;
   strict, so all-zero logits give no beat at the default 0.5).
2. Runs: every maximal run of consecutive positive frames a..b (inclusive) is one beat
   candidate. Frame i covers samples [i*r, (i+1)*r) and stands for sample i*r + r//2; the
   candidate's sample is s = (a + b) * r // 2 + r // 2 (floor division: the midpoint of the
   run's first and last frame samples, rounded down). Its strength is max x[a..b].
3. Edges: a candidate is dropped unless e <= s < N - e, e = edge_ms * fs // 1000 samples.
   Half a QRS (~50 ms) must lie inside the record for the peak to be a peak; nearer the
   ends the model sees mostly its own zero padding.
4. Minimum RR: m = min_rr_ms * fs // 1000 samples. Candidates are visited by strength,
   strongest first, ties by smaller sample first; one is kept when it lies at least m
   samples from every candidate kept before it. Two beats closer than m (300 bpm at 200 ms)
   are one beat seen twice, so the stronger stands for both. (Only the nearest kept beat
   on each side needs the test, so it runs in O(n log n): an hour of beats in
   milliseconds; `python -m deploy.rpeaks_bench` times it.)
5. The kept samples, in rising order (int64).

Scoring follows the CPSC2019 challenge score as torch_ecg's `compute_metrics` implements
it (the data README's definition); see `score_rpeaks`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from .errors import DeployError


@dataclass(frozen=True)
class RPeakRule:
    """The post-processing rule's parameters (module docstring: the rule itself)."""

    threshold: float = 0.5  # probability a frame must exceed
    min_rr_ms: int = 200  # closer beats are one beat (300 bpm)
    edge_ms: int = 50  # beats nearer an end of the record are dropped
    reduction: int = 8  # input samples per output frame
    fs: int = 500  # sampling rate, Hz

    def __post_init__(self) -> None:
        t = self.threshold
        if not isinstance(t, numbers.Real) or isinstance(t, bool) or not 0.0 < t < 1.0:
            raise DeployError(f"R-peak rule: threshold {t!r} must be a probability in (0, 1)")
        for name, low in (("min_rr_ms", 0), ("edge_ms", 0), ("reduction", 1), ("fs", 1)):
            v = getattr(self, name)
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < low:
                raise DeployError(f"R-peak rule: {name} {v!r} must be an integer >= {low}")

    @property
    def logit_threshold(self) -> float:
        """The logit above which a frame is positive: sigmoid(x) > t  <=>  x > this."""
        return math.log(self.threshold / (1.0 - self.threshold))

    @property
    def min_rr_samples(self) -> int:
        return self.min_rr_ms * self.fs // 1000

    @property
    def edge_samples(self) -> int:
        return self.edge_ms * self.fs // 1000

    def to_dict(self) -> dict[str, float | int]:
        """Plain JSON values, for a bundle manifest."""
        return {
            f.name: (float if f.name == "threshold" else int)(getattr(self, f.name))
            for f in fields(self)
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> RPeakRule:
        """The rule a manifest holds; unknown keys are refused, missing ones take defaults."""
        if not isinstance(data, Mapping):
            raise DeployError(f"R-peak rule: expected a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DeployError(
                f"R-peak rule: unknown key(s) {', '.join(map(str, unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**data)


def detect_rpeaks(
    logits: np.ndarray, rule: RPeakRule | None = None, n_samples: int | None = None
) -> np.ndarray:
    """R-peak sample indices (int64, rising) of one record from its per-frame logits.

    `logits` is (frames,) or (frames, 1) float; `n_samples` is the record's length in
    samples (default frames * reduction). See the module docstring for the rule.
    """
    rule = rule or RPeakRule()
    x = _check_logits(logits)
    r = rule.reduction
    n = _check_n_samples(n_samples, len(x), r)
    positive = x > rule.logit_threshold
    edges = np.diff(np.concatenate(([0], positive.view(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    samples = (starts + ends) * r // 2 + r // 2
    # max of x[a..b] per run: reduceat over the bounds [a0, b0 + 1, a1, b1 + 1, ...], every
    # other answer (a -inf sentinel makes b + 1 = frames a valid bound)
    bounds = np.stack((starts, ends + 1), axis=1).ravel()
    strengths = np.maximum.reduceat(np.append(x, -np.inf), bounds)[::2] if len(bounds) else x[:0]
    e = rule.edge_samples
    inside = (samples >= e) & (samples < n - e)
    samples, strengths = samples[inside], strengths[inside]
    return np.sort(samples[_min_rr_keep(samples, strengths, rule.min_rr_samples)])


def _min_rr_keep(samples: np.ndarray, strengths: np.ndarray, m: int) -> np.ndarray:
    """Step 4's kept candidates (indices into `samples`), in O(n log n).

    `samples` rise strictly (runs are disjoint and in order). A candidate is kept when no
    kept one lies in the open window (s - m, s + m); the window is a fixed range of
    candidate indices, found once for all by `searchsorted`, and a Fenwick tree over
    candidate indices counts the kept ones in it in O(log n). Same answer as comparing
    with every kept beat (that is: the nearest kept on each side are >= m away)."""
    n = len(samples)
    lows = np.searchsorted(samples, samples - m, side="right").tolist()
    highs = np.searchsorted(samples, samples + m, side="left").tolist()
    tree = [0] * (n + 1)  # tree[i] counts kept candidates in (i - lowbit(i), i]
    kept = []
    for i in np.lexsort((samples, -strengths)).tolist():  # strongest first, then earliest
        count, j = 0, highs[i]  # kept in [lows[i], highs[i]) = prefix(high) - prefix(low)
        while j > 0:
            count += tree[j]
            j &= j - 1
        j = lows[i]
        while j > 0:
            count -= tree[j]
            j &= j - 1
        if count == 0:
            kept.append(i)
            j = i + 1
            while j <= n:
                tree[j] += 1
                j += j & -j
    return np.array(kept, dtype=np.int64)


def heart_rate_bpm(beats: np.ndarray, fs: int = 500, breaks: Sequence[int] = ()) -> float | None:
    """Mean heart rate over the beats: 60 * fs * (n - 1) / (last - first), None below 2.

    `breaks`: samples where the record was cut (the first sample of each gap). An RR
    interval across a break is no RR interval (the beats between are unknown), so the
    rate is 60 * fs * k / (sum of the k intervals that cross none); None if none is left."""
    b = _check_indices(beats, "beats")
    rr = np.diff(b)
    if (rr <= 0).any():
        raise DeployError("beats: sample indices must be strictly rising")
    cut = np.searchsorted(b, np.asarray(breaks, np.int64), side="left") - 1
    keep = np.ones(len(rr), bool)
    keep[cut[(cut >= 0) & (cut < len(rr))]] = False
    if not keep.any():
        return None
    return 60.0 * fs * int(keep.sum()) / float(rr[keep].sum())


@dataclass(frozen=True)
class RPeakScore:
    """CPSC2019 score (mean of per-record 1 / 0.7 / 0.3 / 0) and F1 over all peaks."""

    score: float
    f1: float
    precision: float
    recall: float
    tp: int
    fp: int
    fn: int
    record_scores: tuple[float, ...]

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "record_scores": list(self.record_scores)}


def score_rpeaks(
    references: Sequence[np.ndarray],
    detections: Sequence[np.ndarray],
    fs: int = 500,
    tolerance_ms: float = 75.0,
) -> RPeakScore:
    """Score detections against reference R-peaks, record by record (10 s records).

    Per record, as torch_ecg's CPSC2019 `compute_metrics` (t = tolerance in samples,
    0.5 s and 9.5 s the scored span): a reference with >= 1 detection within t is a hit
    (TP) and every further detection within t of it a false positive; one with none is
    missed (FN). Detections between hit windows also count as false positives, those in
    [0.5 s + t, first reference - t] and [reference + t, next reference - t], where the
    last reference's next is int(9.5 s): detections before 0.5 s + t or after 9.5 s - t
    outside the hit windows are not counted. A record scores 1 with no error, 0.7 with one
    FP, 0.3 with one FN, 0 with more (a record without references scores 1). F1 sums TP,
    FP and FN over all records.
    """
    if isinstance(references, np.ndarray) or isinstance(detections, np.ndarray):
        raise DeployError("scoring: give a list of per-record index arrays, not one array")
    if len(references) != len(detections) or not references:
        raise DeployError(
            f"scoring: {len(references)} reference records and "
            f"{len(detections)} detection records; give one array per record "
            "for both, at least one"
        )
    t = tolerance_ms * fs / 1000.0
    counts = [
        _record_counts(_check_references(ref, i), _check_indices(det, f"detections[{i}]"), fs, t)
        for i, (ref, det) in enumerate(zip(references, detections, strict=True))
    ]
    record_scores = tuple(_record_score(fp, fn) for _, fp, fn in counts)
    tp, fp, fn = (int(sum(c[k] for c in counts)) for k in range(3))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return RPeakScore(
        float(np.mean(record_scores)), f1, precision, recall, tp, fp, fn, record_scores
    )


def _record_counts(ref: np.ndarray, det: np.ndarray, fs: int, t: float) -> tuple[int, int, int]:
    tp = fp = fn = 0
    bounds = np.concatenate((ref, [int(9.5 * fs)]))
    for j, peak in enumerate(ref.tolist()):
        fp += int(np.count_nonzero((det >= peak + t) & (det <= bounds[j + 1] - t)))
        if j == 0:
            fp += int(np.count_nonzero((det >= 0.5 * fs + t) & (det <= peak - t)))
        hits = int(np.count_nonzero(np.abs(det - peak) <= t))
        if hits:
            tp, fp = tp + 1, fp + hits - 1
        else:
            fn += 1
    return tp, fp, fn


def _record_score(fp: int, fn: int) -> float:
    if fp + fn == 0:
        return 1.0
    if fp + fn > 1:
        return 0.0
    return 0.7 if fp == 1 else 0.3


def _check_logits(logits: object) -> np.ndarray:
    if not isinstance(logits, np.ndarray):
        raise DeployError(f"logits: expected a numpy array, got {type(logits).__name__}")
    if logits.dtype.kind != "f":
        raise DeployError(
            f"logits dtype {logits.dtype}: expected float32 or float64 (the "
            "detector's raw output, before any sigmoid)"
        )
    x = logits[:, 0] if logits.ndim == 2 and logits.shape[1] == 1 else logits
    if x.ndim != 1 or x.size == 0:
        raise DeployError(
            f"logits shape {logits.shape}: expected (frames,) or (frames, 1) for "
            "one record; pass output[i] of a (batch, frames, 1) output"
        )
    if not np.isfinite(x).all():
        first = int(np.flatnonzero(~np.isfinite(x))[0])
        raise DeployError(
            f"logits hold NaN or Inf (first at frame {first}); the model's "
            "input was probably not finite"
        )
    return x.astype(np.float64)


def _check_n_samples(n_samples: object, frames: int, r: int) -> int:
    if n_samples is None:
        return frames * r
    if not isinstance(n_samples, numbers.Integral) or isinstance(n_samples, bool):
        raise DeployError(f"n_samples {n_samples!r}: expected an integer")
    if frames not in (n_samples // r, -(-n_samples // r)):
        raise DeployError(
            f"{frames} frames do not fit a record of {n_samples} samples at {r} "
            "samples per frame; check n_samples or the rule's reduction"
        )
    return int(n_samples)


def _check_indices(x: object, what: str) -> np.ndarray:
    if not isinstance(x, np.ndarray | list | tuple):
        raise DeployError(f"{what}: expected an array of sample indices, got {type(x).__name__}")
    a = np.asarray(x)
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise DeployError(
            f"{what}: shape {a.shape} dtype {a.dtype}, expected 1-D integer sample indices"
        )
    return a.astype(np.int64)


def _check_references(x: object, i: int) -> np.ndarray:
    a = _check_indices(x, f"references[{i}]")
    if len(a) and (np.diff(a) <= 0).any():
        raise DeployError(f"references[{i}]: R-peak indices must be strictly rising")
    return a
