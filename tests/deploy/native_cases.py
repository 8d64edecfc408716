"""The behaviour `mscnn-run` must show, as data: ONE table (ROWS) of bundles, manifests,
inputs, outputs and arguments, good and hostile, each with the exit code and the words
its output must contain. test_native.py runs every row for every architecture (ARM under
qemu-user) and checks for each: the exit code; exactly one line on stderr, starting with
`error:`, for a refusal (and none otherwise); that it finished promptly; and that no file
was left behind. Rows marked `python` are also given to `python -m deploy` on x86_64, as
the positive control that the Python side refuses them too. numpy and the standard
library only; the NaN/Inf libraries are built by native_libs.py and passed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

CROSS_CC = {"x86_64": "gcc", "aarch64": "aarch64-linux-gnu-gcc", "armv7": "arm-linux-gnueabihf-gcc"}
TOLERANCES = "cpu 1e-05\ncuda 0.0001\nint8 0\nfp16 0.02\n"
SLOWDOWN = 10  # qemu-user against native: time budgets of emulated runs are this much longer


@dataclass
class Case:
    name: str
    args: list[str]
    rc: int
    needles: list[str] = field(default_factory=list)  # in stderr (refusal) or stdout
    python: bool = False  # x86_64: `python -m deploy` must refuse it too
    seconds: float = 300.0  # natively; a run that takes longer has hung
    wrap: list[str] = field(default_factory=list)  # command prefix (planting a file)
    after: Callable[[], list[str]] | None = None  # extra problems found afterwards
    planted: str = ""  # the wrap plants a symlink in the folder (not left by the runner)
    folder: Path | None = None  # where the case's files live (no file may appear there)


@dataclass
class Outcome:
    case: Case
    rc: int | None
    out: str
    err: str
    seconds: float
    left: list[str]  # files that appeared in the case's folder

    @property
    def problems(self) -> list[str]:
        if self.rc is None:
            return [f"still running after {self.seconds:.0f} s: it hangs"]
        found = []
        if self.rc != self.case.rc:
            found.append(f"exit {self.rc}, expected {self.case.rc}")
        lines = [line for line in self.err.splitlines() if line.strip()]
        if self.case.rc == 2 and (len(lines) != 1 or not lines[0].startswith("error: ")):
            found.append(f"stderr is not one 'error:' line: {self.err!r}")
        if self.case.rc != 2 and any(line.startswith("error") for line in lines):
            found.append(f"an error line although it did not refuse: {self.err!r}")
        if sum(line.startswith("check: ") for line in self.out.splitlines()) > 1:
            found.append(f"more than one 'check:' line: {self.out!r}")
        text = (self.err if self.case.rc == 2 else self.out).lower()
        found += [f"missing {n!r}" for n in self.case.needles if n.lower() not in text]
        found += [f"left behind: {name}" for name in self.left]
        return found + (self.case.after() if self.case.after else [])


def listing(folder: Path | None) -> set[str]:
    if folder is None or not folder.exists():
        return set()
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def run(prefix: list[str], runner: str, case: Case) -> Outcome:
    before = listing(case.folder)
    budget = case.seconds * (SLOWDOWN if prefix else 1)
    start = time.monotonic()
    try:
        p = subprocess.run([*case.wrap, *prefix, runner, *case.args], capture_output=True,
                           timeout=budget)  # fmt: skip
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = None, exc.stdout or b"", exc.stderr or b""
    left = sorted(listing(case.folder) - before)
    if case.planted:  # the wrap's own file, checked by the case's `after`
        left = [name for name in left if not (case.folder / name).is_symlink()]
    if case.rc == 0 and "--output" in case.args:  # the output itself may appear
        left = [name for name in left if not name.endswith(".npy") or ".partial-" in name]
    decode = lambda b: b.decode("utf-8", "backslashreplace")  # noqa: E731
    return Outcome(case, rc, decode(out), decode(err), time.monotonic() - start, left)


def rehash(bundle: Path) -> None:
    """Make the manifest agree with the files again, as a consistent (if wrong) bundle."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    for rel, entry in manifest["files"].items():
        data = (bundle / rel).read_bytes()
        entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


def flip_bit(path: Path, offset: int, mask: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def loader_probe(arch: str, work: Path, size: int, marker: Path) -> Path:
    """A shared library that creates `marker` when loaded, padded to `size` bytes."""
    src = work / f"{marker.name}.c"
    src.write_text(
        "#include <stdio.h>\n"
        "__attribute__((constructor)) static void loaded(void) {\n"
        f'  FILE* f = fopen("{marker}", "w"); if (f) fclose(f);\n'
        "}\n"
    )
    lib = work / f"{marker.name}.so"
    subprocess.run([CROSS_CC[arch], "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    data = lib.read_bytes()
    if len(data) > size:
        raise SystemExit(f"probe library ({len(data)} bytes) larger than model.so ({size})")
    lib.write_bytes(data + b"\0" * (size - len(data)))
    return lib


# --------------------------------------------------------------------------------------
# What a row is given to build its case from.


@dataclass
class Setup:
    arch: str
    base: Path  # a built bundle of this architecture (never written to)
    foreign: Path  # a bundle of another architecture
    work: Path
    libraries: dict[str, Path]  # "nan", "inf": libraries whose outputs are NaN / Inf
    marker: Path = field(init=False)  # created if the replaced model.so were ever loaded
    control: Path = field(init=False)  # created when the rehashed probe is loaded

    def __post_init__(self):
        self.manifest = json.loads((self.base / "manifest.json").read_text())
        self.golden = self.manifest["golden"][0]
        self.x = np.load(self.base / self.golden["input"])
        self.marker = self.work / "probe-was-loaded"
        self.control = self.work / "probe-control-was-loaded"

    @cached_property
    def keys(self) -> Path:
        """Two key pairs, made once: the owner's (`owner`, `owner.pub`) and another's."""
        folder = self.work / "keys"
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("owner", "other"):
            deploy_cli("keygen", folder / name)
        return folder

    @cached_property
    def signed(self) -> Path:
        """A copy of the base bundle signed by the owner's key (never written to)."""
        bundle = Path(shutil.copytree(self.base, self.work / "signed" / "bundle"))
        deploy_cli("sign", bundle, "--key", self.keys / "owner")
        return bundle

    def folder(self, name: str) -> Path:
        folder = self.work / name.replace(" ", "-").replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def copy(self, folder: Path) -> Path:
        return Path(shutil.copytree(self.base, folder / "bundle"))

    def edit(self, bundle: Path, change: Callable[[dict], object]) -> None:
        path = bundle / "manifest.json"
        manifest = json.loads(path.read_text())
        change(manifest)
        path.write_text(json.dumps(manifest, indent=2))


def deploy_cli(*args) -> None:
    subprocess.run([sys.executable, "-m", "deploy", *map(str, args)], check=True,
                   capture_output=True, timeout=300)  # fmt: skip


# A row makes its case from a Setup and its own folder: (args, extra Case fields).
Make = Callable[[Setup, Path], tuple[list[str], dict]]


@dataclass(frozen=True)
class Row:
    name: str
    make: Make
    rc: int
    needles: tuple[str, ...] = ()
    python: bool = False
    seconds: float = 300.0
    arches: tuple[str, ...] = ()  # only these architectures (qemu is slow); () for all


def rows_for(arch: str) -> list[Row]:
    return [row for row in ROWS if not row.arches or arch in row.arches]


def bundle_check(change: Callable[[Setup, Path], object], mode: str = "--check") -> Make:
    """A copy of the base bundle, changed by `change(setup, bundle)`, given to `mode`."""

    def make(s: Setup, folder: Path):
        bundle = s.copy(folder)
        change(s, bundle)
        return [str(bundle), mode], {}

    return make


def manifest(change: Callable[[dict], object], mode: str = "--check") -> Make:
    return bundle_check(lambda s, b: s.edit(b, change), mode)


def manifest_text(text: Callable[[Setup], str | bytes], mode: str = "--check") -> Make:
    def write(s: Setup, bundle: Path):
        data = text(s)
        (bundle / "manifest.json").write_bytes(data.encode() if isinstance(data, str) else data)

    return bundle_check(write, mode)


def rehashed(change: Callable[[Setup, Path], object]) -> Make:
    def both(s: Setup, bundle: Path):
        change(s, bundle)
        rehash(bundle)

    return bundle_check(both)


def run_input(write: Callable[[Setup, Path], str]) -> Make:
    """`--input` of the file `write(setup, folder)` returns, `--output` in the folder."""

    def make(s: Setup, folder: Path):
        return [str(s.base), "--input", write(s, folder), "--output", str(folder / "y.npy")], {}

    return make


def npy_input(array: Callable[[np.ndarray], np.ndarray]) -> Make:
    def write(s: Setup, folder: Path) -> str:
        np.save(folder / "x.npy", array(s.x))
        return str(folder / "x.npy")

    return run_input(write)


def raw_input(payload: Callable[[bytes], bytes]) -> Make:
    def write(s: Setup, folder: Path) -> str:
        (folder / "x.npy").write_bytes(payload((s.base / s.golden["input"]).read_bytes()))
        return str(folder / "x.npy")

    return run_input(write)


def _golden_run(s: Setup, output: Path | str) -> list[str]:
    """The golden input through the base bundle, to `output`."""
    return [str(s.base), "--input", str(s.base / s.golden["input"]), "--output", str(output)]


def run_output(output: Callable[[Setup, Path], str]) -> Make:
    return lambda s, folder: (_golden_run(s, output(s, folder)), {})


def args(make_args: Callable[[Setup, Path], list[str]]) -> Make:
    return lambda s, folder: (make_args(s, folder), {})


# --------------------------------------------------------------------------------------
# Changes the rows make.


def _golden_output(s: Setup) -> str:
    return s.golden["output"]


def _flip_model(s: Setup, b: Path) -> None:
    flip_bit(b / "model.so", (b / "model.so").stat().st_size // 2, 0x01)


def _probe(s: Setup, b: Path, marker: Path) -> None:
    size = (b / "model.so").stat().st_size
    shutil.copy(loader_probe(s.arch, b.parent, size, marker), b / "model.so")


def _truncate_model(s: Setup, b: Path) -> None:
    (b / "model.so").write_bytes((b / "model.so").read_bytes()[:4096])


def _outside(b: Path, rel: str) -> None:
    """Move `rel` out of the bundle and leave a symlink to it: the same bytes, the same
    hash, but a path that leaves the bundle."""
    outside = b.parent / ("outside-" + rel.replace("/", "-"))
    shutil.move(b / rel, outside)
    (b / rel).symlink_to(outside.resolve())


def _special(b: Path, rel: str, kind: str) -> None:
    (b / rel).unlink()
    {"fifo": os.mkfifo, "folder": os.mkdir}[kind](b / rel)


def _flip_golden(s: Setup, b: Path, rel: str) -> None:
    flip_bit(b / rel, (b / rel).stat().st_size - 3, 0x04)


def _exponent_flip(s: Setup, b: Path) -> None:
    """One bit flipped in the exponent of the golden output's largest value: a real change
    of the expected output (a mantissa bit might stay within tolerance)."""
    path = b / _golden_output(s)
    values = np.load(path)
    data_at = path.stat().st_size - values.nbytes
    flip_bit(path, data_at + 4 * int(np.abs(values).argmax()) + 3, 0x20)


def _drift(s: Setup, b: Path) -> None:
    path = b / _golden_output(s)
    want = np.load(path)
    np.save(path, (want + 1e-4 * np.abs(want).max()).astype("<f4"))


def _library(name: str) -> Callable[[Setup, Path], None]:
    return lambda s, b: shutil.copy(s.libraries[name], b / "model.so")


def _foreign_library(s: Setup, b: Path) -> None:
    shutil.copy(s.foreign / "model.so", b / "model.so")


def _reshape(s: Setup, b: Path) -> None:
    """A consistent bundle whose input shape the model does not take."""
    shape = s.manifest["input"]["shape"]
    half = [*shape[:-1], shape[-1] // 2]
    for g in s.manifest["golden"]:
        np.save(b / g["input"], np.zeros(half, "<f4"))
    s.edit(b, lambda m: m["input"].update(shape=half))


def _keys(count: int, duplicate: bool) -> Callable[[Setup], str]:
    """The real manifest with `count` extra unknown keys (11 bytes each)."""

    def text(s: Setup) -> str:
        body = json.dumps(s.manifest)[1:-1]
        extra = ",".join(f'"k{i:05d}":0' for i in range(count))
        return "{" + extra + "," + body + (',"k00000":0' if duplicate else "") + "}"

    return text


def _big_integer(s: Setup) -> str:
    text = json.dumps(s.manifest)
    return text.replace('"schema_version": ', '"schema_version": ' + "9" * 5000 + ', "x": ', 1)


def _shape(shape) -> Callable[[dict], None]:
    return lambda m: m["input"].update(shape=shape)


def _files_key(key: str) -> Callable[[dict], None]:
    return lambda m: m["files"].update({key: {"sha256": "0" * 64, "bytes": 1}})


def _future_keys(m: dict) -> None:
    m["model"] = {**m.get("model", {}), "task": "qrs_detection", "classes": ["N", "QRS"]}
    m["output"]["meaning"] = "logits"
    m["detect"] = {"kind": "threshold", "threshold": 0.5, "nested": {"deep": [1, [2, [3]]]}}


def _input_header(header_len: bytes, version: bytes = b"\x01\x00") -> Callable[[bytes], bytes]:
    return lambda raw: b"\x93NUMPY" + version + header_len + raw[10:]


def _npy_with_shape(shape: str) -> Callable[[bytes], bytes]:
    def payload(raw: bytes) -> bytes:
        header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}".ljust(127)
        return b"\x93NUMPY\x01\x00" + bytes([128, 0]) + header.encode() + b"\n" + b"\0" * 20000

    return payload


def _fifo_input(s: Setup, folder: Path) -> str:
    os.mkfifo(folder / "x.npy")
    return str(folder / "x.npy")


def _planted_partial(s: Setup, folder: Path):
    """A symlink planted where the runner creates its temporary output (the shell execs
    the runner, so `$$` is its pid): it must refuse, not write through it. The planted
    name is read back from the message."""
    victim = folder / "victim.txt"
    victim.write_text("untouched")
    out = folder / "y.npy"
    wrap = ["sh", "-c", 'ln -s "$1" "$2.partial-$$" && shift 2 && exec "$@"', "sh",
            str(victim), str(out)]  # fmt: skip
    links = lambda: [p for p in folder.iterdir() if p.is_symlink()]  # noqa: E731

    def after() -> list[str]:
        problems = [] if victim.read_text() == "untouched" else ["wrote through the symlink"]
        return problems + ([] if len(links()) == 1 else [f"planted links: {links()}"])

    return _golden_run(s, out), {"wrap": wrap, "after": after, "planted": "*"}


def _symlinked_output(s: Setup, folder: Path):
    """y.npy is a symlink to another file: the output replaces the link, the file stays."""
    victim = folder / "victim.txt"
    victim.write_text("untouched")
    (folder / "y.npy").symlink_to(victim)

    def after() -> list[str]:
        problems = [] if victim.read_text() == "untouched" else ["wrote through y.npy's link"]
        return problems + ([] if not (folder / "y.npy").is_symlink() else ["y.npy still a link"])

    return _golden_run(s, folder / "y.npy"), {"after": after}


def _round_trip(s: Setup, folder: Path):
    out = folder / "y.npy"

    def after() -> list[str]:
        if not out.exists():
            return ["no output written"]
        got, want = np.load(out), np.load(s.base / s.golden["output"])
        if got.shape != want.shape or got.dtype != np.dtype("<f4"):
            return [f"output {got.shape} {got.dtype.str}"]
        norm = float(np.abs(got.astype(np.float64) - want).max()) / float(np.abs(want).max())
        return [] if norm <= 1e-5 else [f"normalised error {norm:.3g}"]

    return _golden_run(s, out), {"after": after}


def _forged_name(s: Setup, folder: Path):
    bundle = s.copy(folder)
    s.edit(bundle, lambda m: m.update(name="x\nerror: forged"))
    return [str(bundle), "--check", "--device", "cuda"], {}


def _probe_case(marker_of: Callable[[Setup], Path], rehash_it: bool) -> Make:
    def change(s: Setup, b: Path):
        _probe(s, b, marker_of(s))
        if rehash_it:
            rehash(b)

    return bundle_check(change)


def _nan_at(index: int, value: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: np.where(np.arange(x.size).reshape(x.shape) == index, value, x).astype("<f4")


def signed_check(change: Callable[[Setup, Path], object], *flags: str,
                 key: str | None = "owner.pub") -> Make:  # fmt: skip
    """A copy of the owner-signed bundle, changed by `change`, checked trusting `key`."""

    def make(s: Setup, folder: Path):
        bundle = Path(shutil.copytree(s.signed, folder / "bundle"))
        change(s, bundle)
        trust = ["--trust", str(s.keys / key)] if key else []
        return [str(bundle), "--check", *trust, *flags], {}

    return make


def _resign(name: str) -> Callable[[Setup, Path], None]:
    return lambda s, b: deploy_cli("sign", b, "--key", s.keys / name)


def _signature(change: Callable[[bytes], bytes]) -> Callable[[Setup, Path], None]:
    def write(s: Setup, b: Path) -> None:
        (b / "manifest.sig").write_bytes(change((b / "manifest.sig").read_bytes()))

    return write


def _short_signature(data: bytes) -> bytes:
    """The file's right length, but a signature of 63 bytes (and padding)."""
    tag, key, value = data.split()
    return tag + b" " + key + b" " + value[:126] + b"  \n"


def _forge(s: Setup, b: Path) -> None:
    """model.so and manifest.json both rewritten, the hashes matching (the loader probe:
    loading it would create the marker); the old signature stays."""
    _probe(s, b, s.marker)
    rehash(b)


def _untouched(s: Setup, b: Path) -> None:
    pass


def _key_file(text: str) -> Callable[[Setup, Path], None]:
    return lambda s, b: (s.keys / "garbage.pub").write_text(text)


_GOLDEN_IN = lambda s: s.golden["input"]  # noqa: E731
_X86 = ("x86_64",)
_MANIFEST = "manifest.json"

# --------------------------------------------------------------------------------------
# THE table. Exit codes: 0 done, 1 a golden output did not match, 2 refused.

# fmt: off
ROWS: list[Row] = [
    # A good bundle, and the ways of using it.
    Row("check", bundle_check(lambda s, b: None), 0, ("check: pass",)),
    Row("round trip", _round_trip, 0, ("wrote",)),
    Row("--info", bundle_check(lambda s, b: None, "--info"), 0, ("name:", "leads:")),
    Row("unknown keys of newer builds", manifest(_future_keys), 0, ("check: pass",)),
    Row("golden name forging a line", manifest(lambda m: m["golden"][0].update(
        name="noise\ncheck: pass 2/2")), 0, ("check: pass", "\\n")),
    Row("output path is a symlink", _symlinked_output, 0, ("wrote",)),
    # Integrity of the files: refused before model.so is loaded.
    Row("model.so one bit flipped", bundle_check(_flip_model), 2,
        ("model.so", "sha256 mismatch", "not loaded")),
    Row("model.so replaced (same size)", _probe_case(lambda s: s.marker, False), 2,
        ("model.so", "sha256 mismatch")),
    Row("model.so not a VM (rehashed)", _probe_case(lambda s: s.control, True), 2,
        ("no Relax VM executable",)),
    Row("model.so truncated", bundle_check(_truncate_model), 2, ("model.so", "size mismatch")),
    Row("model.so truncated to 4 KiB, rehashed", rehashed(_truncate_model), 2,
        ("model.so", "past the end of the file")),
    Row("model.so not ELF, rehashed", rehashed(lambda s, b: (b / "model.so").write_text("#!")),
        2, ("not an ELF shared library",)),
    Row("model.so of another arch, rehashed", rehashed(_foreign_library), 2, ("is code for",)),
    Row("model.so a symlink out of the bundle", bundle_check(lambda s, b: _outside(b, "model.so")),
        2, ("model.so", "symbolic link")),
    Row("model.onnx a FIFO", bundle_check(lambda s, b: _special(b, "model.onnx", "fifo")), 2,
        ("model.onnx", "not a regular file"), seconds=20),
    Row("model.onnx a folder", bundle_check(lambda s, b: _special(b, "model.onnx", "folder")), 2,
        ("model.onnx", "not a regular file")),
    Row("golden file missing", bundle_check(lambda s, b: (b / _golden_output(s)).unlink()), 2,
        ("golden/", "missing")),
    Row("golden input one bit flipped",
        bundle_check(lambda s, b: _flip_golden(s, b, _GOLDEN_IN(s))), 2,
        ("golden/", "sha256 mismatch"), python=True),
    Row("golden output one bit flipped",
        bundle_check(lambda s, b: _flip_golden(s, b, _golden_output(s))), 2,
        ("golden/", "sha256 mismatch"), python=True),
    Row("golden/ a symlink out of the bundle", bundle_check(lambda s, b: _outside(b, "golden")), 2,
        ("golden", "symbolic link")),
    Row("golden file a symlink out of the bundle",
        bundle_check(lambda s, b: _outside(b, _GOLDEN_IN(s))), 2, ("symbolic link",)),
    # Signatures (deploy/signing.py): with a trusted key, checked before anything is parsed,
    # hashed or loaded. The forged bundle, and the signed one, on every architecture.
    Row("signed, trusted", signed_check(_untouched), 0, ("check: pass",)),
    Row("forged: library and manifest rewritten, hashes matching", signed_check(_forge), 2,
        ("bad signature", "not loaded"), python=True),
    Row("signed, no key given", signed_check(_untouched, key=None), 0, ("check: pass",),
        arches=_X86),
    Row("--info of a signed bundle", lambda s, f: ([str(s.signed), "--info"], {}), 0,
        ("signature: signed by ed25519 key",), arches=_X86),
    Row("unsigned bundle, a key given", signed_check(lambda s, b: (b / "manifest.sig").unlink()),
        2, ("is not signed",), python=True, arches=_X86),
    Row("manifest changed after signing", signed_check(lambda s, b: s.edit(
        b, lambda m: m.update(name="renamed"))), 2, ("bad signature",), python=True, arches=_X86),
    Row("signed by another key", signed_check(_resign("other")), 2, ("signed by another key",),
        python=True, arches=_X86),
    Row("signature truncated", signed_check(_signature(lambda d: d[:100])), 2, ("is 100 bytes",),
        python=True, arches=_X86),
    Row("signature padded to 1 MiB", signed_check(_signature(lambda d: d + b"\0" * (1 << 20))), 2,
        ("a signature file is exactly 218",), python=True, arches=_X86),
    Row("signature of 63 bytes", signed_check(_signature(_short_signature)), 2,
        ("not a signature file",), python=True, arches=_X86),
    Row("manifest.sig a symlink", signed_check(lambda s, b: _outside(b, "manifest.sig")), 2,
        ("manifest.sig", "symbolic link"), arches=_X86),
    Row("--trust a private key", signed_check(_untouched, key="owner"), 2, ("is a private key",),
        python=True, arches=_X86),
    Row("--trust a file that is not a key", signed_check(_key_file("ssh-ed25519 AAAA"),
        key="garbage.pub"), 2, ("is not a key",), python=True, arches=_X86),
    Row("--require-signature without a key", signed_check(_untouched, "--require-signature",
        key=None), 2, ("needs a key",), python=True, arches=_X86),
    # Consistent (rehashed) bundles that run: the verdict, not a refusal.
    Row("golden output changed, rehashed", rehashed(_exponent_flip), 1,
        ("FAIL", "check: FAIL 1/2"), python=True),
    Row("golden output drifted 1e-4, rehashed", rehashed(_drift), 1,
        ("FAIL", "check: FAIL 1/2"), python=True),
    Row("library that outputs NaN", rehashed(_library("nan")), 1,
        ("FAIL", "NaN or Inf", "check: FAIL 0/2"), python=True),
    Row("library that outputs Inf", rehashed(_library("inf")), 1,
        ("FAIL", "NaN or Inf", "check: FAIL 0/2"), python=True),
    Row("TVM runtime error", rehashed(_reshape), 2, ("TVM runtime failed",)),
    # The manifest file itself: bounded, a regular file, parsed in linear time.
    Row("no such folder", args(lambda s, f: [str(f / "nowhere"), "--check"]), 2,
        ("does not exist",)),
    Row("bundle is a file", args(lambda s, f: [str(s.base / _MANIFEST), "--check"]), 2,
        ("not a folder",)),
    Row("no manifest", bundle_check(lambda s, b: (b / _MANIFEST).unlink()), 2,
        ("no manifest.json",)),
    Row("manifest a symlink to /dev/zero", bundle_check(lambda s, b: ((b / _MANIFEST).unlink(),
        (b / _MANIFEST).symlink_to("/dev/zero"))), 2, ("manifest.json", "symbolic link"),
        seconds=10),
    Row("manifest a FIFO", bundle_check(lambda s, b: _special(b, _MANIFEST, "fifo")), 2,
        ("manifest.json", "not a regular file"), seconds=10),
    Row("manifest a folder", bundle_check(lambda s, b: _special(b, _MANIFEST, "folder")), 2,
        ("not a regular file",)),
    Row("manifest of 2 MiB", manifest_text(lambda s: json.dumps(s.manifest) + " " * (2 << 20)), 2,
        ("1 MiB",), seconds=10),
    Row("manifest not JSON", manifest_text(lambda s: '{"schema": "mscnn-edge/bundle",'), 2,
        ("not valid JSON", "line")),
    Row("manifest not UTF-8", manifest_text(lambda s: json.dumps(s.manifest).encode()
        .replace(b'"name": "', b'"name": "\xff', 1)), 2, ("not valid JSON", "UTF-8")),
    Row("nesting 100,000 deep", manifest_text(lambda s: "[" * 100_000 + "]" * 100_000), 2,
        ("nesting deeper",), seconds=10),
    Row("70,000 keys in 0.8 MB", manifest_text(_keys(70_000, False), "--info"), 0, ("name:",),
        seconds=5),
    Row("70,000 keys and a duplicate", manifest_text(_keys(70_000, True)), 2, ("duplicate key",),
        seconds=5),
    Row("duplicate key spelled with escapes", manifest_text(lambda s: json.dumps(s.manifest)[:-1]
        + ', "\\u006eame": "x"}'), 2, ("duplicate key",)),
    Row("integer of 5,000 digits", manifest_text(_big_integer), 2, ("not valid JSON",)),
    Row("wrong schema", manifest(lambda m: m.update(schema="other/thing")), 2,
        ("not an mscnn-edge bundle",)),
    Row("schema_version 3", manifest(lambda m: m.update(schema_version=3)), 2,
        ("schema_version 3",)),
    Row("schema_version 1 (an old bundle)", manifest(lambda m: m.update(schema_version=1)), 2,
        ("schema_version 1", "rebuild")),
    Row("schema_version 1.0", manifest(lambda m: m.update(schema_version=1.0)), 2,
        ("schema_version", "not an integer")),
    Row("schema_version true", manifest(lambda m: m.update(schema_version=True)), 2,
        ("schema_version", "not an integer")),
    Row("key missing", manifest(lambda m: m.pop("input")), 2, ('"input" is missing',)),
    Row("fs a string", manifest(lambda m: m.update(fs="500")), 2, ('"fs" is a string',)),
    Row("fs NaN", manifest_text(lambda s: json.dumps({**s.manifest, "fs": float("nan")})), 2,
        ('"fs" is not a positive',)),
    Row("input.shape 2-D", manifest(_shape([1, 512])), 2, ("(batch, leads, samples)",)),
    Row("input.shape not a list", manifest(_shape({"batch": 1})), 2,
        ('"input.shape" is an object',)),
    Row("input.shape with a 0", manifest(_shape([1, 0, 512])), 2, ("non-positive",)),
    Row("input.shape of 20 digits", manifest(_shape([1, 1, 10**19])), 2, ("not an integer",)),
    Row("input.shape over 2 GiB", manifest(_shape([1, 1, 2**31])), 2, ("2 GiB",)),
    Row("target not an object", manifest(lambda m: m.update(target="x86_64")), 2,
        ('"target" is a string',)),
    Row("unknown device", manifest(lambda m: m["target"].update(device="tpu")), 2,
        ("expected cpu or cuda",)),
    Row("precision bf16", manifest(lambda m: m.update(precision="bf16")), 2,
        ("precision", "bf16"), python=True),
    Row("precision int8 without its quantization record",
        manifest(lambda m: m.update(precision="int8")), 2, ("quantization",), python=True),
    Row("arch forging an error line", manifest(lambda m: m["target"].update(
        arch="x\nerror: forged")), 2, ('"target.arch"', "\\n")),
    Row("name forging an error line", _forged_name, 2, ("built for device cpu", "x\\nerror")),
    Row("golden empty", manifest(lambda m: m.update(golden=[])), 2, ("lists no golden data",)),
    Row("golden not a list", manifest(lambda m: m.update(golden={})), 2,
        ('"golden" is an object',)),
    Row("golden entry without name", manifest(lambda m: m["golden"][0].pop("name")), 2,
        ('"golden[].name" is missing',)),
    Row("golden file not listed", manifest(lambda m: m["files"].pop(m["golden"][0]["output"])), 2,
        ("not listed",)),
    Row("bad sha256 field", manifest(lambda m: m["files"]["model.so"].update(sha256="xyz")), 2,
        ("sha256",)),
    Row("bytes negative", manifest(lambda m: m["files"]["model.so"].update(bytes=-1)), 2,
        ("bytes",)),
    Row("path escapes bundle", manifest(_files_key("../x")), 2, ("../x",)),
    Row("NUL in a files key", manifest(_files_key("a\0b")), 2, ("not a plain path",)),
    Row("lone surrogate in a files key", manifest_text(lambda s: json.dumps(s.manifest)[:-1]
        + ', "files2": {"\\ud800": 1}}'), 2, ("not valid JSON",)),
    Row("bundle of another arch", args(lambda s, f: [str(s.foreign), "--check"]), 2,
        ("is built for", "this mscnn-run is built for")),
    Row("wrong --device", args(lambda s, f: [str(s.base), "--check", "--device", "cuda"]), 2,
        ("built for device cpu",)),
    # Inputs: bounded reads of a user's file.
    Row("input float64", npy_input(lambda x: x.astype("<f8")), 2, ("'<f8' (float64)",)),
    Row("input big-endian", npy_input(lambda x: x.astype(">f4")), 2, ("big-endian float32",)),
    Row("input int32", npy_input(lambda x: x.astype("<i4")), 2, ("'<i4' (int32)",)),
    Row("input fortran order", npy_input(lambda x: np.asfortranarray(np.repeat(x, 2, axis=0))), 2,
        ("Fortran order",)),
    Row("input wrong leads", npy_input(lambda x: np.repeat(x, 2, axis=1)), 2,
        ("leads instead of",)),
    Row("input wrong samples", npy_input(lambda x: x[..., : x.shape[-1] // 2]), 2,
        ("samples instead of",)),
    Row("input 2-D", npy_input(lambda x: x[0]), 2, ("2-D",)),
    Row("input empty", npy_input(lambda x: x[..., :0]), 2, ("empty",)),
    Row("input NaN", npy_input(_nan_at(7, np.nan)), 2, ("NaN or Inf", "sample 7")),
    Row("input Inf", npy_input(_nan_at(3, np.inf)), 2, ("NaN or Inf",)),
    Row("input truncated", raw_input(lambda raw: raw[:-100]), 2, ("truncated",)),
    Row("input trailing bytes", raw_input(lambda raw: raw + b"\0" * 8), 2, ("trailing bytes",)),
    Row("input zero bytes", raw_input(lambda raw: b""), 2, ("empty file",)),
    Row("input not .npy", raw_input(lambda raw: b"lead I,lead II\n0.1,0.2\n"), 2,
        ("not a .npy file",)),
    Row("input header length lies", raw_input(_input_header(b"\xff\xff")), 2,
        ("header cut short",)),
    Row("input header of 4 GiB", raw_input(_input_header(b"\xff\xff\xff\xff", b"\x02\x00")), 2,
        ("65536",)),
    Row("input shape of 10^12 in 20 KB", raw_input(_npy_with_shape("(1000000, 1000000)")), 2,
        ("impossibly large shape",), seconds=10),
    Row("input dimension of 20 digits", raw_input(_npy_with_shape("(1, 1, 99999999999999999999)")),
        2, ("shape too large",)),
    Row("input missing", run_input(lambda s, f: str(f / "none.npy")), 2, ("cannot read",)),
    Row("input /dev/zero", run_input(lambda s, f: "/dev/zero"), 2, ("not a regular file",),
        seconds=10),
    Row("input a FIFO", run_input(_fifo_input), 2, ("not a regular file",), seconds=10),
    Row("input a folder", run_input(lambda s, f: str(f)), 2, ("not a regular file",)),
    # Outputs: created with O_EXCL next to their destination, renamed into place.
    Row("output folder missing", run_output(lambda s, f: str(f / "no" / "y.npy")), 2,
        ("not writable",)),
    Row("output is a folder", run_output(lambda s, f: str(f)), 2, ("is a folder",)),
    Row("output is a device", run_output(lambda s, f: "/dev/full"), 2, ("not a regular file",)),
    Row("symlink planted at the temporary output", _planted_partial, 2, ("in the way",)),
    # Arguments.
    Row("no arguments", args(lambda s, f: []), 2, ("no bundle",)),
    Row("unknown option", args(lambda s, f: [str(s.base), "--frobnicate"]), 2, ("unknown option",)),
    Row("--fs with --check", args(lambda s, f: [str(s.base), "--check", "--fs", "360"]), 2,
        ("--fs (the record's rate) goes with --stream or --detect",)),
    Row("--fs a fraction", args(lambda s, f: [str(s.base), "--stream", "--fs", "360.5"]), 2,
        ("--fs 360.5: expected the record's sampling rate as a whole, positive number",)),
    Row("--cases 1 checks the first case alone", args(lambda s, f: [str(s.base), "--check",
        "--cases", "1"]), 0, ("check: pass 1/1", "(the first 1 of ")),
    Row("--cases 0", args(lambda s, f: [str(s.base), "--check", "--cases", "0"]), 2,
        ("--cases needs a whole number of at least 1, not '0'",)),
    Row("--cases with --info", args(lambda s, f: [str(s.base), "--info", "--cases", "2"]), 2,
        ("--cases (how many golden cases to check) goes with --check",)),
]
# fmt: on


# --------------------------------------------------------------------------------------
# Running the table.


def build_cases(setup: Setup) -> list[Case]:
    """Every row as a case, its files in a folder of its own under setup.work."""
    cases = []
    for row in rows_for(setup.arch):
        folder = setup.folder(row.name)
        argv, extra = row.make(setup, folder)
        cases.append(Case(row.name, argv, row.rc, list(row.needles), row.python, row.seconds,
                          folder=folder, **extra))  # fmt: skip
    return cases


def python_control(case: Case) -> list[str]:
    """`python -m deploy` on the same bundle or input: it must refuse (exit 1 or 2) with,
    for a refusal, one `error:` line."""
    trust = [a for a in case.args if a == "--require-signature"]
    if "--trust" in case.args:
        trust += ["--trust", case.args[case.args.index("--trust") + 1]]
    if "--check" in case.args:
        argv = ["check", case.args[0], *trust]
    else:
        i, o = case.args.index("--input"), case.args.index("--output")
        argv = ["run", case.args[0], "--input", case.args[i + 1], "--output", case.args[o + 1]]
    p = subprocess.run([sys.executable, "-m", "deploy", *argv], capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    if p.returncode not in (1, 2):
        return [f"python -m deploy accepted it (exit {p.returncode}): {p.stdout[-300:]!r}"]
    if p.returncode == 2 and (len(lines) != 1 or not lines[0].startswith("error: ")):
        return [f"python -m deploy refused it, but not with one error line: {p.stderr!r}"]
    return []


def run_cases(
    runner: str, prefix: list[str], setup: Setup, python: bool = False
) -> tuple[list[str], list[str]]:
    """Run every row against `runner` (two at a time); returns (report lines, problems)."""
    setup.work.mkdir(parents=True, exist_ok=True)
    cases = build_cases(setup)
    shared = {p: listing(p) for p in (setup.base, setup.foreign)}
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda c: run(prefix, runner, c), cases))

    report, problems = [], []
    for o in outcomes:
        shown = o.err.strip() or (o.out.strip().splitlines() or [""])[-1]
        found = o.problems
        if python and o.case.python and not found:
            found = python_control(o.case)
        report.append(f"{'ok  ' if not found else 'FAIL'} {o.case.name} [{o.seconds:.1f} s]: "
                      f"{shown[:300]}")  # fmt: skip
        problems += [f"{o.case.name}: {p}" for p in found]

    tol = subprocess.run([*prefix, runner, "--tolerances"], capture_output=True, text=True)
    if tol.returncode != 0 or tol.stdout != TOLERANCES:
        problems.append(f"--tolerances printed {tol.stdout!r}")
    if setup.marker.exists():
        problems.append("a replaced model.so was loaded before its hash was checked")
    if not setup.control.exists():
        problems.append("the control library was never loaded: the probe proves nothing")
    problems += [f"the runner wrote into {p}" for p, seen in shared.items() if listing(p) != seen]
    return report, problems
