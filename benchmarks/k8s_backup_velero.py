"""Velero as a further column of bench_k8s_backup: a ``velero server`` process (v1.18) on this machine
against the benchmark's API server, with velero-plugin-for-aws and a moto S3 bucket as its backup
storage location.

The binaries are not built here (a long Go build); the benchmark looks for them in
``$RUNBOOK_VELERO_DIR`` (default ``~/.cache/runbook-ops/velero/v1.18.3``): ``velero`` and
``plugins/velero-plugin-for-aws``. docs/k8s_backup.md says how they were built. When they are
absent, :func:`absent` says why and the benchmark prints that instead of the column.
"""

from __future__ import annotations

import os
import subprocess
import time
import typing as t
from pathlib import Path

from tests.harness.k8s import KubeCluster, binary_dir
from tests.harness.process import ManagedProcess, free_port
from tests.harness.services import MotoS3Server

VERSION = "v1.18.3"
VELERO_DIR = Path(os.environ.get("RUNBOOK_VELERO_DIR", str(Path.home() / ".cache/runbook-ops/velero" / VERSION)))
NAMESPACE = "velero"
BUCKET = "velero-bench"
FINISHED = ("Completed", "PartiallyFailed", "Failed", "FailedValidation")


def absent() -> t.Optional[str]:
    """Why Velero cannot run here, or None."""
    for path in (VELERO_DIR / "velero", VELERO_DIR / "plugins" / "velero-plugin-for-aws"):
        if not os.access(path, os.X_OK):
            return "%s not found (build it as docs/k8s_backup.md says)" % path
    return None


class Velero:
    """The Velero server and its object store, for one benchmark run."""

    def __init__(self, cluster: KubeCluster, workdir: Path) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.moto = MotoS3Server(workdir / "moto")
        self.server = ManagedProcess("velero", workdir)
        self.client = cluster.client()

    def start(self, timeout: float = 120.0) -> "Velero":
        crds = subprocess.run([str(VELERO_DIR / "velero"), "install", "--crds-only", "--dry-run", "-o", "yaml"],
                              capture_output=True, check=True).stdout
        subprocess.run([str(binary_dir() / "kubectl"), "--kubeconfig", str(self.cluster.kubeconfig), "apply", "-f", "-"],
                       input=crds, capture_output=True, check=True)
        if self.client.get("v1", "namespaces", NAMESPACE, missing_ok=True) is None:
            self.client.create("v1", "namespaces", {"metadata": {"name": NAMESPACE}})
        self.moto.start()
        self.moto.create_bucket(BUCKET)
        credentials = self.workdir / "aws-credentials"
        credentials.write_text("[default]\naws_access_key_id=%s\naws_secret_access_key=%s\n" % (
            self.moto.access_key, self.moto.secret_key))
        self._wait(lambda: self.client.get("apiextensions.k8s.io/v1", "customresourcedefinitions",
                                           "backupstoragelocations.velero.io", missing_ok=True), timeout)
        self._wait(self._create_location, timeout)
        env = dict(os.environ, AWS_SHARED_CREDENTIALS_FILE=str(credentials))
        self.server.spawn([str(VELERO_DIR / "velero"), "server", "--kubeconfig", str(self.cluster.kubeconfig),
                           "--namespace", NAMESPACE, "--plugin-dir", str(VELERO_DIR / "plugins"),
                           "--metrics-address", "127.0.0.1:%d" % free_port(),
                           "--profiler-address", "127.0.0.1:%d" % free_port()], env=env)
        self._wait(lambda: self._location_phase() == "Available", timeout)
        return self

    def _create_location(self) -> bool:
        if self.client.get("velero.io/v1", "backupstoragelocations", "default", NAMESPACE, missing_ok=True):
            return True
        try:
            self.client.create("velero.io/v1", "backupstoragelocations", {
                "apiVersion": "velero.io/v1", "kind": "BackupStorageLocation",
                "metadata": {"name": "default", "namespace": NAMESPACE},
                "spec": {"provider": "aws", "default": True, "objectStorage": {"bucket": BUCKET},
                         "config": {"region": self.moto.region, "s3ForcePathStyle": "true",
                                    "s3Url": self.moto.endpoint_url}}})
        except Exception:  # pylint: disable=broad-except
            return False  # the CRD is not served yet: try again
        return True

    def _location_phase(self) -> str:
        location = self.client.get("velero.io/v1", "backupstoragelocations", "default", NAMESPACE, missing_ok=True) or {}
        return str((location.get("status") or {}).get("phase", ""))

    def _wait(self, condition: t.Callable[[], t.Any], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline or (self.server.pid_file.exists() and not self.server.running()):
                raise RuntimeError("Velero did not get ready; its log ends: %s" % self.log_tail())
            time.sleep(0.2)

    def log_tail(self, lines: int = 8) -> str:
        try:
            return " | ".join(self.server.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def backup(self, name: str, namespaces: t.Sequence[str], timeout: float = 600.0) -> t.Dict[str, t.Any]:
        """One Velero backup of ``namespaces`` (resources only, no volume snapshots), from its creation
        until Velero marks it finished; returns its status and how many requests the polling for it
        sent (1 create + 1 per poll), to subtract from the audited count."""
        self.client.create("velero.io/v1", "backups", {
            "apiVersion": "velero.io/v1", "kind": "Backup", "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"includedNamespaces": list(namespaces), "snapshotVolumes": False,
                     "defaultVolumesToFsBackup": False, "storageLocation": "default", "ttl": "1h0m0s"}})
        status: t.Dict[str, t.Any] = {}
        sent = self.client.requests - 1

        def finished() -> bool:
            nonlocal status
            status = (self.client.get("velero.io/v1", "backups", name, NAMESPACE) or {}).get("status") or {}
            return status.get("phase") in FINISHED

        deadline = time.monotonic() + timeout
        while not finished():
            if time.monotonic() > deadline:
                raise RuntimeError("Velero backup %s not finished after %ds: %s" % (name, timeout, status))
            time.sleep(0.05)
        return {"status": status, "ours": self.client.requests - sent}

    def stop(self) -> None:
        self.server.stop()
        self.moto.stop()
        self.client.close()
