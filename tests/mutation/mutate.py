"""Mutation testing of the code whose mistakes are silent: `make mutation`.

A wrong tolerance, a wrong lead index, a skipped hash or a MAC count without the kernel
size all still give plausible numbers, so only a test written against an independent
oracle notices. mutmut (pinned in pyproject's `mutation` extra) plants one small change
at a time in the functions below and runs the fast tests that reach each function; a
mutant that no test fails "survives" and is printed with its diff.

The run happens in a copy (build/mutation/), never in the working tree, on a time budget:
mutants left unchecked when it runs out are counted as such, not as passes. Survivors
whose change cannot alter behaviour are listed in EQUIVALENT with the reason; any other
survivor is a gap in the tests.

    python tests/mutation/mutate.py [--budget SECONDS] [--jobs N] [--only FILE,...]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "build" / "mutation"

PACKAGES = ["mscnn", "compile", "deploy"]
# What is mutated: modules whose mistakes are silent, by mutmut mutant-name pattern.
MUTATE = {
    "mscnn/leads.py": ["mscnn.leads.*"],  # lead sets, resolve_leads, variant derivation
    "mscnn/model.py": ["mscnn.model.xǁMultiScopicCNNǁcount_macs__mutmut_*"],  # MACs
    "deploy/parity.py": ["deploy.parity.*"],  # tolerances, compare, worst
    "deploy/bundle.py": ["deploy.bundle.*"],  # load_bundle, per-file checks, private copy
    "deploy/files.py": ["deploy.files.x_sha256_*"],  # the hashing itself
}
# The fast tests that guard them (no TVM build but the tiny bundle, cached per source).
TESTS = [
    "tests/deploy/test_parity.py",
    "tests/deploy/test_integrity.py",
    "tests/mscnn/test_variants.py",
    "tests/mscnn/test_shapes.py",
]
# Survivors that cannot change behaviour: (module, text of the mutated line, reason).
EQUIVALENT: list[tuple[str, str, str]] = [
    (
        "deploy.parity",
        "if expected.size else 1.0",
        "an empty reference has an empty difference: max abs 0, so 0 / 1.0 == 0 as before",
    ),
    ("deploy.parity", ".astype(None)", "numpy's astype(None) casts to float64, as before"),
    (
        "mscnn.leads",
        "variant.load_state_dict(state,",
        "the state comes from a model of the same config: every key matches, strict or not",
    ),
    (
        "deploy.bundle",
        "Manifest.from_json(text, )",
        "from_json's default file name is 'manifest.json', the name passed",
    ),
    ("deploy.files", "os.pread(fd, 2 << 20", "a larger read size gives the same digest"),
    ("deploy.files", "os.pread(fd, 1 << 21", "a larger read size gives the same digest"),
    ("deploy.bundle", 'line.split(":", )', "a CPU flag never holds a colon"),
    ("deploy.bundle", 'line.split(":", 2)', "a CPU flag never holds a colon"),
    ("deploy.bundle", 'line.rsplit(":", 1)', "a CPU flag never holds a colon"),
    (
        "deploy.bundle",
        "tvm.cuda(None).exist",
        "without a GPU device 0 and this one are both absent: seen only on a GPU machine",
    ),
    (
        "deploy.bundle",
        "tvm.cuda(1).exist",
        "without a GPU device 0 and 1 are both absent: seen only on a machine with one GPU",
    ),
    (
        "deploy.files",
        "os.O_RDONLY & os.O_CLOEXEC",
        "O_RDONLY is 0: only close-on-exec is lost, seen only if another thread execs "
        "during the hash",
    ),
]
# Planted bugs mutmut cannot make (it changes code inside functions, not module-level
# tables), each of which a named test must catch: (what, file, old text, new text, tests);
# an old text starting "re:" is a regular expression (so a reformat does not lose it).
PLANTED = [
    (
        "cpu tolerance 100x looser",
        "deploy/parity.py",
        '"cpu": 1e-5',
        '"cpu": 1e-3',
        "tests/deploy/test_parity.py",
    ),
    (
        "cuda tolerance 100x looser",
        "deploy/parity.py",
        '"cuda": 1e-4',
        '"cuda": 1e-2',
        "tests/deploy/test_parity.py",
    ),
    (
        "3-lead set I, II, V1",
        "mscnn/leads.py",
        '"3": ("I", "II", "V2")',
        '"3": ("I", "II", "V1")',
        "tests/mscnn/test_variants.py",
    ),
    (
        "6-lead set without aVF",
        "mscnn/leads.py",
        '"6": ("I", "II", "III", "aVR", "aVL", "aVF")',
        '"6": ("I", "II", "III", "aVR", "aVL", "V1")',
        "tests/mscnn/test_variants.py",
    ),
    (
        "12 leads in another order",
        "mscnn/leads.py",
        r're:"V1",(\s*)"V2",',
        r'"V2",\1"V1",',
        "tests/mscnn/test_variants.py",
    ),
    (
        "count_macs without the kernel size",
        "mscnn/model.py",
        "per_out = conv.in_channels // self.groups * conv.kernel_size",
        "per_out = conv.in_channels // self.groups",
        "tests/mscnn/test_shapes.py",
    ),
]


def mutmut_config() -> str:
    """The [tool.mutmut] table for the copy's pyproject.toml."""
    sources = PACKAGES  # all three, so the tests import each from the copy
    lines = [
        "[tool.mutmut]",
        f"source_paths = {sources!r}",
        f"only_mutate = {sorted(MUTATE)!r}",
        f"pytest_add_cli_args_test_selection = {TESTS!r}",
        "use_git_change_detection = false",
        # torch's thread pools do not survive a fork from a process that has run a model
        # (the child hangs without using CPU): fork mutants from a server that has not.
        'process_isolation = "forkserver"',
        # A mutant whose tests take 4x their measured time plus 10 s (a forked pytest
        # session's start, on a busy machine) is counted as a timeout.
        "timeout_multiplier = 4.0",
        "timeout_constant = 10.0",
    ]
    return "\n".join(lines) + "\n"


def prepare() -> None:
    """A fresh copy of the sources and tests, with the mutmut table added."""
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", "*.pyc")
    for folder in [*PACKAGES, "tests"]:
        shutil.copytree(ROOT / folder, WORK / folder, ignore=ignore)
    pyproject = (ROOT / "pyproject.toml").read_text()
    if "[tool.mutmut]" in pyproject:
        sys.exit(
            "error: pyproject.toml has its own [tool.mutmut]; the table lives in "
            "tests/mutation/mutate.py"
        )
    (WORK / "pyproject.toml").write_text(pyproject + "\n" + mutmut_config())
    tomllib.loads((WORK / "pyproject.toml").read_text())  # still valid TOML


def mutmut(*args: str, timeout: float | None = None) -> tuple[int, str]:
    """Run the mutmut CLI in the copy; on timeout stop its whole process group."""
    exe = Path(sys.executable).with_name("mutmut")
    proc = subprocess.Popen(
        [str(exe), *args],
        cwd=WORK,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        return -1, out
    return proc.returncode, out


def results() -> dict[str, str]:
    code, out = mutmut("results", "--all", "true")
    if code != 0:
        sys.exit(f"error: mutmut results failed:\n{out}")
    found = {}
    for line in out.splitlines():
        m = re.match(r"\s+(\S+__mutmut_\d+): (.+)$", line)
        if m and any(_matches(m[1], p) for ps in MUTATE.values() for p in ps):
            found[m[1]] = m[2].strip()
    return found


def _matches(name: str, pattern: str) -> bool:
    from fnmatch import fnmatchcase

    return fnmatchcase(name, pattern)


def diff_of(name: str) -> str:
    _, out = mutmut("show", name)
    return "\n".join(line for line in out.splitlines()[1:] if line.strip())


def equivalent_reason(name: str, diff: str) -> str | None:
    added = [line[1:].strip() for line in diff.splitlines() if line.startswith("+ ")]
    added += [
        line[1:].strip()
        for line in diff.splitlines()
        if line.startswith("+") and not line.startswith("+++")
    ]
    for module, text, reason in EQUIVALENT:
        if name.startswith(module + ".") and any(text in line for line in added):
            return reason
    return None


def plant(what: str, rel: str, old: str, new: str, tests: str) -> str | None:
    """Run `tests` on the copy with one bug planted: the tests that failed, or None."""
    path = WORK / rel
    source = path.read_text()
    regex = old.startswith("re:")
    pattern = old[3:] if regex else re.escape(old)
    planted_source, found = re.subn(pattern, lambda m: m.expand(new) if regex else new, source)
    if found != 1:
        return f"(not planted: {old!r} is not in {rel} exactly once; update PLANTED)"
    path.write_text(planted_source)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", tests],
            cwd=WORK,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        path.write_text(source)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, re.MULTILINE)
    if done.returncode == 0 or not failed:
        return None
    return ", ".join(failed)


def planted() -> int:
    """Every planted bug must make a test fail; the count of those that did not."""
    missed = 0
    print("\nplanted bugs:")
    for what, rel, old, new, tests in PLANTED:
        caught = plant(what, rel, old, new, tests)
        unplanted = caught is not None and caught.startswith("(")
        missed += caught is None or unplanted
        verdict = caught if unplanted else f"caught by {caught}" if caught else "NOT CAUGHT"
        print(f"  {what}: {verdict}", flush=True)
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=900, help="seconds for mutmut run")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--only", default="", help="comma-separated files: " + ", ".join(MUTATE))
    args = parser.parse_args()
    only = [m for m in args.only.split(",") if m]
    unknown = sorted(set(only) - set(MUTATE))
    if unknown:
        sys.exit(f"error: --only {', '.join(unknown)}: choose from {', '.join(MUTATE)}")
    for module in only and set(MUTATE) - set(only):
        del MUTATE[module]
    if not Path(sys.executable).with_name("mutmut").exists():
        sys.exit(
            "error: mutmut is not installed; run `make mutation` (installs the pinned "
            "`mutation` extra) or pip install -e '.[mutation]'"
        )
    prepare()
    patterns = [p for ps in MUTATE.values() for p in ps]
    print(
        f"mutating {', '.join(MUTATE)}\nagainst {' '.join(TESTS)}\n"
        f"budget {args.budget:.0f} s, {args.jobs} at a time, in {WORK}",
        flush=True,
    )
    start = time.monotonic()
    code, out = mutmut("run", "--max-children", str(args.jobs), *patterns, timeout=args.budget)
    seconds = time.monotonic() - start
    (WORK / "run.log").write_text(out)
    if code not in (0, -1):
        print(out[-4000:])
        sys.exit(f"error: mutmut run exited {code}; log in {WORK / 'run.log'}")
    status = results()
    counts: dict[str, int] = {}
    for s in status.values():
        counts[s] = counts.get(s, 0) + 1
    survivors = sorted(n for n, s in status.items() if s in ("survived", "no tests"))
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    tested = killed + len(survivors) + counts.get("suspicious", 0)
    print(
        f"\n{len(status)} mutants in {seconds:.0f} s"
        + (" (budget ran out)" if code == -1 else "")
        + ": "
        + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    )
    if tested:
        print(
            f"mutation score: {killed}/{tested} = {100 * killed / tested:.1f}% of the "
            "checked mutants killed"
        )
    new = 0
    for name in survivors:
        diff = diff_of(name)
        reason = equivalent_reason(name, diff)
        new += reason is None
        label = f"equivalent: {reason}" if reason else "SURVIVED"
        print(f"\n--- {name} ({status[name]}; {label})\n{diff}")
    print(f"\n{len(survivors)} survivors, {len(survivors) - new} known equivalent, {new} not")
    unchecked = counts.get("not checked", 0)
    if unchecked:
        print(f"{unchecked} mutants not checked within the budget: raise --budget")
    missed = planted()
    return 1 if new or missed else 0


if __name__ == "__main__":
    sys.exit(main())
