"""`python -m deploy keygen | sign | verify`, and the --trust options of every subcommand
that loads a bundle (deploy/cli.py adds them through `add_trust_options`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .errors import DeployError
from .files import show
from .signing import (
    SIG_SUFFIX,
    TRUST_ENV,
    Trust,
    fingerprint,
    keygen,
    read_public_key,
    read_signing_key,
    sign_file,
    verify_file,
)

# The subcommands that load bundles, so take a trusted key.
LOADERS = ("run", "check", "detect", "stream", "info", "parity", "bench")


def add_trust_options(sub) -> None:
    """--trust and --require-signature on every subcommand that loads a bundle."""
    for name in LOADERS:
        if name not in sub.choices:
            continue
        p = sub.choices[name]
        p.add_argument(
            "--trust",
            type=Path,
            default=os.environ.get(TRUST_ENV) or None,
            metavar="KEY.pub",
            help="load only bundles whose manifest.sig is by this public key (python -m "
            f"deploy keygen); checked before anything is hashed or loaded (default: "
            f"${TRUST_ENV}, else none: unsigned bundles load)",
        )
        p.add_argument(
            "--require-signature",
            action="store_true",
            help="refuse to run at all without a trusted key (so a forgotten --trust fails)",
        )


def trust_from_args(args: argparse.Namespace) -> Trust:
    """The Trust a command line asks for (none where the subcommand takes no key)."""
    path = getattr(args, "trust", None)
    key = read_public_key(path) if path is not None else None
    return Trust(key, getattr(args, "require_signature", False))


def _add_keygen(sub) -> None:
    k = sub.add_parser(
        "keygen",
        help="make an Ed25519 key pair: KEY (private, 0600; keep it off devices) and KEY.pub",
    )
    k.add_argument("key", type=Path, metavar="KEY", help="where the private key goes")
    k.set_defaults(func=_keygen)


def _keygen(args) -> int:
    public = keygen(args.key)
    print(f"wrote {show(args.key)} (private, mode 600: sign with it, never ship it)")
    print(f"wrote {show(public.path)} (public: give it to --trust on devices)")
    print(f"fingerprint {public.fingerprint}")
    return 0


def _add_sign(sub) -> None:
    s = sub.add_parser(
        "sign",
        help="sign bundle folders (manifest.sig) or files (FILE.sig) with a private key",
    )
    s.add_argument("paths", type=Path, nargs="+", metavar="PATH")
    s.add_argument("--key", type=Path, required=True, help="the private key (keygen's KEY)")
    s.set_defaults(func=_sign)


def _sign(args) -> int:
    from .bundle import MANIFEST, load_bundle, sign_bundle

    key = read_signing_key(args.key)
    for path in args.paths:
        if path.is_dir():
            load_bundle(path, Trust())  # only a bundle whose files verify gets signed
            where = path / "manifest.sig"
            sign_bundle(path, key)
        elif path.is_file() and path.name != MANIFEST:
            where = sign_file(path, key)
        else:
            raise DeployError(f"{show(path)}: neither a bundle folder nor a file to sign")
        print(f"wrote {show(where)} (key {fingerprint(bytes(key.verify_key))})")
    return 0


def _add_verify(sub) -> None:
    v = sub.add_parser(
        "verify",
        help=f"check a signed file (a package's tarball) against FILE{SIG_SUFFIX}",
    )
    v.add_argument("file", type=Path)
    v.add_argument("--trust", type=Path, required=True, metavar="KEY.pub")
    v.set_defaults(func=_verify)


def _verify(args) -> int:
    signer = verify_file(args.file, Trust(read_public_key(args.trust)))
    print(f"{show(args.file)}: signature good, by the trusted key {signer}")
    return 0


SUBCOMMANDS = [_add_keygen, _add_sign, _add_verify]
