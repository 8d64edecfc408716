"""The int8 model as a TVM program of our own integer kernels, bit-exact with `run_int8`.

Why not import a QDQ ONNX model: TVM 0.27's importer turns QuantizeLinear and
DequantizeLinear into float arithmetic, so such a model runs in fp32 with extra work. Here
every kernel is written in TE from the `QuantizedModel` (compile/int8/quantize.py, whose
`run_int8` defines the arithmetic), scheduled by us, and called from one Relax function:

    x (batch, leads, samples) float32
      -> quantize: int16 (or int8), time-major (batch, samples, leads)
      -> per branch, per block: conv kernels (int32 accumulation, requantization and the
         block's max-pool fused as the epilogue); the last blocks' pools write one
         concatenated tensor
      -> backbone: dequantize to (batch, channels, frames) float32
         detector: per-frame linear kernels (requantize, activation table), the last one
         dequantized to (batch, frames, classes) float32 logits
         classifier: SE's squeeze (sum over frames, requantized) and its linear kernels
         (the last table is the sigmoid, uint8), the global pooling times the excitation,
         the head's linear kernels on one row: (batch, classes) float32 logits. A
         reduced-lead variant's dropped channels enter the squeeze and the pooling as
         constants (`quantize.dropped_constants`).

Tensors are time-major ("NWC"): a conv's output channels are the vector lanes, and the
inner product over input channels is what dot-product instructions compute. How a conv's
inner product maps onto the ISA is a `Dot` (table `ISAS`, chosen by the target's LLVM
features, never by its name):

- `avx512vnni` (x86-64): `vpdpbusd` multiplies 4 unsigned bytes of input by 4 signed
  bytes of weight into each of 16 int32 lanes; `vpdpwssd` does 2 int16 pairs (the int16
  input layer).
- `avxvnni` (x86-64 with AVX-VNNI, no AVX-512): the same two in their VEX form on 8
  int32 lanes (ymm).
- `avx2` (x86-64 without VNNI): `vpmaddwd` on int16 pairs into 8 int32 lanes, the
  activations widened to int16 in the padding stage (once per element). Where a layer's
  input range is known narrower than its dtype (the head's layers after an activation
  table) and its weights keep every pair's sum inside int16 (`unsigned_pairs_fit`),
  `vpmaddubsw` multiplies the unsigned activations (offset to start at 0) by the signed
  weights into int16 pairs and `vpmaddwd` by ones sums those: 32 products in 3 uops
  where int16 takes 4. Signed bytes into `vpmaddubsw` (|a| and w with a's sign by
  `vpsignb`, per time step and channel vector) measured slower than int16 on Zen 4.
- `dotprod` (aarch64 +dotprod): `sdot`, 4 signed bytes into each of 4 int32 lanes.
- `generic`: plain loops that LLVM vectorises (widening multiply-adds), for any CPU.

Operands the instruction needs are not always the stored type: VNNI wants unsigned
activations, `sdot` signed ones. The kernel's padding stage (it pads anyway: "same"
convolution) adds a constant o (+128 for int8 into VNNI, -128 for uint8 into `sdot`)
and pads with o; the kernel's bias absorbs it exactly: bias - o * sum(w). Integer
algebra, so the result equals the reference bit for bit.

Weights are repacked once, at build time, to [F / lanes, K, C / group, lanes, group]:
each instruction's weight operand is one contiguous vector load. A conv's register tile
(time steps x channel vectors, divisors of both, so no tails) accumulates in registers
while the dot instruction runs innermost; single-threaded on a Zen 4 core the detector's
convs run at ~86% of a measured VNNI loop (compile/bench/int8.py).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CompileError
from . import quantize
from .quantize import RANGES, QConv, QuantizedModel, check_calibration

log = logging.getLogger(__name__)

MACS_ATTR = "mscnn.macs"  # a conv kernel's multiply-accumulates per call (PrimFunc attr)
UNROLL_REDUCTION = 16  # one-lane dots: input channel steps unrolled (all of them up to this)
STACK_BYTES = 1024  # TVM's kMaxStackAlloca: larger per-tile buffers go to the heap

# The x86-64 target with AVX-512 VNNI (Cascade Lake, Ice Lake, Zen 4 and newer). The
# project's x86_64-avx512 target names skylake-avx512, which has no VNNI.
X86_VNNI = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "cascadelake"}
# AVX-VNNI without AVX-512 (Alder Lake and newer client cores, Gracemont, Zen 5 client).
X86_AVXVNNI = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "alderlake"}
AARCH64_DOTPROD = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]}


@dataclass(frozen=True)
class Dot:
    """How a conv's inner product maps onto an instruction."""

    lanes: int  # int32 accumulators per vector: the output channels one instruction feeds
    group: int  # products summed into a lane per instruction: consecutive input channels
    operand: str | None  # activation dtype the instruction takes (None: the stored one)
    weight: str  # weight dtype in the packed layout
    intrin: str | None  # our TensorIntrin; None: LLVM vectorises the plain loops
    registers: int = 24  # accumulator vectors a register tile may hold
    # Weights packed [w0, w2, w1, w3] per group of 4: Arm's sxtb16 then unpacks one word
    # into the int16 pairs (w0, w1) and (w2, w3) that smlad multiplies.
    interleave: bool = False
    # Output channels requantized as one vector (Helium: 4 int32 lanes, `_requant_mulh`);
    # 1: the requantization per channel, as the dot leaves it
    requant_lanes: int = 1


@dataclass(frozen=True)
class Isa:
    """The int8 instruction set of a target: its 8-bit and its 16-bit (input) dot."""

    name: str
    feature: str | None  # the LLVM feature that names it (None: any CPU)
    arch: str | tuple[str, ...]  # LLVM triple prefixes ("x86_64", "aarch64"), or "any"
    byte: Dot
    word: Dot
    instruction: str | None  # what the asm must contain
    parallel: bool = True  # False: one thread, scalar stages (microcontrollers)
    # unsigned bytes (AVX2's vpmaddubsw) for a layer whose input range and weights keep
    # the instruction's int16 pair sums from saturating (`byte_dot`); None: `byte` always
    unsigned: Dot | None = None


CORTEX_M = ("thumbv7em", "thumbv8.1m")  # Armv7E-M and Armv8.1-M: the DSP extension

ISAS: dict[str, Isa] = {
    isa.name: isa
    for isa in (
        Isa(
            "avx512vnni",
            "avx512vnni",
            "x86_64",
            Dot(16, 4, "uint8", "int8", "mscnn_vpdpbusd"),
            Dot(16, 2, "int16", "int16", "mscnn_vpdpwssd"),
            "vpdpbusd",
        ),
        Isa(  # AVX-VNNI: the same dot in VEX form on ymm (Alder Lake, Gracemont, Zen 5)
            "avxvnni",
            "avxvnni",
            "x86_64",
            Dot(8, 4, "uint8", "int8", "mscnn_vpdpbusd_ymm", registers=12),
            Dot(8, 2, "int16", "int16", "mscnn_vpdpwssd_ymm", registers=12),
            "vpdpbusd",
        ),
        Isa(  # AVX2 (Haswell, Zen and newer; Atom/Celeron/Pentium since Gracemont)
            "avx2",
            "avx2",
            "x86_64",
            Dot(8, 2, "int16", "int16", "mscnn_vpmaddwd", registers=12),
            Dot(8, 2, "int16", "int16", "mscnn_vpmaddwd", registers=12),
            "vpmaddubsw",
            unsigned=Dot(8, 4, "uint8", "int8", "mscnn_vpmaddubsw", registers=12),
        ),
        Isa(
            "dotprod",
            "dotprod",
            "aarch64",
            Dot(4, 4, "int8", "int8", "mscnn_sdot"),
            Dot(4, 1, None, "int8", None),
            "sdot",
        ),
        Isa(  # Helium (Armv8.1-M MVE): 16 int8 (8 int16) products per vmlava, int8 weights
            "mve",
            "mve",
            ("thumbv8.1m",),
            Dot(1, 16, "int8", "int8", "mscnn_vmlava_s8", registers=8, requant_lanes=4),
            # the input layer (one lead: a vmlava would multiply seven padding lanes):
            # plain loops over output channels, vmla of 4 int32 lanes by one input sample
            # (an int32 operand: the sample splat from one register, not widened per use)
            Dot(4, 1, "int32", "int8", None, registers=4, requant_lanes=4),
            "vmlava",
            parallel=False,
        ),
        Isa(
            "dsp",
            "dsp",
            CORTEX_M,
            # 2 x 2 tiles: 4 accumulators and the operand words stay in the core's 13 free
            # registers (each loaded word feeds two smlad); a 4 x 2 tile spills them. Two
            # pairs of input channels per step (the input layer's one lead: one pair)
            Dot(1, 4, "int16", "int16", "mscnn_smlad_pairs", registers=4),
            Dot(1, 2, "int16", "int16", "mscnn_smlad", registers=4),
            "smlad",
            parallel=False,
        ),
        Isa(  # the same with int8 weights in flash: half the bytes, more instructions
            "dsp-int8w",
            "dsp",
            CORTEX_M,
            Dot(1, 4, "int16", "int8", "mscnn_smlad_sxtb16", registers=8, interleave=True),
            Dot(1, 4, "int16", "int8", "mscnn_smlad_sxtb16", registers=8, interleave=True),
            "sxtb16",
            parallel=False,
        ),
        Isa(
            "generic",
            None,
            "any",
            Dot(16, 1, None, "int8", None, registers=12),
            Dot(16, 1, None, "int8", None, registers=12),
            None,
        ),
    )
}


# --------------------------------------------------------------------------------------
# Tensor intrinsics: C[i] += sum_k A[k] * B[i, k] over `lanes` x `group`, as one call


def _broadcast_desc(lanes: int, group: int, a_dtype: str, b_dtype: str):
    """What a broadcast dot computes: C[i] += sum_k A[k] * B[i, k], `lanes` x `group`."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((group,), a_dtype, offset_factor=1),
        B: T.Buffer((lanes, group), b_dtype, offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, group):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def _broadcast_a(A, a_dtype: str, group: int, lanes: int, operand: str):
    """A's group as one word, broadcast to every lane, as the vector type `operand` (no
    named variable, which TVM would allocate as a buffer in every tile)."""
    from tvm.script import tirx as T

    width = {"int8": 8, "uint8": 8, "int16": 16}[a_dtype] * group  # bits of A's group
    return T.reinterpret(
        T.broadcast(
            T.reinterpret(A.vload([0], f"{a_dtype}x{group}"), dtype=f"int{width}"),
            lanes * 32 // width,
        ),
        dtype=operand,
    )


def _intrinsic(lanes: int, group: int, a_dtype: str, b_dtype: str, llvm: str, operand: str):
    """(description, implementation) of a broadcast dot product. `operand` is the vector
    type LLVM 22's intrinsic takes for A and B (e.g. int8x64 for vpdpbusd). An intrinsic
    without an accumulator operand (AVX2's pmadd.wd) is added to C instead."""
    from tvm.script import tirx as T

    if llvm == "llvm.x86.avx2.pmadd.wd":
        return _broadcast_desc(lanes, group, a_dtype, b_dtype), _vpmaddwd(lanes, group)

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((group,), a_dtype, offset_factor=1),
        B: T.Buffer((lanes, group), b_dtype, offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm),
                C.vload([0], dtype=f"int32x{lanes}"),
                _broadcast_a(A, a_dtype, group, lanes, operand),
                T.reinterpret(B.vload([0, 0], dtype=f"{b_dtype}x{lanes * group}"), dtype=operand),
                dtype=f"int32x{lanes}",
            )

    return _broadcast_desc(lanes, group, a_dtype, b_dtype), impl


def _vpmaddwd(lanes: int, group: int):
    """AVX2's `vpmaddwd`: int16 pairs multiplied and summed into int32 lanes, added to C."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((group,), "int16", offset_factor=1),
        B: T.Buffer((lanes, group), "int16", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], dtype=f"int32x{lanes}") + (
                T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                    _broadcast_a(A, "int16", group, lanes, f"int16x{lanes * group}"),
                    B.vload([0, 0], dtype=f"int16x{lanes * group}"),
                    dtype=f"int32x{lanes}",
                )
            )

    return impl


def _vpmaddubsw():
    """(description, implementation) of 8 lanes x 4 products of unsigned activations by
    signed weights with AVX2: `vpmaddubsw` multiplies the bytes and adds pairs into int16
    with saturation, `vpmaddwd` by ones adds pairs of those into int32. Exact only where
    no pair can saturate: `unsigned_pairs_fit` decides which layers take it."""
    from tvm.script import tirx as T

    def x86(name: str, dtype: str, *args):
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(name), *args, dtype=dtype)

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((8, 4), "int8", offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:4], B[0:8, 0:4])
            T.writes(C[0:8])
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + x86(
                "llvm.x86.avx2.pmadd.wd",
                "int32x8",
                x86(
                    "llvm.x86.avx2.pmadd.ub.sw",
                    "int16x16",
                    _broadcast_a(A, "uint8", 4, 8, "int8x32"),
                    B.vload([0, 0], dtype="int8x32"),
                ),
                T.broadcast(T.int16(1), 16),
            )

    return _broadcast_desc(8, 4, "uint8", "int8"), impl


def interleaved(j):
    """Where the packed weights hold input channel j of its group of 4 (Dot.interleave):
    0, 2, 1, 3 (its own inverse)."""
    return (j % 2) * 2 + j // 2


def _smlad():
    """(description, implementation) of Cortex-M's `smlad`: two int16 products summed
    into one int32 accumulator (the DSP extension of Armv7E-M). Each int16 pair is loaded
    as one 32-bit word."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((2,), "int16", offset_factor=1),
        B: T.Buffer((1, 2), "int16", offset_factor=1),
        C: T.Buffer((1,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:1], A[0:2], B[0:1, 0:2])
            T.writes(C[0:1])
            C[0] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.arm.smlad"),
                T.reinterpret(A.vload([0], dtype="int16x2"), dtype="int32"),
                T.reinterpret(B.vload([0, 0], dtype="int16x2"), dtype="int32"),
                C[0],
                dtype="int32",
            )

    return _one_lane_desc(2, "int16", lambda k: k), impl


def _smlad_pairs():
    """(description, implementation) of two `smlad` on four int16 products into one
    int32 accumulator: each operand's two int16 pairs are read as one 64-bit value. LLVM
    splits it into two word loads and pairs those into one `ldrd` (or `ldm`) where their
    alignment and offset allow it: the weights, packed per tile (`ConvKernel.block`)."""
    from tvm.script import tirx as T

    def words(buf, index):  # (low word, high word) of four int16 loaded as one int64
        both = T.reinterpret(buf.vload(index, dtype="int16x4"), dtype="int64")
        return T.Cast("int32", both), T.Cast("int32", T.shift_right(both, T.int64(32)))

    def low(a, b):
        return words(a, [0])[0], words(b, [0, 0])[0]

    def high(a, b):
        return words(a, [0])[1], words(b, [0, 0])[1]

    def smlad(a, b, c):
        return T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.arm.smlad"), a, b, c, dtype="int32"
        )

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "int16", offset_factor=1),
        B: T.Buffer((1, 4), "int16", offset_factor=1),
        C: T.Buffer((1,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:1], A[0:4], B[0:1, 0:4])
            T.writes(C[0:1])
            # no named values: TVMScript would allocate each as a workspace buffer
            C[0] = smlad(*high(A, B), smlad(*low(A, B), C[0]))

    return _one_lane_desc(4, "int16", lambda k: k), impl


def _vmlava(group: int, dtype: str):
    """(description, implementation) of Helium's `vmlava` (MVE, Armv8.1-M): the products
    of a vector of `group` activations and weights of `dtype`, summed across the vector
    into one int32 accumulator (16 int8 or 8 int16 per instruction)."""
    from tvm.script import tirx as T

    vector = f"{dtype}x{group}"
    llvm = f"llvm.arm.mve.vmldava.v{group}i{128 // group}"

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((group,), dtype, offset_factor=1),
        B: T.Buffer((1, group), dtype, offset_factor=1),
        C: T.Buffer((1,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:1], A[0:group], B[0:1, 0:group])
            T.writes(C[0:1])
            C[0] = T.call_llvm_pure_intrin(  # flags: signed, no subtract, no exchange
                T.llvm_lookup_intrinsic_id(llvm),
                T.int32(0),
                T.int32(0),
                T.int32(0),
                C[0],
                A.vload([0], dtype=vector),
                B.vload([0, 0], dtype=vector),
                dtype="int32",
            )

    return _one_lane_desc(group, dtype, lambda k: k, dtype), impl


def _smlad_sxtb16():
    """(description, implementation) of four int16 x int8 products into one int32
    accumulator with Cortex-M's DSP extension (Armv7E-M): the four int8 weights are one
    word, `sxtb16` (and `sxtb16` of it rotated by 8) widens them to two int16 pairs, and
    two `smlad` each multiply-add a pair of int16 activations (one word) with one."""
    from tvm.script import tirx as T

    def intrin(name, *args):
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(name), *args, dtype="int32")

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "int16", offset_factor=1),
        B: T.Buffer((1, 4), "int8", offset_factor=1),
        C: T.Buffer((1,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:1], A[0:4], B[0:1, 0:4])
            T.writes(C[0:1])
            C[0] = intrin(
                "llvm.arm.smlad",
                T.reinterpret(A.vload([2], dtype="int16x2"), dtype="int32"),
                intrin(
                    "llvm.arm.sxtb16",
                    T.reinterpret(
                        T.bitwise_or(
                            T.shift_right(
                                T.reinterpret(B.vload([0, 0], dtype="int8x4"), dtype="uint32"),
                                T.uint32(8),
                            ),
                            T.shift_left(
                                T.reinterpret(B.vload([0, 0], dtype="int8x4"), dtype="uint32"),
                                T.uint32(24),
                            ),
                        ),
                        dtype="int32",
                    ),
                ),
                intrin(
                    "llvm.arm.smlad",
                    T.reinterpret(A.vload([0], dtype="int16x2"), dtype="int32"),
                    intrin(
                        "llvm.arm.sxtb16",
                        T.reinterpret(B.vload([0, 0], dtype="int8x4"), dtype="int32"),
                    ),
                    C[0],
                ),
            )

    return _one_lane_desc(4, "int8", interleaved), impl


def _one_lane_desc(group: int, b_dtype: str, lane, a_dtype: str = "int16"):
    """What a one-lane intrinsic computes: C[0] += sum_k A[k] * B[0, lane(k)] over the
    group (`lane`: where the packed weights hold k)."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((group,), a_dtype, offset_factor=1),
        B: T.Buffer((1, group), b_dtype, offset_factor=1),
        C: T.Buffer((1,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:1], A[0:group], B[0:1, 0:group])
            T.writes(C[0:1])
            for k in T.serial(0, group):
                with T.sblock("update"):
                    vk = T.axis.reduce(group, k)
                    C[0] = C[0] + T.cast(A[vk], "int32") * T.cast(B[0, lane(vk)], "int32")

    return desc


@functools.cache
def register_intrinsics() -> None:
    """Register ours once per process (TVM's own x86 ones predate LLVM 22's byte-vector
    signatures, and importing tvm.s_tir.tensor_intrin costs a minute of CUDA set-up)."""
    from tvm.s_tir import TensorIntrin

    table = {
        "mscnn_vpdpbusd": (16, 4, "uint8", "int8", "llvm.x86.avx512.vpdpbusd.512", "int8x64"),
        "mscnn_vpdpwssd": (16, 2, "int16", "int16", "llvm.x86.avx512.vpdpwssd.512", "int16x32"),
        # AVX-VNNI: LLVM selects the VEX encoding from the 256-bit forms without AVX-512VL
        "mscnn_vpdpbusd_ymm": (8, 4, "uint8", "int8", "llvm.x86.avx512.vpdpbusd.256", "int8x32"),
        "mscnn_vpdpwssd_ymm": (8, 2, "int16", "int16", "llvm.x86.avx512.vpdpwssd.256", "int16x16"),
        "mscnn_sdot": (4, 4, "int8", "int8", "llvm.aarch64.neon.sdot.v4i32.v16i8", "int8x16"),
        "mscnn_vpmaddwd": (8, 2, "int16", "int16", "llvm.x86.avx2.pmadd.wd", "int16x16"),
    }
    for name, args in table.items():
        TensorIntrin.register(name, *_intrinsic(*args), override=True)
    TensorIntrin.register("mscnn_vpmaddubsw", *_vpmaddubsw(), override=True)
    TensorIntrin.register("mscnn_smlad", *_smlad(), override=True)
    TensorIntrin.register("mscnn_smlad_pairs", *_smlad_pairs(), override=True)
    TensorIntrin.register("mscnn_smlad_sxtb16", *_smlad_sxtb16(), override=True)
    TensorIntrin.register("mscnn_vmlava_s8", *_vmlava(16, "int8"), override=True)
    TensorIntrin.register("mscnn_vmlava_s16", *_vmlava(8, "int16"), override=True)


def select_isa(tvm_target: Mapping[str, Any], require: str | None = None) -> Isa:
    """The target's int8 instruction set, from its LLVM features (not its name).

    `require` names an ISA of `ISAS` the build must use: a target without its feature is
    refused, naming the feature."""
    import tvm
    from tvm.target import codegen

    target = tvm.target.Target(dict(tvm_target))
    triple = str(target.attrs.get("mtriple", ""))
    usable = [
        isa
        for isa in ISAS.values()
        if isa.feature is None
        or (triple.startswith(isa.arch) and codegen.target_has_features(isa.feature, target))
    ]
    if require is not None:
        if require not in ISAS:
            raise CompileError(f"int8 ISA {require!r}; choose from: {', '.join(ISAS)}")
        if ISAS[require] not in usable:
            isa = ISAS[require]
            raise CompileError(
                f"target {dict(tvm_target)} has no {isa.feature} ({isa.arch}): the int8 "
                f"kernels asked for need its {isa.instruction} instruction; give a CPU that "
                f"has it (e.g. mcpu cascadelake or znver4 for avx512vnni, alderlake for "
                f"avxvnni, mattr +dotprod)"
            )
        return ISAS[require]
    isa = usable[0]
    if isa.feature is None:  # plain vector loops: as many int32 lanes as the vectors hold
        bits = codegen.llvm_get_vector_width(target)
        if triple.startswith("x86_64") and not codegen.target_has_features("avx512f", target):
            bits = 256  # LLVM reports 512 for AVX2-only CPUs such as haswell
        lanes = max(4, bits // 32)
        regs = 24 if lanes == 16 or triple.startswith("aarch64") else 12
        byte = Dot(lanes, 1, None, "int8", None, regs)
        isa = Isa(isa.name, None, "any", byte, byte, None)
    return isa


# --------------------------------------------------------------------------------------
# Kernels (TE), each scheduled for its Dot


def _operand_offset(stored: str, dot: Dot) -> tuple[str, int]:
    """(operand dtype, o): the instruction sees stored value + o."""
    operand = dot.operand or stored
    offsets = {("int8", "uint8"): 128, ("uint8", "int8"): -128}
    offsets |= {(small, "int16"): 0 for small in ("int8", "uint8")}  # widening: exact
    offsets |= {(small, "int32"): 0 for small in ("int8", "uint8", "int16")}
    if stored != operand and (stored, operand) not in offsets:
        raise CompileError(f"int8: no {operand} operand for a {stored} tensor")
    return operand, offsets.get((stored, operand), 0)


@dataclass(frozen=True)
class ConvKernel:
    """One conv (or per-frame linear: kernel 1) as the program calls it."""

    conv: QConv
    batch: int
    length: int  # time steps (frames for the head)
    in_channels: int
    dot: Dot
    lut: np.ndarray | None = None  # the head's activation table, applied after requant
    classes: int | None = None  # the last linear: float32 output of this many channels
    pool: int = 1  # a max-pool fused into the epilogue (its tile holds whole windows)
    pad: int | None = None  # zero padding per side; None: the conv's "same" padding,
    # 0: a stream step's conv, its input the span of context plus `length` samples
    offset: int | None = None  # the operand offset where the input's range is known
    # narrower than its dtype (`byte_dot`); None: `_operand_offset`'s

    def operand(self) -> tuple[str, int]:
        """(operand dtype, o): the instruction sees the stored value + o."""
        operand, off = _operand_offset(self.conv.in_dtype, self.dot)
        return operand, off if self.offset is None else self.offset

    @property
    def padding(self) -> int:
        return self.conv.pad if self.pad is None else self.pad

    @property
    def in_length(self) -> int:
        """Rows of the input: the output's, plus the span, less the padding."""
        span = self.conv.dilation * (self.conv.kernel - 1)
        return self.length + span - 2 * self.padding

    @property
    def padded_out(self) -> int:
        f = self.conv.weight.shape[0]
        return -(-f // self.dot.lanes) * self.dot.lanes

    def tile(self, serial: bool) -> tuple[int, int]:
        """(time steps, channel vectors) of the register tile (`_tile`)."""
        budget = min(self.dot.registers, (STACK_BYTES - 1) // (4 * self.dot.lanes))
        vectors = self.padded_out // self.dot.lanes
        return _tile(self.length, vectors, budget, self.pool, serial)

    @property
    def block(self) -> int:
        """Output channels whose weights are packed side by side: a one-lane dot's tile
        (serial, microcontrollers), so the tile's weight words are adjacent in flash
        (small offsets, paired loads); 1 elsewhere."""
        return self.tile(serial=True)[1] if self.dot.lanes == 1 and self.dot.intrin else 1

    @property
    def padded_group_in(self) -> int:
        cg = self.conv.weight.shape[1]
        return -(-cg // self.dot.group) * self.dot.group

    def constants(self) -> list[np.ndarray]:
        """The kernel's constant arguments: packed weights, bias (offset absorbed), and the
        requantization (multiplier, rounding, shift), table or output scale."""
        conv, dot = self.conv, self.dot
        f, cg, k = conv.weight.shape
        fp, cgp, lanes, group = self.padded_out, self.padded_group_in, dot.lanes, dot.group
        w = np.zeros((fp, cgp, k), dtype=np.int64)
        w[:f, :cg] = conv.weight
        packed = w.reshape(fp // lanes, lanes, cgp // group, group, k).transpose(0, 4, 2, 1, 3)
        if self.block > 1:  # [F / block, K, C / group, block, lanes, group]
            shape = (fp // lanes // self.block, self.block, k, cgp // group, lanes, group)
            packed = packed.reshape(shape).transpose(0, 2, 3, 1, 4, 5)
        if dot.interleave:
            packed = packed[..., [interleaved(j) for j in range(group)]]
        _, offset = self.operand()
        bias = np.zeros(fp, dtype=np.int64)
        bias[:f] = conv.bias.astype(np.int64) - offset * conv.weight.astype(np.int64).sum((1, 2))
        if np.abs(bias).max() >= 2**31:
            raise CompileError(f"int8: {conv.name}: the operand offset overflows its bias")
        out = [np.ascontiguousarray(packed).astype(dot.weight), bias.astype(np.int32)]
        if conv.requant is None:
            return [*out, np.asarray(conv.out_scale, dtype=np.float32).reshape(-1)]
        rq = conv.requant

        def padded(v: np.ndarray, dtype, fill: int) -> np.ndarray:  # padding lanes unused
            return np.concatenate([v, np.full(fp - f, fill, dtype=v.dtype)]).astype(dtype)

        if self.mulh:  # padding lanes: m = 0, so 0 whatever the rest
            out += [padded(v, np.int32, 0) for v in mulh_constants(rq)]
        else:
            out += [
                padded(rq.multiplier, np.int32, 0),
                padded(rq.rounding, np.int64, 0),
                padded(rq.shift, np.int64, 1),
            ]
        return out + ([self.lut] if self.lut is not None else [])

    @property
    def mulh(self) -> bool:
        """Whether the requantization runs on vectors of output channels by their high
        products (`_requant_mulh`): the Dot asks for it, the register tile holds whole
        vectors of output channels and every shift is at least 32."""
        rq, lanes = self.conv.requant, self.dot.requant_lanes
        if lanes == 1 or rq is None or int(rq.shift.min()) < 32:
            return False
        return self.tile(serial=True)[1] * self.dot.lanes % lanes == 0

    @property
    def macs(self) -> int:
        """The multiply-accumulates one call computes (the model's, not the padding's)."""
        f, cg, k = self.conv.weight.shape
        return self.batch * self.length * f * cg * k

    def output(self) -> tuple[tuple[int, ...], str]:
        if self.classes is not None:
            return (self.batch, self.length, self.classes), "float32"
        f = self.conv.weight.shape[0]
        dtype = str(self.lut.dtype) if self.lut is not None else self.conv.out_dtype
        return (self.batch, self.length // self.pool, f), dtype


def _conv_te(kc: ConvKernel, narrow: bool = False):
    """The TE stages of a conv kernel: pad (and convert to the operand), accumulate,
    epilogue (`narrow`: `_epilogue`'s). Returns (args, names of the stages)."""
    from tvm import te, tirx

    conv, dot = kc.conv, kc.dot
    b, t, c = kc.batch, kc.length, kc.in_channels
    g, k, d, p = conv.groups, conv.kernel, conv.dilation, kc.padding
    cg, cgp, fp = c // g, kc.padded_group_in, kc.padded_out
    fg, lanes, group = fp // g, dot.lanes, dot.group
    operand, off = kc.operand()
    t_in = kc.in_length
    x = te.placeholder((b, t_in, c), conv.in_dtype, name="x")
    nb = kc.block
    wshape = (fp // lanes // nb, k, cgp // group, *([nb] if nb > 1 else []), lanes, group)
    w = te.placeholder(wshape, dot.weight, name="w")
    bias = te.placeholder((fp,), "int32", name="bias")

    def pad(n, i, j):
        inside = [i >= p, i < t_in + p] + ([j % cgp < cg] if cgp != cg else [])
        src = x[n, i - p, (j // cgp) * cg + j % cgp if cgp != cg else j]
        value = (src.astype("int32") + off).astype(operand)
        return tirx.if_then_else(tirx.all(*inside), value, tirx.const(off, operand))

    xp = te.compute((b, t_in + 2 * p, g * cgp), pad, name="pad")
    rk, rc = te.reduce_axis((0, k), "k"), te.reduce_axis((0, cgp), "c")

    def lane(j):  # where a group's input channel j sits in the packed weights
        return interleaved(j) if dot.interleave else j

    def channel(f, rc):
        return rc if g == 1 else (f // fg) * cgp + rc

    def weight(f, rk, rc):
        v, j = f // lanes, lane(rc % group)
        if nb > 1:
            return w[v // nb, rk, rc // group, v % nb, f % lanes, j]
        return w[v, rk, rc // group, f % lanes, j]

    acc = te.compute(
        (b, t, fp),
        lambda n, i, f: te.sum(
            xp[n, i + d * rk, channel(f, rc)].astype("int32") * weight(f, rk, rc).astype("int32"),
            axis=[rk, rc],
        ),
        name="acc",
    )
    args, out = _epilogue(kc, acc, bias, narrow)
    return [x, w, bias, *args, out]


def _epilogue(kc: ConvKernel, acc, bias, narrow: bool = False):
    """Requantization (and activation table) or, for the last linear, the float output.

    `narrow` (a 32-bit core; AVX2, which has no 64-bit arithmetic shift by a variable
    amount, takes it too): where every channel's shift s is at least 32, the 64-bit
    sum P = A x multiplier + rounding is shifted by 32 and then, as int32, by s - 32:
    floor(floor(P / 2^32) / 2^(s - 32)) = floor(P / 2^s), the same integer. LLVM then
    keeps one multiply-accumulate into a register pair (`smlal`) and takes its high
    word, not a 64-bit shift by a variable amount and a 64-bit clamp."""
    from tvm import te, tirx

    conv = kc.conv
    shape, _ = kc.output()
    if conv.requant is None:
        scale = te.placeholder((kc.classes,), "float32", name="scale")
        out = te.compute(
            shape,
            lambda n, i, f: (acc[n, i, f] + bias[f]).astype("float32") * scale[f],
            name="out",
        )
        return [scale], out
    rq = conv.requant
    rq_args = _requant_args(kc)
    mul, rnd, sh = rq_args[0], rq_args[1], rq_args[-1]
    lut = te.placeholder((256,), str(kc.lut.dtype), name="lut") if kc.lut is not None else None
    wide = "int32" if kc.mulh or (narrow and int(rq.shift.min()) >= 32) else "int64"

    def requant(a, f):
        a = a + bias[f]
        if rq.relu:
            a = tirx.max(a, 0)
        if kc.mulh:
            y = _requant_mulh(a, f, *rq_args)
        elif wide == "int32":
            y = a.astype("int64") * mul[f].astype("int64") + rnd[f]
            high = tirx.shift_right(y, tirx.const(32, "int64")).astype("int32")
            y = tirx.shift_right(high, (sh[f] - 32).astype("int32"))
        else:
            y = tirx.shift_right(a.astype("int64") * mul[f].astype("int64") + rnd[f], sh[f])
        y = tirx.max(tirx.min(y, tirx.const(rq.hi, wide)), tirx.const(rq.lo, wide))
        return y.astype(conv.out_dtype)

    def pooled(n, i, f):
        """max over the window of requant(acc), computed as one requantization: requant is
        monotone in acc, non-decreasing where the multiplier is >= 0 (max of the window)
        and non-increasing where it is < 0 (min), so the two are equal bit for bit."""
        window = [acc[n, i * kc.pool + j, f] for j in range(kc.pool)]
        if len(window) == 1:
            return requant(window[0], f)
        top, bottom = functools.reduce(tirx.max, window), functools.reduce(tirx.min, window)
        return requant(tirx.Select(mul[f] >= 0, top, bottom), f)

    if lut is None:
        return rq_args, te.compute(shape, pooled, name="out")
    # The table lookup in a stage of its own: the requantization stays vectorised, the
    # lookup (a gather, which TVM would scalarise lane by lane) runs as plain scalar code.
    q = te.compute(shape, pooled, name="requant")
    out = te.compute(shape, lambda n, i, f: lut[q[n, i, f].astype("int32") + 128], name="out")
    return [*rq_args, lut], out


def mulh_constants(rq: quantize.Requant) -> tuple[np.ndarray, ...]:
    """`_requant_mulh`'s per-channel constants, int32: the multiplier m, the rounding's
    high word R and the complement of its low word l (a uint32's bits), r = R * 2^32 + l,
    and the shift less 32."""
    rounding = rq.rounding.astype(np.int64)
    low = (rounding & 0xFFFFFFFF).astype(np.uint32)
    return (
        rq.multiplier.astype(np.int32),
        (rounding >> 32).astype(np.int32),
        (~low).view(np.int32),
        (rq.shift - 32).astype(np.int32),
    )


def _requant_args(kc: ConvKernel) -> list:
    """The requantization's per-channel placeholders, the multiplier first (int32: a
    32 x 32 -> 64-bit multiply, vpmuldq or smull, not 64 x 64): the rounding and shift
    (int64), or `_requant_mulh`'s rounding high word, low word's complement (a uint32's
    bits) and shift less 32 (int32)."""
    from tvm import te

    fp = kc.padded_out
    mul = te.placeholder((fp,), "int32", name="mul")
    if kc.mulh:
        names = ("rnd_hi", "rnd_lo_not", "sh32")
        return [mul, *(te.placeholder((fp,), "int32", name=nm) for nm in names)]
    return [mul, *(te.placeholder((fp,), "int64", name=nm) for nm in ("rnd", "sh"))]


def _requant_mulh(a, f, mul, rnd_hi, rnd_lo_not, sh32):
    """floor((a * m + r) / 2^s) for s >= 32 in 32-bit lanes, the same integer as the int64
    form: with a * m = H * 2^32 + L and r = R * 2^32 + l (L, l in [0, 2^32)), it is
    floor((H + R + c) / 2^(s - 32)), c the carry of L + l: L > ~l, unsigned (not L + l < L,
    which TVM's simplifier takes for l < 0). H is the high product (Helium's `vmulh`), L
    the low one (`vmul`, unsigned: it wraps), so four output channels requantize as one
    vector, where the int64 form leaves one `smlal` per channel."""
    from tvm import tirx

    doubled = tirx.call_llvm_pure_intrin("int32", "llvm.arm.mve.vqdmulh", a, mul[f])
    high = tirx.shift_right(doubled, tirx.const(1, "int32"))
    low = a.astype("uint32") * mul[f].astype("uint32")
    carry = (low > rnd_lo_not[f].astype("uint32")).astype("int32")
    return tirx.shift_right(high + rnd_hi[f] + carry, sh32[f])


def _tile(
    length: int, vectors: int, budget: int, pool: int = 1, serial: bool = False
) -> tuple[int, int]:
    """(time steps, channel vectors) of the register tile: the most accumulators within
    `budget` from divisors of the length and vector count (no tails, no predicates), the
    squarer of equals (fewest loads per instruction). With a fused `pool` the time steps
    are whole pooling windows. `serial` (one thread): at least two time steps, beyond
    the budget if the length has no smaller divisor."""
    options = [
        (tt, fv)
        for tt in range(pool, 17, pool)
        if length % tt == 0
        for fv in range(1, 5)
        if vectors % fv == 0 and tt * fv <= budget
    ]
    several = [o for o in options if o[0] > 1] if serial else []
    if serial and not several and length > 1:  # no small divisor (25 frames): one time
        several = [o for o in options if o[1] > 1]  # step by several channel vectors
    if serial and not several and length > 1:  # the serial epilogue needs a time loop
        several = [(next(t for t in range(max(2, pool), length + 1) if length % t == 0), 1)]
    return max(several or options, key=lambda o: (o[0] * o[1], -(o[0] + o[1])))


STACK_READS = 3  # a stack scratch may re-read the halo up to this many times per row


def _pad_chunk(sch, to, tt: int, kc: ConvKernel):
    """The loop over chunks of time tiles under which a single-threaded conv pads its
    input: each chunk re-reads the dilation halo, d x (k - 1) rows; scratch is chunk
    plus halo rows. Where some chunk's scratch fits TVM's stack (below 1 KiB) with at
    most `STACK_READS` reads per row, the largest such, for `smlad` pairs: LLVM then
    knows the scratch's alignment (a workspace pointer it sees as 2-byte aligned) and
    pairs the input words into `ldrd`. Otherwise a chunk spans at least the halo."""
    halo = kc.conv.dilation * (kc.conv.kernel - 1)
    tiles = kc.length // tt
    row = kc.in_channels * np.dtype(kc.operand()[0]).itemsize
    pairs = kc.dot.intrin == "mscnn_smlad_pairs"  # the loads that pair
    stack = [
        c
        for c in range(1, tiles + 1)
        if pairs
        and tiles % c == 0
        and (c * tt + halo) * row < STACK_BYTES
        and c * tt + halo <= STACK_READS * c * tt
    ]
    want = -(-halo // tt)
    chunk = next((c for c in range(max(1, want), tiles + 1) if tiles % c == 0), tiles)
    return sch.split(to, [None, max(stack, default=chunk)])[0]


def _schedule_conv(func, kc: ConvKernel, parallel: bool = True):
    """Register tile of tt time steps x fv channel vectors accumulating in registers, the
    dot instruction innermost (tensorized), the epilogue on the tile, tiles in parallel."""
    import tvm

    dot = kc.dot
    sch = tvm.s_tir.Schedule(func)
    acc, out, pad = (sch.get_sblock(n) for n in ("acc", "out", "pad"))
    n, i, f, rk, rc = sch.get_loops(acc)
    # The accumulators are a tile-sized buffer, which TVM puts on the stack (where LLVM
    # keeps it in registers) only below 1 KiB; larger ones become a heap workspace
    # allocated, zeroed and freed in every tile.
    tt, fv = kc.tile(not parallel)
    to, ti = sch.split(i, [None, tt])
    fo, fu, fi = sch.split(f, [None, fv, dot.lanes])
    # One thread (a microcontroller): time tiles outermost, so that the padded input is
    # computed per time tile (a few rows of scratch, not a padded copy of the tensor).
    outer, tile = ((n, fo, to), to) if parallel else ((n, to, fo), fo)
    red = rk  # the outermost reduction loop
    if dot.group > 1:
        rco, rci = sch.split(rc, [None, dot.group])
        sch.reorder(*outer, rk, rco, ti, fu, fi, rci)
        if not parallel and dot.lanes == 1 and int(sch.get(rco).extent) <= UNROLL_REDUCTION:
            sch.unroll(rco)  # straight code: operands at fixed offsets, no loop counter
        elif dot.intrin == "mscnn_vpmaddwd" and int(sch.get(rco).extent) < 16:
            red = sch.fuse(rk, rco)  # AVX2: LLVM unrolled a short one in full, spilling
    else:
        sch.reorder(*outer, rk, rc, ti, fu, fi)
    _epilogue_on_tile(sch, kc, out, tile)
    if parallel:
        sch.parallel(sch.fuse(n, fo, to))
    else:  # the padded input per chunk of time tiles (before tensorize replaces its reader)
        sch.compute_at(pad, _pad_chunk(sch, to, tt, kc))
    sch.unroll(ti)
    sch.unroll(fu)
    if dot.intrin is None:  # vectorise before decompose_reduction, not after
        sch.vectorize(fi)
    if kc.mulh and dot.lanes == 1:  # one-lane dots, vector requantization (Helium)
        _channel_major(sch, acc)
    init = sch.decompose_reduction(acc, red)
    if dot.intrin is not None:
        sch.vectorize(sch.get_loops(init)[-1])
        # One lane: the lane loop vanishes from the block, the pair loop is the intrinsic.
        sch.tensorize(rci if dot.lanes == 1 else fi, dot.intrin)
    if not parallel:  # one thread, no vector unit: plain loops
        return sch.mod["main"].with_attr("tirx.is_scheduled", True)
    n, i, j = sch.get_loops(pad)
    sch.parallel(sch.fuse(n, i))
    width = next((v for v in (64, 32, 16) if int(sch.get(j).extent) % v == 0), None)
    if width is not None and kc.padded_group_in == kc.conv.weight.shape[1]:
        sch.vectorize(sch.split(j, [None, width])[1])  # the condition is on time only
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _epilogue_on_tile(sch, kc: ConvKernel, out, tile) -> None:
    """The requantization (and its table lookup) computed at the register tile, channel
    vectors stored whole."""
    dot = kc.dot
    epilogue = [sch.get_sblock("requant")] if kc.lut is not None else []
    for block in [*epilogue, out]:
        sch.reverse_compute_at(block, tile)
        o_t, o_f = sch.get_loops(block)[-2:]
        lookup = block == out and bool(epilogue)  # the table lookup stays scalar
        lanes = dot.requant_lanes if kc.mulh else dot.lanes  # Helium: 4 channels a vector
        if int(sch.get(o_f).extent) % lanes == 0 and not lookup:
            o_fo, o_fi = sch.split(o_f, [None, lanes])
            sch.vectorize(o_fi)
            sch.unroll(o_fo)
        if not sch.get(o_t).same_as(sch.get(tile)):  # (a fused pool can leave one frame)
            sch.unroll(o_t)


def _channel_major(sch, acc) -> None:
    """The accumulators channel-major: the vector requantization gathers them (scalar
    moves after the loop), so LLVM keeps each in a scalar register through the loop;
    time-major, its vector reads made the loop carry them in vector registers, moved out
    and in at every tap."""
    sch.transform_layout(acc, ("write", 0), lambda n, i, f: (n, f, i))


def spatial(outputs, inputs, parallel: bool = True, vector: int = 16):
    """A PrimFunc of elementwise stages, parallel over all but the innermost axis, which
    is vectorised when its extent allows."""
    import tvm
    from tvm import te

    func = te.create_prim_func([*inputs, outputs])
    sch = tvm.s_tir.Schedule(func)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        loops = sch.get_loops(block)
        inner = int(sch.get(loops[-1]).extent)
        if not parallel:
            continue
        if len(loops) > 2:
            sch.parallel(sch.fuse(*loops[:-1]))
        if inner % vector == 0:
            sch.vectorize(sch.split(loops[-1], [None, vector])[1])
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _quantize_func(qm: QuantizedModel, batch: int, samples: int, parallel: bool = True):
    """float32 (batch, leads, samples) -> clip(rint(x * inv_scale)) (batch, samples, leads)."""
    from tvm import te, tirx

    lo, hi = RANGES[qm.input_dtype]
    x = te.placeholder((batch, qm.in_channels, samples), "float32", name="x")
    inv = tirx.const(float(qm.input_inv_scale), "float32")

    def q(n, i, c):
        v = tirx.nearbyint(x[n, c, i] * inv)
        return tirx.max(tirx.min(v, float(hi)), float(lo)).astype(qm.input_dtype)

    out = te.compute((batch, samples, qm.in_channels), q, name="quantize")
    return spatial(out, [x], parallel)


def pool_func(
    batch: int, length: int, channels: list[int], dtype: str, size: int, parallel: bool = True
):
    """Max-pool of one or several (batch, length, c) tensors, concatenated on channels."""
    from tvm import te, tirx

    xs = [te.placeholder((batch, length, c), dtype, name=f"x{j}") for j, c in enumerate(channels)]
    starts = np.cumsum([0, *channels]).tolist()

    def pooled(x, n, i, c):
        return functools.reduce(tirx.max, [x[n, i * size + j, c] for j in range(size)])

    def value(n, i, c):
        v = pooled(xs[-1], n, i, c - starts[-2])
        for j in range(len(xs) - 2, -1, -1):  # the branches by channel range
            v = tirx.if_then_else(c < starts[j + 1], pooled(xs[j], n, i, c - starts[j]), v)
        return v

    out = te.compute((batch, length // size, starts[-1]), value, name="pool")
    return spatial(out, xs, parallel)


def dequantize_func(batch: int, frames: int, channels: int, scale: float, parallel: bool = True):
    """int8 (batch, frames, channels) -> float32(q) * scale as (batch, channels, frames)."""
    from tvm import te, tirx

    h = te.placeholder((batch, frames, channels), "int8", name="h")
    s = tirx.const(float(np.float32(scale)), "float32")
    out = te.compute(
        (batch, channels, frames),
        lambda n, c, i: h[n, i, c].astype("float32") * s,
        name="dequantize",
    )
    return spatial(out, [h], parallel)


def _requant_scalar(a, rq):
    """`quantize.requantize` of an int32 expression, for a per-tensor Requant."""
    from tvm import tirx

    m, r, s = (tirx.const(int(v[0]), "int64") for v in (rq.multiplier, rq.rounding, rq.shift))
    if rq.relu:
        a = tirx.max(a, 0)
    y = tirx.shift_right(a.astype("int64") * m + r, s)
    return tirx.max(tirx.min(y, tirx.const(rq.hi, "int64")), tirx.const(rq.lo, "int64"))


def _over_frames(batch: int, frames: int, channels: int, op: str):
    """(h, reduction): max or sum over frames of int8 (batch, frames, channels), int32."""
    from tvm import te

    h = te.placeholder((batch, frames, channels), "int8", name="h")
    t = te.reduce_axis((0, frames), "t")
    reduce = te.max if op == "max" else te.sum
    out = te.compute(
        (batch, channels), lambda n, c: reduce(h[n, t, c].astype("int32"), axis=t), name=op
    )
    return h, out


def _schedule_reduction(func, name: str, vector: int = 16):
    """Frames outermost, channels innermost in vectors: each frame is one contiguous
    row of the time-major features."""
    import tvm

    sch = tvm.s_tir.Schedule(func)
    block = sch.get_sblock(name)
    n, c, t = sch.get_loops(block)
    if int(sch.get(c).extent) % vector == 0:
        co, ci = sch.split(c, [None, vector])
        sch.reorder(n, co, t, ci)
        sch.vectorize(ci)  # before decompose_reduction, not after
        sch.decompose_reduction(block, t)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _squeeze_func(batch: int, frames: int, channels: int, full: int, rq):
    """SE's squeeze: per channel of the full model, the int8 mean over frames of the
    features (batch, frames, channels), or the dropped lead's constant (`pos` < 0)."""
    from tvm import te, tirx

    h, total = _over_frames(batch, frames, channels, "sum")
    pos = te.placeholder((full,), "int32", name="pos")
    const = te.placeholder((full,), "int8", name="const")

    def mean(n, o, c):
        v = _requant_scalar(total[n, tirx.max(pos[c], 0)], rq).astype("int8")
        return tirx.if_then_else(pos[c] >= 0, v, const[c])

    out = te.compute((batch, 1, full), mean, name="mean")
    return _schedule_reduction(te.create_prim_func([h, pos, const, out]), "sum")


def _global_pool_func(batch: int, frames: int, channels: int, full: int, mode: str, rq, se: bool):
    """ECG_CRNN's global pooling: max (or sum) over frames per channel (a dropped lead's
    constant where `pos` < 0), times SE's excitation, requantized to int8."""
    from tvm import te, tirx

    h, pooled = _over_frames(batch, frames, channels, "max" if mode == "max" else "sum")
    pos = te.placeholder((full,), "int32", name="pos")
    const = te.placeholder((full,), "int32", name="const")
    excite = te.placeholder((batch, 1, full), "uint8", name="excite")

    def value(n, o, c):
        v = tirx.if_then_else(pos[c] >= 0, pooled[n, tirx.max(pos[c], 0)], const[c])
        if se:
            v = v * excite[n, o, c].astype("int32")
        return _requant_scalar(v, rq).astype("int8")

    out = te.compute((batch, 1, full), value, name="global_pool")
    args = [h, pos, const, *([excite] if se else []), out]
    return _schedule_reduction(te.create_prim_func(args), "max" if mode == "max" else "sum")


# --------------------------------------------------------------------------------------
# The program


@dataclass
class Int8Program:
    """A compiled int8 model: `program(x)` runs it in-process (when built for this host)."""

    executable: Any  # tvm.relax.Executable
    qmodel: QuantizedModel
    isa: Isa
    tvm_target: dict
    input_shape: tuple[int, int, int]
    output_shape: tuple[int, ...]
    kernels: tuple[str, ...]
    constant_bytes: int  # weights, biases, requantization and tables the program holds
    _vm: Any = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The output for float32 `x` of `input_shape` (refused otherwise, as in run_int8)."""
        import tvm
        from tvm import relax

        x = check_calibration(x, self.qmodel.in_channels, "input")
        if x.shape != self.input_shape:
            raise CompileError(f"input shape {x.shape}: this int8 program takes {self.input_shape}")
        if self._vm is None:
            self._vm = relax.VirtualMachine(self.executable, tvm.cpu())
        dev = tvm.cpu()
        out = self._vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x), dev))
        return out.numpy()

    def asm(self) -> str:
        """The kernels' generated assembly (any target: it is LLVM's output, not run)."""
        return _assembly(self.executable.mod)

    def export(self, path: str | Path, cc: str | None = None) -> Path:
        """Write the shared library (`cc`: a cross C++ driver for other architectures)."""
        import tvm

        path = Path(path)
        fcompile = tvm.support.cc.cross_compiler(cc) if cc else None
        self.executable.export_library(str(path), fcompile=fcompile)
        return path


def _assembly(module) -> str:
    texts = []
    for m in [module, *module.imports]:
        try:
            texts.append(m.inspect_source("asm"))
        except Exception:  # modules without LLVM code (the VM program itself)
            continue
        texts.extend(_assembly(i) for i in m.imports)
    return "\n".join(texts)


def build_int8(
    qm: QuantizedModel,
    tvm_target: Mapping[str, Any] = X86_VNNI,
    batch: int = 1,
    samples: int = 5000,
    require: str | None = None,
) -> Int8Program:
    """Compile the quantized model for `tvm_target` (TVM JSON form) at a static input of
    (batch, leads, samples). `require` names the int8 ISA (`ISAS`) the kernels must use;
    without it the best the target's features allow is taken."""
    import tvm

    isa = select_isa(tvm_target, require)
    if isa.byte.intrin or isa.word.intrin:
        register_intrinsics()
    log.info(
        "int8 program: %s, batch %d x %d samples, %s kernels",
        qm.preset or "model",
        batch,
        samples,
        isa.name,
    )
    mod, names, constants = _relax_module(qm, isa, batch, samples)
    target = tvm.target.Target(dict(tvm_target))
    with target:
        executable = tvm.compile(mod, target=target)
    out = mod["main"].ret_ty
    return Int8Program(
        executable,
        qm,
        isa,
        dict(tvm_target),
        (batch, qm.in_channels, samples),
        tuple(int(v) for v in out.shape),
        tuple(names),
        constants,
    )


def relax_program(
    qm: QuantizedModel, tvm_target: Mapping[str, Any], samples: int, require: str | None = None
):
    """(Relax module, Isa): the program `build_int8` compiles, unbuilt, for another
    lowering (compile/mcu/aot.py's for microcontrollers, whose ISA runs single-threaded).
    `require` names the ISA, as for build_int8."""
    isa = select_isa(tvm_target, require)
    if isa.byte.intrin or isa.word.intrin:
        register_intrinsics()
    return _relax_module(qm, isa, 1, samples)[0], isa


def _fusable(length: int, pool: int, dot: Dot) -> bool:
    """Whether a conv's register tile can hold whole pooling windows without a tail."""
    return length % pool == 0 and any(
        length % tt == 0 for tt in range(pool, min(16, dot.registers) + 1, pool)
    )


def fit_groups(dot: Dot, conv: QConv) -> Dot:
    """The Dot for `conv`: a dot instruction's lanes share one input vector, so a
    grouped conv with fewer output channels per group than lanes (or not a multiple)
    cannot feed it; such a conv gets plain loops over vectors of whole groups."""
    per_group = conv.weight.shape[0] // conv.groups
    if conv.groups == 1 or per_group % dot.lanes == 0:
        return dot
    return Dot(math.gcd(per_group, 16), 1, None, "int8", None, registers=12)


def unsigned_pairs_fit(conv: QConv, span: int) -> bool:
    """Whether `vpmaddubsw` on unsigned activations in [0, span] cannot saturate: each
    int16 lane sums the products of one pair of consecutive input channels (one tap, one
    output channel), so span x the pair's positive weights and span x its negative ones
    must stay inside int16."""
    w = conv.weight.astype(np.int64)
    f, cg, k = w.shape
    w = np.concatenate([w, np.zeros((f, cg % 2, k), np.int64)], axis=1).reshape(f, -1, 2, k)
    up, down = np.clip(w, 0, None).sum(axis=2), np.clip(-w, 0, None).sum(axis=2)
    return span * int(up.max()) <= 2**15 - 1 and span * int(down.max()) <= 2**15


def byte_dot(isa: Isa, conv: QConv, low: int | None = None, high: int | None = None):
    """(Dot, operand offset or None) for a conv of 8-bit input whose values lie in [low,
    high] (None: its dtype's range; widened to hold the padding's 0): the ISA's
    unsigned-byte dot with the input offset by -low where its pairs cannot saturate
    (`unsigned_pairs_fit`), else its byte dot."""
    lo, hi = RANGES[conv.in_dtype]
    lo, hi = min(lo if low is None else low, 0), max(hi if high is None else high, 0)  # pads
    unsigned = isa.unsigned is not None and conv.groups == 1 and hi - lo <= 255
    if unsigned and unsigned_pairs_fit(conv, hi - lo):
        return isa.unsigned, -lo
    return fit_groups(isa.byte, conv), None


class Builder:
    """Emits one call_tir per kernel into a Relax dataflow block; counts constants."""

    def __init__(self, bb, isa: Isa, batch: int) -> None:
        self.bb, self.isa, self.batch = bb, isa, batch
        self.names: list[str] = []
        self.constant_bytes = 0

    def call(self, name: str, func, args: list, shape, dtype: str):
        from tvm import relax

        consts = []
        for a in args:
            if isinstance(a, np.ndarray):
                self.constant_bytes += a.nbytes
                consts.append(relax.const(a, str(a.dtype)))
            else:
                consts.append(a)
        gv = self.bb.add_func(func.with_attr("global_symbol", name), name)
        self.names.append(name)
        sinfo = relax.TensorType([int(s) for s in shape], dtype)
        return self.bb.emit(relax.call_tir(gv, consts, sinfo))

    def conv(self, name: str, h, kc: ConvKernel):
        from tvm import te

        # microcontrollers (32-bit) and AVX2 (no 64-bit arithmetic shift): the int32 tail
        narrow = not self.isa.parallel or self.isa.name == "avx2"
        te_args = _conv_te(kc, narrow=narrow)
        func = _schedule_conv(te.create_prim_func(te_args), kc, self.isa.parallel)
        func = func.with_attr(MACS_ATTR, kc.macs)  # the per-kernel profile's MACs
        return self.call(name, func, [h, *kc.constants()], *kc.output())

    def branch(self, b: int, branch, h, length: int, channels: int):
        """The branch's convs and pools up to (not including) its last pool."""
        for k, block in enumerate(branch):
            for c, conv in enumerate(block.convs):
                dot, offset = (
                    (fit_groups(self.isa.word, conv), None)
                    if conv.in_dtype == "int16"
                    else byte_dot(self.isa, conv)
                )
                last = c == len(block.convs) - 1 and k < len(branch) - 1
                pool = block.pool if last and _fusable(length, block.pool, dot) else 1
                kc = ConvKernel(conv, self.batch, length, channels, dot, pool=pool, offset=offset)
                h = self.conv(f"branch{b}_block{k}_conv{c}", h, kc)
                channels = conv.weight.shape[0]
                length //= pool
            if k < len(branch) - 1 and pool == 1:
                func = pool_func(
                    self.batch, length, [channels], "int8", block.pool, self.isa.parallel
                )
                length //= block.pool
                h = self.call(
                    f"branch{b}_block{k}_pool", func, [h], (self.batch, length, channels), "int8"
                )
        return h, length, channels


def _relax_module(qm: QuantizedModel, isa: Isa, batch: int, samples: int):
    """(IRModule, kernel names, constant bytes) of the whole model."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((batch, qm.in_channels, samples), "float32"))
    build = Builder(bb, isa, batch)
    with bb.function("main", [x]):
        with bb.dataflow():
            h0 = build.call(
                "quantize",
                _quantize_func(qm, batch, samples, isa.parallel),
                [x],
                (batch, samples, qm.in_channels),
                qm.input_dtype,
            )
            ends = [
                build.branch(b, br, h0, samples, qm.in_channels) for b, br in enumerate(qm.branches)
            ]
            pools = {br[-1].pool for br in qm.branches}
            lengths = {length for _, length, _ in ends}
            channels = [c for _, _, c in ends]
            if len(pools) == 1 and len(lengths) == 1:  # the last pools write the concatenation
                size, length = pools.pop(), lengths.pop()
                func = pool_func(batch, length, channels, "int8", size, isa.parallel)
                frames = length // size
                h = build.call(
                    "pool_concat",
                    func,
                    [e[0] for e in ends],
                    (batch, frames, sum(channels)),
                    "int8",
                )
            else:
                raise CompileError("int8: the branches' last pools differ; not supported yet")
            if qm.pool is not None:
                out = _classifier(build, qm, h, frames, sum(channels), samples)
            else:
                out = _head(build, qm, h, frames, sum(channels))
            result = bb.emit_output(out)
        bb.emit_func_output(result)
    return bb.get(), build.names, build.constant_bytes


def _head(build: Builder, qm: QuantizedModel, h, frames: int, channels: int):
    """The per-frame MLP, or the backbone's dequantized features."""
    if not qm.head:
        func = dequantize_func(build.batch, frames, channels, qm.features_scale, build.isa.parallel)
        return build.call("dequantize", func, [h], (build.batch, channels, frames), "float32")
    return mlp_kernels(build, "clf_lin", qm.head, h, channels, frames)[0]


def _classifier(build: Builder, qm: QuantizedModel, h, frames: int, channels: int, samples: int):
    """ECG_CRNN's tail: SE's squeeze and MLP, the global pooling, the head on one row."""
    from tvm import relax

    b = build.batch
    if qm.lead_map is not None:
        pos = qm.lead_map.positions.astype(np.int32)
        d_sums, d_pooled = quantize.dropped_constants(qm, samples)
    else:
        pos = np.arange(channels, dtype=np.int32)
        d_sums = d_pooled = np.zeros(channels, dtype=np.int64)
    full = len(pos)
    excite = []
    if qm.squeeze is not None:
        rq = quantize.squeeze_requant(qm, frames)
        const = quantize.requantize(d_sums, rq).astype(np.int8)  # the reference's values
        func = _squeeze_func(b, frames, channels, full, rq)
        e = build.call("se_squeeze", func, [h, pos, const], (b, 1, full), "int8")
        e, _ = mlp_kernels(build, "se_lin", qm.squeeze.mlp, e, full)
        excite = [e]
    rq = quantize.pool_requant(qm, frames)
    func = _global_pool_func(b, frames, channels, full, qm.pool.mode, rq, bool(excite))
    args = [h, pos, d_pooled.astype(np.int32), *excite]
    z = build.call("global_pool", func, args, (b, 1, full), "int8")
    out, classes = mlp_kernels(build, "clf_lin", qm.head, z, full)
    return build.bb.emit(relax.op.reshape(out, (b, classes)))


def mlp_kernels(build: Builder, prefix: str, layers, h, channels: int, frames: int = 1):
    """Linear kernels over (batch, frames, channels): (the last one's output, its width).
    A layer after an activation table takes inputs in the table's range (`byte_dot`)."""
    low = high = None
    for i, lin in enumerate(layers):
        width = lin.conv.weight.shape[0]
        classes = width if lin.conv.requant is None else None
        dot, offset = byte_dot(build.isa, lin.conv, low, high)
        kc = ConvKernel(
            lin.conv, build.batch, frames, channels, dot, lin.lut, classes, offset=offset
        )
        h = build.conv(f"{prefix}{i}", h, kc)
        channels = width
        low, high = (None, None) if lin.lut is None else (int(lin.lut.min()), int(lin.lut.max()))
    return h, channels
