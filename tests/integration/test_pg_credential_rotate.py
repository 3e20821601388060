"""pg_credential_rotate against a real PostgreSQL 15 and a real kube-apiserver (KWOK runs the Pods)."""

from __future__ import annotations

import base64
import threading
import time
import typing as t

import psycopg
import pytest

from tests.harness.collection import run_module
from tests.harness.k8s import deployment, wait_for

SECRET = "db-credentials"


@pytest.fixture
def logged_pg(service_factory):
    """A private server that logs every statement and tracks them in pg_stat_statements."""
    from tests.harness.services import PostgresServer

    server = service_factory.add(PostgresServer(service_factory.workdir("pg-rotate")))
    server.psql("ALTER SYSTEM SET log_statement = 'all'")
    server.psql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    server.stop()
    server.start()
    server.psql("CREATE EXTENSION pg_stat_statements")
    server.psql("CREATE ROLE app LOGIN PASSWORD 'initial-app-password-1'")
    server.psql("CREATE ROLE app_group NOLOGIN; GRANT app_group TO app")
    server.psql("CREATE TABLE items(n int); GRANT SELECT ON items TO app_group; INSERT INTO items VALUES (1)")
    return server


def put_secret(admin, ns: str, data: t.Mapping[str, str]) -> None:
    admin.create("v1", "secrets", {"metadata": {"name": SECRET, "namespace": ns}, "type": "Opaque",
                                   "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}, ns)


def secret_data(admin, ns: str) -> t.Dict[str, str]:
    obj = admin.get("v1", "secrets", SECRET, ns)
    return {k: base64.b64decode(v).decode() for k, v in obj["data"].items()}


def consumer(name: str, ns: str, image: str = "example/app:1.0") -> dict:
    body = deployment(name, ns, image=image)
    body["spec"]["template"]["spec"]["containers"][0]["envFrom"] = [{"secretRef": {"name": SECRET}}]
    return body


def logs_in(server, user: str, password: str) -> bool:
    try:
        psycopg.connect(host=server.host, port=server.port, user=user, password=password, dbname="postgres").close()
    except psycopg.OperationalError:
        return False
    return True


def rotate(cluster, server, ns: str, check_mode: bool = False, **args: t.Any):
    secret = {"namespace": ns, "name": SECRET, "user_key": "username", "url_key": "DATABASE_URL"}
    params = dict(cluster.auth(), **server.login, role="app", secret=secret)
    params.update(args)
    result = run_module("pg_credential_rotate", params, check_mode=check_mode)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def ready(admin, ns: str, name: str) -> bool:
    status = admin.get("apps/v1", "deployments", name, ns).get("status") or {}
    return status.get("availableReplicas") == 1 and status.get("updatedReplicas") == 1


def test_single_rotation_restarts_consumers_and_leaks_nothing(kube_cluster, kube_admin, kube_namespace, logged_pg):
    ns, server = kube_namespace, logged_pg
    url = "postgresql://app:initial-app-password-1@db.example:5432/postgres?sslmode=require"
    put_secret(kube_admin, ns, {"username": "app", "password": "initial-app-password-1", "DATABASE_URL": url})
    kube_admin.create("apps/v1", "deployments", consumer("web", ns))
    kube_admin.create("apps/v1", "deployments", deployment("unrelated", ns))
    wait_for(lambda: ready(kube_admin, ns, "web"), what="consumer ready")

    check = rotate(kube_cluster, server, ns, check_mode=True)
    assert check["changed"] is True and check["rotated"] is True and "no rotation recorded" in check["msg"], check
    assert secret_data(kube_admin, ns)["password"] == "initial-app-password-1"

    result = rotate(kube_cluster, server, ns)
    assert not result.get("failed"), result
    data = secret_data(kube_admin, ns)
    new = data["password"]
    assert new != "initial-app-password-1" and len(new) == 32
    assert logs_in(server, "app", new) and not logs_in(server, "app", "initial-app-password-1")
    assert data["DATABASE_URL"] == "postgresql://app:%s@db.example:5432/postgres?sslmode=require" % new
    assert result["consumers"]["restarted"] == ["Deployment/%s/web" % ns] and result["revoked"] is True
    assert result["user"] == "app" and result["api_requests"] > 0 and result["next_rotation"]
    assert ready(kube_admin, ns, "web")
    notes = kube_admin.get("apps/v1", "deployments", "unrelated", ns)["spec"]["template"]["metadata"].get("annotations")
    assert not notes
    assert kube_admin.get("v1", "secrets", SECRET + "-rotation", ns, missing_ok=True) is None
    assert new not in repr(result)

    again = rotate(kube_cluster, server, ns, check_mode=True)
    assert again["changed"] is False and "is current" in again["msg"], again

    log = (server.workdir / "postgres.log").read_text(errors="replace")
    assert "CREATE TABLE items" in log  # the server does log statements
    assert "SCRAM-SHA-256$" not in log  # but not the password change
    assert new not in log
    statements = server.psql("SELECT string_agg(query, ' ') FROM pg_stat_statements")
    assert new not in statements and "SCRAM-SHA-256$" not in statements


def test_secret_changed_by_hand_is_repaired(kube_cluster, kube_admin, kube_namespace, logged_pg):
    ns, server = kube_namespace, logged_pg
    # PersonaPass: someone patched the Secret and never changed the role.
    put_secret(kube_admin, ns, {"username": "app", "password": "patched-but-never-applied"})
    check = rotate(kube_cluster, server, ns, check_mode=True, rotate_after="3650d")
    assert check["changed"] is True and "does not log in" in check["msg"], check
    result = rotate(kube_cluster, server, ns, rotate_after="3650d")
    assert not result.get("failed"), result
    assert logs_in(server, "app", secret_data(kube_admin, ns)["password"])


def test_alternating_keeps_old_connections_serving(kube_cluster, kube_admin, kube_namespace, logged_pg):
    ns, server = kube_namespace, logged_pg
    put_secret(kube_admin, ns, {"username": "app", "password": "initial-app-password-1"})
    kube_admin.create("apps/v1", "deployments", consumer("web", ns))
    pool = [psycopg.connect(host=server.host, port=server.port, user="app", password="initial-app-password-1",
                            dbname="postgres", autocommit=True) for _index in range(3)]
    failures, queries, stop = [], [0], threading.Event()

    def serve() -> None:
        while not stop.is_set():
            for conn in pool:
                try:
                    conn.execute("SELECT n FROM items").fetchone()
                    queries[0] += 1
                except psycopg.Error as exc:
                    failures.append(str(exc))
            time.sleep(0.01)

    worker = threading.Thread(target=serve)
    worker.start()
    try:
        result = rotate(kube_cluster, server, ns, strategy="alternating", group_role="app_group")
    finally:
        stop.set()
        worker.join()
    assert not result.get("failed"), result
    assert failures == [] and queries[0] > 10
    data = secret_data(kube_admin, ns)
    assert data["username"] == "app_b" == result["user"]
    assert logs_in(server, "app_b", data["password"])
    assert not logs_in(server, "app", "initial-app-password-1")  # NOLOGIN after the consumers were Ready
    with psycopg.connect(host=server.host, port=server.port, user="app_b", password=data["password"],
                         dbname="postgres") as conn:
        assert conn.execute("SELECT n FROM items").fetchone() == (1,)  # the group's grant
    second = rotate(kube_cluster, server, ns, strategy="alternating", group_role="app_group", force=True)
    assert not second.get("failed") and second["user"] == "app", second
    assert logs_in(server, "app", secret_data(kube_admin, ns)["password"])
    assert not logs_in(server, "app_b", data["password"])
    for conn in pool:
        conn.close()


def test_crash_looping_consumer_keeps_the_previous_credential(kube_cluster, kube_admin, kube_namespace, logged_pg):
    ns, server = kube_namespace, logged_pg
    put_secret(kube_admin, ns, {"username": "app", "password": "initial-app-password-1"})
    kube_admin.create("apps/v1", "deployments", consumer("first", ns))
    kube_admin.create("apps/v1", "deployments", consumer("broken", ns))
    wait_for(lambda: ready(kube_admin, ns, "broken"), what="consumer ready")
    # The new template crash-loops (KWOK's crashloop annotation): the rollout never completes.
    kube_admin.patch("apps/v1", "deployments", "broken", {"spec": {"template": {"metadata": {
        "annotations": {"runbook.ops/fault": "crashloop"}}}}}, ns)
    result = rotate(kube_cluster, server, ns, strategy="alternating", group_role="app_group",
                    consumers=[{"name": "broken"}], wait_timeout=5)
    assert result.get("failed"), result
    assert "Deployment/%s/broken" % ns in result["msg"] and result["revoked"] is False
    assert result["consumers"]["failed"] == ["Deployment/%s/broken" % ns]
    assert result["consumers"]["not_restarted"] == ["Deployment/%s/first" % ns]
    assert logs_in(server, "app", "initial-app-password-1")  # the previous credential still works
    assert logs_in(server, "app_b", secret_data(kube_admin, ns)["password"])


def test_two_rotations_at_once_make_one(kube_cluster, kube_admin, kube_namespace, logged_pg):
    ns, server = kube_namespace, logged_pg
    put_secret(kube_admin, ns, {"username": "app", "password": "initial-app-password-1"})
    kube_admin.create("apps/v1", "deployments", consumer("web", ns))
    results: t.List[dict] = []
    threads = [threading.Thread(target=lambda: results.append(rotate(kube_cluster, server, ns, force=True)))
               for _index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(not r.get("failed") for r in results), results
    assert sorted(r["rotated"] for r in results) == [False, True], results
    assert any(r["concurrent_change"] for r in results)
    assert logs_in(server, "app", secret_data(kube_admin, ns)["password"])


def test_interrupted_rotation_of_another_host_is_recovered_once_its_lease_expired(
        kube_cluster, kube_admin, kube_namespace, logged_pg):
    """A record left by a run on another host (its process cannot be checked from here) whose lease
    expired: the new password logs in, so this run finishes with it. The same fault with a real API
    server stopped mid-run is in test_credential_rotation_faults.py."""
    ns, server = kube_namespace, logged_pg
    put_secret(kube_admin, ns, {"username": "app", "password": "initial-app-password-1"})
    server.psql("ALTER ROLE app PASSWORD 'recoverable-new-password-2'")

    def enc(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    kube_admin.create("v1", "secrets", {"metadata": {"name": SECRET + "-rotation", "namespace": ns, "annotations": {
        "runbook.ops/holder": "elsewhere/1/dead", "runbook.ops/expires": "2020-01-01T00:00:00Z",
        "runbook.ops/phase": "changing", "runbook.ops/rotated-at": "2026-01-01T00:00:00Z"}}, "data": {
        "user": enc("app"), "password": enc("recoverable-new-password-2"), "previous_user": enc("app"),
        "previous_password": enc("initial-app-password-1")}}, ns)
    result = rotate(kube_cluster, server, ns)
    assert not result.get("failed"), result
    assert secret_data(kube_admin, ns)["password"] == "recoverable-new-password-2"
    assert any(step["step"] == "resume" and step["outcome"] == "continued" for step in result["steps"]), result
    assert kube_admin.get("v1", "secrets", SECRET + "-rotation", ns, missing_ok=True) is None
