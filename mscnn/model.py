"""MultiScopicCNN, the multi-branch dilated 1-D CNN of the CPSC2019 winning entry.

Cai & Hu, "Accurate detection of R-peaks in ECG using a multi-scopic CNN", IEEE Access
2020 (doi 10.1109/access.2020.2997473), as published in torch_ecg. Each branch sees the
signal at its own scope (dilation); their feature maps are concatenated on channels.

Module and parameter names are torch_ecg's, so a torch_ecg state dict loads with
`strict=True` and gives the same outputs:

    branches.branch_{b}.block_{k}.ca_{c}.conv1d   dilated conv ("same" padding)
                                    .zero_pad     even kernels only, pads the output (1, 0)
                                    .batch_norm   when block['batch_norm'] is set
                                    .activation_<Class>
                                 .bn              BatchNorm1d, always
                                 .down.down_sample   max/avg pool, or a 1x1 strided conv
                                 .dropout         when the rate is > 0
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .config import (
    ACTIVATIONS,
    IGNORED_KEYS,
    INITIALIZERS,
    BlockSpec,
    ConvSpec,
    ModelSpec,
    resolve_config,
)
from .errors import MscnnError


def same_padding(kernel_size: int, dilation: int) -> int:
    """torch_ecg's "same" padding: exact for odd kernels; even ones get a (1, 0) pad after."""
    return dilation * (kernel_size - 1) // 2


# --------------------------------------------------------------------------------------
# Blocks


class ConvBnActivation(nn.Sequential):
    """conv1d -> [zero_pad] -> [norm] -> [activation], as torch_ecg's Conv_Bn_Activation."""

    def __init__(self, conv: ConvSpec, groups: int, block: Mapping[str, Any]) -> None:
        super().__init__()
        self.spec = conv
        self.add_module(
            "conv1d",
            nn.Conv1d(
                conv.in_channels,
                conv.out_channels,
                conv.kernel_size,
                stride=1,
                padding=same_padding(conv.kernel_size, conv.dilation),
                dilation=conv.dilation,
                groups=groups,
                bias=block["bias"],
            ),
        )
        init = block["kernel_initializer"]
        if init:
            INITIALIZERS[init.lower()](self.conv1d.weight, **block["kw_initializer"])
        if conv.kernel_size % 2 == 0:
            self.add_module("zero_pad", nn.ZeroPad1d((1, 0)))
        norm = block["batch_norm"]
        if norm is True or norm == "batch_norm":
            self.add_module("batch_norm", nn.BatchNorm1d(conv.out_channels))
        elif norm == "group_norm":
            self.add_module("batch_norm", nn.GroupNorm(groups, conv.out_channels))
        elif norm == "instance_norm":
            self.add_module("batch_norm", nn.InstanceNorm1d(conv.out_channels))
        act = block["activation"]
        if act and act != "linear":
            layer = ACTIVATIONS[act.lower()](**block["kw_activation"])
            self.add_module(f"activation_{type(layer).__name__}", layer)


class MultiScopicBasicBlock(nn.Sequential):
    """(conv -> activation) * N -> bn -> down-sample -> [dropout]."""

    def __init__(self, spec: BlockSpec, groups: int, block: Mapping[str, Any]) -> None:
        super().__init__()
        self.spec = spec
        for c, conv in enumerate(spec.convs):
            self.add_module(f"ca_{c}", ConvBnActivation(conv, groups, block))
        channels = spec.out_channels
        self.add_module("bn", nn.BatchNorm1d(channels))
        down = nn.Sequential()
        mode = block["subsample_mode"]
        if mode == "max":
            down.add_module("down_sample", nn.MaxPool1d(spec.subsample, spec.subsample))
        elif mode == "avg":
            down.add_module("down_sample", nn.AvgPool1d(spec.subsample, spec.subsample))
        else:  # "conv": a strided 1x1 grouped conv without bias, as torch_ecg's DownSample
            down.add_module(
                "down_sample",
                nn.Conv1d(channels, channels, 1, stride=spec.subsample, groups=groups, bias=False),
            )
        self.add_module("down", down)
        if spec.dropout > 0:
            dropout = nn.Dropout1d if spec.dropout_1d else nn.Dropout
            self.add_module("dropout", dropout(spec.dropout))


class MultiScopicBranch(nn.Sequential):
    """The blocks of one scope, applied in sequence."""

    def __init__(self, blocks: Sequence[BlockSpec], groups: int, block: Mapping[str, Any]):
        super().__init__()
        for k, spec in enumerate(blocks):
            self.add_module(f"block_{k}", MultiScopicBasicBlock(spec, groups, block))


# --------------------------------------------------------------------------------------
# The network


class MultiScopicCNN(nn.Module):
    """The CNN part of the CPSC2019 winner, torch_ecg-compatible.

    `MultiScopicCNN(in_channels, **config)` takes torch_ecg's `multi_scopic` config
    semantics (see `mscnn.config`); a bad config raises `MscnnError` naming the key.
    """

    # What a whole model (mscnn.heads) says about its output; the bare backbone outputs
    # its feature map (batch, channels, samples / 8).
    head: str | None = None
    task = "features"
    classes: list[str] | None = None

    def __init__(self, in_channels: int, **config: Any) -> None:
        super().__init__()
        spec, canonical = resolve_config(in_channels, config)
        self.spec: ModelSpec = spec
        self.config: dict[str, Any] = canonical
        self.branches = nn.ModuleDict(
            {
                f"branch_{b}": MultiScopicBranch(blocks, spec.groups, spec.block)
                for b, blocks in enumerate(spec.branches)
            }
        )

    # -- properties, named as torch_ecg's ------------------------------------------------
    @property
    def in_channels(self) -> int:
        return self.spec.in_channels

    @property
    def num_branches(self) -> int:
        return len(self.spec.branches)

    @property
    def groups(self) -> int:
        return self.spec.groups

    @property
    def is_lead_wise(self) -> bool:
        """Every conv is grouped by lead, so each lead has its own output channels."""
        return self.spec.groups == self.spec.in_channels

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def module_size(self) -> int:
        """Trainable parameters (torch_ecg's name)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # -- computation ----------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        # (batch, leads, samples) -> (batch, sum of branch channels, samples / subsample)
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            # Clear errors in eager mode; an export sees static shapes checked beforehand.
            if x.dim() != 3 or x.shape[1] != self.in_channels:
                raise MscnnError(
                    f"input shape {tuple(x.shape)}: expected (batch, {self.in_channels} "
                    "leads, samples)"
                )
            self.compute_output_shape(int(x.shape[-1]))  # too short, or lengths disagree
        return torch.cat([branch(x) for branch in self.branches.values()], dim=1)

    def compute_output_shape(
        self, seq_len: int | None = None, batch_size: int | None = None
    ) -> tuple[int | None, int, int | None]:
        """Output shape for an input of `seq_len` samples, without running the model.

        Raises `MscnnError` when `seq_len` is too short for some layer, or when the
        branches would produce different lengths (their outputs could not be concatenated).
        """
        if seq_len is None:
            return (batch_size, self.spec.out_channels, None)
        lengths = [self._branch_lengths(b, seq_len)[-1] for b in range(self.num_branches)]
        if len(set(lengths)) > 1:
            raise MscnnError(
                f"seq_len {seq_len}: the branches give different output lengths {lengths}, "
                "so their feature maps cannot be concatenated; choose a seq_len for which "
                "they agree (even filter lengths at even dilations add a sample, pooling "
                "drops an odd one) or change the config"
            )
        return (batch_size, self.spec.out_channels, lengths[0])

    def _branch_lengths(self, b: int, seq_len: int) -> list[int]:
        """The length after every layer of branch `b` (convs, then the down-sampling)."""
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise MscnnError(f"seq_len: expected a positive integer, got {seq_len!r}")
        mode = self.spec.block["subsample_mode"]
        length, lengths = seq_len, []
        for k, block in enumerate(self.spec.branches[b]):
            for c, conv in enumerate(block.convs):
                span = conv.dilation * (conv.kernel_size - 1)
                length = length + 2 * same_padding(conv.kernel_size, conv.dilation) - span
                if length < 1:
                    raise MscnnError(self._too_short(seq_len, b, k, f"conv {c}"))
                length += conv.kernel_size % 2 == 0  # the (1, 0) zero pad
                lengths.append(length)
            if mode == "conv":
                length = (length - 1) // block.subsample + 1
            else:
                length = (length - block.subsample) // block.subsample + 1
            lengths.append(length)
            if length < 1:
                raise MscnnError(self._too_short(seq_len, b, k, f"{mode} down-sampling"))
        return lengths

    @staticmethod
    def _too_short(seq_len: int, b: int, k: int, layer: str) -> str:
        return (
            f"seq_len {seq_len} is too short: branch {b} block {k} {layer} would output no "
            "samples; use a longer input"
        )

    def receptive_field(self, fs: float | None = None) -> int | float:
        """Samples of input that one output sample sees (widest branch); seconds if `fs`."""
        widest = 0
        for blocks in self.spec.branches:
            field, jump = 1, 1
            for block in blocks:
                for conv in block.convs:
                    field += conv.dilation * (conv.kernel_size - 1) * jump
                if self.spec.block["subsample_mode"] != "conv":
                    field += (block.subsample - 1) * jump
                jump *= block.subsample
            widest = max(widest, field)
        return widest / fs if fs else widest

    def count_macs(self, seq_len: int, batch_size: int = 1) -> int:
        """Multiply-accumulates of every conv for one forward pass (pooling not counted)."""
        total = 0
        for b, blocks in enumerate(self.spec.branches):
            lengths = iter(self._branch_lengths(b, seq_len))
            for block in blocks:
                for conv in block.convs:
                    per_out = conv.in_channels // self.groups * conv.kernel_size
                    # After an even kernel a (1, 0) zero pad adds a sample no conv computed.
                    computed = next(lengths) - (conv.kernel_size % 2 == 0)
                    total += computed * conv.out_channels * per_out
                down_len = next(lengths)
                if self.spec.block["subsample_mode"] == "conv":
                    total += down_len * block.out_channels * (block.out_channels // self.groups)
        return total * batch_size

    # -- reduced-lead variants ------------------------------------------------------------
    def assign_weights_lead_wise(self, other: MultiScopicCNN, indices: Sequence[int]) -> None:
        """Copy this lead-wise model's weights for the leads `indices` into `other`.

        `other` is the reduced model (groups = in_channels = len(indices), filters scaled by
        the same ratio). Unlike torch_ecg, normalisation running statistics and the
        down-sampling conv are copied too, so that in eval mode `other(x[:, indices])`
        equals this model's output on `x` with the other leads zeroed, sliced to
        `lead_wise_channels(indices)`.
        """
        _check_lead_wise_pair(self, other, indices)
        theirs = other.state_dict()
        with torch.no_grad():
            for name, tensor in self.state_dict().items():
                # Per-channel tensors (dim 0 = groups x units) keep the kept leads' rows;
                # scalars (num_batches_tracked) and shared ones (a 1-weight PReLU) copy whole.
                if tensor.dim() > 0 and tensor.shape[0] % self.groups == 0:
                    units = tensor.shape[0] // self.groups
                    tensor = tensor[[lead * units + j for lead in indices for j in range(units)]]
                theirs[name].copy_(tensor)

    def lead_wise_channels(self, indices: Sequence[int]) -> list[int]:
        """Output channels of a lead-wise model that belong to the leads `indices`, in the
        order a reduced model built by `assign_weights_lead_wise` produces them."""
        channels, offset = [], 0
        for blocks in self.spec.branches:
            width = blocks[-1].out_channels
            units = width // self.groups
            channels += [offset + lead * units + j for lead in indices for j in range(units)]
            offset += width
        return channels

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, groups={self.groups}"


def _check_lead_wise_pair(big: MultiScopicCNN, small: MultiScopicCNN, indices) -> None:
    if not big.is_lead_wise:
        raise MscnnError(
            f"assign_weights_lead_wise: the source model is not lead-wise (groups = "
            f"{big.groups}, in_channels = {big.in_channels}); use mscnn.derive_variant, which "
            "slices the input weights of a groups=1 model"
        )
    if not small.is_lead_wise:
        raise MscnnError("assign_weights_lead_wise: the target model is not lead-wise")
    check_lead_indices(indices, big.in_channels)
    if small.in_channels != len(indices):
        raise MscnnError(
            f"assign_weights_lead_wise: {len(indices)} lead indices for a target model with "
            f"{small.in_channels} leads"
        )
    expected = scale_config(big.config, big.in_channels, len(indices))
    mine, theirs = _comparable(expected), _comparable(small.config)
    if mine != theirs:
        keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise MscnnError(
            "assign_weights_lead_wise: the target model's config differs from the source's "
            f"scaled to {len(indices)} leads in {', '.join(map(repr, keys))}"
        )


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config as `resolve_config` sees it: same layers compare equal."""
    return {k: v for k, v in config.items() if k not in IGNORED_KEYS}


def check_lead_indices(indices: Sequence[int], n_leads: int) -> None:
    if not indices:
        raise MscnnError("lead indices: expected at least one lead")
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < n_leads:
            raise MscnnError(
                f"lead index {i!r} is out of range for a {n_leads}-lead model "
                f"(valid: 0..{n_leads - 1})"
            )
    if len(set(indices)) != len(indices):
        dupes = sorted({i for i in indices if list(indices).count(i) > 1})
        raise MscnnError(f"lead indices {list(indices)}: duplicate index {dupes}")


def scale_config(config: Mapping[str, Any], leads: int, new_leads: int) -> dict[str, Any]:
    """A lead-wise config for `new_leads` leads: groups and every filter count scaled."""
    out = copy.deepcopy(dict(config))
    out["groups"] = new_leads

    def scale(value: Any, where: str) -> Any:
        if isinstance(value, list):
            return [scale(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if value % leads:
            raise MscnnError(f"{where}: {value} filters are not a multiple of {leads} leads")
        return value // leads * new_leads

    out["num_filters"] = scale(config["num_filters"], "config['num_filters']")
    return out


__all__ = ["MultiScopicCNN", "same_padding", "scale_config"]
