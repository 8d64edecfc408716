"""Tuning: MetaSchedule searches our conv schedule's register tiles, kernel by kernel.

The search space is our own schedule (compile/lowering/schedule.py) with its two free choices
sampled: time steps per tile and channel vectors per tile, among those that leave no
tails and fit the ISA's registers. That space holds a few to ~20 points per kernel, so
the evolutionary search (random cost model; MetaSchedule never measures a candidate
twice) measures every point: the result is the best tile per kernel as measured, never
worse than the default tile, which is always one of the points. TVM's generic search
space was tried first and stays far behind our schedule (see README, Performance).

Kernels are measured on this machine (LocalRunner) or on a device through TVM's RPC
tracker (RPCRunner), after being built and linked here with the target's compiler.

The records it writes are read and written by compile/lowering/records.py (a build imports only
that module, never the search).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import sys
import tempfile
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.bundle import cpu_model
from deploy.remote import Device, Rpc, median_us

from ..errors import CompileError
from ..targets import Target, check_compiler, runnable_here
from .pipeline import front_passes, import_onnx
from .records import RECORDS_DIR, write_records
from .schedule import (
    CONV_BLOCKS,
    apply_conv,
    conv_shape,
    default_tile,
    kernel_kind,
    tile_choices,
    weight_read,
    workload_key,
)

log = logging.getLogger(__name__)

CONFIRM = 3  # candidates per kernel re-timed after the search


@dataclass
class Kernel:
    key: str
    name: str
    func: Any
    description: str
    models: list[str]


def conv_kernels(models: Mapping[str, tuple[Path, tuple[int, ...]]], target: Target):
    """The distinct conv kernels of the given models ({label: (onnx file, input shape)}),
    as the build sees them: a kernel that occurs in several models is tuned once."""
    import tvm

    from ..targets import tvm_target

    tv = tvm_target(target)
    kernels: dict[str, Kernel] = {}
    for label, (onnx_path, shape) in models.items():
        mod = import_onnx(onnx_path, shape, tile=target.tile)
        with tv:
            mod = tvm.transform.Sequential(front_passes(tv))(mod)
        for gv, func in mod.functions.items():
            if not isinstance(func, tvm.tirx.PrimFunc) or kernel_kind(func) != "conv":
                continue
            key = workload_key(func)
            if key in kernels:
                kernels[key].models.append(label)
                continue
            try:
                default_tile(func, target.tile)
            except ValueError as exc:  # our schedule does not take it: nothing to tune
                log.info("not tuned: %s (%s)", gv.name_hint, exc)
                continue
            kernels[key] = Kernel(key, gv.name_hint, func, describe(func), [label])
    return list(kernels.values())


def describe(func) -> str:
    """A kernel in words, for readers of the records: shapes and dilated span."""
    import tvm

    sch = tvm.s_tir.Schedule(func)
    blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    names = [sch.get(b).name_hint for b in blocks]
    conv = next(b for b in blocks if sch.get(b).name_hint in CONV_BLOCKS)
    reads = sch.get(conv).reads
    weight_at = weight_read(sch, conv)
    weight = [int(v) for v in reads[weight_at].source.shape]
    data = next([int(v) for v in r.source.shape] for i, r in enumerate(reads) if i != weight_at)
    channels, length = conv_shape(func)
    c_in, k = data[1], weight[2]
    span = data[2] - length + 1  # dilation * (kernel - 1) + 1 for "same" padding
    bn = "+bn" if any(n.startswith(("T_subtract", "T_divide")) for n in names) else ""
    return (
        f"conv1d {c_in}->{channels} ch, groups {c_in // weight[1]}, kernel {k}, span {span}, "
        f"length {length}, bias+relu{bn}"
    )


def _build_kernel(mod, target, _params):
    # MetaSchedule's default builder first imports tvm.s_tir.tensor_intrin (~20-55 s per
    # worker, for tensor intrinsics our schedule never uses): build directly instead.
    import tvm

    return tvm.driver.build(mod, target=target)


def _export_kernel(compiler: str, mod, folder: str | None = None) -> str:
    # Linked here with the target's (cross) compiler, so a device needs no toolchain;
    # under the work folder, which goes when tuning ends.
    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="kernel-", dir=folder), "kernel.so")
    mod.export_library(path, fcompile=cc.cross_compiler(compiler))
    return path


def check_tunable(target: Target, rpc: Rpc | None) -> str:
    """The target's compiler, or a CompileError saying why it cannot be tuned here."""
    if target.tile is None:
        raise CompileError(
            f"target {target.name!r} uses TVM's GPU schedules (dlight); tuning covers our CPU "
            "conv schedule only"
        )
    compiler = check_compiler(target)
    if rpc is None:
        ok, why = runnable_here(target)
        if not ok:
            raise CompileError(
                f"{target.name} kernels cannot be measured here ({why}); tune on a device "
                "with --rpc-tracker HOST:PORT --rpc-key KEY"
            )
    return compiler


def tune(
    target: Target,
    models: Mapping[str, tuple[Path, tuple[int, ...]]],
    work_dir: Path,
    *,
    threads: int,
    rpc: Rpc | None = None,
    max_trials: int | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[list[dict], dict]:
    """Tune every conv kernel of `models` for `target`: (records, summary)."""
    compiler = check_tunable(target, rpc)
    # The measuring workers are processes of their own: they read their thread count
    # from the environment when their pool starts.
    os.environ["TVM_NUM_THREADS"] = str(threads)
    import tvm

    # MetaSchedule logs every task's table at INFO: keep its files, not the console.
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    progress("extracting kernels")
    kernels = conv_kernels(models, target)
    if not kernels:
        raise CompileError("no conv kernel of these models takes our schedule: nothing to tune")
    tv = tvm.target.Target({**dict(target.tvm), "num-cores": threads})
    start = time.monotonic()
    database, contexts = _search(
        kernels, target, tv, compiler, work_dir, threads, rpc, max_trials, progress
    )
    search_seconds = time.monotonic() - start
    progress(f"confirming the best {CONFIRM} tiles of each of {len(kernels)} kernels")
    records = _confirm_all(kernels, contexts, database, target, tv, compiler, rpc, work_dir)
    summary = {
        "target": target.name,
        "kernels": len(kernels),
        "tuned": len(records),
        "candidates": sum(r["candidates"] for r in records),
        "seconds": round(time.monotonic() - start, 1),
        "search_seconds": round(search_seconds, 1),
        "threads": threads,
        "measured_on": str(rpc) if rpc else _machine(),
    }
    return records, summary


def _search(
    kernels: list[Kernel],
    target: Target,
    tv,
    compiler: str,
    work_dir: Path,
    threads: int,
    rpc: Rpc | None,
    max_trials: int | None,
    progress,
):
    """MetaSchedule's evolutionary search over each kernel's tile space: the database of
    measurements and the tuning contexts (one per kernel)."""
    from tvm.s_tir import meta_schedule as ms

    tile = target.tile
    space = functools.partial(_sample_tile, tile=tile)
    sizes = [_space_size(k.func, tile) for k in kernels]
    per_task = max(sizes) if max_trials is None else max_trials
    with _no_tensor_intrinsics():
        contexts = _contexts(ms, kernels, tv, space, threads)
    artifacts = work_dir / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    builder = ms.builder.LocalBuilder(
        max_workers=max(1, min(threads, os.cpu_count() or 1)),
        f_build=_build_kernel,
        f_export=functools.partial(_export_kernel, compiler, folder=str(artifacts)),
        timeout_sec=120,
    )
    total = sum(min(s, per_task) for s in sizes)
    progress(f"tuning {len(kernels)} kernels, {total} candidates")
    database = ms.tune.tune_tasks(
        tasks=contexts,
        task_weights=[1.0] * len(contexts),
        work_dir=str(work_dir),
        max_trials_global=total,
        max_trials_per_task=per_task,
        num_trials_per_iter=min(16, per_task),
        builder=builder,
        runner=_runner(ms, rpc),
        database=ms.database.MemoryDatabase(),
        cost_model="random",
    )
    return database, contexts


def _contexts(ms, kernels: list[Kernel], tv, space, threads: int) -> list:
    """One MetaSchedule tuning context per kernel, each sampling our tile space."""
    import tvm

    return [
        ms.TuneContext(
            mod=tvm.IRModule({"main": k.func.with_attr("global_symbol", "main")}),
            target=tv,
            space_generator=ms.space_generator.ScheduleFn(
                space, sch_rules=[], postprocs=[], mutator_probs={}
            ),
            search_strategy=ms.search_strategy.EvolutionarySearch(
                population_size=64, init_measured_ratio=0.0
            ),
            task_name=k.name,
            num_threads=threads,
            rand_state=0,
        )
        for k in kernels
    ]


@contextlib.contextmanager
def _no_tensor_intrinsics():
    """TuneContext imports tvm.s_tir.tensor_intrin to register tensor-core and dot-product
    intrinsics for tensorizing rules; our space has none. That import parses ~250
    TVMScript functions, each walking the Python stack through inspect, and takes 28 s in
    a process that has torch loaded (more under pytest's deeper stack). An empty module
    stands in while the contexts are made, and leaves, so a later real import (dlight's
    GPU matmul) still gets the real one."""
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        yield
        return
    sys.modules[name] = types.ModuleType(name, "stand-in: our tile space tensorizes nothing")
    try:
        yield
    finally:
        del sys.modules[name]


def _sample_tile(sch, tile):
    """The search space of one conv kernel: a (t_tile, f_vecs) pair from its choices."""
    t_tiles, f_vecs = tile_choices(sch.mod["main"], tile)
    t = sch.sample_categorical(t_tiles, [1 / len(t_tiles)] * len(t_tiles))
    f = sch.sample_categorical(f_vecs, [1 / len(f_vecs)] * len(f_vecs))
    apply_conv(sch, tile, t, f)
    return sch


def _runner(ms, rpc: Rpc | None):
    """Where candidates are timed: this machine, or the device behind the RPC tracker."""
    evaluator = ms.runner.EvaluatorConfig(
        number=3, repeat=5, min_repeat_ms=10, enable_cpu_cache_flush=False
    )
    if rpc is None:
        return ms.runner.LocalRunner(evaluator_config=evaluator, timeout_sec=60)
    config = ms.runner.RPCConfig(
        tracker_host=rpc.host,
        tracker_port=rpc.port,
        tracker_key=rpc.key,
        session_priority=1,
        session_timeout_sec=rpc.timeout,
    )
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1)


def _confirm_all(
    kernels, contexts, database, target: Target, tv, compiler: str, rpc: Rpc | None, work_dir: Path
) -> list[dict]:
    """One record per kernel: the fastest of the search's best few and the default tile.

    On a small machine single measurements inside the search are noisy (a kernel's first
    run in the measuring worker pays for page faults and the thread pool's start; another
    process takes a core for a moment). So the shortlist is rebuilt and timed again in
    interleaved rounds; the fastest round counts, since interference only ever adds time."""
    device = Device(rpc)
    records = []
    with tempfile.TemporaryDirectory(prefix="confirm-", dir=work_dir) as tmp:
        for kernel, context in zip(kernels, contexts, strict=True):
            measured = _measured(database, context.mod)
            default = default_tile(kernel.func, target.tile)
            shortlist = list(dict.fromkeys([t for _, t in measured[:CONFIRM]] + [default]))
            timed = _confirm(kernel, shortlist, target, tv, compiler, device, Path(tmp))
            best = min(timed, key=timed.get)
            records.append(
                {
                    "key": kernel.key,
                    "kernel": kernel.description,
                    "t_tile": best[0],
                    "f_vecs": best[1],
                    "us": round(timed[best], 2),
                    "default_us": round(timed[default], 2),
                    "candidates": len(measured),
                    "models": kernel.models,
                }
            )
    return records


def _confirm(
    kernel: Kernel,
    tiles: list,
    target: Target,
    tv,
    compiler: str,
    device: Device,
    tmp: Path,
    rounds: int = 3,
) -> dict[tuple[int, int], float]:
    """Microseconds per call of one kernel with each tile: the fastest of `rounds`
    interleaved rounds of timing (each the median of 5 repeats)."""
    import numpy as np
    import tvm
    from tvm.support import cc

    from .schedule import schedule_conv

    calls = {}
    rng = np.random.default_rng(0)
    for tile_choice in tiles:
        func, _ = schedule_conv(kernel.func, target.tile, *tile_choice)
        module = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
        path = tmp / f"{kernel.key}-{tile_choice[0]}x{tile_choice[1]}.so"
        library = tvm.tirx.build(module, target=tv)
        library.export_library(str(path), fcompile=cc.cross_compiler(compiler))
        args = [
            device.tensor(rng.standard_normal([int(d) for d in p.shape]).astype(p.dtype))
            for p in func.params
        ]
        calls[tile_choice] = (device.load(path), args)
    best = dict.fromkeys(tiles, float("inf"))
    for _ in range(rounds):
        for tile_choice, (module, args) in calls.items():
            us = median_us(device.time(module, "main", args, repeat=5, min_repeat_ms=10))
            best[tile_choice] = min(best[tile_choice], us)
    return best


def _space_size(func, tile) -> int:
    t_tiles, f_vecs = tile_choices(func, tile)
    return len(t_tiles) * len(f_vecs)


def _measured(database, mod) -> list[tuple[float, tuple[int, int]]]:
    """(fastest repeat in microseconds, (t_tile, f_vecs)) of every valid candidate,
    fastest first."""
    workload = database.commit_workload(mod)
    out = []
    for rec in database.get_top_k(workload, 1000):
        if not rec.run_secs:
            continue
        decisions = [
            int(inst.attrs[0][int(rec.trace.decisions[inst])])
            for inst in rec.trace.insts
            if inst.kind.name == "SampleCategorical"
        ]
        out.append((min(float(s) for s in rec.run_secs) * 1e6, (decisions[0], decisions[1])))
    return sorted(out)


def _machine() -> str:
    model = cpu_model()
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


@dataclass(frozen=True)
class PresetTuning:
    """The outcome of tuning one preset's kernels: the records written and a summary."""

    preset: str
    path: Path
    records: list[dict]
    summary: dict


def tune_preset(
    target: Target,
    preset: str,
    variants: list[str] | None,
    *,
    samples: int,
    batch: int,
    threads: int,
    rpc: Rpc | None = None,
    max_trials: int | None = None,
    out: Path | None = None,
    progress: Callable[[str], None] = lambda s: None,
) -> PresetTuning:
    """Tune the conv kernels of every lead variant of `preset` and write the records
    (`out`: another records folder than the one builds read)."""
    import mscnn

    from ..export import export_onnx
    from ..variants import resolve_variants, variant_model
    from .records import records_file

    loaded = mscnn.load_model(preset)
    with tempfile.TemporaryDirectory(prefix="mscnn-tune-") as tmp:
        models = {}
        for variant in resolve_variants(loaded, variants):
            model = variant_model(loaded, variant)
            path = Path(tmp) / f"{variant.name}.onnx"
            export_onnx(model, path, batch=batch, samples=samples)
            models[variant.name] = (path, (batch, model.in_channels, samples))
        progress(f"{target.name} {preset}: {', '.join(models)}")
        records, summary = tune(
            target,
            models,
            Path(tmp) / "work",
            threads=threads,
            rpc=rpc,
            max_trials=max_trials,
            progress=progress,
        )
    path = records_file(target, preset, batch, samples)
    if out is not None:
        path = out / path.relative_to(RECORDS_DIR)
    covers = {"preset": preset, "variants": list(models), "batch": batch, "samples": samples}
    write_records(path, target, covers, [dict(r) for r in records], summary)
    return PresetTuning(preset, path, records, summary)


def tuning_table(target: Target, result: PresetTuning):
    """A rich table of the tuned tile per kernel, slowest kernel first."""
    from rich.table import Table

    s = result.summary
    table = Table(
        title=f"{target.name} {result.preset}: tuned tile per conv kernel "
        f"({s['threads']} threads, {s['measured_on']})"
    )
    for column in ("kernel", "tile (t x f)", "tried", "default us", "tuned us", "gain"):
        table.add_column(column, no_wrap=column == "kernel")
    for r in sorted(result.records, key=lambda r: -(r["default_us"] or r["us"])):
        gain = f"{r['default_us'] / r['us']:.2f}x" if r["default_us"] else "-"
        table.add_row(
            r["kernel"],
            f"{r['t_tile']} x {r['f_vecs']}",
            str(r["candidates"]),
            f"{r['default_us'] or float('nan'):.1f}",
            f"{r['us']:.1f}",
            gain,
        )
    return table
