"""Tiny Relax VM libraries for the native runner's tests: a bundle's signature, but every
output is NaN (or Inf). Put in place of model.so with a rehashed manifest, they make a
consistent bundle whose check must FAIL (exit 1), on both runners; without them nothing
would notice a runner that stopped checking its outputs for NaN."""

from __future__ import annotations

from pathlib import Path


def nonfinite_library(
    arch: str, in_shape: list[int], out_shape: list[int], value: float, path: Path
) -> Path:
    """main(x) = (|sum(x)| + 1) * value broadcast to `out_shape`, built with TVM for `arch`
    (cross-linked like a bundle's library). The sum keeps the kernel from being folded to
    a constant; fast-math is dropped from the target, since under it LLVM may assume the
    NaN away."""
    import tvm
    from tvm import relax
    from tvm.support import cc

    from compile import TARGETS

    target = TARGETS[arch]
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(in_shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            total = bb.emit(relax.op.sum(x))
            scale = bb.emit(relax.op.add(relax.op.abs(total), relax.const(1.0, "float32")))
            bad = bb.emit(relax.op.multiply(scale, relax.const(value, "float32")))
            y = bb.emit_output(relax.op.broadcast_to(bad, relax.ShapeExpr(out_shape)))
        bb.emit_func_output(y)
    tvm_target = {k: v for k, v in target.tvm.items() if k != "fast-math"}
    executable = tvm.compile(bb.get(), target=tvm.target.Target(tvm_target))
    executable.export_library(str(path), fcompile=cc.cross_compiler(target.compiler))
    return path
