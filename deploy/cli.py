"""`python -m deploy`: run, check and describe bundles with the TVM runtime and numpy only.

Exit codes: 0 success (parity passed), 1 parity mismatch, 2 unusable bundle or input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .bundle import Bundle, load_bundle, read_npy, write_npy
from .errors import DeployError
from .package import package
from .predictor import Predictor, check_parity
from .sweep import format_table, sweep

EXIT_OK, EXIT_MISMATCH, EXIT_UNUSABLE = 0, 1, 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deploy",
        description="Run and check mscnn-edge bundles (exit 0 ok, 1 parity mismatch, "
        "2 unusable bundle or input).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one input .npy through a bundle")
    r.add_argument("bundle", type=Path)
    r.add_argument("--input", type=Path, required=True, help="(batch, leads, samples) float32")
    r.add_argument("--output", type=Path, required=True, help="where to write the .npy output")
    c = sub.add_parser("check", help="run the golden inputs and compare with PyTorch's outputs")
    c.add_argument("bundle", type=Path)
    c.add_argument("--json", action="store_true", help="print the figures as JSON")
    i = sub.add_parser("info", help="describe a bundle (verifies it, loads nothing)")
    i.add_argument("bundle", type=Path)
    s = sub.add_parser("parity", help="check every bundle of a build folder, each as its "
                       "machine runs it (native, qemu + native runner, GPU)")  # fmt: skip
    s.add_argument("folder", type=Path, nargs="?", default=Path("build"))
    s.add_argument("--runners", type=Path, default=Path("build/native"),
                   help="folder of native runners, one per architecture")  # fmt: skip
    b = sub.add_parser("bench", help="TVM latency of bundles, here or on a device via RPC "
                       "(vs PyTorch and ONNX Runtime: python -m compile bench)")  # fmt: skip
    b.add_argument("bundles", type=Path, nargs="+")
    b.add_argument("--threads", type=_positive, default=None,
                   help="TVM threads (default: TVM's, the device's physical cores)")  # fmt: skip
    b.add_argument("--repeat", type=_positive, default=20, help="timed repeats")
    b.add_argument("--min-repeat-ms", type=_positive, default=100,
                   help="each repeat runs the model as often as fills this")  # fmt: skip
    b.add_argument("--rpc-tracker", metavar="HOST:PORT", help="time on a device via this tracker")
    b.add_argument("--rpc-key", metavar="KEY", help="the device's key at the tracker")
    b.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    k = sub.add_parser("package", help="tarball of one target's runner, runtime and bundles")
    k.add_argument("target", help="a target folder name under the build folder, e.g. aarch64")
    k.add_argument("--build", type=Path, default=Path("build"))
    k.add_argument("--runners", type=Path, default=Path("build/native"))
    k.add_argument("--out", type=Path, default=Path("build/package"))
    return p


def main(argv: list[str] | None = None) -> int:
    parser_ = parser()
    args = parser_.parse_args(argv)
    try:
        if args.command == "info":
            return _info(load_bundle(args.bundle))
        if args.command == "check":
            return _check(args.bundle, args.json)
        if args.command == "parity":
            return _sweep(args.folder, args.runners)
        if args.command == "bench":
            return _bench(args)
        if args.command == "package":
            archive, size = package(args.build, args.target, args.runners, args.out)
            print(f"wrote {archive} ({size / 1e6:.1f} MB)")
            return EXIT_OK
        return _run(args.bundle, args.input, args.output)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except OSError as exc:  # disk full or read-only where a file is written
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_UNUSABLE


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def _bench(args) -> int:
    from .remote import Device, Rpc, time_bundle

    rpc = Rpc.parse(args.rpc_tracker, args.rpc_key)
    bundles = [load_bundle(p) for p in args.bundles]  # every hash checked before timing
    device = Device(rpc)
    rows = []
    print(f"{'bundle':<34} {'target':<14} {'median ms':>10} {'p90 ms':>8} {'min ms':>8}  where")
    for bundle in bundles:
        t = time_bundle(bundle, device, args.threads, args.repeat, args.min_repeat_ms)
        rows.append(t)
        print(f"{t.bundle:<34} {t.target:<14} {t.median_ms:>10.3f} {t.p90_ms:>8.3f} "
              f"{t.min_ms:>8.3f}  {t.where}", flush=True)  # fmt: skip
    if args.json:
        try:
            args.json.write_text(json.dumps([r.to_json() for r in rows], indent=2) + "\n")
        except OSError as exc:
            raise DeployError(f"cannot write {args.json}: {exc.strerror}") from None
    return EXIT_OK


def _info(bundle: Bundle) -> int:
    m = bundle.manifest
    runs, why = bundle.runnable_here()
    lines = [
        ("bundle", f"{bundle.name} ({bundle.path})"),
        ("target", f"{m['target']['name']} ({m['target']['arch']}, {m['target']['device']})"),
        ("model", f"{m['model'].get('preset')} — {m['model'].get('source')}"),
        ("leads", ", ".join(bundle.leads) + f" at {m['fs']} Hz"),
        ("input", f"{m['input']['name']} {tuple(m['input']['shape'])} {m['input']['dtype']}"),
        ("output", f"{m['output']['name']} {tuple(m['output']['shape'])} {m['output']['dtype']}"),
        ("library", f"{m['files']['model.so']['bytes'] / 1024:.0f} KiB, sha256 verified"),
        ("runs here", "yes" if runs else f"no: {why}"),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    return EXIT_OK


def _check(path: Path, as_json: bool) -> int:
    verdict, results = check_parity(path)
    if as_json:
        print(
            json.dumps(
                {"passed": verdict.passed, "golden": {k: r.to_json() for k, r in results.items()}},
                indent=2,
            )
        )
    else:
        for name, result in results.items():
            print(f"{name:<8} {result}")
        print(f"parity {'passed' if verdict.passed else 'FAILED'}")
    return EXIT_OK if verdict.passed else EXIT_MISMATCH


def _run(path: Path, input_path: Path, output_path: Path) -> int:
    if output_path.is_dir():
        raise DeployError(f"output path {output_path} is a folder; give a file name such as y.npy")
    if output_path.exists() and not output_path.is_file():  # a device or pipe: not replaced
        raise DeployError(f"output path {output_path} is not a regular file; give a file "
                          "name such as y.npy")  # fmt: skip
    predictor = Predictor(path)
    y = predictor(read_npy(input_path))
    try:
        write_npy(output_path, y)
    except OSError as exc:
        raise DeployError(f"cannot write {output_path}: {exc.strerror}") from None
    print(f"wrote {output_path} {y.shape} {y.dtype}")
    return EXIT_OK


def _sweep(folder: Path, runners: Path) -> int:
    rows = sweep(folder, runners)
    if not rows:
        raise DeployError(f"no bundles under {folder}/; run `make build` first")
    print(format_table(rows))
    if any(r.status == "unusable" for r in rows):
        return EXIT_UNUSABLE
    return EXIT_MISMATCH if any(r.status == "FAIL" for r in rows) else EXIT_OK
