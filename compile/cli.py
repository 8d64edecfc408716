"""`python -m compile`: a thin CLI over the compile package. Each subcommand registers
its parser and calls one library function. User errors print `error: ...` and exit 2; a
build whose parity fails exits 1."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import mscnn
from deploy.errors import DeployError
from deploy.manifest import MCU_PRECISIONS
from deploy.signing import read_signing_key

from .bundles import PRECISIONS
from .errors import CompileError, ParityError
from .targets import TARGETS, default_targets, get_target, runnable_here


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


def _add_sign(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--sign",
        type=Path,
        default=None,
        metavar="KEY",
        help=f"{what} (KEY: an Ed25519 private key, from python -m deploy keygen KEY)",
    )


# --------------------------------------------------------------------------------------
# targets


def _add_targets(sub) -> None:
    t = sub.add_parser("targets", help="list the target presets")
    t.add_argument("--json", action="store_true", help="print the table as JSON")
    t.set_defaults(func=_targets)


def _targets(args) -> int:
    if args.json:
        rows = {n: {**asdict(t), "runnable_here": runnable_here(t)[1]} for n, t in TARGETS.items()}
        print(json.dumps(rows, indent=2))
        return 0
    from .mcu.boards import BOARDS, CORES
    from .mcu.package import PACKAGES

    rows = []  # (name, what it is for, links with, run by, here)
    for t in TARGETS.values():
        qemu = f"under {t.qemu[0]}" if t.qemu else ""
        run = {"native": "natively", "qemu": qemu, "gpu": "on a GPU"}[t.run]
        rows.append((t.name, t.description, t.compiler, run, runnable_here(t)[1]))
    for name, (board, _) in PACKAGES.items():
        rows.append((
            name,
            f"{CORES[name].description}; no OS (make package TARGET={name})",
            "arm-none-eabi-gcc",
            f"under qemu-system-arm -M {BOARDS[board].qemu_machine}",
            "firmware, not bundles (python -m compile mcu)",
        ))  # fmt: skip
    width = min(shutil.get_terminal_size((100, 24)).columns, 100)
    indent = " " * (max(len(r[0]) for r in rows) + 2)
    print("Targets (--json for their TVM target dicts):")
    for name, what, links, run, here in rows:
        first = f"{name:<{len(indent)}}{what}"
        print("\n" + textwrap.fill(first, width, subsequent_indent=indent))
        more = f"links with {links}; runs {run}; here: {here}"
        print(textwrap.fill(more, width, initial_indent=indent, subsequent_indent=indent))
    return 0


# --------------------------------------------------------------------------------------
# build and summary


def _add_build(sub, formatter) -> None:
    b = sub.add_parser("build", help="build bundles", formatter_class=formatter)
    b.add_argument(
        "--preset",
        default=None,
        choices=list(mscnn.PRESETS),
        help="model preset (config, leads, sampling rate); with a --checkpoint saved by "
        "mscnn.save_checkpoint (it carries its config), only a check that it holds this "
        f"preset's model (default: the checkpoint's own config, else {mscnn.DEFAULT_PRESET})",
    )
    b.add_argument(
        "--checkpoint",
        type=Path,
        help="trained weights: a file mscnn.save_checkpoint wrote, or a bare (torch_ecg) "
        "state dict with --preset (default: the preset's own weights, else seeded)",
    )
    b.add_argument(
        "--backbone-only",
        action="store_true",
        help="with a backbone --preset, take a whole model's state dict and drop its head on "
        "purpose (without it, a head that would be dropped is an error)",
    )
    b.add_argument(
        "--targets",
        type=_csv,
        default=default_targets(),
        help=f"comma-separated, from: {', '.join(TARGETS)} (default: all but "
        f"{', '.join(n for n in TARGETS if n not in default_targets())})",
    )
    b.add_argument(
        "--variants",
        type=_csv,
        default=None,
        help="lead counts of CinC lead sets (12,6,4,3,2), or lead names joined "
        "by '+' (I+II+V5); default: every lead set of the preset",
    )
    b.add_argument("--samples", type=_positive, default=5000, help="input length (500 Hz: 10 s)")
    b.add_argument("--batch", type=_positive, default=1, help="input batch size")
    b.add_argument("--seed", type=int, default=0, help="seed of the default weights and inputs")
    b.add_argument("--out", type=Path, default=Path("build"), help="output folder")
    b.add_argument("--quiet", action="store_true", help="one line per bundle, no table")
    b.add_argument(
        "--hop",
        type=_positive,
        default=None,
        help="build stream bundles of the model's step for hops of this many "
        "samples (a multiple of the model's subsampling, e.g. 64, 128, 512) "
        "instead of window bundles (fp32 or, with --precision int8, the int8 step)",
    )
    b.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="int8: post-training quantized bundles with integer kernels (CPU targets; "
        "calibrated on real ECG from the shared data), named <preset>-<N>lead-int8; "
        "fp16: half-precision storage and products, fp32 accumulation (aarch64)",
    )
    _add_sign(b, "sign each bundle's manifest into manifest.sig (devices trusting KEY.pub)")
    b.set_defaults(func=_build)


def _build(args) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from .matrix import Request, build_matrix, plan, raise_failures
    from .summary import parity_cells, print_table

    request = Request(
        args.preset,
        args.checkpoint,
        args.targets,
        args.variants,
        args.samples,
        args.batch,
        args.seed,
        args.out,
        args.hop,
        args.precision,
        args.backbone_only,
        args.sign,
    )
    planned = plan(request)
    console = Console(stderr=True)
    console.print(str(planned), highlight=False)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("building", total=len(planned.targets) * len(planned.variants))

        def done(label: str, error: CompileError | None) -> None:
            if error is not None:
                console.print(f"[red]failed[/] {error}", soft_wrap=True)
            bar.advance(task)

        outcome = build_matrix(
            planned, lambda label, stage: bar.update(task, description=f"{label}: {stage}"), done
        )
    if args.quiet:
        for b in outcome.bundles:
            console.print(f"{b.target.name}/{b.name}: {' / '.join(parity_cells(b))}")
    else:
        print_table(outcome.bundles, [str(f) for f in outcome.failures])
    raise_failures(outcome, len(planned.targets) * len(planned.variants))
    return 0


def _add_summary(sub) -> None:
    s = sub.add_parser("summary", help="print the table of built bundles")
    s.add_argument("folder", type=Path, nargs="?", default=Path("build"))
    s.set_defaults(func=_summary)


def _summary(args) -> int:
    from .summary import collect, collect_mcu, print_mcu_table, print_table

    bundles, failures = collect(args.folder)
    reports, unreadable = collect_mcu(args.folder)
    if not bundles and not failures and not reports and not unreadable:
        raise CompileError(f"no bundles under {args.folder}/; run `make build` first")
    if bundles or failures:
        print_table(bundles, failures)
    if reports:
        print_mcu_table(reports)
    for failure in unreadable:
        print(f"FAILED {failure}")
    failed = failures + unreadable + [str(f) for f, r in reports if not r.parity.passed]
    return 1 if failed else 0


# --------------------------------------------------------------------------------------
# bench and tune


def _add_bench(sub, formatter) -> None:
    m = sub.add_parser(
        "bench",
        help="PyTorch vs ONNX Runtime vs TVM latency, side by side",
        formatter_class=formatter,
    )
    m.add_argument("folders", type=Path, nargs="+", help="build folders holding the bundles")
    m.add_argument(
        "--targets",
        type=_csv,
        default=["x86_64", "x86_64-avx512"],
        help="bundles of these targets are timed (those that run here)",
    )
    m.add_argument(
        "--threads", type=_positive, default=os.cpu_count() or 1, help="threads for every runtime"
    )
    m.add_argument("--rounds", type=_positive, default=5, help="alternating rounds")
    m.add_argument("--runs", type=_positive, default=10, help="timed calls per round")
    m.add_argument("--checkpoint", type=Path, help="the weights the bundles were built from")
    m.add_argument(
        "--no-untuned",
        action="store_true",
        help="skip TVM without schedules (seconds per call on big models)",
    )
    m.add_argument(
        "--peers",
        type=_peer_csv,
        default=(),
        help="peers timed beside ours on every model (litert, executorch; each in its own "
        "venv, made by `make bench`)",
    )
    m.add_argument("--out", type=Path, default=Path("build/bench"), help="JSON and PNG go here")
    m.set_defaults(func=_bench)


def _bench(args) -> int:
    from rich.console import Console

    from .bench.peaks import measured_fma_peak
    from .bench.window import PEAK_GOAL, bundle_paths, goals, peak_note, run_bench, save, table

    paths = bundle_paths(args.folders, args.targets)
    if not paths:
        raise CompileError(
            f"no bundles of {', '.join(args.targets)} under "
            f"{', '.join(map(str, args.folders))}; run `make bench`"
        )
    console = Console(stderr=True)
    rows = run_bench(
        paths,
        args.threads,
        args.rounds,
        args.runs,
        args.checkpoint,
        not args.no_untuned,
        console.print,
        args.peers,
    )
    out = Console()
    out.width = max(out.width, 170)
    out.print(table(rows, args.threads))
    refusals = {(n, why): r.variant for r in rows for n, why in r.peer_refusals.items()}
    for (name, why), variant in refusals.items():
        out.print(f"{name} cannot run {variant}: {why}", markup=False)
    variant, _ = PEAK_GOAL  # the FMA loop is timed only where a bundle is held to it
    held = any(r.variant == variant and r.target == "x86_64-avx512" for r in rows)
    fma_peak = measured_fma_peak(args.threads) if held else None
    lines = goals(rows, fma_peak, args.threads)
    extra = {"measured_fma_gflops": fma_peak, "goals": lines}
    json_path, png_path = save(rows, args.threads, args.out, extra)
    out.print(peak_note(rows, args.threads))
    for line in lines:
        out.print(line, markup=False)
    out.print(f"saved {json_path} and {png_path}")
    return 0


def _add_bench_stream(sub) -> None:
    m = sub.add_parser(
        "bench-stream",
        help="a stream bundle's step vs a 10 s window re-run "
        "every hop (TVM and ONNX Runtime), per second of ECG",
    )
    m.add_argument("window", type=Path, help="the model's window bundle (10 s)")
    m.add_argument("streams", type=Path, nargs="+", help="its stream bundles (one per hop)")
    m.add_argument("--threads", type=_positive, default=os.cpu_count() or 1)
    m.add_argument(
        "--peers",
        type=_peer_csv,
        default=(),
        help="peers whose 10 s window is re-run every hop too (litert, executorch; each in "
        "its own venv, made by `make bench`)",
    )
    m.add_argument("--out", type=Path, default=Path("build/bench"), help="JSON and PNG go here")
    m.set_defaults(func=_bench_stream)


def _peer_csv(text: str) -> tuple[str, ...]:
    from .bench.peers import PEERS

    names = tuple(_csv(text))
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown peer {unknown[0]!r}; choose from: {', '.join(PEERS)}"
        )
    return names


def _bench_stream(args) -> int:
    from .bench.stream import bench_stream, save
    from .bench.window import machine_name

    rows, refusals = bench_stream(args.window, args.streams, args.threads, peers=args.peers)
    print(
        f"{'hop':>5} {'ms':>6} {'step us':>9} {'stream/s ms':>12} {'window TVM/s ms':>16} "
        f"{'window ORT/s ms':>16} {'stream/ORT':>11} {'state KiB':>10} {'window act KiB':>15}"
    )
    for r in rows:
        p = r.per_second
        act = f"{r.window_activation_bytes / 1024:.0f}" if r.window_activation_bytes else "-"
        print(
            f"{r.hop:>5} {r.hop_ms:>6.0f} {r.step_us:>9.1f} {p['stream'] / 1e3:>12.2f} "
            f"{p['window_tvm'] / 1e3:>16.2f} {p['window_ort'] / 1e3:>16.2f} "
            f"{p['stream'] / p['window_ort']:>11.3f} {r.state_bytes / 1024:>10.0f} {act:>15}"
        )
    for r in rows:
        ours = r.per_second["stream"]
        for name, us in r.window_peers_us.items():
            print(
                f"{r.hop:>5} {name:>20}: window {us:9.1f} us, "
                f"{r.per_second['window_' + name] / 1e3:9.2f} ms per second of ECG; "
                f"stream / it {ours / r.per_second['window_' + name]:.3f}"
            )
    for name, why in refusals.items():
        print(f"{name} cannot run: {why}")
    json_path, png_path = save(rows, args.threads, machine_name(), args.out, refusals)
    print(f"{machine_name()}, {args.threads} threads; saved {json_path} and {png_path}")
    return 0


def _add_mcu(sub, formatter) -> None:
    from .mcu.boards import BOARDS, PARTS
    from .mcu.package import PACKAGES

    m = sub.add_parser(
        "mcu",
        formatter_class=formatter,
        help="the model on a Cortex-M board (no OS, no heap), proven under "
        "qemu-system-arm: library, C entry point, firmware, report",
    )
    m.add_argument("--preset", default="cpsc2019_qrs", choices=list(mscnn.PRESETS))
    m.add_argument("--checkpoint", type=Path, help="trained weights (default: the preset's)")
    m.add_argument(
        "--target",
        choices=list(PACKAGES),
        default=None,
        help="a Cortex-M target: picks its board (cortex-m7: mps2-an500); the report says "
        "which parts the build fits",
    )
    m.add_argument("--board", default=None, choices=list(BOARDS), help="default: mps2-an500")
    m.add_argument("--part", choices=list(PARTS), help="memory to fit (default: the board's)")
    m.add_argument("--samples", type=_positive, default=2400, help="window (or record) length")
    m.add_argument("--hop", type=_positive, default=None, help="a streaming step of this hop")
    _add_input_fs(m)
    m.add_argument(
        "--precision",
        choices=MCU_PRECISIONS,
        default="fp32",
        help="int8: the model (window or stream step) quantized, DSP-extension (smlad) "
        "kernels, bit for bit the int8 reference",
    )
    m.add_argument(
        "--weights",
        choices=("int16", "int8"),
        default=None,
        help="how an int8 build stores its weights: int16 (smlad reads them as they are) "
        "or int8 (half the flash; on M4/M7 sxtb16 widens them, at more instructions; on "
        "the M55 Helium multiplies them as they are). Default: the core's first (int16 on "
        "M4/M7, int8 on M55)",
    )
    m.add_argument(
        "--out",
        type=Path,
        default=Path("build/mcu"),
        help="output root: the build goes to OUT/<core>-stream<hop>-<precision>/ "
        "(a window: OUT/<core>-window<samples>-<precision>/), as make names them",
    )
    m.add_argument("--folder", type=Path, default=None, help="the build's own folder (not --out)")
    m.add_argument("--quiet", action="store_true", help="one line, not the report")
    m.add_argument(
        "--package",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write DIR/mscnn-edge-<core>.tar.gz: library, headers, sources, example "
        "firmware with its Makefile, report, README",
    )
    _add_sign(m, "with --package: SHA256SUMS of the library and headers signed, and the tarball")
    m.set_defaults(func=_mcu)


def _add_input_fs(m) -> None:
    m.add_argument(
        "--input-fs",
        type=_positive,
        default=None,
        metavar="HZ",
        help="with --hop: the sensor's sampling rate; the firmware resamples its samples to "
        "the model's rate as they arrive (filter taps generated at build time) and reports "
        "beats in the sensor's samples (default: the model's rate)",
    )


def _mcu(args) -> int:
    from .mcu.boards import BOARDS, CORES
    from .mcu.firmware import build_mcu, build_name
    from .mcu.package import PACKAGES, package_mcu

    if args.sign is not None:
        if not args.package:
            raise CompileError("--sign signs a package: give --package DIR too")
        read_signing_key(args.sign)  # a bad key refused before the build
    board, part = PACKAGES[args.target] if args.target else ("mps2-an500", None)
    board, part = args.board or board, args.part or part
    if args.target and BOARDS[board].core != args.target:
        raise CompileError(f"--board {board} is a {BOARDS[board].core}, not {args.target}")
    loaded = mscnn.load_model(args.preset, args.checkpoint)
    core = BOARDS[board].core
    weights = args.weights or next(iter(CORES[core].int8))
    name = build_name(core, args.hop, args.samples, args.precision, weights)
    if args.preset != "cpsc2019_qrs" or args.checkpoint:  # not make's model: say which
        name = f"{loaded.preset or 'custom'}-{name}"
    name += f"-in{args.input_fs}" if args.input_fs else ""
    out = args.folder or args.out / name
    done = build_mcu(
        loaded, board, out, samples=args.samples, hop=args.hop, part=part,
        precision=args.precision, weights=weights, input_fs=args.input_fs,
    )  # fmt: skip
    if not args.quiet:
        print(done.report.to_json(), end="")
    fp, speed = done.footprint, done.speed
    print(
        f"wrote {done.folder} (libmscnn.a, model.h, firmware.elf, mcu.json): "
        f"{fp.flash / 1024:.0f} KiB flash, {fp.ram / 1024:.0f} KiB RAM, "
        f"{100 * speed.cpu_load:.1f}% of {speed.clock_hz / 1e6:g} MHz (estimate), "
        f"parity {'pass' if done.parity.passed else 'FAIL'}"
    )
    if args.package:
        archive, size = package_mcu(done.folder, done.core, args.package, args.sign)
        print(f"wrote {archive} ({size / 1e6:.1f} MB)" + (" and .sig" if args.sign else ""))
    return 0


def _add_tune(sub, formatter) -> None:
    u = sub.add_parser(
        "tune",
        formatter_class=formatter,
        help="tune the conv kernels' "
        "register tiles (MetaSchedule) and write the records builds apply",
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
        "--rpc-wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to keep trying a tracker that does not answer (default 60)",
    )
    u.add_argument(
        "--out",
        type=Path,
        default=None,
        help="records folder (default: compile/tuning, which builds read)",
    )
    u.set_defaults(func=_tune)


def _tune(args) -> int:
    from rich.console import Console

    from deploy.remote import Rpc

    from .lowering.tune import check_tunable, tune_preset, tuning_table

    target = get_target(args.target)
    try:
        rpc = Rpc.parse(args.rpc_tracker, args.rpc_key, args.rpc_wait)
    except DeployError as exc:
        raise CompileError(str(exc)) from None
    check_tunable(target, rpc)
    for preset in args.presets:
        mscnn.get_preset(preset)  # every name checked before the first search starts
    console, out = Console(stderr=True), Console()
    out.width = max(out.width, 120)
    total = 0.0
    for preset in args.presets:
        # Plain lines, no live spinner: a refresh thread would steal a core from the
        # kernels being timed.
        result = tune_preset(
            target,
            preset,
            args.variants,
            samples=args.samples,
            batch=args.batch,
            threads=args.threads,
            rpc=rpc,
            max_trials=args.max_trials,
            out=args.out,
            progress=lambda s: console.print(f"  {s}", highlight=False),
        )
        out.print(tuning_table(target, result))
        s = result.summary
        out.print(
            f"{s['tuned']} of {s['kernels']} kernels tuned, {s['candidates']} candidates "
            f"measured in {s['seconds']:.0f} s; wrote {result.path}"
        )
        total += s["seconds"]
    out.print(f"total tuning time: {total:.0f} s")
    return 0


# --------------------------------------------------------------------------------------


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Each default shown once, as a user would type it: not where the help already says
    it, not for a flag or an unset option, a list comma-joined."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default == argparse.SUPPRESS:
            return text
        if not action.option_strings:
            return text
        if isinstance(default, list | tuple):
            default = ",".join(map(str, default))
        return f"{text} (default: {str(default).replace('%', '%%')})"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m compile",
        description="Compile MultiScopicCNN to TVM bundles for x86-64, ARM and CUDA, and "
        "to firmware for Cortex-M cores (compile mcu).",
        formatter_class=_Help,
    )
    sub = p.add_subparsers(dest="command", required=True)
    _add_targets(sub)
    _add_build(sub, p.formatter_class)
    _add_bench(sub, p.formatter_class)
    _add_bench_stream(sub)
    _add_mcu(sub, p.formatter_class)
    _add_tune(sub, p.formatter_class)
    _add_summary(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.func(args)
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
