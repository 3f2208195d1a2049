"""Ed25519 signatures over a bundle's manifest (optional: ``pip install 'edgetok[signing]'``).

The manifest names every file of the bundle with its sha256 and ``load_bundle`` checks
them, so a valid signature over the manifest's bytes vouches for the whole bundle.
``sign_bundle`` writes ``bundle.toml.sig`` (the 64-byte signature in base64) beside the
manifest with an Ed25519 private key in PEM (PKCS #8: ``new_key``, or ``openssl genpkey
-algorithm ed25519``); ``verify_bundle`` checks it against trusted public keys in PEM
(``KEY.pub`` from ``new_key``, or ``openssl pkey -in KEY -pubout``) and raises
``SignatureError`` naming what is wrong. The ``cryptography`` package is imported only
here, when a bundle is signed or checked.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgetok.bundle import BundleError, manifest_of

__all__ = ["SIGNATURE_SUFFIX", "SignatureError", "new_key", "sign_bundle", "verify_bundle"]

SIGNATURE_SUFFIX = ".sig"
"""The signature lies beside the manifest: ``bundle.toml.sig``."""
_SIGNATURE_BYTES = 64


class SignatureError(BundleError):
    """A bundle that is not signed by a trusted key, or a key that cannot be used."""


def _ed25519() -> Any:
    """``cryptography``'s Ed25519 module, or an ImportError saying what to install."""
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise ImportError(
            "signed bundles need the cryptography package: pip install 'edgetok[signing]'"
        ) from None
    return ed25519


def _pem(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SignatureError(f"{what} {path}: {exc.strerror or exc}") from None


def _private_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(_pem(path, "key"), password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(
            f"key {path}: not a PEM private key without password ({exc})"
        ) from None
    if not isinstance(key, _ed25519().Ed25519PrivateKey):
        raise SignatureError(f"key {path}: not an Ed25519 private key")
    return key


def _public_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(_pem(path, "trusted key"))
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"trusted key {path}: not a PEM public key ({exc})") from None
    if not isinstance(key, _ed25519().Ed25519PublicKey):
        raise SignatureError(f"trusted key {path}: not an Ed25519 public key")
    return key


def new_key(path: str | Path) -> Path:
    """A new Ed25519 private key in ``path`` (PEM, mode 0600) and its public key in
    ``path.pub``; refuses to overwrite either. Returns the public key's path."""
    from cryptography.hazmat.primitives import serialization

    path = Path(path)
    public = path.with_name(path.name + ".pub")
    for existing in (path, public):
        if existing.exists():
            raise SignatureError(f"key {existing} exists; not overwritten")
    key = _ed25519().Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(private_pem)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return public


def _signature_path(manifest: Path) -> Path:
    return manifest.with_name(manifest.name + SIGNATURE_SUFFIX)


def sign_bundle(bundle: str | Path, key: str | Path) -> Path:
    """Sign the manifest of ``bundle`` (its directory or its ``bundle.toml``) with the
    private key in ``key``; returns the signature file written."""
    manifest = manifest_of(bundle)
    signer = _private_key(Path(key))
    if not manifest.is_file():
        raise SignatureError(f"no bundle at {bundle}: {manifest} not found")
    signature = signer.sign(manifest.read_bytes())
    path = _signature_path(manifest)
    path.write_text(base64.b64encode(signature).decode("ascii") + "\n", encoding="ascii")
    return path


def verify_bundle(bundle: str | Path, trusted: Sequence[str | Path]) -> Path:
    """Check that the manifest of ``bundle`` is signed by one of the ``trusted`` public
    keys; returns that key's path. Raises ``SignatureError``."""
    from cryptography.exceptions import InvalidSignature

    if not trusted:
        raise SignatureError("no trusted key to check the bundle's signature against")
    keys = [(Path(path), _public_key(Path(path))) for path in trusted]
    manifest = manifest_of(bundle)
    if not manifest.is_file():
        raise SignatureError(f"no bundle at {bundle}: {manifest} not found")
    path = _signature_path(manifest)
    if not path.is_file():
        raise SignatureError(f"{manifest}: the bundle is not signed (no {path.name})")
    try:
        signature = base64.b64decode(path.read_text(encoding="ascii").strip(), validate=True)
    except (UnicodeDecodeError, binascii.Error):
        signature = b""
    if len(signature) != _SIGNATURE_BYTES:
        raise SignatureError(f"{path}: not an Ed25519 signature (64 bytes in base64)")
    data = manifest.read_bytes()
    for key_path, key in keys:
        try:
            key.verify(signature, data)
        except InvalidSignature:
            continue
        return key_path
    raise SignatureError(
        f"{manifest}: the signature in {path.name} is not by a trusted key "
        f"({', '.join(str(p) for p, _ in keys)}): the manifest was changed after signing, "
        "or another key signed it"
    )
