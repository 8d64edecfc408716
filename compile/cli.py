"""`python -m compile`: a thin CLI over compile.build. User errors print `error: ...` and
exit 2; a build whose parity fails exits 1."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

import mscnn
from deploy.bundle import Bundle
from deploy.errors import DeployError

from .build import BuildOptions, build, default_variants, resolve_variant
from .errors import CompileError, ParityError
from .targets import TARGETS, get_target, runnable_here

log = logging.getLogger("compile")


def _csv(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m compile",
        description="Compile MultiScopicCNN to TVM bundles for x86-64, ARM and CUDA.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("targets", help="list the target presets")
    t.add_argument("--json", action="store_true", help="print the table as JSON")

    b = sub.add_parser("build", help="build bundles", formatter_class=p.formatter_class)
    b.add_argument("--preset", default=mscnn.DEFAULT_PRESET, choices=list(mscnn.PRESETS),
                   help="model preset (config, leads, sampling rate)")  # fmt: skip
    b.add_argument("--checkpoint", type=Path, help="trained weights (default: seeded init)")
    b.add_argument("--targets", type=_csv, default=list(TARGETS),
                   help=f"comma-separated, from: {', '.join(TARGETS)}")  # fmt: skip
    b.add_argument("--variants", type=_csv, default=None,
                   help="lead counts of CinC lead sets (12,6,4,3,2), or lead names joined "
                        "by '+' (I+II+V5); default: every lead set of the preset")  # fmt: skip
    b.add_argument("--samples", type=_positive, default=5000, help="input length (500 Hz: 10 s)")
    b.add_argument("--batch", type=_positive, default=1, help="input batch size")
    b.add_argument("--seed", type=int, default=0, help="seed of the default weights and inputs")
    b.add_argument("--out", type=Path, default=Path("build"), help="output folder")
    b.add_argument("--quiet", action="store_true", help="one line per bundle, no table")

    m = sub.add_parser("bench", help="PyTorch vs ONNX Runtime vs TVM latency, side by side",
                       formatter_class=p.formatter_class)  # fmt: skip
    m.add_argument("folders", type=Path, nargs="+", help="build folders holding the bundles")
    m.add_argument("--targets", type=_csv, default=["x86_64", "x86_64-avx512"],
                   help="bundles of these targets are timed (those that run here)")  # fmt: skip
    m.add_argument("--threads", type=_positive, default=os.cpu_count() or 1,
                   help="threads for every runtime")  # fmt: skip
    m.add_argument("--rounds", type=_positive, default=5, help="alternating rounds")
    m.add_argument("--runs", type=_positive, default=10, help="timed calls per round")
    m.add_argument("--checkpoint", type=Path, help="the weights the bundles were built from")
    m.add_argument("--no-untuned", action="store_true",
                   help="skip TVM without schedules (seconds per call on big models)")  # fmt: skip
    m.add_argument("--out", type=Path, default=Path("build/bench"), help="JSON and PNG go here")

    u = sub.add_parser(
        "tune",
        help="tune the conv kernels' register tiles (MetaSchedule) and "
        "write the records builds apply",
        formatter_class=p.formatter_class,
    )
    u.add_argument("--target", required=True, help=f"one of: {', '.join(TARGETS)}")
    u.add_argument(
        "--presets",
        type=_csv,
        default=["multi_scopic_leadwise", "cpsc2019"],
        help="presets whose kernels are tuned (weights do not matter, shapes do)",
    )
    u.add_argument(
        "--variants",
        type=_csv,
        default=None,
        help="lead variants (default: every lead set of each preset)",
    )
    u.add_argument("--samples", type=_positive, default=5000, help="input length")
    u.add_argument("--batch", type=_positive, default=1, help="input batch size")
    u.add_argument(
        "--threads",
        type=_positive,
        default=os.cpu_count() or 1,
        help="threads each kernel runs with while measured",
    )
    u.add_argument(
        "--max-trials",
        type=_positive,
        default=None,
        help="candidates per kernel (default: every point of its space)",
    )
    u.add_argument(
        "--rpc-tracker",
        metavar="HOST:PORT",
        help="measure on a device through this TVM RPC tracker",
    )
    u.add_argument("--rpc-key", metavar="KEY", help="the device's key at the tracker")
    u.add_argument(
        "--out",
        type=Path,
        default=None,
        help="records folder (default: compile/tuning, which builds read)",
    )

    s = sub.add_parser("summary", help="print the table of built bundles")
    s.add_argument("folder", type=Path, nargs="?", default=Path("build"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "targets":
            return _targets(args.json)
        if args.command == "summary":
            return _summary(args.folder)
        if args.command == "bench":
            return _bench(args)
        if args.command == "tune":
            return _tune(args)
        return _build(args)
    except (CompileError, mscnn.MscnnError, DeployError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, ParityError) else 2
    except OSError as exc:  # disk full, read-only or missing folders outside a build
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no half-written bundle was published", file=sys.stderr)
        return 130


def _targets(as_json: bool) -> int:
    if as_json:
        rows = {name: {**asdict(t), "runnable_here": runnable_here(t)[1]}
                for name, t in TARGETS.items()}  # fmt: skip
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("target", "for", "links with", "run by", "here", title="TVM targets "
                  "(--json for their TVM target dicts)")  # fmt: skip
    for t in TARGETS.values():
        run = {"native": "native", "qemu": t.qemu[0] if t.qemu else "", "gpu": "GPU"}[t.run]
        table.add_row(t.name, t.description, t.compiler, run, runnable_here(t)[1])
    Console().print(table)
    return 0


def _build(args) -> int:
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    targets = [get_target(t) for t in args.targets]
    loaded = mscnn.load_model(args.preset, args.checkpoint, seed=args.seed)
    specs = args.variants or default_variants(loaded)
    variants = [resolve_variant(loaded, v.replace("+", ",")) for v in specs]
    console.print(
        f"[bold]preset[/] {args.preset} ({loaded.source}); [bold]targets[/] "
        f"{', '.join(t.name for t in targets)}; [bold]variants[/] "
        f"{', '.join(v.name for v in variants)}; input (batch {args.batch}, leads, "
        f"{args.samples} samples); out {args.out}/"
    )
    bundles: list[Bundle] = []
    failures: list[CompileError] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("building", total=len(targets) * len(variants))
        for target in targets:
            for variant in variants:
                label = f"{target.name}/{args.preset}-{variant.name}"

                def step(stage: str, label: str = label) -> None:
                    progress.update(task, description=f"{label}: {stage}")

                options = BuildOptions(samples=args.samples, batch=args.batch, seed=args.seed,
                                       progress=step)  # fmt: skip
                try:
                    bundles.append(build(loaded, target, variant, args.out, options))
                except CompileError as exc:
                    failures.append(exc)
                    console.print(f"[red]failed[/] {exc}", soft_wrap=True)
                progress.advance(task)
    if args.quiet:
        for b in bundles:
            console.print(f"{b.target['name']}/{b.name}: {' / '.join(parity_cells(b))}")
    else:
        _print_table(bundles, [str(f) for f in failures])
    if failures:
        kind = ParityError if all(isinstance(f, ParityError) for f in failures) else CompileError
        raise kind(f"{len(failures)} of {len(targets) * len(variants)} bundles failed")
    return 0


def _summary(folder: Path) -> int:
    from deploy.bundle import MANIFEST

    bundles = []
    found = folder.glob(f"*/*/{MANIFEST}")
    for manifest in sorted(
        found,
        key=lambda p: (
            p.parent.parent.name,
            p.parent.name[:4],
            -len(json.loads(p.read_text())["leads"]),
        ),
    ):
        bundles.append(Bundle(manifest.parent, json.loads(manifest.read_text())))
    if not bundles:
        raise CompileError(f"no bundles under {folder}/; run `make build` first")
    failed = sorted(str(p.relative_to(folder)) for p in folder.glob("*/*.failed"))
    _print_table(bundles, [f"{f}: parity or build failed (see its build.log)" for f in failed])
    return 1 if failed else 0


def _print_table(bundles: list[Bundle], failures: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="normalised error vs PyTorch on the golden inputs")
    table.add_column("target", no_wrap=True)
    table.add_column("variant", no_wrap=True)
    for column in ("library", "ONNX err", "TVM err", "status"):
        table.add_column(column)
    for b in bundles:
        size = (b.path / "model.so").stat().st_size
        table.add_row(b.target["name"], b.name, f"{size / 1024:.0f} KiB", *parity_cells(b))
    console = Console()
    console.width = max(console.width, 110)  # a summary table, also in logs and pipes
    if bundles:
        console.print(table)
    for failure in failures:
        console.print(f"[red]FAILED[/] {failure}", soft_wrap=True)


def parity_cells(bundle: Bundle) -> tuple[str, str, str]:
    """(ONNX Runtime error, TVM error, status) for summaries; errors normalised."""
    parity = bundle.manifest["parity"]
    ort, tvm = parity["onnxruntime"], parity["tvm"]
    if tvm["passed"] is None:
        return f"{ort['normalised']:.1e}", tvm["how"], "built"
    status = "ok" if tvm["passed"] else "FAILED"
    return f"{ort['normalised']:.1e}", f"{tvm['normalised']:.1e} ({tvm['how']})", status


def _bench(args) -> int:
    # TVM reads its thread count when its pool starts: set it before TVM is imported.
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    from rich.console import Console
    from rich.table import Table

    from deploy.bundle import MANIFEST, load_bundle

    from .bench import RUNTIMES, bench_bundle, peak_gflops, save

    paths = sorted(
        p.parent for folder in args.folders for t in args.targets
        for p in (folder / t).glob(f"*/{MANIFEST}")
    )  # fmt: skip
    if not paths:
        raise CompileError(f"no bundles of {', '.join(args.targets)} under "
                           f"{', '.join(map(str, args.folders))}; run `make bench`")  # fmt: skip
    console = Console(stderr=True)
    rows, models = [], {}
    for path in paths:
        bundle = load_bundle(path)
        if not bundle.runnable_here()[0]:
            console.print(f"skipped {path}: {bundle.runnable_here()[1]}")
            continue
        preset = bundle.manifest["model"]["preset"]
        if preset not in models:
            models[preset] = mscnn.load_model(preset, args.checkpoint).model
        model = models[preset]
        indices = bundle.manifest["lead_indices"]
        if indices != list(range(model.in_channels)):
            model = mscnn.derive_variant(model, indices).eval()
        console.print(f"timing {path} ...")
        # Untuned TVM takes seconds per call on the big models: batch 1 only.
        skip_untuned = args.no_untuned or bundle.input_shape[0] > 1
        runtimes = [r for r in RUNTIMES if not (skip_untuned and r == "tvm-untuned")]
        rows.append(bench_bundle(path, model, args.threads, args.rounds, args.runs,
                                 runtimes=runtimes))  # fmt: skip
    peak, how = peak_gflops(args.threads)
    table = Table(title=f"median ms ({args.threads} threads); TVM as built (tuned) / ONNX "
                  f"Runtime; GFLOP/s of a {peak:.0f} GFLOP/s nominal peak")  # fmt: skip
    columns = ("variant", "target", "batch", "PyTorch", "ONNX Runtime", "TVM tuned",
               "TVM default tile", "ARM rule", "TVM untuned", "tuned kernels", "TVM/ORT",
               "TVM GFLOP/s", "library", "weights", "activations")  # fmt: skip
    for column in columns:
        table.add_column(column, no_wrap=column == "variant")

    def cell(row, name):
        return f"{row.timings[name].median_ms:.2f}" if name in row.timings else "-"

    for r in rows:
        t = r.timings
        table.add_row(
            r.variant.replace("multi_scopic_leadwise", "leadwise"),
            r.target,
            str(r.batch),
            *(cell(r, n) for n in RUNTIMES),
            r.tuned_kernels,
            f"{t['tvm'].ratio_to_ort:.2f}",
            f"{t['tvm'].gflops:.0f}",
            f"{r.library_bytes / 2**20:.1f} MiB",
            f"{r.weights_bytes / 2**20:.1f} MiB",
            f"{r.activation_bytes / 2**20:.1f} MiB" if r.activation_bytes else "-",
        )
    out = Console()
    out.width = max(out.width, 170)
    out.print(table)
    json_path, png_path = save(rows, args.threads, args.out)
    best = max(t.gflops for r in rows for t in r.timings.values())
    out.print(f"peak: {how}")
    if best > peak:
        out.print(f"note: {best:.0f} GFLOP/s was achieved, above that nominal peak: the cores "
                  "run faster than the clock /proc/cpuinfo reports (boost), so read the peak "
                  "as a lower bound")  # fmt: skip
    out.print(f"saved {json_path} and {png_path}")
    return 0


def _tune(args) -> int:
    import tempfile

    from rich.console import Console
    from rich.table import Table

    from deploy.remote import Rpc

    from .export import export_onnx
    from .tune import RECORDS_DIR, check_tunable, records_file, tune, write_records

    target = get_target(args.target)
    try:
        rpc = Rpc.parse(args.rpc_tracker, args.rpc_key)
    except DeployError as exc:
        raise CompileError(str(exc)) from None
    check_tunable(target, rpc)
    for preset in args.presets:
        if preset not in mscnn.PRESETS:
            raise CompileError(
                f"unknown preset {preset!r}; choose from: {', '.join(mscnn.PRESETS)}"
            )
    console = Console(stderr=True)
    out = Console()
    out.width = max(out.width, 120)
    total = 0.0
    for preset in args.presets:
        loaded = mscnn.load_model(preset)
        variants = [
            resolve_variant(loaded, v.replace("+", ","))
            for v in args.variants or default_variants(loaded)
        ]
        with tempfile.TemporaryDirectory(prefix="mscnn-tune-") as tmp:
            models = {}
            for variant in variants:
                model = loaded.model.eval()
                if list(variant.indices) != list(range(model.in_channels)):
                    model = mscnn.derive_variant(model, variant.indices).eval()
                path = Path(tmp) / f"{variant.name}.onnx"
                export_onnx(model, path, batch=args.batch, samples=args.samples)
                models[variant.name] = (path, (args.batch, model.in_channels, args.samples))
            console.print(f"[bold]{target.name}[/] {preset}: {', '.join(models)}")
            # Plain lines, no live spinner: a refresh thread would steal a core from the
            # kernels being timed.
            records, summary = tune(
                target,
                models,
                Path(tmp) / "work",
                threads=args.threads,
                rpc=rpc,
                max_trials=args.max_trials,
                progress=lambda stage: console.print(f"  {stage}", highlight=False),
            )
        path = records_file(target, preset, args.batch, args.samples)
        if args.out is not None:
            path = args.out / path.relative_to(RECORDS_DIR)
        covers = {
            "preset": preset,
            "variants": list(models),
            "batch": args.batch,
            "samples": args.samples,
        }
        table = Table(
            title=f"{target.name} {preset}: tuned tile per conv kernel "
            f"({summary['threads']} threads, {summary['measured_on']})"
        )
        for column in ("kernel", "tile (t x f)", "tried", "default us", "tuned us", "gain"):
            table.add_column(column, no_wrap=column == "kernel")
        for r in sorted(records, key=lambda r: -(r["default_us"] or r["us"])):
            gain = f"{r['default_us'] / r['us']:.2f}x" if r["default_us"] else "-"
            table.add_row(
                r["kernel"],
                f"{r['t_tile']} x {r['f_vecs']}",
                str(r["candidates"]),
                f"{r['default_us'] or float('nan'):.1f}",
                f"{r['us']:.1f}",
                gain,
            )
        write_records(path, target, covers, records, summary)
        out.print(table)
        out.print(
            f"{summary['tuned']} of {summary['kernels']} kernels tuned, "
            f"{summary['candidates']} candidates measured in {summary['seconds']:.0f} s; "
            f"wrote {path}"
        )
        total += summary["seconds"]
    out.print(f"total tuning time: {total:.0f} s")
    return 0
