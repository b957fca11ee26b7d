"""DKIM key files: loading private keys, generating new ones, and their DNS TXT records.

Formats read: PEM RSA (PKCS#1 "RSA PRIVATE KEY" or PKCS#8 "PRIVATE KEY"), PEM Ed25519 (PKCS#8),
and dkimpy's own Ed25519 format (the 32-byte seed in base64, as `dknewkey --ktype ed25519`
writes it). Keys are written as unencrypted PKCS#8 PEM, mode 0600.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Literal, TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailfleet.mta.config import DKIMKey

Algorithm: TypeAlias = Literal["rsa-sha256", "ed25519-sha256"]
PrivateKey: TypeAlias = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

# RFC 8301 §3.2: signers MUST use RSA keys of at least 1024 bits (and SHOULD use 2048).
MIN_RSA_BITS = 1024
DEFAULT_RSA_BITS = 2048


class DKIMKeyError(ValueError):
    """A DKIM key file is missing, unreadable, malformed, or of the wrong type."""


def describe(key: DKIMKey) -> str:
    """How error messages name a configured key: its DNS name, algorithm and file."""
    return f"{key.selector}._domainkey.{key.domain} ({key.algorithm}, file {key.key_file})"


def parse_private_key(data: bytes, algorithm: Algorithm) -> PrivateKey:
    """Parse key file contents; raise ValueError (with the reason only) when they don't fit."""
    stripped = data.strip()
    if stripped.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(stripped, password=None)
        except TypeError as e:  # cryptography's way of saying "this key is encrypted"
            raise ValueError(f"encrypted private keys are not supported ({e})") from e
        except (ValueError, UnsupportedAlgorithm) as e:
            raise ValueError(f"not a valid PEM private key ({e})") from e
    elif algorithm == "ed25519-sha256":
        try:
            seed = base64.b64decode(b"".join(stripped.split()), validate=True)
        except binascii.Error as e:
            raise ValueError("neither PEM nor a base64 Ed25519 private key") from e
        if len(seed) != 32:
            raise ValueError(f"base64 Ed25519 private key must decode to 32 bytes, got {len(seed)}")
        key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    else:
        raise ValueError("not a PEM private key (no -----BEGIN line)")

    if algorithm == "rsa-sha256":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"algorithm rsa-sha256 needs an RSA key, file holds {_kind(key)}")
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(
                f"RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} are required "
                "(RFC 8301), 2048 recommended"
            )
        return key
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"algorithm ed25519-sha256 needs an Ed25519 key, file holds {_kind(key)}")
    return key


def load_private_key(key: DKIMKey) -> PrivateKey:
    """Read and parse a configured key file; errors name the file, domain and selector."""
    try:
        data = Path(key.key_file).read_bytes()
    except OSError as e:
        raise DKIMKeyError(
            f"DKIM key {describe(key)}: cannot read key file: {e.strerror or e}"
        ) from e
    try:
        return parse_private_key(data, key.algorithm)
    except ValueError as e:
        raise DKIMKeyError(f"DKIM key {describe(key)}: {e}") from e


def dns_txt_record(key: DKIMKey | PrivateKey) -> str:
    """The TXT record value publishing a key's public part, e.g. "v=DKIM1; k=rsa; p=MIIB...".

    Publish it at `<selector>._domainkey.<domain>`. A 2048-bit RSA value is longer than 255
    characters, so in DNS it is split into several strings (see `zone_record`).
    """
    private = load_private_key(key) if isinstance(key, DKIMKey) else key
    if isinstance(private, rsa.RSAPrivateKey):
        # SubjectPublicKeyInfo DER is what opendkim and dkimpy publish and every verifier accepts.
        der = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"
    # RFC 8463 §4.2: the p= value of an Ed25519 key is the raw 32-byte public key.
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"


def txt_strings(value: str, size: int = 255) -> list[str]:
    """Split a TXT value into character-strings of at most `size` octets (RFC 1035 §3.3)."""
    return [value[i : i + size] for i in range(0, len(value), size)] or [""]


def zone_record(domain: str, selector: str, value: str) -> str:
    """A zone-file line for the record, with the value split into quoted strings."""
    strings = " ".join(f'"{s}"' for s in txt_strings(value))
    return f"{selector}._domainkey.{domain.rstrip('.')}. IN TXT ( {strings} )"


def generate_private_key(algorithm: Algorithm, bits: int = DEFAULT_RSA_BITS) -> PrivateKey:
    if algorithm == "rsa-sha256":
        if bits < MIN_RSA_BITS:
            raise ValueError(f"RSA keys need at least {MIN_RSA_BITS} bits (RFC 8301)")
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return ed25519.Ed25519PrivateKey.generate()


def generate_key(algorithm: Algorithm, path: str | Path, bits: int = DEFAULT_RSA_BITS) -> str:
    """Write a new private key to `path` (PKCS#8 PEM, mode 0600) and return its TXT value.

    Refuses to overwrite an existing file (FileExistsError): replacing a key that DNS already
    publishes would break every signature made with it until the record changes.
    """
    private = generate_private_key(algorithm, bits)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may only have removed bits; make it exact
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
    finally:
        os.close(fd)
    return dns_txt_record(private)


def _kind(key: object) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "an RSA key"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "an Ed25519 key"
    return f"a {type(key).__name__.removeprefix('_')}"
