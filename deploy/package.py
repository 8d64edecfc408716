"""A tarball for one target: the native runner, the TVM runtime it loads and every bundle
built for that target, with a README saying how to run it on the device."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from .bundle import MANIFEST, load_bundle
from .errors import DeployError
from .signing import TRUSTED_KEY_FILE, PublicKey, Trust, read_signing_key, sign_file
from .sweep import RUNNER

README = """\
mscnn-edge package for target {target} ({arch}, {device})
=================================================={underline}

Contents
  runner/{runner}       the native runner (no Python needed)
  runner/lib/           the TVM runtime libraries it loads (found through its rpath)
  bundles/<name>/       one compiled model per lead variant (and precision: -int8,
                        -fp16): model.so, manifest.json, golden/*.npy (inputs and the
                        reference outputs: PyTorch's, or the int8 reference's for
                        -int8), model.onnx (fp32 and fp16 bundles)

On the device
  tar xzf {archive}
  cd {folder}
  ./runner/{runner} bundles/{example} --info
  ./runner/{runner} bundles/{example} --check          # parity against PyTorch{device_flag}
  ./runner/{runner} bundles/{example} --input x.npy --output y.npy{device_flag}

  x.npy: float32, little-endian, C order, shape {shape} (batch, leads, samples)
  leads, in this order: {leads}; sampling rate {fs} Hz.

Exit codes: 0 ok (parity passed), 1 parity mismatch, 2 unusable bundle or input (the
message says which file or value and why). Every file's sha256 is checked against the
manifest before the model library is loaded.{signed}

Bundles: {bundles}
"""


SIGNED = """
Signed: runner/{trusted} is the public key (ed25519 {fingerprint}) this runner reads at
start; it runs only bundles whose manifest.sig that key made, checked before anything
else of the bundle is read. The tarball's signature is {archive}.sig.
"""


def package(
    build: Path, target: str, runners: Path, out: Path, signing_key: Path | None = None
) -> tuple[Path, int]:
    """Write `out/mscnn-edge-<target>.tar.gz`; returns its path and size in bytes. With a
    signing key: every bundle must be signed by it, the runner ships trusting its public
    half alone (runner/trusted.pub), and the tarball is signed (`.tar.gz.sig`)."""
    key = read_signing_key(signing_key) if signing_key is not None else None
    trust = Trust(PublicKey(bytes(key.verify_key))) if key is not None else Trust()
    folder = Path(build) / target
    bundle_dirs = sorted(p.parent for p in folder.glob(f"*/{MANIFEST}"))
    if not bundle_dirs:
        raise DeployError(
            f"no bundles for target {target!r} under {folder}/; run "
            f"`make build TARGETS={target}` first"
        )
    bundles = [load_bundle(p, trust) for p in bundle_dirs]  # verified before they ship
    arch, device = bundles[0].target.arch, bundles[0].device
    runner_dir = Path(runners) / arch
    if not (runner_dir / RUNNER).is_file():
        raise DeployError(f"no {arch} runner at {runner_dir}/; run `make runners`")
    name = f"mscnn-edge-{target}"
    archive = Path(out) / f"{name}.tar.gz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    example = bundles[-1]
    readme = README.format(
        target=target,
        arch=arch,
        device=device,
        underline="=" * len(target + arch + device),
        runner=RUNNER,
        archive=archive.name,
        folder=name,
        example=example.name,
        device_flag=" --device cuda" if bundles[0].target.is_gpu else "",
        shape=tuple(example.input_shape),
        leads=", ".join(example.leads),
        fs=example.manifest.fs,
        bundles=", ".join(b.name for b in bundles),
        signed=_signed_note(trust, archive),
    )
    tmp = archive.with_name(archive.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(runner_dir, arcname=f"{name}/runner", filter=_skip_objects)
        for bundle in bundles:
            tar.add(bundle.path, arcname=f"{name}/bundles/{bundle.name}")
        _add_text(tar, f"{name}/README.txt", readme)
        index = {"target": target, "bundles": [b.name for b in bundles]}
        _add_text(tar, f"{name}/package.json", json.dumps(index))
        if trust.key is not None:
            _add_text(tar, f"{name}/runner/{TRUSTED_KEY_FILE}", trust.key.to_text())
    tmp.replace(archive)
    if key is not None:
        sign_file(archive, key)
    return archive, archive.stat().st_size


def _add_text(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def _signed_note(trust: Trust, archive: Path) -> str:
    if trust.key is None:
        return ""
    return SIGNED.format(
        trusted=TRUSTED_KEY_FILE, fingerprint=trust.key.fingerprint, archive=archive.name
    )


def _skip_objects(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Ship the runner and its libraries, not the build's intermediate files (nor a key
    file left in the runner's folder: a package trusts only the key it is signed with)."""
    skip = info.name.endswith((".o", ".d", ".a", f"/{TRUSTED_KEY_FILE}"))
    return None if skip else info
