"""Ed25519 signatures of policy artifacts: a tampered bucket is refused before any traffic.

Why: ``manifest.json`` carries the program's sha256, but the manifest sits beside the file it
vouches for, so whoever can replace one can replace both. A signature over the manifest's exact
bytes (``manifest.sig``, made with a key the bucket's writers do not hold) closes that: the
manifest pins the program's digest, the signature pins the manifest. A server started with
trusted keys (``--trusted-key`` / ``POLICY_TRUSTED_KEYS``) refuses an artifact whose signature is
missing or made by another key, and one whose program does not match the signed digest.

Keys are given as a path to a PEM file or as the base64 of the 32 raw public-key bytes.
``policy-server keygen`` and ``policy-server sign`` make and use them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from policy_server.errors import PolicyServerError

__all__ = [
    "SIGNATURE_NAME",
    "SignatureError",
    "generate_keypair",
    "load_public_key",
    "sign",
    "verify",
]

SIGNATURE_NAME = "manifest.sig"


class SignatureError(PolicyServerError):
    """The signature is missing, malformed or not made by a trusted key; the message says what to do."""


def load_public_key(spec: str) -> ed25519.Ed25519PublicKey:
    """A trusted key from a PEM file path or from base64 raw bytes."""
    path = Path(spec)
    try:
        if path.is_file():
            key = serialization.load_pem_public_key(path.read_bytes())
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise SignatureError(f"trusted key {spec!r} is not an Ed25519 public key; make one with `keygen`")
            return key
        return ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(spec, validate=True))
    except (ValueError, binascii.Error, OSError) as exc:
        raise SignatureError(
            f"trusted key {spec!r} is neither a PEM public key file nor base64 of 32 Ed25519 bytes ({exc})"
        ) from None


def verify(manifest_bytes: bytes, signature: bytes | None, keys: Iterable[str]) -> None:
    """Raise :class:`SignatureError` unless ``signature`` over ``manifest_bytes`` is from one of ``keys``."""
    trusted = [load_public_key(k) for k in keys]
    if signature is None:
        raise SignatureError(
            f"the artifact has no {SIGNATURE_NAME} but this server only serves signed artifacts; "
            "sign it with `policy-server sign --artifact DIR --key PRIVATE.pem`"
        )
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
    except binascii.Error:
        raise SignatureError(f"{SIGNATURE_NAME} is not base64; re-sign the artifact") from None
    for key in trusted:
        try:
            key.verify(raw, manifest_bytes)
            return
        except InvalidSignature:
            continue
    raise SignatureError(
        f"{SIGNATURE_NAME} does not match manifest.json for any trusted key: the manifest was changed after "
        "signing or signed by another key; re-sign it with a trusted key or restore the original"
    )


def sign(artifact_dir: str | Path, private_key_pem: bytes) -> Path:
    """Write ``manifest.sig`` for the local artifact directory; returns its path."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SignatureError("the signing key is not an Ed25519 private key; make one with `policy-server keygen`")
    root = Path(artifact_dir)
    out = root / SIGNATURE_NAME
    out.write_bytes(base64.b64encode(key.sign((root / "manifest.json").read_bytes())) + b"\n")
    return out


def generate_keypair(out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``signing-key.pem`` (private, mode 0600) and ``signing-key.pub.pem``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    private = out / "signing-key.pem"
    public = out / "signing-key.pub.pem"
    private.touch(mode=0o600)
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public
