"""Lead variants: which leads a bundle takes, and the model that computes on them.

The one place that turns a variant request ("6", "I,II,V5") into lead names and indices
and the reduced-lead model (mscnn.derive_variant); build, tune and bench all use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import mscnn

from .errors import CompileError


@dataclass(frozen=True)
class Variant:
    name: str  # folder suffix: "6lead", or the lead names for a custom selection
    leads: tuple[str, ...]
    indices: tuple[int, ...]  # into the preset's leads


def default_variants(loaded: mscnn.LoadedModel) -> list[str]:
    """Every CinC lead set the model's leads contain, largest first; else its own leads."""
    sets = [k for k, names in mscnn.LEAD_SETS.items() if set(names) <= set(loaded.leads)]
    return sets or [str(len(loaded.leads))]


def resolve_variant(loaded: mscnn.LoadedModel, spec: str) -> Variant:
    """A variant from a lead count ("6": a CinC set, or all the model's leads) or a
    comma-separated (or '+'-joined) list of lead names."""
    spec = spec.replace("+", ",")
    own = str(len(loaded.leads))
    valid = sorted(set(default_variants(loaded)) | {own}, key=lambda v: -int(v))
    if spec == own:
        names, indices = list(loaded.leads), list(range(len(loaded.leads)))
    elif spec.isdigit() and spec not in valid:
        raise CompileError(
            f"unknown variant {spec!r} for a model with leads {', '.join(loaded.leads)}; "
            f"choose from: {', '.join(valid)} (or a comma-separated list of lead names)"
        )
    else:
        try:
            names, indices = mscnn.resolve_leads(spec, loaded.leads)
        except mscnn.MscnnError as exc:
            raise CompileError(f"variant {spec!r}: {exc}") from None
    name = f"{len(names)}lead" if spec.isdigit() else "_".join(names)
    return Variant(name, tuple(names), tuple(indices))


def resolve_variants(loaded: mscnn.LoadedModel, specs: list[str] | None) -> list[Variant]:
    """The variants asked for, or every default one."""
    return [resolve_variant(loaded, s) for s in specs or default_variants(loaded)]


def is_whole(loaded: mscnn.LoadedModel, variant: Variant) -> bool:
    return list(variant.indices) == list(range(len(loaded.leads)))


def variant_model(loaded: mscnn.LoadedModel, variant: Variant) -> torch.nn.Module:
    """The model (eval mode) that takes the variant's leads."""
    full = loaded.model.eval()
    if is_whole(loaded, variant):
        return full
    return mscnn.derive_variant(full, variant.indices).eval()
