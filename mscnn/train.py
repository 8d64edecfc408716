"""Train the demo QRS detector (`cpsc2019_qrs`, or a CRNN form) on the 50 CPSC2019 records.

Why it exists: a bundle of seeded random weights proves parity but detects nothing. A
small trained detector lets every later stage (int8, streaming, firmware) be judged on
real beats: the CPSC2019 score and F1 of what it finds. Fifty records are not a training
set of any size; the figures from `compile.bench.evaluate` (5-fold cross-validation) say how
far this goes.

What the model learns, and so what a device must feed it:

- Input: the raw signal in mV, (batch, 1, samples) at 500 Hz. No normalisation, no
  filtering: the bundle takes mV directly. Robustness to gain, polarity and baseline comes
  from the augmentation instead (random gain 0.5-2x, sign flip, DC offset, white noise).
- Target: one logit per frame of `reduction` (8) samples. Frame i stands for sample
  i*r + r//2 (as in `deploy.rpeaks`) and is labelled positive when that sample lies within
  `label_ms` (50 ms = 25 samples) of a reference R-peak, so a beat is a run of about 7
  positive frames centred on the peak; the post-processing takes the run's centre.
- Loss: binary cross-entropy on the logits; AdamW with a one-cycle learning rate.

Determinism: on CPU, with `torch.use_deterministic_algorithms(True)`, a fixed thread
count (1: on 2 shared cores one thread trained 3-5x faster than two, which spin waiting
for each other, and its reduction order does not depend on the core count), and every
random draw (initial weights, batch order, crops, augmentation, dropout)
from generators seeded by `seed`, the same torch build gives bit-identical weights. The
recipe JSON written beside the checkpoint records all of it and the checkpoint's sha256.
A different torch version, thread count or CPU kind may round differently.

Models (`--model`, `MODELS`): `cnn` the preset `cpsc2019_qrs`; `crnn` and `crnn-uni` the
same backbone and classifier with a small bidirectional or unidirectional LSTM between
them (`mscnn.detectors`), trained by the same recipe. `--recipe R` trains what a committed
recipe JSON says (its config and seed) and checks the result against its sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data as ecg_data
from .checkpoint import save_checkpoint, seeded_init, seeded_lstm_init
from .detectors import get_detector
from .errors import MscnnError
from .heads import build_model
from .presets import PRESETS

log = logging.getLogger(__name__)

WEIGHTS = Path(__file__).resolve().parent / "weights"
CHECKPOINT = WEIGHTS / "cpsc2019_qrs.pt"
RECIPE_FORMAT = "mscnn-edge/train-recipe"


@dataclass(frozen=True)
class TrainConfig:
    """Every hyper-parameter of the recipe; the defaults made the committed checkpoint."""

    preset: str = "cpsc2019_qrs"
    epochs: int = 80
    batch_size: int = 10
    crop_samples: int = 4000  # random crop per example per step (a multiple of 8)
    lr: float = 3e-3  # peak of the one-cycle schedule
    weight_decay: float = 1e-4
    label_ms: int = 50  # frame positive within this of a reference R-peak
    gain_range: tuple[float, float] = (0.5, 2.0)  # log-uniform
    flip_prob: float = 0.5  # polarity inversion
    offset_mv: float = 1.0  # DC offset, uniform in +-offset_mv
    noise_mv: float = 0.05  # white noise std, uniform in [0, noise_mv] per example
    threads: int = 1

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "gain_range": list(self.gain_range)}


# The models `--model` names, each with the recipe that trains it. The CRNNs take the CNN's
# recipe (crops, schedule, augmentation) but 30 epochs, not 80: what a 5-fold
# cross-validation of them costs on the 2 shared cores of the build machine
# (docs/whole-models.md compares them with the CNN at both lengths).
CRNN_EPOCHS = 30
MODELS: dict[str, TrainConfig] = {
    "cnn": TrainConfig(),
    "crnn": TrainConfig(preset="cpsc2019_qrs_bilstm", epochs=CRNN_EPOCHS),
    "crnn-uni": TrainConfig(preset="cpsc2019_qrs_lstm", epochs=CRNN_EPOCHS),
}


def checkpoint_path(config: TrainConfig) -> Path:
    """Where the committed checkpoint of `config.preset` lives (its recipe beside it)."""
    return WEIGHTS / f"{config.preset}.pt"


@dataclass(frozen=True)
class Recipe:
    """What a committed recipe JSON says: train `config` with `seed`, expect `sha256`."""

    config: TrainConfig
    seed: int
    sha256: str


def load_recipe(path: Path) -> Recipe:
    """Read and check a recipe JSON written by `train_and_save`; a malformed one is refused
    naming the key."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise MscnnError(f"recipe {path}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise MscnnError(f"recipe {path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != RECIPE_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise MscnnError(f"recipe {path}: 'format' is {found!r}, expected {RECIPE_FORMAT!r}")
    for key, kind in (("seed", int), ("sha256", str), ("config", dict)):
        if key not in data:
            raise MscnnError(f"recipe {path}: key {key!r} is missing")
        if not isinstance(data[key], kind) or isinstance(data[key], bool):
            raise MscnnError(
                f"recipe {path}: key {key!r} is {data[key]!r}, expected "
                f"{_ARTICLE[kind.__name__] if kind is not dict else 'a'} {kind.__name__}"
            )
    return Recipe(config_from_dict(data["config"], f"recipe {path}"), data["seed"], data["sha256"])


_FIELD_KINDS = {"str": (str,), "int": (int,), "float": (int, float)}
_ARTICLE = {"str": "a", "int": "an", "float": "a"}


def config_from_dict(values: dict, where: str) -> TrainConfig:
    """A TrainConfig from its `to_dict()` form: every key present, known and well typed."""
    names = [f.name for f in fields(TrainConfig)]
    unknown = sorted(set(values) - set(names))
    missing = [n for n in names if n not in values]
    if unknown or missing:
        key = (unknown or missing)[0]
        raise MscnnError(
            f"{where}: config key {key!r} is {'unknown' if unknown else 'missing'}; "
            f"a recipe config has exactly: {', '.join(names)}"
        )
    for f in fields(TrainConfig):
        value, kinds = values[f.name], _FIELD_KINDS.get(str(f.type))
        if kinds is None:  # gain_range: two positive numbers, low first
            ok = (
                isinstance(value, list)
                and len(value) == 2
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
                and 0 < value[0] <= value[1]
            )
        else:
            least = 0 if f.type == "float" or f.name == "epochs" else 1
            ok = isinstance(value, kinds) and not isinstance(value, bool)
            ok = ok and (f.type == "str" or value >= least)
        if not ok:
            wanted = "[low, high] gains" if kinds is None else f"{_ARTICLE[f.type]} {f.type}"
            wanted += "" if kinds is None or f.type == "str" else f" >= {least}"
            raise MscnnError(f"{where}: config key {f.name!r} is {value!r}, expected {wanted}")
    get_detector(values["preset"])  # names the models it knows
    return TrainConfig(**{**values, "gain_range": tuple(values["gain_range"])})


def frame_labels(
    r_peaks: np.ndarray, frames: int, reduction: int, fs: int, label_ms: int
) -> np.ndarray:
    """(frames,) float32: 1 where frame i's sample i*r + r//2 is within label_ms of a peak."""
    centres = np.arange(frames) * reduction + reduction // 2
    tolerance = label_ms * fs // 1000
    labels = np.zeros(frames, dtype=np.float32)
    for p in np.asarray(r_peaks, dtype=np.int64):
        labels[np.abs(centres - p) <= tolerance] = 1.0
    return labels


def train(
    signals: np.ndarray,
    r_peaks: Sequence[np.ndarray],
    config: TrainConfig | None = None,
    seed: int = 0,
    epochs: int | None = None,
    fs: int = ecg_data.FS,
) -> nn.Module:
    """Train a fresh `config.preset` model on (records, samples) mV with its R-peaks.

    Deterministic for a given seed (see the module docstring); returns it in eval mode.
    `epochs` overrides `config.epochs` (tests use a few).
    """
    config = config or TrainConfig()
    if epochs is not None:
        config = replace(config, epochs=epochs)
    x_all = _check_signals(signals, r_peaks)
    with _deterministic(config.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout draws from the global generator, forked here
        model = _fresh_model(config.preset, seed).train()
        reduction = _reduction(model, config.crop_samples)
        frames = x_all.shape[-1] // reduction
        y_all = torch.from_numpy(
            np.stack([frame_labels(p, frames, reduction, fs, config.label_ms) for p in r_peaks])
        )
        g = torch.Generator().manual_seed(seed)
        steps = config.epochs * -(-len(x_all) // config.batch_size)
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=max(steps, 1))
        log.info(
            "training %s: %d records, %d epochs, seed %d, %d threads",
            config.preset,
            len(x_all),
            config.epochs,
            seed,
            config.threads,
        )
        for epoch in range(config.epochs):
            losses = []
            for idx in torch.randperm(len(x_all), generator=g).split(config.batch_size):
                xb, yb = _augment(x_all[idx], y_all[idx], config, reduction, g)
                loss = F.binary_cross_entropy_with_logits(model(xb)[..., 0], yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()
                losses.append(loss.item())
            log.info("epoch %d/%d: loss %.4f", epoch + 1, config.epochs, float(np.mean(losses)))
    return model.eval()


def _fresh_model(name: str, seed: int) -> nn.Module:
    """The detector's model with seeded initial weights: never the weights a preset ships
    (`load_model` would load those, and a fold would start from weights that saw it)."""
    d = get_detector(name)
    with torch.random.fork_rng(devices=[]):  # layer constructors draw from the global RNG
        model = build_model(d.head, d.in_channels, d.config, d.classes)
    seeded_init(model, seed)
    seeded_lstm_init(model, seed)  # a no-op for the CNN: its weights stay as they were
    return model


def _check_signals(signals: np.ndarray, r_peaks: Sequence[np.ndarray]) -> torch.Tensor:
    if not isinstance(signals, np.ndarray) or signals.ndim != 2 or signals.dtype != np.float32:
        raise MscnnError("signals: expected a (records, samples) float32 array in mV")
    if len(r_peaks) != len(signals) or not len(signals):
        raise MscnnError(f"{len(signals)} records but {len(r_peaks)} R-peak arrays")
    if not np.isfinite(signals).all():
        raise MscnnError("signals hold NaN or Inf; clean the records first")
    return torch.from_numpy(np.ascontiguousarray(signals))[:, None]  # (records, 1, samples)


def _reduction(model: nn.Module, samples: int) -> int:
    """Input samples per output frame, measured (the head's contract: frames at 1/r)."""
    with torch.no_grad():
        frames = model.eval()(torch.zeros(1, 1, samples)).shape[1]
    model.train()
    reduction = samples // frames
    if samples % reduction or samples // reduction != frames:
        raise MscnnError(
            f"crop_samples {samples} is not a multiple of the model's {reduction} "
            "samples per frame; choose one that is"
        )
    return reduction


def _augment(
    x: torch.Tensor, y: torch.Tensor, c: TrainConfig, r: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random frame-aligned crop, gain, polarity, offset and noise: all drawn from `g`."""
    n, crop_frames = len(x), c.crop_samples // r
    starts = torch.randint(0, y.shape[1] - crop_frames + 1, (n,), generator=g).tolist()
    xc = torch.stack([x[i, :, s * r : s * r + c.crop_samples] for i, s in enumerate(starts)])
    yc = torch.stack([y[i, s : s + crop_frames] for i, s in enumerate(starts)])
    lo, hi = np.log(c.gain_range[0]), np.log(c.gain_range[1])
    gain = torch.exp(lo + (hi - lo) * torch.rand(n, 1, 1, generator=g))
    sign = torch.where(torch.rand(n, 1, 1, generator=g) < c.flip_prob, -1.0, 1.0)
    offset = c.offset_mv * (2 * torch.rand(n, 1, 1, generator=g) - 1)
    noise = c.noise_mv * torch.rand(n, 1, 1, generator=g) * torch.randn(xc.shape, generator=g)
    return xc * gain * sign + offset + noise, yc


@contextmanager
def _deterministic(threads: int) -> Iterator[None]:
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def train_and_save(out: Path, config: TrainConfig, seed: int) -> dict[str, object]:
    """Train on all CPSC2019 records, write the checkpoint and its recipe JSON beside it."""
    records = ecg_data.cpsc2019_records()
    out.parent.mkdir(parents=True, exist_ok=True)  # fail before minutes of training
    start = time.perf_counter()
    model = train(records.signals, records.r_peaks, config, seed, fs=records.fs)
    seconds = time.perf_counter() - start
    data_sha256 = sha256_of(ecg_data.data_dir() / ecg_data.CPSC2019_FILE)
    metadata = {  # plain values only: the checkpoint loads with weights_only=True
        "trained_by": "mscnn.train",
        "seed": seed,
        "config": config.to_dict(),
        "torch": str(torch.__version__),  # torch.__version__ is a str subclass
        "data_sha256": data_sha256,
        "records": list(records.names),
    }
    preset = config.preset if config.preset in PRESETS else None  # a CRNN carries its config
    save_checkpoint(out, model, leads=("ECG",), fs=records.fs, preset=preset, metadata=metadata)
    recipe = {
        "format": RECIPE_FORMAT,
        "version": 1,
        "checkpoint": out.name,
        "sha256": sha256_of(out),
        "seed": seed,
        "config": config.to_dict(),
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "threads": config.threads,
        "deterministic_algorithms": True,
        "data": ecg_data.CPSC2019_FILE,
        "data_sha256": data_sha256,
        "records": records.names,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(seconds, 1),
    }
    recipe_path = out.with_suffix(".json")
    recipe_path.write_text(json.dumps(recipe, indent=2) + "\n")
    log.info("wrote %s (sha256 %s) and %s in %.0f s", out, recipe["sha256"], recipe_path, seconds)
    return recipe


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m mscnn.train`: train, save, and optionally compare with a recipe's sha256."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.out
    try:
        recipe = load_recipe(args.recipe or args.expect) if args.recipe or args.expect else None
        if args.recipe:
            config, seed = recipe.config, recipe.seed
        else:
            config = MODELS[args.model]
            config = replace(config, epochs=args.epochs or config.epochs, threads=args.threads)
            seed = args.seed
        out = out or checkpoint_path(config)
        written = train_and_save(out, config, seed)
    except MscnnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"error: cannot write {out} ({exc.strerror}); choose a writable --out", file=sys.stderr
        )
        return 2
    if recipe is None:
        return 0
    source = args.recipe or args.expect
    if written["sha256"] == recipe.sha256:
        print(f"reproduced: {out} has the sha256 of {source} ({recipe.sha256})")
        return 0
    print(
        f"not reproduced: {out} sha256 {written['sha256']}, {source} says {recipe.sha256} "
        "(a different torch build, thread count or CPU rounds differently)"
    )
    return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mscnn.train",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model", choices=list(MODELS), default="cnn", help="which detector (module doc)"
    )
    parser.add_argument(
        "--out", type=Path, help="checkpoint to write (default: mscnn/weights/<model>.pt)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds every random draw")
    parser.add_argument("--epochs", type=positive_int, help="passes (default: the model's)")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=TrainConfig.threads,
        help="torch intra-op threads (the recipes' sha256 are for 1)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--recipe",
        type=Path,
        help="train what this recipe JSON says (config, seed; --model, --seed, --epochs and "
        "--threads are not used) and check its sha256",
    )
    group.add_argument(
        "--expect", type=Path, metavar="RECIPE", help="a recipe JSON whose sha256 to reproduce"
    )
    return parser


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1, refused with the value named."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


if __name__ == "__main__":
    sys.exit(main())
