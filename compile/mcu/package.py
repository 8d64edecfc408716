"""`make package TARGET=cortex-m7`: a Cortex-M build (compile/mcu/firmware.py) as a tarball for a
vendor project: the static library, the headers, the sources to rebuild it with other
flags, the example firmware with a Makefile that rebuilds it from the package alone, the
measured report and a README.

    mscnn-edge-<core>/
      README.txt            what it is, its measured footprint and speed, how to use it
      README.md             the full guide (deploy/mcu/README.md)
      mcu.json              the build's report: footprint, speed estimate, parity, fits
      lib/libmscnn.a        kernels + model + runtime, for the core's float ABI
      include/model.h       the entry points (window or stream)
      include/mscnn_rt.h
      src/                  model.c, mscnn_rt.c and kernels.o, to link with your flags
      example/              startup, linker scripts, main, Makefile, firmware.elf
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from deploy.manifest import ManifestError, McuReport

from ..errors import CompileError
from .firmware import BOARDS, CFLAGS, CORES, FIRMWARE_DIR, FIRMWARE_SOURCES, REPORT, STACK_BYTES

# What `make package TARGET=<core>` builds: the board qemu proves it on, and the part
# whose memory it must fit (None: the board's own).
PACKAGES = {
    "cortex-m7": ("mps2-an500", "stm32h7"),
    "cortex-m4": ("mps2-an386", None),
    "cortex-m55": ("mps3-an547", "m55-hp"),
}

EXAMPLE_MAKEFILE = """\
# Rebuild the example firmware from this package alone: make; run it under qemu: make run
# (it reads input.f32 and writes output.f32 in the working directory, over semihosting).
CC     := arm-none-eabi-gcc
CORE   := {cflags}
CFLAGS := $(CORE) {common} -I../include
OBJS   := {objects}

firmware.elf: $(OBJS) ../lib/libmscnn.a
\t$(CC) $(CORE) -nostartfiles -static -L. -T {board}.ld -Wl,--defsym=__stack_size={stack} \\
\t  -Wl,--gc-sections $(OBJS) ../lib/libmscnn.a -lm -lc -lgcc -o $@

%.o: %.c
\t$(CC) $(CFLAGS) -c $< -o $@

run: firmware.elf
\tqemu-system-arm -M {machine} -nographic -monitor none \\
\t  -semihosting-config enable=on,target=native -icount shift=0 -kernel firmware.elf

clean:
\trm -f $(OBJS) firmware.elf

.PHONY: run clean
"""

README = """\
mscnn-edge for {core}: {what}
{underline}

Built for {core_description}; proven under qemu-system-arm ({board}) against {reference}:
worst normalised error {parity:.2g} (tolerance {tolerance:g}){beats}.

Footprint (measured on the linked example firmware):
  flash {flash_kib:,.1f} KiB (weights {weights_kib:,.1f} KiB, code {code_kib:,.1f} KiB)
  RAM   {ram_kib:,.1f} KiB (arena {arena_kib:,.1f} KiB, stack reserved {stack_kib:,.1f} KiB,
        of which {stack_peak} B were ever used under qemu)
Fits: {fits}
Speed (an estimate: qemu counts instructions, and 1 instruction per cycle is assumed):
  {speed}

Use it
  Add lib/libmscnn.a and include/ to your project (CMSIS startup and your linker script
  are fine: the weights are in .rodata.mscnn_weights*, the arena in .bss.mscnn_arena*),
  link -lm, enable the FPU before the first call. Compile flags of the library:
    {cflags}
  To build with your own flags, compile src/model.c and src/mscnn_rt.c and link
  src/kernels.o (the same float ABI and FPU). include/model.h gives the entry points;
  README.md "Dropping it into a vendor project" shows how to feed samples.

Example firmware
  cd example && make && make run     (arm-none-eabi-gcc, newlib, qemu-system-arm)
"""


def package_mcu(folder: Path, core: str, out: Path) -> tuple[Path, int]:
    """Write `out/mscnn-edge-<core>.tar.gz` from the build in `folder` (build_mcu's
    output, with its report); returns its path and size in bytes."""
    folder = Path(folder)
    report = folder / REPORT
    if not report.is_file():
        raise CompileError(f"no {REPORT} in {folder}/: build it first (python -m compile mcu)")
    try:
        facts = McuReport.from_json(report.read_bytes(), str(report))
    except ManifestError as exc:
        raise CompileError(f"{exc}; rebuild it (python -m compile mcu)") from None
    if facts.core != core:
        raise CompileError(f"{folder} was built for {facts.core}, not {core}")
    main = "stream_main.c" if facts.hop else "main.c"
    name = f"mscnn-edge-{core}"
    files = _listing(folder, facts, main)
    archive = Path(out) / f"{name}.tar.gz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_suffix(".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for rel, source in files.items():
            if isinstance(source, str):
                _add_text(tar, f"{name}/{rel}", source)
            else:
                tar.add(source, f"{name}/{rel}", recursive=False)
    tmp.replace(archive)
    return archive, archive.stat().st_size


def _listing(folder: Path, facts: McuReport, main: str) -> dict[str, Path | str]:
    board = BOARDS[facts.board]
    core = CORES[facts.core]
    objects = " ".join(Path(n).stem + ".o" for n in (*FIRMWARE_SOURCES, main))
    files: dict[str, Path | str] = {
        "README.txt": _readme(facts),
        "README.md": FIRMWARE_DIR / "README.md",
        REPORT: folder / REPORT,
        "lib/libmscnn.a": folder / "libmscnn.a",
        "include/model.h": folder / "model.h",
        "include/mscnn_rt.h": FIRMWARE_DIR / "mscnn_rt.h",
        "src/model.c": folder / "model.c",
        "src/mscnn_rt.c": FIRMWARE_DIR / "mscnn_rt.c",
        "src/kernels.o": folder / "kernels.o",
        "example/firmware.elf": folder / "firmware.elf",
        "example/Makefile": EXAMPLE_MAKEFILE.format(
            cflags=" ".join(core.cflags),
            common=" ".join(CFLAGS),
            objects=objects,
            board=board.name,
            stack=STACK_BYTES,
            machine=board.qemu_machine,
        ),
    }
    for source in (*FIRMWARE_SOURCES, main, "semihost.h", "sections.ld", f"{board.name}.ld"):
        files[f"example/{source}"] = FIRMWARE_DIR / source
    missing = [str(p) for p in files.values() if isinstance(p, Path) and not p.is_file()]
    if missing:
        raise CompileError(f"the build in {folder} lacks {', '.join(missing)}; rebuild it")
    return files


def _readme(facts: McuReport) -> str:
    fp, speed, core = facts.footprint, facts.speed, CORES[facts.core]
    what = (
        f"the streaming step, hop {facts.hop}"
        if facts.hop
        else f"the window model, {facts.samples} samples"
    )
    if facts.precision == "int8":
        what += f", int8 ({facts.weights} weights)"
    fits = "; ".join(f"{part}: {'yes' if row.fits else 'no'}" for part, row in facts.fits.items())
    beats = {True: "; the detector's beats are the reference's", False: "; BEATS DIFFER"}
    title = f"mscnn-edge for {facts.core}: {what}"
    return README.format(
        core=facts.core,
        what=what,
        underline="=" * len(title),
        core_description=core.description,
        board=facts.board,
        reference="PyTorch" if facts.precision == "fp32" else "the int8 reference, bit for bit",
        parity=facts.parity.normalised,
        tolerance=facts.parity.tolerance,
        beats=beats.get(facts.beats_equal, ""),
        flash_kib=fp.flash / 1024,
        weights_kib=fp.flash_weights / 1024,
        code_kib=fp.flash_code / 1024,
        ram_kib=fp.ram / 1024,
        arena_kib=fp.ram_arena / 1024,
        stack_kib=fp.stack_reserved / 1024,
        stack_peak=fp.stack_peak,
        fits=fits,
        speed=(
            f"{speed.instructions_per_second / 1e6:.1f} M instructions per second of ECG: "
            f"{100 * speed.cpu_load:.1f}% of a {speed.clock_hz / 1e6:g} MHz core"
        ),
        cflags=" ".join(core.cflags + CFLAGS),
    )


def _add_text(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))
