"""The bundle format, and loading a bundle with its integrity checked first.

A bundle folder holds `model.so` (the TVM library), `model.onnx`, `golden/*.npy` and
`manifest.json`, which lists every other file with its sha256. `load_bundle` reads the
manifest and checks every file against it before anything is loaded: loading a shared
library runs its code, so a tampered one must never get that far.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DeployError

SCHEMA = "mscnn-edge/bundle"
SCHEMA_VERSION = 1
LIBRARY = "model.so"
ONNX_FILE = "model.onnx"
MANIFEST = "manifest.json"
BUILD_LOG = "build.log"
MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a few KiB; refuse to parse anything huge

# platform.machine() names, mapped to the `arch` a bundle's manifest names.
_MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64",
             "armv7l": "armv7", "armv8l": "armv7"}  # fmt: skip
_REQUIRED = ("name", "target", "leads", "fs", "input", "output", "golden", "files", "parity")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def host_arch() -> str:
    machine = platform.machine().lower()
    return _MACHINES.get(machine, machine)


def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its folder and manifest. The library is loaded by `Predictor`."""

    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def target(self) -> dict[str, Any]:
        return self.manifest["target"]

    @property
    def device(self) -> str:
        return self.target["device"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["input"]["shape"])

    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["output"]["shape"])

    @property
    def leads(self) -> list[str]:
        return list(self.manifest["leads"])

    @cached_property
    def golden(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The golden inputs and reference outputs, by name (files verified at load)."""
        return {
            g["name"]: (read_npy(self.path / g["input"]), read_npy(self.path / g["output"]))
            for g in self.manifest["golden"]
        }

    def runnable_here(self) -> tuple[bool, str]:
        """Whether this machine can run the library, and if not, why (before loading it)."""
        t = self.target
        return can_run_here(t.get("arch"), t.get("device"), t.get("cpu_flags", ()))


def can_run_here(arch: str, device: str, needs_flags=()) -> tuple[bool, str]:
    """Whether a library for `arch`/`device` runs in this process, and if not, why."""
    if arch != host_arch():
        return False, f"built for {arch}, this machine is {host_arch()}"
    missing = sorted(set(needs_flags) - cpu_flags())
    if missing:
        return False, f"this CPU lacks {', '.join(missing)}"
    if device == "cuda":
        import tvm

        if not tvm.cuda(0).exist:
            return False, "no GPU"
    return True, "native"


def load_bundle(path: str | Path) -> Bundle:
    """Read and verify a bundle: manifest schema, then every file's size and sha256."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise DeployError(f"bundle {path}: no such folder")
    if not manifest_path.is_file():
        raise DeployError(f"bundle {path}: no {MANIFEST}; is this a bundle folder?")
    if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
        raise DeployError(f"bundle {path}: {MANIFEST} is larger than any real manifest; "
                          "refusing to parse it")  # fmt: skip
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeployError(f"bundle {path}: {MANIFEST} is unreadable ({exc}); rebuild the "
                          "bundle") from None  # fmt: skip
    _check_schema(path, manifest)
    _check_files(path, manifest)
    return Bundle(path, manifest)


def _check_schema(path: Path, manifest: Any) -> None:
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise DeployError(f"bundle {path}: {MANIFEST} is not an mscnn-edge bundle manifest")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DeployError(f"bundle {path}: manifest schema version {version!r}; this deploy "
                          f"reads version {SCHEMA_VERSION}: rebuild the bundle with a "
                          "matching mscnn-edge")  # fmt: skip
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise DeployError(f"bundle {path}: manifest lacks {', '.join(missing)}")
    files = manifest["files"]
    if not isinstance(files, dict) or LIBRARY not in files:
        raise DeployError(f"bundle {path}: manifest lists no {LIBRARY}")
    for g in manifest["golden"]:
        for key in ("input", "output"):
            if g.get(key) not in files:
                raise DeployError(f"bundle {path}: golden file {g.get(key)!r} is not hashed "
                                  "in the manifest")  # fmt: skip


def _check_files(path: Path, manifest: dict[str, Any]) -> None:
    root = path.resolve()
    for rel, entry in manifest["files"].items():
        if not isinstance(entry, dict):
            raise DeployError(f"bundle {path}: manifest entry for {rel!r} is malformed")
        file = (path / rel).resolve()
        if root not in file.parents:
            raise DeployError(f"bundle {path}: manifest names {rel!r}, outside the bundle")
        if not file.is_file():
            raise DeployError(f"bundle {path}: {rel} is missing")
        size = file.stat().st_size
        if size != entry.get("bytes"):
            raise DeployError(f"bundle {path}: {rel} is {size} bytes, the manifest says "
                              f"{entry.get('bytes')} (truncated or replaced); rebuild or "
                              "re-copy the bundle")  # fmt: skip
        if sha256_file(file) != entry.get("sha256"):
            raise DeployError(f"bundle {path}: {rel} does not match its sha256 in the "
                              "manifest (tampered or corrupted); it was not loaded")  # fmt: skip


def write_npy(path: str | Path, array: np.ndarray) -> None:
    """Write a .npy file so that a failed write raises (disk full, read-only).

    np.save streams the data with C stdio, and a write error there (ENOSPC on /dev/full,
    a full disk) goes unreported: the file is short and nothing says so. Serialise in
    memory, then write through a Python file, which raises on every failed write; an
    existing file is replaced only once the new one is whole."""
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    path = Path(path)
    temp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:  # a sibling first, renamed into place: a failed write leaves no short file
        with open(temp, "wb") as out:
            out.write(buffer.getbuffer())
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def read_npy(path: str | Path) -> np.ndarray:
    """Read a .npy file without pickles; a clear DeployError for anything unreadable."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DeployError(f"{path}: not a readable .npy file ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise DeployError(f"{path}: holds several arrays (.npz); give a single .npy array")
    return array
