"""The admission webhook's TLS certificate when the operator manages it (no cert-manager): a
CA of its own and a server certificate it signs for the webhook Service's names. Pure: keys and
certificates in, keys and certificates out (cryptography), the clock passed in."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = timedelta(days=365)
# Renewed this long before it expires: a month of margin for an operator that was down.
RENEW_BEFORE = timedelta(days=30)


@dataclass(frozen=True)
class CertBundle:
    """PEM texts, as a kubernetes.io/tls Secret holds them (ca.crt, tls.crt, tls.key)."""

    ca: str
    cert: str
    key: str


def service_names(service: str, namespace: str) -> list[str]:
    """The names the API server may call a Service by."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def issue(names: Sequence[str], now: datetime) -> CertBundle:
    """A new CA and a server certificate for `names` (DNS names or IP addresses)."""
    if not names:
        raise ValueError("a webhook certificate needs at least one name")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailfleet webhook CA")])
    start = now - timedelta(minutes=5)  # clocks of the API server and the operator differ
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + VALIDITY + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return CertBundle(
        ca=ca.public_bytes(pem).decode(), cert=cert.public_bytes(pem).decode(), key=_pem_key(key)
    )


def renewal_reason(bundle: CertBundle | None, names: Sequence[str], now: datetime) -> str | None:
    """Why the stored certificate must be replaced, or None when it serves as is."""
    if bundle is None or not (bundle.ca and bundle.cert and bundle.key):
        return "no certificate yet"
    try:
        cert = x509.load_pem_x509_certificate(bundle.cert.encode())
        ca = x509.load_pem_x509_certificate(bundle.ca.encode())
        key = serialization.load_pem_private_key(bundle.key.encode(), password=None)
    except ValueError as e:
        return f"the stored certificate does not load: {e}"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "the certificate was not issued by the stored CA"
    if key.public_key() != cert.public_key():
        return "the key does not belong to the certificate"
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return f"it expires on {cert.not_valid_after_utc:%Y-%m-%d}"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    have = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    missing = [n for n in names if str(_san(n).value) not in have]
    if missing:
        return f"it does not name {', '.join(missing)}"
    return None


def trusted_cas(current_ca: str, bundle: str, now: datetime) -> str:
    """The caBundle to publish: the current CA first, then the CAs the bundle held that are still
    valid, so that a replica still serving a certificate of the previous CA (it reads a renewed
    Secret at its next check) keeps being trusted until that CA expires."""
    out = [current_ca.strip() + "\n"]
    for cert in x509.load_pem_x509_certificates(bundle.encode()) if bundle.strip() else []:
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        if pem.strip() != current_ca.strip() and cert.not_valid_after_utc > now and pem not in out:
            out.append(pem)
    return "".join(out)
