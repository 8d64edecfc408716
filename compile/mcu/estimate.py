"""Cycles estimated by the core's pipeline model: `llvm-mca -mcpu=<core>` (LLVM's
scheduling model of the Cortex-M4, M7 or M55) on each kernel's innermost loop, read
from the kernels' object code, gives that kernel's cycles per instruction; a build's
estimate is qemu's instruction count of each kernel (the per-kernel profile) times its
ratio, summed, with what runs outside the kernels (the entry point) at one cycle per
instruction.

The innermost loop: the backward branches of the kernel's compute function
(`<kernel>_compute_`) each close a loop; of the loops that hold no other, the one with
the most multiply-accumulate instructions (the conv's reduction body, not the loop that
pads its input), then the longest. A kernel with no loop is timed as its whole body,
straight through. The ratio of that one loop stands for the whole kernel: its padding,
requantization and loop overhead are timed at the reduction's rate.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CompileError
from .boards import TOOLS

log = logging.getLogger(__name__)

METHOD = "llvm-mca (LLVM {version}) -mcpu={cpu} on each kernel's innermost loop"
ITERATIONS = 100
_LINE = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*?)\s*$")
_FUNCTION = re.compile(r"^[0-9a-f]+ <([^>]+)>:$")
_TARGET = re.compile(r"\b([0-9a-f]+) <[^>]*>")
_BRANCH = re.compile(r"^(b|bl|cb|cbz|cbnz|le|letp|wls|wlstp|dls|dlstp)")
_CONDITION = re.compile(r"(eq|ne|cs|hs|cc|lo|mi|pl|vs|vc|hi|ls|ge|lt|gt|le|al)(?=$|[.])")
_MAC = re.compile(r"^(smla|smua|smlal|mla|vmla|vfma|vmul|vdot|sdot)")  # multiply-accumulates
_MCA = re.compile(r"^(Instructions|Total Cycles):\s+(\d+)$", re.M)


@dataclass(frozen=True)
class Loop:
    """A kernel's timed instructions (assembly text, one a line) and what llvm-mca said."""

    function: str
    lines: tuple[str, ...]  # the loop body, branch targets written as .Lloop
    instructions: int = 0  # llvm-mca's count over its iterations
    cycles: int = 0  # llvm-mca's total cycles over them

    @property
    def cycles_per_instruction(self) -> float:
        return self.cycles / self.instructions


def functions(disassembly: str) -> dict[str, list[tuple[int, str, str]]]:
    """objdump -d's text as {function: [(address, mnemonic, operands)]}."""
    out: dict[str, list[tuple[int, str, str]]] = {}
    current: list[tuple[int, str, str]] | None = None
    for line in disassembly.splitlines():
        head = _FUNCTION.match(line.strip())
        if head:
            current = out.setdefault(head[1], [])
            continue
        m = _LINE.match(line)
        if m and current is not None and not m[2].startswith("."):
            current.append((int(m[1], 16), m[2], m[3].split("@", 1)[0].strip()))
    return out


def innermost_loop(body: Sequence[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    """The largest loop that holds no other (see the module), or the whole body."""
    loops = []
    for i, (address, mnemonic, operands) in enumerate(body):
        target = _TARGET.search(operands)
        if _BRANCH.match(mnemonic) and target and int(target[1], 16) <= address:
            start = next((j for j, x in enumerate(body) if x[0] == int(target[1], 16)), None)
            if start is not None:
                loops.append((start, i))
    inner = [
        (a, b)
        for a, b in loops
        if not any((c, d) != (a, b) and a <= c and d <= b for c, d in loops)
    ]
    if not inner:
        return list(body)

    def weight(ab: tuple[int, int]) -> tuple[int, int]:  # the MAC loop, then the longest
        macs = sum(bool(_MAC.match(m)) for _, m, _ in body[ab[0] : ab[1] + 1])
        return macs, ab[1] - ab[0]

    a, b = max(inner, key=weight)
    return list(body[a : b + 1])


def _holds(loop: tuple[int, int], other: tuple[int, int]) -> bool:
    return other != loop and loop[0] <= other[0] and other[1] <= loop[1]


def _tool(name: str) -> str:
    """The tool's path, or a CompileError naming the Debian package to install."""
    path = shutil.which(name)
    if path is None:
        raise CompileError(
            f"{name} is not installed; run: apt-get install -y {TOOLS[name]} "
            "(or `make toolchains` as root)"
        )
    return path


def assembly(instructions: Sequence[tuple[int, str, str]]) -> tuple[str, ...]:
    """Instructions as llvm-mca reads them: every branch target the loop's label, IT
    (if-then) markers left out and the instructions they predicate written without
    their condition (llvm-mca models neither; a Cortex-M issues a predicated instruction
    whether or not it passes), no .w/.n width suffix (the assembler picks the same
    encoding; LLVM 14's llvm-mca crashes on `ldr.w rX, [rY, #n]!`)."""
    out, predicated = [], 0
    for _, mnemonic, operands in instructions:
        if re.fullmatch(r"it[te]{0,3}", mnemonic):
            predicated = len(mnemonic) - 1
            continue
        base = re.sub(r"[.][wn]$", "", mnemonic)
        if predicated:
            base, predicated = _CONDITION.sub("", base), predicated - 1
        out.append(f"{base} {_TARGET.sub('.Lloop', operands)}".strip())
    return tuple(out)


def llvm_mca(lines: Sequence[str], tvm_target: Mapping[str, Any]) -> tuple[int, int]:
    """(instructions, total cycles) llvm-mca reports for `lines` as a loop of
    ITERATIONS iterations on the target's core."""
    text = ".Lloop:\n" + "\n".join(lines) + "\n"
    cmd = [
        _tool("llvm-mca"),
        f"-mtriple={tvm_target['mtriple']}",
        f"-mcpu={tvm_target['mcpu']}",
        f"-iterations={ITERATIONS}",
    ]
    done = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=120)
    found = dict(_MCA.findall(done.stdout))
    complete = len(found) == 2 and int(found["Instructions"]) == len(lines) * ITERATIONS
    if done.returncode != 0 or not complete:  # (llvm-mca skips lines it cannot parse)
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise CompileError("mcu: llvm-mca failed on a kernel's loop: " + " / ".join(tail))
    return int(found["Instructions"]), int(found["Total Cycles"])


def kernel_loops(kernels_o: Path, names: Sequence[str], tvm_target) -> dict[str, Loop]:
    """Each named kernel's innermost loop in the object file, timed by llvm-mca."""
    objdump = _tool("arm-none-eabi-objdump")
    done = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", str(kernels_o)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    bodies = functions(done.stdout)
    out = {}
    for name in dict.fromkeys(names):
        function = next((f for f in (f"{name}_compute_", f"__tvm_ffi_{name}") if f in bodies), None)
        if function is None or not bodies[function]:
            continue
        lines = assembly(innermost_loop(bodies[function]))
        try:
            out[name] = Loop(function, lines, *llvm_mca(lines, tvm_target))
        except CompileError as exc:  # that kernel untimed (one cycle each), not the build
            log.warning("%s (kernel %s)", exc, name)
    return out


def estimate_cycles(total_instructions: int, profile: Sequence[tuple[int, float | None]]) -> float:
    """The cycle estimate: each kernel's (instructions, cycles per instruction) summed,
    what the profile does not cover (or llvm-mca could not time) at one per cycle."""
    covered = sum(n for n, _ in profile)
    return sum(n * (1.0 if cpi is None else cpi) for n, cpi in profile) + max(
        0, total_instructions - covered
    )


def method(tvm_target: Mapping[str, Any]) -> str:
    """The method's name, with llvm-mca's LLVM version and the core."""
    done = subprocess.run([_tool("llvm-mca"), "--version"], capture_output=True, text=True)
    version = re.search(r"LLVM version (\d+(?:\.\d+)*)", done.stdout)
    return METHOD.format(version=version[1] if version else "?", cpu=tvm_target["mcpu"])
