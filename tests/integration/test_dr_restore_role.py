"""playbooks/dr_drill.yml and playbooks/dr_restore.yml (the role runbook.ops.dr_restore) against a lab this
module starts for itself: drills restore into scratch copies equal to the source while production stays as
it was, RPO comes from the restored data's own time, faults fail the drill naming the phase, and a real
restore brings back a platform whose database was dropped and whose namespace objects were deleted."""

from __future__ import annotations

import io
import json
import subprocess
import typing as t
from pathlib import Path

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._k8s import K8sClient
from ansible_collections.runbook.ops.plugins.module_utils._k8s_objects import strip_server_fields
from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository
from ansible_collections.runbook.ops.plugins.module_utils._stream import load_identities
from tests.harness.collection import REPO, run_module, run_playbook
from tests.integration import test_backup_role
from tests.integration.test_backup_role import Lab, listed, run_backup
from tests.integration.test_pg_backup_support import table_checksums

# The module-scoped lab fixture of the backup role's tests: this module gets a lab of its own.
lab = test_backup_role.lab

PLATFORMS = {"rust-security": ("auth_service", "redis"), "hungryhippaahneties": ("hungryhippaahneties_db", "redis"),
             "personapass": ("personapass", "redis")}
COMPARED_KINDS = (("apps/v1", "deployments"), ("apps/v1", "statefulsets"), ("v1", "services"), ("v1", "configmaps"),
                  ("v1", "secrets"), ("networking.k8s.io/v1", "networkpolicies"))


class LabPg:
    """psql-like access to the lab's PostgreSQL (TLS, password) for the shared checksum helper."""

    def __init__(self, login: t.Mapping[str, t.Any]) -> None:
        self.login = login

    def connect(self, db: str) -> t.Any:
        import psycopg
        return psycopg.connect(host=self.login["login_host"], port=self.login["login_port"],
                               user=self.login["login_user"], password=self.login["login_password"], dbname=db,
                               sslmode="verify-full", sslrootcert=self.login["ca_cert"], autocommit=True)

    def psql(self, sql: str, db: str = "postgres") -> str:
        with self.connect(db) as conn:
            cursor = conn.execute(sql)
            rows = cursor.fetchall() if cursor.description else []
        return "\n".join("|".join("" if v is None else str(v) for v in row) for row in rows)


def redis_client(login: t.Mapping[str, t.Any]) -> t.Any:
    import redis
    return redis.Redis(host=login["login_host"], port=login["login_port"], password=login.get("login_password"),
                       ssl=bool(login.get("tls")), ssl_ca_certs=login.get("ca_certs"), decode_responses=False)


def redis_state(client: t.Any) -> t.Dict[bytes, t.Tuple[bytes, bool]]:
    """Every key's DUMP-independent value digest and whether it expires (TTLs move, their presence must not)."""
    state = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"string":
            value = client.get(key)
        elif kind == b"hash":
            value = repr(sorted(client.hgetall(key).items())).encode()
        elif kind == b"list":
            value = repr(client.lrange(key, 0, -1)).encode()
        elif kind == b"set":
            value = repr(sorted(client.smembers(key))).encode()
        elif kind == b"zset":
            value = repr(client.zrange(key, 0, -1, withscores=True)).encode()
        else:
            value = kind
        state[key] = (value, client.ttl(key) >= 0)
    return state


def k8s_state(client: K8sClient, namespace: str) -> t.Dict[str, t.Any]:
    """The namespace's objects as a backup stores them, keyed without the namespace."""
    objects = {}
    for api_version, plural in COMPARED_KINDS:
        for obj in client.list(api_version, plural, namespace):
            body = strip_server_fields(obj)
            meta = dict(body["metadata"])
            meta.pop("namespace", None)
            body["metadata"] = meta
            spec = dict(body.get("spec") or {})
            for field in ("clusterIP", "clusterIPs"):  # allocated anew for a copy
                spec.pop(field, None)
            if spec:
                body["spec"] = spec
            objects["%s/%s" % (body["kind"], meta["name"])] = body
    return objects


def versions(client: K8sClient, namespace: str) -> t.Dict[str, str]:
    return {"%s/%s" % (plural, o["metadata"]["name"]): o["metadata"]["resourceVersion"]
            for api_version, plural in COMPARED_KINDS for o in client.list(api_version, plural, namespace)}


class Drill(t.NamedTuple):
    proc: subprocess.CompletedProcess
    report: t.Dict[str, t.Any]


def stored_verdict(lab: Lab, platform: str) -> t.Dict[str, t.Any]:
    """The verdict of the newest drill or restore of ``platform``, read back from the repository."""
    repo = Repository.from_options(dict(lab.repository))
    try:
        manifest = repo.latest("drill", platform + "-drill")
        assert manifest is not None, "no drill stored for %s" % platform
        entry = next(o for o in manifest["objects"] if o["name"] == "verdict.json")
        out = io.BytesIO()
        repo.read_object(manifest, entry, out, load_identities(lab.identity))
        return t.cast(t.Dict[str, t.Any], json.loads(out.getvalue()))
    finally:
        repo.close()


def run_dr(lab: Lab, playbook: str, platform: str, extra: t.Optional[dict] = None) -> Drill:
    """The playbook on one platform; the verdict it stored (the report of a run that stored none is empty)."""
    before = listed(lab.repository, kind="drill", set_name=platform + "-drill")
    variables = {"runbook_hosts": platform, "dr_restore_report_dir": str(lab.work / "dr-reports")}
    variables.update(extra or {})
    proc = run_playbook(REPO / "playbooks" / playbook, variables, inventory=str(lab.inventory), timeout=1200)
    stored = len(listed(lab.repository, kind="drill", set_name=platform + "-drill")) > len(before)
    return Drill(proc, stored_verdict(lab, platform) if stored else {})


@pytest.fixture(scope="module")
def backed_up(lab: Lab) -> Lab:
    proc, results, reports = run_backup(lab, "initial", {"backup_max_age": "0", "backup_prune": False})
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert sorted(results) == sorted(PLATFORMS)
    # Every database and Redis backup carries the canary the drills read back.
    assert all(r["canary_written_at"] for records in results.values() for r in records if r["kind"] != "kubernetes")
    assert reports.is_dir()
    return lab


def _k8s(lab: Lab) -> K8sClient:
    return K8sClient.from_params({"kubeconfig": lab.facts["lab_k8s_auth"]["kubeconfig"]})


def _remove_scratch(lab: Lab, platform: str, owner: str) -> None:
    database = PLATFORMS[platform][0]
    dropped = run_module("pg_backup", dict(lab.facts["lab_pg_login"], db=database, state="dropped",
                                           target_db=database + "_drill"))
    assert not dropped.get("failed"), dropped
    gone = run_module("k8s_namespace", dict(lab.facts["lab_k8s_auth"], names=[platform + "-drill"], owner=owner,
                                            state="absent"))
    assert not gone.get("failed"), gone


def source_redis(lab: Lab, platform: str) -> t.Any:
    return redis_client(lab.facts["lab_redis_tls_login" if platform == "hungryhippaahneties" else "lab_redis_login"])


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_drill_copies_equal_the_source_and_production_is_untouched(backed_up: Lab, platform: str) -> None:
    lab = backed_up
    pg, client = LabPg(lab.facts["lab_pg_login"]), _k8s(lab)
    database = PLATFORMS[platform][0]
    before = (table_checksums(pg, database), versions(client, platform), redis_state(source_redis(lab, platform)))

    drill = run_dr(lab, "dr_drill.yml", platform, {"dr_restore_keep_scratch": True})
    assert drill.proc.returncode == 0, drill.proc.stdout[-6000:]
    report = drill.report
    assert report["status"] == "ok" and report["met"] == {"rto": True, "rpo": True}, report
    assert 0 < report["rto_seconds"] < 1200 and 0 <= report["rpo_seconds"] < 3600
    run_id = report["run_id"]
    try:
        # The copies hold exactly the backed-up data (nothing wrote to the lab since the backup).
        assert table_checksums(pg, database + "_drill") == before[0]
        assert redis_state(redis_client(lab.facts["lab_redis_target_login"])) == before[2]
        assert k8s_state(client, platform + "-drill") == k8s_state(client, platform)
    finally:
        _remove_scratch(lab, platform, run_id)
    # Production: same rows, same objects (not one resourceVersion moved), same keys.
    assert (table_checksums(pg, database), versions(client, platform),
            redis_state(source_redis(lab, platform))) == before


def backup_now(lab: Lab, name: str, platform: str, **extra: t.Any) -> None:
    variables = {"backup_max_age": "0", "backup_prune": False, "runbook_hosts": platform}
    variables.update(extra)
    proc = run_backup(lab, name, variables)[0]
    assert proc.returncode == 0, proc.stdout[-4000:]


def _age_canary(lab: Lab, platform: str, minutes: int) -> None:
    """Put the canary the backup role would write ``minutes`` in the past, in the database and in Redis."""
    pg = LabPg(lab.facts["lab_pg_login"])
    pg.psql("UPDATE runbook_canary SET written_at = now() - interval '%d minutes'" % minutes, db=PLATFORMS[platform][0])
    client = source_redis(lab, platform)
    value = json.loads(client.get("runbook:canary"))
    import datetime
    then = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=minutes)
    value["written_at"] = then.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    client.set("runbook:canary", json.dumps(value))


def test_rpo_comes_from_the_data_and_a_stale_backup_fails_the_drill(backed_up: Lab) -> None:
    lab, platform = backed_up, "personapass"
    _age_canary(lab, platform, 10)
    backup_now(lab, "aged-10", platform, backup_canary=False)
    drill = run_dr(lab, "dr_drill.yml", platform)
    assert drill.proc.returncode == 0, drill.proc.stdout[-6000:]
    # The backup is seconds old; the newest data in it is ten minutes old. An RPO from the backup's clock fails here.
    assert 600 <= drill.report["rpo_seconds"] < 900, drill.report

    _age_canary(lab, platform, 120)  # personapass's RPO objective is 1h
    backup_now(lab, "aged-120", platform, backup_canary=False)
    stale = run_dr(lab, "dr_drill.yml", platform)
    assert stale.proc.returncode != 0
    assert stale.report["met"]["rpo"] is False and stale.report["status"] == "critical", stale.report
    assert stale.report["rpo_seconds"] >= 7200
    # Both drills are kept in the repository as its history.
    assert len(listed(lab.repository, kind="drill", set_name=platform + "-drill")) >= 2
    # The canary back to now for the tests after this one.
    backup_now(lab, "fresh", platform)


def _newest(lab: Lab, kind: str, set_name: str) -> t.Dict[str, t.Any]:
    return listed(lab.repository, kind=kind, set_name=set_name)[0]


def _phase_failed(drill: Drill) -> str:
    failed = [p["name"] for p in drill.report.get("phases", []) if p.get("status") == "failed"]
    assert len(failed) == 1, drill.report
    return failed[0]


def test_faults_fail_the_drill_naming_the_phase_and_leave_production_alone(backed_up: Lab, tmp_path: Path) -> None:
    lab, platform = backed_up, "rust-security"
    pg, client = LabPg(lab.facts["lab_pg_login"]), _k8s(lab)
    before = (table_checksums(pg, "auth_service"), versions(client, platform))
    repo = Repository.from_options(dict(lab.repository))
    try:
        # A corrupted object: one byte of the database backup's data flipped.
        newest = _newest(lab, "postgresql", platform + "-auth_service")
        manifest = repo.get("postgresql", platform + "-auth_service", newest["id"])
        key = repo.object_key(manifest, manifest["objects"][0]["name"])
        data = bytearray(repo.backend.get_bytes(key))
        data[len(data) // 2] ^= 0xFF
        repo.backend.put_bytes(key, bytes(data))
        corrupted = run_dr(lab, "dr_drill.yml", platform)
        assert corrupted.proc.returncode != 0 and _phase_failed(corrupted) == "postgresql", corrupted.report
        data[len(data) // 2] ^= 0xFF
        repo.backend.put_bytes(key, bytes(data))

        # A wrong identity: the Kubernetes backup (Secrets, encrypted) cannot be read.
        wrong = tmp_path / "wrong-identity.txt"
        import pyrage
        wrong.write_text(str(pyrage.x25519.Identity.generate()) + "\n")
        wrong.chmod(0o600)
        denied = run_dr(lab, "dr_drill.yml", platform, {"lab_age_identity_file": str(wrong)})
        assert denied.proc.returncode != 0 and _phase_failed(denied) == "kubernetes_config", denied.report

        # A missing manifest: the newest Kubernetes backup loses it; the drill must not fall back silently.
        k8s_set = platform + "-kubernetes"
        for backup in listed(lab.repository, kind="kubernetes", set_name=k8s_set):
            manifest = repo.get("kubernetes", k8s_set, backup["id"])
            repo.backend.delete([repo.object_key(manifest, "manifest.json")])
        missing = run_dr(lab, "dr_drill.yml", platform)
        assert missing.proc.returncode != 0 and _phase_failed(missing) == "kubernetes_config", missing.report
    finally:
        repo.close()
    # Every failed drill removed its scratch copies and never touched production.
    assert client.get("v1", "namespaces", platform + "-drill", missing_ok=True) is None
    assert pg.psql("SELECT count(*) FROM pg_database WHERE datname = 'auth_service_drill'") == "0"
    assert (table_checksums(pg, "auth_service"), versions(client, platform)) == before
    backup_now(lab, "after-faults", platform)


def test_restore_brings_back_a_dropped_database_and_deleted_objects(backed_up: Lab) -> None:
    lab, platform = backed_up, "personapass"
    pg, client = LabPg(lab.facts["lab_pg_login"]), _k8s(lab)
    rows, objects = table_checksums(pg, "personapass"), k8s_state(client, platform)
    pg.psql('DROP DATABASE "personapass" WITH (FORCE)')
    for api_version, plural in COMPARED_KINDS:
        for obj in client.list(api_version, plural, platform):
            if obj["metadata"]["name"] != "kube-root-ca.crt":
                client.delete(api_version, plural, obj["metadata"]["name"], platform, missing_ok=True)

    restored = run_dr(lab, "dr_restore.yml", platform, {"dr_restore_validate_timeout": 180})
    assert restored.proc.returncode == 0, restored.proc.stdout[-6000:]
    assert restored.report["status"] == "ok" and restored.report["met"]["rto"], restored.report
    assert table_checksums(pg, "personapass") == rows
    assert k8s_state(client, platform) == objects
