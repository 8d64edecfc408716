"""How well the QRS detector recipes generalise: k-fold cross-validation over records.

The committed checkpoint was trained on all 50 CPSC2019 sample records, so its score on
them says only that training worked. Here the same recipe (`mscnn.train.train`, same
config and seed) is trained k times, each time without one fold of records, and the
held-out records are scored with the deployed post-processing (`deploy.rpeaks`): the
CPSC2019 score and F1 a device would get on records it has not seen. The folds are a
seeded permutation of the records, so a rerun gives the same folds and, on the same
torch build and thread count, the same figures.

Several models (`--models cnn,crnn`, as `mscnn.train --model` names them) are
cross-validated one after the other on the same folds by the same code, each written to
`<out>/<model>_cv<k>.json`, and compared side by side in `<out>/comparison_cv<k>.json`
(score, F1, parameters, training time, the CPU).

    python -m compile.bench.evaluate [--models cnn,crnn] [--folds 5] [--seed 0] [--epochs N]
        [--out build/evaluate]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

import mscnn
from deploy.bundle import cpu_model
from deploy.errors import DeployError
from deploy.rpeaks import RPeakRule, RPeakScore, detect_rpeaks, score_rpeaks
from mscnn import data as ecg_data
from mscnn.train import CHECKPOINT, MODELS, TrainConfig, checkpoint_path, positive_int, train

from ..errors import CompileError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldResult:
    fold: int
    records: tuple[str, ...]  # held out
    score: RPeakScore
    train_seconds: float


@dataclass(frozen=True)
class Evaluation:
    """Per-fold and pooled figures of one cross-validation run, with what produced them."""

    folds: tuple[FoldResult, ...]
    pooled: RPeakScore  # every held-out record scored once, as one set
    config: TrainConfig
    rule: RPeakRule
    seed: int
    checkpoint: RPeakScore | None = field(default=None)  # committed weights, training records
    parameters: int = 0
    seconds: float = 0.0  # wall time of the whole cross-validation

    def summary(self, metric: str) -> tuple[float, float, float, float]:
        """Mean, standard deviation, min and max over folds of `score` or `f1`."""
        values = np.array([getattr(f.score, metric) for f in self.folds])
        return float(values.mean()), float(values.std()), float(values.min()), float(values.max())

    def to_dict(self) -> dict[str, object]:
        return {
            "k": len(self.folds),
            "seed": self.seed,
            "parameters": self.parameters,
            "seconds": self.seconds,
            "config": self.config.to_dict(),
            "rule": self.rule.to_dict(),
            "torch": torch.__version__,
            "folds": [
                {
                    "fold": f.fold,
                    "records": list(f.records),
                    "train_seconds": f.train_seconds,
                    **f.score.to_dict(),
                }
                for f in self.folds
            ],
            "summary": {
                m: dict(zip(("mean", "std", "min", "max"), self.summary(m), strict=True))
                for m in ("score", "f1")
            },
            "pooled": self.pooled.to_dict(),
            "checkpoint_on_training_records": self.checkpoint and self.checkpoint.to_dict(),
        }

    def table(self) -> str:
        lines = [f"{'fold':>6} {'records':>7} {'score':>7} {'F1':>7} {'TP':>5} {'FP':>4} {'FN':>4}"]
        for f in self.folds:
            s = f.score
            lines.append(
                f"{f.fold:>6} {len(f.records):>7} {s.score:>7.3f} {s.f1:>7.4f} "
                f"{s.tp:>5} {s.fp:>4} {s.fn:>4}"
            )
        p = self.pooled
        lines.append(
            f"{'pooled':>6} {len(p.record_scores):>7} {p.score:>7.3f} {p.f1:>7.4f} "
            f"{p.tp:>5} {p.fp:>4} {p.fn:>4}"
        )
        for metric in ("score", "f1"):
            mean, std, lo, hi = self.summary(metric)
            lines.append(
                f"{metric} over folds: {mean:.3f} ± {std:.3f} (min {lo:.3f}, max {hi:.3f})"
            )
        if self.checkpoint is not None:
            c = self.checkpoint
            lines.append(
                f"committed checkpoint on its own training records: score {c.score:.3f}, "
                f"F1 {c.f1:.4f} (optimistic: seen in training)"
            )
        return "\n".join(lines)


def fold_indices(n: int, k: int, seed: int) -> list[np.ndarray]:
    """k disjoint, sorted index sets covering range(n): a seeded permutation, split evenly."""
    if not 2 <= k <= n:
        raise CompileError(f"folds: {k} folds over {n} records; choose 2 to {n}")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, k)]


def detect(model: nn.Module, signals: np.ndarray, rule: RPeakRule) -> list[np.ndarray]:
    """R-peaks of each (samples,) mV record, by the model's logits and the deployed rule."""
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(np.ascontiguousarray(signals))[:, None]).numpy()
    return [detect_rpeaks(out, rule, n_samples=signals.shape[-1]) for out in logits]


def cross_validate(
    k: int = 5,
    seed: int = 0,
    config: TrainConfig | None = None,
    rule: RPeakRule | None = None,
    checkpoint: Path | None = None,
) -> Evaluation:
    """Train the recipe k times on k-1 folds, score each held-out fold (see module doc)."""
    config, rule = config or TrainConfig(), rule or RPeakRule()
    records = ecg_data.cpsc2019_records()
    folds, detections = [], [None] * len(records.names)
    began, parameters = time.perf_counter(), 0
    for i, held in enumerate(fold_indices(len(records.names), k, seed)):
        kept = np.setdiff1d(np.arange(len(records.names)), held)
        log.info(
            "fold %d/%d: training on %d records, holding out %d", i + 1, k, len(kept), len(held)
        )
        start = time.perf_counter()
        model = train(records.signals[kept], [records.r_peaks[j] for j in kept], config, seed)
        seconds = round(time.perf_counter() - start, 1)
        parameters = sum(p.numel() for p in model.parameters())
        found = detect(model, records.signals[held], rule)
        score = score_rpeaks([records.r_peaks[j] for j in held], found, records.fs)
        log.info(
            "fold %d/%d: score %.3f, F1 %.4f (%.0f s)", i + 1, k, score.score, score.f1, seconds
        )
        for j, beats in zip(held, found, strict=True):
            detections[j] = beats
        folds.append(FoldResult(i, tuple(records.names[j] for j in held), score, seconds))
    pooled = score_rpeaks(records.r_peaks, detections, records.fs)
    committed = None
    if checkpoint is not None and Path(checkpoint).is_file():
        committed = score_checkpoint(checkpoint, rule)
    seconds = round(time.perf_counter() - began, 1)
    return Evaluation(tuple(folds), pooled, config, rule, seed, committed, parameters, seconds)


def score_checkpoint(path: Path = CHECKPOINT, rule: RPeakRule | None = None) -> RPeakScore:
    """The score of a trained checkpoint on all CPSC2019 sample records."""
    model = mscnn.load_checkpoint(path).model
    records = ecg_data.cpsc2019_records()
    return score_rpeaks(
        records.r_peaks, detect(model, records.signals, rule or RPeakRule()), records.fs
    )


def parse_models(value: str) -> list[str]:
    """argparse type: comma-separated model names (`mscnn.train.MODELS`), each once."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if not names or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected distinct names from {', '.join(MODELS)} separated by commas, got {value!r}"
        )
    return names


def comparison(results: Mapping[str, Evaluation], cpu: str) -> dict[str, object]:
    """The models side by side: same folds (checked), their figures and costs, the CPU."""
    folds = {name: [list(f.records) for f in r.folds] for name, r in results.items()}
    first = next(iter(folds.values()))
    if any(f != first for f in folds.values()):
        raise CompileError("models were cross-validated on different folds; rerun together")
    return {
        "cpu": cpu,
        "folds": first,
        "models": {
            name: {
                "model": r.config.preset,
                "parameters": r.parameters,
                "score": dict(zip(("mean", "std", "min", "max"), r.summary("score"), strict=True)),
                "f1": dict(zip(("mean", "std", "min", "max"), r.summary("f1"), strict=True)),
                "pooled": {k: getattr(r.pooled, k) for k in ("score", "f1", "tp", "fp", "fn")},
                "train_seconds": round(sum(f.train_seconds for f in r.folds), 1),
                "seconds": r.seconds,
            }
            for name, r in results.items()
        },
    }


def comparison_table(data: Mapping[str, object]) -> str:
    lines = [
        f"{'model':10} {'params':>8} {'score':>15} {'F1':>17} {'pooled':>7} {'TP/FP/FN':>12} "
        f"{'time':>7}"
    ]
    for name, m in data["models"].items():
        s, f, p = m["score"], m["f1"], m["pooled"]
        lines.append(
            f"{name:10} {m['parameters']:>8} {s['mean']:.3f} ± {s['std']:.3f} "
            f"{f['mean']:.4f} ± {f['std']:.4f} {p['score']:>7.3f} "
            f"{p['tp']:>4}/{p['fp']}/{p['fn']} {m['seconds'] / 60:>5.1f} m"
        )
    lines.append(f"CPU: {data['cpu']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m compile.bench.evaluate`: cross-validate each model, print, save JSON."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("mscnn.train").setLevel(logging.WARNING)  # per-epoch losses
    try:
        rule = RPeakRule(threshold=args.threshold)
        args.out.mkdir(parents=True, exist_ok=True)  # fail before the first fold, not after
        results = {}
        for name in args.models:
            config = replace(MODELS[name], epochs=args.epochs or MODELS[name].epochs)
            log.info(
                "cross-validating %s (%s): %d folds, seed %d, config %s, rule %s",
                name,
                config.preset,
                args.folds,
                args.seed,
                asdict(config),
                rule.to_dict(),
            )
            result = cross_validate(args.folds, args.seed, config, rule, checkpoint_path(config))
            path = args.out / f"{config.preset}_cv{args.folds}.json"
            path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
            print(f"{name} ({config.preset}):\n{result.table()}\nsaved {path}")
            results[name] = result
        cores = len(os.sched_getaffinity(0))
        compared = comparison(results, f"{cpu_model() or 'unknown CPU'} ({cores} cores)")
        path = args.out / f"comparison_cv{args.folds}.json"
        path.write_text(json.dumps(compared, indent=2) + "\n")
    except (mscnn.MscnnError, DeployError, CompileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"error: cannot write {args.out} ({exc.strerror}); choose a writable --out",
            file=sys.stderr,
        )
        return 2
    print(comparison_table(compared))
    print(f"saved {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m compile.bench.evaluate",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--models", type=parse_models, default=["cnn", "crnn"], help="comma-separated"
    )
    parser.add_argument("--folds", type=positive_int, default=5, help="k of k-fold")
    parser.add_argument("--seed", type=int, default=0, help="folds and training seed")
    parser.add_argument(
        "--epochs", type=positive_int, help="training passes per fold (default: each recipe's)"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=RPeakRule.threshold,
        help="R-peak rule: frame probability to exceed",
    )
    parser.add_argument("--out", type=Path, default=Path("build/evaluate"), help="JSON folder")
    return parser


if __name__ == "__main__":
    sys.exit(main())
