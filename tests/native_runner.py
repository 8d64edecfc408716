"""The native runner for tests: built once per session per architecture (incrementally,
into build/native/<arch>), run natively or under the target's qemu-user."""

import shutil
import subprocess
import sys
import threading
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
# Runners built in the background while the first tests run (`prebuild`): the armv7
# runner compiles the TVM runtime from source, minutes of CPU that would otherwise stop
# the suite at the first test that needs it.
_prebuilt: dict[str, threading.Event] = {}
_prebuilding: list[subprocess.Popen] = []


def _make(arch: str, jobs: int) -> list[str]:
    return [
        "make",
        f"-j{jobs}",
        "-C",
        str(ROOT / "deploy" / "native"),
        f"ARCH={arch}",
        f"OUT={ROOT / 'build' / 'native' / arch}",
        f"PYTHON={sys.executable}",
    ]


def prebuild(archs=("x86_64", "aarch64", "armv7")) -> None:
    """Build the runners of `archs` (those whose tools are here) one after another, one
    job at a time at low priority, in a background thread; `runner_for` waits for an
    architecture's turn before its own make (then incremental: nothing left to do, or
    the build's error, reported by the test that needs it). `stop_prebuild` ends it."""
    archs = [a for a in archs if all(shutil.which(t) for t in TOOLS[a])]
    for arch in archs:
        _prebuilt[arch] = threading.Event()

    def work():
        for arch in archs:
            try:
                with subprocess.Popen(
                    ["nice", "-n", "10", *_make(arch, 1)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ) as proc:
                    _prebuilding[:] = [proc]
                    proc.wait(timeout=1800)
            except (OSError, subprocess.SubprocessError):
                pass  # runner_for's own make says what went wrong
            finally:
                _prebuilt[arch].set()

    threading.Thread(target=work, name="prebuild-runners", daemon=True).start()


def stop_prebuild() -> None:
    """End a background build still running (make removes its half-written target)."""
    for proc in _prebuilding:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)


def runner_for(arch: str) -> Path:
    if arch not in _built:
        missing = [t for t in TOOLS[arch] if shutil.which(t) is None]
        if missing:
            pytest.skip(
                f"{arch} runner needs {', '.join(missing)}: run `make toolchains` as "
                "root (make test does)"
            )
        if arch in _prebuilt:
            _prebuilt[arch].wait(timeout=1800)
        done = subprocess.run(_make(arch, 2), capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        _built[arch] = ROOT / "build" / "native" / arch / "mscnn-run"
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
        if "x86_64" in _prebuilt:  # the same folders as the x86_64 runner's
            _prebuilt["x86_64"].wait(timeout=1800)
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
