"""`make package TARGET=cortex-m7`: a Cortex-M build (compile/mcu/firmware.py) as a tarball for a
vendor project, usable without the repository: the static library, the headers, the
sources to rebuild it with other flags, the example firmware with a Makefile that
rebuilds it from the package alone and a real record to run it on, the measured report
and a README written for this build.

    mscnn-edge-<core>/
      README.md             the guide, for this build: input, time budget, memory
                            regions, the C interface, feeding it from an ADC, building
      README.txt            the measured summary: footprint, fit, speed, proof
      mcu.json              the build's report: footprint, speed estimate, parity, fits
      lib/libmscnn.a        kernels + model + runtime + R-peak rule, for the core's float ABI
      include/model.h       the entry points (window or stream), the input's rate and units
      include/mscnn_rt.h
      include/rpeaks.h      the detector's R-peak rule, streaming
      src/                  model.c, mscnn_rt.c, rpeaks.c and kernels.o, for your flags
      example/              startup, linker scripts, main, Makefile, firmware.elf, input.f32
      SHA256SUMS, SHA256SUMS.sig   with a signing key: the sha256 of the library and every
                            header, and its Ed25519 signature (deploy/signing.py's format)

Nothing in it names a file of the repository (a test reads every text file). With a
signing key the tarball is signed too (`.tar.gz.sig` beside it).
"""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import tarfile
from pathlib import Path
from string import Template

from deploy.manifest import ManifestError, McuReport
from deploy.signing import SIG_SUFFIX, read_signing_key, sign_bytes, sign_file

from ..errors import CompileError
from .boards import PARTS, KiB
from .firmware import (
    BOARDS,
    CFLAGS,
    CORES,
    FIRMWARE_DIR,
    FIRMWARE_SOURCES,
    LIBRARY_HEADERS,
    LIBRARY_SOURCES,
    REPORT,
    SAMPLE,
    STACK_BYTES,
    check_tool,
)

# What `make package TARGET=<core>` builds: the board qemu proves it on, and the part
# whose memory it must fit (None: the board's own). The cortex-m7 package is the fp32
# stream by default, whose 604 KiB arena no STM32H7 RAM region holds: it is built for
# the board, and its report and README say which parts it fits.
PACKAGES = {
    "cortex-m7": ("mps2-an500", None),
    "cortex-m4": ("mps2-an386", None),
    "cortex-m55": ("mps3-an547", "m55-hp"),
}

RECORD_PREFIX = "record-"  # compile/golden.py's name for a real record's case

EXAMPLE_MAKEFILE = """\
# Rebuild the example firmware from this package alone: make; run it under qemu: make run
# (it reads input.f32 and writes output.f32 in this folder, over semihosting, and prints
# the R-peaks it finds).
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
\trm -f $(OBJS) firmware.elf output.f32

.PHONY: run clean
"""

README_TXT = """\
mscnn-edge for {core}: {what}
{underline}

Built for {core_description}; proven under qemu-system-arm ({board}) against {reference}:
worst normalised error {parity:.2g} (tolerance {tolerance:g}){beats}.

Input: {leads} lead(s), float32 samples in mV at {fs} Hz{per_step}.

Footprint (measured on the linked example firmware):
  flash {flash_kib:,.1f} KiB (weights {weights_kib:,.1f} KiB, code {code_kib:,.1f} KiB)
  RAM   {ram_kib:,.1f} KiB (arena {arena_kib:,.1f} KiB, stack reserved {stack_kib:,.1f} KiB,
        of which {stack_peak} B were ever used under qemu)
Fits (the arena in one RAM region):
{fits}
Speed (an estimate: qemu counts instructions, and 1 instruction per cycle is assumed):
  {speed}

Use it: README.md (the input, the time budget, the memory regions, the C interface,
feeding it from an ADC interrupt, building with your toolchain).
Compile flags of the library:
  {cflags}

Example firmware
  cd example && make && make run     (arm-none-eabi-gcc, newlib, qemu-system-arm)
"""


SUMS = "SHA256SUMS"

SIGNED_MD = """## Signed

`SHA256SUMS` lists the sha256 of `lib/libmscnn.a` and every header in `include/`;
`SHA256SUMS.sig` is its Ed25519 signature by the key with fingerprint {fingerprint}
(one line: `mscnn-ed25519-signature <public key, 64 hex> <signature of SHA256SUMS, 128
hex>`; libsodium's `crypto_sign_verify_detached` checks it). Before linking:

```
python -m deploy verify SHA256SUMS --trust KEY.pub && sha256sum -c SHA256SUMS
```

This proves where the library came from on your build machine. The device checks the
final firmware image, which your bootloader verifies: with MCUboot, sign the image you
link (`imgtool sign --key your-ecdsa-p256.pem --version 1.0.0 --header-size 0x200
--pad-header --slot-size <slot> --align 8 firmware.bin firmware.signed.bin`, with your
board's slot layout) and build MCUboot with the matching public key; it refuses an image
that signature does not verify before jumping to it.
"""


def package_mcu(
    folder: Path, core: str, out: Path, signing_key: Path | None = None
) -> tuple[Path, int]:
    """Write `out/mscnn-edge-<core>.tar.gz` from the build in `folder` (build_mcu's
    output, with its report); returns its path and size in bytes. With a signing key:
    SHA256SUMS of the library and headers and its signature inside, the tarball's
    signature beside it."""
    key = read_signing_key(signing_key) if signing_key is not None else None
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
    if facts.input_fs is not None:
        raise CompileError(
            f"{folder} resamples a {facts.input_fs} Hz sensor (--input-fs), which the "
            "package does not ship yet: package a build at the model's rate"
        )
    main = "stream_main.c" if facts.hop else "main.c"
    name = f"mscnn-edge-{core}"
    files = _listing(folder, facts, main)
    if key is not None:
        files |= _signed(files, key)
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
    if key is not None:
        sign_file(archive, key)
    return archive, archive.stat().st_size


def _signed(files: dict[str, Path | str], key) -> dict[str, Path | str]:
    """SHA256SUMS (sha256sum's format) of the library and headers, its signature, and
    README.md with a section on checking them and on signing the final image."""
    lines = []
    for rel, source in sorted(files.items()):
        if rel == "lib/libmscnn.a" or rel.startswith("include/"):
            data = source.encode() if isinstance(source, str) else source.read_bytes()
            lines.append(f"{hashlib.sha256(data).hexdigest()}  {rel}\n")
    sums = "".join(lines)
    signature = sign_bytes(key, sums.encode())
    readme = files["README.md"]
    return {
        SUMS: sums,
        SUMS + SIG_SUFFIX: signature.to_bytes().decode(),
        "README.md": f"{readme}\n{SIGNED_MD.format(fingerprint=signature.fingerprint)}",
    }


def _listing(folder: Path, facts: McuReport, main: str) -> dict[str, Path | str]:
    board = BOARDS[facts.board]
    core = CORES[facts.core]
    header = _defines(folder / "model.h")
    objects = " ".join(Path(n).stem + ".o" for n in (*FIRMWARE_SOURCES, main))
    files: dict[str, Path | str] = {
        "README.md": readme_md(facts, header, _undefined(folder / "libmscnn.a")),
        "README.txt": _readme_txt(facts, header),
        REPORT: folder / REPORT,
        "lib/libmscnn.a": folder / "libmscnn.a",
        "include/model.h": folder / "model.h",
        "src/model.c": folder / "model.c",
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
    for source in LIBRARY_HEADERS:
        files[f"include/{source}"] = FIRMWARE_DIR / source
    for source in LIBRARY_SOURCES:
        files[f"src/{source}"] = FIRMWARE_DIR / source
    for source in (*FIRMWARE_SOURCES, main, "semihost.h", "sections.ld", f"{board.name}.ld"):
        files[f"example/{source}"] = FIRMWARE_DIR / source
    if facts.sample is not None:
        files["example/input.f32"] = folder / SAMPLE
    missing = [str(p) for p in files.values() if isinstance(p, Path) and not p.is_file()]
    if missing:
        raise CompileError(f"the build in {folder} lacks {', '.join(missing)}; rebuild it")
    return files


def _defines(header: Path) -> dict[str, str]:
    """The numeric #defines of a build's model.h (the sizes the README quotes)."""
    if not header.is_file():
        raise CompileError(f"the build lacks {header}; rebuild it")
    found = re.findall(r"^#define (MSCNN_\w+) (\S+)", header.read_text(), re.M)
    defines = dict(found)
    if "MSCNN_FS_HZ" not in defines:
        raise CompileError(f"{header} predates the input's rate (MSCNN_FS_HZ); rebuild it")
    return defines


def _undefined(library: Path) -> list[str]:
    """The symbols the library takes from the C library (arm-none-eabi-nm), for the
    README: what a vendor's libc and libm must provide."""
    nm = str(Path(check_tool("arm-none-eabi-gcc")).with_name("arm-none-eabi-nm"))
    done = subprocess.run([nm, str(library)], capture_output=True, text=True)
    if done.returncode != 0:
        raise CompileError(f"arm-none-eabi-nm cannot read {library}: {done.stderr.strip()}")
    listing = done.stdout
    defined, undefined = set(), set()
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == "U":
            undefined.add(fields[1])
        elif len(fields) == 3:
            defined.add(fields[2])
    return sorted(undefined - defined)


def _what(facts: McuReport) -> str:
    what = (
        f"the streaming step, hop {facts.hop}"
        if facts.hop
        else f"the window model, {facts.samples} samples"
    )
    if facts.precision == "int8":
        return what + f", int8 ({facts.weights} weights)"
    return what + ", fp32"


def _kib(n: int | float) -> str:
    return f"{n / KiB:,.1f} KiB"


def _fit_lines(facts: McuReport, indent: str = "  ") -> str:
    lines = []
    for name, fit in facts.fits.items():
        where = f" (arena in {fit.arena_region}, {_kib(fit.arena_region_bytes)})"
        where = where if fit.arena_region else ""
        verdict = "yes" if fit.fits else f"NO: {fit.why}" if fit.why else "no"
        lines.append(f"{indent}{name}{where}: {verdict}")
    return "\n".join(lines)


def _readme_txt(facts: McuReport, header: dict[str, str]) -> str:
    fp, speed, core = facts.footprint, facts.speed, CORES[facts.core]
    beats = {True: "; the detector's beats are the reference's", False: "; BEATS DIFFER"}
    title = f"mscnn-edge for {facts.core}: {_what(facts)}"
    fs = int(header["MSCNN_FS_HZ"])
    per_step = f", {facts.hop} per step (one every {facts.hop / fs:g} s)" if facts.hop else ""
    return README_TXT.format(
        core=facts.core,
        what=_what(facts),
        underline="=" * len(title),
        core_description=core.description,
        board=facts.board,
        reference="PyTorch" if facts.precision == "fp32" else "the int8 reference, bit for bit",
        parity=facts.parity.normalised,
        tolerance=facts.parity.tolerance,
        beats=beats.get(facts.beats_equal, ""),
        leads=header.get("MSCNN_LEADS", "1"),
        fs=fs,
        per_step=per_step,
        flash_kib=fp.flash / 1024,
        weights_kib=fp.flash_weights / 1024,
        code_kib=fp.flash_code / 1024,
        ram_kib=fp.ram / 1024,
        arena_kib=fp.ram_arena / 1024,
        stack_kib=fp.stack_reserved / 1024,
        stack_peak=fp.stack_peak,
        fits=_fit_lines(facts),
        speed=(
            f"{speed.instructions_per_second / 1e6:.1f} M instructions per second of ECG: "
            f"{100 * speed.cpu_load:.1f}% of a {speed.clock_hz / 1e6:g} MHz core"
        ),
        cflags=" ".join(core.cflags + CFLAGS),
    )


# --------------------------------------------------------------------------------------
# README.md: the guide, written for the build


def readme_md(facts: McuReport, header: dict[str, str], libc: list[str]) -> str:
    """The package's README.md: what a firmware engineer needs to use this build, in its
    own numbers, naming only the package's files (`libc`: the C library's symbols the
    library needs)."""
    fs = int(header["MSCNN_FS_HZ"])
    leads = int(header.get("MSCNN_LEADS", "1"))
    detector = "MSCNN_RPEAK_THRESHOLD" in header
    parts = [
        _md_intro(facts, header, fs, leads, detector),
        _md_files(facts, detector),
        _md_stream(facts, header, fs, leads, detector) if facts.hop else _md_window(header),
        _md_memory(facts, header),
        _md_build(facts, libc),
        _md_example(facts, fs, leads),
        _md_errors(),
        _md_speed(facts),
    ]
    return "\n".join(parts)


def _md_intro(facts: McuReport, header, fs: int, leads: int, detector: bool) -> str:
    core = CORES[facts.core]
    what = "QRS detector (R-peaks)" if detector else "model"
    ref = "PyTorch" if facts.precision == "fp32" else "its int8 reference, bit for bit"
    proof = (
        f"Proven under qemu-system-arm (machine {BOARDS[facts.board].qemu_machine}) against "
        f"{ref}: worst normalised error {facts.parity.normalised:.2g} (tolerance "
        f"{facts.parity.tolerance:g})"
    )
    if facts.beats_equal is not None:
        proof += "; on real ECG records its beats were the reference's" + (
            "" if facts.beats_equal and facts.firmware_beats_equal is not False else " NOT"
        )
    lines = [
        f"# mscnn-edge for {facts.core}: {_what(facts)}",
        "",
        f"A trained ECG {what}, a MultiScopicCNN, compiled for the {core.description}: a C "
        "library with no OS, no heap and no dynamic loading. The activations live in one "
        "static arena, the weights are `const` arrays in flash. "
        f"{proof}.",
        "",
        "## The input",
        "",
        f"- **{leads} lead{'s' if leads > 1 else ''}, float32 samples in millivolts (mV), "
        f"at {fs} Hz** (`MSCNN_FS_HZ`, `MSCNN_LEADS` in `include/model.h`): the ECG as "
        "recorded, with no filtering and no normalisation. Convert ADC counts to mV "
        "yourself (gain and offset of your front end).",
    ]
    lines += _md_timing(facts, header, fs, detector)
    if detector:
        lines += [
            f"- R-peaks: `include/rpeaks.h` turns the logits into beats (sample indices) as "
            f"frames arrive: a frame is positive when its logit exceeds "
            f"`MSCNN_RPEAK_THRESHOLD`; each run of positive frames is a candidate; two beats "
            f"closer than `MSCNN_RPEAK_MIN_RR` = {header['MSCNN_RPEAK_MIN_RR']} samples are "
            f"one (the stronger stands); beats nearer a record's ends than `MSCNN_RPEAK_EDGE` "
            f"= {header['MSCNN_RPEAK_EDGE']} samples are dropped. A beat is certain, and "
            "reported, about MIN_RR + EDGE samples after its frames arrive.",
        ]
    return "\n".join(lines) + "\n"


def _md_timing(facts: McuReport, header, fs: int, detector: bool) -> list[str]:
    """The README's lines on what one call takes and gives, and its time budget."""
    if facts.hop:
        hop, seconds = facts.hop, facts.hop / fs
        speed = facts.speed
        peak = speed.peak_instructions or speed.instructions
        return [
            f"- **One step per hop of {hop} samples per lead, every {hop} / {fs} Hz = "
            f"{seconds:g} s.** That is the time budget of a step: `mscnn_step()` must return "
            "before the next hop is complete.",
            f"- Measured under qemu, the slowest step took {peak / 1e6:.1f} M instructions: "
            f"{1e3 * peak / speed.clock_hz:.0f} ms at {speed.clock_hz / 1e6:g} MHz if each "
            f"took one cycle, {100 * peak / speed.clock_hz / seconds:.0f}% of the budget (an "
            "estimate, see the last section).",
            f"- Out come one logit per frame of {header.get('MSCNN_REDUCTION', '?')} samples"
            f" (`MSCNN_FRAMES_PER_STEP` = {header['MSCNN_FRAMES_PER_STEP']} per step at most), "
            f"{header['MSCNN_DELAY_FRAMES']} frames behind the input (the model looks "
            f"{header['MSCNN_LOOK_AHEAD']} samples ahead)."
            if detector
            else f"- Out come `MSCNN_CHANNELS` = {header['MSCNN_CHANNELS']} values per frame, "
            f"{header['MSCNN_DELAY_FRAMES']} frames behind the input.",
        ]
    else:
        return [
            f"- One window of {header['MSCNN_SAMPLES']} samples per lead "
            f"({int(header['MSCNN_SAMPLES']) / fs:g} s) per call of `mscnn_run()`.",
        ]


def _md_files(facts: McuReport, detector: bool) -> str:
    rows = [
        ("`include/model.h`", "the entry points, sizes, the input's rate and units"),
        ("`include/rpeaks.h`", "the R-peak rule, streaming (`src/rpeaks.c`)"),
        ("`include/mscnn_rt.h`", "the runtime the kernels call (errors, workspace)"),
        ("`lib/libmscnn.a`", "everything compiled: kernels, model, runtime, R-peak rule"),
        ("`src/`", "`model.c`, `mscnn_rt.c`, `rpeaks.c` and `kernels.o`, to build with your flags"),
        ("`example/`", "a firmware for qemu's board: startup, linker scripts, main, Makefile"
         + (", `input.f32` (a real record)" if facts.sample else "")),
        ("`mcu.json`", "the measured report: footprint, fit per part, speed, parity"),
        ("`README.txt`", "the measured summary"),
    ]  # fmt: skip
    if not detector:
        rows[1] = ("`include/rpeaks.h`", "the QRS detector's R-peak rule (unused by this model)")
    table = "\n".join(f"| {a} | {b} |" for a, b in rows)
    return f"## Files\n\n| file | what |\n|---|---|\n{table}\n"


STREAM_MD = Template("""## Calling it: the streaming step

```c
#include "model.h"
#include "rpeaks.h"

mscnn_reset();                          /* a new record: zero the state */
for (;;) {
  /* write MSCNN_HOP new samples per lead to mscnn_input(), lead-major, in mV */
  int rc = mscnn_step(MSCNN_HOP);       /* MSCNN_OK, or an error code (below) */
  size_t start, stop;
  mscnn_valid(&start, &stop);           /* frames [start, stop) of mscnn_output() are new */
}
/* To end a record of L samples: mscnn_step(L % MSCNN_HOP) on its partial last hop, then
   mscnn_step(0) until stop < MSCNN_FRAMES_PER_STEP (at most MSCNN_FLUSH_STEPS = $flush
   steps); for the beats, mscnn_beats_finish(&beats, L). A device that never stops
   needs neither. mscnn_flush(n, on_frames, ctx) does these steps, calling on_frames(ctx)
   after each. Lead-off (no samples for G of them): mscnn_stream_gap(n, G, on_frames,
   ctx) ends the segment so, zeroes the state and advances the clock by G; beats after it
   count from mscnn_segment_start() (mscnn_beats_finish, then mscnn_beats_init). */
```

### Who owns `mscnn_input()`

`mscnn_input()` points into the arena. **While `mscnn_step()` runs, the arena belongs to
the model**: the kernels read the hop there and write their activations around it, and
the step pads a partial hop with zeros in place. The caller must not write
`mscnn_input()` during `mscnn_step()`, from an interrupt either; it may write the next
hop once the step has returned. A refused hop (`MSCNN_E_LENGTH`, `MSCNN_E_NONFINITE`)
leaves the state as it was.

So an ADC interrupt fills buffers of your own, two of them: it fills one while the main
loop copies the other, full one into `mscnn_input()` and runs the step. Each step has
$seconds s, the time the interrupt takes to fill the next buffer:

```c
#include <string.h>
#include "model.h"
#include "rpeaks.h"

static float hop_buf[2][MSCNN_LEADS * MSCNN_HOP];  /* lead-major, mV */
static volatile size_t filled;    /* samples per lead in hop_buf[writing] */
static volatile int writing;      /* the buffer the interrupt fills */
static volatile int ready = -1;   /* a full buffer for the model, or -1 */
static volatile unsigned overruns;
static mscnn_beats_t beats;

void ADC_IRQHandler(void) {       /* one conversion per lead, MSCNN_FS_HZ times a second */
  float* b = hop_buf[writing];
  for (size_t lead = 0; lead < MSCNN_LEADS; ++lead)
    b[lead * MSCNN_HOP + filled] = adc_to_mv(adc_read(lead));  /* yours */
  if (++filled == MSCNN_HOP) {    /* full: hand it over, fill the other one */
    if (ready >= 0) ++overruns;   /* the model did not keep up: a hop is lost */
    ready = writing;
    writing ^= 1;
    filled = 0;
  }
}

int main(void) {
  /* clocks, FPU (CMSIS SystemInit), the ADC at MSCNN_FS_HZ ... */
  mscnn_reset();
$beats_init  for (;;) {
    while (ready < 0) __WFI();
    memcpy(mscnn_input(), hop_buf[ready], sizeof hop_buf[0]);  /* between steps only */
    ready = -1;                   /* the interrupt may refill that buffer from now on */
    if (mscnn_step(MSCNN_HOP) != MSCNN_OK) { /* log it; after MSCNN_E_KERNEL mscnn_reset() */ }
    size_t start, stop;
    mscnn_valid(&start, &stop);
$beats_use  }
}
```

The state (`MSCNN_STATE_BYTES` = $state bytes) lives in the arena between steps; nothing
else in the arena must survive a step. `include/model.h` documents each call.
""")


def _md_stream(facts: McuReport, header, fs: int, leads: int, detector: bool) -> str:
    beats_init = (
        "  mscnn_beats_init(&beats, MSCNN_RPEAK_THRESHOLD, MSCNN_REDUCTION, MSCNN_RPEAK_MIN_RR,\n"
        "                   MSCNN_RPEAK_EDGE);\n"
        if detector
        else ""
    )
    beats_use = (
        "    const float* logits = mscnn_output();\n"
        "    for (size_t t = start; t < stop; ++t) mscnn_beats_push(&beats, logits[t]);\n"
        "    int64_t r;\n"
        "    while (mscnn_beats_next(&beats, &r)) on_beat(r);  /* sample index since reset */\n"
        if detector
        else "    /* frames [start, stop) of mscnn_output(), channel-major */\n"
    )
    return STREAM_MD.substitute(
        flush=header["MSCNN_FLUSH_STEPS"],
        seconds=f"{facts.hop / fs:g}",
        state=f"{int(header['MSCNN_STATE_BYTES']):,}",
        beats_init=beats_init,
        beats_use=beats_use,
    )


def _md_window(header) -> str:
    n = header["MSCNN_INPUT_LEN"]
    return f"""## Calling it: the window model

```c
#include "model.h"

float* x = mscnn_input();             /* MSCNN_INPUT_LEN = {n} floats, lead-major, mV */
/* ... write the window ... */
int rc = mscnn_run(MSCNN_INPUT_LEN);  /* MSCNN_OK, or an error code (below) */
const float* y = mscnn_output();      /* MSCNN_OUTPUT_LEN floats */
```

`mscnn_input()` points into the arena: **while `mscnn_run()` runs, the arena belongs to
the model**; do not write the input then, from an interrupt either. Collect the next
window in a buffer of your own (two, swapped by the ADC interrupt) and copy it in
between runs, or use `mscnn_infer(x, n, y, m)`, which copies in and out.
"""


def _md_memory(facts: McuReport, header) -> str:
    fp = facts.footprint
    rows = []
    for name, fit in facts.fits.items():
        part = PARTS.get(name)
        desc = part.description if part else name
        region = "-"
        if fit.arena_region and part:
            r = next(r for r in part.ram_regions if r.name == fit.arena_region)
            region = f"{r.name} at 0x{r.base:08x}, {_kib(r.size)}"
        verdict = "**yes**" if fit.fits else f"**no**: {fit.why}" if fit.why else "**no**"
        rows.append(f"| {desc} | {region} | {verdict} |")
    mine = [PARTS[n] for n in facts.fits if n in PARTS and PARTS[n].core == facts.core]
    region_name = mine[0].arena_region.name if mine else "RAM"
    misfits = [(p.name, facts.fits[p.name].why) for p in mine if facts.fits[p.name].why]
    advice = ""
    if misfits:
        name, why = misfits[0]
        advice = (
            f"\n**This build does not fit {name}**: {why}. Such a part needs a smaller build: "
            "the int8 one of this model (for the detector's stream, a fifth of the arena and "
            "about half the flash) or a shorter window.\n"
        )
    return f"""## Memory

- **Arena**: {fp.ram_arena:,} bytes ({_kib(fp.ram_arena)}): `mscnn_arena` (activations,
  the stream's state; `MSCNN_ARENA_BYTES` = {int(header["MSCNN_ARENA_BYTES"]):,}) and the
  kernels' workspace pool, in input sections `.bss.mscnn_arena*`, **64-byte aligned** (the
  kernels assume it). It is one array: it must lie in **one contiguous RAM region**. It
  need not be zeroed at reset (`mscnn_reset()` zeroes the state).
- **Weights**: {fp.flash_weights:,} bytes in `.rodata.mscnn_weights*` (flash, 64-byte
  aligned; `MSCNN_WEIGHTS_BYTES`), code and other read-only data {_kib(fp.flash_code)}.
  Flash in all: {_kib(fp.flash)}.
- **Other RAM**: {fp.ram_static:,} bytes of `.data`/`.bss` in the example firmware (the
  runtime's, the R-peak state, the example's own), and the stack: the example reserves
  {_kib(fp.stack_reserved)}, of which {fp.stack_peak} B were ever used under qemu.

Where the arena goes, part by part (the arena in the part's largest RAM region, the rest
of RAM beside it or in another region):

| part | arena region | fits |
|---|---|---|
{chr(10).join(rows)}
{advice}
A vendor linker script's `*(.rodata*)` and `*(.bss*)` take the weights and the arena as
they are, into whichever region those lines send them. To put the arena in a particular
region, give it its own output section before `.bss` (GNU ld; the region name is your
script's):

```
.mscnn_arena (NOLOAD) : ALIGN(64)
{{
  *(.bss.mscnn_arena .bss.mscnn_arena.*)
}} > {region_name}
```
"""


def _md_build(facts: McuReport, libc: list[str]) -> str:
    core = CORES[facts.core]
    flags = " ".join(core.cflags)
    return f"""## Building with your toolchain

The core's flags (the float ABI and FPU must be these: `kernels.o` was compiled for them):

    {flags}

- **The library**: add `lib/libmscnn.a` and `include/` to your project and link `-lm`.
- **Or the sources**, with your own optimisation flags: compile `src/model.c`,
  `src/mscnn_rt.c` and `src/rpeaks.c` (C11, `-Iinclude`) and link them with
  `src/kernels.o`. The library was compiled with `{" ".join(CFLAGS)}`.
- From the C library it needs only {", ".join(f"`{s}`" for s in libc) or "nothing"}:
  newlib's or your vendor's.
- **Enable the FPU** (CPACR CP10/CP11) before the first call; CMSIS's `SystemInit` does.
- Built and proven with arm-none-eabi-gcc and newlib. `kernels.o` is a plain ELF object
  for the Arm EABI (AAPCS, hard float); a toolchain that links such objects (e.g. Arm
  Compiler 6) should take it, but only GCC was tried.
"""


def _md_example(facts: McuReport, fs: int, leads: int) -> str:
    board = BOARDS[facts.board]
    sample = facts.sample
    if sample is None:
        given = (
            "This build ships no sample record: write your own `example/input.f32` (float32, "
            f"little-endian, lead-major, mV at {fs} Hz) before `make run`."
        )
    else:
        record = sample.record.removeprefix(RECORD_PREFIX)
        beats = ", ".join(str(b) for b in sample.beats)
        given = (
            f"`example/input.f32` is a real ECG record: CPSC2019 record {record}, "
            f"{sample.samples} samples ({sample.samples / fs:g} s) per lead, float32 "
            f"little-endian, lead-major, mV at {fs} Hz, as the build's proof ran it. The "
            f"firmware prints each R-peak as `mscnn beat sample=... ms=...`; on this record "
            f"the reference model and rule give {len(sample.beats)} beats, at samples "
            f"{beats}. Replace `input.f32` with your own recording (same format) to try it."
        )
    return f"""## The example firmware

```
cd example && make && make run
```

`make` builds `firmware.elf` for qemu's `{board.qemu_machine}` board from this package
alone (`startup.c`, `semihost.c`, the main, the board's linker script `{board.name}.ld`
over `sections.ld`, `../lib/libmscnn.a`). `make run` runs it under
`qemu-system-arm -icount shift=0`: it reads `input.f32` and writes the model's outputs to
`output.f32` in `example/` over semihosting, and prints what it found and how long it
took (SysTick ticks; a calibration line turns them into instructions). It needs
arm-none-eabi-gcc, newlib and qemu-system-arm (Debian: `gcc-arm-none-eabi
libnewlib-arm-none-eabi qemu-system-arm`).

{given}
"""


def _md_errors() -> str:
    return """## Error codes

| code | name | when |
|---|---|---|
| 0 | `MSCNN_OK` | |
| 1 | `MSCNN_E_LENGTH` | the input's length is not the model's (window), or `n` > hop (stream) |
| 2 | `MSCNN_E_NONFINITE` | a NaN or Inf sample: nothing ran, a stream's state is unchanged |
| 3 | `MSCNN_E_KERNEL` | a kernel refused its arguments; `mscnn_last_error()` says why |
| 4 | `MSCNN_E_OUTPUT` | `mscnn_infer`'s output buffer is too small |
"""


def _md_speed(facts: McuReport) -> str:
    speed = facts.speed
    return f"""## Speed: an estimate

qemu counts instructions (`-icount shift=0`); it is not cycle accurate. At one
instruction per cycle this build needs {speed.instructions_per_second / 1e6:.1f} M cycles
per second of ECG, {100 * speed.cpu_load:.1f}% of a {speed.clock_hz / 1e6:g} MHz core. Real
cores differ (a Cortex-M7 issues up to two instructions per cycle; every core stalls on
flash wait states and cache misses): treat the figure as an order of magnitude and measure
on your board (`mcu.json` holds the counts).
"""


def _add_text(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))
