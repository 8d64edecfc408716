"""Target presets: one table, the only place that knows what a target name means.

Each entry names its TVM target (TVM 0.27 takes them as JSON dicts), the host that runs
the library's CPU code, the C++ driver that links it (cross or native, with the Debian
package that provides it) and how its output is run: natively, under qemu-user, or on a
GPU.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.bundle import can_run_here

from .errors import CompileError
from .lowering.schedule import ConvTile

# ELF e_machine codes of the architectures we link for.
ELF_MACHINES = {"x86_64": 62, "aarch64": 183, "armv7": 40}


@dataclass(frozen=True)
class PrecisionSpec:
    """How a CPU target's reduced-precision bundle is built: the TVM target its kernels
    take (it may name an ISA feature the fp32 build does not need), the instruction set
    (int8: one of compile/int8/kernels.py ISAS) and the CPU flags that run them natively."""

    tvm: Mapping[str, Any]
    isa: str
    cpu_flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    tvm: Mapping[str, Any]  # the TVM target, JSON form
    arch: str  # the CPU the library's host code runs on: a key of ELF_MACHINES
    device: str  # "cpu" or "cuda": picks the runtime device and the parity tolerance
    compiler: str  # C++ driver for export_library
    apt_package: str  # Debian package that provides `compiler`
    run: str  # "native", "qemu" or "gpu"
    host: Mapping[str, Any] | None = None  # for GPU targets: the host CPU's TVM target
    cpu_flags: tuple[str, ...] = ()  # /proc/cpuinfo flags needed to run natively
    qemu: tuple[str, ...] = field(default=())  # qemu-user command prefix, for run == "qemu"
    tile: ConvTile | None = None  # our conv schedule's register tile (CPU targets)
    int8: PrecisionSpec | None = None  # its int8 bundles (None: it has none)
    fp16: PrecisionSpec | None = None  # its fp16 bundles
    # in the default matrix (make build, `compile build` without --targets, the tests'
    # bundles); False: built only when named
    default: bool = True

    @property
    def elf_machine(self) -> int:
        return ELF_MACHINES[self.arch]

    @property
    def is_gpu(self) -> bool:
        return self.device == "cuda"


_X86_HOST = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}
_X86_AVXVNNI = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "alderlake"}
_AARCH64_HOST = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
# LLVM emits f32 NEON vector code only under fast-math (NEON is not IEEE-exact for
# denormals); without it the loops stay scalar VFP.
_ARMV7 = {
    "kind": "llvm",
    "mtriple": "armv7a-linux-gnueabihf",
    "mattr": ["+neon", "+vfp4"],
    "mfloat-abi": "hard",
    "fast-math": True,
}


def _qemu(binary: str, sysroot: str) -> tuple[str, ...]:
    """qemu-user with the cross toolchain's C library, and only it. -L finds its dynamic
    loader, but that loader reads the host's ld.so.cache, which lists the multiarch C
    library (libc6:arm64/armhf, pulled in by multiarch packages such as libsodium-dev) when
    one is installed: a loader and a libc from two builds, and the runner spins forever.
    LD_LIBRARY_PATH puts the sysroot's libc first."""
    return (binary, "-L", sysroot, "-E", f"LD_LIBRARY_PATH={sysroot}/lib")


def _gpu(name: str, description: str, sm: str, arch: str = "x86_64", default: bool = True):
    """A CUDA target: kernels for the GPU `sm`, host code for `arch` (x86_64 or aarch64)."""
    aarch64 = arch == "aarch64"
    return Target(
        name,
        description,
        {"kind": "cuda", "arch": sm},
        arch=arch,
        device="cuda",
        compiler="aarch64-linux-gnu-g++" if aarch64 else "g++",
        apt_package="g++-aarch64-linux-gnu" if aarch64 else "g++",
        run="gpu",
        host=_AARCH64_HOST if aarch64 else _X86_HOST,
        default=default,
    )


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "x86_64",
            "x86-64 with AVX2 and FMA (Haswell and newer, Zen): portable desktops and servers",
            _X86_HOST,
            arch="x86_64",
            device="cpu",
            compiler="g++",
            apt_package="g++",
            run="native",
            cpu_flags=("avx2", "fma"),
            tile=ConvTile(vec=8, t_tile=6, f_vecs=2, registers=16),  # 12 of 16 ymm
            int8=PrecisionSpec(_X86_HOST, "avx2", ("avx2", "fma")),  # vpmaddubsw + vpmaddwd
        ),
        Target(
            "x86_64-avx512",
            "x86-64 with AVX-512 (Skylake-SP, Ice Lake, Zen 4 and newer)",
            {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"},
            arch="x86_64",
            device="cpu",
            compiler="g++",
            apt_package="g++",
            run="native",
            cpu_flags=("avx512f", "avx512bw", "avx512vl", "avx512dq"),
            tile=ConvTile(vec=16, t_tile=10, f_vecs=2, registers=32),  # 20 of 32 zmm
            # int8 takes VNNI's vpdpbusd: Cascade Lake, Ice Lake, Zen 4 and newer.
            int8=PrecisionSpec(
                {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "cascadelake"},
                "avx512vnni",
                ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"),
            ),
        ),
        Target(
            "x86_64-avxvnni",
            "x86-64 with AVX2, FMA and AVX-VNNI, no AVX-512 (Alder Lake and newer client "
            "cores, Gracemont Atoms): built only when named; Zen 5 has AVX-512, so x86_64-avx512",
            _X86_AVXVNNI,
            arch="x86_64",
            device="cpu",
            compiler="g++",
            apt_package="g++",
            run="native",
            cpu_flags=("avx2", "fma"),
            tile=ConvTile(vec=8, t_tile=6, f_vecs=2, registers=16),  # 12 of 16 ymm, as x86_64
            # int8 takes vpdpbusd in its VEX form on ymm (cpuinfo flag avx_vnni)
            int8=PrecisionSpec(_X86_AVXVNNI, "avxvnni", ("avx2", "fma", "avx_vnni")),
            default=False,
        ),
        Target(
            "aarch64",
            "64-bit Arm Cortex-A with NEON on Linux: Raspberry Pi 4/5, phones, Cortex-A wearables",
            _AARCH64_HOST,
            arch="aarch64",
            device="cpu",
            compiler="aarch64-linux-gnu-g++",
            apt_package="g++-aarch64-linux-gnu",
            run="qemu",
            qemu=_qemu("qemu-aarch64", "/usr/aarch64-linux-gnu"),
            tile=ConvTile(vec=4, t_tile=6, f_vecs=2, registers=32),  # 12 of 32 q regs
            # int8 takes the dot product extension's sdot (Armv8.2: Cortex-A55/A76, Pi 5).
            int8=PrecisionSpec(
                {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]},
                "dotprod",
                ("asimddp",),
            ),
            # fp16 takes half-precision storage and arithmetic (Armv8.2 +fullfp16).
            fp16=PrecisionSpec(
                {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+fullfp16"]},
                "fullfp16",
                ("fphp", "asimdhp"),
            ),
        ),
        Target(
            "armv7",
            "32-bit Arm Cortex-A with NEON, hard-float ABI (Cortex-A7/A9/A53 in 32-bit mode)",
            _ARMV7,
            arch="armv7",
            device="cpu",
            compiler="arm-linux-gnueabihf-g++",
            apt_package="g++-arm-linux-gnueabihf",
            run="qemu",
            qemu=_qemu("qemu-arm", "/usr/arm-linux-gnueabihf"),
            tile=ConvTile(vec=4, t_tile=6, f_vecs=2, registers=16),  # 12 of 16 q regs
            int8=PrecisionSpec(_ARMV7, "generic"),  # NEON widening multiply-accumulates
        ),
        _gpu("cuda", "NVIDIA GPU (sm_86: RTX 30xx, A10/A40) on an x86-64 host", "sm_86"),
        _gpu(
            "cuda-hopper",
            "NVIDIA Hopper GPU (sm_90: H100, H200) on an x86-64 host: built only when named",
            "sm_90",
            default=False,
        ),
        _gpu(
            "jetson-orin",
            "NVIDIA Jetson Orin (CUDA sm_87) with its aarch64 host",
            "sm_87",
            arch="aarch64",
        ),
    )
}


def default_targets() -> list[str]:
    """The targets built when none are named (the others only on request)."""
    return [name for name, t in TARGETS.items() if t.default]


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except (KeyError, TypeError):
        if name in ("cortex-m7", "cortex-m4", "cortex-m55"):
            raise CompileError(
                f"{name} is a microcontroller: it gets firmware, not bundles; build it with "
                f"`make package TARGET={name}` (python -m compile mcu --target {name})"
            ) from None
        raise CompileError(f"unknown target {name!r}; choose from: {', '.join(TARGETS)}") from None


def tvm_target(target: Target):
    """The `tvm.target.Target` to build with (GPU targets carry their host)."""
    import tvm

    if target.host is None:
        return tvm.target.Target(dict(target.tvm))
    return tvm.target.Target(dict(target.tvm), host=dict(target.host))


def check_compiler(target: Target) -> str:
    """The compiler's path, or a CompileError saying which Debian package to install."""
    path = shutil.which(target.compiler)
    if path is None:
        raise CompileError(
            f"target {target.name!r} needs the C++ compiler {target.compiler}, which is not "
            f"installed; run: apt-get install -y {target.apt_package} (or `make toolchains` "
            "as root)"
        )
    return path


def runnable_here(target: Target) -> tuple[bool, str]:
    """Whether this machine runs the target's libraries in-process, and if not, why."""
    return can_run_here(target.arch, target.device, target.cpu_flags)


def check_machine(library: Path, target: Target) -> None:
    """A CompileError unless `library` is an ELF file for `target`'s architecture."""
    machine = elf_machine_of(library)
    if machine != target.elf_machine:
        raise CompileError(
            f"{Path(library).name} is ELF machine {machine}, expected {target.elf_machine} "
            f"({target.arch}); check the cross compiler {target.compiler}"
        )


def elf_machine_of(path: str | Path) -> int | None:
    """The ELF e_machine field of a file, or None if it is not ELF."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order = "little" if head[5] == 1 else "big"
    return int.from_bytes(head[18:20], order)


def int8_target(target: Target) -> Target:
    """`target` as its int8 bundles are built: the int8 TVM target and the CPU flags
    that run it (a CompileError for a target without int8 kernels)."""
    return precision_target(target, "int8")


def precision_target(target: Target, precision: str) -> Target:
    """`target` as its bundles of `precision` are built ("fp32": itself; "int8", "fp16":
    that precision's TVM target and CPU flags; a CompileError where it has none)."""
    if precision == "fp32":
        return target
    spec = getattr(target, precision)
    if spec is None:
        have = ", ".join(n for n, t in TARGETS.items() if getattr(t, precision) is not None)
        why = {
            "int8": "our integer kernels are for CPUs only",
            "fp16": "it needs half-precision arithmetic (aarch64 +fullfp16)",
        }[precision]
        raise CompileError(
            f"target {target.name!r} has no {precision} bundles: {why}; build {precision} "
            f"for one of: {have}"
        )
    return dataclasses.replace(target, tvm=spec.tvm, cpu_flags=spec.cpu_flags)
