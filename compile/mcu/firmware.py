"""Cortex-M targets: the model as object code plus a generated C entry point, proven
under qemu-system-arm.

    Step 1. Lower     ONNX -> Relax -> TVM's CPU passes (single-threaded: no schedule
                      that parallelises) -> the memory plan (compile/mcu/aot.py reads it);
                      int8: our integer program (compile/int8/kernels.py, or the stream step of
                      compile/int8/step.py) -> the same memory plan
    Step 2. Kernels   the PrimFuncs compiled by TVM's LLVM backend for the Thumb-2 core
                      into one object file (packed calling convention without its
                      argument asserts, hard float)
    Step 3. C         model.c / model.h: the arena, the weights as const arrays, the
                      kernels called in order (compile/mcu/aot.py)
    Step 4. Fit       the footprint placed in the part's memory regions before linking
                      (the arena, one array, in one RAM region): a model that does not
                      fit is refused with the numbers; the report says, per part of
                      PARTS, whether the linked firmware fits and why not
    Step 5. Firmware  startup, linker script, main.c (deploy/mcu/) linked with
                      arm-none-eabi-gcc and newlib (libm for expf/logf, nothing that
                      needs a heap or syscalls)
    Step 6. Proof     run under qemu-system-arm on golden inputs over semihosting;
                      parity against PyTorch with the one tolerance table (int8: bit
                      for bit against the int8 reference), the detector's beats;
                      the firmware's own R-peaks (deploy/mcu/rpeaks.c) against the
                      reference rule's; instructions counted (-icount), stack painted;
                      the per-kernel profile (firmware-profile.elf, SysTick marks) and
                      llvm-mca's cycle estimate (compile/mcu/estimate.py);
                      the report (mcu.json) typed by deploy.manifest.McuReport

Cores, boards and parts are data (compile/mcu/boards.py). A window model or a streaming
step (`hop`) gets the same treatment; docs/microcontrollers.md has the figures.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploy.describe import MCU_REPORT
from deploy.manifest import (
    MCU_PRECISIONS,
    McuEnergy,
    McuKernel,
    McuReport,
    McuSample,
    PartFit,
    StreamFacts,
)
from deploy.manifest import McuFootprint as Footprint
from deploy.manifest import McuSpeed as Speed
from deploy.resample import RatePair
from deploy.rpeaks import RPeakRule, detect_rpeaks

from ..bundles.common import verdict
from ..errors import CompileError, ParityError
from . import rates
from .aot import (
    Kernels,
    Lowered,
    compile_kernels,
    emit_c,
    emit_entry,
    emit_header,
    emit_stream_entry,
    emit_stream_header,
    kernel_macs,
    lower,
    lower_module,
)
from .boards import (
    BOARDS,
    CORES,
    PARTS,
    TOOLS,
    Board,
    Core,
    KiB,
    Part,
    PowerFigure,
    get_board,
    get_part,
)
from .estimate import estimate_cycles, kernel_loops, method

log = logging.getLogger(__name__)

FIRMWARE_DIR = Path(__file__).resolve().parents[2] / "deploy" / "mcu"


def check_tool(tool: str) -> str:
    """The tool's path, or a CompileError naming the Debian packages to install."""
    path = shutil.which(tool)
    if path is None:
        raise CompileError(
            f"{tool} is not installed; run: apt-get install -y {TOOLS[tool]} "
            "(or `make toolchains` as root)"
        )
    return path


# --------------------------------------------------------------------------------------
# Step 3-5: C, fit, firmware

FIRMWARE_SOURCES = ("startup.c", "semihost.c")  # and main.c or stream_main.c
PROFILE_SOURCE = "profile.c"  # the proof firmware's per-kernel profile (not packaged)
LIBRARY_SOURCES = ("mscnn_rt.c", "rpeaks.c")
LIBRARY_HEADERS = ("mscnn_rt.h", "rpeaks.h")
SAMPLE = "sample.f32"  # the first real record, as the example firmware reads it
CFLAGS = (
    "-O2",
    "-g0",
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-ffunction-sections",
    "-fdata-sections",
    "-fno-common",
)


def write_c(
    lowered: Lowered,
    kernels: Kernels,
    out: Path,
    stream: StreamFacts | None = None,
    fs: int = 500,
    rule: RPeakRule | None = None,
):
    """model.c and model.h in `out` (a window model's entry points, or a stream step's
    when `stream` is given; the input's rate `fs` and, for the detector, its R-peak
    `rule`), with the runtime sources the model needs beside."""
    program = lowered.program
    header = out / "model.h"
    source = out / "model.c"
    if stream is None:
        header.write_text(emit_header(program, fs, rule))
        entry = emit_entry(program)
    else:
        header.write_text(emit_stream_header(program, stream, fs, rule))
        entry = emit_stream_entry(program)
    source.write_text(emit_c(program, kernels.workspace_bytes) + entry)
    for name in (*LIBRARY_HEADERS, *LIBRARY_SOURCES):
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
        _run(
            [gcc, *core.cflags, *CFLAGS, "-I", str(out), "-c", str(out / name), "-o", str(obj)],
            f"compiling {name}",
        )
        objects.append(obj)
    library = out / "libmscnn.a"
    library.unlink(missing_ok=True)
    ar = str(Path(gcc).with_name("arm-none-eabi-ar"))
    _run([ar, "rcs", str(library), str(kernels.path), *map(str, objects)], "archiving")
    return library


def link_firmware(
    out: Path,
    core: Core,
    board: Board,
    library: Path,
    main: str = "main.c",
    pair: RatePair | None = None,
    profile: bool = False,
):
    """firmware.elf for `board`: deploy/mcu's startup and `main` (main.c for a window
    model, stream_main.c for a stream step) over the library; with the sensor-to-model
    rate `pair`, a stream firmware that resamples (resample_taps.h written in `out`);
    with `profile`, firmware-profile.elf, which also prints the per-kernel profile
    (MSCNN_PROFILE: model.c recompiled with its marks, profile.c)."""
    gcc = check_tool("arm-none-eabi-gcc")
    objects, prefix = [], "fwp" if profile else "fw"
    extra = rates.firmware_sources(out, pair)  # none without resampling
    sources = [FIRMWARE_DIR / n for n in (*FIRMWARE_SOURCES, *extra, main)]
    if profile:  # model.c again, with the profile's marks
        sources += [FIRMWARE_DIR / PROFILE_SOURCE, out / "model.c"]
    for source in sources:
        obj = out / f"{prefix}_{source.stem}.o"
        flags = [*core.cflags, *CFLAGS, *(["-DMSCNN_PROFILE"] if profile else [])]
        flags += ["-DMSCNN_RESAMPLE"] if extra else []
        flags += ["-I", str(out), "-I", str(FIRMWARE_DIR)]
        _run([gcc, *flags, "-c", str(source), "-o", str(obj)], f"compiling {source.name}")
        objects.append(str(obj))
    elf = out / ("firmware-profile.elf" if profile else "firmware.elf")
    _run(
        [
            gcc,
            *core.cflags,
            "-nostartfiles",
            "-static",
            "-L",
            str(FIRMWARE_DIR),
            "-T",
            f"{board.name}.ld",
            f"-Wl,--defsym=__stack_size={STACK_BYTES}",
            "-Wl,--gc-sections",
            f"-Wl,-Map={elf.with_suffix('.map')}",
            *objects,
            str(library),
            "-lm",
            "-lc",
            "-lgcc",
            "-o",
            str(elf),
        ],
        f"linking the firmware for {board.name}",
    )
    return elf


# --------------------------------------------------------------------------------------
# Step 4: footprint and fit


def section_sizes(elf: Path) -> dict[str, int]:
    size = str(Path(check_tool("arm-none-eabi-gcc")).with_name("arm-none-eabi-size"))
    done = _run([size, "-A", str(elf)], "reading section sizes")
    sizes = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes


def footprint_of(elf: Path, stack_peak: int | None = None) -> Footprint:
    s = section_sizes(elf)
    flash_code = sum(s.get(k, 0) for k in (".isr_vector", ".text", ".ARM.exidx", ".data"))
    return Footprint(
        flash_code,
        s.get(".weights", 0),
        s.get(".arena", 0),
        s.get(".data", 0) + s.get(".bss", 0),
        s.get(".stack", 0),
        stack_peak,
    )


def place(footprint: Footprint, part: Part) -> PartFit:
    """Where `footprint` goes in `part`'s memory, and whether it fits: code and weights in
    its largest flash region; the arena, one array, in its arena region (the largest RAM
    region unless the part names one); static data and the stack beside the arena there,
    or in another RAM region. A total that fits says nothing: an STM32H743's 992 KB of
    RAM is four blocks, the largest 512 KB."""
    flash, arena = part.flash_region, part.arena_region
    rest = footprint.ram_static + footprint.stack_reserved
    beside = arena.size - footprint.ram_arena
    room = max([beside, *(r.size for r in part.ram_regions if r != arena)])
    largest = " (its largest RAM region)" if part.arena_in is None else ""
    why = []
    if footprint.flash > flash.size:
        why.append(
            f"code and weights need {_kib(footprint.flash)} of flash "
            f"({_parts(code=footprint.flash_code, weights=footprint.flash_weights)}), "
            f"{flash.name} holds {_kib(flash.size)}"
        )
    if footprint.ram_arena > arena.size:
        why.append(
            f"the arena needs {_kib(footprint.ram_arena)} in one block, {arena.name} at "
            f"0x{arena.base:08x}{largest} holds {_kib(arena.size)}"
        )
    elif rest > room:
        why.append(
            f"static data and stack ({_kib(rest)}) fit neither beside the arena in "
            f"{arena.name} ({_kib(beside)} left) nor in another RAM region"
        )
    return PartFit(
        not why,
        round(footprint.flash / part.flash_bytes, 3),
        round(footprint.ram / part.ram_bytes, 3),
        arena.name,
        arena.size,
        round(footprint.ram_arena / arena.size, 3),
        "; ".join(why) or None,
    )


def check_fit(footprint: Footprint, budget: Part, what: str) -> None:
    """Refuse a model that does not fit `budget` (a part, or a board's own memory),
    naming every number."""
    fit = place(footprint, budget)
    if fit.fits:
        return
    ram_parts = _parts(
        arena=footprint.ram_arena, static=footprint.ram_static, stack=footprint.stack_reserved
    )
    raise CompileError(
        f"{what} does not fit {budget.description}: {fit.why}; in all it needs "
        f"{_kib(footprint.flash)} flash of {_kib(budget.flash_bytes)} and "
        f"{_kib(footprint.ram)} RAM ({ram_parts}) of {_kib(budget.ram_bytes)}; use int8 "
        "(precision int8), a shorter window (samples) or a part with more memory"
    )


def _parts(**sizes: int) -> str:
    return " + ".join(f"{_kib(v)} {k}" for k, v in sizes.items() if v) or "nothing"


def fit_table(footprint: Footprint) -> dict[str, PartFit]:
    """Whether the measured footprint fits each part of PARTS, region by region (`place`)."""
    return {p.name: place(footprint, p) for p in PARTS.values()}


def _kib(n: int) -> str:
    return f"{n / KiB:,.1f} KiB"


def library_footprint(library: Path, stack: int) -> Footprint:
    """The footprint of the model library alone, before any firmware is linked: its
    objects' text (code, weights) and data/bss (arena), plus the stack reserve."""
    size = str(Path(check_tool("arm-none-eabi-gcc")).with_name("arm-none-eabi-size"))
    done = _run([size, "-A", str(library)], "reading the library's sizes")
    sums: dict[str, int] = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            sums[parts[0]] = sums.get(parts[0], 0) + int(parts[1])
    weights = sum(v for k, v in sums.items() if k.startswith(".rodata.mscnn_weights"))
    arena = sum(v for k, v in sums.items() if k.startswith(".bss.mscnn_arena"))
    code = sum(v for k, v in sums.items() if k.startswith((".text", ".rodata")))
    static = sum(v for k, v in sums.items() if k.startswith((".data", ".bss")))
    return Footprint(code - weights, weights, arena, static - arena, stack)


# --------------------------------------------------------------------------------------
# Step 6: run under qemu-system-arm

_RUN_LINE = re.compile(r"mscnn run index=(\d+) rc=(\d+)(?: ticks=(\d+) ticks_hi=(\d+))?")
_CALIBRATION = re.compile(r"mscnn calibration instructions=(\d+) ticks=(\d+)")
_DONE = re.compile(r"mscnn done records=(\d+) stack_peak=(\d+) stack_size=(\d+)")
_BEAT = re.compile(r"mscnn beat(?: record=(\d+))? sample=(\d+)")
_PROFILE = re.compile(r"mscnn profile call=(\d+) ticks=(\d+)")


@dataclass(frozen=True)
class QemuRun:
    """What the example firmware reported for one file of records."""

    status: int  # the firmware's exit status: 0, or the first failing MSCNN_E_* code
    codes: tuple[int, ...]  # per record
    outputs: np.ndarray  # (records, output values) float32, for the records that ran
    instructions: tuple[int, ...]  # per record (a stream: per step), qemu's count
    stack_peak: int | None
    log: str
    peak_step_instructions: int | None = None  # a stream: its slowest step
    # the detector's firmware: the R-peaks it printed, per record (deploy/mcu/rpeaks.c)
    beats: tuple[tuple[int, ...], ...] | None = None
    # the profile: instructions of each kernel call per record (a stream: per step)
    profile: tuple[float, ...] | None = None


def parse_beats(log: str, records: int) -> tuple[tuple[int, ...], ...] | None:
    """The beats a detector's firmware printed ("mscnn beat [record=i] sample=s"), per
    record; None when it printed none at all (a model without the R-peak rule)."""
    found = [(int(r or 0), int(s)) for r, s in _BEAT.findall(log)]
    if not found and "beats=" not in log:
        return None
    return tuple(tuple(s for r, s in found if r == k) for k in range(records))


def run_firmware(
    elf: Path, board: Board, inputs: np.ndarray, workdir: Path, timeout: float = 600
) -> QemuRun:
    """Run firmware.elf under qemu on `inputs` (records, samples) float32 (written as one
    file, as the firmware reads it) and collect what it wrote and printed."""
    qemu = check_tool("qemu-system-arm")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "input.f32").write_bytes(np.ascontiguousarray(inputs, "<f4").tobytes())
    (workdir / "output.f32").unlink(missing_ok=True)
    cmd = [
        qemu,
        "-M",
        board.qemu_machine,
        "-nographic",
        "-monitor",
        "none",
        "-semihosting-config",
        "enable=on,target=native",
        "-icount",
        "shift=0",
        "-kernel",
        str(elf.resolve()),
    ]
    try:
        done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CompileError(f"mcu: the firmware ran longer than {timeout:g} s under qemu") from None
    return _parse_run(done.returncode, done.stdout + done.stderr, workdir)


def _parse_run(status: int, log: str, workdir: Path) -> QemuRun:
    runs = [m.groups() for m in _RUN_LINE.finditer(log)]
    calibration, done = _CALIBRATION.search(log), _DONE.search(log)
    per_tick = int(calibration[1]) / int(calibration[2]) if calibration else None
    ticks = [int(t) + (int(hi) << 32) for _, rc, t, hi in runs if t is not None and rc == "0"]
    output = workdir / "output.f32"
    values = np.fromfile(output, dtype="<f4") if output.exists() else np.zeros(0, "<f4")
    ok = sum(rc == "0" for _, rc, _, _ in runs)
    ticks_per_call = [int(t) for _, t in _PROFILE.findall(log)]
    profile = None
    if per_tick and ticks_per_call and ok:
        profile = tuple(t * per_tick / ok for t in ticks_per_call)
    return QemuRun(
        status,
        tuple(int(rc) for _, rc, _, _ in runs),
        values.reshape(ok, -1) if ok else np.zeros((0, 0), "<f4"),
        tuple(round(t * per_tick) for t in ticks) if per_tick else (),
        int(done[2]) if done else None,
        log,
        beats=parse_beats(log, ok),
        profile=profile,
    )


_STREAM_LINE = re.compile(
    r"mscnn stream steps=(\d+) rc=(\d+) ticks=(\d+) ticks_hi=(\d+) hop_ticks_max=(\d+)"
)


def run_stream_firmware(
    elf: Path, board: Board, record: np.ndarray, workdir: Path, timeout: float = 600
) -> QemuRun:
    """Stream one record (leads, samples) float32 through a stream firmware under qemu;
    the outputs are the record's frames, frame-major (one row), the instructions those
    of one step on average."""
    run = run_firmware(elf, board, np.asarray(record)[None], workdir, timeout)
    line = _STREAM_LINE.search(run.log)
    calibration = _CALIBRATION.search(run.log)
    if line is None or calibration is None:
        return dataclasses.replace(run, codes=(), outputs=np.zeros((0, 0), "<f4"))
    steps, rc, ticks, hi, worst = (int(v) for v in line.groups())
    per_tick = int(calibration[1]) / int(calibration[2])
    values = np.fromfile(workdir / "output.f32", dtype="<f4")
    ticks_per_call = [int(t) for _, t in _PROFILE.findall(run.log)]
    return dataclasses.replace(
        run,
        codes=(rc,),
        outputs=values[None] if rc == 0 else np.zeros((0, 0), "<f4"),
        instructions=(round((ticks + (hi << 32)) * per_tick / steps),),
        peak_step_instructions=round(worst * per_tick),
        beats=parse_beats(run.log, 1),
        profile=tuple(t * per_tick / steps for t in ticks_per_call) or None,
    )


# --------------------------------------------------------------------------------------
# The build

STATES_FROM = 2  # a stream step's (x, n_valid, *states) -> (frames, valid, *next states)
STACK_BYTES = 16 * KiB  # the firmware's stack reserve; the measured peak is far below
REPORT = MCU_REPORT  # deploy/describe.py reads it


@dataclass(frozen=True)
class McuBuild:
    """A model built for a Cortex-M board and proven under qemu: its folder (model.c,
    model.h, libmscnn.a, firmware.elf, mcu.json, qemu/) and its report, whose fields
    (board, core, footprint, speed, parity, fits, ...) read as the build's own."""

    folder: Path
    report: McuReport

    def __getattr__(self, name: str) -> Any:
        report = self.__dict__.get("report")
        if report is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(report, name)

    @property
    def library(self) -> Path:
        return self.folder / "libmscnn.a"

    @property
    def firmware(self) -> Path:
        return self.folder / "firmware.elf"


def build_mcu(
    loaded,
    board: str,
    out_dir: Path,
    *,
    samples: int = 5000,
    hop: int | None = None,
    part: str | None = None,
    records: int = 3,
    seed: int = 0,
    precision: str = "fp32",
    weights: str | None = None,
    input_fs: int | None = None,
) -> McuBuild:
    """Build `loaded` (an mscnn.LoadedModel, or a model in eval mode) for `board` into
    `out_dir`: the window model at `samples`, or with `hop` the streaming step (records
    of `samples` streamed hop by hop). Proves it under qemu on golden inputs and
    `records` real records and returns the figures. A model that does not fit `part`
    (default: the board's own memory) is refused before linking; a parity failure
    raises ParityError after the report (mcu.json) is written. `precision` "int8"
    builds the model (window, or stream step) quantized with our integer kernels, judged
    bit for bit against the int8 reference; `weights` ("int16", "int8", or None for the
    core's default) says how flash stores them, and so which kernels (Core.int8).
    `input_fs`: a stream firmware for a sensor at that rate (rates.py)."""
    b, (model, fs, leads) = get_board(board), _model_facts(loaded)
    core, budget, pair = CORES[b.core], _budget(b, part), rates.input_pair(input_fs, fs, hop)
    _refuse_recurrent(model, fs, get_part(part or _part_for(b.core)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mode = f"stream hop {hop}" if hop else f"window {samples}"
    log.info("mcu: %s, %s, %s, for %s", type(model).__name__, mode, precision, b.name)
    weights = weights or next(iter(core.int8))
    qm, isa = _quantized(model, leads, precision, weights, core)
    inputs, expected = _golden(model, leads, samples, fs, records, seed, qm, pair)
    rule = rpeak_rule(model, fs)
    built = _build_library(model, core, samples, out, budget, hop, qm, isa, fs, rule)
    library, facts, lowered = built
    elf = link_firmware(out, core, b, library, "stream_main.c" if hop else "main.c", pair)
    check_fit(footprint_of(elf), budget, "the firmware")
    run = _prove(elf, b, inputs, out / "qemu", hop is not None)
    judged = _judge(model, run, inputs, expected, fs, samples, hop is not None, precision, pair)
    parity, beats, own_beats, sample = judged
    footprint = footprint_of(elf, run.stack_peak)
    clocked = get_part(part or _part_for(b.core))  # the part whose clock the speed assumes
    speed = _speed(run, clocked.clock_hz, (hop or samples) / fs)
    profile, speed = _profile(
        out, b, library, lowered, next(iter(inputs.values())), hop, speed, pair
    )
    fits = _fits(footprint, core)
    _write_sample(out, inputs, sample)
    report = McuReport(
        b.name, core.name, precision, weights if precision == "int8" else None, samples, hop,
        facts, footprint, speed, verdict(parity, f"qemu-system-arm -M {b.qemu_machine}"),
        beats, fits, fs, own_beats, sample, pair.fs_in if pair else None, profile,
        energy_of(speed, clocked),
    )  # fmt: skip
    (out / REPORT).write_text(report.to_json())
    _raise_unless_equal(parity, beats, own_beats, out / REPORT)
    return McuBuild(out, report)


def energy_of(speed: Speed, part: Part) -> McuEnergy:
    """The energy estimate at `part`'s clock: the cycle estimate per second of ECG (or,
    without one, the instructions at one per cycle) with the part's power figures
    (boards.PowerFigure); the figures' absence leaves the energy None in the report."""
    power = part.power or PowerFigure(None, None, None, "none", False, "no figure for this part")
    cycles, basis = speed.cycles, "llvm-mca"
    if cycles is None:
        cycles, basis = speed.instructions, "instructions"
    return McuEnergy(
        part.name, part.clock_hz, cycles / speed.window_seconds, basis,
        power.active_ua_per_mhz, power.supply_v, power.sleep_ua,
        power.source, power.confirmed, power.provenance,
    )  # fmt: skip


def _speed(run, clock_hz: int, seconds: float) -> Speed:
    """The firmware's instructions per counted run (a window, or one hop: `seconds` of
    ECG) against the part's clock."""
    return Speed(
        int(np.median(run.instructions or [0])), seconds, clock_hz, run.peak_step_instructions
    )


def _raise_unless_equal(parity, beats, own_beats, report: Path) -> None:
    if not parity.passed or beats is False or own_beats is False:
        raise ParityError(
            f"mcu: the firmware under qemu disagrees with its reference: {parity}"
            f"; beats equal: {beats}, the firmware's own beats equal: {own_beats} "
            f"(see {report})"
        )


def _profile(
    out: Path, board: Board, library: Path, lowered: Lowered, x, hop, speed: Speed, pair=None
):
    """(The per-kernel profile, the speed with its cycle estimate): each kernel call's
    instructions (firmware-profile.elf's SysTick marks, run on the first golden input
    `x`), MACs (the int8 convs) and llvm-mca's cycles per instruction on its innermost
    loop (compile/mcu/estimate.py). firmware.elf, proven and measured, has no marks."""
    core = CORES[board.core]
    main = "stream_main.c" if hop else "main.c"
    elf = link_firmware(out, core, board, library, main, pair, profile=True)
    workdir = out / "qemu-profile"
    if hop:
        run = run_stream_firmware(elf, board, x[0], workdir)
    else:
        run = run_firmware(elf, board, x.reshape(1, -1), workdir)
    calls = lowered.program.calls
    if run.profile is None or len(run.profile) != len(calls):
        log.warning("mcu: the firmware printed no per-kernel profile; none in the report")
        return None, speed
    macs = kernel_macs(lowered)
    loops = kernel_loops(out / "kernels.o", [c.kernel for c in calls], core.tvm)
    profile = tuple(
        McuKernel(
            k, c.kernel, round(n), macs.get(c.kernel),
            round(loops[c.kernel].cycles_per_instruction, 4) if c.kernel in loops else None,
        )
        for k, (c, n) in enumerate(zip(calls, run.profile, strict=True))
    )  # fmt: skip
    pairs = [(k.instructions, k.cycles_per_instruction) for k in profile]
    cycles = round(estimate_cycles(speed.instructions, pairs))
    return profile, dataclasses.replace(speed, cycles=cycles, cycle_method=method(core.tvm))


def _refuse_recurrent(model, fs: int, part: Part) -> None:
    """An LSTM head is refused with what it costs: its multiply-accumulates per second of
    ECG (fp32, one MAC per cycle at best on the core's FPU) against the part's clock, and
    its weights against the part's flash. The recurrence is sequential over frames and a
    bidirectional one cannot stream, so a window must be held in RAM as well."""
    from mscnn.recurrent import LstmSpec

    rnn = getattr(getattr(model, "spec", None), "rnn", None)
    if not isinstance(rnn, LstmSpec):
        return
    frames_per_s = fs / math.prod(block.subsample for block in model.spec.backbone.branches[0])
    macs = rnn.count_macs(1) * frames_per_s
    weights = sum(
        4 * h * (i + h + 2) * rnn.directions * 4 for i, h in rnn.layer_sizes()
    )  # fp32 bytes, both biases
    flash = part.flash_region.size
    raise CompileError(
        f"mcu: the LSTM head ({'bi' if rnn.bidirectional else 'uni'}directional, hidden "
        f"{list(rnn.hidden_sizes)}) costs {macs / 1e6:.1f} M MAC per second of ECG "
        f"({100 * macs / part.clock_hz:.0f}% of {part.name}'s {part.clock_hz / 1e6:.0f} MHz at "
        f"one fp32 MAC per cycle, before the backbone) and {weights / 2**20:.2f} MiB of fp32 "
        f"weights ({100 * weights / flash:.0f}% of its {flash / 2**20:.0f} MiB flash); "
        "Cortex-M builds take the CNN heads (rnn none): see docs/microcontrollers.md"
    )


def _model_facts(loaded) -> tuple[Any, int, tuple[str, ...]]:
    """(model, sampling rate, lead names) of an mscnn.LoadedModel, or of a bare model
    (500 Hz, its leads named II)."""
    import mscnn

    if isinstance(loaded, mscnn.LoadedModel):
        return loaded.model, loaded.fs, tuple(loaded.leads)
    return loaded, 500, ("II",) * loaded.in_channels


def _fits(footprint: Footprint, core: Core) -> dict[str, PartFit]:
    """The fit table, with a warning for each part of this core the firmware misses."""
    fits = fit_table(footprint)
    for name, fit in fits.items():
        if not fit.fits and PARTS[name].core == core.name:
            log.warning("mcu: the firmware does not fit %s: %s", PARTS[name].description, fit.why)
    return fits


def _write_sample(out: Path, inputs: dict, sample) -> None:
    """The example's input (a real record, lead-major float32), or none."""
    (out / SAMPLE).unlink(missing_ok=True)
    if sample is not None:
        (out / SAMPLE).write_bytes(np.ascontiguousarray(inputs[sample.record], "<f4").tobytes())


def rpeak_rule(model, fs: int) -> RPeakRule | None:
    """The R-peak rule of a QRS detector (deploy.rpeaks' defaults at its reduction and
    rate), which its firmware runs in C; None for other models."""
    if getattr(model, "task", "") != "qrs_detection":
        return None
    return RPeakRule(reduction=getattr(model, "reduction", 1), fs=fs)


def build_name(core: str, hop: int | None, samples: int, precision: str, weights: str) -> str:
    """A build's folder name, as `make build` and `make package` name them:
    <core>-stream<hop>-<precision> (a window: <core>-window<samples>-<precision>), with
    -<weights>w after an int8 build whose weights are not the core's default."""
    mode = f"stream{hop}" if hop else f"window{samples}"
    name = f"{core}-{mode}-{precision}"
    if precision == "int8" and weights != next(iter(CORES[core].int8)):
        name += f"-{weights}w"
    return name


def _prove(elf: Path, board: Board, inputs: dict, workdir: Path, stream: bool) -> QemuRun:
    """The golden inputs through the firmware: a window firmware takes them all in one
    run; a stream firmware streams each as its own record (one run each, merged)."""
    if not stream:
        return run_firmware(elf, board, np.stack([x.reshape(-1) for x in inputs.values()]), workdir)
    runs = [run_stream_firmware(elf, board, x[0], workdir / name) for name, x in inputs.items()]
    failed = next((r for r in runs if r.status != 0 or not r.codes), None)
    if failed is not None:
        return failed
    width = max(r.outputs.shape[1] for r in runs)
    return QemuRun(
        0,
        tuple(c for r in runs for c in r.codes),
        np.stack([np.pad(r.outputs[0], (0, width - r.outputs.shape[1])) for r in runs]),
        tuple(i for r in runs for i in r.instructions),
        max(r.stack_peak or 0 for r in runs),
        "".join(r.log for r in runs),
        max(r.peak_step_instructions or 0 for r in runs),
        None if any(r.beats is None for r in runs) else tuple(r.beats[0] for r in runs),
        None if any(r.profile is None for r in runs) else _mean(r.profile for r in runs),
    )


def _mean(rows) -> tuple[float, ...]:
    """The per-call figures of several runs, averaged call by call."""
    return tuple(float(v) for v in np.mean(np.array(list(rows), dtype=np.float64), axis=0))


def _part_for(core: str) -> str:
    """The part whose clock a speed estimate assumes when none is named: the first of
    PARTS with the board's core."""
    return next(p.name for p in PARTS.values() if p.core == core)


def _budget(board: Board, part: str | None) -> Part:
    if part is None:
        return board.memory
    p = get_part(part)
    if p.core != board.core:
        raise CompileError(
            f"part {p.name} is a {p.core}, board {board.name} a {board.core}; "
            f"choose a board with a {p.core}: "
            + ", ".join(n for n, x in BOARDS.items() if x.core == p.core)
        )
    return p


def _quantized(model, leads: tuple[str, ...], precision: str, weights: str, core: Core):
    """(The int8 model, calibrated on the real records as the int8 bundles are, and the
    ISA its kernels use), or (None, None) for fp32."""
    from ..int8 import quantize

    if precision not in MCU_PRECISIONS:
        raise CompileError(
            f"mcu: precision {precision!r}; choose from: {', '.join(MCU_PRECISIONS)}"
        )
    if weights not in core.int8:
        raise CompileError(f"mcu: weights {weights!r}; choose from: {', '.join(core.int8)}")
    isa = core.int8[weights]
    if precision == "fp32":
        return None, None
    return quantize.calibrated(model, leads)[0], isa


def _build_library(
    model,
    core: Core,
    samples: int,
    out: Path,
    budget: Part,
    hop: int | None,
    qm=None,
    isa=None,
    fs: int = 500,
    rule: RPeakRule | None = None,
):
    """Steps 1-4: ONNX (the window, or the stream step for `hop`), kernels, C and
    libmscnn.a in `out`, refused as soon as the memory plan shows the model cannot fit
    `budget` (weights and arena alone), and again with the library's real sizes.
    Returns the library and the stream's facts (None for a window)."""
    from ..export import export_onnx

    target = core.target("int8" if qm is not None else "fp32")
    if qm is not None:
        mod, facts = _int8_program(model, qm, core, samples, hop, isa)
        lowered = lower_module(mod, target, STATES_FROM if hop else None)
        what = f"the int8 stream step at a hop of {hop} samples" if hop else "the int8 model"
    elif hop is None:
        onnx_path = export_onnx(model, out / "model.onnx", batch=1, samples=samples)
        what, facts = f"the model at {samples} samples", None
        lowered = lower(onnx_path, target)
    else:
        onnx_path, facts = _export_step(model, hop, out / "step.onnx")
        what = f"the stream step at a hop of {hop} samples"
        lowered = lower(onnx_path, target, STATES_FROM)
    program = lowered.program
    floor = Footprint(0, program.weights_bytes, program.arena_bytes, 0, STACK_BYTES)
    check_fit(floor, budget, f"{what} (memory plan)")
    kernels = compile_kernels(lowered, target, out / "kernels.o")
    write_c(lowered, kernels, out, facts, fs, rule)
    library = compile_library(out, core, kernels)
    check_fit(library_footprint(library, STACK_BYTES), budget, what)
    return library, facts, lowered


def _int8_program(model, qm, core: Core, samples: int, hop: int | None, isa: str):
    """(The int8 Relax program for the core's ISA, the stream's facts or None): the window
    model at `samples`, or the int8 stream step (compile/int8/step.py) for `hop`."""
    from ..int8.kernels import relax_program

    if hop is None:
        return relax_program(qm, core.tvm, samples, isa)[0], None
    from mscnn import MscnnError
    from mscnn.streaming import StepModule

    from ..int8.kernels import register_intrinsics, select_isa
    from ..int8.step import Int8Step, step_module

    try:
        step = Int8Step(StepModule(model, hop), qm)
    except MscnnError as exc:
        raise CompileError(f"mcu: {exc}") from None
    chosen = select_isa(core.tvm, isa)
    register_intrinsics()
    facts = StreamFacts(hop, step.flush_steps, step.delay_frames, step.look_ahead, step.state_bytes)
    return step_module(step, chosen)[0], facts


def _export_step(model, hop: int, path: Path) -> tuple[Path, StreamFacts]:
    """The streaming step (compile/export.py) as ONNX, and its facts from the metadata."""
    import onnx

    from ..export import META, export_step_onnx

    export_step_onnx(model, hop, path)
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    names = ("hop", "flush_steps", "delay_frames", "look_ahead", "state_bytes")
    return path, StreamFacts(*(int(meta[META + n]) for n in names))


def _golden(
    model,
    leads: tuple[str, ...],
    samples: int,
    fs: int,
    records: int,
    seed: int,
    qm=None,
    pair: RatePair | None = None,
):
    """Golden inputs (seeded noise, the synthetic ECG and, for the detector, the first
    `records` CPSC2019 records) and PyTorch's outputs for them (the int8 reference's
    for the int8 model `qm`)."""
    from ..golden import window_cases

    task = getattr(model, "task", "features")
    inputs = window_cases(task, leads, samples, fs, 1, seed, records)
    reference = _reference(model, qm)
    if pair is not None:  # at the sensor's rate, against the Python path (rates.py)
        return rates.at_input_rate(inputs, reference, pair)
    return inputs, {k: reference(x) for k, x in inputs.items()}


def _reference(model, qm=None):
    """The reference outputs of one input (1, leads, samples): PyTorch's, or the int8
    reference's for the int8 model `qm`."""
    import torch

    if qm is not None:
        from ..int8.quantize import run_int8

        return lambda x: run_int8(qm, x)

    def run(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return run


def _judge(
    model,
    run: QemuRun,
    inputs,
    expected,
    fs: int,
    samples: int,
    stream: bool,
    precision="fp32",
    pair=None,
):
    """(worst ParityResult, beats equal, the firmware's own beats equal, the sample): the
    firmware's outputs against PyTorch's offline outputs (a stream's frames, frame-major,
    against the offline model on the whole record); for the detector, on each real
    record, the R-peaks of its outputs and those it printed itself (rpeaks.c) against
    the reference's, and the first record as the sample (None where they do not apply).
    `pair`: the records were given at the sensor's rate (rates.py): the reference's beats
    at the model's rate, the firmware's own and the sample's in the sensor's clock."""
    from deploy.parity import ParityResult, compare, worst

    from ..golden import RECORD_PREFIX

    if run.status != 0 or len(run.outputs) != len(inputs):
        detail = f"the firmware exited with status {run.status} after {len(run.outputs)} of "
        detail += f"{len(inputs)} records; log: {run.log.strip()[-300:]}"
        return ParityResult(math.inf, math.inf, 0.0, False, detail), None, None, None
    results, beats, own, sample = [], [], [], None
    rule = rpeak_rule(model, fs)
    for i, (got, (name, want)) in enumerate(zip(run.outputs, expected.items(), strict=True)):
        if stream and getattr(model, "task", "features") == "features":
            want = want.transpose(0, 2, 1)  # (1, channels, frames) -> frame-major
        got = got[: want.size].reshape(want.shape) if got.size >= want.size else got
        results.append(compare(got, want, "int8" if precision == "int8" else "cpu"))
        if name.startswith(RECORD_PREFIX) and rule is not None:
            n, n_in = want.shape[1] * rule.reduction, inputs[name].shape[-1]
            n = min(n, pair.output_length(n_in)) if pair else samples
            reference = detect_rpeaks(want[0], rule, n)
            beats.append(np.array_equal(detect_rpeaks(got[0], rule, n), reference))
            clock = rates.beats_to_input(reference, pair, n_in) if pair else reference
            if run.beats is not None:
                own.append(np.array_equal(np.array(run.beats[i], np.int64), clock))
            if sample is None:
                sample = McuSample(name, n_in, tuple(int(b) for b in clock))
    return (
        worst(results),
        all(beats) if beats else None,
        all(own) if own else None,
        sample,
    )
