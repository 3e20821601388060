"""Pytest fixtures: one set of real services per test session, plus factories for fault tests.

Services that fail to start fail the run with their log; nothing here skips.
"""

from __future__ import annotations

import shutil
import tempfile
import typing as t
import uuid
from pathlib import Path

import pytest

from tests.harness.services import MotoS3Server, PostgresServer, RedisServer

# An ACL user that may read data but holds no admin rights (no SYNC/REPLCONF/CONFIG/BGSAVE).
REDIS_LIMITED_USER = "limited"
REDIS_LIMITED_PASSWORD = "harness-limited-secret"
REDIS_LIMITED_ACL = "%s on >%s ~* &* +@all -@admin -@dangerous" % (REDIS_LIMITED_USER, REDIS_LIMITED_PASSWORD)
# An ACL user with exactly what a replication-protocol backup needs.
REDIS_BACKUP_USER = "backup"
REDIS_BACKUP_PASSWORD = "harness-backup-secret"
REDIS_BACKUP_ACL = "%s on >%s ~* &* +@read +info +ping +sync +replconf" % (REDIS_BACKUP_USER, REDIS_BACKUP_PASSWORD)


@pytest.fixture(scope="session")
def harness_dir() -> t.Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="runbook-harness-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class _Services:
    """Stops what it started, in reverse order, whatever happened."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: t.List[t.Any] = []

    def add(self, service: t.Any) -> t.Any:
        self.started.append(service)
        return service.start()

    def workdir(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=name + "-", dir=self.root))

    def stop_all(self) -> None:
        for service in reversed(self.started):
            service.stop()
        self.started.clear()


@pytest.fixture(scope="session")
def _session_services(harness_dir: Path) -> t.Iterator[_Services]:
    services = _Services(harness_dir)
    yield services
    services.stop_all()


@pytest.fixture
def service_factory(harness_dir: Path) -> t.Iterator[_Services]:
    """Start private services for one test (to stop or kill them mid-operation)."""
    services = _Services(harness_dir)
    yield services
    services.stop_all()


@pytest.fixture(scope="session")
def postgres(_session_services: _Services) -> PostgresServer:
    return _session_services.add(PostgresServer(_session_services.workdir("pg")))


@pytest.fixture(scope="session")
def redis_plain(_session_services: _Services) -> RedisServer:
    return _session_services.add(RedisServer(_session_services.workdir("redis-plain"), name="redis-plain",
                                             users=[REDIS_BACKUP_ACL]))


@pytest.fixture(scope="session")
def redis_aof(_session_services: _Services) -> RedisServer:
    return _session_services.add(RedisServer(_session_services.workdir("redis-aof"), name="redis-aof",
                                             appendonly=True))


@pytest.fixture(scope="session")
def redis_acl(_session_services: _Services) -> RedisServer:
    return _session_services.add(RedisServer(_session_services.workdir("redis-acl"), name="redis-acl",
                                             users=[REDIS_LIMITED_ACL, REDIS_BACKUP_ACL]))


@pytest.fixture(scope="session")
def s3_server(_session_services: _Services) -> MotoS3Server:
    return _session_services.add(MotoS3Server(_session_services.workdir("s3")))


@pytest.fixture
def s3_bucket(s3_server: MotoS3Server) -> str:
    """A fresh, empty bucket for one test."""
    return s3_server.create_bucket("test-%s" % uuid.uuid4().hex[:12])


@pytest.fixture(params=["file", "s3"])
def repository(request: pytest.FixtureRequest, tmp_path: Path) -> dict:
    """Repository options for both backends; every backend-neutral test runs on each."""
    if request.param == "file":
        return {"repository": "file://%s" % (tmp_path / "repo")}
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return server.repository_options(bucket)


class AgeKey(t.NamedTuple):
    identity: str
    recipient: str


@pytest.fixture(scope="session")
def age_key() -> AgeKey:
    """A fresh age X25519 key pair (secret key text, public key)."""
    import pyrage
    identity = pyrage.x25519.Identity.generate()
    return AgeKey(str(identity), str(identity.to_public()))


class TLSFiles(t.NamedTuple):
    """PEM files of a test CA and of a server certificate it signed (for 127.0.0.1 and localhost)."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_tls_files(directory: Path, common_name: str = "harness-ca") -> TLSFiles:
    """A fresh CA and a server certificate for loopback, written under ``directory`` (keys 0600)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = TLSFiles(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    files.key_file.chmod(0o600)
    ca_key_file = directory / "ca-key.pem"
    ca_key_file.write_bytes(ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    ca_key_file.chmod(0o600)
    return files


def make_client_cert(files: TLSFiles, name: str = "runbook-client") -> t.Tuple[Path, Path]:
    """A client certificate (and its 0600 key) signed by the CA of ``files``, next to them."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate(files.ca_file.read_bytes())
    ca_key = serialization.load_pem_private_key((files.ca_file.parent / "ca-key.pem").read_bytes(), None)
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_file, key_file = files.ca_file.parent / ("%s.pem" % name), files.ca_file.parent / ("%s-key.pem" % name)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


@pytest.fixture(scope="session")
def redis_tls(_session_services: _Services) -> RedisServer:
    """A Redis with a plain port and a TLS port (``tls_port``, ``tls_login``) signed by a test CA."""
    workdir = _session_services.workdir("redis-tls")
    files = make_tls_files(workdir / "tls")
    return _session_services.add(RedisServer(workdir, name="redis-tls", tls_cert_file=files.cert_file,
                                             tls_key_file=files.key_file, tls_ca_file=files.ca_file))


# The HIPAA platform's Redis: a password, TLS with client certificates and a renamed BGSAVE.
REDIS_RENAMED_BGSAVE = "HIPAA_BGSAVE_i9j0k1l2"
# Least-privilege users, as documented: the health checks, and a user that may not run INFO.
REDIS_HEALTH_USER = "health"
REDIS_HEALTH_PASSWORD = "harness-health-secret"
REDIS_HEALTH_ACL = ("%s on >%s -@all +ping +info +slowlog|get +config|get +acl|log +acl|getuser +acl|dryrun"
                    % (REDIS_HEALTH_USER, REDIS_HEALTH_PASSWORD))
REDIS_NOINFO_USER = "noinfo"
REDIS_NOINFO_PASSWORD = "harness-noinfo-secret"
REDIS_NOINFO_ACL = "%s on >%s ~* +@all -info -config -slowlog -acl" % (REDIS_NOINFO_USER, REDIS_NOINFO_PASSWORD)


@pytest.fixture(scope="session")
def redis_hardened(_session_services: _Services) -> RedisServer:
    """TLS port requiring a client certificate (``client_cert_file``/``client_key_file`` attributes), a password,
    BGSAVE renamed to :data:`REDIS_RENAMED_BGSAVE`, and the health and no-INFO ACL users."""
    workdir = _session_services.workdir("redis-hardened")
    files = make_tls_files(workdir / "tls")
    server = RedisServer(workdir, name="redis-hardened", tls_cert_file=files.cert_file, tls_key_file=files.key_file,
                         tls_ca_file=files.ca_file, tls_auth_clients=True, users=[REDIS_HEALTH_ACL, REDIS_NOINFO_ACL],
                         extra_config=["rename-command BGSAVE %s" % REDIS_RENAMED_BGSAVE])
    server.client_cert_file, server.client_key_file = make_client_cert(files)
    return _session_services.add(server)
