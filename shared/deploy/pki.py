"""Certificates and keys for a deployed federation.

A consortium needs three kinds of key material (see deploy/README.md):

- a certificate authority (``ca.crt``, ``ca.key``) kept by the coordinator; ``ca.crt`` goes to
  every site, which uses it to check that it talks to the real SuperLink;
- the SuperLink's TLS certificate (``superlink.crt``, ``superlink.key``), signed by the CA,
  whose subject alternative names list every host name and IP address sites dial;
- one authentication key pair per site (``site-01``, ``site-01.pub``): an ECDSA key in OpenSSH
  format, as ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register``
  expect. Only the public half leaves the site.

Private keys are written with mode 0600 and every file atomically. Existing keys are never
overwritten unless asked: replacing a CA silently would lock every site out.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.io import write_bytes_atomic

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_NAME = "superlink"
PRIVATE = 0o600


@dataclass(frozen=True)
class KeyPair:
    certificate_or_public: Path
    private: Path


def _refuse_overwrite(paths: list[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise ConfigError(f"{', '.join(existing)} already exist (use --force to replace)")


def _write_private_key(path: Path, key: ec.EllipticCurvePrivateKey, encoding: serialization.PrivateFormat) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, encoding, serialization.NoEncryption())
    write_bytes_atomic(path, data, mode=PRIVATE)


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        if not host or any(c in host for c in " /:"):
            raise ConfigError(f"{host!r} is neither an IP address nor a host name") from None
        return x509.DNSName(host)


def make_ca(
    out_dir: str | Path, *, organization: str = "FedNeuroGen consortium", days: int = 3650, force: bool = False
) -> KeyPair:
    """A self-signed certificate authority: ``out_dir/ca.crt`` and ``out_dir/ca.key``."""
    out = Path(out_dir)
    cert_path, key_path = out / CA_CERT, out / CA_KEY
    _refuse_overwrite([cert_path, key_path], force)
    key = ec.generate_private_key(ec.SECP384R1())
    name = _name(f"{organization} CA", organization)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write_private_key(key_path, key, serialization.PrivateFormat.PKCS8)
    write_bytes_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return KeyPair(cert_path, key_path)


def load_ca(ca_dir: str | Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_dir = Path(ca_dir)
    cert_path, key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
    for path in (cert_path, key_path):
        if not path.is_file():
            raise ConfigError(f"{path} not found: create the CA first (fedneurogen certs ca --out {ca_dir})")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError as err:
        raise ConfigError(f"{ca_dir}: cannot read the CA certificate or key: {err}") from None
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise ConfigError(f"{key_path} is not the key of {cert_path}")
    return cert, key


def make_server_certificate(
    ca_dir: str | Path,
    out_dir: str | Path,
    hosts: list[str],
    *,
    name: str = SERVER_NAME,
    days: int = 825,
    force: bool = False,
) -> KeyPair:
    """The SuperLink's TLS certificate, signed by the CA in ``ca_dir``, valid for ``hosts``
    (DNS names and IP addresses, all of them: a site dialling a name not listed is refused)."""
    if not hosts:
        raise ConfigError("the SuperLink certificate needs at least one host name or IP address (--host)")
    ca_cert, ca_key = load_ca(ca_dir)
    out = Path(out_dir)
    cert_path, key_path = out / f"{name}.crt", out / f"{name}.key"
    _refuse_overwrite([cert_path, key_path], force)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    organization = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0], str(organization)))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write_private_key(key_path, key, serialization.PrivateFormat.PKCS8)
    write_bytes_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return KeyPair(cert_path, key_path)


def make_node_keypair(out_dir: str | Path, name: str, *, force: bool = False) -> KeyPair:
    """A site's authentication key pair: ``out_dir/name`` (private, 0600) and ``name.pub``."""
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"{name!r} is not a usable key name (e.g. site-01)")
    out = Path(out_dir)
    private_path, public_path = out / name, out / f"{name}.pub"
    _refuse_overwrite([private_path, public_path], force)
    key = ec.generate_private_key(ec.SECP384R1())  # a NIST curve, as `flwr supernode register` requires
    _write_private_key(private_path, key, serialization.PrivateFormat.OpenSSH)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    write_bytes_atomic(public_path, public + f" {name}\n".encode())
    return KeyPair(public_path, private_path)


def check_server_certificate(cert_path: str | Path, ca_path: str | Path, host: str) -> list[str]:
    """Problems a site would meet dialling ``host`` with ``ca_path`` as its root (empty: none)."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    ca = x509.load_pem_x509_certificate(Path(ca_path).read_bytes())
    problems = []
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        problems.append(f"{cert_path} is not signed by the CA in {ca_path}")
    now = dt.datetime.now(dt.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        problems.append(
            f"{cert_path} is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})"
        )
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        listed = [str(n) for n in names.get_values_for_type(x509.DNSName)] + [
            str(n) for n in names.get_values_for_type(x509.IPAddress)
        ]
    except x509.ExtensionNotFound:
        listed = []
    if host not in listed:
        problems.append(
            f"{cert_path} does not list {host!r} among its names {listed}: sites dialling {host!r} will be refused"
        )
    return problems
