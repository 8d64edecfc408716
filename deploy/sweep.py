"""Parity of every bundle in a build folder, each run the way its machine would run it:
in this process where it can, under qemu-user with the native runner for other CPUs, and
never reported as passed when it could not run (a CUDA bundle without a GPU)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .bundle import MANIFEST, can_run_here, load_bundle
from .errors import DeployError
from .predictor import check_bundle
from .signing import current_trust, runner_args
from .stream import check_stream

RUNNER = "mscnn-run"


@dataclass(frozen=True)
class SweepRow:
    bundle: str  # target/name
    how: str  # how it was run, or why not
    normalised: float | None
    status: str  # "pass", "FAIL", "not run", "unusable"
    task: str = "-"  # whole models: "50/50 beats" (identical to PyTorch's), or "-"


def sweep(
    folder: Path, runners: Path, timeout: float = 1800, qemu_cases: int | None = None
) -> list[SweepRow]:
    """Check every bundle under `folder` (`<target>/<bundle>/manifest.json`); under qemu,
    only the first `qemu_cases` golden cases of each bundle when given."""
    rows = []
    for manifest in sorted(Path(folder).glob(f"*/*/{MANIFEST}")):
        path = manifest.parent
        label = f"{path.parent.name}/{path.name}"
        try:
            rows.append(_one(label, path, runners, timeout, qemu_cases))
        except DeployError as exc:
            rows.append(SweepRow(label, str(exc), None, "unusable"))
    return rows


def _one(label: str, path: Path, runners: Path, timeout: float, qemu_cases: int | None) -> SweepRow:
    bundle = load_bundle(path)
    target = bundle.target
    runs, why = can_run_here(target.arch, target.device, target.cpu_flags)
    if runs:  # a stream bundle streams its golden record, as a device streams it
        done = check_stream(bundle) if bundle.manifest.stream else check_bundle(bundle)
        task = f"{done.task.identical}/{done.task.cases} {done.task.kind}" if done.task else "-"
        status = "pass" if done.passed else "FAIL"
        return SweepRow(label, "native (Python)", done.verdict.normalised, status, task)
    if target.is_gpu:  # a GPU bundle runs on its own machine or not at all
        return SweepRow(label, f"not run: {why}", None, "not run")
    emulator = target.emulator
    runner = Path(runners) / target.arch / RUNNER
    if not emulator:
        return SweepRow(label, f"not run: {why}", None, "not run")
    if not runner.is_file():
        return SweepRow(
            label, f"not run: no {target.arch} runner at {runner} (make runners)", None, "not run"
        )
    limit = ["--cases", str(qemu_cases)] if qemu_cases else []
    done = subprocess.run(
        [*emulator, str(runner), str(path), "--check", *limit, *runner_args(current_trust())],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    how = f"{emulator[0]} + {RUNNER}"
    part = re.search(r"\(the first (\d+) of (\d+) golden cases\)", done.stdout)
    if part:
        how += f", {part.group(1)} of {part.group(2)} cases"
    found = re.search(r"worst_normalised=(\S+)", done.stdout)
    normalised = float(found.group(1)) if found else None
    task = re.search(r"(beats|decisions)=(\d+)/(\d+)", done.stdout)
    task_cell = f"{task.group(2)}/{task.group(3)} {task.group(1)}" if task else "-"
    if done.returncode == 0:
        return SweepRow(label, how, normalised, "pass", task_cell)
    if done.returncode == 1:
        return SweepRow(label, how, normalised, "FAIL", task_cell)
    message = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    return SweepRow(label, f"{how}: {message}", None, "unusable")


def format_table(rows: list[SweepRow]) -> str:
    """A plain-text table (no dependencies beyond the standard library: runs on devices)."""
    header = ("bundle", "run by", "normalised error", "same as PyTorch", "status")
    cells = [header] + [
        (r.bundle, r.how, "-" if r.normalised is None else f"{r.normalised:.2e}", r.task, r.status)
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(header))).rstrip() for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    counts = {s: sum(r.status == s for r in rows) for s in ("pass", "FAIL", "not run", "unusable")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)
