"""Max-pools fused into the conv kernel before them (CPU schedule).

Every block of MultiScopicCNN ends with conv -> ReLU -> batch norm -> max-pool, window
and stride equal (2 in every preset). TVM's FuseOps keeps the pool as a kernel of its
own, so the conv writes its whole output, the pool reads it back and writes half of it.
Here a conv kernel and the max-pool that alone reads its output become one kernel after
FuseTIR; our schedule (schedule.py) computes each register tile of the conv, takes the
maximum over each pooling window inside the tile and stores only that. The maxima are of
the same float32 numbers, so the output is bit for bit the unfused one. The conv's own
workload key stays the merged kernel's identity for tuning records.

One kernel alone, one thread, AMD EPYC (Zen 4), the 12-lead lead-wise model: a first
conv (12 -> 192 channels, length 5000) and its pool 0.562 -> 0.437 ms; a 384-channel
conv (length 2500) and its pool 4.54 -> 4.36 ms.
"""

from __future__ import annotations

from collections.abc import Callable

POOL_BLOCK = "pool_max"


def pool_window(func) -> int | None:
    """The window of a max-pool kernel over the last of three axes whose stride equals
    its window and that pads nothing (output length = input length / window), else None."""
    import tvm
    from tvm import tirx

    if not isinstance(func, tirx.PrimFunc) or len(func.params) != 2 or _scheduled(func):
        return None
    try:
        sch = tvm.s_tir.Schedule(func)
        (block,) = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # not one schedulable block
        return None
    node = sch.get(block)
    source, pooled = ([int(d) for d in p.ty.shape] for p in func.params)
    iters = node.iter_vars
    reduce = _reduced(node)
    if node.name_hint != POOL_BLOCK or len(iters) != 4 or reduce is None or len(source) != 3:
        return None
    window = int(reduce.dom.extent)
    (read,) = node.reads
    index = read.region[-1].min  # the input position read: out * stride + r
    steps = [_at(index, iters, iters[2].var), _at(index, iters, reduce.var)]
    exact = source[:2] == pooled[:2] and source[2] == window * pooled[2]
    return window if window > 1 and exact and steps == [window, 1] else None


def window_of(node) -> int:
    """The window of a merged kernel's `pool_max` block (its one reduction's extent)."""
    return int(_reduced(node).dom.extent)


def _reduced(node):
    """The block's one reduction iteration variable, None unless it has exactly one."""
    from tvm import tirx

    reduce = [iv for iv in node.iter_vars if iv.iter_type == tirx.IterVar.CommReduce]
    return reduce[0] if len(reduce) == 1 else None


def _at(expr, iters, one) -> int | None:
    """`expr` with the variable `one` at 1 and every other iteration variable at 0."""
    from tvm import tirx
    from tvm.sym import Analyzer

    analyzer = Analyzer()
    for iv in iters:
        analyzer.bind(iv.var, 1 if iv.var.same_as(one) else 0)
    value = analyzer.simplify(expr)
    return int(value) if isinstance(value, tirx.IntImm) else None


def _scheduled(func) -> bool:
    return func.attrs is not None and bool(func.attrs.get("tirx.is_scheduled", False))


def fuse_pools(mod, fits: Callable[[object, int], bool]):
    """`mod` (after FuseTIR) with each conv kernel whose only reader is a max-pool
    (`pool_window`) merged with that pool into one kernel, where `fits(conv kernel,
    window)` says our schedule takes the pair. Returns (module, {merged kernel name:
    the conv kernel it holds})."""
    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")
    builder = relax.BlockBuilder(mod)
    merged: dict[str, object] = {}
    rewired = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, relax.Function) or _is_group(func):
            continue
        groups = {}
        for conv, pool in _pairs(mod, func, call_tir, fits):
            name = f"{conv.value.args[0].name_hint}_{pool.value.args[0].name_hint}"
            groups[pool.var] = (conv.var, _group(builder, name, mod, conv, pool))
            merged[name] = mod[conv.value.args[0]]
        if groups:
            rewired[gv] = _rewire(func, groups)
    if not merged:
        return mod, {}
    mod = builder.get()
    for gv, func in rewired.items():
        mod[gv] = func
    mod = relax.transform.FuseTIR()(mod)
    return relax.transform.DeadCodeElimination()(mod), merged


def _is_group(func) -> bool:
    return func.attrs is not None and "Primitive" in func.attrs


def _pairs(mod, func, call_tir, fits):
    """(conv binding, pool binding) pairs of `func`'s dataflow blocks: the pool reads
    the conv's output, which nothing else reads."""
    from tvm import relax

    uses: dict = {}

    def count(expr):
        if isinstance(expr, relax.Var):
            uses[expr] = uses.get(expr, 0) + 1

    relax.analysis.post_order_visit(func.body, count)
    for block in func.body.blocks:
        if not isinstance(block, relax.DataflowBlock):
            continue
        bound = {b.var: b for b in block.bindings if _calls_tir(b.value, call_tir)}
        for binding in bound.values():
            window = pool_window(mod[binding.value.args[0]])
            (source, *rest) = binding.value.args[1].fields
            conv = bound.get(source)
            if window is None or rest or conv is None or uses.get(source) != 1:
                continue
            kernel = mod[conv.value.args[0]]
            if not _scheduled(kernel) and fits(kernel, window):
                yield conv, binding


def _calls_tir(value, call_tir) -> bool:
    from tvm import relax

    return isinstance(value, relax.Call) and value.op == call_tir


def _group(builder, name, mod, conv, pool):
    """A primitive Relax function calling the conv kernel then the pool: FuseTIR makes
    the two one kernel. Its parameters take the conv kernel's names (the schedule finds
    the weights by them)."""
    from tvm import relax

    args = list(conv.value.args[1].fields)
    names = [p.name for p in mod[conv.value.args[0]].params]
    params = [relax.Var(n, a.ty) for n, a in zip(names, args, strict=False)]
    with builder.function(name, params, attrs={"Primitive": True}, private=True):
        with builder.dataflow():
            y = builder.emit(relax.call_tir(conv.value.args[0], params, conv.var.ty))
            z = builder.emit_output(relax.call_tir(pool.value.args[0], [y], pool.var.ty))
        return builder.emit_func_output(z), args


def _rewire(func, groups):
    """`func` with each pool's binding calling its group on the conv's arguments and the
    conv's own binding gone."""
    from tvm import relax

    gone = {conv for conv, _ in groups.values()}
    blocks = []
    for block in func.body.blocks:
        bindings = []
        for b in block.bindings:
            if b.var in groups:
                gv, args = groups[b.var][1]
                bindings.append(relax.VarBinding(b.var, relax.Call(gv, args)))
            elif b.var not in gone:
                bindings.append(b)
        kind = relax.DataflowBlock if isinstance(block, relax.DataflowBlock) else relax.BindingBlock
        blocks.append(kind(bindings))
    body = relax.SeqExpr(blocks, func.body.body)
    return relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)
