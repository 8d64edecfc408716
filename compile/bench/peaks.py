"""Peaks measured here: our own TIR loops of independent 512-bit FMA (fp32 FLOP/s) or
vpdpbusd (int8 OP/s) chains, on the benchmark's threads. The goals quote TVM's share of
them (`compile bench` for the 12-lead lead-wise model, `compile.bench.int8` for the int8
detector)."""

from __future__ import annotations

import time

PEAK_ITERATIONS = 200_000
PEAK_CHAINS = 12  # independent accumulators: enough to cover the FMA / VNNI latency


def _peak_func(kind: str, threads: int):
    """A TIR kernel whose `threads` parallel workers each run PEAK_CHAINS independent
    512-bit FMA (kind "fma") or vpdpbusd (kind "vnni") chains for PEAK_ITERATIONS steps."""
    from tvm.script import tirx as T

    n, chains = PEAK_ITERATIONS, PEAK_CHAINS
    dtype = "float32" if kind == "fma" else "int32"

    @T.prim_func(s_tir=True)
    def func(out: T.Buffer((threads, chains * 16), dtype)):
        for p in T.parallel(threads):
            acc = T.alloc_buffer((chains * 16,), dtype, scope="local")
            for j in range(chains * 16):
                acc[j] = T.Cast(dtype, j + p)
            for _i in range(n):
                for r in T.unroll(chains):
                    if kind == "fma":
                        acc[T.ramp(r * 16, 1, 16)] = T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id("llvm.fma.v16f32"),
                            acc[T.ramp(r * 16, 1, 16)],
                            T.broadcast(T.float32(0.999), 16),
                            T.broadcast(T.float32(0.001), 16),
                            dtype="float32x16",
                        )
                    else:
                        acc[T.ramp(r * 16, 1, 16)] = T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                            acc[T.ramp(r * 16, 1, 16)],
                            T.broadcast(T.int8(3), 64),
                            T.broadcast(T.int8(-2), 64),
                            dtype="int32x16",
                        )
            for j in range(chains * 16):
                out[p, j] = acc[j]

    return func


def peak_call(kind: str, threads: int, target: dict):
    """(a call of the loop, the operations one call does: fp32 FLOP for "fma", int8 OP
    for "vnni"), compiled for `target` and run once."""
    import tvm

    lib = tvm.compile(tvm.IRModule({"main": _peak_func(kind, threads)}), target=target)
    dtype = "float32" if kind == "fma" else "int32"
    out = tvm.runtime.empty((threads, PEAK_CHAINS * 16), dtype, tvm.cpu())
    lib(out)
    per_step = 16 * 2 if kind == "fma" else 64 * 2  # an FMA: 2 FLOP x 16; vpdpbusd: 2 x 64
    return (lambda: lib(out)), threads * PEAK_ITERATIONS * PEAK_CHAINS * per_step


def measure_peak(kind: str, threads: int, target: dict) -> float:
    """GOP/s (fp32 FLOP/s for "fma", int8 OP/s for "vnni") of the loop, best of 5."""
    call, ops = peak_call(kind, threads, target)
    best = min(_seconds(call) for _ in range(5))
    return ops / best / 1e9


def best_peak(kind: str, threads: int) -> float:
    """measure_peak on the AVX-512 VNNI target, the best of two passes: on the 2-core VMs
    the first parallel loop of a process sometimes ran at one core's rate (117 against 230
    GFLOP/s a moment later). TVM's pool is set to `threads` first: left as TVM starts it,
    the loop ran on one core here (117 GFLOP/s for 2 threads, 235 after set_threads)."""
    from deploy.predictor import set_threads

    from ..int8 import kernels as int8

    set_threads(threads)
    return max(measure_peak(kind, threads, int8.X86_VNNI) for _ in range(2))


def measured_fma_peak(threads: int) -> float | None:
    """GFLOP/s of the 512-bit FMA loop on `threads` threads (None on a CPU without
    AVX-512, where that loop cannot run)."""
    from deploy.bundle import cpu_flags

    return best_peak("fma", threads) if "avx512f" in cpu_flags() else None


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
