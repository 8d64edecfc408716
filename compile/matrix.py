"""Build a matrix of bundles (targets x lead variants of one model): what `make build`
and `python -m compile build` run. One failed bundle does not stop the others."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mscnn
from deploy.bundle import Bundle
from deploy.signing import read_signing_key

from .build import BuildOptions, build, bundle_dir
from .errors import CompileError, ParityError
from .int8.quantize import check_quantizable
from .targets import Target, get_target, precision_target
from .variants import Variant, resolve_variants


@dataclass(frozen=True)
class Request:
    """What to build: a preset (and optional checkpoint), targets and lead variants."""

    preset: str | None = mscnn.DEFAULT_PRESET  # None: the checkpoint's own config
    checkpoint: Path | None = None
    targets: list[str] = field(default_factory=list)
    variants: list[str] | None = None  # None: every lead set of the model
    samples: int = 5000
    batch: int = 1
    seed: int = 0
    out: Path = Path("build")
    hop: int | None = None  # stream bundles of the model's step, hop samples per call
    precision: str = "fp32"  # "int8": quantized bundles (compile/bundles/int8_window.py)
    backbone_only: bool = False  # a whole model's head dropped on purpose (mscnn.load_model)
    signing_key: Path | None = None  # sign every bundle's manifest with this private key


@dataclass(frozen=True)
class Plan:
    """The request resolved: the model, targets and variants, checked before building."""

    request: Request
    loaded: mscnn.LoadedModel
    targets: list[Target]
    variants: list[Variant]

    def __str__(self) -> str:
        r = self.request
        return (
            f"{_model_name(r, self.loaded)} ({self.loaded.source}); targets "
            f"{', '.join(t.name for t in self.targets)}; variants "
            f"{', '.join(v.name for v in self.variants)}; input (batch {r.batch}, leads, "
            f"{r.samples} samples); out {r.out}/"
        )


def _model_name(request: Request, loaded: mscnn.LoadedModel) -> str:
    if request.preset is None and request.checkpoint is not None:
        return f"the checkpoint's own config (preset {loaded.preset or 'none: custom'})"
    return f"preset {loaded.preset}"


@dataclass
class Outcome:
    bundles: list[Bundle]
    failures: list[CompileError]


def plan(request: Request) -> Plan:
    """Resolve and check everything a build needs before the first bundle starts."""
    targets = [get_target(t) for t in request.targets]
    if request.signing_key is not None:
        read_signing_key(request.signing_key)  # a bad key refused before any work
    loaded = mscnn.load_model(
        request.preset, request.checkpoint, seed=request.seed, backbone_only=request.backbone_only
    )
    for target in targets:
        precision_target(target, request.precision)
    if request.precision == "int8":
        check_quantizable(loaded.model)
    return Plan(request, loaded, targets, resolve_variants(loaded, request.variants))


def build_matrix(
    planned: Plan,
    progress: Callable[[str, str], None] = lambda b, s: None,
    done: Callable[[str, CompileError | None], None] = lambda b, e: None,
) -> Outcome:
    """Build every bundle of the plan; `progress(label, stage)` and `done(label, error)`
    report as it goes. Raises ParityError (all failures were parity) or CompileError
    after the last bundle when any failed."""
    r = planned.request
    outcome = Outcome([], [])
    for target in planned.targets:
        for variant in planned.variants:
            where = bundle_dir(Path(), target, planned.loaded.preset, variant, r.hop, r.precision)
            label = str(where)  # <target>/<the kind's folder name>, as it will be published
            options = BuildOptions(
                hop=r.hop,
                precision=r.precision,
                samples=r.samples,
                batch=r.batch,
                seed=r.seed,
                signing_key=r.signing_key,
                progress=lambda stage, label=label: progress(label, stage),
            )
            try:
                outcome.bundles.append(build(planned.loaded, target, variant, r.out, options))
                done(label, None)
            except CompileError as exc:
                outcome.failures.append(exc)
                done(label, exc)
    return outcome


def raise_failures(outcome: Outcome, total: int) -> None:
    if outcome.failures:
        parity_only = all(isinstance(f, ParityError) for f in outcome.failures)
        kind = ParityError if parity_only else CompileError
        raise kind(f"{len(outcome.failures)} of {total} bundles failed")
