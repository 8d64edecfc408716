"""Hours of ECG through the detector: seconds per hour of ECG and peak memory, for 1, 6
and 24 hours, in Python and natively.

`python -m compile.bench.long --window W --stream S [--runner mscnn-run] [--minutes
60,360,1440]` makes each
length by tiling the real CPSC2019 records end to end (500 s of ECG at 500 Hz) into a
`.npy` written piece by piece, then runs, each as its own process, timed from start to
exit with its peak resident memory (the child's ru_maxrss):

- `python -m deploy detect S --input rec.npy --json`: the stream bundle hop by hop;
- `python -m deploy detect W --input rec.npy --json`: the window bundle, stitched windows;
- `mscnn-run S --stream --input - --detect --json`, the .npy's samples on its stdin.

Linear time means the 24 h run costs at most 26 times the 1 h run (a process's start is
paid once); flat memory means the 24 h peak is the 1 h peak. Both are printed per runner,
for the longest length against the shortest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from deploy.bundle import cpu_model
from mscnn import data as ecg_data

MINUTES = (60, 360, 1440)  # 1, 6 and 24 hours
RUNNERS = ("python stream", "python window", "native stream")


@dataclass(frozen=True)
class LongRun:
    runner: str
    minutes: int
    seconds: float
    peak_mb: float
    beats: int

    @property
    def seconds_per_hour(self) -> float:
        return self.seconds * 60 / self.minutes


def write_minutes(path: Path, minutes: int) -> Path:
    """`minutes` of tiled real ECG as a (samples,) float32 .npy, written tile by tile."""
    records = ecg_data.cpsc2019_records()
    tile = np.concatenate(records.signals).astype("<f4")
    total = minutes * 60 * records.fs
    out = np.lib.format.open_memmap(path, mode="w+", dtype="<f4", shape=(total,))
    for at in range(0, total, len(tile)):
        out[at : at + len(tile)] = tile[: total - at]
    out.flush()
    del out
    return path


# Runs a command as its grandchild and reports that one's peak resident size. A child's
# ru_maxrss keeps the resident size of the process it was forked from (Linux carries it
# across exec): forked from this benchmark, which has just written a record, every runner
# would seem to hold it. Forked from this small interpreter instead, it starts from ~10 MB.
TRAMPOLINE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
sys.stderr.write(f"\\nmaxrss_kb {usage.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_child(command: list[str], stdin=None) -> tuple[float, float, dict]:
    """(seconds, peak MB, its JSON) of one command, from start to exit."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", TRAMPOLINE, *command], stdin=stdin, stdout=out,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(
                f"error: {' '.join(command)} failed ({done.returncode}): {done.stderr}"
            )
        peak_kb = int(done.stderr.strip().splitlines()[-1].split()[1])
        out.seek(0)
        return seconds, peak_kb / 1024, json.loads(out.read())


def run_length(record: Path, minutes: int, args) -> list[LongRun]:
    python = [sys.executable, "-m", "deploy", "detect"]
    runs = []
    commands = {
        "python stream": [*python, str(args.stream), "--input", str(record), "--json"],
        "python window": [*python, str(args.window), "--input", str(record), "--json"],
    }
    for name, command in commands.items():
        if name not in args.runners:
            continue
        seconds, peak, found = run_child(command)
        runs.append(LongRun(name, minutes, seconds, peak, len(found["beats"])))
    if args.runner is not None and "native stream" in args.runners:
        with open(record, "rb", buffering=0) as f:  # unbuffered: the child reads on from here
            header = np.lib.format.read_magic(f) == (1, 0)
            read = (
                np.lib.format.read_array_header_1_0
                if header
                else np.lib.format.read_array_header_2_0
            )
            read(f)  # leaves f at the first sample
            command = [str(args.runner), str(args.stream), "--stream", "--input", "-"]
            seconds, peak, found = run_child([*command, "--detect", "--json"], stdin=f)
        runs.append(LongRun("native stream", minutes, seconds, peak, len(found["beats"])))
    return runs


def table(runs: list[LongRun]) -> str:
    lines = [
        "| runner | ECG | seconds | s per hour of ECG | peak memory (MB) | beats |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r.runner} | {_length(r.minutes)} | {r.seconds:.1f} | {r.seconds_per_hour:.2f} | "
            f"{r.peak_mb:.0f} | {r.beats} |"
        )
    lines.append("")
    for name in dict.fromkeys(r.runner for r in runs):
        mine = sorted((r for r in runs if r.runner == name), key=lambda r: r.minutes)
        if len(mine) > 1:
            a, b = mine[0], mine[-1]
            lines.append(
                f"{name}: {_length(b.minutes)} costs {b.seconds / a.seconds:.1f}x the "
                f"{_length(a.minutes)} run ({b.minutes / a.minutes:g}x the ECG); peak memory "
                f"{b.peak_mb:.0f} MB vs {a.peak_mb:.0f} MB"
            )
    return "\n".join(lines)


def _length(minutes: int) -> str:
    return f"{minutes // 60} h" if minutes % 60 == 0 else f"{minutes} min"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compile.bench.long", description=__doc__)
    p.add_argument("--window", type=Path, required=True, help="the detector's window bundle")
    p.add_argument("--stream", type=Path, required=True, help="the detector's stream bundle")
    p.add_argument("--runner", type=Path, help="mscnn-run for this machine (native runs)")
    p.add_argument(
        "--minutes",
        default=",".join(map(str, MINUTES)),
        help="record lengths in minutes (5,30,120 keeps the ratios of 1, 6 and 24 hours)",
    )
    p.add_argument("--out", type=Path, default=Path("build/bench-long"), help="records, JSON")
    p.add_argument(
        "--runners",
        type=lambda text: text.split(","),
        default=list(RUNNERS),
        help=f"which to run, from: {', '.join(RUNNERS)}",
    )
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_model()}; {os.cpu_count()} cores", flush=True)
    runs = []
    for minutes in (int(m) for m in args.minutes.split(",")):
        record = write_minutes(args.out / f"ecg-{minutes}min.npy", minutes)
        runs += run_length(record, minutes, args)
        record.unlink()
        print(table([r for r in runs if r.minutes == minutes]).split("\n\n")[0], flush=True)
    print(table(runs))
    report = {"cpu": cpu_model(), "runs": [asdict(r) for r in runs]}
    (args.out / "long.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
