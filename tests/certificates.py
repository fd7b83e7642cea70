"""Certificates for tests of TLS (the collector's listener and API, the shipper): made
with ``cryptography``, written as PEM files."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def self_signed_certificate(directory: Path, **flaws: Any) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files (cert, key); ``flaws`` make
    it one a client refuses for a reason other than trust (see ``_certificate``)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate("audit-collector test", key, key, "audit-collector test", ca=True,
                        **flaws)
    return _write_pem(directory, "cert.pem", cert), _write_key(directory, "key.pem", key)


def ca_issued_certificate(directory: Path, *, authority_key_identifier: bool = True
                          ) -> tuple[Path, Path, Path]:
    """A test CA and a certificate it issued for 127.0.0.1, as PEM files (ca, cert, key);
    without ``authority_key_identifier`` the certificate breaks RFC 5280 (4.2.1.1)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("audit test CA", ca_key, ca_key, "audit test CA", ca=True)
    cert = _certificate("audit-collector test", key, ca_key, "audit test CA", ca=False,
                        authority_key_identifier=authority_key_identifier)
    return (_write_pem(directory, "ca.pem", ca), _write_pem(directory, "cert.pem", cert),
            _write_key(directory, "key.pem", key))


def _certificate(subject: str, key: Any, issuer_key: Any, issuer: str, *, ca: bool,
                 authority_key_identifier: bool = False, starts_in: float = -300,
                 ends_in: float = 3600, address: str = "127.0.0.1",
                 client_only: bool = False) -> Any:
    """A certificate for ``address``, valid from ``starts_in`` to ``ends_in`` seconds
    from now; with ``client_only``, for TLS clients only (extended key usage). A CA's
    has the extensions RFC 5280 asks of one (Python 3.13's default verification checks
    them)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(seconds=starts_in))
        .not_valid_after(now + datetime.timedelta(seconds=ends_in))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
    )
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    if authority_key_identifier:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False)
    if client_only:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pem(directory: Path, name: str, cert: Any) -> Path:
    from cryptography.hazmat.primitives import serialization

    path = directory / name
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(directory: Path, name: str, key: Any) -> Path:
    from cryptography.hazmat.primitives import serialization

    path = directory / name
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path
