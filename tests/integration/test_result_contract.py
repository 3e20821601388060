"""One result vocabulary (docs/results.md), checked twice: against every module's RETURN
documentation, and against real runs of every module, on success and on failure."""

from __future__ import annotations

import base64
import typing as t
from pathlib import Path

import pytest
import yaml

from tests.harness.collection import REPO, run_module
from tests.harness.fixtures import REDIS_BACKUP_PASSWORD
from tests.harness.k8s import deployment

MODULES = sorted(path.stem for path in (REPO / "plugins" / "modules").glob("*.py") if path.stem != "__init__")
KUBERNETES = {"k8s_backup", "k8s_health", "ns_isolate", "jwt_rotate", "cert_renew", "k8s_rollout", "k8s_node",
              "k8s_namespace", "pg_credential_rotate", "redis_credential_rotate", "ingress_block", "k8s_evidence"}
JUDGES = {"k8s_health", "backup_repo", "backup_repo_info", "pg_health", "redis_health", "ingress_block", "dr_journal",
          "k8s_evidence"}
# dr_journal judges with state=finished, the only state run through the loops below.
VERIFIES = {"pg_backup", "redis_snapshot", "backup_repo", "k8s_evidence"}
PRUNES = {"pg_backup", "redis_snapshot", "backup_repo"}
VERIFIED_ENTRY = {"backup_id", "kind", "set", "level", "ok", "problems", "details"}


def documented_return(module: str) -> t.Dict[str, t.Any]:
    source = (REPO / "plugins" / "modules" / ("%s.py" % module)).read_text()
    text = source.split('RETURN = r"""', 1)[1].split('"""', 1)[0]
    return t.cast(t.Dict[str, t.Any], yaml.safe_load(text))


def test_every_module_is_known_to_this_contract():
    assert set(MODULES) >= KUBERNETES | JUDGES | VERIFIES | PRUNES
    assert "backup_repo_info" in MODULES


@pytest.mark.parametrize("module", MODULES)
def test_return_documents_the_common_vocabulary(module):
    doc = documented_return(module)
    # changed and failed are Ansible's common return values (documented by Ansible, not by each module).
    for key in ("msg", "duration_s"):
        assert key in doc, "%s RETURN does not document %s" % (module, key)
        assert doc[key]["returned"] == "always", "%s: %s must be returned always" % (module, key)
    assert doc["duration_s"]["type"] == "float"
    assert "removed" not in doc, "%s: retention results are called pruned" % module
    assert "warnings" not in doc, "%s: warnings leave through Ansible's warning channel" % module
    if module in KUBERNETES:
        assert doc.get("api_requests", {}).get("type") == "int", "%s: api_requests (int) missing" % module
    if module in JUDGES:
        assert doc["status"]["type"] == "str"
        assert doc["summary"]["type"] == "dict"
        assert doc["findings"]["type"] == "list"
        assert set(doc["findings"]["contains"]) == {"severity", "check", "object", "message", "details"}
    if module in VERIFIES:
        assert doc["verified"]["type"] == "list", "%s: verified is a list" % module
        assert set(doc["verified"]["contains"]) == VERIFIED_ENTRY, module
    if module in PRUNES:
        assert doc["pruned"]["type"] == "list", module


def assert_common(result: t.Mapping[str, t.Any], module: str, failed: bool) -> None:
    assert bool(result.get("failed")) is failed, result
    assert isinstance(result.get("msg"), str) and result["msg"], (module, result)
    assert "Traceback" not in result["msg"] and "unexpected" not in result["msg"], result["msg"]
    assert isinstance(result.get("duration_s"), float), (module, result)
    assert "_fail_msg" not in result and "warnings" not in result or isinstance(result.get("warnings"), list)
    if not failed:
        assert isinstance(result.get("changed"), bool), (module, result)
    if module in KUBERNETES and not failed:
        assert isinstance(result.get("api_requests"), int) and result["api_requests"] > 0, (module, result)
    if module in JUDGES:
        assert result["status"] in ("ok", "info", "warning", "unknown", "critical"), result
        assert isinstance(result["findings"], list) and isinstance(result["summary"], dict)
    if "verified" in result:
        assert isinstance(result["verified"], list), result["verified"]
        for entry in result["verified"]:
            assert set(entry) == VERIFIED_ENTRY, entry
    assert "removed" not in result
    assert "diff" not in result, "diff is returned only with --diff"


@pytest.fixture
def file_repository(tmp_path: Path) -> t.Dict[str, str]:
    return {"repository": "file://%s" % (tmp_path / "repo")}


def test_real_runs_speak_the_vocabulary(kube_cluster, kube_namespace, postgres, redis_plain, file_repository, tmp_path):
    k8s = kube_cluster.auth()
    ns = kube_namespace
    postgres.psql("DROP TABLE IF EXISTS contract_events; CREATE TABLE contract_events (id serial PRIMARY KEY, "
                  "created_at timestamptz NOT NULL); CREATE INDEX ON contract_events (created_at); "
                  "INSERT INTO contract_events (created_at) SELECT now() - g * interval '1 day' "
                  "FROM generate_series(1, 200) g")
    runs = [
        ("pg_health", dict(postgres.login, db="postgres"), {}),
        ("pg_maintenance", dict(postgres.login, db="postgres"), {"check_mode": True}),
        ("pg_purge", dict(postgres.login, db="postgres", table="contract_events", column="created_at",
                          older_than="90d"), {}),
        ("pg_backup", dict(postgres.login, db="postgres", **file_repository), {}),
        ("pg_backup", dict(postgres.login, db="postgres", state="verify", **file_repository), {}),
        ("redis_snapshot", dict(redis_plain.login, **file_repository), {}),
        ("redis_snapshot", dict(redis_plain.login, state="verify", **file_repository), {}),
        ("redis_health", dict(redis_plain.login), {}),
        ("backup_repo", dict(state="verify", **file_repository), {}),
        ("backup_repo", dict(state="prune", retention={"keep_last": 1}, **file_repository), {"check_mode": True}),
        ("backup_repo_info", dict(max_age="1h", **file_repository), {}),
        ("k8s_health", dict(k8s, namespaces=[ns]), {}),
        ("jwt_rotate", dict(k8s, namespace=ns, secret_name="contract-keys", algorithm="ES256"), {}),
        ("cert_renew", dict(k8s, sources=[{"type": "certificate", "namespace": ns, "all": True}]), {}),
        ("ns_isolate", dict(k8s, namespace=ns, state="released"), {}),
        ("k8s_evidence", dict(k8s, namespace=ns, incident_id="inc-1", include_nodes=False, **file_repository), {}),
        ("ingress_block", dict(k8s, namespace=ns, incident_id="inc-1", state="released"), {}),
        ("k8s_backup", dict(k8s, namespaces=[ns], exclude_kinds=["Secret"], **file_repository), {}),
        ("k8s_rollout", dict(k8s, namespace=ns, action="status", all=True), {}),
        ("k8s_node", dict(k8s, label_selector="type=kwok", state="cordoned"), {"check_mode": True}),
        ("k8s_namespace", dict(k8s, names=["contract-scratch"], owner="contract"), {"check_mode": True}),
        ("pg_credential_rotate", dict(k8s, **postgres.login, role="contract_app",
                                      secret={"namespace": ns, "name": "contract-pg"}), {}),
        ("redis_credential_rotate", dict(k8s, **redis_plain.login, user="backup",
                                         secret={"namespace": ns, "name": "contract-redis"}), {"check_mode": True}),
        ("findings_report", dict(title="Contract", sections=[{"name": "Cluster", "source": "k8s_health", "result": {
            "findings": [{"severity": "warning", "check": "c", "object": "X/y", "message": "m"}]}}],
            outputs={"json": str(tmp_path / "report.json")}), {}),
    ]
    seen = set()
    journal = str(tmp_path / "drill.jsonl")
    for step in (dict(state="started", platform="contract"), dict(state="phase", phase="validate", event="begin"),
                 dict(state="phase", phase="validate", event="end")):
        assert_common(run_module("dr_journal", dict(step, path=journal)), "dr_journal_steps", failed=False)
    runs += [
        ("dr_journal", dict(state="finished", path=journal, objectives={"rto": "1h"}, store=True, **file_repository,
                            data_times=[{"source": "postgresql/postgres", "newest_at": "2026-01-01T00:00:00Z"}]), {}),
        ("data_canary", dict(postgres.login, service="postgresql", db="postgres", table="contract_canary"), {}),
    ]
    kube_cluster.client().create("apps/v1", "deployments", deployment("contract-app", ns))
    postgres.psql("DROP ROLE IF EXISTS contract_app; CREATE ROLE contract_app LOGIN PASSWORD 'contract-app-password'")
    for name, password in (("contract-pg", "contract-app-password"), ("contract-redis", REDIS_BACKUP_PASSWORD)):
        kube_cluster.client().create("v1", "secrets", {"metadata": {"name": name, "namespace": ns}, "data": {
            "password": base64.b64encode(password.encode()).decode()}}, ns)
    for module, args, extra in runs:
        result = run_module(module, args, **extra)
        assert_common(result, module, failed=False)
        seen.add(module)
    assert seen == set(MODULES), "a module has no successful run here: %s" % (set(MODULES) - seen)


def test_failed_runs_speak_the_vocabulary(kube_cluster, kube_namespace, postgres, redis_plain, file_repository,
                                          tmp_path):
    k8s = kube_cluster.auth()
    missing = {"repository": file_repository["repository"] + "-missing"}
    runs = [
        ("pg_health", dict(postgres.login, db="postgres", login_password="wrong-password", fail_on="critical")),
        ("pg_maintenance", dict(postgres.login, db="no_such_database")),
        ("pg_purge", dict(postgres.login, db="postgres", table="no_such_table", column="created_at", older_than="90d")),
        ("pg_backup", dict(postgres.login, db="no_such_database", **file_repository)),
        ("redis_snapshot", dict(redis_plain.login, login_password="wrong-password", **file_repository)),
        ("redis_health", dict(redis_plain.login, login_password="wrong-password", fail_on="critical")),
        ("backup_repo", dict(state="verify", **missing)),
        ("backup_repo_info", dict(**missing)),
        ("k8s_health", dict(k8s, namespaces=["no-such-namespace"], fail_on="warning")),
        ("jwt_rotate", dict(k8s, namespace=kube_namespace, secret_name="contract-keys", revoke=["no-such-kid"])),
        ("cert_renew", dict(k8s, sources=[{"type": "certificate", "namespace": kube_namespace, "all": True}],
                            issuer={"type": "ca", "ca_cert": "not a certificate", "ca_key": "not a key"})),
        ("ns_isolate", dict(k8s, namespace="no-such-namespace", state="isolated", incident_id="inc-1")),
        ("k8s_evidence", dict(k8s, state="verified", namespace=kube_namespace, **missing)),
        ("ingress_block", dict(k8s, namespace=kube_namespace, incident_id="inc-1", state="ranked",
                               log_sources=[{"label_selector": "app=no-such-app"}])),
        ("k8s_backup", dict(k8s, namespaces=[kube_namespace], state="restore", **missing)),
        ("k8s_rollout", dict(k8s, namespace=kube_namespace, action="restart", targets=["Deployment/no-such-app"])),
        ("k8s_node", dict(k8s, name="no-such-node", state="cordoned")),
        ("k8s_namespace", dict(k8s, names=[kube_namespace], owner="contract", state="absent")),
        ("pg_credential_rotate", dict(k8s, **postgres.login, role="app",
                                      secret={"namespace": kube_namespace, "name": "no-such-secret"})),
        ("redis_credential_rotate", dict(k8s, **redis_plain.login, user="backup",
                                         secret={"namespace": kube_namespace, "name": "no-such-secret"})),
        ("findings_report", dict(title="Contract", sections=[{"name": "Cluster", "source": "k8s_health", "result": {}}],
                                 outputs={"json": "/no-such-directory/report.json"})),
    ]
    journal = str(tmp_path / "drill.jsonl")
    run_module("dr_journal", dict(state="started", platform="contract", path=journal))
    runs += [
        # No phase validate and no data time: neither objective can be measured.
        ("dr_journal", dict(state="finished", path=journal, objectives={"rto": "1h", "rpo": "1h"})),
        ("data_canary", dict(redis_plain.login, service="redis", login_password="wrong-password")),
    ]
    for module, args in runs:
        result = run_module(module, args)
        assert_common(result, module, failed=True)
