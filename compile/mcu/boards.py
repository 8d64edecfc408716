"""The Cortex-M cores, the boards qemu emulates for them, and the parts (real chips) a
build is checked against: data, one table each. A core says how TVM compiles for it and
which int8 kernels it has; a board how qemu runs it; a part how much flash and RAM a
product has."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import CompileError

KiB, MiB = 1024, 1024 * 1024


@dataclass(frozen=True)
class Core:
    """A Cortex-M core: the TVM target its kernels are built for and the matching
    arm-none-eabi-gcc flags (the float ABI and FPU must agree, or the link refuses)."""

    name: str
    description: str
    tvm: Mapping[str, Any]
    cflags: tuple[str, ...]
    # int8 kernels (compile/int8/kernels.py ISAS) by how the weights sit in flash; the first is
    # the default: smlad reads int16 pairs, sxtb16 widens int8 ones, Helium takes int8.
    int8: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: {"int16": "dsp", "int8": "dsp-int8w"}
    )


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


def _thumb(mcpu: str, triple: str = "thumbv7em-none-eabihf") -> dict[str, Any]:
    return {
        "kind": "llvm",
        "mtriple": triple,
        "mcpu": mcpu,
        "mfloat-abi": "hard",
        "opt-level": 2,
    }


CORES: dict[str, Core] = {
    c.name: c
    for c in (
        Core(
            "cortex-m7",
            "Arm Cortex-M7, FPv5 double-precision FPU, hard float",
            _thumb("cortex-m7"),
            ("-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-d16", "-mfloat-abi=hard"),
        ),
        Core(
            "cortex-m4",
            "Arm Cortex-M4F, FPv4 single-precision FPU, hard float",
            _thumb("cortex-m4"),
            ("-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"),
        ),
        Core(
            "cortex-m55",
            "Arm Cortex-M55, Helium (MVE) with floating point, hard float",
            _thumb("cortex-m55", "thumbv8.1m.main-none-eabihf"),
            ("-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard"),
            {"int8": "mve", "int16": "dsp"},
        ),
    )
}

BOARDS: dict[str, Board] = {
    b.name: b
    for b in (
        Board("mps2-an500", "cortex-m7", "mps2-an500", 4 * MiB, 4 * MiB, 25_000_000),
        Board("mps2-an386", "cortex-m4", "mps2-an386", 4 * MiB, 4 * MiB, 25_000_000),
        Board("mps3-an547", "cortex-m55", "mps3-an547", 2 * MiB, 4 * MiB, 32_000_000),
    )
}

PARTS: dict[str, Part] = {
    p.name: p
    for p in (
        Part(
            "stm32h7",
            "STM32H7-class Cortex-M7 at 480 MHz (2 MB flash, 1 MB RAM)",
            "cortex-m7",
            2 * MiB,
            1 * MiB,
            480_000_000,
        ),
        Part(
            "nrf52840",
            "nRF52840-class Cortex-M4F at 64 MHz (1 MB flash, 256 KB RAM)",
            "cortex-m4",
            1 * MiB,
            256 * KiB,
            64_000_000,
        ),
        Part(
            "m55-hp",
            "Cortex-M55 application-class MCU at 400 MHz (2 MB flash, 1 MB RAM)",
            "cortex-m55",
            2 * MiB,
            1 * MiB,
            400_000_000,
        ),
    )
}

TOOLS = {
    "arm-none-eabi-gcc": "gcc-arm-none-eabi libnewlib-arm-none-eabi",
    "qemu-system-arm": "qemu-system-arm",
}


def _pick(table: Mapping[str, Any], name: str, what: str):
    try:
        return table[name]
    except (KeyError, TypeError):
        raise CompileError(f"unknown {what} {name!r}; choose from: {', '.join(table)}") from None


def get_board(name: str) -> Board:
    return _pick(BOARDS, name, "board")


def get_part(name: str) -> Part:
    return _pick(PARTS, name, "part")
