"""Signed bundles: keys, signatures, and a load that refuses before anything is hashed or
loaded. On the tiny bundle (tests/deploy/conftest.py), signed per test."""

import hashlib
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from deploy_cli import deploy
from hypothesis import given
from hypothesis import strategies as st

from deploy import DeployError, load_bundle
from deploy.bundle import sign_bundle
from deploy.signing import (
    SIGNATURE,
    SIGNATURE_FILE_BYTES,
    Trust,
    check_bundle_signature,
    keygen,
    read_public_key,
    read_signing_key,
    verify_file,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two key pairs: the owner's and another's."""
    folder = tmp_path_factory.mktemp("keys")
    keygen(folder / "owner")
    keygen(folder / "other")
    return folder


@pytest.fixture
def signed(tiny, keys) -> Path:
    sign_bundle(tiny, read_signing_key(keys / "owner"))
    return tiny


def trust(keys, name="owner") -> Trust:
    return Trust(read_public_key(keys / f"{name}.pub"))


def one_error_line(done) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done
    return lines[0]


# --------------------------------------------------------------------------------------
# Keys


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_prints_it(tmp_path):
    done = deploy("keygen", tmp_path / "key")
    assert done.returncode == 0, done.stderr
    private, public = tmp_path / "key", tmp_path / "key.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    secret = private.read_text().split()[1]
    assert secret not in done.stdout + done.stderr
    key = read_public_key(public)
    assert f"fingerprint {key.fingerprint}" in done.stdout
    assert key.fingerprint == hashlib.sha256(key.raw).hexdigest()[:16]
    # The private key's public half is the .pub file.
    assert bytes(read_signing_key(private).verify_key) == key.raw


@pytest.mark.parametrize("existing", ["key", "key.pub"])
def test_keygen_never_replaces_a_file(tmp_path, existing):
    (tmp_path / existing).write_text("mine")
    done = deploy("keygen", tmp_path / "key")
    assert "exists" in one_error_line(done)
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]
    assert (tmp_path / existing).read_text() == "mine"


def test_two_keys_differ(keys):
    assert read_public_key(keys / "owner.pub").raw != read_public_key(keys / "other.pub").raw


# --------------------------------------------------------------------------------------
# A signed bundle


def test_a_signed_bundle_loads_with_its_key_and_says_who_signed(signed, keys):
    bundle = load_bundle(signed, trust(keys))
    assert bundle.signer == read_public_key(keys / "owner.pub").fingerprint
    assert load_bundle(signed).signer is None  # no key given: unchecked, as before
    info = deploy("info", signed, "--trust", keys / "owner.pub")
    assert info.returncode == 0, info.stderr
    assert f"signed by ed25519 key {bundle.signer}, verified" in info.stdout
    check = deploy("check", signed, "--trust", keys / "owner.pub")
    assert check.returncode == 0 and "parity passed" in check.stdout, check.stderr


def test_info_tells_signed_from_unsigned_without_a_key(tiny, keys):
    assert "unsigned (no manifest.sig)" in deploy("info", tiny).stdout
    sign_bundle(tiny, read_signing_key(keys / "other"))
    fp = read_public_key(keys / "other.pub").fingerprint
    assert f"signed by ed25519 key {fp}, valid" in deploy("info", tiny).stdout


def test_the_signature_is_not_listed_and_the_bundle_still_verifies(signed):
    manifest = json.loads((signed / "manifest.json").read_text())
    assert SIGNATURE not in manifest["files"]
    load_bundle(signed)  # an extra, unlisted manifest.sig is no integrity error


def test_signing_again_gives_the_same_bytes(signed, keys):
    """Ed25519 is deterministic: the same key over the same manifest, the same signature
    (so a reproducible rebuild is signed identically)."""
    first = (signed / SIGNATURE).read_bytes()
    sign_bundle(signed, read_signing_key(keys / "owner"))
    assert (signed / SIGNATURE).read_bytes() == first
    assert len(first) == SIGNATURE_FILE_BYTES


def test_a_rebuild_with_the_same_key_signs_identically(tmp_path, keys, tiny_bundle, tiny_builder):
    """build() with a signing key, of the tiny bundle's request (~5 s): the same manifest
    bytes as the unsigned build, so the same signature as signing that bundle; and the
    signature verifies."""
    built = tiny_builder(tmp_path / "out", signing_key=keys / "owner")
    assert load_bundle(built, trust(keys)).signer is not None
    assert (built / "manifest.json").read_bytes() == (tiny_bundle / "manifest.json").read_bytes()
    again = tmp_path / "again"
    again.mkdir()
    (again / "manifest.json").write_bytes((tiny_bundle / "manifest.json").read_bytes())
    sign_bundle(again, read_signing_key(keys / "owner"))
    assert (again / SIGNATURE).read_bytes() == (built / SIGNATURE).read_bytes()


def test_compile_build_refuses_a_public_key_before_any_work(tmp_path, keys, capsys):
    from compile.cli import main as compile_main

    argv = ["build", "--preset", "cpsc2019", "--targets", "x86_64", "--out", str(tmp_path),
            "--sign", str(keys / "owner.pub")]  # fmt: skip
    assert compile_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is a public key" in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_make_build_passes_the_key_to_every_bundle_rule():
    done = subprocess.run(
        ["make", "-n", "build", "TARGETS=x86_64,aarch64", "PRESET=cpsc2019_qrs",
         "SIGNING_KEY=/keys/owner", "STAMP=", "TOOLCHAINS="],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    builds = [line for line in done.stdout.splitlines() if "-m compile build" in line]
    assert len(builds) >= 4, done.stdout[-2000:] + done.stderr[-2000:]
    assert all("--sign /keys/owner" in line for line in builds), builds


# --------------------------------------------------------------------------------------
# Refusals, before anything is hashed or loaded


def _unsigned(b: Path, keys: Path) -> None:
    (b / SIGNATURE).unlink()


def _manifest_edited(b: Path, keys: Path) -> None:
    with open(b / "manifest.json", "a") as f:
        f.write(" ")


def _other_key(b: Path, keys: Path) -> None:
    sign_bundle(b, read_signing_key(keys / "other"))


def _truncated(b: Path, keys: Path) -> None:
    (b / SIGNATURE).write_bytes((b / SIGNATURE).read_bytes()[:100])


def _oversized(b: Path, keys: Path) -> None:
    (b / SIGNATURE).write_bytes((b / SIGNATURE).read_bytes() + b"\0" * (1 << 20))


def _short_signature(b: Path, keys: Path) -> None:
    """The right file length, a signature of 63 bytes (and padding)."""
    tag, key, value = (b / SIGNATURE).read_text().split()
    (b / SIGNATURE).write_text(f"{tag} {key} {value[:126]}  \n")


def _forged(b: Path, keys: Path) -> None:
    """model.so and manifest.json both rewritten, hashes matching; the old signature kept."""
    with open(b / "model.so", "ab") as f:
        f.write(b"\0" * 16)
    data = (b / "model.so").read_bytes()
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["files"]["model.so"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (b / "manifest.json").write_text(json.dumps(manifest, indent=2))


@pytest.mark.parametrize(
    ("tamper", "needle"),
    [
        (_unsigned, "is not signed"),
        (_manifest_edited, "bad signature"),
        (_other_key, "signed by another key"),
        (_truncated, "is 100 bytes"),
        (_oversized, f"a signature file is exactly {SIGNATURE_FILE_BYTES}"),
        (_short_signature, "not a signature file"),
        (_forged, "bad signature"),
    ],
)
def test_a_bundle_not_signed_by_the_trusted_key_is_refused(signed, keys, tamper, needle):
    tamper(signed, keys)
    # model.onnx made a FIFO: had anything been opened for hashing, the refusal would name it.
    (signed / "model.onnx").unlink()
    os.mkfifo(signed / "model.onnx")
    with pytest.raises(DeployError, match=needle) as err:
        load_bundle(signed, trust(keys))
    assert str(err.value).startswith(f"bundle {signed}: ") and "\n" not in str(err.value)
    assert "model.onnx" not in str(err.value)
    done = deploy("check", signed, "--trust", keys / "owner.pub")
    assert needle in one_error_line(done)


def test_the_forged_bundle_is_consistent_so_only_the_key_refuses_it(signed, keys):
    """Without a key the forgery passes every hash check: the integrity check alone cannot
    tell it from the real bundle."""
    _forged(signed, keys)
    assert (
        load_bundle(signed).manifest.files["model.so"].bytes == (signed / "model.so").stat().st_size
    )
    with pytest.raises(DeployError, match="bad signature"):
        load_bundle(signed, trust(keys))


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--trust", "{keys}/owner"], "is a private key"),
        (["--trust", "{keys}/garbage"], "is not a key"),
        (["--trust", "{keys}/missing.pub"], "No such file"),
        (["--trust", "/dev/zero"], "not a regular file"),
        (["--require-signature"], "--require-signature needs a key"),
    ],
)
def test_a_bad_trusted_key_is_refused_in_one_line(signed, keys, argv, needle):
    (keys / "garbage").write_bytes(b"\x7fELF" + b"\0" * 200)
    argv = [a.format(keys=keys) for a in argv]
    assert needle in one_error_line(deploy("check", signed, *argv))


def test_a_public_key_cannot_sign(tiny, keys):
    done = deploy("sign", tiny, "--key", keys / "owner.pub")
    assert "is a public key" in one_error_line(done)
    assert not (tiny / SIGNATURE).exists()


def test_a_private_key_others_can_read_is_refused(tiny, keys, tmp_path):
    loose = tmp_path / "loose"
    loose.write_bytes((keys / "owner").read_bytes())
    loose.chmod(0o644)
    assert "chmod 600" in one_error_line(deploy("sign", tiny, "--key", loose))


def test_the_env_var_trusts_a_key_for_every_command(signed, keys):
    _other_key(signed, keys)
    env = {**os.environ, "MSCNN_TRUST": str(keys / "owner.pub")}
    done = subprocess.run([sys.executable, "-m", "deploy", "check", str(signed)], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert "signed by another key" in one_error_line(done)


@given(data=st.data())
def test_any_changed_byte_of_manifest_or_signature_is_refused(signed_once, keys, data):
    """A flipped bit anywhere in manifest.json or manifest.sig: never accepted."""
    folder, manifest, signature = signed_once
    which = data.draw(st.sampled_from(["manifest", "signature"]))
    blob = bytearray(manifest if which == "manifest" else signature)
    at = data.draw(st.integers(0, len(blob) - 1))
    blob[at] ^= 1 << data.draw(st.integers(0, 7))
    (folder / SIGNATURE).write_bytes(bytes(blob) if which == "signature" else signature)
    text = bytes(blob) if which == "manifest" else manifest
    with pytest.raises(DeployError):
        check_bundle_signature(folder, text, trust(keys))
    (folder / SIGNATURE).write_bytes(signature)
    assert check_bundle_signature(folder, manifest, trust(keys))  # the control


@pytest.fixture(scope="module")
def signed_once(tmp_path_factory, keys, tiny_bundle):
    folder = tmp_path_factory.mktemp("signed-once")
    manifest = (tiny_bundle / "manifest.json").read_bytes()
    (folder / "manifest.json").write_bytes(manifest)
    sign_bundle(folder, read_signing_key(keys / "owner"))
    return folder, manifest, (folder / SIGNATURE).read_bytes()


# --------------------------------------------------------------------------------------
# Packages


def test_a_signed_package_ships_the_key_and_a_verifying_tarball(signed, keys, tmp_path):
    build = tmp_path / "build"
    (build / "x86_64").mkdir(parents=True)
    signed.rename(build / "x86_64" / signed.name)
    runners = tmp_path / "runners" / "x86_64"
    runners.mkdir(parents=True)
    (runners / "mscnn-run").write_bytes(b"#!/bin/sh\n")
    argv = ["package", "x86_64", "--build", build, "--runners", runners.parent, "--out",
            tmp_path / "out", "--sign", keys / "owner"]  # fmt: skip
    done = deploy(*argv)
    assert done.returncode == 0, done.stderr
    archive = tmp_path / "out" / "mscnn-edge-x86_64.tar.gz"
    assert verify_file(archive, trust(keys)) == read_public_key(keys / "owner.pub").fingerprint
    with tarfile.open(archive) as tar:
        shipped = tar.extractfile("mscnn-edge-x86_64/runner/trusted.pub").read()
        assert f"bundles/{signed.name}/manifest.sig" in "".join(tar.getnames())
        readme = tar.extractfile("mscnn-edge-x86_64/README.txt").read().decode()
    assert shipped == (keys / "owner.pub").read_bytes()
    assert "trusted.pub" in readme
    # The tarball changed by one byte: refused; and by another key: refused.
    verify = deploy("verify", archive, "--trust", keys / "owner.pub")
    assert verify.returncode == 0 and "signature good" in verify.stdout
    assert "another key" in one_error_line(deploy("verify", archive, "--trust", keys / "other.pub"))
    with open(archive, "ab") as f:
        f.write(b"\0")
    assert "bad signature" in one_error_line(
        deploy("verify", archive, "--trust", keys / "owner.pub")
    )
    # An unsigned bundle is never packaged with a key.
    (build / "x86_64" / signed.name / SIGNATURE).unlink()
    assert "is not signed" in one_error_line(deploy(*argv))


def test_an_unsigned_package_has_no_key_and_no_signature(tiny, tmp_path):
    build = tmp_path / "build"
    (build / "x86_64").mkdir(parents=True)
    tiny.rename(build / "x86_64" / tiny.name)
    runners = tmp_path / "runners" / "x86_64"
    runners.mkdir(parents=True)
    (runners / "mscnn-run").write_bytes(b"#!/bin/sh\n")
    done = deploy("package", "x86_64", "--build", build, "--runners", runners.parent,
                  "--out", tmp_path / "out")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "out" / "mscnn-edge-x86_64.tar.gz.sig").exists()
    with tarfile.open(tmp_path / "out" / "mscnn-edge-x86_64.tar.gz") as tar:
        assert not any(n.endswith("trusted.pub") for n in tar.getnames())
