"""Key material for a Flower deployment: a CA, a server certificate, SuperNode keys.

``python -m flwr_byz.deploy.deployment --make-certificates DIR --hosts ...``
writes the CA and the SuperLink's certificate; ``--make-supernode-keys DIR --names
...`` writes one SuperNode authentication key pair per name (Flower's
``--auth-supernode-private-key``; the public half is what ``flwr supernode
register`` takes). :func:`connection_toml` is the ``flwr`` connection that trusts
the CA.

Private keys are created with mode 0600 by ``os.open`` (never written first and
restricted afterwards), new directories with 0700, and no existing file is ever
replaced unless ``overwrite=True``: re-creating a CA silently would cut every
SuperNode and ``flwr`` CLI that trusts the old ``ca.crt`` off the federation.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: What :func:`make_certificates` writes, in ``directory``.
CERTIFICATE_FILES = ("ca.crt", "ca.key", "server.pem", "server.key")

_OVERWRITE = "--overwrite (overwrite=True)"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class KeyMaterialExistsError(FileExistsError):
    """Refusal to replace an existing CA, server certificate or SuperNode key."""


@dataclass(frozen=True)
class Certificates:
    """Paths of a CA certificate and a server certificate/key signed by it."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class SuperNodeKeys:
    """A SuperNode's authentication key pair (OpenSSH format, NIST P-384)."""

    name: str
    private_key: Path
    public_key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _make_directory(directory: Path) -> None:
    """Create ``directory`` (and parents) owner-only; an existing one is kept as is."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)


def _refuse_existing(paths: Iterable[Path], what: str, flag: str) -> None:
    existing = [str(p) for p in paths if os.path.lexists(p)]
    if existing:
        raise KeyMaterialExistsError(
            f"refusing to overwrite {what}; already there: {', '.join(existing)}. "
            f"Keep using them, choose another directory, or pass {flag} to replace "
            "them (everything that trusted or held the old files then needs the "
            "new ones)."
        )


def write_new_file(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Write ``data`` to a file that ``os.open`` creates with ``mode`` (less umask).

    The file never exists with wider permissions, not even empty: it is created
    by ``O_CREAT | O_EXCL`` (which also refuses a symlink), and with ``overwrite``
    an existing file is unlinked first rather than truncated, since truncating
    would keep its old mode.
    """
    if overwrite and os.path.lexists(path):
        path.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def make_certificates(
    directory: str | Path,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    days: int = 30,
    overwrite: bool = False,
) -> Certificates:
    """Write a self-signed CA and a server certificate for ``hosts`` to ``directory``.

    Files: ``ca.crt`` (public: every SuperNode and ``flwr`` CLI gets it),
    ``ca.key`` (signs server certificates: keep it offline), ``server.pem`` and
    ``server.key`` (the SuperLink's and the Fleet gateway's). IP addresses in
    ``hosts`` become IP subject alternative names, the others DNS names;
    127.0.0.1 is always added, because the SuperLink listens there and the
    gateway, its ServerApp runner and the operator's ``flwr`` reach it there.

    Raises
    ------
    KeyMaterialExistsError
        If one of the four files exists and ``overwrite`` is false; nothing is
        written then.
    """
    directory = Path(directory)
    if not hosts:
        raise ValueError("hosts is empty; give the names SuperNodes connect to")
    if "127.0.0.1" not in hosts:
        hosts = [*hosts, "127.0.0.1"]
    targets = [directory / name for name in CERTIFICATE_FILES]
    if not overwrite:
        _refuse_existing(targets, f"the CA in {directory}", _OVERWRITE)
    _make_directory(directory)
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = (
        now - datetime.timedelta(minutes=5),
        now + datetime.timedelta(days=days),
    )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flwr-byz local CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    paths = Certificates(
        directory / "ca.crt", directory / "server.pem", directory / "server.key"
    )
    # Private keys first: a certificate is never on disk without its key.
    write_new_file(directory / "ca.key", _key_pem(ca_key), 0o600, overwrite)
    write_new_file(paths.server_key, _key_pem(server_key), 0o600, overwrite)
    pem = serialization.Encoding.PEM
    write_new_file(paths.ca_cert, ca_cert.public_bytes(pem), 0o644, overwrite)
    write_new_file(paths.server_cert, server_cert.public_bytes(pem), 0o644, overwrite)
    return paths


def make_supernode_keys(
    directory: str | Path, names: Sequence[str], overwrite: bool = False
) -> list[SuperNodeKeys]:
    """Write an authentication key pair per SuperNode ``name`` to ``directory``.

    ``<name>.key``: the private key, OpenSSH format, mode 0600; it stays on that
    SuperNode (``flower-supernode --auth-supernode-private-key``). ``<name>.pub``:
    the public key, which the SuperLink's operator registers (``flwr supernode
    register <name>.pub <connection>``); a SuperLink started with
    ``--enable-supernode-auth`` accepts no other SuperNode.

    Raises
    ------
    KeyMaterialExistsError
        If one of the files exists and ``overwrite`` is false; nothing is written.
    ValueError
        For an empty, repeated or unsafe name (allowed: letters, digits, ``.``,
        ``_``, ``-``, not starting with ``.``, ``_`` or ``-``).
    """
    directory = Path(directory)
    names = list(names)
    bad = [n for n in names if not _NAME.fullmatch(n)]
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(
            f"SuperNode names {names!r} are not valid: give distinct names of "
            "letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    pairs = [
        SuperNodeKeys(n, directory / f"{n}.key", directory / f"{n}.pub") for n in names
    ]
    if not overwrite:
        _refuse_existing(
            [p for pair in pairs for p in (pair.private_key, pair.public_key)],
            "SuperNode keys",
            _OVERWRITE,
        )
    _make_directory(directory)
    for pair in pairs:
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        write_new_file(pair.private_key, private, 0o600, overwrite)
        write_new_file(
            pair.public_key, public + f" {pair.name}\n".encode(), 0o644, overwrite
        )
    return pairs


def connection_toml(name: str, address: str, root_certificates: str | Path) -> str:
    """A ``config.toml`` whose default connection ``name`` is a TLS SuperLink."""
    cert = str(Path(root_certificates).resolve()).replace("\\", "\\\\")
    return (
        "[superlink]\n"
        f'default = "{name}"\n\n'
        f"[superlink.{name}]\n"
        f'address = "{address}"\n'
        f'root-certificates = "{cert}"\n'
    )
