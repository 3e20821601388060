"""A PostgreSQL streaming replica of a harness server (``pg_basebackup -R``), for replication-lag tests.

The replica is a :class:`PostgresServer` whose data directory is a base backup of the primary with
``primary_conninfo`` written by ``-R``; it streams from the primary, optionally through a physical
replication slot. :meth:`PostgresReplica.pause_replay` stops applying WAL (it is still received), so
the primary's writes become lag measured in bytes.
"""

from __future__ import annotations

import subprocess
import time
import typing as t
from pathlib import Path

import pytest

from tests.harness.fixtures import _Services
from tests.harness.process import ServiceError
from tests.harness.services import PostgresServer


class PostgresReplica(PostgresServer):
    """A hot standby streaming from ``primary`` (started by :meth:`start`, like any harness server)."""

    def __init__(self, workdir: Path, primary: PostgresServer, slot: t.Optional[str] = None) -> None:
        super().__init__(workdir, password=primary.password)
        self.primary = primary
        self.slot = slot

    def start(self) -> "PostgresReplica":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        self._chown(self.workdir)
        if not (self.datadir / "PG_VERSION").exists():
            argv = [str(self.bin_dir / "pg_basebackup"), "-h", self.primary.host, "-p", str(self.primary.port),
                    "-U", self.primary.user, "-D", str(self.datadir), "-R", "-X", "stream", "--no-sync"]
            if self.slot:
                argv += ["--slot", self.slot, "--create-slot"]
            try:
                self._run_as(argv, env=self.primary.env)
            except subprocess.CalledProcessError as exc:
                raise ServiceError("pg_basebackup failed: %s" % exc.stderr)
        super().start()
        self.wait_streaming()
        return self

    def wait_streaming(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.primary.psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") != "0":
                return
            time.sleep(0.2)
        raise ServiceError("the replica on port %d did not start streaming from port %d" % (self.port, self.primary.port))

    def pause_replay(self) -> None:
        self.psql("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        self.psql("SELECT pg_wal_replay_resume()")

    def wait_caught_up(self, timeout: float = 30) -> None:
        """Until the replica has replayed everything the primary wrote."""
        target = self.primary.psql("SELECT pg_current_wal_lsn()")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.psql("SELECT pg_last_wal_replay_lsn() >= '%s'::pg_lsn" % target) == "t":
                return
            time.sleep(0.2)
        raise ServiceError("the replica did not replay up to %s" % target)


class Replicated(t.NamedTuple):
    primary: PostgresServer
    replica: PostgresReplica


@pytest.fixture(scope="module")
def pg_replicated(harness_dir: Path) -> t.Iterator[Replicated]:
    """A private primary and a streaming replica of it, for one test module."""
    services = _Services(harness_dir)
    try:
        primary = services.add(PostgresServer(services.workdir("pg-primary")))
        replica = services.add(PostgresReplica(services.workdir("pg-replica"), primary))
        yield Replicated(primary, replica)
    finally:
        services.stop_all()
