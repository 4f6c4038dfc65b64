"""Ed25519 key files: ``NAME.key`` (private, PEM, mode 0600) and ``NAME.pub`` (public, PEM) in a folder. A fleet's
trust store is a folder of ``*.pub`` files whose stems name the signers, so copying a host's ``.pub`` to the other
hosts is all it takes to trust it; private keys never leave their host."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = ["KeyFileError", "SigningKey", "TrustStore", "list_keys", "load_signing_key", "load_trust_store", "make_keys"]

NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # a signer name is a file stem: no separators, nothing a shell mangles


class KeyFileError(ValueError):
    """A key that cannot be made or read; the message says which file and why."""


def check_name(name: str) -> str:
    if not NAME.match(name) or name.startswith("."):
        raise KeyFileError(f"key name '{name}' must be letters, digits, '_', '-' or '.' (not first)")
    return name


@dataclasses.dataclass(frozen=True)
class SigningKey:
    """A host's own key: the name it signs as (the file stem) and the private key."""

    name: str
    key: Ed25519PrivateKey

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)


@dataclasses.dataclass(frozen=True)
class TrustStore:
    """The public keys of the signers a receiver trusts, by name."""

    keys: dict[str, Ed25519PublicKey]

    def knows(self, name: str) -> bool:
        return name in self.keys

    def valid(self, name: str, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is ``name``'s over ``data`` (False for an unknown name)."""
        key = self.keys.get(name)
        if key is None:
            return False
        try:
            key.verify(signature, data)
        except InvalidSignature:
            return False
        return True


def make_keys(folder: str | os.PathLike, names: list[str], force: bool = False) -> list[pathlib.Path]:
    """Write ``NAME.key`` (0600) and ``NAME.pub`` for each name; refuse to overwrite existing keys unless ``force``
    (a host's key replaced by mistake locks it out of its fleet). Returns the files written."""
    folder = pathlib.Path(folder)
    for name in names:
        check_name(name)
    existing = [p for n in names for p in (folder / f"{n}.key", folder / f"{n}.pub") if p.exists()]
    if existing and not force:
        raise KeyFileError(f"{', '.join(map(str, existing))} exist: not overwritten (--force replaces them)")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        key = Ed25519PrivateKey.generate()
        private = folder / f"{name}.key"
        private.unlink(missing_ok=True)
        # Created 0600 from the start: never readable by others, not even for a moment.
        descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        public = folder / f"{name}.pub"
        public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
        written += [private, public]
    return written


def load_signing_key(path: str | os.PathLike) -> SigningKey:
    """A host's private key; its signer name is the file stem."""
    path = pathlib.Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise KeyFileError(f"cannot read the signing key {path}: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 private key")
    return SigningKey(check_name(path.stem), key)


def load_trust_store(folder: str | os.PathLike) -> TrustStore:
    """Every ``*.pub`` of the folder; an empty or missing folder is an error (trust on with nobody trusted would
    refuse everything, which is never what was meant)."""
    folder = pathlib.Path(folder)
    keys: dict[str, Ed25519PublicKey] = {}
    for path in sorted(folder.glob("*.pub")):
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except (OSError, ValueError) as err:
            raise KeyFileError(f"cannot read the public key {path}: {err}") from err
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{path} is not an Ed25519 public key")
        keys[check_name(path.stem)] = key
    if not keys:
        raise KeyFileError(f"no *.pub key in {folder}: nobody to trust")
    return TrustStore(keys)


def list_keys(folder: str | os.PathLike) -> list[tuple[str, bool, bool]]:
    """(name, has a private key, has a public key) for every key of the folder."""
    folder = pathlib.Path(folder)
    names = sorted({p.stem for p in folder.glob("*.key")} | {p.stem for p in folder.glob("*.pub")})
    return [(n, (folder / f"{n}.key").is_file(), (folder / f"{n}.pub").is_file()) for n in names]
