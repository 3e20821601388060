"""Pytest fixtures for the Kubernetes tests: one API server per session, stopped at the end.

``$RUNBOOK_TEST_KUBECONFIG`` runs the tests against an existing cluster (kind, k3d, minikube)
instead. If the API server cannot start, the fixture raises with the processes' logs: the run
fails, it never skips.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import typing as t
import uuid
from pathlib import Path

import pytest

from tests.harness.k8s import Kubelet, KubeCluster, namespace


@pytest.fixture(scope="session")
def kube_cluster() -> t.Iterator[KubeCluster]:
    workdir = Path(tempfile.mkdtemp(prefix="runbook-k8s-"))
    existing = os.environ.get("RUNBOOK_TEST_KUBECONFIG")
    if existing:
        cluster = KubeCluster.existing(existing, workdir)
    else:
        cluster = KubeCluster(workdir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def own_kube_cluster() -> t.Iterator[KubeCluster]:
    """A cluster of this test's own, for tests that kill its API server."""
    workdir = Path(tempfile.mkdtemp(prefix="runbook-k8s-own-"))
    cluster = KubeCluster(workdir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def kube_admin(kube_cluster: KubeCluster):
    return kube_cluster.client()


@pytest.fixture(scope="session")
def kubelet(kube_admin) -> Kubelet:
    kubelet = Kubelet(kube_admin)
    kubelet.ensure_node()
    return kubelet


@pytest.fixture
def kube_namespace(kube_admin) -> t.Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    name = "t-" + uuid.uuid4().hex[:10]
    namespace(kube_admin, name, {"runbook.test/ns": name})
    yield name
    kube_admin.delete("v1", "namespaces", name, missing_ok=True)
