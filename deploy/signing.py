"""Ed25519 signatures: a device runs only what its owner signed.

A bundle's manifest lists every file with its size and sha256, so one signature over the
manifest's bytes covers the whole bundle. It is a detached file beside the manifest,
`manifest.sig`, which the manifest does not list (it could not: it signs the manifest).
With a trusted key, `load_bundle` checks it on the manifest bytes it read, before the
manifest is parsed, before any file is hashed and long before the library is loaded: a
bundle whose library and manifest were both rewritten (hashes matching) is refused.

The cryptography is libsodium's, through PyNaCl (imported only when a key is used, so an
unsigned bundle needs nothing beyond numpy and the TVM runtime). Ed25519 is
deterministic: the same key over the same manifest gives the same signature, byte for
byte. Files are text lines, so that a person can tell them apart:

    private key  `mscnn-ed25519-secret <64 hex digits: the 32-byte seed>`   (mode 0600)
    public key   `mscnn-ed25519-public <64 hex digits>`
    signature    `mscnn-ed25519-signature <signer's public key, 64 hex> <128 hex>`

The signature is over the raw bytes of the signed file, so libsodium's
`crypto_sign_verify_detached` checks it anywhere (deploy/native/src/signature.cc does).
A fingerprint is the first 16 hex digits of the sha256 of the raw public key.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import DeployError
from .files import open_inside, open_regular, show

SIGNATURE = "manifest.sig"  # beside manifest.json, never listed in it
SIG_SUFFIX = ".sig"  # a signed file's detached signature: FILE.sig
PUBLIC_TAG = "mscnn-ed25519-public"
SECRET_TAG = "mscnn-ed25519-secret"
SIGNATURE_TAG = "mscnn-ed25519-signature"
KEY_FILE_BYTES = len(PUBLIC_TAG) + 1 + 64 + 1  # the secret tag has the same length
SIGNATURE_FILE_BYTES = len(SIGNATURE_TAG) + 1 + 64 + 1 + 128 + 1
MAX_KEY_FILE = 4096  # read no more of a file given as a key (real ones are 86 bytes)
TRUSTED_KEY_FILE = "trusted.pub"  # beside a packaged native runner: the key it requires
TRUST_ENV = "MSCNN_TRUST"  # a trusted public key file, when no --trust is given
_HEX = frozenset("0123456789abcdef")
_KEYGEN = "python -m deploy keygen KEY"


@dataclass(frozen=True)
class PublicKey:
    """A public key as read from its file (`path`), 32 raw bytes."""

    raw: bytes
    path: Path | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.raw)

    def to_text(self) -> str:
        return f"{PUBLIC_TAG} {self.raw.hex()}\n"


@dataclass(frozen=True)
class Signature:
    """A parsed signature file: who signed (their public key) and the 64-byte value."""

    signer: bytes
    value: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.signer)

    def to_bytes(self) -> bytes:
        return f"{SIGNATURE_TAG} {self.signer.hex()} {self.value.hex()}\n".encode()


@dataclass(frozen=True)
class Trust:
    """Which bundles may load: any (no key), or only those signed by `key`.
    `required` refuses to go on without a key at all (a forgotten --trust fails loudly)."""

    key: PublicKey | None = None
    required: bool = False

    def __post_init__(self) -> None:
        if self.required and self.key is None:
            raise DeployError(
                f"--require-signature needs a key to check against: give --trust KEY.pub "
                f"(or set {TRUST_ENV}=KEY.pub)"
            )


def fingerprint(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


# --------------------------------------------------------------------------------------
# Keys


def keygen(out: Path) -> PublicKey:
    """A new key pair: `out` (private, 0600, created with O_EXCL: an existing file is never
    replaced) and `out.pub` (public). The private key is never printed."""
    from nacl.signing import SigningKey

    out, pub = Path(out), Path(f"{out}.pub")
    for path in (out, pub):
        if path.exists() or path.is_symlink():
            raise DeployError(
                f"{show(path)} exists; keygen never replaces a key: choose another name"
            )
    key = SigningKey.generate()
    _create(out, f"{SECRET_TAG} {bytes(key).hex()}\n".encode(), 0o600)
    try:
        _create(pub, PublicKey(bytes(key.verify_key)).to_text().encode(), 0o644)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return PublicKey(bytes(key.verify_key), pub)


def _create(path: Path, data: bytes, mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise DeployError(f"{show(path)} exists; keygen never replaces a key") from None
    except OSError as exc:
        raise DeployError(f"cannot create {show(path)}: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)  # whatever the umask
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def _read_key_line(path: Path) -> tuple[str, bytes]:
    """(tag, 32 raw bytes) of a key file; DeployError when it is not one."""
    fd = open_regular(path, "give a key file written by " + _KEYGEN)
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, MAX_KEY_FILE + 1, 0) if size <= MAX_KEY_FILE else b""
    finally:
        os.close(fd)
    fields = data.decode("ascii", "replace").rstrip("\n").split(" ")
    if (
        size > MAX_KEY_FILE
        or len(fields) != 2
        or fields[0] not in (PUBLIC_TAG, SECRET_TAG)
        or len(fields[1]) != 64
        or not set(fields[1]) <= _HEX
    ):
        raise DeployError(
            f"{show(path)} is not a key: expected one line '{PUBLIC_TAG} <64 hex digits>' "
            f"(or its private counterpart), as `{_KEYGEN}` writes"
        )
    return fields[0], bytes.fromhex(fields[1])


def read_public_key(path: str | Path) -> PublicKey:
    """The key a runner trusts; a private key file is refused (it must not be on devices)."""
    path = Path(path)
    tag, raw = _read_key_line(path)
    if tag == SECRET_TAG:
        raise DeployError(
            f"{show(path)} is a private key; trust its public half ({show(path)}.pub): the "
            "private key stays with whoever signs and is never copied to a device"
        )
    return PublicKey(raw, path)


def read_signing_key(path: str | Path):
    """The private key that signs (a nacl.signing.SigningKey); a public key is refused."""
    from nacl.signing import SigningKey

    path = Path(path)
    tag, raw = _read_key_line(path)
    if tag == PUBLIC_TAG:
        raise DeployError(
            f"{show(path)} is a public key; signing needs the private key made with it "
            f"(`{_KEYGEN}` wrote KEY and KEY.pub: give KEY)"
        )
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise DeployError(
            f"{show(path)} is readable by others (mode {stat.S_IMODE(path.stat().st_mode):o}); "
            f"a private key must be 0600: chmod 600 {show(path)}"
        )
    return SigningKey(raw)


# --------------------------------------------------------------------------------------
# Signing


def sign_bytes(key, data: bytes) -> Signature:
    """The detached signature of `data` by `key` (a SigningKey): deterministic."""
    return Signature(bytes(key.verify_key), key.sign(data).signature)


def sign_file(path: Path, key) -> Path:
    """Sign a file (a package's tarball) into `path.sig` beside it; returns that path."""
    signature = sign_bytes(key, Path(path).read_bytes())
    out = Path(f"{path}{SIG_SUFFIX}")
    write_signature(out, signature)
    return out


def write_signature(path: Path, signature: Signature) -> None:
    """Write a signature file atomically (an O_EXCL sibling renamed into place)."""
    data = signature.to_bytes()
    temp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------
# Verifying


def parse_signature(data: bytes, where: str, size: int | None = None) -> Signature:
    """A signature file's contents (of `size` bytes on disk, of which `data` was read),
    checked to the byte; DeployError says what is wrong."""
    size = len(data) if size is None else size
    if size != SIGNATURE_FILE_BYTES or len(data) != size:
        raise DeployError(
            f"{where} is {size} bytes; a signature file is exactly "
            f"{SIGNATURE_FILE_BYTES} (truncated or padded): sign the bundle again"
        )
    fields = data.decode("ascii", "replace").rstrip("\n").split(" ")
    ok = (
        data.endswith(b"\n")
        and len(fields) == 3
        and fields[0] == SIGNATURE_TAG
        and (len(fields[1]), len(fields[2])) == (64, 128)
        and set(fields[1] + fields[2]) <= _HEX
    )
    if not ok:
        raise DeployError(
            f"{where} is not a signature file: expected '{SIGNATURE_TAG} <64 hex> "
            "<128 hex>' (a 32-byte key and a 64-byte Ed25519 signature): sign the bundle again"
        )
    return Signature(bytes.fromhex(fields[1]), bytes.fromhex(fields[2]))


def read_signature(folder: Path) -> Signature | None:
    """The bundle's parsed signature, or None where it has no manifest.sig."""
    path = Path(folder) / SIGNATURE
    if not path.exists() and not path.is_symlink():
        return None
    with open_inside(Path(folder), SIGNATURE) as fd:  # no symlink, a regular file
        size = os.fstat(fd).st_size
        data = os.pread(fd, SIGNATURE_FILE_BYTES + 1, 0)
    return parse_signature(data, SIGNATURE, size)


def verifies(signature: Signature, data: bytes, key: bytes | None = None) -> bool:
    """Whether `signature` is a valid signature of `data` by `key` (default: its signer)."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    try:
        VerifyKey(key or signature.signer).verify(data, signature.value)
    except (BadSignatureError, ValueError):
        return False
    return True


def check_signed(
    signature: Signature | None, data: bytes, trust: Trust, what: str, sig_name: str = SIGNATURE
) -> str | None:
    """Refuse `data` (what: "manifest.json"; its signature file: `sig_name`) unless it is
    signed by the trusted key; the signer's fingerprint when it is. With no key trusted,
    nothing is checked (None)."""
    if trust.key is None:
        return None
    trusted = f"the trusted key {trust.key.fingerprint}"
    if signature is None:
        raise DeployError(
            f"{what} is not signed (no {SIGNATURE}) and {trusted} is required; sign it "
            "with `python -m deploy sign` or build it with --sign KEY"
        )
    if signature.signer != trust.key.raw:
        raise DeployError(
            f"{what} is signed by another key ({signature.fingerprint}), not by {trusted}; "
            "it was not loaded: sign it with the trusted key"
        )
    if not verifies(signature, data, trust.key.raw):
        raise DeployError(
            f"{what}: bad signature ({sig_name} does not match it): it was changed after "
            "it was signed; it was not loaded: rebuild or re-copy it"
        )
    return signature.fingerprint


def check_bundle_signature(folder: Path, manifest_bytes: bytes, trust: Trust) -> str | None:
    """The bundle's signer (fingerprint) when `trust` holds a key and the signature over
    these manifest bytes is that key's; DeployError naming the bundle otherwise."""
    if trust.key is None:
        return None
    try:
        return check_signed(read_signature(folder), manifest_bytes, trust, "manifest.json")
    except DeployError as exc:
        raise DeployError(f"bundle {show(folder)}: {exc}") from None


def describe_signature(folder: Path, manifest_bytes: bytes) -> str:
    """`deploy info`'s line where no key is trusted: unsigned, or by whom and whether the
    signature matches the manifest (which says nothing of who may sign)."""
    try:
        signature = read_signature(folder)
    except DeployError as exc:
        return f"unreadable: {exc}"
    if signature is None:
        return f"unsigned (no {SIGNATURE})"
    by = f"signed by ed25519 key {signature.fingerprint}"
    if not verifies(signature, manifest_bytes):
        return f"{by}, but the signature does NOT verify (manifest changed after signing)"
    return f"{by}, valid (give --trust KEY.pub to require that key)"


def verify_file(path: Path, trust: Trust) -> str:
    """Check a signed file (a package's tarball) against `path.sig`: the signer's
    fingerprint, or DeployError."""
    if trust.key is None:
        raise DeployError("verify needs the signer's public key: --trust KEY.pub")
    sig_path = Path(f"{path}{SIG_SUFFIX}")
    try:
        fd = open_regular(sig_path, "the signature travels beside the file it signs")
    except DeployError:
        raise DeployError(f"{show(path)} is not signed: no {show(sig_path)}") from None
    try:
        size, data = os.fstat(fd).st_size, os.pread(fd, SIGNATURE_FILE_BYTES + 1, 0)
    finally:
        os.close(fd)
    signature = parse_signature(data, show(sig_path), size)
    return check_signed(signature, Path(path).read_bytes(), trust, show(path), sig_path.name)


# --------------------------------------------------------------------------------------
# The trust in force: what a CLI's --trust sets for every bundle it loads.

_TRUST: contextvars.ContextVar[Trust | None] = contextvars.ContextVar("mscnn_trust", default=None)


def current_trust() -> Trust:
    return _TRUST.get() or Trust()


def runner_args(trust: Trust) -> list[str]:
    """The native runner's options for the same trust (deploy parity runs ARM bundles
    with it under qemu)."""
    return ["--trust", str(trust.key.path)] if trust.key and trust.key.path else []


@contextlib.contextmanager
def trusting(trust: Trust) -> Iterator[Trust]:
    """`load_bundle` calls inside use `trust` unless given their own."""
    token = _TRUST.set(trust)
    try:
        yield trust
    finally:
        _TRUST.reset(token)
