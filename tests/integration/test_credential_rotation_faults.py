"""Credential rotation under real faults: the API server stopped between the database change and
the Secret write, and no password in any process's command line or environment during a run.

The API server is stopped at a known point without any hook in the module: the test holds the
role's ``pg_authid`` row in an open transaction, so the module's ``ALTER ROLE`` waits for it; once
the module is seen waiting, the test stops kube-apiserver and rolls back, the module's change
commits, and its next request (the Secret write) finds no API server.
"""

from __future__ import annotations

import base64
import os
import secrets
import threading
import typing as t
from pathlib import Path

import psycopg
import pytest

from tests.harness.collection import run_module
from tests.harness.k8s import deployment, namespace, wait_for

SECRET = "db-credentials"
RECORD = SECRET + "-rotation"


@pytest.fixture
def pg(service_factory):
    from tests.harness.services import PostgresServer

    server = service_factory.add(PostgresServer(service_factory.workdir("pg-rotate-faults")))
    server.psql("CREATE ROLE app_group NOLOGIN")
    server.psql("CREATE TABLE items(n int); GRANT SELECT ON items TO app_group; INSERT INTO items VALUES (1)")
    return server


def encode(data: t.Mapping[str, str]) -> t.Dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}


def decoded(admin, ns: str, name: str) -> t.Dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in admin.get("v1", "secrets", name, ns)["data"].items()}


def logs_in(server, user: str, password: str) -> bool:
    try:
        psycopg.connect(host=server.host, port=server.port, user=user, password=password, dbname="postgres",
                        connect_timeout=5).close()
    except psycopg.OperationalError:
        return False
    return True


def superuser(server, autocommit: bool = True) -> "psycopg.Connection[t.Any]":
    return psycopg.connect(host=server.host, port=server.port, user=server.user, password=server.password,
                           dbname="postgres", autocommit=autocommit)


def consumer(name: str, ns: str) -> dict:
    body = deployment(name, ns)
    body["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "password"}}}]
    return body


def rolled_out(admin, ns: str, name: str) -> bool:
    obj = admin.get("apps/v1", "deployments", name, ns)
    status = obj.get("status") or {}
    return (status.get("observedGeneration") == obj["metadata"]["generation"] and status.get("updatedReplicas") == 1
            and status.get("availableReplicas") == 1 and status.get("replicas") == 1)


def rotate(cluster, server, ns: str, **args: t.Any):
    params = dict(cluster.auth(), **server.login, role="app", wait_timeout=90,
                  secret={"namespace": ns, "name": SECRET, "user_key": "username"})
    params.update(args)
    result = run_module("pg_credential_rotate", params)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def waiting_on_lock(server, blocker_pid: int) -> bool:
    with superuser(server) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> %s "
                           "AND application_name LIKE 'runbook.ops%%'", (blocker_pid,)).fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize("strategy", ["alternating", "single"])
def test_api_server_stopped_after_the_database_change_is_repaired_by_the_next_run(own_kube_cluster, pg, strategy):
    cluster, server = own_kube_cluster, pg
    admin, ns, old = cluster.client(), "rotate-fault", secrets.token_urlsafe(18)
    server.psql("CREATE ROLE app LOGIN PASSWORD '%s' IN ROLE app_group" % old)
    server.psql("CREATE ROLE app_b NOLOGIN IN ROLE app_group")
    namespace(admin, ns)
    admin.create("v1", "secrets", {"metadata": {"name": SECRET, "namespace": ns}, "type": "Opaque",
                                   "data": encode({"username": "app", "password": old})}, ns)
    admin.create("apps/v1", "deployments", consumer("web", ns))
    wait_for(lambda: rolled_out(admin, ns, "web"), timeout=90, what="consumer ready")
    target = "app_b" if strategy == "alternating" else "app"
    args = dict(strategy=strategy, group_role="app_group") if strategy == "alternating" else {}

    # Hold the role the module is about to change; its ALTER ROLE waits for this transaction.
    blocker = superuser(server, autocommit=False)
    blocker.execute("ALTER ROLE %s CONNECTION LIMIT -1" % target)
    outcome: t.Dict[str, t.Any] = {}
    worker = threading.Thread(target=lambda: outcome.update(first=rotate(cluster, server, ns, **args)))
    worker.start()
    try:
        wait_for(lambda: waiting_on_lock(server, blocker.info.backend_pid), timeout=60,
                 what="the module's ALTER ROLE to wait for the test's transaction")
        cluster.apiserver.stop()
    finally:
        blocker.rollback()
        blocker.close()
        worker.join(300)
    first = outcome["first"]
    assert first.get("failed"), first
    assert "Secret/%s/%s-rotation" % (ns, SECRET) in first["msg"] and "run again" in first["msg"], first["msg"]
    assert [s["step"] for s in first["steps"]][-2:] == ["lock", "database"], first["steps"]
    assert first["rotated"] is False and first["revoked"] is False

    # Meanwhile (API server down): with two roles the Secret's credentials still log in; with one
    # role the previous password is gone until the next run (the documented window of `single`).
    assert logs_in(server, "app", old) is (strategy == "alternating")

    cluster.restart_apiserver()
    assert decoded(admin, ns, SECRET) == {"username": "app", "password": old}
    record = decoded(admin, ns, RECORD)
    assert record["user"] == target and record["previous_password"] == old
    assert logs_in(server, target, record["password"])  # the database has what the record kept

    second = rotate(cluster, server, ns, **args)
    assert not second.get("failed"), second
    assert any(s["step"] == "resume" and s["outcome"] == "continued" and "recovered" in s["detail"]
               for s in second["steps"]), second["steps"]
    assert decoded(admin, ns, SECRET) == {"username": target, "password": record["password"]}
    assert logs_in(server, target, record["password"])  # nobody is locked out
    assert not logs_in(server, "app", old)
    assert second["consumers"]["restarted"] == ["Deployment/%s/web" % ns] and second["revoked"] is True
    wait_for(lambda: rolled_out(admin, ns, "web"), timeout=90, what="consumer ready after the repair")
    assert admin.get("v1", "secrets", RECORD, ns, missing_ok=True) is None
    with psycopg.connect(host=server.host, port=server.port, user=target, password=record["password"],
                         dbname="postgres") as conn:
        assert conn.execute("SELECT n FROM items").fetchone() == (1,)


# ----------------------------------------------------------------------------------------------
# /proc


def _process_texts(own_uid: int) -> t.Set[bytes]:
    """Every process's command line, and the environment of the processes of this user."""
    found: t.Set[bytes] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        names = ["cmdline"]
        try:
            if entry.stat().st_uid == own_uid:
                names.append("environ")
        except OSError:
            continue
        for name in names:
            try:
                found.add((entry / name).read_bytes())
            except OSError:
                pass
    return found


def test_no_password_in_any_process_cmdline_or_environment_during_a_rotation(
        kube_cluster, kube_admin, kube_namespace, pg):
    ns, server, old = kube_namespace, pg, secrets.token_urlsafe(18)
    server.psql("CREATE ROLE app LOGIN PASSWORD '%s' IN ROLE app_group" % old)
    url = "postgresql://app:%s@db.example:5432/postgres" % old
    kube_admin.create("v1", "secrets", {"metadata": {"name": SECRET, "namespace": ns}, "type": "Opaque",
                                        "data": encode({"username": "app", "password": old, "DATABASE_URL": url})}, ns)
    kube_admin.create("apps/v1", "deployments", consumer("web", ns))
    seen: t.Set[bytes] = set()
    samples, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.update(_process_texts(os.getuid()))
            samples[0] += 1

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = rotate(kube_cluster, server, ns, strategy="alternating", group_role="app_group",
                        secret={"namespace": ns, "name": SECRET, "user_key": "username", "url_key": "DATABASE_URL"})
    finally:
        stop.set()
        sampler.join()
    assert not result.get("failed"), result
    new = decoded(kube_admin, ns, SECRET)["password"]
    assert new != old and logs_in(server, "app_b", new)
    # The sampler saw the module's own process (its command line names the module).
    assert samples[0] > 5 and any(b"pg_credential_rotate" in text for text in seen), samples
    leaks = [text[:120] for text in seen if old.encode() in text or new.encode() in text
             or base64.b64encode(new.encode()) in text]
    assert leaks == []
