"""DKIM keys the operator generates for a SendingDomain, and the TXT records that publish them.

The operator may import only mailfleet.mta.config from the engine, so this is the small part of
mailfleet.mta.dkimkeys it needs: generate a private key as PKCS#8 PEM (what the engine loads),
and the TXT value of its public part in the form the engine's `dns_txt_record` writes (RSA:
SubjectPublicKeyInfo DER, Ed25519: the raw 32-byte key, RFC 8463). tests/unit/test_domains.py
checks both agree.
"""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailfleet.operator.api.crd_models import DKIMAlgorithm

RSA_BITS = 2048


def generate_pem(algorithm: DKIMAlgorithm, rsa_bits: int = RSA_BITS) -> bytes:
    """A new private key (RSA of rsa_bits, or Ed25519) as unencrypted PKCS#8 PEM."""
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa-sha256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def txt_value(pem: bytes) -> str:
    """The DKIM TXT record value of a PEM private key: "v=DKIM1; k=rsa; p=MIIB..."."""
    key = serialization.load_pem_private_key(pem, password=None)
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"
    raise ValueError(f"not an RSA or Ed25519 key: {type(key).__name__}")


def txt_strings(value: str, size: int = 255) -> list[str]:
    """A TXT value as character-strings of at most 255 octets (RFC 1035 §3.3)."""
    return [value[i : i + size] for i in range(0, len(value), size)] or [""]


def dkim_name(selector: str, domain: str) -> str:
    return f"{selector}._domainkey.{domain}"


def tags(record: str) -> dict[str, str]:
    """A tag=value; list (DKIM key records, DMARC records) as a dict, names lowercase."""
    out: dict[str, str] = {}
    for part in record.split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            out.setdefault(k.strip().lower(), "".join(v.split()))
    return out


def same_key(published: str, expected: str) -> bool:
    """Whether a published DKIM record carries the expected key (p= and k=; spaces ignored)."""
    p, e = tags(published), tags(expected)
    return bool(p.get("p")) and p.get("p") == e.get("p") and p.get("k", "rsa") == e.get("k", "rsa")
