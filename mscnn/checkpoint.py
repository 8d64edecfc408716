"""Checkpoints: our own file format, bare torch_ecg state dicts, and the seeded default.

Our file is a `torch.save`d dict of plain values and tensors only (so it loads with
`weights_only=True`, which runs no pickled code):

    {"format": "mscnn-edge/checkpoint", "version": 1, "preset": name or None,
     "in_channels": int, "config": {...}, "leads": [...], "fs": int, "state_dict": {...}}

No trained weights ship with mscnn-edge. Without a checkpoint, `load_model` gives a
seeded random initialisation whose normalisation layers carry non-trivial running
statistics, so that every parity check exercises them; its outputs mean nothing clinically.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import resolve_config
from .errors import MscnnError
from .model import MultiScopicCNN
from .presets import DEFAULT_PRESET, PRESETS, get_preset

log = logging.getLogger(__name__)

FORMAT = "mscnn-edge/checkpoint"
VERSION = 1
_FIELDS = ("in_channels", "config", "leads", "fs", "state_dict")


@dataclass
class LoadedModel:
    """A model in eval mode with what the rest of the pipeline needs to know about it."""

    model: MultiScopicCNN
    preset: str | None
    leads: tuple[str, ...]
    fs: int
    source: str  # where the weights came from, for manifests and logs


def save_checkpoint(
    path: str | Path,
    model: MultiScopicCNN,
    *,
    leads: Sequence[str],
    fs: int,
    preset: str | None = None,
) -> Path:
    """Write `model` with its config, lead names and sampling rate to `path`."""
    if len(leads) != model.in_channels:
        raise MscnnError(f"leads: {len(leads)} names for a {model.in_channels}-lead model")
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "preset": preset,
        "in_channels": model.in_channels,
        "config": model.config,
        "leads": list(leads),
        "fs": int(fs),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path, preset: str | None = None) -> LoadedModel:
    """Load our checkpoint file, or a bare (torch_ecg) state dict given the `preset`.

    A torch_ecg model that holds MultiScopicCNN as `cnn` (ECG_SEQ_LAB_NET, ECG_CRNN) may be
    given whole: the `cnn.` weights are taken and the heads ignored, with a log message.
    """
    path = Path(path)
    data = _read(path)
    if isinstance(data, Mapping) and data.get("format") == FORMAT:
        return _from_ours(path, data, preset)
    state = _find_state_dict(path, data)
    if preset is None:
        raise MscnnError(
            f"checkpoint {path}: a bare state dict holds no config; give the preset it was "
            f"trained with (choose from: {', '.join(PRESETS)})"
        )
    p = get_preset(preset)
    model = MultiScopicCNN(p.in_channels, **p.config)
    _load_state(model, state, path, f"preset {preset!r}")
    return LoadedModel(model.eval(), preset, p.leads, p.fs, f"state dict {path.name}")


def load_model(
    preset: str = DEFAULT_PRESET, checkpoint: str | Path | None = None, seed: int = 0
) -> LoadedModel:
    """The model the pipeline compiles: from `checkpoint` if given, else seeded."""
    if checkpoint is not None:
        loaded = load_checkpoint(checkpoint, preset)
        if loaded.preset not in (None, preset):
            raise MscnnError(
                f"checkpoint {checkpoint} is for preset {loaded.preset!r}, not {preset!r}"
            )
        return loaded
    p = get_preset(preset)
    with torch.random.fork_rng(devices=[]):  # layer constructors draw from the global RNG
        model = MultiScopicCNN(p.in_channels, **p.config)
    seeded_init(model, seed)
    return LoadedModel(model.eval(), preset, p.leads, p.fs, f"seeded initialisation (seed {seed})")


def seeded_init(model: nn.Module, seed: int) -> None:
    """Re-draw every weight and running statistic from a generator seeded with `seed`.

    Convs get He-normal weights; norms get weights near 1, biases near 0 and running
    means/variances away from the 0/1 defaults, like a trained model's.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv1d):
                fan_in = module.in_channels // module.groups * module.kernel_size[0]
                module.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=g)
                if module.bias is not None:
                    module.bias.uniform_(-0.1, 0.1, generator=g)
            elif isinstance(module, nn.BatchNorm1d | nn.GroupNorm | nn.InstanceNorm1d):
                if getattr(module, "weight", None) is not None:
                    module.weight.uniform_(0.5, 1.5, generator=g)
                    module.bias.normal_(0.0, 0.1, generator=g)
                if getattr(module, "running_mean", None) is not None:
                    module.running_mean.normal_(0.0, 0.5, generator=g)
                    module.running_var.uniform_(0.5, 2.0, generator=g)
                    module.num_batches_tracked.fill_(1000)


def _read(path: Path) -> Any:
    if not path.is_file():
        raise MscnnError(f"checkpoint {path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise MscnnError(
            f"checkpoint {path} holds Python objects beyond tensors and plain containers "
            f"(refused by weights_only loading: {str(exc).splitlines()[0]}); save just the "
            "weights with torch.save(model.state_dict(), path) and give the preset"
        ) from None
    except Exception as exc:  # torch.load on arbitrary bytes can raise almost anything
        raise MscnnError(
            f"checkpoint {path} is not a readable PyTorch checkpoint "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'})"
        ) from None


def _from_ours(path: Path, data: Mapping, preset: str | None) -> LoadedModel:
    if data.get("version") != VERSION:
        raise MscnnError(
            f"checkpoint {path}: format version {data.get('version')!r}, this mscnn-edge reads "
            f"version {VERSION}; re-save it with a matching mscnn-edge"
        )
    missing = [k for k in _FIELDS if k not in data]
    if missing:
        raise MscnnError(f"checkpoint {path}: missing field(s) {', '.join(missing)}")
    model = MultiScopicCNN(data["in_channels"], **data["config"])
    if preset is not None:
        p = get_preset(preset)
        if resolve_config(p.in_channels, p.config)[0] != model.spec:
            raise MscnnError(
                f"checkpoint {path} holds a different model than preset {preset!r} "
                f"({model.in_channels} leads, groups {model.groups}, vs {p.in_channels} leads, "
                f"groups {p.config['groups']}); give its own preset "
                f"({data.get('preset')!r}) or none"
            )
    leads = tuple(data["leads"])
    if len(leads) != model.in_channels:
        raise MscnnError(
            f"checkpoint {path}: {len(leads)} lead names for {model.in_channels} input channels"
        )
    _load_state(model, data["state_dict"], path, "its own config")
    return LoadedModel(
        model.eval(), data.get("preset"), leads, int(data["fs"]), f"checkpoint {path.name}"
    )


def _find_state_dict(path: Path, data: Any) -> Mapping[str, torch.Tensor]:
    if isinstance(data, Mapping):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(data.get(key), Mapping):
                data = data[key]
                break
    if (
        not isinstance(data, Mapping)
        or not data
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items())
    ):
        raise MscnnError(
            f"checkpoint {path} is neither an mscnn-edge checkpoint nor a state dict "
            "(a mapping of parameter names to tensors)"
        )
    if not any(k.startswith("branches.") for k in data):
        prefixes = {k[: k.index("branches.")] for k in data if ".branches." in f".{k}"}
        if len(prefixes) == 1:
            prefix = prefixes.pop()
            ignored = sorted({k.split(".")[0] for k in data if not k.startswith(prefix)})
            log.info(
                "taking the MultiScopicCNN weights under %r; ignoring %s",
                prefix,
                ", ".join(ignored) or "nothing",
            )
            data = {k[len(prefix) :]: v for k, v in data.items() if k.startswith(prefix)}
    return data


def _load_state(model: MultiScopicCNN, state: Mapping, path: Path, what: str) -> None:
    ours = model.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    wrong = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(ours[k].shape)})"
        for k in ours
        if k in state and tuple(state[k].shape) != tuple(ours[k].shape)
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise MscnnError(
            f"checkpoint {path} does not fit {what} ({model.in_channels} leads, groups "
            f"{model.groups}): {'; '.join(problems)}; give the preset it was trained with"
        )
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise MscnnError(f"checkpoint {path}: {k} holds NaN or Inf values")
    model.load_state_dict(state, strict=True)
