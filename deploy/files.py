"""File access for hostile inputs: bounded, descriptor-checked, never through a symlink.

Everything a bundle or a user hands us is read the same way: open once (inside a bundle:
component by component with O_NOFOLLOW, so no path leaves the folder), check what was
opened with fstat (a regular file, of a size we expect), cap every read, and hash the
bytes that are then used. Outputs are created with O_EXCL next to their destination and
renamed into place, so a planted file or symlink is never written through.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import DeployError

MAX_NPY_HEADER = 1 << 16  # numpy writes a few hundred bytes; 64 KiB is already absurd
MAX_NPY_BYTES = 1 << 31  # 2 GiB: far beyond any ECG record or model output
_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def show(path: str | os.PathLike) -> str:
    """A path for a message: control characters escaped (no forged second line)."""
    text = os.fspath(path)
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


@contextlib.contextmanager
def open_inside(root: Path, rel: str) -> Iterator[int]:
    """A descriptor of the regular file `rel` under `root`, reached without following a
    symlink at any step; DeployError when it is missing, a symlink or not a file."""
    parts = rel.split("/")
    fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
    try:
        for k, part in enumerate(parts):
            last = k == len(parts) - 1
            flags = _NOFOLLOW | (0 if last else os.O_DIRECTORY) | os.O_NONBLOCK
            try:
                fds.append(os.open(part, flags, dir_fd=fds[-1]))
            except FileNotFoundError:
                raise DeployError(f"{show(rel)} is missing") from None
            except OSError as exc:  # ELOOP / ENOTDIR: a symlink or a file where a folder was
                what = "a symlink" if exc.errno in (40, 20) else exc.strerror
                raise DeployError(
                    f"{show(rel)}: {what}; bundle files must be plain files "
                    "inside the bundle folder"
                ) from None
        info = os.fstat(fds[-1])
        if not stat.S_ISREG(info.st_mode):
            raise DeployError(f"{show(rel)} is not a regular file")
        os.set_blocking(fds[-1], True)
        yield fds[-1]
    finally:
        for fd in fds:
            os.close(fd)


def open_regular(path: str | Path, hint: str = "give a .npy file") -> int:
    """A descriptor of a user-given file, checked to be a regular file (not a FIFO, a
    device or a folder) on the opened descriptor; the caller closes it. `hint` ends the
    refusal (what to give instead)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise DeployError(f"{show(path)}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DeployError(f"{show(path)} is not a regular file; {hint}")
    os.set_blocking(fd, True)
    return fd


def read_capped(fd: int, limit: int, what: str) -> bytes:
    """The whole file behind `fd`, refused unread when larger than `limit`."""
    size = os.fstat(fd).st_size
    if size > limit:
        raise DeployError(
            f"{what} is larger than any real one ({size} bytes > {limit}); refusing to read it"
        )
    with os.fdopen(os.dup(fd), "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise DeployError(f"{what} grew while being read; refusing it")
    return data


def sha256_fd(fd: int, copy_to: io.RawIOBase | None = None) -> str:
    """The sha256 of the file behind `fd` from its start; `copy_to` receives the very bytes
    hashed (so what is loaded later is what was verified)."""
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        digest.update(chunk)
        if copy_to is not None:
            copy_to.write(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return sha256_fd(fd)
    finally:
        os.close(fd)


def check_elf(fd: int, name: str) -> None:
    """An ELF shared object whose header and program headers lie inside the file, so the
    loader maps nothing past its end (a truncated library would die with SIGBUS)."""
    size = os.fstat(fd).st_size
    head = os.pread(fd, 64, 0)
    if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        raise DeployError(f"{name} is not an ELF library")
    wide, order = head[4] == 2, "<" if head[5] == 1 else ">"
    if wide:
        (phoff,) = struct.unpack_from(order + "Q", head, 32)
        phentsize, phnum = struct.unpack_from(order + "HH", head, 54)
        entry, fields = 56, order + "IIQQQQQQ"
    else:
        (phoff,) = struct.unpack_from(order + "I", head, 28)
        phentsize, phnum = struct.unpack_from(order + "HH", head, 42)
        entry, fields = 32, order + "IIIIIIII"
    if phentsize < entry or phnum == 0 or phoff + phentsize * phnum > size:
        raise DeployError(
            f"{name}: its program headers lie outside the file "
            f"({size} bytes); the library is truncated or corrupt"
        )
    table = os.pread(fd, phentsize * phnum, phoff)
    for k in range(phnum):
        values = struct.unpack_from(fields, table, k * phentsize)
        offset, filesz = (values[2], values[5]) if wide else (values[1], values[4])
        if values[0] != 0 and offset + filesz > size:  # PT_NULL entries map nothing
            raise DeployError(
                f"{name}: segment {k} ends at byte {offset + filesz}, past the "
                f"end of the file ({size} bytes); the library is truncated "
                "or corrupt"
            )


# --------------------------------------------------------------------------------------
# .npy


def read_npy_fd(fd: int, name: str) -> np.ndarray:
    """One little-endian, non-object array from a .npy file, bounded by the file's size:
    the header is capped, its shape must account for every data byte (no more, no less)."""
    with os.fdopen(os.dup(fd), "rb") as f:
        shape, fortran, dtype, expected = _npy_layout(f, fd, name)
        data = f.read(expected)
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return np.array(array)  # writable, owning its memory


def map_npy_fd(fd: int, name: str) -> np.ndarray:
    """The array of a .npy file, checked as read_npy_fd checks it, mapped read-only
    rather than read: a record of any length costs only the pages a reader touches."""
    import mmap

    with os.fdopen(os.dup(fd), "rb") as f:
        shape, fortran, dtype, expected = _npy_layout(f, fd, name)
        offset = f.tell()
    if expected == 0:
        return np.zeros(shape, dtype)
    mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    count = expected // dtype.itemsize
    array = np.frombuffer(mapped, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape, order="F" if fortran else "C")


def release_pages(array: np.ndarray) -> None:
    """Let the kernel take back the pages of a mapped array (map_npy_fd) read so far: a
    mapped page once touched counts as the process's memory until then, so a record read
    chunk by chunk would otherwise grow to its whole size. Touched again, a page is read
    again from the file. Does nothing for an array that is not mapped."""
    import mmap

    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", getattr(base, "obj", None))
    if base is not None:
        base.madvise(mmap.MADV_DONTNEED)


def _npy_layout(f, fd: int, name: str):
    """(shape, fortran order, dtype, data bytes) of the .npy file open as `f`, left at its
    first data byte; a DeployError unless the data fill the file exactly."""
    size = os.fstat(fd).st_size
    try:
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = _read_npy_header(f, version, name)
    except DeployError:
        raise
    except Exception as exc:  # numpy raises many kinds for a damaged header
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DeployError(f"{name}: not a readable .npy file ({show(reason)[:120]})") from None
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if expected > MAX_NPY_BYTES or expected != size - f.tell():
        raise DeployError(
            f"{name}: its header promises {expected} data bytes for shape "
            f"{shape}, the file holds {size - f.tell()}"
        )
    return shape, fortran, dtype, expected


def _read_npy_header(f, version, name: str):
    reader = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    start = f.tell()
    length = f.read(2 if version == (1, 0) else 4)
    f.seek(start)
    if int.from_bytes(length, "little") > MAX_NPY_HEADER:
        raise DeployError(
            f"{name}: .npy header of {int.from_bytes(length, 'little')} bytes; "
            "not a file numpy writes"
        )
    shape, fortran, dtype = reader(f, max_header_size=MAX_NPY_HEADER)
    if dtype.hasobject or dtype.kind not in "biuf":
        raise DeployError(f"{name}: dtype {dtype.str} is not a plain number type")
    if any(d > MAX_NPY_BYTES for d in shape):
        raise DeployError(f"{name}: shape {shape} is larger than any real array")
    return shape, fortran, dtype


def read_npy(path: str | Path) -> np.ndarray:
    """Read a user's .npy file without pickles; a DeployError for anything unreadable."""
    fd = open_regular(path)
    try:
        return read_npy_fd(fd, show(path))
    finally:
        os.close(fd)


def write_npy(path: str | Path, array: np.ndarray) -> None:
    """Write a .npy file so that a failed write raises (disk full, read-only) and nothing
    half-written or foreign is left.

    np.save streams with C stdio and loses write errors (ENOSPC). Serialise in memory,
    write a sibling created with O_EXCL | O_NOFOLLOW (a planted file or symlink of that
    name makes the write fail instead of writing through it), fsync, rename into place."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    path = Path(path)
    temp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(buffer.getbuffer())
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
