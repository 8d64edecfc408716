"""Atomic publication of a bundle folder, and the build log kept with it.

A bundle is built in `.<name>.tmp-<pid>/` beside its final place and renamed into place
only when it is whole; a failed build is kept as `<name>.failed/` with its log; folders
left by builders that died are cleaned up by the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import CompileError


class Journal:
    """The build log: stage timings and whatever went wrong, kept with a failed bundle."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current = "setup"

    def write(self, text: str) -> None:
        try:
            with open(self.path, "a") as f:
                f.write(text.rstrip() + "\n")
        except OSError:  # a full disk must not hide the error being reported
            pass

    @contextlib.contextmanager
    def stage(self, name: str, progress: Callable[[str], None]) -> Iterator[None]:
        self.current = name
        progress(name)
        start = time.perf_counter()
        yield
        self.write(f"{name}: {time.perf_counter() - start:.2f} s")


def start(final: Path) -> Path:
    """A fresh temporary folder to build `final` in (stale ones of dead builders removed)."""
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale(final)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as exc:
        raise CompileError(
            f"cannot write bundles under {final.parent.parent}: "
            f"{exc.strerror} ({exc.filename}); choose a writable --out"
        ) from None
    return tmp


def publish(tmp: Path, final: Path) -> None:
    """Swap the finished folder into place; concurrent builders of one bundle serialise."""
    lock = open(final.parent / f".{final.name}.lock", "w")  # noqa: SIM115 - held until closed
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(final.parent / f"{final.name}.failed", ignore_errors=True)
    finally:
        lock.close()


def keep_failed(tmp: Path, final: Path) -> Path | None:
    """Keep a failed build as `<name>.failed/` (its log inside); None if that fails too."""
    failed = final.parent / f"{final.name}.failed"
    try:
        shutil.rmtree(failed, ignore_errors=True)
        tmp.rename(failed)
        return failed
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return None


def _clean_stale(final: Path) -> None:
    """Remove temporary folders left by builders that no longer run (killed midway)."""
    for prefix in (f".{final.name}.tmp-", f".{final.name}.old-"):
        for stale in final.parent.glob(prefix + "*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
