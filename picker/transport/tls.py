"""TLS for the gRPC port: a mounted certificate reloaded on change, or a self-signed one.

* ``cert_path``: a directory with ``tls.crt`` and ``tls.key`` (a Kubernetes TLS secret
  mounted as a volume) or explicit ``cert_file``/``key_file``. The files are checked
  every ``reload_seconds``; a changed pair is loaded for new connections (an unreadable
  or mismatched pair is logged and the old one kept).
* no certificate given: a self-signed one (EC P-256, SAN ``localhost``, ``127.0.0.1`` and
  the pod's host name) is made at start, in memory, as the inference extension's EPP
  does. Gateways dial it without verifying, so it encrypts but does not authenticate
  picker; mount a real certificate for that.
* ``client_ca_file``: require a client certificate signed by this CA (mTLS), so only the
  gateway can ask for routing decisions.

ALPN offers ``h2`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class TLSConfig:
    enabled: bool = False
    cert_path: str | None = None  # a directory with tls.crt and tls.key
    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None  # set: require client certificates (mTLS)
    reload_seconds: float = 10.0

    def files(self) -> tuple[Path, Path] | None:
        if self.cert_path:
            d = Path(self.cert_path)
            return d / "tls.crt", d / "tls.key"
        if self.cert_file or self.key_file:
            if not (self.cert_file and self.key_file):
                raise ValueError("tls: cert_file and key_file go together")
            return Path(self.cert_file), Path(self.key_file)
        return None


def self_signed(hosts: list[str] | None = None, days: int = 365) -> tuple[bytes, bytes]:
    """A new self-signed certificate and key, PEM encoded."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    names = hosts or ["localhost", "127.0.0.1", socket.gethostname()]
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "picker")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


class ServerTLS:
    """The server's SSLContext and the material behind it, reloaded on change."""

    def __init__(self, config: TLSConfig) -> None:
        self.config = config
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.set_alpn_protocols(["h2"])
        if config.client_ca_file:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(config.client_ca_file)
        self.cert_pem = b""
        self.key_pem = b""
        self.version = 0  # +1 at every (re)load
        self.reloads = 0
        self._stamp: tuple[float, float] | None = None
        self._task: asyncio.Task[None] | None = None
        files = config.files()
        if files is None:
            self._load(*self_signed())
        else:
            self._load_files(files, initial=True)

    @property
    def client_ca_pem(self) -> bytes | None:
        ca = self.config.client_ca_file
        return Path(ca).read_bytes() if ca else None

    def _load(self, cert_pem: bytes, key_pem: bytes) -> None:
        # ssl loads key material from files only: a private temporary directory.
        with tempfile.TemporaryDirectory(prefix="picker-tls-") as d:
            cert, key = Path(d) / "tls.crt", Path(d) / "tls.key"
            cert.write_bytes(cert_pem)
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key_pem)
            self.context.load_cert_chain(cert, key)
        self.cert_pem, self.key_pem = cert_pem, key_pem
        self.version += 1

    def _load_files(self, files: tuple[Path, Path], initial: bool = False) -> bool:
        cert, key = files
        try:
            stamp = (cert.stat().st_mtime, key.stat().st_mtime)
            if stamp == self._stamp:
                return False
            cert_pem, key_pem = cert.read_bytes(), key.read_bytes()
            self._load(cert_pem, key_pem)
        except (OSError, ssl.SSLError) as e:
            if initial:
                raise ValueError(f"tls: cannot load {cert} / {key}: {e}") from e
            log.warning("tls: keeping the current certificate: cannot load %s: %s", cert, e)
            return False
        self._stamp = stamp
        if not initial:
            self.reloads += 1
            log.info("tls: reloaded the certificate from %s", cert)
        return True

    def check(self) -> bool:
        """Reloads the mounted files if they changed; True when it did."""
        files = self.config.files()
        return files is not None and self._load_files(files)

    def start(self) -> None:
        if self.config.files() is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload_seconds)
            self.check()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
