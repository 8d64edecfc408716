"""ONNX -> Relax -> the target's pipeline -> a TVM executable.

CPU: TVM's cpu_generic passes (legalize, fold constants, fuse conv + bias + relu into
few kernels, lower), with our own schedule (compile/lowering/schedule.py) applied to the fused
kernels after FuseTIR: TVM's default loops are naive, ~3 GFLOP/s on these convs.
GPU: TVM's default GPU pipeline, whose dlight rules bind every kernel to threads.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CompileError
from ..export import INPUT_NAME
from ..targets import Target, tvm_target
from .lstm import lstm_converter
from .schedule import KernelCounts, schedule_pass

SCHEDULES = ("tuned", "default-tile", "none")


def front_passes(tv_target) -> list:
    """CPU passes up to the fused kernels (what tuning sees and our schedule rewrites).

    First, exp and tanh become TVM's fast approximations (FastMathTransform:
    topi.fast_exp and fast_tanh, polynomials that vectorise, where libm's are one call
    per lane). Only the whole models' Mish uses them; on the detector the TVM output
    moves by under 1e-6 of its largest logit (the tolerance is 1e-5), and the stream
    step gets ~10% faster (the window's head too)."""
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    return [
        relax.transform.FastMathTransform(),
        *cpu.library_dispatch_passes(tv_target),
        *cpu.legalize_passes(tv_target),
    ]


@dataclass(frozen=True)
class MemoryPlan:
    """What a device must hold, read from TVM's static memory plan (CPU targets)."""

    activation_bytes: int  # planned storage blocks plus the outputs
    output_bytes: int
    weights_bytes: int  # the constants the graph holds (after repacking)
    storage_blocks: tuple[int, ...]


@dataclass(frozen=True)
class Compiled:
    """A compiled, not yet exported, Relax executable and what the build learnt on the way
    (None where the target's pipeline does not tell: GPU targets, no schedule)."""

    executable: Any
    memory: MemoryPlan | None
    kernels: KernelCounts | None


def pipeline_for(
    target: Target,
    tv_target,
    schedule: str = "tuned",
    records=None,
    on_kernels=None,
    on_memory=None,
):
    """The target's Relax pipeline. CPU `schedule`: "tuned" (our schedule with the tiles
    of `records` where a kernel has one), "default-tile" (our schedule, the target's
    tile everywhere) or "none" (TVM's default loops; for benchmarks). `on_kernels` and
    `on_memory` are told the schedule's counts and the memory plan as the passes run."""
    import tvm
    from tvm import relax

    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r} is not one of {SCHEDULES}")
    if target.is_gpu:
        return relax.get_default_pipeline(tv_target)
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    passes = front_passes(tv_target)
    if target.tile is not None and schedule != "none":
        tiles = records if schedule == "tuned" else None
        passes.append(schedule_pass(target.tile, tiles, on_kernels))
    passes += cpu.dataflow_lower_passes(tv_target)
    for p in cpu.finalize_passes(tv_target):
        passes.append(p)
        if p.info.name == "StaticPlanBlockMemory" and on_memory is not None:
            passes.append(_measure(on_memory))

    @tvm.transform.module_pass(opt_level=0, name="mscnn_cpu_pipeline")
    def run(mod, _ctx):
        with tv_target:
            return tvm.transform.Sequential(passes)(mod)

    return run


def import_onnx(onnx_path: Path, shape=None, gpu: bool = False, tile=None):
    """The ONNX file as a Relax module, every input at the static shape and dtype the file
    declares (a window model's one input, or a stream step's input and states); `shape`,
    where given, is the ECG input's. The one ONNX importer of bundles and Cortex-M builds.
    ONNX LSTM nodes are lowered by our converter (compile/lowering/lstm.py; `gpu` picks
    its GPU form, and a CPU target's conv `tile` sizes the recurrence's register tile)."""
    import onnx
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    model = mish_without_log(onnx.load(str(onnx_path)))
    shapes, dtypes = {}, {}
    for i in model.graph.input:
        dims = [d.dim_value for d in i.type.tensor_type.shape.dim]
        shapes[i.name] = dims
        dtypes[i.name] = onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name
    if shape is not None:
        shapes[INPUT_NAME] = list(shape)
    dynamic = [name for name, dims in shapes.items() if any(d <= 0 for d in dims)]
    if dynamic:
        raise CompileError(f"input {', '.join(dynamic)} of {onnx_path} has no static shape")
    with warnings.catch_warnings():  # state names hold dots, which Relax renames: expected
        warnings.filterwarnings("ignore", "Renaming name", UserWarning)
        with lstm_converter(gpu, tile and (tile.vec, tile.registers)):
            mod = from_onnx(model, shape_dict=shapes, dtype_dict=dtypes)
    return relax.transform.DecomposeOpsForInference()(mod)  # batch_norm -> scale and shift


def mish_without_log(model):
    """The ONNX model with each Softplus -> Tanh pair (Mish's tail, as opset 17 exports
    it) rewritten without a logarithm. With e = exp(-|x|) in (0, 1]:
    tanh(log(1 + exp(x))) = (1 + 2e) / (1 + 2e + 2e^2) for x >= 0 and
    (e^2 + 2e) / (e^2 + 2e + 2) for x < 0, bounded in float16 as in float32. TVM's
    softplus calls libm's logf once per element (LLVM does not vectorise it), which made
    the detector's head cost as much as its backbone; exp becomes topi's vectorised
    fast_exp (front_passes). The bundle's ONNX file keeps the exported graph; only TVM's
    import changes."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    users: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    pairs = {}
    for node in model.graph.node:
        after = users.get(node.output[0], []) if node.op_type == "Softplus" else []
        if len(after) == 1 and after[0].op_type == "Tanh":
            pairs[id(node)] = after[0]
    if not pairs:
        return model
    tails = {id(tanh) for tanh in pairs.values()}
    nodes = []
    for node in model.graph.node:
        if id(node) in pairs:
            nodes += _tanh_softplus(node.input[0], pairs[id(node)].output[0], len(nodes))
        elif id(node) not in tails:
            nodes.append(node)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(
        numpy_helper.from_array(np.array(v, np.float32), f"mish_nolog_{v:g}") for v in (0, 1, 2)
    )
    return out


def _tanh_softplus(x: str, out: str, tag: int) -> list:
    """ONNX nodes computing tanh(softplus(x)) into `out` without a logarithm."""
    from onnx import helper

    t = f"mish_nolog_{tag}"
    steps = [
        ("Abs", [x], "a"),
        ("Neg", [f"{t}_a"], "na"),
        ("Exp", [f"{t}_na"], "e"),
        ("Mul", [f"{t}_e", f"{t}_e"], "e2"),
        ("Add", [f"{t}_e", f"{t}_e"], "twoe"),
        ("GreaterOrEqual", [x, "mish_nolog_0"], "pos"),
        ("Add", ["mish_nolog_1", f"{t}_twoe"], "pnum"),
        ("Add", [f"{t}_e2", f"{t}_twoe"], "nnum"),
        ("Where", [f"{t}_pos", f"{t}_pnum", f"{t}_nnum"], "num"),
        ("Add", [f"{t}_e2", f"{t}_e2"], "pextra"),
        ("Where", [f"{t}_pos", f"{t}_pextra", "mish_nolog_2"], "extra"),
        ("Add", [f"{t}_num", f"{t}_extra"], "den"),
    ]
    nodes = [helper.make_node(op, inputs, [f"{t}_{name}"]) for op, inputs, name in steps]
    return nodes + [helper.make_node("Div", [f"{t}_num", f"{t}_den"], [out])]


def compile_executable(
    onnx_path: Path,
    target: Target,
    shape,
    schedule: str = "tuned",
    records=None,
    precision: str = "fp32",
) -> Compiled:
    """Compile the ONNX model for `target` at the static input `shape`. `precision`
    "fp16": TVM's ToMixedPrecision keeps activations and weights in half precision and
    accumulates convolutions and matmuls in fp32 (input and output stay fp32). With fp16
    accumulation the detector found other beats than PyTorch on 2 of the 50 CPSC2019
    records; with fp32 accumulation on none, at a normalised error of at most 7.4e-3."""
    import tvm
    from tvm import relax

    seen: dict[str, Any] = {}
    mod = import_onnx(onnx_path, shape, gpu=target.is_gpu, tile=target.tile)
    if precision == "fp16":
        mod = relax.transform.ToMixedPrecision(out_dtype="float32")(mod)
    elif precision != "fp32":
        raise ValueError(f"precision {precision!r}: TVM's float pipeline takes fp32 or fp16")
    tv_target = tvm_target(target)
    pipeline = pipeline_for(
        target,
        tv_target,
        schedule,
        records,
        on_kernels=lambda k: seen.update(kernels=k),
        on_memory=lambda m: seen.update(memory=m),
    )
    # The CUDA compile callback reads the arch from the current target: keep it in scope.
    with tv_target:
        executable = tvm.compile(mod, target=tv_target, relax_pipeline=pipeline)
    return Compiled(executable, seen.get("memory"), seen.get("kernels"))


def _measure(on_memory):
    """Read the static memory plan: what a device's RAM and flash must hold.

    After StaticPlanBlockMemory every intermediate tensor lives in a planned storage block
    (`relax.memory.alloc_storage`, sized in bytes) reused once its tensors are dead; the
    function's outputs are allocated on their own (`relax.builtin.alloc_tensor`). Their sum
    bounds the activation memory at any moment. Weights are the constants the graph holds
    (after constant folding and our weight repacking).
    """
    import tvm
    from tvm import relax

    storage_op = tvm.ir.Op.get("relax.memory.alloc_storage")
    tensor_op = tvm.ir.Op.get("relax.builtin.alloc_tensor")

    @relax.expr_functor.visitor
    class _Sizes(relax.PyExprVisitor):
        def __init__(self):
            super().__init__()
            self.storage, self.outputs, self.weights = [], [], 0

        def visit_call_(self, call):
            super().visit_call_(call)
            if call.op == storage_op:
                self.storage.append(int(call.args[0].values[0]))
            elif call.op == tensor_op:
                shape = [int(v) for v in call.args[0].values]
                self.outputs.append(math.prod(shape) * call.args[1].value.bits // 8)

        def visit_generic_const_(self, const):
            if hasattr(const.value, "numpy"):  # tensors; other constants are dtypes etc.
                self.weights += const.value.numpy().nbytes

    @tvm.transform.module_pass(opt_level=0, name="mscnn_measure_memory")
    def run(mod, _ctx):
        sizes = _Sizes()
        for func in mod.functions.values():
            if isinstance(func, relax.Function):
                sizes.visit_expr(func)
        on_memory(
            MemoryPlan(
                sum(sizes.storage) + sum(sizes.outputs),
                sum(sizes.outputs),
                sizes.weights,
                tuple(sizes.storage),
            )
        )
        return mod

    return run
