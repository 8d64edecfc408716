"""Cortex-M targets: the model as object code plus a generated C entry point, proven
under qemu-system-arm.

    Step 1. Lower     ONNX -> Relax -> TVM's CPU passes (single-threaded: no schedule
                      that parallelises) -> the memory plan (compile/aot.py reads it)
    Step 2. Kernels   the PrimFuncs compiled by TVM's LLVM backend for the Thumb-2 core
                      into one object file (packed calling convention, hard float)
    Step 3. C         model.c / model.h: the arena, the weights as const arrays, the
                      kernels called in order (compile/aot.py)
    Step 4. Fit       the footprint checked against the part's flash and RAM before
                      linking: a model that does not fit is refused with the numbers
    Step 5. Firmware  startup, linker script, main.c (deploy/mcu/) linked with
                      arm-none-eabi-gcc and newlib (libm for expf/logf, nothing that
                      needs a heap or syscalls)
    Step 6. Proof     run under qemu-system-arm on golden inputs over semihosting;
                      parity against PyTorch with the one tolerance table

Cores, boards and parts are data (the tables below). The lead engineer's target table
(compile/targets.py) does not know these yet: see the module's report.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .aot import Program, emit_c, emit_entry, emit_header, read_program
from .errors import CompileError

log = logging.getLogger(__name__)

FIRMWARE_DIR = Path(__file__).resolve().parents[1] / "deploy" / "mcu"
KiB, MiB = 1024, 1024 * 1024


@dataclass(frozen=True)
class Core:
    """A Cortex-M core: the TVM target its kernels are built for and the matching
    arm-none-eabi-gcc flags (the float ABI and FPU must agree, or the link refuses)."""

    name: str
    description: str
    tvm: Mapping[str, Any]
    cflags: tuple[str, ...]


@dataclass(frozen=True)
class Board:
    """A board qemu-system-arm emulates, with its linker script in deploy/mcu/."""

    name: str
    core: str
    qemu_machine: str
    flash_bytes: int
    ram_bytes: int
    sysclk_hz: int  # SysTick's processor clock as qemu models it


@dataclass(frozen=True)
class Part:
    """A class of microcontroller a model must fit: its flash and RAM."""

    name: str
    description: str
    core: str
    flash_bytes: int
    ram_bytes: int
    clock_hz: int  # the clock the speed estimate assumes


def _thumb(mcpu: str) -> dict[str, Any]:
    return {"kind": "llvm", "mtriple": "thumbv7em-none-eabihf", "mcpu": mcpu,
            "mfloat-abi": "hard", "opt-level": 2}  # fmt: skip


CORES: dict[str, Core] = {
    c.name: c
    for c in (
        Core("cortex-m7", "Arm Cortex-M7, FPv5 double-precision FPU, hard float",
             _thumb("cortex-m7"),
             ("-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-d16", "-mfloat-abi=hard")),
        Core("cortex-m4", "Arm Cortex-M4F, FPv4 single-precision FPU, hard float",
             _thumb("cortex-m4"),
             ("-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard")),
    )
}  # fmt: skip

BOARDS: dict[str, Board] = {
    b.name: b
    for b in (
        Board("mps2-an500", "cortex-m7", "mps2-an500", 4 * MiB, 4 * MiB, 25_000_000),
        Board("mps2-an386", "cortex-m4", "mps2-an386", 4 * MiB, 4 * MiB, 25_000_000),
    )
}

PARTS: dict[str, Part] = {
    p.name: p
    for p in (
        Part("stm32h7", "STM32H7-class Cortex-M7 at 480 MHz (2 MB flash, 1 MB RAM)",
             "cortex-m7", 2 * MiB, 1 * MiB, 480_000_000),
        Part("nrf52840", "nRF52840-class Cortex-M4F at 64 MHz (1 MB flash, 256 KB RAM)",
             "cortex-m4", 1 * MiB, 256 * KiB, 64_000_000),
    )
}  # fmt: skip

TOOLS = {"arm-none-eabi-gcc": "gcc-arm-none-eabi libnewlib-arm-none-eabi",
         "qemu-system-arm": "qemu-system-arm"}  # fmt: skip


def _pick(table: Mapping[str, Any], name: str, what: str):
    try:
        return table[name]
    except (KeyError, TypeError):
        raise CompileError(f"unknown {what} {name!r}; choose from: {', '.join(table)}") from None


def get_board(name: str) -> Board:
    return _pick(BOARDS, name, "board")


def get_part(name: str) -> Part:
    return _pick(PARTS, name, "part")


def check_tool(tool: str) -> str:
    """The tool's path, or a CompileError naming the Debian packages to install."""
    path = shutil.which(tool)
    if path is None:
        raise CompileError(f"{tool} is not installed; run: apt-get install -y {TOOLS[tool]} "
                           "(or `make toolchains` as root)")  # fmt: skip
    return path


# --------------------------------------------------------------------------------------
# Step 1-2: lower and compile the kernels


@dataclass(frozen=True)
class Lowered:
    program: Program  # the call sequence over the arena
    kernels: Any  # IRModule of the PrimFuncs, with global symbols


def lower(onnx_path: Path, shape, core: Core) -> Lowered:
    """ONNX -> Relax -> TVM's CPU passes up to the static memory plan, single-threaded.

    TVM's default CPU lowering applies no schedule (so no parallel loops, no thread pool
    calls); our x86/ARM conv schedule parallelises and is not used here."""
    import tvm
    from tvm import relax, tirx
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from .pipeline import import_onnx

    target = tvm.target.Target(dict(core.tvm))
    passes = cpu.library_dispatch_passes(target) + cpu.legalize_passes(target)
    passes += cpu.dataflow_lower_passes(target)
    finalize = [p for p in cpu.finalize_passes(target)
                if p.info.name in ("StaticPlanBlockMemory", "LowerAllocTensor",
                                   "KillAfterLastUse", "LowerRuntimeBuiltin")]  # fmt: skip
    mod = import_onnx(onnx_path, shape)
    with target:
        mod = tvm.transform.Sequential(passes + finalize)(mod)
    program = read_program(mod["main"])
    mod = relax.transform.AttachGlobalSymbol()(mod)
    kernels = tvm.IRModule(
        {gv: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}
    )
    return Lowered(program, kernels)


@dataclass(frozen=True)
class Kernels:
    path: Path  # the object file
    workspace_bytes: int  # the most scratch memory one kernel asks for at once


_WORKSPACE_CALL = re.compile(r"call ptr %[\w.]+\(i32 [^,]+, i32 [^,]+, i64 (\S+), i32")


def workspace_bytes(llvm_ir: str) -> int:
    """The workspace pool a module needs: per kernel, the sum of the scratch buffers it
    asks __TVMBackendAllocWorkspace for (all may be live at once), the largest kernel's.
    Read from the LLVM IR, i.e. from what the compiled code really calls."""
    worst = 0
    for body in llvm_ir.split("\ndefine ")[1:]:
        sizes = [m.group(1) for m in _WORKSPACE_CALL.finditer(body.split("\n}\n", 1)[0])]
        if any(not s.isdigit() for s in sizes):
            raise CompileError("mcu: a kernel asks for a workspace of run-time size; "
                               "the static pool cannot hold it")  # fmt: skip
        worst = max(worst, sum(-(-int(s) // 64) * 64 for s in sizes))
    return worst


def compile_kernels(lowered: Lowered, core: Core, path: Path) -> Kernels:
    """The PrimFuncs as one Thumb-2 object file (TVM's LLVM backend)."""
    import tvm

    target = tvm.target.Target(dict(core.tvm))
    lib = tvm.tirx.build(lowered.kernels, target=target)
    lib.write_to_file(str(path))
    return Kernels(path, workspace_bytes(lib.inspect_source("ll")))


# --------------------------------------------------------------------------------------
# Step 3-5: C, fit, firmware

FIRMWARE_SOURCES = ("startup.c", "semihost.c", "main.c")
LIBRARY_SOURCES = ("mscnn_rt.c",)
CFLAGS = ("-O2", "-g0", "-std=c11", "-Wall", "-Wextra", "-ffunction-sections",
          "-fdata-sections", "-fno-common")  # fmt: skip


def write_c(lowered: Lowered, kernels: Kernels, out: Path) -> tuple[Path, Path]:
    """model.c and model.h in `out`, with the runtime sources the model needs beside."""
    program = lowered.program
    header = out / "model.h"
    source = out / "model.c"
    header.write_text(emit_header(program))
    source.write_text(emit_c(program, kernels.workspace_bytes) + emit_entry(program))
    for name in ("mscnn_rt.h", *LIBRARY_SOURCES):
        shutil.copyfile(FIRMWARE_DIR / name, out / name)
    return source, header


def _run(cmd: list[str], what: str, cwd: Path | None = None, timeout: float = 600):
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CompileError(f"mcu: {what} took longer than {timeout:g} s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-12:]
        raise CompileError(f"mcu: {what} failed (exit {done.returncode}):\n" + "\n".join(tail))
    return done


def compile_library(out: Path, core: Core, kernels: Kernels) -> Path:
    """libmscnn.a: the kernels, model.c and the runtime, for a vendor project to link."""
    gcc = check_tool("arm-none-eabi-gcc")
    objects = []
    for name in ("model.c", *LIBRARY_SOURCES):
        obj = out / (Path(name).stem + ".o")
        _run([gcc, *core.cflags, *CFLAGS, "-I", str(out), "-c", str(out / name), "-o",
              str(obj)], f"compiling {name}")  # fmt: skip
        objects.append(obj)
    library = out / "libmscnn.a"
    library.unlink(missing_ok=True)
    ar = str(Path(gcc).with_name("arm-none-eabi-ar"))
    _run([ar, "rcs", str(library), str(kernels.path), *map(str, objects)], "archiving")
    return library


def link_firmware(out: Path, core: Core, board: Board, library: Path) -> Path:
    """firmware.elf for `board`: deploy/mcu's startup and main.c over the library."""
    gcc = check_tool("arm-none-eabi-gcc")
    objects = []
    for name in FIRMWARE_SOURCES:
        obj = out / f"fw_{Path(name).stem}.o"
        _run([gcc, *core.cflags, *CFLAGS, "-I", str(out), "-I", str(FIRMWARE_DIR), "-c",
              str(FIRMWARE_DIR / name), "-o", str(obj)], f"compiling {name}")  # fmt: skip
        objects.append(str(obj))
    elf = out / "firmware.elf"
    _run([gcc, *core.cflags, "-nostartfiles", "-static", "-L", str(FIRMWARE_DIR),
          "-T", f"{board.name}.ld", "-Wl,--gc-sections", f"-Wl,-Map={out / 'firmware.map'}",
          *objects, str(library), "-lm", "-lc", "-lgcc", "-o", str(elf)],
         f"linking the firmware for {board.name}")  # fmt: skip
    return elf
