"""Real PostgreSQL, Redis and S3 (moto) servers on loopback, for tests and the lab."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
import typing as t
from pathlib import Path

from tests.harness.process import ManagedProcess, ServiceError, free_port


def _state_path(workdir: Path) -> Path:
    return workdir / "service.json"


def pg_bin_dir(version: str = "15") -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/%s/bin" % version)) or sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not candidates:
        raise ServiceError("PostgreSQL server binaries not found under /usr/lib/postgresql (install postgresql-15)")
    return Path(candidates[-1])


class PostgresServer:
    """A throwaway cluster made with initdb, run as the ``postgres`` OS user when we are root.

    With ``ssl_cert_file`` and ``ssl_key_file`` it serves TLS on its port (copies of both files are
    kept in ``workdir/tls``, owned by the server's user, as PostgreSQL requires of its key).
    """

    user = "postgres"

    def __init__(self, workdir: Path, password: str = "harness-pg-secret", port: t.Optional[int] = None,
                 ssl_cert_file: t.Optional[Path] = None, ssl_key_file: t.Optional[Path] = None) -> None:
        self.workdir = Path(workdir)
        self.datadir = self.workdir / "data"
        self.socket_dir = self.workdir / "sock"
        self.password = password
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.bin_dir = pg_bin_dir()
        self.process = ManagedProcess("postgres", self.workdir)
        self._os_user = "postgres" if os.geteuid() == 0 else None
        self.ssl_files = (ssl_cert_file, ssl_key_file) if ssl_cert_file and ssl_key_file else None

    def _chown(self, path: Path) -> None:
        if self._os_user:
            entry = pwd.getpwnam(self._os_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _run_as(self, argv: t.Sequence[str], **kwargs: t.Any) -> subprocess.CompletedProcess:
        if self._os_user:
            kwargs["user"] = self._os_user
        return subprocess.run(list(argv), check=True, capture_output=True, text=True, **kwargs)

    def start(self) -> "PostgresServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        self._chown(self.workdir)
        if not (self.datadir / "PG_VERSION").exists():
            pwfile = self.workdir / "initdb.pw"
            pwfile.write_text(self.password)
            self._chown(pwfile)
            try:
                self._run_as([str(self.bin_dir / "initdb"), "-D", str(self.datadir), "-U", self.user,
                              "--auth-local=trust", "--auth-host=scram-sha-256", "--pwfile", str(pwfile),
                              "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
            except subprocess.CalledProcessError as exc:
                raise ServiceError("initdb failed: %s" % exc.stderr)
            finally:
                pwfile.unlink()
        self.socket_dir.mkdir(exist_ok=True)
        self._chown(self.socket_dir)
        self.process.spawn([str(self.bin_dir / "postgres"), "-D", str(self.datadir), "-p", str(self.port),
                            "-h", self.host, "-k", str(self.socket_dir), "-c", "fsync=off",
                            "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                            "-c", "max_connections=100", "-c", "shared_buffers=256MB"] + self._ssl_args(),
                           user=self._os_user)
        self.process.wait_until(self.ready, 60, "accepting connections")
        return self

    def _ssl_args(self) -> t.List[str]:
        if not self.ssl_files:
            return []
        tls = self.workdir / "tls"
        tls.mkdir(exist_ok=True)
        cert, key = tls / "server.crt", tls / "server.key"
        shutil.copyfile(self.ssl_files[0], cert)
        shutil.copyfile(self.ssl_files[1], key)
        key.chmod(0o600)
        for path in (tls, cert, key):
            self._chown(path)
        return ["-c", "ssl=on", "-c", "ssl_cert_file=%s" % cert, "-c", "ssl_key_file=%s" % key]

    def ready(self) -> bool:
        proc = subprocess.run([str(self.bin_dir / "pg_isready"), "-h", self.host, "-p", str(self.port), "-q"],
                              check=False)
        return proc.returncode == 0

    def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: sessions are ended, nothing is left to recover.
        import signal
        self.process.stop(timeout=30, signum=signal.SIGINT)

    def kill(self) -> None:
        self.process.kill()

    @property
    def env(self) -> dict:
        """Environment for libpq tools connecting over TCP as the superuser."""
        env = dict(os.environ)
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user, PGPASSWORD=self.password)
        return env

    @property
    def login(self) -> dict:
        """Connection options as the modules take them."""
        return {"login_host": self.host, "login_port": self.port, "login_user": self.user,
                "login_password": self.password}

    def psql(self, sql: str, db: str = "postgres", check: bool = True) -> str:
        proc = subprocess.run([str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                               "-d", db, "-c", sql], env=self.env, capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise ServiceError("psql failed on %s: %s" % (db, proc.stderr.strip()))
        return proc.stdout.strip()

    def describe(self) -> dict:
        return {"host": self.host, "port": self.port, "user": self.user, "password": self.password,
                "socket_dir": str(self.socket_dir), "bin_dir": str(self.bin_dir)}


class RedisServer:
    """Debian's redis-server. ``appendonly`` switches AOF on; ``users`` adds ACL lines.

    ``extra_config`` lines are appended to redis.conf as given (``rename-command``, ``maxclients``, ...).
    With ``tls_cert_file`` and ``tls_key_file`` it also listens with TLS on ``tls_port`` (the plain
    ``port`` stays, so the harness's own client and readiness check are unchanged); ``tls_ca_file`` is
    the CA clients verify it with, and ``tls_auth_clients`` asks clients for a certificate.
    """

    def __init__(self, workdir: Path, name: str = "redis", password: str = "harness-redis-secret",
                 appendonly: bool = False, users: t.Sequence[str] = (), port: t.Optional[int] = None,
                 tls_cert_file: t.Optional[Path] = None, tls_key_file: t.Optional[Path] = None,
                 tls_ca_file: t.Optional[Path] = None, tls_auth_clients: bool = False,
                 tls_port: t.Optional[int] = None, extra_config: t.Sequence[str] = ()) -> None:
        self.workdir = Path(workdir)
        self.extra_config = list(extra_config)
        self.name = name
        self.password = password
        self.appendonly = appendonly
        self.users = list(users)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.datadir = self.workdir / "data"
        self.conf = self.workdir / "redis.conf"
        self.process = ManagedProcess(name, self.workdir)
        self.tls_cert_file = tls_cert_file
        self.tls_key_file = tls_key_file
        self.tls_ca_file = tls_ca_file
        self.tls_auth_clients = tls_auth_clients
        self.tls_port = (tls_port or free_port()) if tls_cert_file else None

    def write_config(self) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)
        lines = [
            "bind 127.0.0.1",
            "port %d" % self.port,
            "dir %s" % self.datadir,
            "dbfilename dump.rdb",
            "daemonize no",
            "protected-mode yes",
            "save \"\"",
            "appendonly %s" % ("yes" if self.appendonly else "no"),
            "appendfsync no",
            "requirepass %s" % self.password,
        ]
        lines += ["user %s" % spec for spec in self.users]
        if self.tls_port:
            lines += ["tls-port %d" % self.tls_port, "tls-cert-file %s" % self.tls_cert_file,
                      "tls-key-file %s" % self.tls_key_file,
                      "tls-auth-clients %s" % ("yes" if self.tls_auth_clients else "no")]
            if self.tls_ca_file:
                lines.append("tls-ca-cert-file %s" % self.tls_ca_file)
        lines += self.extra_config
        self.conf.write_text("\n".join(lines) + "\n")
        os.chmod(self.conf, 0o600)

    def start(self) -> "RedisServer":
        server = shutil.which("redis-server")
        if not server:
            raise ServiceError("redis-server not found (install Debian's redis-server)")
        if not self.conf.exists():
            self.write_config()
        self.process.spawn([server, str(self.conf)])
        self.process.wait_until(self.ready, 30, "answering PING")
        return self

    def ready(self) -> bool:
        import redis
        try:
            return bool(self.client(socket_timeout=1).ping())
        except (redis.RedisError, OSError):
            return False

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()

    def client(self, db: int = 0, username: t.Optional[str] = None, password: t.Optional[str] = None,
               **kwargs: t.Any) -> t.Any:
        import redis
        return redis.Redis(host=self.host, port=self.port, db=db, username=username,
                           password=password if password is not None else self.password, **kwargs)

    @property
    def login(self) -> dict:
        return {"login_host": self.host, "login_port": self.port, "login_password": self.password}

    @property
    def tls_login(self) -> dict:
        """Connection options for the TLS port, verified with ``tls_ca_file``."""
        if not self.tls_port:
            raise ServiceError("%s was started without TLS" % self.name)
        login = {"login_host": self.host, "login_port": self.tls_port, "login_password": self.password, "tls": True}
        if self.tls_ca_file:
            login["ca_certs"] = str(self.tls_ca_file)
        return login

    def describe(self) -> dict:
        return {"host": self.host, "port": self.port, "password": self.password, "appendonly": self.appendonly,
                "dir": str(self.datadir), "conf": str(self.conf), "pid_file": str(self.process.pid_file)}


class MotoS3Server:
    """moto in server mode: a real HTTP S3 endpoint on loopback."""

    access_key = "harness-access-key"
    secret_key = "harness-secret-key"
    region = "us-east-1"

    def __init__(self, workdir: Path, port: t.Optional[int] = None) -> None:
        self.workdir = Path(workdir)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.process = ManagedProcess("moto", self.workdir)

    @property
    def endpoint_url(self) -> str:
        return "http://%s:%d" % (self.host, self.port)

    def start(self) -> "MotoS3Server":
        server = Path(sys.executable).parent / "moto_server"
        if not server.exists():
            raise ServiceError("moto_server not found next to %s (pip install 'moto[server]')" % sys.executable)
        self.process.spawn([str(server), "-H", self.host, "-p", str(self.port)])
        self.process.wait_port(self.host, self.port, 60)
        return self

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()

    def client(self) -> t.Any:
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def repository_options(self, bucket: str, prefix: str = "backups") -> dict:
        """The repository options a module takes to use this endpoint."""
        return {"repository": "s3://%s/%s" % (bucket, prefix), "s3_endpoint_url": self.endpoint_url,
                "region": self.region, "access_key": self.access_key, "secret_key": self.secret_key}

    def describe(self) -> dict:
        return {"endpoint_url": self.endpoint_url, "access_key": self.access_key, "secret_key": self.secret_key,
                "region": self.region}


def save_state(workdir: Path, state: dict) -> None:
    _state_path(workdir).write_text(json.dumps(state, indent=2))


def load_state(workdir: Path) -> t.Optional[dict]:
    try:
        return json.loads(_state_path(workdir).read_text())
    except (OSError, ValueError):
        return None


def wait_for(predicate: t.Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
