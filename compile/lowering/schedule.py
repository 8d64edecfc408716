"""Our own schedule for the model's CPU kernels: good without tuning, on every CPU target.

Applied after FuseTIR, to kernels recognised by their block names:

- fused conv (`pad_temp` -> `conv1d_ncw`/`group_conv1d_ncw` -> bias/ReLU/BN epilogue):
  a direct convolution vectorised over *output channels* (every preset's channel counts
  are multiples of 16; the time lengths 5000/2500/1250/625 are not multiples of 8, and a
  predicated time tail makes LLVM fall back to scalar code). A register tile of
  `t_tile` time steps x `f_vecs` channel vectors accumulates in registers, the epilogue
  runs on the tile, and the tiles run in parallel. The weights are repacked once, at
  compile time, to [F/vec, C, K, vec] so that each channel vector is one load.
- fused matmul (a whole model's per-frame linear layers: `matmul` -> bias -> ReLU or
  Mish epilogue): the same register tile over frames x output-feature vectors; a
  constant weight [K, N] is repacked to [N/vec, K, vec] so the tile's vectors stream.
- a max-pool whose window is its stride, after a conv that nothing else reads: merged into
  that conv's kernel (compile/lowering/pools.py), each tile's pooling windows reduced in
  registers; other max-pools and concat: parallel over channels.
- data movement (a whole model's transposes and reshapes between layers, with any
  elementwise scaling fused in): inlined into one loop nest, parallel, tiled where it
  transposes; a reduction outside conv and matmul (SE's mean) parallel over channels.

A kernel that does not match (say, a channel count that is no multiple of the vector
width) keeps TVM's default loops, with a log line. The tile per ISA is data, in the
target table (`Target.tile`).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from .pools import POOL_BLOCK, fuse_pools, window_of

log = logging.getLogger(__name__)

CONV_BLOCKS = ("conv1d_ncw", "group_conv1d_ncw")


@dataclass(frozen=True)
class ConvTile:
    """Register tile of the conv kernels: t_tile * f_vecs accumulator vectors."""

    vec: int  # f32 lanes: 16 AVX-512, 8 AVX2, 4 NEON
    t_tile: int  # time steps per tile (the largest divisor of the length <= this)
    f_vecs: int  # output-channel vectors per tile
    registers: int = 16  # vector registers of the ISA: bounds the tiles tuning tries


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return next(d for d in range(min(n, cap), 0, -1) if n % d == 0)


def _blocks(sch):
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def kernel_kind(func) -> str:
    import tvm

    try:
        sch = tvm.s_tir.Schedule(func)
        names = [sch.get(b).name_hint for b in _blocks(sch)]
    except Exception:  # not a function with a schedulable root block
        return "other"
    if any(n in CONV_BLOCKS for n in names):
        return "conv"
    if "matmul" in names:
        return "matmul"
    if "pool_max" in names or "T_concat" in names:
        return "spatial"
    if names and all(_data_parallel(sch, b) for b in _blocks(sch)):
        return "layout"
    return "reduce" if any(n.endswith("_red") for n in names) else "other"


def _data_parallel(sch, block) -> bool:
    from tvm import tirx

    return all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)


def weight_read(sch, conv) -> int:
    reads = sch.get(conv).reads
    return next(
        i
        for i, r in enumerate(reads)
        if len(r.source.shape) == 3 and r.source.name.startswith("param")
    )


def conv_shape(func) -> tuple[int, int]:
    """(output channels, output length) of a fused conv kernel."""
    import tvm

    sch = tvm.s_tir.Schedule(func)
    conv = next(b for b in _blocks(sch) if sch.get(b).name_hint in CONV_BLOCKS)
    _, f, t, _, _ = sch.get_loops(conv)
    return int(sch.get(f).extent), int(sch.get(t).extent)


def _default_tile(channels: int, length: int, tile: ConvTile) -> tuple[int, int]:
    if channels % tile.vec:
        raise ValueError(f"{channels} output channels are no multiple of {tile.vec} lanes")
    return (
        _largest_divisor_at_most(length, tile.t_tile),
        _largest_divisor_at_most(channels // tile.vec, tile.f_vecs),
    )


def default_tile(func, tile: ConvTile) -> tuple[int, int]:
    """(t_tile, f_vecs) a conv kernel gets without tuning: the target's tile, rounded
    down to divisors of the kernel's length and channel vectors. ValueError where the
    channels are no multiple of the vector width (the schedule does not take it)."""
    return _default_tile(*conv_shape(func), tile)


def tile_choices(func, tile: ConvTile) -> tuple[list[int], list[int]]:
    """The register tiles worth measuring for one conv kernel: time steps that divide its
    length and channel vectors that divide its channel count (no tails, no predicates),
    within the ISA's vector registers (accumulators plus two: weights, input broadcast).
    The default tile's values are always among them."""
    channels, length = conv_shape(func)
    default_t, default_f = _default_tile(channels, length, tile)
    vectors = channels // tile.vec
    t_tiles = {t for t in range(2, 17) if length % t == 0 and t + 2 <= tile.registers}
    f_vecs = {f for f in range(1, 5) if vectors % f == 0 and 2 * f + 2 <= tile.registers}
    return sorted(t_tiles | {default_t}), sorted(f_vecs | {default_f})


def _accumulate_locally(sch, block, epilogue):
    """Inline the elementwise epilogue into its last block and keep `block`'s result in
    registers ("local"); returns the block that writes the kernel's output."""
    for stage in epilogue[:-1]:
        sch.compute_inline(stage)
    if epilogue:
        sch.set_scope(block, 0, "local")
        return epilogue[-1]
    return sch.cache_write(block, 0, "local")


def _store_tile(sch, out, to, vec: int) -> None:
    """The tile's output loops, block `out` under the tile's loop `to`: time outer,
    channels inner, channel vectors stored whole. A max-pool merged in (pools.py) runs
    over each pooling window between them; a loop of one step is no loop (a tile of one
    window), hence the count."""
    loops = sch.get_loops(out)
    at = next(i for i, loop in enumerate(loops) if sch.get(loop).same_as(sch.get(to)))
    o_f, *o_ts = loops[at + 1 :]  # (channels, time) or (channels, [windows], window)
    sch.reorder(*o_ts, o_f)
    _store_vectors(sch, o_ts, o_f, vec)


def _store_vectors(sch, o_ts, o_f, vec: int) -> None:
    """Output loops `o_ts` (time) unrolled around `o_f` (channels), split into vectors."""
    o_fu, o_fv = sch.split(o_f, [None, vec])
    sch.vectorize(o_fv)
    sch.unroll(o_fu)
    for loop in o_ts:
        sch.unroll(loop)


def apply_conv(sch, tile: ConvTile, t_tile=None, f_vecs=None) -> int:
    """Schedule the conv kernel held by `sch` in place; returns its weight parameter's index.

    `t_tile` and `f_vecs` default to the tile's (rounded to divisors of the kernel's
    length and channels); tuning passes sampled random variables instead."""
    vec = tile.vec
    func = sch.mod["main"]
    blocks = _blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    at = next(i for i, n in enumerate(names) if n in CONV_BLOCKS)
    conv, epilogue = blocks[at], blocks[at + 1 :]
    pads = [b for b, name in zip(blocks[:at], names, strict=False) if name.startswith("pad")]
    for block, name in zip(blocks[:at], names, strict=False):
        if not name.startswith("pad"):  # index arithmetic (a stream step's end-of-record
            sch.compute_inline(block)  # mask) goes into the epilogue that reads it
    n, f, t, c, k = sch.get_loops(conv)
    channels, length = int(sch.get(f).extent), int(sch.get(t).extent)
    default_t, default_f = _default_tile(channels, length, tile)
    read = weight_read(sch, conv)
    weight_param = [p.name for p in func.params].index(sch.get(conv).reads[read].source.name)
    sch.transform_layout(conv, ("read", read), lambda a, b, d: (a // vec, b, d, a % vec))

    out = _accumulate_locally(sch, conv, epilogue)
    # Accumulators time-major, so each channel vector is contiguous in registers.
    sch.transform_layout(conv, ("write", 0), lambda a, b, d: (a, d, b))
    t_tile = default_t if t_tile is None else t_tile
    f_vecs = default_f if f_vecs is None else f_vecs
    if (
        names[-1] == POOL_BLOCK
        and isinstance(t_tile, int)
        and t_tile % window_of(sch.get(blocks[-1]))
    ):
        raise ValueError(f"a tile of {t_tile} time steps splits a pooling window")
    fo, fu, fv = sch.split(f, [None, f_vecs, vec])
    to, ti = sch.split(t, [None, t_tile])
    sch.reorder(n, fo, to, c, k, ti, fu, fv)
    sch.reverse_compute_at(out, to)
    sch.vectorize(fv)  # vectorise and unroll before decompose_reduction, not after
    sch.unroll(fu)
    sch.unroll(ti)
    _store_tile(sch, out, to, vec)
    sch.parallel(sch.fuse(n, fo, to))
    sch.decompose_reduction(conv, c)
    for pad in pads:
        sch.parallel(sch.fuse(*sch.get_loops(pad)[:-1]))
    return weight_param


def _matmul_f_vecs(channels: int, t_tile: int, tile: ConvTile) -> int:
    """Channel vectors of a matmul's register tile: where the frames' divisor cut the
    time tile short (625 frames: 5 of 10), more channel vectors keep about the target
    tile's accumulators, within the vector registers (plus the weights and a broadcast)."""
    accumulators = tile.t_tile * tile.f_vecs
    most = max(tile.f_vecs, min(accumulators // t_tile, (tile.registers - 1) // (t_tile + 1)))
    return _largest_divisor_at_most(channels // tile.vec, most)


def matmul_weight(func) -> int | None:
    """The index of a matmul kernel's 2-D weight parameter (K, N), None if it has none."""
    import tvm

    sch = tvm.s_tir.Schedule(func)
    matmul = next(b for b in _blocks(sch) if sch.get(b).name_hint == "matmul")
    weight = sch.get(matmul).reads[1].source
    params = [p.name for p in func.params]
    return params.index(weight.name) if len(weight.shape) == 2 and weight.name in params else None


def apply_matmul(sch, tile: ConvTile, pack: bool = False) -> None:
    """Schedule the per-frame matmul kernel held by `sch` in place: (batch, frames, K) x
    (K, N), N a multiple of the vector width, with its elementwise epilogue on the tile.
    With `pack`, its weight (`matmul_weight`, a constant the caller repacks with `_pack`)
    is read as [N / vec, K, vec], so the tile's weight vectors stream contiguously over K
    (the second BiLSTM 256 layer's projection of 625 frames: 14.8 -> 12.2 ms, one thread,
    under load, with the wider tile below)."""
    vec = tile.vec
    blocks = _blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    at = names.index("matmul")
    matmul, epilogue = blocks[at], blocks[at + 1 :]
    if at != 0:
        raise ValueError(f"blocks before the matmul: {names[:at]}")
    n, t, f, k = sch.get_loops(matmul)
    length, channels = int(sch.get(t).extent), int(sch.get(f).extent)
    t_tile, _ = _default_tile(channels, length, tile)
    f_vecs = _matmul_f_vecs(channels, t_tile, tile)
    if pack:
        sch.transform_layout(matmul, ("read", 1), lambda a, b: (b // vec, a, b % vec))
    out = _accumulate_locally(sch, matmul, epilogue)
    fo, fu, fv = sch.split(f, [None, f_vecs, vec])
    to, ti = sch.split(t, [None, t_tile])
    sch.reorder(n, fo, to, k, ti, fu, fv)
    sch.reverse_compute_at(out, to)
    sch.vectorize(fv)
    sch.unroll(fu)
    sch.unroll(ti)
    o_t, o_f = sch.get_loops(out)[-2:]
    _store_vectors(sch, [o_t], o_f, vec)
    sch.parallel(sch.fuse(n, fo, to))
    sch.decompose_reduction(matmul, k)


def schedule_matmul(func, tile: ConvTile, pack: bool = False):
    import tvm

    sch = tvm.s_tir.Schedule(func)
    apply_matmul(sch, tile, pack)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def schedule_conv(func, tile: ConvTile, t_tile=None, f_vecs=None):
    """The conv kernel with its weight read as [F/vec, C, K, vec], scheduled.

    Returns (new function, index of the weight parameter)."""
    import tvm

    sch = tvm.s_tir.Schedule(func)
    weight_param = apply_conv(sch, tile, t_tile, f_vecs)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True), weight_param


def _schedule_spatial(func):
    import tvm
    from tvm import tirx

    sch = tvm.s_tir.Schedule(func)
    for block in _blocks(sch):
        loops = sch.get_loops(block)
        spatial = [
            loop
            for loop, iv in zip(loops, sch.get(block).iter_vars, strict=False)
            if iv.iter_type == tirx.IterVar.DataPar
        ]
        if len(spatial) >= 2:
            sch.parallel(sch.fuse(*spatial[:-1]))
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


LAYOUT_MIN_ELEMENTS = 16384  # a floor: a smaller copy takes microseconds, kept in one loop
LAYOUT_TILE = 32  # at most this many elements a side of a transposing kernel's tile


def schedule_layout(func):
    """A kernel of only elementwise and data-movement blocks (the transposes, reshapes
    and per-channel scaling between a BiLSTM's layers and around its SE block): the
    blocks inlined into the one that writes the output, then parallel over its outer
    loops. Where a read's last index does not follow the output's last loop (a
    transpose), the last two loops are tiled, the inner loop walking the read's
    contiguous axis, or the output's where its rows are a multiple of 1 KiB apart (then
    a column of writes lands on one cache set). Two threads, AMD EPYC (Zen 4): the SE
    block's (625, 2, 256) -> (512, 625) transpose, 0.71 ms as TVM's default loops, takes
    0.05-0.11 ms; its (512, 625) -> (625, 512) scaled transpose 0.18 -> 0.07 ms (0.28
    with the inner loop along the read). ValueError where the blocks do not inline or
    the kernel is too small to gain."""
    import tvm

    sch = tvm.s_tir.Schedule(func)
    for block in _blocks(sch)[:-1]:
        sch.compute_inline(block)
    (out,) = _blocks(sch)
    loops = sch.get_loops(out)
    extents = [int(sch.get(loop).extent) for loop in loops]
    if len(loops) < 2 or math.prod(extents) < LAYOUT_MIN_ELEMENTS:
        raise ValueError("too small to gain from threads")
    if _transposes(sch, out):
        *outer, a, b = loops
        ao, ai = sch.split(a, [None, _largest_divisor_at_most(extents[-2], LAYOUT_TILE)])
        bo, bi = sch.split(b, [None, _largest_divisor_at_most(extents[-1], LAYOUT_TILE)])
        if extents[-1] % 256:  # output rows (256 float32 = 1 KiB) not aliasing one set
            sch.reorder(ao, bo, bi, ai)
        else:  # rows a multiple of 1 KiB apart alias in the cache: write along them
            sch.reorder(ao, bo, ai, bi)
        sch.parallel(sch.fuse(*outer, ao, bo))
    else:
        sch.parallel(sch.fuse(*loops[:-1]))
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _reduce(func):
    """A reduction outside conv and matmul (the SE block's mean over frames): parallel
    over its data-parallel loops where it is large enough to gain."""
    import tvm

    sch = tvm.s_tir.Schedule(func)
    sizes = [
        math.prod(int(sch.get(loop).extent) for loop in sch.get_loops(b)) for b in _blocks(sch)
    ]
    if max(sizes) < LAYOUT_MIN_ELEMENTS:
        raise ValueError("too small to gain from threads")
    return _schedule_spatial(func)


def _transposes(sch, block) -> bool:
    """Whether some read of `block` has a last index that does not use the block's last
    (innermost) iteration variable: consecutive outputs then read far apart."""
    from tvm import tirx

    last = sch.get(block).iter_vars[-1].var
    for region in sch.get(block).reads:
        if len(region.region) < 2:
            continue
        used = tirx.analysis.undefined_vars(region.region[-1].min)
        if not any(v.same_as(last) for v in used):
            return True
    return False


def _pack(weights, vec: int):
    """A conv's weights [F, C, K] as its schedule reads them, [F / vec, C, K, vec]; a
    matmul's [K, N] as [N / vec, K, vec]."""
    import numpy as np

    if weights.ndim == 2:
        k, n = weights.shape
        return np.ascontiguousarray(weights.reshape(k, n // vec, vec).transpose(1, 0, 2))
    f, c, k = weights.shape
    return np.ascontiguousarray(weights.reshape(f // vec, vec, c, k).transpose(0, 2, 3, 1))


def workload_key(func) -> str:
    """A kernel's identity for tuning records: TVM's structural hash of the fused
    PrimFunc (shapes, dilation, epilogue; not names, not weights), as 16 hex digits."""
    import tvm_ffi

    return f"{tvm_ffi.structural_hash(func) & (1 << 64) - 1:016x}"


@dataclass(frozen=True)
class KernelCounts:
    """How the schedule pass treated the fused kernels of one module."""

    conv_tuned: int  # conv kernels given a tuned tile from the records
    conv_default_tile: int  # conv kernels given the target's default tile
    unscheduled: int  # kernels left with TVM's default loops


def schedule_pass(
    tile: ConvTile,
    records=None,
    on_done: Callable[[KernelCounts], None] | None = None,
    pools: bool = True,
):
    """The module pass: schedule the kernels, repack the constant weights their callers pass.

    `records` maps a conv kernel's workload_key to its tuned (t_tile, f_vecs); kernels
    without a record get `tile`'s. `on_done` (if given) is told the counts when the pass
    has run (a pass runs inside tvm.compile: the caller collects them there). `pools`:
    merge each max-pool into the conv before it where it can (pools.py); without, every
    pool keeps a kernel of its own (for comparison)."""
    import tvm

    records = records or {}

    call_tir = tvm.ir.Op.get("relax.call_tir")

    @tvm.transform.module_pass(opt_level=0, name="mscnn_schedule")
    def run(mod, _ctx):
        fits = functools.partial(_holds_windows, tile, records)
        mod, pooled = fuse_pools(mod, fits) if pools else (mod, {})
        keys = {name: workload_key(conv) for name, conv in pooled.items()}
        constants = _constant_weights(mod, call_tir)
        updates, packed, counts, skipped = _schedule_kernels(mod, tile, records, constants, keys)
        if skipped:
            log.info("default loops kept for %d kernel(s): %s", len(skipped), "; ".join(skipped))
        if on_done is not None:
            on_done(KernelCounts(counts["tuned"], counts["default"], len(skipped)))
        return _with_scheduled(mod, updates, packed, tile.vec)

    return run


def _with_scheduled(mod, updates: dict, packed: dict, vec: int):
    """`mod` calling the scheduled kernels `updates` (by GlobalVar) in place of the old,
    with the weight argument `packed` names for a kernel repacked for `vec` lanes."""
    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")

    @relax.expr_functor.mutator
    class _Repack(relax.PyExprMutator):
        def __init__(self, mod, packed, renamed):
            super().__init__(mod)
            self.packed, self.renamed = packed, renamed

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call.op != call_tir or call.args[0].name_hint not in self.renamed:
                return call
            name = call.args[0].name_hint
            args = list(call.args[1].fields)
            if name in self.packed:
                index = self.packed[name]
                weights = args[index].value.numpy()
                args[index] = relax.const(_pack(weights, vec), str(weights.dtype))
            return relax.Call(
                call.op,
                [self.renamed[name], relax.Tuple(args), *call.args[2:]],
                call.attrs,
                call.ty_args,
            )

    # A GlobalVar carries its callee's type: re-add the changed kernels under new names.
    builder = relax.BlockBuilder(mod)
    renamed = {gv.name_hint: builder.add_func(f, gv.name_hint + "_s") for gv, f in updates.items()}
    mod = builder.get()
    repack = _Repack(mod, packed, renamed)
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gv] = repack.visit_expr(func)
    return relax.transform.DeadCodeElimination()(mod)


def _holds_windows(tile: ConvTile, records: dict, conv, window: int) -> bool:
    """Whether `conv` is a conv kernel whose register tile (tuned or the default) holds
    whole pooling windows of `window` time steps, so a max-pool can merge into it."""
    if kernel_kind(conv) != "conv":
        return False
    tuned = records.get(workload_key(conv))
    try:
        t_tile = tuned[0] if tuned else default_tile(conv, tile)[0]
    except ValueError:  # our schedule does not take the conv
        return False
    return t_tile % window == 0


def _schedule_kernels(mod, tile: ConvTile, records: dict, constants: set, keys: dict):
    """Scheduled copies of the module's conv, matmul and spatial kernels: (new functions
    by GlobalVar, the weight argument to repack by kernel name, counts, skipped). `keys`
    holds the record key of a kernel whose own is not (a conv with a pool merged in)."""
    from tvm import tirx

    packed, updates, skipped = {}, {}, []
    counts = {"tuned": 0, "default": 0}
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        if func.attrs is not None and func.attrs.get("tirx.is_scheduled", False):
            continue
        kind = kernel_kind(func)
        try:
            if kind == "conv":
                tuned = records.get(keys.get(gv.name_hint) or workload_key(func))
                new, index = schedule_conv(func, tile, *(tuned or (None, None)))
                if (gv.name_hint, index) not in constants:
                    raise ValueError("its weights are not a compile-time constant")
                counts["tuned" if tuned else "default"] += 1
                updates[gv], packed[gv.name_hint] = new, index
            elif kind == "matmul":
                index = matmul_weight(func)
                pack = index is not None and (gv.name_hint, index) in constants
                updates[gv] = schedule_matmul(func, tile, pack)
                if pack:
                    packed[gv.name_hint] = index
                counts["default"] += 1
            elif kind == "spatial":
                updates[gv] = _schedule_spatial(func)
            elif kind in ("layout", "reduce"):
                try:
                    updates[gv] = schedule_layout(func) if kind == "layout" else _reduce(func)
                except Exception as exc:  # TVM's default loops, as before: not worth a line
                    log.debug("%s kernel %s keeps its loops (%s)", kind, gv.name_hint, exc)
        except Exception as exc:  # keep TVM's default loops for what we do not know
            skipped.append(f"{gv.name_hint} ({exc})")
    return updates, packed, counts, skipped


def _constant_weights(mod, call_tir) -> set[tuple[str, int]]:
    """(kernel, argument index) pairs whose argument is a constant at every call site."""
    from tvm import relax

    seen: dict[tuple[str, int], bool] = {}

    @relax.expr_functor.visitor
    class _Find(relax.PyExprVisitor):
        def visit_call_(self, call):
            super().visit_call_(call)
            if call.op != call_tir:
                return
            for i, arg in enumerate(call.args[1].fields):
                key = (call.args[0].name_hint, i)
                constant = hasattr(arg, "value") and hasattr(arg.value, "numpy")
                seen[key] = seen.get(key, True) and constant

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            _Find().visit_expr(func)
    return {key for key, constant in seen.items() if constant}
