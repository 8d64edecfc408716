"""Validate a torch_ecg `multi_scopic` config and resolve it to one spec per conv layer.

torch_ecg lets several keys be given at two granularities (per block or per conv, per
branch or per block) and discovers mismatches late, through asserts or shape errors deep
in PyTorch. Here every key is checked up front, and each error names the key path and
what was expected, so a bad config never gets as far as building layers.

Config keys (as torch_ecg):
- `scopes`: branches > blocks > convs, the dilation of every conv.
- `num_filters`, `filter_lengths`: per branch, a list per block of an int (every conv of
  the block) or a list with one int per conv.
- `subsample_lengths`: per branch an int (every block) or a list with one int per block.
  (torch_ecg reads `filter_lengths` here when a per-block list is given; that is a bug
  we do not copy.)
- `dropouts`: per branch a list per block of a rate or a dict `{"p": rate, "type": None
  or "1d"}`; a single rate or dict for a whole branch (or for the whole model) is also
  accepted.
- `groups`: channel groups of every conv; `groups == in_channels` is the lead-wise model.
- `block`: `subsample_mode` (max, avg, conv), `batch_norm` (alias `norm`: bool,
  "batch_norm", "group_norm", "instance_norm"), `activation`, `kw_activation`, `bias`,
  `kernel_initializer`, `kw_initializer`, `kw_bn`.

torch_ecg never reads the top-level copies of the block keys (`bias`, `activation`, ...)
nor `kw_bn`; they are accepted here for compatibility and ignored in the same way, so a
torch_ecg checkpoint gives the outputs it gave in training.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from .errors import MscnnError

SUBSAMPLE_MODES = ("max", "avg", "conv")
NORMS = ("batch_norm", "group_norm", "instance_norm")
# Names a config may use, and what they build: the one table (model.py builds from it).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "leaky": nn.LeakyReLU, "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU, "mish": nn.Mish, "swish": nn.SiLU, "silu": nn.SiLU,
    "hardswish": nn.Hardswish, "hard_swish": nn.Hardswish, "elu": nn.ELU, "celu": nn.CELU,
    "selu": nn.SELU, "prelu": nn.PReLU, "rrelu": nn.RReLU, "tanh": nn.Tanh,
    "hardtanh": nn.Hardtanh, "sigmoid": nn.Sigmoid, "hardsigmoid": nn.Hardsigmoid,
}  # fmt: skip
INITIALIZERS = {
    "he_normal": nn.init.kaiming_normal_, "kaiming_normal": nn.init.kaiming_normal_,
    "he_uniform": nn.init.kaiming_uniform_, "kaiming_uniform": nn.init.kaiming_uniform_,
    "xavier_normal": nn.init.xavier_normal_, "glorot_normal": nn.init.xavier_normal_,
    "xavier_uniform": nn.init.xavier_uniform_, "glorot_uniform": nn.init.xavier_uniform_,
    "normal": nn.init.normal_, "uniform": nn.init.uniform_, "orthogonal": nn.init.orthogonal_,
    "zeros": nn.init.zeros_, "ones": nn.init.ones_, "constant": nn.init.constant_,
}  # fmt: skip

BLOCK_DEFAULTS: dict[str, Any] = {
    "subsample_mode": "max",
    "batch_norm": False,
    "activation": "relu",
    "kw_activation": {"inplace": True},
    "kernel_initializer": "he_normal",
    "kw_initializer": {},
    "bias": True,
    "kw_bn": {},
}
REQUIRED_KEYS = ("scopes", "num_filters", "filter_lengths", "subsample_lengths", "dropouts")
# Read by torch_ecg's configs or other models, never by MultiScopicCNN: accepted, unused.
IGNORED_KEYS = (
    "fs",
    "name",
    "doi",
    "bias",
    "kernel_initializer",
    "kw_initializer",
    "activation",
    "kw_activation",
    "batch_norm",
    "norm",
    "kw_bn",
)


@dataclass(frozen=True)
class ConvSpec:
    in_channels: int
    out_channels: int
    kernel_size: int
    dilation: int


@dataclass(frozen=True)
class BlockSpec:
    convs: tuple[ConvSpec, ...]
    subsample: int
    dropout: float
    dropout_1d: bool  # channel-wise nn.Dropout1d instead of element-wise nn.Dropout

    @property
    def out_channels(self) -> int:
        return self.convs[-1].out_channels


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build the layers, one entry per branch, block and conv."""

    in_channels: int
    groups: int
    branches: tuple[tuple[BlockSpec, ...], ...]
    block: Mapping[str, Any]  # resolved `block` options, defaults filled in

    @property
    def out_channels(self) -> int:
        return sum(branch[-1].out_channels for branch in self.branches)


def resolve_config(in_channels: Any, config: Mapping[str, Any]) -> tuple[ModelSpec, dict]:
    """Check `config` against `in_channels`; return the layer spec and a canonical config.

    The canonical config is a plain, JSON-serialisable dict that rebuilds the same model
    (it is what checkpoints and manifests store): the user's keys with the block
    defaults filled in.
    """
    positive_int(in_channels, "in_channels")
    groups = _check_keys_and_groups(in_channels, config)
    block = _resolve_block(config.get("block", {}))
    scopes = as_list(config["scopes"], "config['scopes']", nonempty=True)
    n_branches = len(scopes)
    per_branch = {
        key: as_list(config[key], f"config[{key!r}]", length=n_branches, what="branch")
        for key in ("num_filters", "filter_lengths")
    }
    subsample = _broadcast(
        config["subsample_lengths"], n_branches, "config['subsample_lengths']", "branch"
    )
    dropouts = _broadcast(config["dropouts"], n_branches, "config['dropouts']", "branch")
    branches = tuple(
        _resolve_branch(b, scopes[b], per_branch, subsample[b], dropouts[b], in_channels, groups)
        for b in range(n_branches)
    )
    spec = ModelSpec(in_channels, groups, branches, block)
    canonical = copy.deepcopy(dict(config))
    canonical["groups"] = groups
    canonical["block"] = copy.deepcopy(dict(block))
    return spec, plain(canonical, "config")


def _check_keys_and_groups(in_channels: int, config: Any) -> int:
    if not isinstance(config, Mapping):
        raise MscnnError(f"config: expected a mapping of keys, got {type(config).__name__}")
    unknown = sorted(set(config) - set(REQUIRED_KEYS) - {"groups", "block"} - set(IGNORED_KEYS))
    if unknown:
        raise MscnnError(
            f"config: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: "
            f"{', '.join((*REQUIRED_KEYS, 'groups', 'block'))}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise MscnnError(f"config: missing key(s) {', '.join(map(repr, missing))}")
    groups = positive_int(config.get("groups", 1), "config['groups']")
    if in_channels % groups:
        raise MscnnError(
            f"config['groups'] = {groups} does not divide in_channels = {in_channels}; "
            "use groups = 1, or groups = in_channels for a lead-wise model"
        )
    return groups


def _resolve_branch(
    b: int,
    scopes: Any,
    per_branch: dict,
    subsample: Any,
    dropouts: Any,
    in_channels: int,
    groups: int,
) -> tuple[BlockSpec, ...]:
    branch_scopes = as_list(scopes, f"config['scopes'][{b}]", nonempty=True)
    n_blocks = len(branch_scopes)
    filters_b = as_list(
        per_branch["num_filters"][b], f"config['num_filters'][{b}]", n_blocks, "block"
    )
    lengths_b = as_list(
        per_branch["filter_lengths"][b], f"config['filter_lengths'][{b}]", n_blocks, "block"
    )
    subsample_b = _broadcast(subsample, n_blocks, f"config['subsample_lengths'][{b}]", "block")
    dropouts_b = _broadcast(dropouts, n_blocks, f"config['dropouts'][{b}]", "block")
    blocks = []
    channels = in_channels
    for k in range(n_blocks):
        where = f"[{b}][{k}]"
        dilations = as_list(branch_scopes[k], f"config['scopes']{where}", nonempty=True)
        n_convs = len(dilations)
        filters = _per_conv(filters_b[k], n_convs, f"config['num_filters']{where}")
        lengths = _per_conv(lengths_b[k], n_convs, f"config['filter_lengths']{where}")
        convs = []
        for c in range(n_convs):
            dilation = positive_int(dilations[c], f"config['scopes']{where}[{c}]")
            if filters[c] % groups:
                raise MscnnError(
                    f"config['num_filters']{where}: {filters[c]} filters are not divisible "
                    f"by groups = {groups}; use a multiple of {groups}"
                )
            convs.append(ConvSpec(channels, filters[c], lengths[c], dilation))
            channels = filters[c]
        rate, one_d = _dropout(dropouts_b[k], f"config['dropouts']{where}")
        step = positive_int(subsample_b[k], f"config['subsample_lengths']{where}")
        blocks.append(BlockSpec(tuple(convs), step, rate, one_d))
    return tuple(blocks)


def _resolve_block(block: Any) -> dict[str, Any]:
    if not isinstance(block, Mapping):
        raise MscnnError(f"config['block']: expected a mapping, got {type(block).__name__}")
    block = dict(block)
    if "norm" in block:  # torch_ecg's newer name; it wins over 'batch_norm', as there
        block["batch_norm"] = block.pop("norm")
    unknown = sorted(set(block) - set(BLOCK_DEFAULTS))
    if unknown:
        raise MscnnError(
            f"config['block']: unknown or unsupported key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(BLOCK_DEFAULTS)}"
        )
    out = {**copy.deepcopy(BLOCK_DEFAULTS), **block}
    choice(out["subsample_mode"], SUBSAMPLE_MODES, "config['block']['subsample_mode']")
    norm = out["batch_norm"]
    if not isinstance(norm, bool):
        choice(norm, NORMS, "config['block']['batch_norm']", extra="or true/false")
    act = out["activation"]
    if act is not None and act != "linear":
        choice(act, ACTIVATIONS, "config['block']['activation']", extra="or null / 'linear'")
    init = out["kernel_initializer"]
    if init is not None:
        choice(init, INITIALIZERS, "config['block']['kernel_initializer']", extra="or null")
    if not isinstance(out["bias"], bool):
        raise MscnnError(f"config['block']['bias']: expected true or false, got {out['bias']!r}")
    for key in ("kw_activation", "kw_initializer", "kw_bn"):
        if out[key] is None:
            out[key] = {}
        if not isinstance(out[key], Mapping):
            raise MscnnError(f"config['block'][{key!r}]: expected a mapping of keyword arguments")
        out[key] = dict(out[key])
    return out


def choice(value: Any, valid: Sequence[str], where: str, extra: str = "") -> None:
    if not isinstance(value, str) or value.lower() not in valid:
        more = f" {extra}" if extra else ""
        raise MscnnError(f"{where}: unknown value {value!r}; choose from: {', '.join(valid)}{more}")


def positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise MscnnError(f"{where}: expected a positive integer, got {value!r}")
    return int(value)


def as_list(
    value: Any, where: str, length: int | None = None, what: str = "", nonempty: bool = False
) -> list:
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise MscnnError(f"{where}: expected a list, got {value!r}")
    if nonempty and not value:
        raise MscnnError(f"{where}: expected a non-empty list")
    if length is not None and len(value) != length:
        raise MscnnError(
            f"{where}: expected {length} entries (one per {what}, as in 'scopes'), got {len(value)}"
        )
    return list(value)


def _broadcast(value: Any, length: int, where: str, what: str) -> list:
    """A single value applies to every entry; a list must have one entry per `what`."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return as_list(value, where, length, what)
    return [value] * length


def _per_conv(value: Any, n_convs: int, where: str) -> list[int]:
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        values = as_list(value, where, n_convs, "conv")
        return [positive_int(v, f"{where}[{i}]") for i, v in enumerate(values)]
    return [positive_int(value, where)] * n_convs


def _dropout(value: Any, where: str) -> tuple[float, bool]:
    one_d = False
    if isinstance(value, Mapping):
        kind = value.get("type")
        if kind not in (None, "1d"):
            raise MscnnError(f"{where}['type']: expected null or '1d', got {kind!r}")
        one_d = kind == "1d"
        value = value.get("p", 0.0)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise MscnnError(f"{where}: expected a dropout rate in [0, 1), got {value!r}")
    return float(value), one_d


def plain(value: Any, where: str) -> Any:
    """Lists, dicts, str, int, float, bool and None only: JSON- and weights_only-safe."""
    if isinstance(value, Mapping):
        return {str(k): plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):  # a str subclass (torch.__version__) is not weights_only-safe
        return str(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise MscnnError(f"{where}: {type(value).__name__} values cannot be stored in a config")
