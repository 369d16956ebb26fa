"""The report server's serving certificate.

In a cluster the chart (or cert-manager) provides a certificate and the CA that trainers verify
it with (``FINETUNE_REPORT_TLS_CERT_FILE`` / ``_KEY_FILE`` / ``_CA_FILE``). When none is set (local
development, tests) the operator makes its own at start: a fresh CA and a server certificate
for the report URL's host (plus localhost), both EC P-256, valid for 30 days, the CA's private
key discarded at once. Trainers get the CA's PEM in their config (``report.caPem``), so they
verify the server even then. A restart makes a new CA: new pods get the new config; a pod that
kept an old config fails to report (one warning) and keeps training.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServingCert:
    cert_file: str
    key_file: str
    ca_pem: str  # what trainers trust


def generate(hosts: list[str], directory: str | os.PathLike[str] | None = None,
             days: int = 30, now: dt.datetime | None = None) -> ServingCert:
    """A new CA and a server certificate for ``hosts`` (DNS names or IP addresses), written to
    ``directory`` (a new private temporary directory when None); the key file is mode 0600."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = now or dt.datetime.now(dt.UTC)
    not_before, not_after = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "finetune-operator report CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for h in dict.fromkeys([*hosts, "localhost", "127.0.0.1", "::1"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder()
        # a CN is at most 64 characters (a long namespace makes the Service name longer);
        # clients match the subjectAltName, which carries the full names
        .subject_name(x509.Name([x509.NameAttribute(
            NameOID.COMMON_NAME, (hosts[0] if hosts else "localhost")[:64])]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out = Path(directory) if directory is not None else Path(
        tempfile.mkdtemp(prefix="finetune-report-tls-"))
    out.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = out / "tls.crt", out / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
    return ServingCert(str(cert_file), str(key_file), ca_pem)
