"""Credential rotation on the lab's platforms, built by the harness from ``inventories/lab``: the
HIPAA platform's ``db-credentials`` and PersonaPass's ``postgres-secrets`` (PostgreSQL), and a
``requirepass``-only Redis behind PersonaPass's ``redis`` Service. Every connection goes through
``kubernetes_tunnel`` to the platform's Service; KWOK's port-forward leads it to this test's
PostgreSQL and Redis.

The harness builds the platforms' workloads without Secret references, so the test states which
applications read which Secret (as the runbooks' manifests do) before rotating.
"""

from __future__ import annotations

import base64
import datetime
import secrets
import shutil
import tempfile
import threading
import time
import typing as t
import uuid
from pathlib import Path

import psycopg
import pytest
import redis

from tests.harness import kwok, platforms
from tests.harness.collection import run_module
from tests.harness.k8s import wait_for

HIPAA, PERSONAPASS = "hungryhippaahneties", "personapass"


class Lab(t.NamedTuple):
    pg: t.Any
    redis: t.Any
    platforms: t.Dict[str, dict]
    old: t.Dict[str, str]

    def ns(self, name: str) -> str:
        return self.platforms[name]["platform_namespace"]


def _database(pg: t.Any, db: dict, password: str, group: t.Optional[str]) -> None:
    """The platform's database, its tables owned by the group role when there is one (the
    alternating strategy's shape), else by the login role (as the lab makes it)."""
    owner = group or db["owner"]
    if group:
        pg.psql("CREATE ROLE %s NOLOGIN" % group)
        pg.psql("CREATE ROLE %s LOGIN PASSWORD '%s' IN ROLE %s" % (db["owner"], password, group))
    else:
        pg.psql("CREATE ROLE %s LOGIN PASSWORD '%s'" % (db["owner"], password))
    pg.psql("CREATE DATABASE %s OWNER %s" % (db["name"], owner))
    tables = "; ".join("CREATE TABLE %s(id int); INSERT INTO %s VALUES (1)" % (name, name) for name in db["tables"])
    pg.psql("SET ROLE %s; %s" % (owner, tables), db=db["name"])


def _secret_values(platform: dict, old: t.Mapping[str, str], ns: str) -> t.Dict[str, t.Dict[str, str]]:
    db = platform["platform_databases"][0]
    common = {"username": db["owner"], "password": old[db["owner"]], "host": "%s.%s.svc" % (db["service"], ns),
              "port": "5432", "database": db["name"], "POSTGRES_USER": db["owner"],
              "POSTGRES_PASSWORD": old[db["owner"]], "POSTGRES_DB": db["name"], "JWT_SECRET": secrets.token_urlsafe(32)}
    return {s["name"]: {k: common[k] for k in s["keys"]} for s in platform["platform_secrets"]}


def _reads(admin: t.Any, ns: str, plural: str, name: str, env: t.List[dict]) -> None:
    """Make a workload (or CronJob) read a Secret, as the platform's manifests do."""
    if plural == "cronjobs":
        patch = {"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [
            {"name": name, "env": env}]}}}}}}
        admin.patch("batch/v1", plural, name, patch, ns, patch_type="strategic")
        return
    body = admin.get("apps/v1", plural, name, ns)
    container = body["spec"]["template"]["spec"]["containers"][0]["name"]
    admin.patch("apps/v1", plural, name, {"spec": {"template": {"spec": {"containers": [
        {"name": container, "env": env}]}}}}, ns, patch_type="strategic")


def _secret_env(secret: str, *keys: str) -> t.List[dict]:
    return [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}} for key in keys]


@pytest.fixture(scope="module")
def lab(harness_dir, kube_admin) -> t.Iterator[Lab]:
    from tests.harness.services import PostgresServer, RedisServer

    root = Path(tempfile.mkdtemp(prefix="lab-rotate-", dir=harness_dir))
    root.chmod(0o755)  # PostgreSQL runs as its own user
    old = {"hipaa_app_user": secrets.token_urlsafe(18), "personapass": secrets.token_urlsafe(18),
           "redis": secrets.token_urlsafe(18)}
    pg = PostgresServer(root / "pg").start()
    cache = RedisServer(root / "redis", name="redis-requirepass", password=old["redis"]).start()
    loaded, seeded = platforms.load(), {}
    try:
        _database(pg, loaded[HIPAA]["platform_databases"][0], old["hipaa_app_user"], group="hipaa_app")
        _database(pg, loaded[PERSONAPASS]["platform_databases"][0], old["personapass"], group=None)
        endpoints = platforms.Endpoints(postgres=(pg.host, pg.port), redis=(cache.host, cache.port),
                                        redis_tls=(cache.host, cache.port), logs=root / "logs",
                                        volumes=root / "volumes", exec_env={}, exec_dir=root)
        for name in (HIPAA, PERSONAPASS):
            platform = dict(loaded[name], platform_certificates=[])
            ns = platform["platform_namespace"] = "%s-%s" % (name[:12], uuid.uuid4().hex[:6])
            platforms.seed_platform(kube_admin, platform, endpoints, _secret_values(platform, old, ns))
            seeded[name] = platform
        hipaa, persona = seeded[HIPAA]["platform_namespace"], seeded[PERSONAPASS]["platform_namespace"]
        for app in ("backend", "api"):
            _reads(kube_admin, hipaa, "deployments", app,
                   _secret_env("db-credentials", "username", "password", "host", "database"))
        _reads(kube_admin, persona, "deployments", "personapass-api",
               _secret_env("postgres-secrets", "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"))
        _reads(kube_admin, persona, "cronjobs", "personapass-db-backup", _secret_env("postgres-secrets", "POSTGRES_PASSWORD"))
        platforms.wait_ready(kube_admin, seeded, timeout=150)
        yield Lab(pg, cache, seeded, old)
    finally:
        for platform in seeded.values():
            ns = platform["platform_namespace"]
            kube_admin.delete("v1", "namespaces", ns, missing_ok=True)
            for plural in ("clusterportforwards", "clusterlogs", "clusterexecs"):
                kube_admin.delete(kwok.API, plural, "lab-%s" % ns, missing_ok=True)
            for workload in platform["platform_workloads"]:
                for claim in platforms.claim_names(workload):
                    kube_admin.delete("v1", "persistentvolumes", "lab-%s-%s" % (ns, claim), missing_ok=True)
        cache.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def decoded(admin: t.Any, ns: str, name: str) -> t.Dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in admin.get("v1", "secrets", name, ns)["data"].items()}


def pg_logs_in(pg: t.Any, user: str, password: str, db: str) -> bool:
    try:
        psycopg.connect(host=pg.host, port=pg.port, user=user, password=password, dbname=db, connect_timeout=5).close()
    except psycopg.OperationalError:
        return False
    return True


def tunnel(cluster: t.Any, ns: str, target: str) -> dict:
    return dict(cluster.auth(), namespace=ns, target=target)


def restarted_and_ready(admin: t.Any, ns: str, names: t.Sequence[str], stamp_of: str) -> None:
    """Each workload carries this rotation's template annotation and has rolled out."""
    for name in names:
        notes = admin.get("apps/v1", "deployments", name, ns)["spec"]["template"]["metadata"]["annotations"]
        assert notes["runbook.ops/credential-rotation"] == stamp_of, (name, notes)
        wait_for(lambda n=name: kwok.rolled_out(admin, "deployments", ns, n), timeout=120,
                 what="Deployment/%s/%s rolled out" % (ns, name))


def untouched(admin: t.Any, ns: str, name: str) -> bool:
    notes = admin.get("apps/v1", "deployments", name, ns)["spec"]["template"]["metadata"].get("annotations") or {}
    return "runbook.ops/credential-rotation" not in notes


def test_hipaa_db_credentials_alternating_with_grace_through_the_tunnel(kube_cluster, kube_admin, lab):
    ns, pg, db = lab.ns(HIPAA), lab.pg, "hungryhippaahneties_db"
    old = lab.old["hipaa_app_user"]
    params = dict(kube_cluster.auth(), login_host="", login_user=pg.user, login_password=pg.password,
                  kubernetes_tunnel=tunnel(kube_cluster, ns, "service/postgresql"),
                  role="hipaa_app_user", strategy="alternating", group_role="hipaa_app", database=db,
                  grace_period="25s", wait_timeout=120,
                  secret={"namespace": ns, "name": "db-credentials", "user_key": "username"})
    # A pool opened with the old credentials serves queries throughout the rotation.
    pool = [psycopg.connect(host=pg.host, port=pg.port, user="hipaa_app_user", password=old, dbname=db,
                            autocommit=True) for _index in range(3)]
    failures: t.List[str] = []
    queries, stop = [0], threading.Event()

    def serve() -> None:
        while not stop.is_set():
            for conn in pool:
                try:
                    conn.execute("SELECT count(*) FROM patients").fetchone()
                    queries[0] += 1
                except psycopg.Error as exc:
                    failures.append(str(exc))
            time.sleep(0.02)

    worker = threading.Thread(target=serve)
    worker.start()
    try:
        first = run_module("pg_credential_rotate", params)
    finally:
        stop.set()
        worker.join()
    assert "Traceback" not in first.stderr and not first.get("failed"), first
    assert failures == [] and queries[0] > 10, (failures, queries)

    data = decoded(kube_admin, ns, "db-credentials")
    new = data["password"]
    assert data["username"] == "hipaa_app_user_b" == first["user"]
    assert {k: data[k] for k in ("host", "port", "database")} == {
        "host": "postgresql.%s.svc" % ns, "port": "5432", "database": db}
    assert pg_logs_in(pg, "hipaa_app_user_b", new, db)
    with psycopg.connect(host=pg.host, port=pg.port, user="hipaa_app_user_b", password=new, dbname=db) as conn:
        assert conn.execute("SELECT count(*) FROM patients").fetchone() == (1,)  # the group's tables
    assert first["consumers"]["restarted"] == ["Deployment/%s/api" % ns, "Deployment/%s/backend" % ns], first
    stamp = kube_admin.get("v1", "secrets", "db-credentials", ns)["metadata"]["annotations"]["runbook.ops/rotated-at"]
    restarted_and_ready(kube_admin, ns, ["api", "backend"], stamp)
    assert all(untouched(kube_admin, ns, name) for name in ("frontend", "nginx-proxy", "modsecurity-waf"))

    # Grace: the previous role still logs in, and a run before the end only reports the date.
    assert first["revoked"] is False and first["steps"][-1]["outcome"] == "scheduled", first["steps"]
    assert pg_logs_in(pg, "hipaa_app_user", old, db)
    record = kube_admin.get("v1", "secrets", "db-credentials-rotation", ns)
    revoke_after = record["metadata"]["annotations"]["runbook.ops/revoke-after"]
    early = run_module("pg_credential_rotate", params)
    assert not early.get("failed") and early["changed"] is False, early
    assert early["steps"][-1]["outcome"] == "waiting" and revoke_after in early["msg"], early
    assert pg_logs_in(pg, "hipaa_app_user", old, db)

    end = datetime.datetime.strptime(revoke_after, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    time.sleep(max(0.0, (end - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) + 1)
    assert pg_logs_in(pg, "hipaa_app_user", old, db)  # nothing revokes it but a run
    late = run_module("pg_credential_rotate", params)
    assert not late.get("failed") and late["changed"] is True and late["revoked"] is True, late
    assert not pg_logs_in(pg, "hipaa_app_user", old, db) and pg_logs_in(pg, "hipaa_app_user_b", new, db)
    assert kube_admin.get("v1", "secrets", "db-credentials-rotation", ns, missing_ok=True) is None
    assert decoded(kube_admin, ns, "db-credentials") == data  # the revocation leaves the Secret alone
    for conn in pool:
        conn.close()


def test_personapass_postgres_secrets_single_through_the_tunnel(kube_cluster, kube_admin, lab):
    ns, pg = lab.ns(PERSONAPASS), lab.pg
    old = lab.old["personapass"]
    params = dict(kube_cluster.auth(), login_host="", login_user=pg.user, login_password=pg.password,
                  kubernetes_tunnel=tunnel(kube_cluster, ns, "service/postgres"), role="personapass",
                  database="personapass", wait_timeout=120,
                  secret={"namespace": ns, "name": "postgres-secrets", "user_key": "POSTGRES_USER",
                          "password_key": "POSTGRES_PASSWORD"})
    check = run_module("pg_credential_rotate", params, check_mode=True)
    assert not check.get("failed") and check["changed"] is True, check
    assert decoded(kube_admin, ns, "postgres-secrets")["POSTGRES_PASSWORD"] == old

    result = run_module("pg_credential_rotate", params)
    assert "Traceback" not in result.stderr and not result.get("failed"), result
    data = decoded(kube_admin, ns, "postgres-secrets")
    assert data["POSTGRES_USER"] == "personapass" and data["POSTGRES_DB"] == "personapass"
    assert data["POSTGRES_PASSWORD"] != old
    assert pg_logs_in(pg, "personapass", data["POSTGRES_PASSWORD"], "personapass")
    assert not pg_logs_in(pg, "personapass", old, "personapass")
    assert result["consumers"]["restarted"] == ["Deployment/%s/personapass-api" % ns], result
    assert result["consumers"]["cronjobs"] == ["CronJob/%s/personapass-db-backup" % ns]
    assert result["revoked"] is True
    stamp = kube_admin.get("v1", "secrets", "postgres-secrets", ns)["metadata"]["annotations"]["runbook.ops/rotated-at"]
    restarted_and_ready(kube_admin, ns, ["personapass-api"], stamp)
    assert untouched(kube_admin, ns, "personapass-web") and untouched(kube_admin, ns, "postgres")

    again = run_module("pg_credential_rotate", params)
    assert not again.get("failed") and again["changed"] is False and again["rotated"] is False, again


def test_requirepass_only_redis_through_the_tunnel(kube_cluster, kube_admin, lab):
    """No ACL users: the rotated login is the ``default`` user, which is the admin login too."""
    ns, server, old = lab.ns(PERSONAPASS), lab.redis, lab.old["redis"]
    url = "redis://:%s@redis.%s.svc:6379/0" % (old, ns)
    kube_admin.create("v1", "secrets", {"metadata": {"name": "redis-credentials", "namespace": ns}, "type": "Opaque",
                                        "stringData": {"REDIS_PASSWORD": old, "REDIS_URL": url}}, ns)
    _reads(kube_admin, ns, "deployments", "personapass-web", _secret_env("redis-credentials", "REDIS_PASSWORD"))
    wait_for(lambda: kwok.rolled_out(kube_admin, "deployments", ns, "personapass-web"), timeout=120,
             what="personapass-web rolled out")
    before = server.client(password=old)
    assert before.ping()
    params = dict(kube_cluster.auth(), login_password=old, user="default",
                  kubernetes_tunnel=tunnel(kube_cluster, ns, "service/redis"), wait_timeout=120,
                  secret={"namespace": ns, "name": "redis-credentials", "password_key": "REDIS_PASSWORD",
                          "url_key": "REDIS_URL"})
    result = run_module("redis_credential_rotate", params)
    assert "Traceback" not in result.stderr and not result.get("failed"), result
    data = decoded(kube_admin, ns, "redis-credentials")
    new = data["REDIS_PASSWORD"]
    assert new != old and data["REDIS_URL"] == "redis://default:%s@redis.%s.svc:6379/0" % (new, ns)
    assert [s["step"] for s in result["steps"]][-5:] == ["database", "secret", "consumers", "verify", "revoke"]
    assert result["consumers"]["restarted"] == ["Deployment/%s/personapass-web" % ns] and result["revoked"] is True
    assert not result.get("warnings"), result.get("warnings")  # persisted by CONFIG REWRITE, nothing to warn about

    def logs_in(password: str) -> bool:
        try:
            return bool(server.client(password=password, socket_timeout=5).ping())
        except redis.AuthenticationError:
            return False

    assert logs_in(new) and not logs_in(old)
    assert before.ping()  # authenticated before the removal: still served (Redis checks at AUTH only)
    assert server.client(password=new).config_get("requirepass") == {"requirepass": new}
    conf = server.conf.read_text()
    assert old not in conf  # the revoked password is not left in the configuration file
    server.stop()
    server.password = new  # the harness checks the restart with this one
    server.start()  # the Secret and the server agree after a restart too
    assert logs_in(new) and not logs_in(old)
    stamp = kube_admin.get("v1", "secrets", "redis-credentials", ns)["metadata"]["annotations"]["runbook.ops/rotated-at"]
    restarted_and_ready(kube_admin, ns, ["personapass-web"], stamp)
