"""Build one bundle: a model variant compiled for one target, with the evidence that it
computes what PyTorch computes.

The request names a kind (precision, and a hop for a stream); the registry
(compile/bundles/) finds it, and the kind's own steps write the bundle into a temporary
folder: golden cases, library, manifest with every file's sha256, parity where it runs.
Here is only what every kind shares around those steps: the request checked before any
work, the folder named, the journal kept, and the bundle published by rename
(compile/publish.py). A bundle whose parity fails is not published: it is kept as
`<name>.failed/` with its log, and the build raises CompileError.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import mscnn
from deploy.bundle import BUILD_LOG, Bundle, sign_bundle
from deploy.signing import read_signing_key

from .bundles import PRECISIONS, BuildOptions, Job, kind_for
from .errors import CompileError
from .publish import Journal, keep_failed, publish, start
from .targets import Target, check_compiler
from .variants import Variant, default_variants, resolve_variant

__all__ = [
    "PRECISIONS",
    "BuildOptions",
    "Variant",
    "build",
    "bundle_dir",
    "default_variants",
    "resolve_variant",
]


def bundle_dir(
    out: Path,
    target: Target,
    preset: str | None,
    variant: Variant,
    hop: int | None = None,
    precision: str = "fp32",
) -> Path:
    """Where a bundle of this request is published: out/<target>/<kind's folder name>."""
    return Path(out) / target.name / kind_for(precision, hop).folder(preset, variant, hop)


def build(
    loaded: mscnn.LoadedModel,
    target: Target,
    variant: Variant,
    out: Path,
    options: BuildOptions | None = None,
) -> Bundle:
    """Build and publish one bundle into `out/<target>/<preset>-<variant>[...]/`."""
    options = options or BuildOptions()
    kind = _check_request(loaded, options, target)
    key = read_signing_key(options.signing_key) if options.signing_key else None
    check_compiler(target)
    final = Path(out) / target.name / kind.folder(loaded.preset, variant, options.hop)
    tmp = start(final)
    journal = Journal(tmp / BUILD_LOG)
    try:
        job = Job(tmp, final.name, loaded, target, variant, options, journal)
        manifest = kind.build_into(job)
        if key is not None:  # the final manifest's bytes, signed before publication
            with job.stage("sign"):
                sign_bundle(tmp, key)
    except BaseException as exc:
        journal.write(traceback.format_exc())
        kept = keep_failed(tmp, final)
        if not isinstance(exc, Exception):  # KeyboardInterrupt: clean up, re-raise
            raise
        raise _failure(exc, f"{final.name} for {target.name}", journal.current, kept) from (
            None if isinstance(exc, CompileError | OSError) else exc
        )
    publish(tmp, final)
    return Bundle(final, manifest)


def _failure(exc: Exception, label: str, stage: str, kept: Path | None) -> CompileError:
    where = f"; log kept at {kept / BUILD_LOG}" if kept else ""
    if isinstance(exc, CompileError):
        return type(exc)(f"{label}: {exc}{where}")
    if isinstance(exc, OSError) and exc.strerror:  # disk full, permissions: no traceback
        return CompileError(
            f"{label}: {stage} could not write: {exc.strerror} ({exc.filename}){where}"
        )
    return CompileError(f"{label}: {stage} failed: {type(exc).__name__}: {exc}{where}")


def _check_request(loaded: mscnn.LoadedModel, options: BuildOptions, target: Target):
    """The kind this request builds, once everything that can be refused before any work
    has been: the shape, the precision and hop, and the kind's own conditions."""
    for key in ("samples", "batch"):
        value = getattr(options, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CompileError(f"--{key}: expected a positive integer, got {value!r}")
    try:
        loaded.model.compute_output_shape(options.samples, options.batch)
    except mscnn.MscnnError as exc:
        raise CompileError(f"--samples {options.samples}: {exc}") from None
    kind = kind_for(options.precision, options.hop)
    kind.check(loaded, target, options)
    return kind
