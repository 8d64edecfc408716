"""A bundle on disk, loaded with its integrity checked before anything runs.

A bundle folder holds `model.so` (the TVM library), `model.onnx`, `golden/*.npy` and
`manifest.json` (deploy/manifest.py), which lists every other file with its size and
sha256. `load_bundle` validates the manifest and checks every listed file against it
before anything is loaded: loading a shared library runs its code, so a tampered one
must never get that far. Files are reached without following symlinks (deploy/files.py),
and the library that is loaded is a private copy of the very bytes that were hashed.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from .errors import DeployError
from .files import (
    check_elf,
    open_inside,
    read_capped,
    read_npy,
    read_npy_fd,
    sha256_fd,
    sha256_file,
    show,
    write_npy,
)
from .manifest import (
    GPU_DEVICES,
    MAX_MANIFEST_BYTES,
    SCHEMA,
    SCHEMA_VERSION,
    Manifest,
    ManifestError,
    TargetInfo,
)
from .signing import (
    SIGNATURE,
    Signature,
    Trust,
    check_bundle_signature,
    current_trust,
    sign_bytes,
    write_signature,
)

LIBRARY = "model.so"
ONNX_FILE = "model.onnx"
MANIFEST = "manifest.json"
BUILD_LOG = "build.log"

__all__ = [
    "BUILD_LOG",
    "LIBRARY",
    "MANIFEST",
    "ONNX_FILE",
    "SCHEMA",
    "SCHEMA_VERSION",
    "Bundle",
    "can_run_here",
    "load_bundle",
    "read_npy",
    "sha256_file",
    "sign_bundle",
    "write_npy",
]

# platform.machine() names, mapped to the `arch` a bundle's manifest names.
_MACHINES = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "armv7l": "armv7",
    "armv8l": "armv7",
}


def host_arch() -> str:
    machine = platform.machine().lower()
    return _MACHINES.get(machine, machine)


def cpuinfo(*keys: str) -> list[str]:
    """The values of the /proc/cpuinfo lines that start with one of `keys`, in file order
    (one per core for most keys); [] where there is no such file. The one reader of it."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return [
        line.split(":", 1)[1].strip()
        for line in text.splitlines()
        if line.startswith(keys) and ":" in line
    ]


def cpu_flags() -> frozenset[str]:
    values = cpuinfo("flags", "Features")
    return frozenset(values[0].split()) if values else frozenset()


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it ("" where it does not): every
    figure is quoted with it."""
    return next(iter(cpuinfo("model name")), "")


def can_run_here(arch: str, device: str, needs_flags=()) -> tuple[bool, str]:
    """Whether a library for `arch`/`device` runs in this process, and if not, why."""
    if arch != host_arch():
        return False, f"built for {arch}, this machine is {host_arch()}"
    missing = sorted(set(needs_flags) - cpu_flags())
    if missing:
        return False, f"this CPU lacks {', '.join(missing)}"
    if device in GPU_DEVICES:
        import tvm

        if not tvm.cuda(0).exist:
            return False, "no GPU"
    return True, "native"


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its folder and typed manifest. `Predictor` loads the library."""

    path: Path
    manifest: Manifest
    signer: str | None = None  # the trusted key's fingerprint, when its signature was checked

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def target(self) -> TargetInfo:
        return self.manifest.target

    @property
    def device(self) -> str:
        return self.manifest.target.device

    @property
    def tolerance_kind(self) -> str:
        return self.manifest.tolerance_kind

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.manifest.input.shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.manifest.output.shape

    @property
    def leads(self) -> list[str]:
        return list(self.manifest.leads)

    @cached_property
    def golden(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The golden inputs and reference outputs, by name (re-read without symlinks)."""
        return {
            g.name: (self.read_npy(g.input), self.read_npy(g.output)) for g in self.manifest.golden
        }

    def read_npy(self, rel: str) -> np.ndarray:
        try:
            with open_inside(self.path, rel) as fd:
                return read_npy_fd(fd, show(rel))
        except DeployError as exc:
            raise DeployError(f"bundle {show(self.path)}: {exc}") from None

    def runnable_here(self) -> tuple[bool, str]:
        """Whether this machine can run the library, and if not, why (before loading it)."""
        t = self.target
        return can_run_here(t.arch, t.device, t.cpu_flags)

    @contextlib.contextmanager
    def private_library(self) -> Iterator[Path]:
        """A private copy of the library, checked against the manifest as it is copied:
        what is then loaded is exactly what was verified, whatever happens to the folder."""
        entry = self.manifest.files[LIBRARY]
        folder = Path(tempfile.mkdtemp(prefix="mscnn-lib-"))  # mode 0700
        try:
            copy = folder / LIBRARY
            with open_inside(self.path, LIBRARY) as fd, open(copy, "xb") as out:
                check_elf(fd, LIBRARY)
                digest = sha256_fd(fd, out)
            if digest != entry.sha256:
                raise DeployError(
                    f"bundle {show(self.path)}: {LIBRARY} changed after it was "
                    "verified; it was not loaded"
                )
            yield copy
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def load_bundle(path: str | Path, trust: Trust | None = None) -> Bundle:
    """Read and verify a bundle: with a trusted key (`trust`, else the one in force: see
    deploy/signing.py), the signature over the manifest bytes first; then the manifest's
    types, then every file's size and sha256."""
    path = Path(path)
    if not path.is_dir():
        raise DeployError(f"bundle {show(path)}: no such folder")
    if not (path / MANIFEST).exists() and not (path / MANIFEST).is_symlink():
        raise DeployError(f"bundle {show(path)}: no {MANIFEST}; is this a bundle folder?")
    try:
        with open_inside(path, MANIFEST) as fd:
            text = read_capped(fd, MAX_MANIFEST_BYTES, MANIFEST)
    except DeployError as exc:
        raise DeployError(f"bundle {show(path)}: {exc}; rebuild the bundle") from None
    # Before the manifest is even parsed: its bytes are what the signature covers.
    signer = check_bundle_signature(path, text, trust or current_trust())
    try:
        manifest = Manifest.from_json(text, MANIFEST)
    except ManifestError as exc:
        raise DeployError(f"bundle {show(path)}: {exc}") from None
    except DeployError as exc:
        raise DeployError(f"bundle {show(path)}: {exc}; rebuild the bundle") from None
    if LIBRARY not in manifest.files:
        raise DeployError(f"bundle {show(path)}: manifest lists no {LIBRARY}")
    for rel, entry in manifest.files.items():
        _check_file(path, rel, entry.bytes, entry.sha256)
    return Bundle(path, manifest, signer)


def sign_bundle(folder: str | Path, key) -> Signature:
    """Sign a bundle folder's manifest.json bytes with `key` (deploy.signing's
    read_signing_key) into manifest.sig beside it, which the manifest does not list."""
    folder = Path(folder)
    try:
        with open_inside(folder, MANIFEST) as fd:
            data = read_capped(fd, MAX_MANIFEST_BYTES, MANIFEST)
    except DeployError as exc:
        raise DeployError(f"bundle {show(folder)}: {exc}") from None
    signature = sign_bytes(key, data)
    write_signature(folder / SIGNATURE, signature)
    return signature


def _check_file(path: Path, rel: str, size: int, sha256: str) -> None:
    try:
        with open_inside(path, rel) as fd:
            found = os.fstat(fd).st_size
            if found != size:
                raise DeployError(
                    f"{show(rel)} is {found} bytes, the manifest says {size} "
                    "(truncated or replaced); rebuild or re-copy the bundle"
                )
            if sha256_fd(fd) != sha256:
                raise DeployError(
                    f"{show(rel)} does not match its sha256 in the manifest "
                    "(tampered or corrupted); it was not loaded"
                )
            if rel == LIBRARY:
                check_elf(fd, LIBRARY)
    except DeployError as exc:
        raise DeployError(f"bundle {show(path)}: {exc}") from None
