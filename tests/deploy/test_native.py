"""The native runner (deploy/native), built for x86-64, aarch64 and armv7 and run on this
machine (ARM under qemu-user): parity on every variant, and every refusal."""

import json
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from native_cases import Setup, rows_for, run_cases
from native_libs import nonfinite_library
from native_runner import EMULATOR, run_native, runner_for

import mscnn
from deploy.parity import TOLERANCES

ROOT = Path(__file__).resolve().parents[2]
ARCHES = ("x86_64", "aarch64", "armv7")

pytestmark = [pytest.mark.slow, pytest.mark.cross]


def run(arch: str, *args) -> subprocess.CompletedProcess:
    return run_native(arch, *args)


def bundle_of(arch, spec, cpsc_bundles, leadwise_bundles, arm_leadwise_bundles):
    if spec == "cpsc2019":
        return cpsc_bundles[arch].path
    if arch == "x86_64":
        return leadwise_bundles[spec].path
    return arm_leadwise_bundles[(arch, spec)].path


@pytest.mark.parametrize("spec", ["cpsc2019", *mscnn.LEAD_SETS])
@pytest.mark.parametrize("arch", ARCHES)
def test_parity_of_every_variant(arch, spec, cpsc_bundles, leadwise_bundles,
                                 arm_leadwise_bundles):  # fmt: skip
    bundle = bundle_of(arch, spec, cpsc_bundles, leadwise_bundles, arm_leadwise_bundles)
    done = run(arch, bundle, "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    worst = float(re.search(r"worst_normalised=(\S+)", done.stdout).group(1))
    assert worst <= TOLERANCES["cpu"]


def nonfinite_libraries(arch: str, bundle: Path, folder: Path) -> dict[str, Path]:
    """Libraries with `bundle`'s signature whose outputs are all NaN, or all Inf."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    shapes = manifest["input"]["shape"], manifest["output"]["shape"]
    folder.mkdir(parents=True, exist_ok=True)
    return {name: nonfinite_library(arch, *shapes, value, folder / f"{name}.so")
            for name, value in (("nan", np.nan), ("inf", np.inf))}  # fmt: skip


@pytest.mark.parametrize("arch", ARCHES)
def test_refusals_and_round_trips(arch, cpsc_bundles, tmp_path):
    """Every row of native_cases.ROWS: tampered files, symlinks out of the bundle, FIFOs and
    devices, hostile manifests and inputs, planted outputs, NaN/Inf libraries, another
    architecture. Exit 2 with one clear line (the library never loaded before its hash
    matched), exit 1 for a verdict of FAIL, nothing left behind; on x86_64 the Python
    runner refuses the rows marked so, too."""
    base = cpsc_bundles[arch].path
    foreign = cpsc_bundles["armv7" if arch == "aarch64" else "aarch64"].path
    setup = Setup(arch, base, foreign, tmp_path / "cases",
                  nonfinite_libraries(arch, base, tmp_path / "libraries"))  # fmt: skip
    report, problems = run_cases(str(runner_for(arch)), EMULATOR.get(arch, []), setup,
                                 python=arch == "x86_64")  # fmt: skip
    assert len(report) == len(rows_for(arch))
    assert not problems, "\n".join(problems + ["", *report])


def _interrupt_once(arch: str, bundle: Path, out: Path, sig: int) -> int | None:
    """Starts a run, waits for its temporary output to appear, sends `sig`: the exit
    status, or None when the run finished before the file was seen."""
    x = bundle / json.loads((bundle / "manifest.json").read_text())["golden"][0]["input"]
    argv = [*EMULATOR.get(arch, []), str(runner_for(arch)), str(bundle), "--input", str(x),
            "--output", str(out)]  # fmt: skip
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = out.with_name(f"{out.name}.partial-{p.pid}")
    deadline = time.monotonic() + 60
    while not partial.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.0005)
    if p.poll() is not None:
        out.unlink(missing_ok=True)
        return None
    p.send_signal(sig)
    return p.wait(timeout=60)


@pytest.mark.parametrize("arch", ARCHES)
def test_interrupted_run_leaves_no_partial_output(arch, cpsc_bundles, tmp_path):
    """SIGTERM or SIGINT while the output is being produced: the runner removes its
    temporary file and dies of the signal; nothing is left in the output folder."""
    bundle = cpsc_bundles[arch].path
    for sig in (signal.SIGTERM, signal.SIGINT):
        for _ in range(50):  # natively a run takes milliseconds: try until one is caught
            status = _interrupt_once(arch, bundle, tmp_path / "y.npy", sig)
            if status is not None:
                break
        assert status == -sig, f"exit status {status} after {sig.name}"
        assert list(tmp_path.iterdir()) == [], f"left after {sig.name}: {list(tmp_path.iterdir())}"


@pytest.mark.parametrize("arch", ARCHES)
def test_tolerances_are_the_python_table(arch):
    done = run(arch, "--tolerances")
    table = dict(line.split() for line in done.stdout.splitlines())
    assert {k: float(v) for k, v in table.items()} == TOLERANCES


def test_parity_sweep_runs_each_bundle_its_way(cpsc_bundles):
    """`make parity`'s engine: x86 in-process, ARM under qemu (here, as `QEMU_CASES=1`,
    its first golden case alone, said in the row), CUDA never 'passed' here."""
    for arch in ARCHES:
        runner_for(arch)
    folder = cpsc_bundles["x86_64"].path.parents[1]
    done = subprocess.run([sys.executable, "-m", "deploy", "parity", str(folder), "--runners",
                           str(ROOT / "build" / "native"), "--qemu-cases", "1"],
                          capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[2:-1]}
    assert "native (Python)" in rows["x86_64/cpsc2019-1lead"]
    assert "of " not in rows["x86_64/cpsc2019-1lead"]  # in process: every case
    cases = len(cpsc_bundles["aarch64"].manifest.golden)
    assert cases > 1
    assert f"qemu-aarch64 + mscnn-run, 1 of {cases} cases" in rows["aarch64/cpsc2019-1lead"]
    assert f"qemu-arm + mscnn-run, 1 of {cases} cases" in rows["armv7/cpsc2019-1lead"]
    for name in ("x86_64", "aarch64", "armv7"):
        assert rows[f"{name}/cpsc2019-1lead"].rstrip().endswith("pass")
    import tvm

    if not tvm.cuda(0).exist:
        assert rows["cuda/cpsc2019-1lead"].rstrip().endswith("not run")
        assert "not run: no GPU" in rows["cuda/cpsc2019-1lead"]


def test_package_runs_where_it_is_unpacked(cpsc_bundles, tmp_path):
    runner_for("aarch64")
    folder = cpsc_bundles["x86_64"].path.parents[1]
    done = subprocess.run([sys.executable, "-m", "deploy", "package", "aarch64", "--build",
                           str(folder), "--runners", str(ROOT / "build" / "native"), "--out",
                           str(tmp_path)], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    archive = tmp_path / "mscnn-edge-aarch64.tar.gz"
    assert f"({archive.stat().st_size / 1e6:.1f} MB)" in done.stdout
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path / "device", filter="data")
    top = "mscnn-edge-aarch64"
    assert {f"{top}/runner/mscnn-run", f"{top}/README.txt",
            f"{top}/bundles/cpsc2019-1lead/manifest.json"} <= names  # fmt: skip
    assert not any(n.endswith(".o") for n in names)
    home = tmp_path / "device" / top
    assert "qemu" not in (home / "README.txt").read_text()
    check = subprocess.run([*EMULATOR["aarch64"], str(home / "runner" / "mscnn-run"),
                            str(home / "bundles" / "cpsc2019-1lead"), "--check"],
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_runner_with_trusted_pub_beside_it_runs_only_what_that_key_signed(tiny, tmp_path):
    """A signed package's runner: trusted.pub beside mscnn-run is read at start; a signed
    bundle runs, an unsigned one and a --trust naming another key are refused (x86_64)."""
    from deploy.bundle import sign_bundle
    from deploy.signing import keygen, read_signing_key

    built = runner_for("x86_64")
    home = tmp_path / "runner"
    home.mkdir()
    shutil.copy(built, home / "mscnn-run")
    (home / "lib").symlink_to(built.parent / "lib")  # the runtime, found through the rpath
    for name in ("owner", "other"):
        keygen(tmp_path / name)
    shutil.copy(tmp_path / "owner.pub", home / "trusted.pub")

    def run_here(*args) -> subprocess.CompletedProcess:
        return subprocess.run([str(home / "mscnn-run"), *map(str, args)], capture_output=True,
                              text=True, timeout=120)  # fmt: skip

    unsigned = run_here(tiny, "--check")
    assert unsigned.returncode == 2 and "is not signed" in unsigned.stderr, unsigned.stderr
    sign_bundle(tiny, read_signing_key(tmp_path / "owner"))
    signed = run_here(tiny, "--check")
    assert signed.returncode == 0 and "check: pass" in signed.stdout, signed.stderr
    info = run_here(tiny, "--info").stdout
    assert "signature: signed by ed25519 key" in info and "verified: the trusted key" in info
    other = run_here(tiny, "--check", "--trust", tmp_path / "other.pub")
    assert other.returncode == 2 and "trusts only the key it was packaged with" in other.stderr
    sign_bundle(tiny, read_signing_key(tmp_path / "other"))
    resigned = run_here(tiny, "--check")
    assert resigned.returncode == 2 and "signed by another key" in resigned.stderr
