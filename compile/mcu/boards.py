"""The Cortex-M cores, the boards qemu emulates for them, and the parts (real chips) a
build is checked against: data, one table each. A core says how TVM compiles for it and
which int8 kernels it has; a board how qemu runs it; a part what memory a product has,
region by region (a linker script's MEMORY lines): the arena is one array, so it must
fit one contiguous RAM region, not the part's RAM in all."""

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
    # What the int8 kernels' TVM target changes of the core's: the M7's the scheduling
    # model (`INT8_SCHEDULE`), the M55's an LLVM option (no low-overhead loops, below)
    int8_llvm: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def target(self, precision: str) -> dict[str, Any]:
        """The TVM target of a build: an fp32 build's kernels fuse each multiply and
        add into one `vfma.f32` (FP_CONTRACT), the int8 build's are integer code, with
        the core's `int8_llvm` changes."""
        if precision == "fp32":
            return {**self.tvm, **FUSED_MULTIPLY_ADD}
        return {**self.tvm, **self.int8_llvm}


@dataclass(frozen=True)
class Board:
    """A board qemu-system-arm emulates, with its linker script in deploy/mcu/."""

    name: str
    core: str
    qemu_machine: str
    flash_bytes: int
    ram_bytes: int
    sysclk_hz: int  # SysTick's processor clock as qemu models it
    flash_base: int = 0x0000_0000  # where its linker script puts FLASH and RAM
    ram_base: int = 0x2000_0000

    @property
    def memory(self) -> Part:
        """The board's own memory as a part: one flash and one RAM region, as its linker
        script (deploy/mcu/<board>.ld) has them."""
        return Part(
            self.name,
            f"board {self.name}",
            self.core,
            (
                Region("FLASH", "flash", self.flash_base, self.flash_bytes),
                Region("RAM", "ram", self.ram_base, self.ram_bytes),
            ),
            self.sysclk_hz,
        )


@dataclass(frozen=True)
class Region:
    """One contiguous block of a part's memory, as its reference manual maps it."""

    name: str
    kind: str  # "flash" or "ram"
    base: int
    size: int


@dataclass(frozen=True)
class PowerFigure:
    """A part's published active current per MHz and supply voltage (and its sleep
    current, where given), with where each came from. `confirmed` is True only when
    every number was read in the source as cited; a figure that could not be confirmed
    is None (no energy is estimated from it), and `provenance` says what was found."""

    active_ua_per_mhz: float | None
    supply_v: float | None
    sleep_ua: float | None
    source: str  # document, revision, section or table
    confirmed: bool
    provenance: str


@dataclass(frozen=True)
class Part:
    """A class of microcontroller a model must fit: its memory regions. The code and
    weights go to the largest flash region; the arena (.bss.mscnn_arena) to the RAM
    region `arena_in` names (default: the largest), the rest of RAM (static data, stack)
    beside it there or in another RAM region."""

    name: str
    description: str
    core: str
    regions: tuple[Region, ...]
    clock_hz: int  # the clock the speed estimate assumes
    arena_in: str | None = None  # the arena's region; None: the largest RAM region
    power: PowerFigure | None = None  # the energy estimate's figures (PowerFigure)

    def _of(self, kind: str) -> tuple[Region, ...]:
        return tuple(r for r in self.regions if r.kind == kind)

    @property
    def ram_regions(self) -> tuple[Region, ...]:
        return self._of("ram")

    @property
    def flash_region(self) -> Region:
        return max(self._of("flash"), key=lambda r: r.size)

    @property
    def arena_region(self) -> Region:
        if self.arena_in is None:
            return max(self.ram_regions, key=lambda r: r.size)
        return next(r for r in self.ram_regions if r.name == self.arena_in)

    @property
    def flash_bytes(self) -> int:
        return sum(r.size for r in self._of("flash"))

    @property
    def ram_bytes(self) -> int:
        return sum(r.size for r in self.ram_regions)


# LLVM contracts a*b+c into a fused multiply-add only when told it may (fp-contract),
# and its Cortex-M4/M7 models mark VFMA slow (`slowfpvfmx`), so without both the fp32
# kernels are vmul.f32 + vadd.f32 pairs: one instruction more per MAC. The fused result
# rounds once instead of twice (docs/microcontrollers.md, "fp32 with fused multiply-add").
FUSED_MULTIPLY_ADD: dict[str, Any] = {"fast-math-contract": True, "mattr": ["-slowfpvfmx"]}


def _thumb(mcpu: str, triple: str = "thumbv7em-none-eabihf") -> dict[str, Any]:
    return {
        "kind": "llvm",
        "mtriple": triple,
        "mcpu": mcpu,
        "mfloat-abi": "hard",
        "opt-level": 2,
    }


# The M7's int8 kernels are compiled with LLVM's Cortex-M4 model: the M7's orders each
# conv's loads for its dual issue (and software-pipelines the loops), which spreads the
# two words of each operand so far apart that LLVM's pass that pairs them into `ldrd`
# (ARMPreAllocLoadStoreOpt: a run of up to 8 adjacent words within 4 instructions each)
# pairs none. Armv7E-M code for the M4 is M7 code; the FPU ops the int8 program has are
# single precision. The cycle estimate still uses the M7's model.
INT8_SCHEDULE = "cortex-m4"

CORES: dict[str, Core] = {
    c.name: c
    for c in (
        Core(
            "cortex-m7",
            "Arm Cortex-M7, FPv5 double-precision FPU, hard float",
            _thumb("cortex-m7"),
            ("-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-d16", "-mfloat-abi=hard"),
            int8_llvm={"mcpu": INT8_SCHEDULE},
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
            # vmlava accumulates into even registers only (r0, r2, ..., r12, lr): a
            # low-overhead loop's `le` holds lr, so a 2 x 4 tile's eighth accumulator
            # spilled; a counted loop (subs, bne) costs one instruction per iteration
            int8_llvm={"cl-opt": ["-disable-arm-loloops"]},
        ),
    )
}

BOARDS: dict[str, Board] = {
    b.name: b
    for b in (
        Board("mps2-an500", "cortex-m7", "mps2-an500", 4 * MiB, 4 * MiB, 25_000_000),
        Board("mps2-an386", "cortex-m4", "mps2-an386", 4 * MiB, 4 * MiB, 25_000_000),
        Board(
            "mps3-an547",
            "cortex-m55",
            "mps3-an547",
            2 * MiB,
            4 * MiB,
            32_000_000,
            flash_base=0x0100_0000,
            ram_base=0x2100_0000,
        ),
    )
}

PARTS: dict[str, Part] = {
    p.name: p
    for p in (
        Part(
            "stm32h7",
            "STM32H743-class Cortex-M7 at 480 MHz (2 MB flash; 992 KB RAM in four blocks, "
            "the largest the 512 KB AXI SRAM)",
            "cortex-m7",
            (
                Region("FLASH", "flash", 0x0800_0000, 2 * MiB),
                Region("DTCM", "ram", 0x2000_0000, 128 * KiB),
                Region("AXI_SRAM", "ram", 0x2400_0000, 512 * KiB),
                Region("SRAM1_3", "ram", 0x3000_0000, 288 * KiB),
                Region("SRAM4", "ram", 0x3800_0000, 64 * KiB),
            ),
            480_000_000,
            power=PowerFigure(
                None,
                None,
                None,
                "STM32H742xI/G STM32H743xI/G datasheet (DS12110), section 6.3.6 "
                "'Supply current characteristics', Run-mode tables",
                False,
                "not confirmed: the Run-mode current tables of DS12110 were not in the "
                "reference material searched (only its Table 21 'Current characteristics', "
                "Rev 5 p. 99, absolute maximum ratings); no figure is used",
            ),
        ),
        Part(
            "nrf52840",
            "nRF52840-class Cortex-M4F at 64 MHz (1 MB flash, 256 KB RAM in one block)",
            "cortex-m4",
            (
                Region("FLASH", "flash", 0x0000_0000, 1 * MiB),
                Region("RAM", "ram", 0x2000_0000, 256 * KiB),
            ),
            64_000_000,
            power=PowerFigure(
                8.1 * 1000 / 64,  # 8.1 mA typical at 64 MHz: 126.6 uA/MHz
                3.0,
                None,
                "nRF52840 Product Specification (docs.nordicsemi.com, current revision), "
                "Electrical specification, 'Compounded', IS0",
                False,
                "an upper bound, not the CPU alone: IS0 is 'CPU running CoreMark from "
                "flash, Radio transmitting @ 0 dBm output power, 1 Mbps BLE mode, Clock = "
                "HFXO, Regulator = DC/DC', 8.1 mA typ., read as published; the CPU-only "
                "table ('CPU running') and the sleep currents were not in the reference "
                "material searched; the 3.0 V supply is the specification's typical "
                "condition, not confirmed there",
            ),
        ),
        Part(
            # A class, not a chip: real M55 parts split their RAM into TCMs and SRAM
            # banks; add one here by its regions before trusting a fit against it.
            "m55-hp",
            "Cortex-M55 application-class MCU at 400 MHz (2 MB flash, 1 MB RAM in one block)",
            "cortex-m55",
            (
                Region("FLASH", "flash", 0x0000_0000, 2 * MiB),
                Region("SRAM", "ram", 0x2000_0000, 1 * MiB),
            ),
            400_000_000,
            power=PowerFigure(
                None,
                None,
                None,
                "none: a class of part, not a chip (e.g. Alif Ensemble RTSS-HP, "
                "Cortex-M55 at up to 400 MHz)",
                False,
                "not confirmed: no Cortex-M55 part's run current per MHz was found in the "
                "reference material searched (Alif's power white paper names the 400 MHz "
                "core without a figure); no figure is used",
            ),
        ),
    )
}

TOOLS = {
    "arm-none-eabi-gcc": "gcc-arm-none-eabi libnewlib-arm-none-eabi",
    "qemu-system-arm": "qemu-system-arm",
    "arm-none-eabi-objdump": "binutils-arm-none-eabi",
    "llvm-mca": "llvm",  # the cycle estimate (compile/mcu/estimate.py)
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
