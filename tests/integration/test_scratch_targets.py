"""Scratch targets of restore drills: a database a restore marked as a scratch copy
(``pg_backup scratch=true``, dropped by ``state=dropped``) and namespaces owned by a run
(``k8s_namespace``). Anything else of the same name is refused untouched."""

from __future__ import annotations

import uuid

import pytest

from tests.harness.collection import run_module
from tests.integration.test_pg_backup_support import create_source, fingerprint


@pytest.fixture(scope="module")
def source_db(postgres) -> str:
    name = "scr_%s" % uuid.uuid4().hex[:6]
    create_source(postgres, name)
    return name


def _pg(postgres, **args) -> dict:
    return dict(postgres.login, **args)


def test_scratch_restore_is_dropped_and_a_live_database_never(postgres, tmp_path, source_db):
    repo = {"repository": "file://%s" % tmp_path}
    assert not run_module("pg_backup", _pg(postgres, db=source_db, **repo)).get("failed")
    copy_db = source_db + "_drill"
    restored = run_module("pg_backup", _pg(postgres, db=source_db, state="restore", mode="new", scratch=True,
                                           target_db=copy_db, **repo))
    assert not restored.get("failed"), restored
    # A result holding "skipped" at all makes Ansible ignore the task's changed_when and failed_when.
    assert "skipped" not in restored
    assert fingerprint(postgres, copy_db) == fingerprint(postgres, source_db)
    assert postgres.psql("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '%s'"
                         % copy_db).startswith("runbook.ops scratch restore of backup ")

    # The live database has no scratch mark: refused, still there.
    refused = run_module("pg_backup", _pg(postgres, db=source_db, state="dropped"))
    assert refused.get("failed") and "is not a scratch restore" in refused["msg"]
    assert postgres.psql("SELECT count(*) FROM pg_database WHERE datname = '%s'" % source_db) == "1"

    would = run_module("pg_backup", _pg(postgres, db=source_db, state="dropped", target_db=copy_db), check_mode=True)
    assert would["changed"] and would["dropped_db"] == copy_db
    assert postgres.psql("SELECT count(*) FROM pg_database WHERE datname = '%s'" % copy_db) == "1"
    dropped = run_module("pg_backup", _pg(postgres, db=source_db, state="dropped", target_db=copy_db))
    assert dropped["changed"] and dropped["dropped_db"] == copy_db, dropped
    assert postgres.psql("SELECT count(*) FROM pg_database WHERE datname = '%s'" % copy_db) == "0"
    again = run_module("pg_backup", _pg(postgres, db=source_db, state="dropped", target_db=copy_db))
    assert again["changed"] is False and again["dropped_db"] is None


def test_scratch_needs_a_new_database(postgres, tmp_path, source_db):
    refused = run_module("pg_backup", _pg(postgres, db=source_db, state="restore", mode="swap", scratch=True,
                                          repository="file://%s" % tmp_path))
    assert refused.get("failed") and "scratch=true needs state=restore and mode=new" in refused["msg"]


def test_owned_namespaces_come_and_go_and_others_are_refused(kube_cluster, kube_admin, kube_namespace):
    owner = "drill-%s" % uuid.uuid4().hex[:8]
    names = ["%s-a" % owner, "%s-b" % owner]
    auth = kube_cluster.auth()
    would = run_module("k8s_namespace", dict(auth, names=names, owner=owner), check_mode=True)
    assert would["changed"] and would["created"] == names
    assert kube_admin.get("v1", "namespaces", names[0], missing_ok=True) is None

    made = run_module("k8s_namespace", dict(auth, names=names, owner=owner, labels={"purpose": "drill"}))
    assert made["changed"] and made["created"] == names, made
    labels = kube_admin.get("v1", "namespaces", names[1])["metadata"]["labels"]
    assert labels["runbook.ops/owner"] == owner and labels["purpose"] == "drill"
    assert run_module("k8s_namespace", dict(auth, names=names, owner=owner))["changed"] is False

    # A namespace the run does not own: refused by both states, untouched.
    for state in ("present", "absent"):
        refused = run_module("k8s_namespace", dict(auth, names=[kube_namespace], owner=owner, state=state))
        assert refused.get("failed") and "is not owned by %s" % owner in refused["msg"], refused
    assert kube_admin.get("v1", "namespaces", kube_namespace)["status"]["phase"] == "Active"
    other = run_module("k8s_namespace", dict(auth, names=names[:1], owner="someone-else", state="absent"))
    assert other.get("failed") and "runbook.ops/owner=%s" % owner in other["msg"]

    gone = run_module("k8s_namespace", dict(auth, names=names, owner=owner, state="absent", wait_timeout="2m"))
    assert gone["changed"] and gone["deleted"] == names, gone
    assert all(kube_admin.get("v1", "namespaces", name, missing_ok=True) is None for name in names)
    assert run_module("k8s_namespace", dict(auth, names=names, owner=owner, state="absent"))["changed"] is False


@pytest.mark.parametrize("args, message", [
    ({"names": ["Bad_Name"], "owner": "x"}, "names[0]"),
    ({"names": ["ok"], "owner": ""}, "owner is empty"),
    ({"names": ["ok"], "owner": "has space"}, "owner"),
    ({"names": ["ok"], "owner": "x", "labels": {"runbook.ops/owner": "y"}}, "labels must not set"),
])
def test_namespace_options_are_checked_before_anything_runs(kube_cluster, args, message):
    refused = run_module("k8s_namespace", dict(kube_cluster.auth(), **args))
    assert refused.get("failed") and message in refused["msg"], refused
