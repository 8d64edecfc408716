"""Ahead-of-time compilation for microcontrollers: the model lowered to single-threaded
kernels (our register-tile schedule, `schedule_kernel`) and its compiled Relax program
turned into straight-line C.

TVM 0.27 has no AOT executor and no C runtime any more; its VM interprets the Relax
program's call sequence at run time. A microcontroller has no loader for that, but the
sequence is static: after the memory planning passes (StaticPlanBlockMemory and the
lowering that follows it) `main` is a flat list of

    storage = R.vm.alloc_storage(R.shape([bytes]), ...)        one planned block
    t = R.vm.alloc_tensor(storage, offset, R.shape(s), dtype)  a view into a block
    kernel(in..., const..., out)                               a PrimFunc, destination last
    R.vm.kill_object(x)                                        end of a lifetime

so this module reads it once (`read_program`) and writes C (`emit_c`) that does the same
with no interpreter: every planned block at a fixed offset of one static arena, every
constant a `const` array (flash), every tensor descriptor and argument list a `const`
struct built at compile time, and the kernels called in order through TVM's packed
calling convention (`int __tvm_ffi_<name>(void*, const TVMFFIAny*, int, TVMFFIAny*)`:
arguments are DLTensor pointers; a kernel checks ranks, dtypes, shapes and devices and
reports a mismatch through `TVMFFIErrorSetRaisedFromCStrParts`, which our runtime
(deploy/mcu/mscnn_rt.c) turns into an error code). No heap, no OS, no C++ runtime.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploy.manifest import StreamFacts
from deploy.rpeaks import RPeakRule

from ..errors import CompileError
from ..lowering.pipeline import import_onnx

ALIGN = 64  # TVM's kernels assume (llvm.assume) 64-byte aligned data pointers
_DTYPES = {
    "float32": (2, 32),
    "int64": (0, 64),
    "int32": (0, 32),
    "bool": (6, 8),
    "uint8": (1, 8),
    "int8": (0, 8),
    "int16": (0, 16),
}
# Section names: a vendor linker script's *(.rodata*) and *(.bss*) take them; ours
# (deploy/mcu/sections.ld) gathers them to report weights and arena apart.
_FLASH = f'__attribute__((aligned({ALIGN}), section(".rodata.mscnn_weights")))'
_RAM = f'__attribute__((aligned({ALIGN}), section(".bss.mscnn_arena")))'


@dataclass(frozen=True)
class Tensor:
    """A tensor the program names: in the arena (`offset`) or a constant (`const`)."""

    shape: tuple[int, ...]
    dtype: str
    offset: int | None = None  # bytes from the arena's start (from its block's, while read)
    const: int | None = None  # index into Program.constants
    block: int | None = None  # while read: the storage block the offset is relative to

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Call:
    kernel: str
    args: tuple[Tensor, ...]


@dataclass(frozen=True)
class Program:
    """The static call sequence of one Relax function over one arena."""

    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    calls: tuple[Call, ...]
    constants: tuple[np.ndarray, ...]
    arena_bytes: int
    storage_blocks: tuple[int, ...]  # TVM's planned blocks, bytes, in arena order

    @property
    def weights_bytes(self) -> int:
        return sum(c.nbytes for c in self.constants)

    @property
    def kernels(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.kernel for c in self.calls))


def kernel_macs(lowered: Lowered) -> dict[str, int]:
    """The multiply-accumulates per call of each kernel that states them (MACS_ATTR: the
    int8 convs, compile/int8/kernels.py; the fp32 convs and matmuls, `block_macs`), by
    name."""
    from ..int8.kernels import MACS_ATTR

    out = {}
    for gv, func in lowered.kernels.functions.items():
        macs = func.attrs.get(MACS_ATTR) if func.attrs is not None else None
        if macs is not None:
            out[gv.name_hint] = int(macs)
    return out


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _ints(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


class _Reader:
    """Walks `main`'s bindings in order, collecting the kernel calls and, per storage
    block (TVM's planned blocks, and one per input), when it is first and last used."""

    def __init__(self) -> None:
        import tvm

        self.op = {
            n: tvm.ir.Op.get(f"relax.vm.{n}")
            for n in ("alloc_storage", "alloc_tensor", "kill_object")
        }
        self.values: dict = {}  # relax Var -> Tensor, tuple of Tensors, or a block index
        self.constants: list[np.ndarray] = []
        self.const_ids: dict = {}
        self.calls: list[Call] = []
        self.sizes: list[int] = []  # per block
        self.first: list[float] = []
        self.last: list[float] = []

    def new_block(self, nbytes: int, first: float, last: float) -> int:
        self.sizes.append(nbytes)
        self.first.append(first)
        self.last.append(last)
        return len(self.sizes) - 1

    def use(self, t: Tensor, when: float) -> None:
        if t.block is not None:
            self.first[t.block] = min(self.first[t.block], when)
            self.last[t.block] = max(self.last[t.block], when)

    def arg(self, expr) -> Tensor:
        import tvm
        from tvm import relax

        if isinstance(expr, tvm.ir.GenericConst):
            return self.constant(expr)
        if isinstance(expr, relax.Var) and isinstance(self.values.get(expr), Tensor):
            return self.values[expr]
        raise CompileError(
            f"mcu: a kernel argument is {type(expr).__name__} {expr}; only "
            "tensors in the arena and constants are supported"
        )

    def constant(self, const) -> Tensor:
        key = const  # the same constant object at two call sites is one array
        if key not in self.const_ids:
            value = np.array(const.value.numpy(), order="C")  # keeps 0-d (ascontiguousarray not)
            self.const_ids[key] = len(self.constants)
            self.constants.append(value)
        value = self.constants[self.const_ids[key]]
        return Tensor(tuple(value.shape), str(value.dtype), const=self.const_ids[key])

    def binding(self, var, value) -> None:
        from tvm import relax

        op = getattr(value, "op", None)
        now = len(self.calls)
        if isinstance(value, relax.Var):
            self.values[var] = self.values[value]
        elif isinstance(value, relax.Tuple):
            self.values[var] = tuple(self.arg(f) for f in value.fields)
        elif isinstance(op, relax.ExternFunc) and op.global_symbol == "vm.builtin.reshape":
            t = self.arg(value.args[0])  # a view: same bytes, another shape
            self.values[var] = dataclasses.replace(t, shape=_ints(value.args[1].values))
        elif op == self.op["alloc_storage"]:  # TVM hoists these to the top: lifetimes
            size = _ints(value.args[0].values)[0]  # start at the first kernel that uses one
            self.values[var] = self.new_block(size, math.inf, -math.inf)
        elif op == self.op["alloc_tensor"]:
            block, offset = self.values[value.args[0]], int(value.args[1].value)
            shape, dtype = _ints(value.args[2].values), _check_dtype(str(value.args[3].value))
            self.values[var] = Tensor(shape, dtype, offset=offset, block=block)
        elif isinstance(op, relax.GlobalVar):
            args = tuple(self.arg(a) for a in value.args)
            for a in args:
                self.use(a, now)
            self.calls.append(Call(op.name_hint, args))
        elif op != self.op["kill_object"]:
            raise CompileError(
                f"mcu: the compiled program calls {op}, which the generated "
                "C entry point does not implement"
            )


def pack_blocks(sizes, first, last) -> tuple[list[int], int]:
    """Offsets for blocks of `sizes` bytes live from call first[i] to last[i] (inclusive):
    the largest first, each at the lowest aligned offset clear of every block placed
    before it whose lifetime overlaps (the greedy planner TFLite Micro uses). Returns
    the offsets and the arena's size."""
    offsets = [0] * len(sizes)
    placed: list[tuple[int, int, int]] = []  # (offset, end, block)
    for b in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        busy = sorted((o, e) for o, e, c in placed if first[c] <= last[b] and first[b] <= last[c])
        offset = 0
        for start, end in busy:
            if offset + _align(sizes[b]) <= start:
                break
            offset = max(offset, end)
        offsets[b] = offset
        placed.append((offset, offset + _align(sizes[b]), b))
    return offsets, max((e for _, e, _ in placed), default=0)


def _check_dtype(dtype: str) -> str:
    if dtype not in _DTYPES:
        raise CompileError(
            f"mcu: tensor dtype {dtype} is not supported; supported: {', '.join(_DTYPES)}"
        )
    return dtype


def read_program(func, states_from: int | None = None) -> Program:
    """The call sequence of a Relax function after the memory planning passes, over one
    arena packed by lifetime (`pack_blocks`). Inputs keep their bytes for the whole run
    (a stream's states live there between steps); outputs stay valid after it. With
    `states_from` (a stream step: inputs and outputs pair up from that index, state and
    next state), a next state whose kernel runs after the last read of its state is
    written over the state itself (`_in_place`): the arena holds each such state once."""
    from tvm import relax

    reader = _Reader()
    forever = math.inf
    inputs = []
    for param in func.params:
        t = Tensor(_ints(param.ty.shape.values), _check_dtype(str(param.ty.dtype)), offset=0)
        t = dataclasses.replace(t, block=reader.new_block(t.nbytes, -forever, forever))
        reader.values[param] = t
        inputs.append(t)
    for block in func.body.blocks:
        for b in block.bindings:
            if not isinstance(b, relax.VarBinding):
                raise CompileError(f"mcu: unsupported binding {type(b).__name__}")
            reader.binding(b.var, b.value)
    result = func.body.body
    if isinstance(result, relax.Tuple):
        outputs = tuple(reader.arg(f) for f in result.fields)
    elif isinstance(reader.values.get(result), tuple):
        outputs = reader.values[result]
    else:
        outputs = (reader.arg(result),)
    if any(o.block is None for o in outputs):
        raise CompileError("mcu: an output of the program is a constant; nothing to compute")
    aliases = {} if states_from is None else _in_place(reader, inputs, outputs, states_from)
    for o in outputs:
        reader.use(o, forever)
    offsets, arena = pack_blocks(reader.sizes, reader.first, reader.last)
    for block, state in aliases.items():
        offsets[block] = offsets[state]

    def placed(t: Tensor) -> Tensor:
        if t.block is None:
            return t
        return dataclasses.replace(t, offset=offsets[t.block] + t.offset, block=None)

    calls = tuple(Call(c.kernel, tuple(map(placed, c.args))) for c in reader.calls)
    planned = tuple(reader.sizes[len(inputs) :])
    return Program(
        tuple(map(placed, inputs)),
        tuple(map(placed, outputs)),
        calls,
        tuple(reader.constants),
        arena,
        planned,
    )


def _in_place(reader: _Reader, inputs, outputs, start: int) -> dict[int, int]:
    """{next state's block: its state's block} for the pairs that may share memory: the
    next state alone in its block, of the state's size, first written after every call
    that reads the state (so no kernel reads a state its own step has overwritten). The
    aliased blocks take no space of their own."""
    uses: dict[int, list[int]] = {}
    for i, call in enumerate(reader.calls):
        for a in call.args:
            if a.block is not None:
                uses.setdefault(a.block, []).append(i)
    aliases = {}
    for state, nxt in zip(inputs[start:], outputs[start:], strict=True):
        reads, writes = uses.get(state.block, []), uses.get(nxt.block, [])
        alone = all(
            (a.offset, a.nbytes) == (nxt.offset, nxt.nbytes)
            for c in reader.calls
            for a in c.args
            if a.block == nxt.block
        )
        fits = nxt.offset == 0 and nxt.nbytes == state.nbytes and nxt.block not in aliases
        if writes and alone and fits and max(reads, default=-1) < min(writes):
            aliases[nxt.block] = state.block
            reader.sizes[nxt.block] = 0
    return aliases


# --------------------------------------------------------------------------------------
# Lowering: ONNX -> Relax -> single-threaded kernels -> the static call sequence


@dataclass(frozen=True)
class Lowered:
    program: Program  # the call sequence over the arena
    kernels: Any  # IRModule of the PrimFuncs, with global symbols


def lower(
    onnx_path: Path, tvm_target: Mapping[str, Any], states_from: int | None = None
) -> Lowered:
    """ONNX -> Relax -> TVM's CPU passes up to the static memory plan, with our
    single-threaded register-tile schedule (`schedule_pass`; the Linux targets' conv
    schedule parallelises and is not used here)."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    target = tvm.target.Target(dict(tvm_target))
    passes = [
        *cpu.library_dispatch_passes(target),
        explicit_padding(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        schedule_pass(),
        *cpu.dataflow_lower_passes(target),
    ]
    with target:
        mod = tvm.transform.Sequential(passes)(import_onnx(onnx_path))
    return plan(mod, target, states_from)


def lower_module(mod, tvm_target: Mapping[str, Any], states_from: int | None = None) -> Lowered:
    """A Relax module whose kernels are PrimFuncs already scheduled (compile/int8/kernels.py's
    integer program, single-threaded) -> the same memory plan and call sequence."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    target = tvm.target.Target(dict(tvm_target))
    with target:
        mod = tvm.transform.Sequential(cpu.dataflow_lower_passes(target))(mod)
    return plan(mod, target, states_from)


def plan(mod, target, states_from: int | None = None) -> Lowered:
    """TVM's static memory plan of a lowered module, read as our Program."""
    import tvm
    from tvm import relax, tirx
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    finalize = [
        p
        for p in cpu.finalize_passes(target)
        if p.info.name
        in ("StaticPlanBlockMemory", "LowerAllocTensor", "KillAfterLastUse", "LowerRuntimeBuiltin")
    ]
    with target:
        mod = tvm.transform.Sequential(finalize)(mod)
    program = read_program(mod["main"], states_from)
    mod = relax.transform.AttachGlobalSymbol()(mod)
    kernels = tvm.IRModule(
        {gv: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}
    )
    return Lowered(program, kernels)


# --------------------------------------------------------------------------------------
# The schedule: one loop nest per kernel, no scratch memory, accumulators in registers.
#
# TVM's default lowering of a fused kernel materialises every stage in a full-size
# buffer (the padded input, the conv output, each epilogue step): on a microcontroller
# that is scratch RAM as large as the activations (1.9 MB for the 10 s detector). Here
# every injective stage is inlined into its consumer (padding becomes a bounds test on
# the load), and the one reduction (conv, matmul, pool) is tiled over its last two
# spatial axes into ACCUMULATORS registers that live across the whole reduction, with
# the epilogue applied to the tile as it leaves the registers. Cortex-M4F/M7 have 32
# single-precision registers and no float SIMD: 20 accumulators plus one operand per
# row and column of the tile fit.

ACCUMULATORS = 20
FP_REGISTERS = 30  # of 32, two left for addresses the compiler keeps in FP registers


def register_tile(rows: int, cols: int) -> tuple[int, int]:
    """The largest tile (divisors of both extents, so no tail) that fits the registers."""
    best = (1, 1)
    for a in (d for d in range(1, 9) if rows % d == 0):
        for b in (d for d in range(1, 9) if cols % d == 0):
            fits = a * b <= ACCUMULATORS and a * b + a + b <= FP_REGISTERS
            if fits and a * b > best[0] * best[1]:
                best = (a, b)
    return best


def schedule_kernel(func):
    """One fused kernel scheduled for a Cortex-M core (see above). Kernels with no or
    several reductions keep their loops, with every injective stage inlined."""
    import tvm
    from tvm import tirx

    from ..int8.kernels import MACS_ATTR

    sch = tvm.s_tir.Schedule(func)
    root = sch.get_sblock("root")

    def reduces(block) -> bool:
        return any(iv.iter_type != tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)

    blocks = list(sch.get_child_blocks(root))
    reductions = [b for b in blocks if reduces(b)]
    macs = sum(block_macs(sch.get(b)) for b in reductions)
    for block in blocks[:-1]:
        if block not in reductions:
            sch.compute_inline(block)
    if len(reductions) == 1:
        _tile_reduction(sch, reductions[0], list(sch.get_child_blocks(root)))
    scheduled = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    return scheduled.with_attr(MACS_ATTR, macs) if macs else scheduled


def block_macs(block) -> int:
    """The multiply-accumulates of one reduction block, before it is scheduled: a block
    whose body is `out[...] = out[...] + a * b` (conv, matmul, linear) runs it once
    per point of its iteration domain (spatial x reduction axes: frames x filters x
    input channels per group x kernel taps for a conv, as the int8 kernels count them);
    any other reduction (a sum, a max) computes none."""
    from tvm import tirx

    body = block.body
    if not (isinstance(body, tirx.BufferStore) and isinstance(body.value, tirx.Add)):
        return 0
    acc, product = body.value.a, body.value.b
    loaded = getattr(acc, "source", getattr(acc, "buffer", None))  # a load of the stored
    if loaded is None or not loaded.same_as(body.buffer):  # buffer (TensorLoad.source)
        return 0
    if not isinstance(product, tirx.Mul):
        return 0
    return math.prod(int(iv.dom.extent) for iv in block.iter_vars)


def _tile_reduction(sch, red, blocks) -> None:
    from tvm import tirx

    if len(blocks) == 1:
        out = sch.cache_write(red, 0, "local")
    else:
        out = blocks[-1]
        sch.set_scope(red, 0, "local")
    loops = sch.get_loops(red)
    spatial = [iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(red).iter_vars]
    outer = [loop for loop, s in zip(loops, spatial, strict=True) if s]
    inner = [loop for loop, s in zip(loops, spatial, strict=True) if not s]
    if len(outer) < 2:
        return
    a, b = outer[-2:]
    ta, tb = register_tile(int(sch.get(a).extent), int(sch.get(b).extent))
    ao, ai = sch.split(a, [None, ta])
    bo, bi = sch.split(b, [None, tb])
    sch.reorder(*outer[:-2], ao, bo, *inner, ai, bi)
    sch.reverse_compute_at(out, bo)
    for loop in (ai, bi, *sch.get_loops(out)[-2:]):
        sch.unroll(loop)
    sch.decompose_reduction(red, inner[0])


def explicit_padding():
    """Relax pass: every padded conv1d becomes pad + an unpadded conv1d.

    TOPI pads inside the conv kernel; once inlined, the padding is a bounds test on
    every input load of the inner loop, which cost more than the register tile saved
    (62M SysTick ticks for the 10 s detector against 46M untiled). TVM's LoopPartition
    could split the tiles that touch the padding off, but it partitions the inner
    loops of those tiles wrongly for dilated kernels (measured: wrong edge frames).
    A separate pad kernel costs one copy of the activation (about 1/(K*F) of the conv's
    work) and the padded buffer while the conv runs; the conv loop has no branch."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class _Pad(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if getattr(call.op, "name", "") != "relax.nn.conv1d":
                return call
            a = call.attrs
            left, right = (int(v) for v in a.padding)
            if left == right == 0:
                return call
            x = relax.op.nn.pad(call.args[0], [0, 0, 0, 0, left, right])
            return relax.op.nn.conv1d(
                x,
                call.args[1],
                a.strides,
                [0, 0],
                a.dilation,
                a.groups,
                a.data_layout,
                a.kernel_layout,
                a.out_layout,
                a.out_dtype,
            )

    @tvm.transform.module_pass(opt_level=0, name="mscnn_explicit_padding")
    def run(mod, _ctx):
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mod[gv] = _Pad(mod).visit_expr(func)
        return mod

    return run


def schedule_pass():
    """The module pass applying `schedule_kernel` to every PrimFunc (after FuseTIR)."""
    import tvm
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="mscnn_mcu_schedule")
    def run(mod, _ctx):
        updates = {
            gv: schedule_kernel(f)
            for gv, f in mod.functions.items()
            if isinstance(f, tirx.PrimFunc)
        }
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return run


@dataclass(frozen=True)
class Kernels:
    path: Path  # the object file
    workspace_bytes: int  # the most scratch memory one kernel asks for at once


_WORKSPACE_CALL = re.compile(r"call ptr %[\w.]+\(i32 [^,]+, i32 [^,]+, i64 (\S+), i32")


def workspace_bytes(llvm_ir: str) -> int:
    """The workspace pool a module needs: per kernel, the sum of the scratch buffers it
    asks __TVMBackendAllocWorkspace for (all may be live at once), the largest kernel's.
    Read from the LLVM IR, i.e. from what the compiled code really calls."""
    worst = 0
    for body in llvm_ir.split("\ndefine ")[1:]:
        sizes = [m.group(1) for m in _WORKSPACE_CALL.finditer(body.split("\n}\n", 1)[0])]
        if any(not s.isdigit() for s in sizes):
            raise CompileError(
                "mcu: a kernel asks for a workspace of run-time size; "
                "the static pool cannot hold it"
            )
        worst = max(worst, sum(-(-int(s) // 64) * 64 for s in sizes))
    return worst


def _aligned_workspace(stmt, mask):
    """`stmt` with every workspace buffer's data pointer taken through `llvm.ptrmask`
    with `mask` (None where nothing changed). TVM hands LLVM the pointer that
    __TVMBackendAllocWorkspace returns, of unknown alignment, so LLVM knows the scratch
    only as its element type's (2 bytes for int16) and reads no two words of it with
    one `ldrd`. Our pool gives out `ALIGN`-byte blocks (deploy/mcu/mscnn_rt.c), so the
    mask clears bits that are clear: the same pointer, its alignment now stated. Every
    access of the buffer (the padding's stores, the conv's loads, the null check and
    the free) goes through that one value, so no load can be moved past a store."""
    import tvm
    from tvm import tirx

    kind = type(stmt).__name__
    if kind == "DeclBuffer":
        data = stmt.data
        if isinstance(data, tvm.ir.Call) and data.op.name == "tirx.TVMBackendAllocWorkspace":
            masked = tirx.call_llvm_pure_intrin(
                "handle", "llvm.ptrmask", data, tirx.const(mask, "int32")
            )
            return tirx.DeclBuffer(stmt.buffer, data=masked)
        return None
    if kind == "SeqStmt":
        seq = [_aligned_workspace(s, mask) for s in stmt.seq]
        if all(s is None for s in seq):
            return None
        return tirx.SeqStmt([new or old for new, old in zip(seq, stmt.seq, strict=True)])
    if kind == "IfThenElse":
        then, other = stmt.then_case, stmt.else_case
        parts = [_aligned_workspace(then, mask), other and _aligned_workspace(other, mask)]
        if parts == [None, None]:
            return None
        return tirx.IfThenElse(stmt.condition, parts[0] or then, parts[1] or other)
    body = _aligned_workspace(stmt.body, mask) if kind in ("For", "AttrStmt") else None
    if body is None:
        return None
    if kind == "AttrStmt":
        return tirx.AttrStmt(stmt.node, stmt.attr_key, stmt.value, body)
    return tirx.For(
        stmt.loop_var,
        stmt.min,
        stmt.extent,
        stmt.kind,
        body,
        stmt.thread_binding,
        stmt.annotations,
        stmt.step,
    )


def align_workspace_pass():
    """The PrimFunc pass of `_aligned_workspace` (after TVM's LowerTVMBuiltin, which
    turns scratch buffers into workspace calls), stating `ALIGN`."""
    import tvm

    @tvm.tirx.transform.prim_func_pass(opt_level=0, name="mscnn_align_workspace")
    def run(func, _mod, _ctx):
        body = _aligned_workspace(func.body, -ALIGN)
        return func if body is None else func.with_body(body)

    return run


def _pipeline():
    """TVM's default TIR pipeline with `align_workspace_pass` after LowerTVMBuiltin:
    the name `compile_kernels` builds with."""
    import tvm
    from tvm.tirx import compilation_pipeline

    def factory():
        lower, _, device = tvm.tirx.get_tir_pipeline("default")

        def host():
            return tvm.ir.transform.Sequential(
                [
                    tvm.tirx.transform.LowerTVMBuiltin(),
                    align_workspace_pass(),
                    tvm.tirx.transform.LowerIntrin(),
                ]
            )

        return lower, host, device

    compilation_pipeline.register_tir_pipeline("mscnn_mcu", factory)
    return "mscnn_mcu"


def compile_kernels(lowered: Lowered, tvm_target: Mapping[str, Any], path: Path) -> Kernels:
    """The PrimFuncs as one Thumb-2 object file (TVM's LLVM backend).

    Without the packed calling convention's argument asserts (count, type codes, shapes,
    strides, alignment of every tensor): model.c passes each kernel the static tensors
    of the memory plan, so they cannot fail, and they were most of the code (the int8
    stream step's: 420 KiB with them, 109 KiB without). A kernel's workspace request is
    still checked (a branch, not an assert) and fails as MSCNN_E_KERNEL."""
    import tvm

    target = tvm.target.Target(dict(tvm_target))
    with tvm.transform.PassContext(config={"tirx.disable_assert": True}):
        lib = tvm.tirx.build(lowered.kernels, target=target, pipeline=_pipeline())
    lib.write_to_file(str(path))
    return Kernels(path, workspace_bytes(lib.inspect_source("ll")))


# --------------------------------------------------------------------------------------
# C


def _c_words(value: np.ndarray) -> tuple[int, str]:
    """A constant's bytes as little-endian uint32 words (exact for every dtype): the
    number of words and the initialiser text, 8 words a line."""
    raw = value.tobytes()
    raw += b"\0" * (-len(raw) % 4)
    words = np.frombuffer(raw, dtype="<u4")
    lines = (", ".join(f"0x{w:08x}u" for w in words[i : i + 8]) for i in range(0, len(words), 8))
    return len(words), ",\n  ".join(lines)


def _tensor_c(name: str, t: Tensor, data: str) -> str:
    code, bits = _DTYPES[t.dtype]
    dims = ", ".join(str(d) for d in t.shape) or "1"
    return (
        f"static const int64_t {name}_shape[] = {{{dims}}};\n"
        f"static const mscnn_tensor_t {name} = {{{data}, 1, 0, {len(t.shape)}, {code}, "
        f"{bits}, 1, {name}_shape, NULL, 0}};\n"
    )


class _Names:
    """One C descriptor per distinct tensor (arena offset + shape + dtype, or constant)."""

    def __init__(self) -> None:
        self.names: dict[Tensor, str] = {}
        self.lines: list[str] = []

    def __call__(self, t: Tensor) -> str:
        if t not in self.names:
            name = f"t{len(self.names)}"
            if t.const is not None:
                data = f"(void*)mscnn_c{t.const}"
            else:
                data = f"mscnn_arena + {t.offset}"
            self.names[t] = name
            self.lines.append(_tensor_c(name, t, data))
        return self.names[t]


def emit_c(program: Program, workspace_bytes: int, header: str = "model.h") -> str:
    """model.c: constants, the arena, descriptors, argument lists and `mscnn_call`, which
    runs the kernels in order (0, or MSCNN_E_KERNEL at the first kernel that refuses)."""
    out = [
        "/* Generated by mscnn-edge from the compiled model: do not edit. */",
        f'#include "{header}"',
        '#include "mscnn_rt.h"',
        "",
        f"{_RAM} uint8_t mscnn_arena[{max(program.arena_bytes, 1)}];",
        f"{_RAM} uint8_t mscnn_workspace_pool[{max(workspace_bytes, 1)}];",
        f"const size_t mscnn_workspace_bytes = {workspace_bytes};",
        "",
    ]
    for i, value in enumerate(program.constants):
        n, words = _c_words(value)
        out.append(
            f"/* {value.dtype} {tuple(value.shape)} */\n"
            f"static const uint32_t mscnn_c{i}[{n}] {_FLASH} = {{\n"
            f"  {words}\n}};"
        )
    names = _Names()
    calls = []
    for k, call in enumerate(program.calls):
        refs = [names(a) for a in call.args]
        anys = ", ".join(f"{{MSCNN_ANY_TENSOR, 0, {{.v_ptr = &{r}}}}}" for r in refs)
        calls.append((k, call.kernel, len(refs), anys))
    out.append("")
    out += names.lines
    for kernel in program.kernels:
        out.append(f"int32_t __tvm_ffi_{kernel}(void*, const mscnn_any_t*, int32_t, mscnn_any_t*);")
    for k, _, _, anys in calls:
        out.append(f"static const mscnn_any_t mscnn_a{k}[] = {{{anys}}};")
    out.append(_PROFILE.format(calls=len(calls)))
    out.append("\nstatic int mscnn_call(void) {\n  mscnn_any_t result;")
    for k, kernel, n, _ in calls:
        out.append(
            f"  MSCNN_MARK({k});\n  result.type_index = 0;\n"
            f"  if (__tvm_ffi_{kernel}(NULL, mscnn_a{k}, {n}, &result) != 0) "
            "return MSCNN_E_KERNEL;"
        )
    out.append(f"  MSCNN_MARK({len(calls)});\n  return MSCNN_OK;\n}}\n")
    return "\n".join(out)


# The per-kernel profile, compiled in only with -DMSCNN_PROFILE (the proof firmware; the
# library is built without it): SysTick (architectural on every Cortex-M, counting down
# at the processor clock, 24 bits) read before each kernel call, the ticks since the
# last mark added to the call that ran. A call must take under 2^24 ticks.
_PROFILE = """
#define MSCNN_CALLS {calls}u
#ifdef MSCNN_PROFILE
uint32_t mscnn_profile_ticks[MSCNN_CALLS];
const uint32_t mscnn_profile_calls = MSCNN_CALLS;
static uint32_t mscnn_profile_last;
static void mscnn_mark(uint32_t k) {{
  uint32_t now = *(volatile const uint32_t*)0xE000E018u; /* SYST_CVR */
  if (k > 0u) mscnn_profile_ticks[k - 1u] += (mscnn_profile_last - now) & 0xFFFFFFu;
  mscnn_profile_last = now;
}}
#define MSCNN_MARK(k) mscnn_mark(k)
#else
#define MSCNN_MARK(k) ((void)0)
#endif"""


_ERROR_CODES = """
#ifndef MSCNN_OK
#define MSCNN_OK 0          /* success */
#define MSCNN_E_LENGTH 1    /* the input does not have the model's length */
#define MSCNN_E_NONFINITE 2 /* the input holds NaN or Inf */
#define MSCNN_E_KERNEL 3    /* a kernel refused its arguments (see mscnn_last_error) */
#define MSCNN_E_OUTPUT 4    /* the caller's output buffer is too small */
#endif
"""


INPUT_UNITS = "mV"  # every model here takes the ECG as recorded, in millivolts (mscnn.data)


def _input_lines(fs: int, rule: RPeakRule | None) -> str:
    """model.h's lines on the input (rate, units) and, for the QRS detector, the R-peak
    rule's parameters for rpeaks.h."""
    lines = f"""#define MSCNN_FS_HZ {fs}   /* the input's sampling rate, Hz */
/* Input samples are float32 in millivolts ({INPUT_UNITS}), as recorded at MSCNN_FS_HZ: no
 * filtering, no normalisation (the model was trained on such ECG). */
"""
    if rule is None:
        return lines
    return lines + (
        "\n/* The detector's R-peak rule (rpeaks.h): mscnn_beats_init(&b, MSCNN_RPEAK_THRESHOLD,\n"
        " * MSCNN_REDUCTION, MSCNN_RPEAK_MIN_RR, MSCNN_RPEAK_EDGE). A frame is positive when its\n"
        f" * logit exceeds the threshold (probability {rule.threshold:g}); beats closer than\n"
        f" * MIN_RR ({rule.min_rr_ms} ms) are one; beats nearer a record's end than EDGE\n"
        f" * ({rule.edge_ms} ms) are dropped. */\n"
        f"#define MSCNN_REDUCTION {rule.reduction}  /* input samples per output frame (logit) */\n"
        f"#define MSCNN_RPEAK_THRESHOLD {rpeak_threshold(rule)!r}f\n"
        f"#define MSCNN_RPEAK_MIN_RR {rule.min_rr_samples}  /* samples */\n"
        f"#define MSCNN_RPEAK_EDGE {rule.edge_samples}  /* samples */\n"
    )


def rpeak_threshold(rule: RPeakRule) -> float:
    """The rule's logit threshold as the float32 at or just below it: for every float32 x,
    x > this exactly when x > the float64 threshold (deploy.rpeaks compares in float64;
    the firmware compares floats, with no double arithmetic)."""
    exact = rule.logit_threshold
    f = np.float32(exact)
    if float(f) > exact:
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


def emit_header(
    program: Program, fs: int, rule: RPeakRule | None = None, guard: str = "MSCNN_MODEL_H"
) -> str:
    """model.h: sizes, the input's rate and units, error codes and the window entry points."""
    (x,), (y,) = program.inputs, program.outputs
    return f"""/* Generated by mscnn-edge: the model's C interface. Do not edit. */
#ifndef {guard}
#define {guard}

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {{
#endif

#define MSCNN_INPUT_LEN {math.prod(x.shape)}   /* float32 samples, shape {x.shape} */
#define MSCNN_LEADS {x.shape[1]}
#define MSCNN_SAMPLES {x.shape[-1]}  /* per lead */
#define MSCNN_OUTPUT_LEN {math.prod(y.shape)}  /* float32 values, shape {y.shape} */
#define MSCNN_ARENA_BYTES {program.arena_bytes}  /* .bss.mscnn_arena, 64-byte aligned */
#define MSCNN_WEIGHTS_BYTES {program.weights_bytes}  /* .rodata.mscnn_weights, flash */
{_input_lines(fs, rule)}
{_ERROR_CODES}
/* Where to write the input (MSCNN_INPUT_LEN floats, 64-byte aligned, in the arena; not
 * while mscnn_run runs). */
float* mscnn_input(void);
/* Run on the input written there; `n`: how many samples were written. 0 or an error. */
int mscnn_run(size_t n);
/* The output of the last successful run (MSCNN_OUTPUT_LEN floats, in the arena). */
const float* mscnn_output(void);
/* Copy in, run, copy out: n must be MSCNN_INPUT_LEN and m at least MSCNN_OUTPUT_LEN. */
int mscnn_infer(const float* x, size_t n, float* y, size_t m);
/* The last kernel error's message, after MSCNN_E_KERNEL. */
const char* mscnn_last_error(void);

#ifdef __cplusplus
}}
#endif
#endif
"""


def emit_entry(program: Program) -> str:
    """The window entry points (model.h), appended to model.c."""
    (x,), (y,) = program.inputs, program.outputs
    return f"""
float* mscnn_input(void) {{ return (float*)(mscnn_arena + {x.offset}); }}

const float* mscnn_output(void) {{ return (const float*)(mscnn_arena + {y.offset}); }}

int mscnn_run(size_t n) {{
  if (n != MSCNN_INPUT_LEN) return MSCNN_E_LENGTH;
  const uint32_t* bits = (const uint32_t*)(mscnn_arena + {x.offset});
  for (size_t i = 0; i < n; ++i) {{
    if ((bits[i] & 0x7f800000u) == 0x7f800000u) return MSCNN_E_NONFINITE; /* NaN, Inf */
  }}
  mscnn_clear_error();
  return mscnn_call();
}}

int mscnn_infer(const float* x, size_t n, float* y, size_t m) {{
  if (n != MSCNN_INPUT_LEN) return MSCNN_E_LENGTH;
  if (m < MSCNN_OUTPUT_LEN) return MSCNN_E_OUTPUT;
  float* in = mscnn_input();
  for (size_t i = 0; i < n; ++i) in[i] = x[i];
  int rc = mscnn_run(n);
  if (rc != MSCNN_OK) return rc;
  const float* out = mscnn_output();
  for (size_t i = 0; i < MSCNN_OUTPUT_LEN; ++i) y[i] = out[i];
  return MSCNN_OK;
}}
"""


_SEGMENT_API = """/* Zero the state and the record's clock: call before a record's first hop. */
void mscnn_reset(void);
/* Called after each step of mscnn_flush / mscnn_stream_gap: take the step's frames
 * (mscnn_valid, mscnn_output) as after any step. */
typedef void (*mscnn_frames_fn)(void* ctx);
/* The end of a record: the hop at mscnn_input() with its first `n` samples real (those
 * since the last whole hop, 0 to MSCNN_HOP - 1), then empty hops until the frames stop;
 * `frames(ctx)` after each step. Then as mscnn_reset(). MSCNN_OK or a step's error. */
int mscnn_flush(size_t n, mscnn_frames_fn frames, void* ctx);
/* A gap of `samples` samples (the sensor gave none) after the segment's last `n` samples
 * (written to mscnn_input() as for mscnn_flush): the segment ends as a record does, the
 * state is zeroed, and the next segment begins `samples` after its end in the record's
 * clock (mscnn_segment_start). Beats of each segment are those of a record of it alone. */
int mscnn_stream_gap(size_t n, uint32_t samples, mscnn_frames_fn frames, void* ctx);
/* The record's sample where the current segment began: 0, or the end of the last gap. */
uint32_t mscnn_segment_start(void);"""


def emit_stream_header(
    program: Program,
    facts: StreamFacts,
    fs: int,
    rule: RPeakRule | None = None,
    guard: str = "MSCNN_MODEL_H",
) -> str:
    """model.h of a stream step: sizes, the input's rate and units, error codes and the
    step's entry points."""
    x, frames = program.inputs[0], program.outputs[0]
    return f"""/* Generated by mscnn-edge: the streaming step's C interface. Do not edit.
 *
 * Protocol: mscnn_reset() once, then per hop of MSCNN_HOP samples
 * per lead write them to mscnn_input() (lead-major) and call mscnn_step(MSCNN_HOP); the
 * frames [start, stop) of mscnn_output() (mscnn_valid) are the next frames of the
 * record. To end a record of L samples: its last partial hop with n = L % MSCNN_HOP,
 * then hops with n = 0 until stop < MSCNN_FRAMES_PER_STEP (at most MSCNN_FLUSH_STEPS
 * steps). The state lives in the arena between steps; a refused hop (MSCNN_E_LENGTH,
 * MSCNN_E_NONFINITE) leaves it as it was; after MSCNN_E_KERNEL call mscnn_reset().
 * mscnn_input() lies in the arena: while mscnn_step runs, the arena is the model's; write
 * the next hop there only after it returns (collect samples in a buffer of your own).
 * mscnn_flush() ends a record; mscnn_stream_gap() a segment before a lead-off gap. */
#ifndef {guard}
#define {guard}

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {{
#endif

#define MSCNN_LEADS {x.shape[1]}
#define MSCNN_HOP {x.shape[2]}  /* samples per lead per step (MSCNN_HOP / MSCNN_FS_HZ s) */
#define MSCNN_CHANNELS {frames.shape[1]}
#define MSCNN_FRAMES_PER_STEP {frames.shape[2]}
#define MSCNN_FLUSH_STEPS {facts.flush_steps}
#define MSCNN_DELAY_FRAMES {facts.delay_frames}
#define MSCNN_LOOK_AHEAD {facts.look_ahead}   /* samples */
#define MSCNN_STATE_BYTES {facts.state_bytes}
#define MSCNN_ARENA_BYTES {program.arena_bytes}  /* .bss.mscnn_arena, 64-byte aligned */
#define MSCNN_WEIGHTS_BYTES {program.weights_bytes}  /* .rodata.mscnn_weights, flash */
{_input_lines(fs, rule)}{_ERROR_CODES}
{_SEGMENT_API}
/* Where to write a hop (MSCNN_LEADS x MSCNN_HOP floats, lead-major, in the arena). */
float* mscnn_input(void);
/* One step on the hop written there; `n`: real samples at its front (<= MSCNN_HOP). */
int mscnn_step(size_t n);
/* This step's frames (MSCNN_CHANNELS x MSCNN_FRAMES_PER_STEP, channel-major). */
const float* mscnn_output(void);
/* Which of them are the record's next frames: [*start, *stop). */
void mscnn_valid(size_t* start, size_t* stop);
/* The last kernel error's message, after MSCNN_E_KERNEL. */
const char* mscnn_last_error(void);

#ifdef __cplusplus
}}
#endif
#endif
"""


_COPY_STATE = """
/* A state copied (from NULL: zeroed) word by word where its size allows (int8 states may
 * not fill their last word), else byte by byte. */
static void mscnn_copy_state(uint8_t* to, const uint8_t* from, uint32_t bytes) {
  if (bytes % 4u == 0u) {
    uint32_t* t = (uint32_t*)to;
    const uint32_t* f = (const uint32_t*)from;
    for (uint32_t i = 0; i < bytes / 4u; ++i) t[i] = f ? f[i] : 0u;
  } else {
    for (uint32_t i = 0; i < bytes; ++i) to[i] = from ? from[i] : 0u;
  }
}
"""


_SEGMENTS = """
static uint32_t mscnn_start, mscnn_stepped; /* the segment's first sample; samples stepped */

static void mscnn_zero_states(void) {
  for (size_t k = 0; k < sizeof mscnn_states / sizeof mscnn_states[0]; ++k)
    mscnn_copy_state(mscnn_arena + mscnn_states[k].state, 0, mscnn_states[k].bytes);
}

void mscnn_reset(void) {
  mscnn_zero_states();
  mscnn_start = mscnn_stepped = 0u;
}

uint32_t mscnn_segment_start(void) { return mscnn_start; }

/* The segment's partial hop of n samples, then empty hops until the frames stop. */
static int mscnn_end_segment(size_t n, mscnn_frames_fn frames, void* ctx) {
  if (n == 0u && mscnn_stepped == 0u) return MSCNN_OK; /* nothing streamed */
  for (size_t step = 0; step < MSCNN_FLUSH_STEPS; ++step) {
    int rc = mscnn_step(step == 0u ? n : 0u);
    if (rc != MSCNN_OK) return rc;
    frames(ctx);
    size_t start, stop;
    mscnn_valid(&start, &stop);
    if (stop < MSCNN_FRAMES_PER_STEP) return MSCNN_OK;
  }
  return MSCNN_OK;
}

int mscnn_flush(size_t n, mscnn_frames_fn frames, void* ctx) {
  int rc = mscnn_end_segment(n, frames, ctx);
  if (rc == MSCNN_OK) mscnn_reset();
  return rc;
}

int mscnn_stream_gap(size_t n, uint32_t samples, mscnn_frames_fn frames, void* ctx) {
  int rc = mscnn_end_segment(n, frames, ctx);
  if (rc != MSCNN_OK) return rc;
  uint32_t next = mscnn_start + mscnn_stepped + samples;
  mscnn_zero_states();
  mscnn_start = next;
  mscnn_stepped = 0u;
  return MSCNN_OK;
}
"""


def emit_stream_entry(program: Program) -> str:
    """The step's entry points, appended to model.c: inputs are (x, n_valid, *states),
    outputs (frames, valid, *next_states); after a step each next state is copied over
    its state (both live in the arena; inputs are never reused by the planner)."""
    x, n_valid, *states = program.inputs
    frames, valid, *next_states = program.outputs
    if [s.shape for s in states] != [s.shape for s in next_states] or n_valid.dtype != "int64":
        raise CompileError(
            "mcu: the step's inputs and outputs do not follow the stream "
            "protocol (x, n_valid, *states) -> (frames, valid, *next)"
        )
    rows = ",\n  ".join(
        f"{{{s.offset}u, {n.offset}u, {s.nbytes}u}}"
        for s, n in zip(states, next_states, strict=True)
    )
    hop, leads = x.shape[2], x.shape[1]
    return f"""
static const struct {{ uint32_t state, next, bytes; }} mscnn_states[] = {{
  {rows or "{0u, 0u, 0u}"}
}};

{_COPY_STATE}{_SEGMENTS}
float* mscnn_input(void) {{ return (float*)(mscnn_arena + {x.offset}); }}

const float* mscnn_output(void) {{ return (const float*)(mscnn_arena + {frames.offset}); }}

void mscnn_valid(size_t* start, size_t* stop) {{
  const int64_t* v = (const int64_t*)(mscnn_arena + {valid.offset});
  *start = (size_t)v[0];
  *stop = (size_t)v[1];
}}

int mscnn_step(size_t n) {{
  if (n > {hop}u) return MSCNN_E_LENGTH;
  float* x = mscnn_input();
  for (size_t lead = 0; lead < {leads}u; ++lead) {{
    const uint32_t* bits = (const uint32_t*)(x + lead * {hop}u);
    for (size_t i = 0; i < n; ++i) {{
      if ((bits[i] & 0x7f800000u) == 0x7f800000u) return MSCNN_E_NONFINITE; /* NaN, Inf */
    }}
    for (size_t i = n; i < {hop}u; ++i) x[lead * {hop}u + i] = 0.0f; /* not data */
  }}
  *(int64_t*)(mscnn_arena + {n_valid.offset}) = (int64_t)n;
  mscnn_clear_error();
  int rc = mscnn_call();
  /* After a kernel error a state updated in place may be half written: reset. */
  if (rc != MSCNN_OK) return rc;
  mscnn_stepped += (uint32_t)n;
  for (size_t k = 0; k < sizeof mscnn_states / sizeof mscnn_states[0]; ++k) {{
    if (mscnn_states[k].next == mscnn_states[k].state) continue; /* updated in place */
    const uint8_t* from = mscnn_arena + mscnn_states[k].next;
    mscnn_copy_state(mscnn_arena + mscnn_states[k].state, from, mscnn_states[k].bytes);
  }}
  return MSCNN_OK;
}}
"""
