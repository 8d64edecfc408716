"""ExecuTorch (XNNPACK backend, its Python runtime) as a benchmark peer.

Run by compile/bench/peers.py under `.venv-executorch`'s interpreter (executorch and the
torch our venv pins, pinned in the Makefile); imports numpy, torch, executorch, torchao
and its sibling script only:

    python compile/bench/peer_executorch.py SPEC.npz WORKDIR THREADS

SPEC.npz: `program`, the path of the model exported by our side with torch.export (a .pt2,
batch 1), `x`, `calibration` (the records our int8 is calibrated on) and `held_out`.

- `executorch-fp32`: the exported program lowered to XNNPACK
  (`to_edge_transform_and_lower` with the XnnpackPartitioner), `to_executorch`;
- `executorch-int8`: PT2E post-training quantization with the XNNPACK quantizer
  (symmetric, per-channel int8 weights, static int8 activations, the quantizer's default
  min/max observers), calibrated on `calibration` clipped at its 99.9th percentile
  (`peer_serve.clipped`, as LiteRT's), exported again and lowered the same way.
  Before quantization each batch norm becomes the same affine as a depthwise 1x1 conv
  (`batch_norms_as_convs`: the model's follow its ReLU, where no conv absorbs them);
  Mish, which the quantizer does not annotate, stays in float outside the delegate.

Both run through `executorch.extension.pybindings.portable_lib`, its threadpool set to
THREADS. A model's size is its .pte's bytes; ops XNNPACK did not take stay in ExecuTorch's
portable kernels and are counted in the status line.
"""

from __future__ import annotations

import operator
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_serve  # a sibling script, importable once its folder is on the path

MODELS = ("executorch-fp32", "executorch-int8")


def lower(exported) -> tuple[bytes, int]:
    """The program for the XNNPACK backend: (.pte bytes, ops left outside the delegate)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    graph = edge.exported_program().graph_module.graph
    targets = [str(n.target) for n in graph.nodes if n.op == "call_function"]
    outside = sum(1 for t in targets if "delegate" not in t and "getitem" not in t)
    return bytes(edge.to_executorch().buffer), outside


def quantized(exported, calibration: np.ndarray):
    """The exported program PT2E-quantized with the XNNPACK quantizer, exported again."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=True)
    quantizer = XNNPACKQuantizer().set_global(config)
    prepared = prepare_pt2e(batch_norms_as_convs(exported.module()), quantizer)
    with torch.no_grad():
        for record in calibration:
            prepared(torch.from_numpy(record[None].copy()))  # canonical strides
    converted = convert_pt2e(prepared)
    example = torch.from_numpy(calibration[:1].copy())
    return torch.export.export(converted, (example,))


def batch_norms_as_convs(module):
    """`module` (a GraphModule) with each eval-mode batch_norm replaced by the same affine
    as a depthwise 1x1 conv1d, equal in fp32. XNNPACK lowers a batch norm that no conv
    before it absorbs (ours follow the ReLU) as a depthwise conv with float weights; the
    XNNPACK quantizer does not annotate batch_norm, so after PT2E that conv has a quantized
    input and a float weight, and its conv lowering stops ("Weight and Input should both
    be quantized"). As a conv, the quantizer gives it int8 weights like any other."""
    import torch

    graph = module.graph
    for node in [n for n in graph.nodes if n.target is torch.ops.aten.batch_norm.default]:
        x, weight, bias, mean, var = node.args[:5]
        w, b, m, v = (operator.attrgetter(a.target)(module) for a in (weight, bias, mean, var))
        scale = w / torch.sqrt(v + node.args[7])
        shift = b - m * scale
        names = (f"{node.name}_as_conv_weight", f"{node.name}_as_conv_bias")
        module.register_parameter(names[0], torch.nn.Parameter(scale[:, None, None].detach()))
        module.register_parameter(names[1], torch.nn.Parameter(shift.detach()))
        with graph.inserting_before(node):
            kernel, offset = (graph.get_attr(name) for name in names)
            conv = graph.call_function(
                torch.ops.aten.conv1d.default, (x, kernel, offset, [1], [0], [1], scale.numel())
            )
        for name, attr in zip(names, (kernel, offset), strict=True):
            attr.meta["val"] = getattr(module, name)  # the annotators read shapes here
        conv.meta = dict(node.meta)  # the same output
        node.replace_all_uses_with(conv)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    module.recompile()
    return module


def runtime_call(pte: bytes):
    """x (1, leads, samples) -> outputs, numpy in and out, through ExecuTorch's runtime."""
    import torch
    from executorch.extension.pybindings import portable_lib

    module = portable_lib._load_for_executorch_from_buffer(pte)

    def call(x: np.ndarray) -> np.ndarray:
        return np.array(module.forward([torch.from_numpy(x.copy())])[0])  # canonical strides

    call.program = pte  # the module reads the buffer it was loaded from and does not own it
    return call


def main(argv: list[str]) -> int:
    import torch
    from executorch.extension.pybindings import portable_lib

    spec_path, workdir, threads = argv[0], Path(argv[1]), int(argv[2])
    data = np.load(spec_path)
    torch.set_num_threads(threads)
    portable_lib._unsafe_reset_threadpool(threads)
    exported = torch.export.load(str(data["program"]))
    sources = {
        "executorch-fp32": lambda: exported,
        "executorch-int8": lambda: quantized(exported, peer_serve.clipped(data["calibration"])),
    }
    outside_counts = {}

    def builder(name):
        def build():
            pte, outside_counts[name] = lower(sources[name]())
            (workdir / f"{name}.pte").write_bytes(pte)
            return runtime_call(pte), len(pte)

        return build

    asked = peer_serve.wanted(data, MODELS)
    calls, status = peer_serve.build_all({name: builder(name) for name in asked})
    for name, count in outside_counts.items():
        status[name]["outside_delegate"] = count
    return peer_serve.serve(calls, status, data["x"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
