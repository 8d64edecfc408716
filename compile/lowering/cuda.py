"""CUDA builds on machines without a GPU or driver, with kernels compiled, not kept as source.

TVM decides at `import tvm` whether its CUDA runtime loads (it needs libcuda.so.1); without
it, CUDA codegen silently stores kernel source. So CUDA builds run in a child process whose
library path holds, when no driver is present, our stub libcuda.so.1 (`cuda_stub.c`), and
whose NVRTC, CUDA runtime and headers come from PyPI (nvidia-cuda-nvrtc, -runtime, -cccl,
cuda-bindings). The child refuses to write a library whose kernels are not compiled.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

from ..errors import CompileError

EM_CUDA = 190  # ELF e_machine of a cubin
STUB_SOURCE = Path(__file__).with_name("cuda_stub.c")


def _driver_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def _cuda_home() -> Path:
    """The CUDA 13 tree that the nvidia-* wheels install (headers, libcudart, NVRTC)."""
    import nvidia

    for base in map(Path, nvidia.__path__):
        if (base / "cu13" / "lib").is_dir():
            return base / "cu13"
    raise CompileError(
        "CUDA builds need NVRTC and the CUDA runtime from PyPI; reinstall the project's "
        "pinned packages (make venv) — nvidia-cuda-nvrtc, nvidia-cuda-runtime, "
        "nvidia-cuda-cccl, cuda-bindings"
    )


def _stub_dir() -> Path:
    """Compile the stub driver once per environment (write then rename: -j safe)."""
    folder = Path(sys.prefix) / "mscnn-edge-cuda-stub"
    library = folder / "libcuda.so.1"
    if library.exists() and library.stat().st_mtime >= STUB_SOURCE.stat().st_mtime:
        return folder
    folder.mkdir(exist_ok=True)
    tmp = folder / f".libcuda.so.1.{os.getpid()}"
    cmd = [
        "gcc",
        "-shared",
        "-fPIC",
        "-O2",
        "-Wl,-soname,libcuda.so.1",
        "-o",
        str(tmp),
        str(STUB_SOURCE),
    ]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise CompileError(f"cannot build the CUDA driver stub with gcc: {detail}") from None
    tmp.replace(library)
    return folder


def child_env() -> dict[str, str]:
    home = _cuda_home()
    env = dict(os.environ)
    paths = [str(home / "lib")]
    if not _driver_present():
        paths.insert(0, str(_stub_dir()))
    if env.get("LD_LIBRARY_PATH"):
        paths.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(paths)
    env["CUDA_PATH"] = str(home)
    env["TVM_CUDA_COMPILE_MODE"] = "nvrtc"
    # TVM looks for cuda/std headers under targets/*/include/cccl; the wheel has them here.
    env["TVM_CUDA_NVRTC_EXTRA_OPTS"] = f"-I{home / 'include' / 'cccl'}"
    return env


def compile_cuda_library(onnx_path: Path, target_name: str, shape, library: Path, log: Path):
    """Build `library` for a CUDA target in a child process; raise with its log on failure."""
    cmd = [
        sys.executable,
        "-m",
        "compile.lowering.cuda_child",
        "--onnx",
        str(onnx_path),
        "--target",
        target_name,
        "--shape",
        json.dumps(list(shape)),
        "--out",
        str(library),
    ]
    with open(log, "a") as out:
        done = subprocess.run(
            cmd,
            env=child_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
        )
    if done.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise CompileError(f"CUDA build failed: {tail[0]}")


def cubin_archs(library: Path) -> list[str]:
    """The SM architectures of the compiled CUDA kernels (cubins) embedded in `library`."""
    data = library.read_bytes()
    archs, start = [], 1
    while (at := data.find(b"\x7fELF", start)) >= 0:
        start = at + 4
        if len(data) < at + 52 or data[at + 4] != 2:  # 64-bit ELF header
            continue
        if int.from_bytes(data[at + 18 : at + 20], "little") == EM_CUDA:
            flags = int.from_bytes(data[at + 48 : at + 52], "little")
            archs.append(f"sm_{(flags >> 8) & 0xFF}")
    return archs
