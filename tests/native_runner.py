"""The native runner for tests: built once per session per architecture (incrementally,
into build/native/<arch>), run natively or under the target's qemu-user."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from compile import TARGETS

ROOT = Path(__file__).resolve().parents[1]
EMULATOR = {t.arch: list(t.qemu) for t in TARGETS.values() if t.run == "qemu"}
TOOLS = {
    "x86_64": ["g++"],
    "aarch64": ["aarch64-linux-gnu-g++", "qemu-aarch64"],
    "armv7": ["arm-linux-gnueabihf-g++", "qemu-arm"],
}
_built: dict[str, Path] = {}


def runner_for(arch: str) -> Path:
    if arch not in _built:
        missing = [t for t in TOOLS[arch] if shutil.which(t) is None]
        if missing:
            pytest.skip(
                f"{arch} runner needs {', '.join(missing)}: run `make toolchains` as "
                "root (make test does)"
            )
        out = ROOT / "build" / "native" / arch
        done = subprocess.run(
            [
                "make",
                "-j2",
                "-C",
                str(ROOT / "deploy" / "native"),
                f"ARCH={arch}",
                f"OUT={out}",
                f"PYTHON={sys.executable}",
            ],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        _built[arch] = out / "mscnn-run"
    return _built[arch]


def run_native(arch: str, *args, timeout: float = 600, stdin=None) -> subprocess.CompletedProcess:
    """The runner for `arch` on `args`; `stdin`: an open file for it to read."""
    return subprocess.run(
        [*EMULATOR.get(arch, []), str(runner_for(arch)), *map(str, args)],
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def resample_tool() -> Path:
    """mscnn-resample (deploy/native/tools): the runner's resampler alone, for x86_64; two
    source files, no TVM runtime, built in a second or two."""
    if "resample" not in _built:
        out = ROOT / "build" / "native" / "x86_64"
        done = subprocess.run(
            ["make", "-C", str(ROOT / "deploy" / "native"), "resample-tool", "ARCH=x86_64",
             f"OUT={out}", f"PYTHON={sys.executable}"],
            capture_output=True,
            text=True,
            timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        _built["resample"] = out / "mscnn-resample"
    return _built["resample"]
