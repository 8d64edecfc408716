"""ONNX -> Relax -> the target's pipeline -> a TVM executable.

CPU: TVM's cpu_generic passes (legalize, fold constants, fuse conv + bias + relu into
few kernels, lower), with our own schedule (compile/schedule.py) applied to the fused
kernels after FuseTIR: TVM's default loops are naive, ~3 GFLOP/s on these convs.
GPU: TVM's default GPU pipeline, whose dlight rules bind every kernel to threads.
"""

from __future__ import annotations

from pathlib import Path

from .export import INPUT_NAME
from .schedule import schedule_pass
from .targets import Target, tvm_target


def pipeline_for(target: Target, tv_target):
    import tvm
    from tvm import relax

    if target.device == "cuda":
        return relax.get_default_pipeline(tv_target)
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    passes = cpu.library_dispatch_passes(tv_target) + cpu.legalize_passes(tv_target)
    if target.tile is not None:
        passes.append(schedule_pass(target.tile))
    passes += cpu.dataflow_lower_passes(tv_target) + cpu.finalize_passes(tv_target)

    @tvm.transform.module_pass(opt_level=0, name="mscnn_cpu_pipeline")
    def run(mod, _ctx):
        with tv_target:
            return tvm.transform.Sequential(passes)(mod)

    return run


def compile_executable(onnx_path: Path, target: Target, shape):
    """The compiled (not yet exported) Relax executable for `target`."""
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(
        onnx.load(str(onnx_path)),
        shape_dict={INPUT_NAME: list(shape)},
        dtype_dict={INPUT_NAME: "float32"},
    )
    mod = relax.transform.DecomposeOpsForInference()(mod)  # batch_norm -> scale and shift
    tv_target = tvm_target(target)
    # The CUDA compile callback reads the arch from the current target: keep it in scope.
    with tv_target:
        return tvm.compile(mod, target=tv_target,
                           relax_pipeline=pipeline_for(target, tv_target))  # fmt: skip
