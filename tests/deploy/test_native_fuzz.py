"""mscnn-run's readers under a bounded, seeded mutation fuzz, built with AddressSanitizer
and UBSan (deploy/native/fuzz/fuzz.cc): the manifest reader (tvm-ffi's JSON parser, our
structural scan and the typed checks), the .npy reader, the ELF check of model.so,
Bundle::Open with the verification of every file, and --stream's raw sample reader. Every
case must end in success or a one-line refusal, with no sanitizer report.

The seed and the time budget are fixed (MSCNN_FUZZ_SECONDS, 40 s over the five targets by
default), so CI time is bounded and the same seed replays the same cases; the number of
cases depends on the machine. The seeds are the real x86_64 bundle and every hostile
manifest and input of the native case table, and raw samples, text and archives for the
stream reader."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from native_cases import CROSS_CC, ROWS, Setup, rehash

ROOT = Path(__file__).resolve().parents[2]
SEED = 20261125
BUDGET = float(os.environ.get("MSCNN_FUZZ_SECONDS", "40"))
SHARE = {"manifest": 0.3, "npy": 0.15, "elf": 0.1, "bundle": 0.35, "raw": 0.1}
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:exitcode=86:abort_on_error=0:allocator_may_return_null=1",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1:exitcode=87",
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzzer() -> Path:
    """The ASan + UBSan build of the harness (make -C deploy/native fuzz)."""
    libasan = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True,
                             text=True).stdout.strip()  # fmt: skip
    if not Path(libasan).is_file():
        pytest.skip("g++ has no AddressSanitizer runtime (Debian: apt-get install libasan8)")
    out = ROOT / "build" / "native" / "fuzz"
    done = subprocess.run(["make", "-C", str(ROOT / "deploy" / "native"), "fuzz", f"FUZZ_OUT={out}",
                           f"PYTHON={sys.executable}", "-j2"], capture_output=True, text=True,
                          timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out / "mscnn-fuzz"


def _library(arch: str, path: Path) -> Path:
    """A trivial shared library for `arch`: a valid ELF layout to mutate."""
    source = path.with_suffix(".c")
    source.write_text("int answer(void) { return 42; }\n")
    subprocess.run([CROSS_CC[arch], "-shared", "-fPIC", "-o", str(path), str(source)], check=True)
    return path


def _small_bundle(base: Path, folder: Path) -> Path:
    """The real bundle with a tiny model.so and tiny golden outputs, rehashed: consistent,
    and quick to verify, so the fuzz spends its time on the readers, not on SHA-256."""
    bundle = Path(shutil.copytree(base, folder / "bundle"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    for rel in [r for r in manifest["files"] if r != "model.so" and not r.startswith("golden/")]:
        manifest["files"].pop(rel)
        (bundle / rel).unlink()
    for case in manifest["golden"]:
        np.save(bundle / case["output"], np.ones((1, 2, 3), "<f4"))
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    _library("x86_64", bundle / "model.so")
    rehash(bundle)
    return bundle


@pytest.fixture(scope="module")
def corpus(cpsc_bundles, tmp_path_factory) -> dict[str, list[Path]]:
    """Seed files per target: the real bundle's files, and every manifest and input file
    the native case table builds."""
    work = tmp_path_factory.mktemp("fuzz-corpus")
    base = cpsc_bundles["x86_64"].path
    setup = Setup("x86_64", base, cpsc_bundles["aarch64"].path, work / "cases", {})
    for row in ROWS:
        if "library" not in row.name:  # the NaN/Inf libraries are not built here
            row.make(setup, setup.folder(row.name))
    small = _small_bundle(base, work)
    cases = sorted(setup.work.rglob("*"))
    manifests = [p for p in cases if p.name == "manifest.json" and p.is_file()
                 and not p.is_symlink() and p.stat().st_size < 1 << 18]  # fmt: skip
    inputs = [p for p in cases if p.suffix == ".npy" and p.is_file() and not p.is_symlink()]
    head = work / "model-head.so"  # the real library's headers (the whole is 1 MB: slow)
    head.write_bytes((base / "model.so").read_bytes()[:4096])
    libraries = [_library(arch, work / f"{arch}.so") for arch in CROSS_CC]
    raw = work / "raw"  # what --stream is given: raw samples, and the formats it refuses
    raw.mkdir()
    x = np.load(base / setup.golden["input"]).astype("<f4").reshape(-1)
    x.tofile(raw / "golden.f32")
    rows = "".join(f"{i},{v:.4f}\n" for i, v in enumerate(x[:64]))
    (raw / "rec.csv").write_text("time,ecg\n" + rows)
    (raw / "rec.hea").write_text("rec 1 500 5000\nrec.dat 16 1000 16 0 0 0 0 ECG\n")
    np.savez(raw / "rec.npz", ecg=x)
    return {
        "manifest": [base / "manifest.json", small / "manifest.json", *manifests],
        "npy": sorted(base.glob("golden/*.npy")) + inputs,
        "elf": [*libraries, head],
        "bundle": [small / "manifest.json"],
        "raw": [*sorted(raw.iterdir()), *sorted(base.glob("golden/*.npy"))],
        "bundle_dir": [small],
    }


@pytest.mark.parametrize("target", list(SHARE))
def test_fuzz(target, fuzzer, corpus, tmp_path):
    """One target for its share of the budget: exit 0, no findings, no sanitizer report."""
    seeds = corpus[target]
    seconds = BUDGET * SHARE[target]
    argv = [str(fuzzer), target, "--seed", str(SEED), "--seconds", f"{seconds:.1f}",
            "--work", str(tmp_path)]  # fmt: skip
    if target == "bundle":  # the harness rewrites its manifest: give it a private copy
        argv += ["--bundle", str(shutil.copytree(corpus["bundle_dir"][0], tmp_path / "bundle"))]
    done = subprocess.run([*argv, *map(str, seeds)], capture_output=True, text=True,
                          env={**os.environ, **SANITIZER_ENV}, timeout=seconds + 120)  # fmt: skip
    summary, errors = done.stdout.strip(), done.stderr[-6000:]
    print(f"{summary} ({len(seeds)} seeds)")
    (fuzzer.parent / f"last-{target}.txt").write_text(summary + "\n")
    assert "Sanitizer" not in errors and "runtime error:" not in errors, errors
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{errors}"
    assert summary.startswith(f"fuzz {target}: ") and summary.endswith(" 0 findings"), summary
    cases = int(summary.split(": ")[1].split()[0])
    assert cases > len(seeds), f"only {cases} cases: the harness did not get to mutate"
