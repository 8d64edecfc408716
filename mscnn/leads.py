"""Lead sets of PhysioNet/CinC 2021 and reduced-lead variants of a 12-lead model.

A lead-wise model (groups = leads) keeps each lead's channels apart up to the output, so
the variant for a subset of leads is the subset of its weights (running statistics
included): `derive_variant(model, leads)(x[:, kept])` equals `model(x with the other
leads zeroed)[:, model.lead_wise_channels(kept)]`, in eval mode.

A model with groups = 1 mixes leads in its first conv. Its variant keeps that conv's
input weights for the kept leads and every other weight as is, so the contract is
`variant(x[:, kept]) == model(x with the other leads zeroed)` (all output channels): the
model treats a dropped lead as a flat zero signal, nothing more.

A whole model (ECG_SEQ_LAB_NET, ECG_CRNN) has one contract for both kinds of backbone:
`variant(x[:, kept]) == model(x with the other leads zeroed)`, every logit. With groups = 1
the variant is the same class with fewer leads; with a lead-wise backbone it is a
`ReducedLeadModel` that folds the dropped leads' (input-independent) features into the head.
`variant_reference` computes the right-hand side of the contract for every kind of model.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from .errors import MscnnError
from .heads import ReducedLeadModel, WholeModel, derive_whole_variant
from .model import MultiScopicCNN, check_lead_indices, scale_config

LEADS_12: tuple[str, ...] = (
    "I",
    "II",
    "III",
    "aVR",
    "aVL",
    "aVF",
    "V1",
    "V2",
    "V3",
    "V4",
    "V5",
    "V6",
)

# The CinC 2021 reduced-lead sets, by name; each is a subset of LEADS_12 in its order.
LEAD_SETS: dict[str, tuple[str, ...]] = {
    "12": LEADS_12,
    "6": ("I", "II", "III", "aVR", "aVL", "aVF"),
    "4": ("I", "II", "III", "V2"),
    "3": ("I", "II", "V2"),
    "2": ("I", "II"),
}


def resolve_leads(
    selection: str | int | Sequence[str | int], available: Sequence[str] = LEADS_12
) -> tuple[list[str], list[int]]:
    """Names and indices (into `available`) of a lead selection.

    `selection` is a lead-set name ("6" or 6), a comma-separated string of lead names
    ("I,II,V2"), or a list of names or indices.
    """
    if isinstance(selection, numbers.Integral) and not isinstance(selection, bool):
        selection = str(selection)
    if isinstance(selection, str):
        if selection in LEAD_SETS:
            selection = LEAD_SETS[selection]
        else:
            selection = [s.strip() for s in selection.split(",") if s.strip()]
    if not isinstance(selection, Sequence) or not selection:
        raise MscnnError(
            f"lead selection {selection!r}: expected a lead-set name "
            f"({', '.join(LEAD_SETS)}), lead names or indices"
        )
    indices = []
    for item in selection:
        if isinstance(item, str):
            if item not in available:
                raise MscnnError(
                    f"unknown lead {item!r}; this model's leads are: {', '.join(available)} "
                    f"(or a lead set: {', '.join(LEAD_SETS)})"
                )
            indices.append(list(available).index(item))
        elif isinstance(item, numbers.Integral) and not isinstance(item, bool):
            if not 0 <= item < len(available):
                raise MscnnError(
                    f"lead index {item} is out of range for a {len(available)}-lead model "
                    f"(valid: 0..{len(available) - 1})"
                )
            indices.append(int(item))
        else:
            raise MscnnError(f"lead selection: {item!r} is neither a lead name nor an index")
    if len(set(indices)) != len(indices):
        dupes = sorted({available[i] for i in indices if indices.count(i) > 1})
        raise MscnnError(f"lead selection lists {', '.join(dupes)} more than once")
    return [available[i] for i in indices], indices


def derive_variant(
    model: MultiScopicCNN | WholeModel, indices: Sequence[int]
) -> MultiScopicCNN | WholeModel | ReducedLeadModel:
    """The reduced-lead model for the leads `indices` of `model` (see module docstring).

    Returns a new model in the same train/eval mode; `model` is not changed. A backbone
    gives a `MultiScopicCNN`; a whole model gives the same class (groups = 1) or a
    `ReducedLeadModel` (lead-wise backbone).
    """
    if isinstance(model, ReducedLeadModel):
        raise MscnnError(
            "derive_variant: this model is already a reduced-lead variant; derive every "
            "variant from the full model"
        )
    if isinstance(model, WholeModel):
        return derive_whole_variant(model, indices)
    if not isinstance(model, MultiScopicCNN):
        raise MscnnError(
            f"derive_variant: expected a MultiScopicCNN, ECG_SEQ_LAB_NET or ECG_CRNN, got "
            f"{type(model).__name__}"
        )
    check_lead_indices(indices, model.in_channels)
    if model.is_lead_wise:
        config = scale_config(model.config, model.in_channels, len(indices))
        variant = MultiScopicCNN(len(indices), **config)
        model.assign_weights_lead_wise(variant, indices)
    elif model.groups == 1:
        variant = MultiScopicCNN(len(indices), **model.config)
        state = model.state_dict()
        for b in range(model.num_branches):
            key = f"branches.branch_{b}.block_0.ca_0.conv1d.weight"
            state[key] = state[key][:, list(indices), :]
        variant.load_state_dict(state, strict=True)
    else:
        raise MscnnError(
            f"reduced-lead variants need groups = 1 or groups = in_channels (lead-wise); this "
            f"model has groups = {model.groups} for {model.in_channels} leads"
        )
    return variant.train(model.training)


def zero_fill(x: torch.Tensor, indices: Sequence[int], n_leads: int) -> torch.Tensor:
    """Place `x` (batch, len(indices), samples) at `indices` of an all-zero n_leads input."""
    full = x.new_zeros(x.shape[0], n_leads, x.shape[2])
    full[:, list(indices)] = x
    return full


def variant_reference(
    model: MultiScopicCNN | WholeModel, x: torch.Tensor, indices: Sequence[int]
) -> torch.Tensor:
    """What `derive_variant(model, indices)(x)` must equal (eval mode): `model` on `x`
    (batch, len(indices), samples) zero-filled to all its leads; for a lead-wise backbone,
    sliced to the kept leads' channels. Whole models compare every logit."""
    out = model(zero_fill(x, indices, model.in_channels))
    if isinstance(model, MultiScopicCNN) and model.is_lead_wise:
        out = out[:, model.lead_wise_channels(indices)]
    return out
