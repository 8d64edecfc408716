"""How long the R-peak rule takes on long records: `python -m deploy.rpeaks_bench`.

Synthetic logits at the detector's frame rate (500 Hz, 8 samples per frame): a beat every
0.6-1.2 s as a run of 2-4 positive frames, and a weaker echo 40-160 ms after one beat in
three, which step 4 (minimum RR) must suppress. Each length is run once to warm up, then
timed `--runs` times; the median and the spread are printed (and saved with --json).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .rpeaks import RPeakRule, detect_rpeaks


@dataclass(frozen=True)
class RPeakTiming:
    hours: float
    frames: int
    beats: int
    median_s: float
    min_s: float
    max_s: float


def synthetic_logits(hours: float, rule: RPeakRule, seed: int = 0) -> np.ndarray:
    """Per-frame logits of `hours` of a irregular rhythm with echoes (module docstring)."""
    rng = np.random.default_rng(seed)
    frames = int(hours * 3600 * rule.fs) // rule.reduction
    x = rng.normal(-6.0, 1.0, frames).astype(np.float32)
    frame_s = rule.reduction / rule.fs
    t = np.cumsum(rng.uniform(0.6, 1.2, int(hours * 3600 / 0.6) + 1))
    t = t[t < frames * frame_s - 1.0]
    starts = (t / frame_s).astype(np.int64)
    for width in range(4):
        on = rng.random(len(starts)) < [1.0, 1.0, 0.7, 0.3][width]
        x[starts[on] + width] = rng.uniform(2.0, 8.0, int(on.sum()))
    echo = starts[rng.random(len(starts)) < 1 / 3]
    x[echo + rng.integers(5, 21, len(echo))] = rng.uniform(0.1, 1.9, len(echo))
    return x


def time_rpeaks(hours: float, runs: int = 5, rule: RPeakRule | None = None) -> RPeakTiming:
    """One warm-up, then `runs` timed calls of detect_rpeaks on `hours` of logits."""
    rule = rule or RPeakRule()
    x = synthetic_logits(hours, rule)
    beats = detect_rpeaks(x, rule)
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        detect_rpeaks(x, rule)
        seconds.append(time.perf_counter() - start)
    return RPeakTiming(
        hours, len(x), len(beats), float(np.median(seconds)), min(seconds), max(seconds)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.rpeaks_bench",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--hours", type=float, nargs="+", default=[1.0, 6.0, 24.0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per length")
    parser.add_argument("--json", type=Path, help="also save the timings here")
    args = parser.parse_args(argv)
    if args.runs < 1 or any(h <= 0 for h in args.hours):
        parser.error(f"--runs {args.runs} and --hours {args.hours} must be positive")
    timings = []
    print(f"{'hours':>6} {'frames':>10} {'beats':>7} {'median s':>9} {'min s':>8} {'max s':>8}")
    for hours in args.hours:
        t = time_rpeaks(hours, args.runs)
        timings.append(t)
        print(
            f"{t.hours:>6g} {t.frames:>10} {t.beats:>7} {t.median_s:>9.3f} "
            f"{t.min_s:>8.3f} {t.max_s:>8.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps([asdict(t) for t in timings], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
