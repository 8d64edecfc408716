"""Checkpoints: our own file format, bare torch_ecg state dicts, and the seeded default.

Our file is a `torch.save`d dict of plain values and tensors only (so it loads with
`weights_only=True`, which runs no pickled code):

    {"format": "mscnn-edge/checkpoint", "version": 2, "preset": name or None,
     "head": None | "ECG_SEQ_LAB_NET" | "ECG_CRNN", "classes": [...] or None,
     "in_channels": int, "config": {...}, "leads": [...], "fs": int,
     "metadata": {...}, "state_dict": {...}}

`head` None is a bare MultiScopicCNN (`config` its config); otherwise `config` is the
whole model's torch_ecg config. Version 1 files (backbones, before heads existed) are
still read. A bare state dict (torch_ecg's `model.state_dict()`) holds no config: give the
preset it was trained with; the whole state dict must fit it. A torch_ecg ECG_SEQ_LAB_NET /
ECG_CRNN state dict given with a backbone preset is refused, naming the head it would lose:
a trained head silently left behind gives features where the user expected the model's
answer. `backbone_only=True` takes its `cnn.` weights and drops the head on purpose.

No trained weights ship with mscnn-edge. Without a checkpoint, `load_model` gives a
seeded random initialisation whose normalisation layers carry non-trivial running
statistics, so that every parity check exercises them; its outputs mean nothing clinically.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import plain, resolve_config
from .errors import MscnnError
from .heads import HEADS, ReducedLeadModel, WholeModel, build_model, resolve_head_config
from .model import MultiScopicCNN
from .presets import DEFAULT_PRESET, PRESETS, Preset, get_preset

log = logging.getLogger(__name__)

FORMAT = "mscnn-edge/checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)
_FIELDS = ("in_channels", "config", "leads", "fs", "state_dict")
_SHOWN_KEYS = 3  # state-dict keys named per kind of mismatch

Model = MultiScopicCNN | WholeModel


@dataclass
class LoadedModel:
    """A model in eval mode with what the rest of the pipeline needs to know about it.

    `model` is a MultiScopicCNN (task "features") or a whole model (ECG_SEQ_LAB_NET,
    ECG_CRNN); `model.task` and `model.classes` say which.
    """

    model: Model
    preset: str | None
    leads: tuple[str, ...]
    fs: int
    source: str  # where the weights came from, for manifests and logs
    metadata: dict[str, Any] = field(default_factory=dict)  # as saved (e.g. by training)


def save_checkpoint(
    path: str | Path,
    model: Model,
    *,
    leads: Sequence[str],
    fs: int,
    preset: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write `model` with its config, head, classes, lead names and sampling rate to `path`.

    `metadata` (plain values: str, numbers, lists, dicts) travels with it, e.g. what a
    training run wants to record about the weights.
    """
    if isinstance(model, ReducedLeadModel):
        raise MscnnError(
            "save_checkpoint: this is a reduced-lead variant, derived from a full model; save "
            "the full model and derive the variant again with mscnn.derive_variant"
        )
    if not isinstance(model, MultiScopicCNN | WholeModel):
        raise MscnnError(
            f"save_checkpoint: expected a MultiScopicCNN, ECG_SEQ_LAB_NET or ECG_CRNN, got "
            f"{type(model).__name__}"
        )
    if len(leads) != model.in_channels:
        raise MscnnError(f"leads: {len(leads)} names for a {model.in_channels}-lead model")
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "preset": preset,
        "head": model.head,
        "classes": list(model.classes) if model.classes is not None else None,
        "in_channels": model.in_channels,
        "config": model.config,
        "leads": list(leads),
        "fs": int(fs),
        "metadata": plain(dict(metadata or {}), "metadata"),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(
    path: str | Path, preset: str | None = None, *, backbone_only: bool = False
) -> LoadedModel:
    """Load our checkpoint file, or a bare (torch_ecg) state dict given the `preset`.

    A whole torch_ecg model's state dict (ECG_SEQ_LAB_NET, ECG_CRNN: the backbone under
    `cnn.`, a head under `attn.`, `rnn.`, `clf.`) given with a backbone preset is an error
    that names the head's keys: the head is most of what was trained for the task, and
    losing it without a word turns a detector into a feature extractor. Give its
    whole-model preset, or `backbone_only=True` to take the backbone and drop the head on
    purpose (logged). With a whole-model preset every key must fit.
    """
    path = Path(path)
    data = _read(path)
    if isinstance(data, Mapping) and data.get("format") == FORMAT:
        if backbone_only and data.get("head") is not None:
            raise MscnnError(
                f"checkpoint {path}: backbone_only=True is for a bare (torch_ecg) state dict; "
                f"this is an mscnn-edge checkpoint of a whole {data.get('head')} model: load "
                "it without backbone_only and take `.model.cnn` for its backbone"
            )
        return _from_ours(path, data, preset)
    if preset is None:
        _find_state_dict(path, data, whole=True)  # not a state dict at all: say that first
        raise MscnnError(
            f"checkpoint {path}: a bare state dict holds no config; give the preset it was "
            f"trained with (choose from: {', '.join(PRESETS)})"
        )
    p = get_preset(preset)
    if backbone_only and p.head is not None:
        backbones = ", ".join(n for n, q in PRESETS.items() if q.head is None)
        raise MscnnError(
            f"backbone_only=True: preset {preset!r} is a whole model ({p.head}), it keeps its "
            f"head; give a backbone preset ({backbones}) or leave out backbone_only"
        )
    state = _find_state_dict(path, data, whole=p.head is not None, preset=p, keep=backbone_only)
    model = _build(p)
    _load_state(model, state, path, f"preset {preset!r}")
    return LoadedModel(model.eval(), preset, p.leads, p.fs, f"state dict {path.name}")


def load_model(
    preset: str | None = DEFAULT_PRESET,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    *,
    backbone_only: bool = False,
) -> LoadedModel:
    """The model the pipeline compiles: from `checkpoint` if given, else the weights the
    preset ships (the demo detector's, trained by `make train`), else seeded.

    Works alike for backbone and whole-model presets: `checkpoint` is a file
    `save_checkpoint` wrote (it carries its config: no preset is needed, and a preset
    given is checked against it), or a bare (torch_ecg) state dict of that preset's model
    (`backbone_only`: as for load_checkpoint, a whole model's head dropped on purpose).
    `preset=None` without a checkpoint means the default preset.
    """
    if checkpoint is not None and preset is None:
        return load_checkpoint(checkpoint, None)
    preset = preset or DEFAULT_PRESET
    p = get_preset(preset)
    if checkpoint is None and p.weights_path is not None:
        if not p.weights_path.is_file():
            raise MscnnError(
                f"preset {preset!r} ships trained weights at {p.weights_path}, "
                "which are missing; reinstall mscnn-edge or run `make train`"
            )
        checkpoint = p.weights_path
    if checkpoint is not None:
        loaded = load_checkpoint(checkpoint, preset, backbone_only=backbone_only)
        if loaded.preset not in (None, preset):
            raise MscnnError(
                f"checkpoint {checkpoint} is for preset {loaded.preset!r}, not {preset!r}"
            )
        return loaded
    model = _build(p)
    seeded_init(model, seed)
    seeded_lstm_init(model, seed, unit_variance=True)
    return LoadedModel(model.eval(), preset, p.leads, p.fs, f"seeded initialisation (seed {seed})")


def _build(p: Preset) -> Model:
    with torch.random.fork_rng(devices=[]):  # layer constructors draw from the global RNG
        return build_model(p.head, p.in_channels, p.config, p.classes)


def seeded_init(model: nn.Module, seed: int) -> None:
    """Re-draw every weight and running statistic from a generator seeded with `seed`.

    Convs get He-normal weights; linear layers (the heads) normal weights of variance
    1 / fan-in, so logits stay near unit scale; biases are small but not zero; norms get
    weights near 1, biases near 0 and running means/variances away from the 0/1 defaults,
    like a trained model's. Modules are visited in order, so the backbone of a whole model
    gets the same weights as the backbone preset with the same seed.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv1d):
                fan_in = module.in_channels // module.groups * module.kernel_size[0]
                module.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=g)
                if module.bias is not None:
                    module.bias.uniform_(-0.1, 0.1, generator=g)
            elif isinstance(module, nn.Linear):
                module.weight.normal_(0.0, math.sqrt(1.0 / module.in_features), generator=g)
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


def seeded_lstm_init(model: nn.Module, seed: int, unit_variance: bool = False) -> None:
    """Draw every LSTM weight and bias from U(-1/sqrt(H), 1/sqrt(H)) (PyTorch's own rule)
    with a generator seeded by `seed`: `seeded_init` leaves LSTMs as constructed (from the
    global RNG), and neither a seeded preset nor a training run may depend on its state.
    A generator of its own, so that `seeded_init`'s draws stay what they were.

    `unit_variance` (a seeded preset, `load_model`): weights of variance 1 / fan-in and
    small biases instead, as `seeded_init` draws linear layers, so the signal keeps its
    scale through the recurrence. By PyTorch's rule, torch_ecg's default seq-lab CRNN gave
    logits of at most 0.005 on a parity input, where float32's own rounding through the
    backbone is 5e-8: a normalised error of 1e-5 for ONNX Runtime and TVM alike."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.LSTM):
                continue
            for name, param in module.named_parameters(recurse=False):
                if not unit_variance:
                    bound = 1.0 / math.sqrt(module.hidden_size)
                    param.uniform_(-bound, bound, generator=g)
                elif name.startswith("weight"):
                    bound = math.sqrt(3.0 / param.shape[1])
                    param.uniform_(-bound, bound, generator=g)
                else:
                    param.uniform_(-0.1, 0.1, generator=g)


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
    version = data.get("version")
    if version not in READABLE_VERSIONS:
        raise MscnnError(
            f"checkpoint {path}: format version {version!r}, this mscnn-edge reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}; re-save it with a matching mscnn-edge"
        )
    missing = [
        k for k in (*_FIELDS, *(("head", "classes") if version > 1 else ())) if k not in data
    ]
    if missing:
        raise MscnnError(f"checkpoint {path}: missing field(s) {', '.join(missing)}")
    head = data.get("head")
    if head is not None and head not in HEADS:
        raise MscnnError(
            f"checkpoint {path}: unknown head {head!r}; this mscnn-edge builds "
            f"{', '.join(HEADS)} (or a bare MultiScopicCNN)"
        )
    try:
        with torch.random.fork_rng(devices=[]):  # the caller's RNG is left alone
            model = build_model(
                head, data["in_channels"], data["config"], data.get("classes") or ()
            )
    except MscnnError as exc:
        raise MscnnError(f"checkpoint {path}: {exc}") from None
    if preset is not None:
        _check_preset(path, model, get_preset(preset), data.get("preset"))
    leads = tuple(data["leads"])
    if len(leads) != model.in_channels:
        raise MscnnError(
            f"checkpoint {path}: {len(leads)} lead names for {model.in_channels} input channels"
        )
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise MscnnError(f"checkpoint {path}: metadata is {type(metadata).__name__}, not a dict")
    _load_state(model, data["state_dict"], path, "its own config")
    return LoadedModel(
        model.eval(),
        data.get("preset"),
        leads,
        int(data["fs"]),
        f"checkpoint {path.name}",
        dict(metadata),
    )


def _check_preset(path: Path, model: Model, p: Preset, saved_as: str | None) -> None:
    """A checkpoint given with a preset must hold that preset's model (weights aside);
    where it does not, the error names the fields that differ."""
    preset_model = _build(p)
    if p.head is None:
        ours = resolve_config(p.in_channels, p.config)[0]
        same = model.head is None and ours == model.spec
    else:
        ours = resolve_head_config(p.head, p.in_channels, p.classes, p.config)[0]
        same = model.head == p.head and ours == model.spec
    if not same:
        fields = _differences(model, preset_model)
        raise MscnnError(
            f"checkpoint {path} holds a different model than preset {p.name!r}: "
            f"{'; '.join(fields) or _describe(model)}. A checkpoint saved by "
            f"save_checkpoint carries its config: build it with no --preset"
            + (f" (it was saved as preset {saved_as!r})" if saved_as else "")
        )


def _differences(model: Model, other: Model) -> list[str]:
    """'field: this vs that' for each config field in which two models differ (the head,
    the lead count, the classes, then the resolved config's fields), at most eight."""
    found = []
    if model.head != other.head:
        found.append(f"head: {model.head or 'none'} vs {other.head or 'none'}")
    if model.in_channels != other.in_channels:
        found.append(f"leads: {model.in_channels} vs {other.in_channels}")
    if model.head != other.head:
        return found  # a whole model against a backbone: their configs share no fields
    if model.head is not None and model.classes != other.classes:
        found.append(f"classes: {model.classes} vs {other.classes}")
    mine, theirs = _flat(model.config), _flat(other.config)
    for key in sorted(set(mine) | set(theirs)):
        if mine.get(key) != theirs.get(key):
            found.append(f"{key}: {mine.get(key, 'unset')} vs {theirs.get(key, 'unset')}")
    return found[:8]


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as {"a.b.c": value}."""
    if isinstance(config, Mapping):
        out: dict[str, Any] = {}
        for key, value in config.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): config}


def _describe(model: Model) -> str:
    groups = model.groups if model.head is None else model.cnn.groups
    leads = f"{model.in_channels} lead{'s' if model.in_channels != 1 else ''}"
    text = f"{model.head or 'MultiScopicCNN'}, {leads}, groups {groups}"
    if model.head is not None:
        text += f", {len(model.classes)} classes"
    return text


def _find_state_dict(
    path: Path, data: Any, whole: bool, preset: Preset | None = None, keep: bool = False
) -> Mapping[str, torch.Tensor]:
    """The state dict inside `data`; for a backbone (not `whole`), the MultiScopicCNN part
    of a whole torch_ecg model's state dict when `keep` (backbone_only) says to drop the
    head, else an error naming it."""
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
    if not whole and not any(k.startswith("branches.") for k in data):
        prefixes = {k[: k.index("branches.")] for k in data if ".branches." in f".{k}"}
        if len(prefixes) == 1:
            prefix = prefixes.pop()
            dropped = _head_prefixes(prefix, [k for k in data if not k.startswith(prefix)])
            if dropped and not keep:
                raise MscnnError(_head_refusal(path, prefix, dropped, preset))
            if dropped:
                log.info(
                    "backbone_only: taking the MultiScopicCNN weights under %r; dropping %s",
                    prefix,
                    ", ".join(dropped),
                )
            data = {k[len(prefix) :]: v for k, v in data.items() if k.startswith(prefix)}
    return data


def _head_prefixes(backbone: str, keys: list[str]) -> list[str]:
    """`attn.*`, `clf.*`: the keys outside the backbone, by their first name below the
    backbone's parent (`model.clf.*` when the backbone is `model.cnn.`)."""
    parent = backbone[: backbone.rstrip(".").rfind(".") + 1]
    return sorted(
        {parent + k[len(parent) :].split(".")[0] + ".*" for k in keys if k.startswith(parent)}
        | {k.split(".")[0] + ".*" for k in keys if not k.startswith(parent)}
    )


def _head_refusal(path: Path, backbone: str, dropped: list[str], preset: Preset | None) -> str:
    name = preset.name if preset is not None else "a backbone preset"
    whole = [
        n
        for n, q in PRESETS.items()
        if q.head is not None and preset is not None and q.backbone_config == preset.config
    ] or [n for n, q in PRESETS.items() if q.head is not None]
    return (
        f"checkpoint {path} is a whole model's state dict (backbone under {backbone!r}, head "
        f"{', '.join(dropped)}); preset {name!r} is the backbone alone, so the head would be "
        f"dropped: load it as the whole model it is (preset {' or '.join(map(repr, whole))}, "
        "if it is that model), or pass backbone_only=True (compile build --backbone-only) "
        "to drop the head on purpose"
    )


def _load_state(model: Model, state: Mapping, path: Path, what: str) -> None:
    """Load `state` strictly; a mismatch names the missing, unexpected and wrong-shape keys
    (a few of each, with their counts)."""
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
            shown = ", ".join(keys[:_SHOWN_KEYS]) + (", ..." if len(keys) > _SHOWN_KEYS else "")
            problems.append(f"{label} {len(keys)}: {shown}")
    if problems:
        raise MscnnError(
            f"checkpoint {path} does not fit {what} ({_describe(model)}; {len(ours)} keys, the "
            f"file has {len(state)}): {'; '.join(problems)}; give the preset it was trained with"
        )
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise MscnnError(f"checkpoint {path}: {k} holds NaN or Inf values")
    model.load_state_dict(state, strict=True)
