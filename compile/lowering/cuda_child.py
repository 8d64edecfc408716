"""The child process of a CUDA build (see compile.lowering.cuda): compile, verify, export."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tvm.support import cc

from compile.lowering.cuda import cubin_archs
from compile.lowering.pipeline import compile_executable
from compile.targets import check_compiler, get_target


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m compile.lowering.cuda_child")
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--shape", type=json.loads, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    target = get_target(args.target)
    executable = compile_executable(args.onnx, target, args.shape).executable
    kinds = _module_kinds(executable.mod)
    if not any(kind == "cuda" and runnable for kind, runnable in kinds):
        print(
            f"error: TVM kept CUDA kernels as source (modules: {kinds}); its CUDA runtime "
            "did not load in the build process",
            file=sys.stderr,
        )
        return 1
    executable.export_library(str(args.out), fcompile=cc.cross_compiler(check_compiler(target)))
    print(f"CUDA kernels compiled: {', '.join(cubin_archs(args.out)) or 'none found'}")
    return 0


def _module_kinds(module) -> list[tuple[str, bool]]:
    found = [(module.kind, module.is_runnable())]
    for sub in module.imports:
        found += _module_kinds(sub)
    return found


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
