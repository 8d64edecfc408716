"""What a bundle kind is: a name, the folder suffix its bundles carry, and the one
function that builds a bundle of that kind into a temporary folder. compile/build.py
finds a kind in the registry (compile/bundles/__init__.py) and calls it; it never imports
a kind's module, so a kind cannot import the build back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import mscnn
    from deploy.manifest import Manifest

    from ..publish import Journal
    from ..targets import Target
    from ..variants import Variant


@dataclass
class BuildOptions:
    samples: int = 5000
    batch: int = 1
    seed: int = 0
    progress: Callable[[str], None] = field(default=lambda stage: None)
    tuning: bool = True  # apply the target's tuning records (compile/tuning/<target>/)
    records_dir: Path | None = None  # another records folder (tests)
    hop: int | None = None  # a stream bundle of the model's step for this hop (samples)
    precision: str = "fp32"  # one of compile.bundles.PRECISIONS
    signing_key: Path | None = None  # sign the manifest (manifest.sig) with this private key


@dataclass(frozen=True)
class Job:
    """One bundle being built, as the build hands it to its kind: the temporary folder
    to write, the bundle's name, the model and variant, the target, the options, and the
    journal that logs each stage."""

    folder: Path
    name: str
    loaded: mscnn.LoadedModel
    target: Target
    variant: Variant
    options: BuildOptions
    journal: Journal

    def stage(self, stage: str):
        """`with job.stage("tvm"):` logs the stage, reports progress, times it."""
        return self.journal.stage(stage, self.options.progress)


BuildInto = Callable[[Job], "Manifest"]


@dataclass(frozen=True)
class BundleKind:
    """One kind of bundle. `precision` and `streaming` are what a request names (the
    registry's key); `build_into` writes a complete bundle (library, golden cases,
    manifest with every file hashed, parity checked where it runs) into the job's folder
    and returns the manifest; `check` refuses, before any work, a request this kind cannot
    build (it raises CompileError)."""

    name: str
    precision: str
    streaming: bool
    build_into: BuildInto
    check: Callable[[mscnn.LoadedModel, Target, BuildOptions], None] = lambda *_: None
    summary: str = ""

    def folder(self, preset: str | None, variant: Variant, hop: int | None) -> str:
        """The bundle's folder name: <preset>-<variant>[-stream<hop>][-<precision>]."""
        stream = f"-stream{hop}" if self.streaming else ""
        suffix = "" if self.precision == "fp32" else f"-{self.precision}"
        return f"{preset or 'custom'}-{variant.name}{stream}{suffix}"
