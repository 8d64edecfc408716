"""`python -m deploy`: run, check and describe bundles with the TVM runtime and numpy only.

Each subcommand registers its own parser and one library call. Exit codes: 0 success
(parity passed), 1 parity mismatch, 2 unusable bundle or input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from .bundle import MANIFEST, load_bundle
from .errors import DeployError
from .files import show
from .signing import trusting
from .signing_cli import SUBCOMMANDS as SIGNING_SUBCOMMANDS
from .signing_cli import add_trust_options, trust_from_args

EXIT_OK, EXIT_MISMATCH, EXIT_UNUSABLE, EXIT_INTERRUPTED = 0, 1, 2, 130


def positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def _add_run(sub) -> None:
    r = sub.add_parser("run", help="run one input .npy through a bundle")
    r.add_argument("bundle", type=Path)
    r.add_argument("--input", type=Path, required=True, help="(batch, leads, samples) float32")
    r.add_argument("--output", type=Path, required=True, help="where to write the .npy output")
    r.set_defaults(func=_run)


def _run(args) -> int:
    from .predictor import run_file

    y = run_file(args.bundle, args.input, args.output)
    print(f"wrote {args.output} {y.shape} {y.dtype}")
    return EXIT_OK


def _add_check(sub) -> None:
    c = sub.add_parser("check", help="run the golden inputs and compare with PyTorch's outputs")
    c.add_argument("bundle", type=Path)
    c.add_argument("--json", action="store_true", help="print the figures as JSON")
    c.set_defaults(func=_check)


def _check(args) -> int:
    from .predictor import check_bundle
    from .stream import check_stream

    bundle = load_bundle(args.bundle)
    done = check_stream(bundle) if bundle.manifest.stream else check_bundle(bundle)
    if args.json:
        golden = {k: r.to_json() for k, r in done.cases.items()}
        task = vars(done.task) if done.task else None
        print(json.dumps({"passed": done.passed, "golden": golden, "task": task}, indent=2))
    else:
        for name, result in done.cases.items():
            print(f"{name:<8} {result}")
        if done.task is not None:
            t = done.task
            print(f"{t.kind}: {t.identical} of {t.cases} real records as PyTorch's")
        print(f"parity {'passed' if done.passed else 'FAILED'}")
    return EXIT_OK if done.passed else EXIT_MISMATCH


def _add_detect(sub) -> None:
    d = sub.add_parser("detect", help="R-peaks and heart rate of one record (detector bundles)")
    d.add_argument("bundle", type=Path)
    d.add_argument(
        "--input",
        type=Path,
        required=True,
        help="the record: WFDB (.hea), EDF/BDF (.edf, .bdf), CSV (.csv, one column per lead, "
        "an optional header row of lead names) or .npy float32 mV, (samples,), "
        "(leads, samples) or (1, leads, samples); WFDB and EDF need "
        "`pip install 'mscnn-edge[records]'`",
    )
    d.add_argument(
        "--lead",
        default=None,
        help="the lead to use, by name (MLII, II) or index from 0 (default: the record's "
        "leads when their number fits the bundle)",
    )
    d.add_argument(
        "--fs",
        type=positive,
        default=None,
        help="the record's sampling rate in Hz, for CSV and .npy (WFDB and EDF state "
        "theirs); another rate than the bundle's is resampled to it (default: the "
        "bundle's rate is assumed, and said so)",
    )
    d.add_argument("--json", action="store_true", help="print beats and heart rate as JSON")
    d.add_argument(
        "--csv",
        type=Path,
        metavar="FILE",
        help="also write the beats as CSV (sample,seconds,rr_ms; one beat per row, in the "
        "record's clock); - prints the CSV instead of the summary",
    )
    d.add_argument(
        "--annotations",
        type=Path,
        metavar="PATH",
        help="also write the beats as WFDB annotations (symbol N, wfdb.wrann) for "
        "PhysioNet's tools: FOLDER/RECORD.EXT, or a folder (the record's name, .qrs)",
    )
    d.add_argument("--plot", type=Path, help="also draw the record and its beats to this PNG")
    d.add_argument(
        "--plot-span",
        metavar="START:END",
        help="with --plot: the seconds of the record to draw, at most 600 (default: the "
        "first 60 s)",
    )
    d.set_defaults(func=_detect)


def _detect(args) -> int:
    """Plan the outputs, read the record in chunks through the bundle, then write them:
    a bad output path or option is refused before any work, and nothing is written
    unless the whole record went through."""
    from .longrecord import detect_chunks
    from .outputs import plan_outputs
    from .recordings import open_recording, record_rate

    plan = plan_outputs(args.csv, args.annotations, args.plot, args.plot_span, args.input)
    if args.json and plan.csv == Path("-"):
        raise DeployError("--json and --csv - both print to stdout; give --csv a file name")
    bundle = load_bundle(args.bundle)
    source = open_recording(args.input)
    fs = record_rate(source, args.fs, args.input)
    rows, leads = source.rows(args.lead, tuple(bundle.leads)), bundle.leads
    if len(rows) != len(leads):
        raise DeployError(
            f"record of {len(rows)} leads; this bundle takes {len(leads)} "
            f"({', '.join(leads)}): give a record of those leads or choose one with --lead"
        )
    keep = plan.plot_samples(fs or bundle.manifest.fs)
    found, span = detect_chunks(bundle, source.chunks(rows), fs, tuple(leads), keep)
    if span is not None and span.signal.size == 0:
        raise DeployError(
            f"--plot-span starts at {plan.span[0]:g} s, after the record's end "
            f"({found.samples / found.input_fs:g} s); nothing was written"
        )
    _note_rate(found.fs_assumed, found.fs)
    _note_resampled(found.fs_input, found.fs)
    _write_outputs(plan, found, span, show(args.input.name), to=sys.stderr if args.json else None)
    if plan.csv != Path("-"):
        _print_detection(found, args.json)
    return EXIT_OK


def detection_json(found, minutes: list | None = None) -> dict:
    """`--json` of deploy detect and deploy stream --detect: the beats, gaps and heart
    rate, and the heart rate of each minute."""
    from .outputs import per_minute_bpm

    if minutes is None:
        minutes = per_minute_bpm(found.beats, found.input_fs, found.samples, found.breaks)
    return {**found.to_json(), "heart_rate_per_minute": minutes}


def _print_detection(found, as_json: bool) -> None:
    from .outputs import per_minute_bpm

    minutes = per_minute_bpm(found.beats, found.input_fs, found.samples, found.breaks)
    if as_json:
        print(json.dumps(detection_json(found, minutes)))
        return
    rate = f"{found.heart_rate_bpm:.1f} bpm" if found.heart_rate_bpm else "n/a"
    seconds = found.samples / found.input_fs
    print(f"{len(found.beats)} beats in {seconds:g} s, heart rate {rate}")
    print("heart rate per minute (bpm):", " ".join("-" if r is None else f"{r:g}" for r in minutes))
    print("R-peaks (samples):", " ".join(map(str, found.beats.tolist())))
    print("R-peaks (s):", " ".join(f"{b / found.input_fs:.3f}" for b in found.beats))
    for gap in found.gaps:  # NaN runs: each segment was detected alone
        print(f"gap {gap.start} {gap.samples}")


def _write_outputs(plan, found, span, title: str, to=None) -> None:
    """The files asked for, each renamed into place once written; `to`: where the
    "wrote" lines go (stderr when stdout carries JSON or CSV)."""
    from .detect import plot
    from .outputs import beats_csv, write_annotations, write_text

    to = sys.stderr if plan.csv == Path("-") else to or sys.stdout
    if plan.csv is not None:
        text = beats_csv(found.beats, found.input_fs)
        if plan.csv == Path("-"):
            sys.stdout.write(text)
        else:
            write_text(plan.csv, text)
            print(f"wrote {show(plan.csv)} ({len(found.beats)} beats)", file=to)
    if plan.annotations is not None:
        if write_annotations(plan.annotations, found.beats, found.input_fs):
            print(f"wrote {show(plan.annotations)} (WFDB annotations)", file=to)
        else:
            print("note: no beats found; no annotation file written", file=sys.stderr)
    if plan.plot is not None:
        plot(span.signal, found, plan.plot, title=title, start=span.start)
        print(f"wrote {show(plan.plot)}", file=to)


def _note_rate(assumed: bool, fs: int) -> None:
    """Every run whose rate was assumed says so (on stderr: stdout stays the result)."""
    from .detect import rate_note

    if assumed:
        print(f"note: {rate_note(fs)}", file=sys.stderr, flush=True)


def _note_resampled(fs_input: int | None, fs: int) -> None:
    if fs_input is not None:
        print(
            f"note: resampled from {fs_input} Hz (the record's) to {fs} Hz (the "
            "bundle's); beats are in the record's samples",
            file=sys.stderr,
            flush=True,
        )


def _add_stream(sub) -> None:
    s = sub.add_parser(
        "stream",
        help="stream raw samples through a stream bundle, printing "
        "frames (or beats with --detect) as they complete",
    )
    s.add_argument("bundle", type=Path)
    s.add_argument(
        "--input",
        type=Path,
        default=Path("-"),
        help="raw little-endian float32 samples in mV, leads interleaved (- for stdin), "
        "or a .npy file (float32 mV, (samples,) or (leads, samples))",
    )
    s.add_argument("--detect", action="store_true", help="print R-peaks instead of frames")
    s.add_argument(
        "--json",
        action="store_true",
        help="with --detect: print beats and heart rate as JSON at the end of the record, "
        "as `deploy detect --json` does",
    )
    s.add_argument(
        "--fs",
        type=positive,
        default=None,
        help="the record's sampling rate in Hz; another than the bundle's is resampled to "
        "it as the samples arrive, and beats are reported in the record's samples "
        "(default: the bundle's rate is assumed, and said so)",
    )
    s.add_argument(
        "--chunk",
        type=positive,
        default=None,
        help="samples per lead read at a time (default: the bundle's hop)",
    )
    s.set_defaults(func=_stream)


def _stream(args) -> int:
    from .streaming_cli import open_run

    if args.json and not args.detect:
        raise DeployError("--json goes with --detect (beats and heart rate); frames print as text")
    run = open_run(args.bundle, args.input, args.fs, args.chunk, args.detect)
    _note_rate(run.fs_assumed, run.fs)
    _note_resampled(run.rate.fs if run.rate.resampled else None, run.fs)
    if args.json:
        print(json.dumps(detection_json(run.detection())))
        return EXIT_OK
    for line in run.lines(args.detect):
        print(line, flush=True)
    return EXIT_OK


def _add_info(sub) -> None:
    i = sub.add_parser(
        "info",
        help="describe a bundle (verifies it, loads nothing), or a Cortex-M build "
        "folder (its mcu.json)",
    )
    i.add_argument("bundle", type=Path)
    i.set_defaults(func=_info)


def _info(args) -> int:
    from .describe import MCU_REPORT, describe, describe_mcu

    folder = args.bundle
    if (folder / MCU_REPORT).is_file() and not (folder / MANIFEST).exists():
        lines = describe_mcu(folder)
    else:
        lines = describe(load_bundle(folder))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    return EXIT_OK


def _add_parity(sub) -> None:
    s = sub.add_parser(
        "parity",
        help="check every bundle of a build folder, each as its "
        "machine runs it (native, qemu + native runner, GPU)",
    )
    s.add_argument("folder", type=Path, nargs="?", default=Path("build"))
    s.add_argument(
        "--runners",
        type=Path,
        default=Path("build/native"),
        help="folder of native runners, one per architecture",
    )
    s.add_argument(
        "--qemu-cases",
        type=positive,
        metavar="N",
        help="under qemu, check only the first N golden cases of each bundle (a large "
        "model takes seconds a case there); in-process checks run them all",
    )
    s.set_defaults(func=_sweep)


def _sweep(args) -> int:
    from .sweep import format_table, sweep

    rows = sweep(args.folder, args.runners, qemu_cases=args.qemu_cases)
    if not rows:
        raise DeployError(f"no bundles under {show(args.folder)}/; run `make build` first")
    print(format_table(rows))
    if any(r.status == "unusable" for r in rows):
        return EXIT_UNUSABLE
    return EXIT_MISMATCH if any(r.status == "FAIL" for r in rows) else EXIT_OK


def _add_bench(sub) -> None:
    b = sub.add_parser(
        "bench",
        help="TVM latency of bundles, here or on a device via RPC "
        "(vs PyTorch and ONNX Runtime: python -m compile bench)",
    )
    b.add_argument("bundles", type=Path, nargs="+")
    b.add_argument(
        "--threads",
        type=positive,
        default=None,
        help="TVM threads (default: TVM's, the device's physical cores)",
    )
    b.add_argument("--repeat", type=positive, default=20, help="timed repeats")
    b.add_argument(
        "--min-repeat-ms",
        type=positive,
        default=100,
        help="each repeat runs the model as often as fills this",
    )
    b.add_argument("--rpc-tracker", metavar="HOST:PORT", help="time on a device via this tracker")
    b.add_argument("--rpc-key", metavar="KEY", help="the device's key at the tracker")
    b.add_argument(
        "--rpc-wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to keep trying a tracker that does not answer (default 60)",
    )
    b.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    b.set_defaults(func=_bench)


def _bench(args) -> int:
    from .remote import Rpc, time_bundles

    print(f"{'bundle':<34} {'target':<14} {'median ms':>10} {'p90 ms':>8} {'min ms':>8}  where")
    rpc = Rpc.parse(args.rpc_tracker, args.rpc_key, args.rpc_wait)
    for t in time_bundles(
        args.bundles, rpc, args.threads, args.repeat, args.min_repeat_ms, args.json
    ):
        print(
            f"{t.bundle:<34} {t.target:<14} {t.median_ms:>10.3f} {t.p90_ms:>8.3f} "
            f"{t.min_ms:>8.3f}  {t.where}",
            flush=True,
        )
    return EXIT_OK


def _add_package(sub) -> None:
    k = sub.add_parser("package", help="tarball of one target's runner, runtime and bundles")
    k.add_argument("target", help="a target folder name under the build folder, e.g. aarch64")
    k.add_argument("--build", type=Path, default=Path("build"))
    k.add_argument("--runners", type=Path, default=Path("build/native"))
    k.add_argument("--out", type=Path, default=Path("build/package"))
    k.add_argument(
        "--sign",
        type=Path,
        metavar="KEY",
        help="ship only bundles signed by KEY, the runner set to trust KEY.pub alone, and "
        "sign the tarball (TARBALL.sig)",
    )
    k.set_defaults(func=_package)


def _package(args) -> int:
    from .package import package

    archive, size = package(args.build, args.target, args.runners, args.out, args.sign)
    print(f"wrote {archive} ({size / 1e6:.1f} MB)")
    if args.sign is not None:
        print(f"wrote {archive}.sig")
    return EXIT_OK


SUBCOMMANDS = [
    _add_run,
    _add_check,
    _add_detect,
    _add_stream,
    _add_info,
    _add_parity,
    _add_bench,
    _add_package,
    *SIGNING_SUBCOMMANDS,
]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deploy",
        description="Run and check mscnn-edge bundles (exit 0 ok, 1 parity mismatch, "
        "2 unusable bundle or input).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    add_trust_options(sub)
    return p


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # clean up partial outputs as on Ctrl-C
    try:
        with trusting(trust_from_args(args)):
            return args.func(args)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except BrokenPipeError:  # the reader went away (| head): not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:  # disk full or read-only where a file is written
        where = f" ({show(exc.filename)})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_UNUSABLE
    except KeyboardInterrupt:
        print("error: interrupted; no partial output was left", file=sys.stderr)
        return EXIT_INTERRUPTED
