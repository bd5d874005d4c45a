"""Ed25519 keys and signatures (``cryptography``) for bundle manifests.

A bundle is trusted when its manifest carries a valid signature by one of the vehicle's trusted
public keys; the manifest in turn names the sha256 of every other file, so one signature covers the
whole bundle (the RAUC / Mender pattern). Keys are PEM files: the private key PKCS#8 (written with
mode 0600), the public key SubjectPublicKeyInfo.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import DeployError

SIGNATURE_BYTES = 64


def generate_keypair(stem: str | Path) -> tuple[Path, Path]:
    """Write ``STEM.key`` (private, 0600) and ``STEM.pub``; refuses to overwrite either."""
    stem = Path(stem)
    key_path, pub_path = stem.with_name(stem.name + ".key"), stem.with_name(stem.name + ".pub")
    for path in (key_path, pub_path):
        if path.exists():
            raise DeployError(f"{path} exists; choose another name (keys are never overwritten)", 2)
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    pub_path.write_bytes(public)
    return key_path, pub_path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise DeployError(f"--key {path}: cannot read ({exc.strerror or exc}); make one with edge-deploy keygen", 2)
    except (ValueError, TypeError) as exc:
        raise DeployError(f"--key {path}: not an unencrypted PEM private key ({exc})", 2)
    if not isinstance(key, Ed25519PrivateKey):
        raise DeployError(f"--key {path}: not an Ed25519 key; make one with edge-deploy keygen", 2)
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise DeployError(f"trusted key {path}: cannot read ({exc.strerror or exc})", 2)
    except ValueError as exc:
        raise DeployError(f"trusted key {path}: not a PEM public key ({exc})", 2)
    if not isinstance(key, Ed25519PublicKey):
        raise DeployError(f"trusted key {path}: not an Ed25519 public key", 2)
    return key


def public_key_id(key: Ed25519PublicKey) -> str:
    """A short fingerprint for messages: the first 16 hex digits of sha256(raw public key)."""
    import hashlib

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    return key.sign(data)  # Ed25519 is deterministic: same key and data, same signature


def verify(keys: list[Ed25519PublicKey], data: bytes, signature: bytes) -> Ed25519PublicKey | None:
    """The trusted key that signed ``data``, or None."""
    for key in keys:
        try:
            key.verify(signature, data)
            return key
        except InvalidSignature:
            continue
    return None
