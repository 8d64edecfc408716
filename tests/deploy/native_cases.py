"""The behaviour `mscnn-run` must show, as data: one Case per command line, with the exit
code and the words its output must contain. test_native.py runs them for every
architecture (ARM under qemu-user). numpy and the standard library only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CROSS_CC = {"x86_64": "gcc", "aarch64": "aarch64-linux-gnu-gcc", "armv7": "arm-linux-gnueabihf-gcc"}
TOLERANCES = "cpu 1e-05\ncuda 0.0001\n"


@dataclass
class Case:
    name: str
    args: list[str]
    rc: int
    needles: list[str] = field(default_factory=list)  # expected in stderr (or stdout if rc 0)


@dataclass
class Outcome:
    case: Case
    rc: int
    out: str
    err: str
    seconds: float

    @property
    def problems(self) -> list[str]:
        found = []
        if self.rc != self.case.rc:
            found.append(f"exit {self.rc}, expected {self.case.rc}")
        lines = [line for line in self.err.splitlines() if line.strip()]
        if self.case.rc == 2 and (len(lines) != 1 or not lines[0].startswith("error: ")):
            found.append(f"stderr is not one 'error:' line: {self.err!r}")
        text = (self.err if self.case.rc == 2 else self.out).lower()
        found += [f"missing {n!r}" for n in self.case.needles if n.lower() not in text]
        return found


def run(prefix: list[str], runner: str, case: Case) -> Outcome:
    start = time.monotonic()
    p = subprocess.run([*prefix, runner, *case.args], capture_output=True, text=True, timeout=600)
    return Outcome(case, p.returncode, p.stdout, p.stderr, time.monotonic() - start)


def rehash(bundle: Path) -> None:
    """Make the manifest agree with the files again, as a consistent (if wrong) bundle."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    for rel, entry in manifest["files"].items():
        data = (bundle / rel).read_bytes()
        entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


def edit_manifest(bundle: Path, edit) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=2))


def loader_probe(arch: str, work: Path, size: int, marker: Path) -> Path:
    """A shared library that creates `marker` when loaded, padded to `size` bytes."""
    src = work / "probe.c"
    src.write_text(
        "#include <stdio.h>\n"
        "__attribute__((constructor)) static void loaded(void) {\n"
        f'  FILE* f = fopen("{marker}", "w"); if (f) fclose(f);\n'
        "}\n"
    )
    lib = work / "probe.so"
    subprocess.run([CROSS_CC[arch], "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    data = lib.read_bytes()
    if len(data) > size:
        raise SystemExit(f"probe library ({len(data)} bytes) larger than model.so ({size})")
    lib.write_bytes(data + b"\0" * (size - len(data)))
    return lib


def run_cases(
    runner: str, arch: str, prefix: list[str], bundles: list[Path], foreign: Path, work: Path
) -> tuple[list[str], list[str]]:
    """Run every case against `runner`; returns (report lines, problems)."""
    work.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    roundtrips = []
    for b in bundles:
        cases.append(Case(f"check {b.name}", [str(b), "--check"], 0, ["check: pass"]))
        manifest = json.loads((b / "manifest.json").read_text())
        g = manifest["golden"][0]
        y = work / f"{b.name}.{g['name']}.npy"
        cases.append(Case(f"round trip {b.name}",
                          [str(b), "--input", str(b / g["input"]), "--output", str(y)], 0,
                          ["wrote"]))  # fmt: skip
        roundtrips.append((y, b / g["output"]))
    marker = work / "probe-was-loaded"
    control = work / "probe-control-was-loaded"
    cases += refusal_cases(arch, bundles[0], foreign, work, marker, control)

    report, problems = [], []
    for case in cases:
        o = run(prefix, runner, case)
        shown = o.err.strip() or (o.out.strip().splitlines() or [""])[-1]
        report.append(f"{'ok  ' if not o.problems else 'FAIL'} {case.name} [{o.seconds:.1f} s]: "
                      f"{shown}")  # fmt: skip
        problems += [f"{case.name}: {p}" for p in o.problems]

    tol = subprocess.run([*prefix, runner, "--tolerances"], capture_output=True, text=True)
    if tol.returncode != 0 or tol.stdout != TOLERANCES:
        problems.append(f"--tolerances printed {tol.stdout!r}")
    if marker.exists():
        problems.append("a replaced model.so was loaded before its hash was checked")
    if not control.exists():
        problems.append("the control library was never loaded: the probe proves nothing")
    for got_path, want_path in roundtrips:
        if not got_path.exists():
            problems.append(f"round trip {got_path.name}: no output written")
            continue
        got, want = np.load(got_path), np.load(want_path)
        if got.shape != want.shape or got.dtype != np.dtype("<f4"):
            problems.append(f"round trip {got_path.name}: {got.shape} {got.dtype.str}")
            continue
        norm = float(np.abs(got.astype(np.float64) - want).max()) / float(np.abs(want).max())
        if not norm <= 1e-5:
            problems.append(f"round trip {got_path.name}: normalised error {norm:.3g}")
    return report, problems


def refusal_cases(
    arch: str, base: Path, foreign: Path, work: Path, marker: Path, control: Path
) -> list[Case]:
    """Tampered bundles, bad manifests and bad inputs, built as copies of `base`."""
    cases: list[Case] = []
    manifest = json.loads((base / "manifest.json").read_text())
    shape = tuple(manifest["input"]["shape"])
    golden_in = base / manifest["golden"][0]["input"]

    def copy(name: str) -> Path:
        dst = work / name
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(base, dst)
        return dst

    # Integrity: refused before model.so is loaded.
    flipped = copy("flipped")
    data = bytearray((flipped / "model.so").read_bytes())
    data[len(data) // 2] ^= 0x01
    (flipped / "model.so").write_bytes(bytes(data))
    cases.append(
        Case(
            "model.so one bit flipped",
            [str(flipped), "--check"],
            2,
            ["model.so", "sha256 mismatch", "not loaded"],
        )
    )

    # A library that leaves a marker file when loaded, in place of model.so: refused
    # unloaded; once the manifest is rehashed to match it, loaded (the control that
    # shows the marker would appear) and still refused, as it is no VM executable.
    probed = copy("probed")
    size = (probed / "model.so").stat().st_size
    shutil.copy(loader_probe(arch, work, size, marker), probed / "model.so")
    cases.append(
        Case(
            "model.so replaced (same size)",
            [str(probed), "--check"],
            2,
            ["model.so", "sha256 mismatch"],
        )
    )
    rehashed = copy("probe-rehashed")
    shutil.copy(loader_probe(arch, work, size, control), rehashed / "model.so")
    rehash(rehashed)
    cases.append(
        Case(
            "model.so not a VM (rehashed)",
            [str(rehashed), "--check"],
            2,
            ["no Relax VM executable"],
        )
    )

    truncated = copy("truncated")
    (truncated / "model.so").write_bytes((truncated / "model.so").read_bytes()[:4096])
    cases.append(
        Case("model.so truncated", [str(truncated), "--check"], 2, ["model.so", "size mismatch"])
    )

    missing = copy("missing-golden")
    missing_rel = manifest["golden"][0]["output"]
    (missing / missing_rel).unlink()
    cases.append(
        Case("golden file missing", [str(missing), "--check"], 2, [missing_rel, "missing"])
    )

    # The manifest itself.
    cases.append(Case("no such folder", [str(work / "nowhere"), "--check"], 2, ["does not exist"]))
    empty = work / "empty"
    empty.mkdir(exist_ok=True)
    cases.append(Case("no manifest", [str(empty), "--check"], 2, ["no manifest.json"]))
    bad_json = copy("bad-json")
    (bad_json / "manifest.json").write_text('{"schema": "mscnn-edge/bundle",')
    cases.append(
        Case("manifest not JSON", [str(bad_json), "--info"], 2, ["not valid JSON", "line"])
    )
    for name, edit, needles in [
        ("wrong schema", lambda m: m.update(schema="other/thing"), ["not an mscnn-edge bundle"]),
        ("schema_version 2", lambda m: m.update(schema_version=2), ["schema_version 2"]),
        ("key missing", lambda m: m.pop("input"), ['"input" is missing']),
        ("bad sha256 field", lambda m: m["files"]["model.so"].update(sha256="xyz"), ["sha256"]),
        (
            "path escapes bundle",
            lambda m: m["files"].update({"../x": {"sha256": "0" * 64, "bytes": 1}}),
            ["../x"],
        ),
    ]:
        d = copy(name.replace(" ", "-"))
        edit_manifest(d, edit)
        cases.append(Case(f"manifest: {name}", [str(d), "--check"], 2, needles))

    cases.append(
        Case(
            "bundle of another arch",
            [str(foreign), "--check"],
            2,
            ["is built for", "this mscnn-run is built for " + arch],
        )
    )

    # A consistent bundle whose input shape the model does not take: the TVM runtime
    # raises, and the runner must report it, not crash.
    reshaped = copy("reshaped")
    half = (*shape[:-1], shape[-1] // 2)
    for g in manifest["golden"]:
        np.save(reshaped / g["input"], np.zeros(half, "<f4"))

    def set_shape(m):
        m["input"]["shape"] = list(half)

    edit_manifest(reshaped, set_shape)
    rehash(reshaped)
    cases.append(Case("TVM runtime error", [str(reshaped), "--check"], 2, ["TVM runtime failed"]))

    # A consistent bundle whose golden output is off by 1e-4 of its scale: a parity
    # failure, exit 1, not a refusal.
    drifted = copy("drifted")
    out_rel = manifest["golden"][0]["output"]
    want = np.load(drifted / out_rel)
    np.save(drifted / out_rel, (want + 1e-4 * np.abs(want).max()).astype("<f4"))
    rehash(drifted)
    cases.append(Case("golden mismatch", [str(drifted), "--check"], 1, ["FAIL", "check: FAIL 1/2"]))

    # Inputs.
    x = np.load(golden_in)
    inputs = work / "inputs"
    inputs.mkdir(exist_ok=True)
    bad_inputs = {
        "float64": (x.astype("<f8"), ["'<f8' (float64)"]),
        "big-endian": (x.astype(">f4"), ["big-endian float32"]),
        "int32": (x.astype("<i4"), ["'<i4' (int32)"]),
        "fortran order": (np.asfortranarray(np.repeat(x, 2, axis=0)), ["Fortran order"]),
        "wrong leads": (np.repeat(x, 2, axis=1), ["leads instead of"]),
        "wrong samples": (x[..., : shape[-1] // 2], ["samples instead of"]),
        "2-D": (x[0], ["2-D"]),
        "empty": (x[..., :0], ["empty"]),
        "NaN": (
            np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x).astype("<f4"),
            ["NaN or Inf", "sample 7"],
        ),
        "Inf": (
            np.where(np.arange(x.size).reshape(x.shape) == 3, np.inf, x).astype("<f4"),
            ["NaN or Inf"],
        ),
    }
    for name, (array, needles) in bad_inputs.items():
        path = inputs / (name.replace(" ", "-") + ".npy")
        np.save(path, array)
        if name == "fortran order":  # np.save writes Fortran arrays as such only if not C too
            assert array.flags.f_contiguous and not array.flags.c_contiguous
        cases.append(
            Case(
                f"input {name}",
                [str(base), "--input", str(path), "--output", str(work / "y.npy")],
                2,
                needles,
            )
        )
    raw = golden_in.read_bytes()
    for name, payload, needles in [
        ("truncated", raw[: len(raw) - 100], ["truncated"]),
        ("zero bytes", b"", ["empty file"]),
        ("not .npy", b"lead I,lead II\n0.1,0.2\n", ["not a .npy file"]),
    ]:
        path = inputs / (name.replace(" ", "-") + ".npy")
        path.write_bytes(payload)
        cases.append(
            Case(
                f"input {name}",
                [str(base), "--input", str(path), "--output", str(work / "y.npy")],
                2,
                needles,
            )
        )
    cases.append(
        Case(
            "input missing",
            [str(base), "--input", str(inputs / "none.npy"), "--output", str(work / "y.npy")],
            2,
            ["cannot read"],
        )
    )
    cases.append(
        Case(
            "output folder missing",
            [str(base), "--input", str(golden_in), "--output", str(work / "no" / "y.npy")],
            2,
            ["not writable"],
        )
    )
    cases.append(
        Case(
            "output is a folder",
            [str(base), "--input", str(golden_in), "--output", str(work)],
            2,
            ["is a folder"],
        )
    )
    cases.append(
        Case(
            "output is a device",
            [str(base), "--input", str(golden_in), "--output", "/dev/full"],
            2,
            ["not a regular file"],
        )
    )
    cases.append(Case("no arguments", [], 2, ["no bundle"]))
    cases.append(Case("unknown option", [str(base), "--frobnicate"], 2, ["unknown option"]))
    cases.append(
        Case(
            "wrong --device",
            [str(base), "--check", "--device", "cuda"],
            2,
            ["built for device cpu"],
        )
    )
    cases.append(Case("--info", [str(base), "--info"], 0, ["name:", "leads:"]))
    return cases
