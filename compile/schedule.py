"""Our own schedule for the model's CPU kernels: good without tuning, on every CPU target.

Applied after FuseTIR, to kernels recognised by their block names:

- fused conv (`pad_temp` -> `conv1d_ncw`/`group_conv1d_ncw` -> bias/ReLU/BN epilogue):
  a direct convolution vectorised over *output channels* (every preset's channel counts
  are multiples of 16; the time lengths 5000/2500/1250/625 are not multiples of 8, and a
  predicated time tail makes LLVM fall back to scalar code). A register tile of
  `t_tile` time steps x `f_vecs` channel vectors accumulates in registers, the epilogue
  runs on the tile, and the tiles run in parallel. The weights are repacked once, at
  compile time, to [F/vec, C, K, vec] so that each channel vector is one load.
- max-pool and concat: parallel over channels.

A kernel that does not match (say, a channel count that is no multiple of the vector
width) keeps TVM's default loops, with a log line. The tile per ISA is data, in the
target table (`Target.tile`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

CONV_BLOCKS = ("conv1d_ncw", "group_conv1d_ncw")


@dataclass(frozen=True)
class ConvTile:
    """Register tile of the conv kernels: t_tile * f_vecs accumulator vectors."""

    vec: int  # f32 lanes: 16 AVX-512, 8 AVX2, 4 NEON
    t_tile: int  # time steps per tile (the largest divisor of the length <= this)
    f_vecs: int  # output-channel vectors per tile


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return next(d for d in range(min(n, cap), 0, -1) if n % d == 0)


def _blocks(sch):
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _kind(func) -> str:
    import tvm

    try:
        sch = tvm.s_tir.Schedule(func)
        names = [sch.get(b).name_hint for b in _blocks(sch)]
    except Exception:  # not a function with a schedulable root block
        return "other"
    if any(n in CONV_BLOCKS for n in names):
        return "conv"
    return "spatial" if ("pool_max" in names or "T_concat" in names) else "other"


def _weight_read(sch, conv) -> int:
    reads = sch.get(conv).reads
    return next(
        i for i, r in enumerate(reads)
        if len(r.source.shape) == 3 and r.source.name.startswith("param")
    )  # fmt: skip


def _schedule_conv(func, tile: ConvTile):
    """The conv kernel with its weight read as [F/vec, C, K, vec], scheduled.

    Returns (new function, index of the weight parameter)."""
    import tvm

    vec = tile.vec
    sch = tvm.s_tir.Schedule(func)
    blocks = _blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    at = next(i for i, n in enumerate(names) if n in CONV_BLOCKS)
    conv, pads, epilogue = blocks[at], blocks[:at], blocks[at + 1 :]
    n, f, t, c, k = sch.get_loops(conv)
    channels, length = int(sch.get(f).extent), int(sch.get(t).extent)
    if channels % vec:
        raise ValueError(f"{channels} output channels are no multiple of {vec} lanes")
    read = _weight_read(sch, conv)
    weight_param = [p.name for p in func.params].index(sch.get(conv).reads[read].source.name)
    sch.transform_layout(conv, ("read", read), lambda a, b, d: (a // vec, b, d, a % vec))

    for block in epilogue[:-1]:
        sch.compute_inline(block)
    if epilogue:
        out = epilogue[-1]
        sch.set_scope(conv, 0, "local")
    else:
        out = sch.cache_write(conv, 0, "local")
    # Accumulators time-major, so each channel vector is contiguous in registers.
    sch.transform_layout(conv, ("write", 0), lambda a, b, d: (a, d, b))
    f_vecs = _largest_divisor_at_most(channels // vec, tile.f_vecs)
    t_tile = _largest_divisor_at_most(length, tile.t_tile)
    fo, fu, fv = sch.split(f, [None, f_vecs, vec])
    to, ti = sch.split(t, [None, t_tile])
    sch.reorder(n, fo, to, c, k, ti, fu, fv)
    sch.reverse_compute_at(out, to)
    sch.vectorize(fv)  # vectorise and unroll before decompose_reduction, not after
    sch.unroll(fu)
    sch.unroll(ti)
    o_f, o_t = sch.get_loops(out)[-2:]
    sch.reorder(o_t, o_f)
    o_fu, o_fv = sch.split(o_f, [None, vec])
    sch.vectorize(o_fv)
    sch.unroll(o_fu)
    sch.unroll(o_t)
    sch.parallel(sch.fuse(n, fo, to))
    sch.decompose_reduction(conv, c)
    for pad in pads:
        sch.parallel(sch.fuse(*sch.get_loops(pad)[:-1]))
    return sch.mod["main"].with_attr("tirx.is_scheduled", True), weight_param


def _schedule_spatial(func):
    import tvm
    from tvm import tirx

    sch = tvm.s_tir.Schedule(func)
    for block in _blocks(sch):
        loops = sch.get_loops(block)
        spatial = [
            loop for loop, iv in zip(loops, sch.get(block).iter_vars, strict=False)
            if iv.iter_type == tirx.IterVar.DataPar
        ]  # fmt: skip
        if len(spatial) >= 2:
            sch.parallel(sch.fuse(*spatial[:-1]))
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _pack(weights, vec: int):
    import numpy as np

    f, c, k = weights.shape
    return np.ascontiguousarray(weights.reshape(f // vec, vec, c, k).transpose(0, 2, 3, 1))


def schedule_pass(tile: ConvTile):
    """The module pass: schedule the kernels, repack the conv weights their callers pass."""
    import tvm
    from tvm import relax, tirx

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
                args[index] = relax.const(_pack(args[index].value.numpy(), tile.vec), "float32")
            return relax.Call(call.op, [self.renamed[name], relax.Tuple(args), *call.args[2:]],
                              call.attrs, call.ty_args)  # fmt: skip

    @tvm.transform.module_pass(opt_level=0, name="mscnn_schedule")
    def run(mod, _ctx):
        packed, updates, skipped = {}, {}, []
        constants = _constant_weights(mod, call_tir)
        for gv, func in mod.functions.items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            if func.attrs is not None and func.attrs.get("tirx.is_scheduled", False):
                continue
            kind = _kind(func)
            try:
                if kind == "conv":
                    new, index = _schedule_conv(func, tile)
                    if (gv.name_hint, index) not in constants:
                        raise ValueError("its weights are not a compile-time constant")
                    updates[gv], packed[gv.name_hint] = new, index
                elif kind == "spatial":
                    updates[gv] = _schedule_spatial(func)
            except Exception as exc:  # keep TVM's default loops for what we do not know
                skipped.append(f"{gv.name_hint} ({exc})")
        if skipped:
            log.info("default loops kept for %d kernel(s): %s", len(skipped), "; ".join(skipped))
        # A GlobalVar carries its callee's type: re-add the changed kernels under new names.
        builder = relax.BlockBuilder(mod)
        renamed = {
            gv.name_hint: builder.add_func(f, gv.name_hint + "_s") for gv, f in updates.items()
        }
        mod = builder.get()
        repack = _Repack(mod, packed, renamed)
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mod[gv] = repack.visit_expr(func)
        return relax.transform.DeadCodeElimination()(mod)

    return run


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
