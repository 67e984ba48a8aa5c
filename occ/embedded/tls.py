"""A private CA and a server certificate for the embedded broker's TLS listener (issue 7 item 3).

Generated on first start into one folder (`var/tls` under `occ up`): `ca.pem` (give it to devices: it is the
only file they need), `ca.key`, `server.pem`, `server.key` (0600). The server certificate names localhost,
127.0.0.1 and this machine's host name, and is renewed when it expires within 30 days or no longer matches
the CA; the CA lasts 10 years. Elliptic-curve keys (P-256): small and quick to handshake on field modems.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from pathlib import Path

from occ.embedded.broker import TlsFiles
from occ.secrets import write_private

CA_DAYS = 3650
SERVER_DAYS = 825
RENEW_BEFORE_DAYS = 30


def ensure_tls_files(folder: Path, *, hosts: tuple[str, ...] = ()) -> TlsFiles:
    """The CA and server certificate in `folder`, created or renewed when needed."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)  # the broker's own user reads the server files; the keys themselves are 0600
    files = TlsFiles(ca=folder / "ca.pem", cert=folder / "server.pem", key=folder / "server.key")
    ca_key_path = folder / "ca.key"
    now = dt.datetime.now(dt.UTC)

    def pem_key(key: ec.EllipticCurvePrivateKey) -> str:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()

    if files.ca.exists() and ca_key_path.exists():
        ca_cert = x509.load_pem_x509_certificate(files.ca.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OCC"),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"OCC local CA ({socket.gethostname()})")])
        ca_cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=CA_DAYS))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
                   .sign(ca_key, hashes.SHA256()))
        write_private(ca_key_path, pem_key(ca_key))
        files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        files.cert.unlink(missing_ok=True)  # signed by the old CA

    names = ["localhost", socket.gethostname(), *(h for h in hosts if not _is_ip(h))]
    addresses = ["127.0.0.1", "::1", *(h for h in hosts if _is_ip(h))]
    if files.cert.exists() and files.key.exists():
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        fresh = cert.not_valid_after_utc - now > dt.timedelta(days=RENEW_BEFORE_DAYS)
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            ips = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
            covers = set(names) <= set(san.get_values_for_type(x509.DNSName)) and {
                str(ipaddress.ip_address(a)) for a in addresses} <= ips
        except x509.ExtensionNotFound:
            covers = False
        if fresh and covers and cert.issuer == ca_cert.subject:
            return files
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(names)]
    alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(addresses)]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, socket.gethostname())]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    write_private(files.key, pem_key(key))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
