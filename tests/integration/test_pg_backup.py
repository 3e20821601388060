"""pg_backup against the harness PostgreSQL, on both repository backends: backup, verify at every
level, restore in every mode, idempotence, retention, check mode."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.integration.test_pg_backup_support import create_source, databases, fingerprint


@pytest.fixture(scope="module")
def age_keys() -> dict:
    import pyrage
    identity = pyrage.x25519.Identity.generate()
    return {"identity": str(identity), "recipient": str(identity.to_public())}


@pytest.fixture(scope="module")
def source_db(postgres) -> str:
    name = "shop_%s" % uuid.uuid4().hex[:6]
    create_source(postgres, name)
    return name


def _args(postgres, repository: dict, db: str, **extra) -> dict:
    args = dict(postgres.login)
    args.update(repository)
    args["db"] = db
    args.update(extra)
    return args


def _run(args: dict, check_mode: bool = False, diff: bool = False) -> dict:
    from tests.harness.collection import run_module
    return run_module("pg_backup", args, check_mode=check_mode, diff=diff)


def test_backup_verify_restore_every_mode(postgres, repository, source_db, age_keys):
    enc = {"encryption_recipients": [age_keys["recipient"]]}
    ident = {"encryption_identity": age_keys["identity"]}
    expected = fingerprint(postgres, source_db)

    result = _run(_args(postgres, repository, source_db, labels={"ticket": "ops-1"}, **enc), diff=True)
    assert not result.get("failed"), result
    assert result["changed"] and "skipped" not in result
    manifest = result["manifest"]
    assert manifest["format"] == "custom"
    assert manifest["encryption"]["algorithm"] == "age"
    assert manifest["source"]["server_version_num"] >= 150000
    assert manifest["source"]["database_size"] > 0
    counts = manifest["postgresql"]["row_counts"]
    assert counts["public.accounts"] == 5000 and counts["public.sessions"] == 5000
    assert counts["audit.events"] == 500 and counts["audit.Mixed Case"] == 7
    assert manifest["labels"] == {"ticket": "ops-1"}
    assert result["throughput_mib_s"] > 0
    assert result["diff"] == {"before": {"latest_backup": None}, "after": {"latest_backup": result["backup_id"]}}
    assert result["verified"] == [] and result["msg"].startswith("backed up database %s" % source_db)
    backup_id = result["backup_id"]

    for level in ("checksum", "archive", "restore"):
        verified = _run(_args(postgres, repository, source_db, state="verify", level=level, **ident))
        assert not verified.get("failed"), verified
        assert verified["changed"] is False
        assert [(v["backup_id"], v["level"], v["ok"]) for v in verified["verified"]] == [(backup_id, level, True)]
        assert verified["verified"][0]["kind"] == "postgresql" and verified["verified"][0]["set"] == source_db
        assert verified["verified"][0]["problems"] == []
        assert verified["backup_id"] == backup_id and "verified at level %s" % level in verified["msg"]
        assert "diff" not in verified
    assert not [d for d in databases(postgres) if "_verify_" in d]

    # new: into a database that does not exist yet
    new_db = "%s_new_%s" % (source_db, uuid.uuid4().hex[:4])
    restored = _run(_args(postgres, repository, source_db, state="restore", mode="new", target_db=new_db, **ident))
    assert not restored.get("failed"), restored
    assert restored["restored_db"] == new_db and restored["verified"][0]["ok"]
    assert restored["verified"][0]["level"] == "restore" and restored["verified"][0]["details"]["database"] == new_db
    assert "diff" not in restored  # a diff only with --diff
    assert fingerprint(postgres, new_db) == expected
    again = _run(_args(postgres, repository, source_db, state="restore", mode="new", target_db=new_db, **ident))
    assert again.get("failed") and "already exists" in again["msg"]

    # swap: over an existing database with other contents, keeping it under <target>_pre_<id>
    swap_db = "%s_sw_%s" % (source_db, uuid.uuid4().hex[:4])
    postgres.psql('CREATE DATABASE "%s"' % swap_db)
    postgres.psql("CREATE TABLE old_stuff (n int); INSERT INTO old_stuff VALUES (1)", db=swap_db)
    swapped = _run(_args(postgres, repository, source_db, state="restore", target_db=swap_db, **ident), diff=True)
    assert not swapped.get("failed"), swapped
    assert swapped["previous_db"] == "%s_pre_%s" % (swap_db, backup_id)
    assert swapped["diff"]["after"] == {"database": swap_db, "from_backup": backup_id, "previous_db": swapped["previous_db"]}
    assert fingerprint(postgres, swap_db) == expected
    assert postgres.psql("SELECT n FROM old_stuff", db=swapped["previous_db"]) == "1"
    assert not [d for d in databases(postgres) if "_restore_" in d]

    # clean: into the existing database, which has drifted
    postgres.psql("DELETE FROM sessions WHERE id % 2 = 0; UPDATE accounts SET note = 'changed'", db=new_db)
    cleaned = _run(_args(postgres, repository, source_db, state="restore", mode="clean", target_db=new_db, **ident))
    assert not cleaned.get("failed"), cleaned
    assert fingerprint(postgres, new_db) == expected


def test_directory_format_parallel(postgres, tmp_path, source_db, age_keys):
    repository = {"repository": "file://%s" % (tmp_path / "repo")}
    expected = fingerprint(postgres, source_db)
    result = _run(_args(postgres, repository, source_db, format="directory", jobs=2, spool_dir=str(tmp_path / "spool"),
                        encryption_recipients=[age_keys["recipient"]]))
    assert not result.get("failed"), result
    names = [o["name"] for o in result["manifest"]["objects"]]
    assert names[0] == "toc.dat" and len(names) > 3
    assert result["manifest"]["format"] == "directory"
    assert list((tmp_path / "spool").iterdir()) == []  # the staged dump is gone
    for level in ("archive", "restore"):
        verified = _run(_args(postgres, repository, source_db, state="verify", level=level,
                              encryption_identity=age_keys["identity"]))
        assert not verified.get("failed"), verified
    target = source_db + "_dir"
    restored = _run(_args(postgres, repository, source_db, state="restore", mode="new", target_db=target, jobs=2,
                          encryption_identity=age_keys["identity"]))
    assert not restored.get("failed"), restored
    assert fingerprint(postgres, target) == expected


def test_custom_format_parallel_restore_unencrypted(postgres, tmp_path, source_db):
    repository = {"repository": "file://%s" % (tmp_path / "repo")}
    result = _run(_args(postgres, repository, source_db, compression="gzip"))
    assert not result.get("failed"), result
    assert "unencrypted" in json.dumps(result.get("warnings", []))
    assert result["manifest"]["encryption"]["algorithm"] == "none"
    target = source_db + "_par"
    restored = _run(_args(postgres, repository, source_db, state="restore", mode="new", target_db=target, jobs=2,
                          no_owner=True))
    assert not restored.get("failed"), restored
    assert fingerprint(postgres, target) == fingerprint(postgres, source_db)


def test_filters_are_recorded_and_counted(postgres, tmp_path, source_db):
    repository = {"repository": "file://%s" % (tmp_path / "repo")}
    result = _run(_args(postgres, repository, source_db, exclude_schemas=["audit"], exclude_table_data=["sessions"],
                        compression="none"))
    assert not result.get("failed"), result
    pg = result["manifest"]["postgresql"]
    assert set(pg["row_counts"]) == {"public.accounts"}
    assert pg["schema_only_tables"] == ["public.sessions"]
    verified = _run(_args(postgres, repository, source_db, state="verify", level="restore"))
    assert not verified.get("failed"), verified


def test_max_age_and_retention_after_success_only(postgres, tmp_path, source_db):
    repository = {"repository": "file://%s" % (tmp_path / "repo")}
    first = _run(_args(postgres, repository, source_db, max_age="1h", compression="none"))
    assert first["changed"] and not first.get("failed"), first
    second = _run(_args(postgres, repository, source_db, max_age="1h", compression="none"))
    assert not second.get("failed"), second
    assert second["changed"] is False and second["skipped"] is True
    assert second["backup_id"] == first["backup_id"]

    # A failing backup (wrong password) never prunes.
    failing = _args(postgres, repository, source_db, compression="none", retention={"keep_last": 1})
    failing["login_password"] = "wrong-password"
    failed = _run(failing)
    assert failed.get("failed") and "cannot connect" in failed["msg"] and "wrong-password" not in json.dumps(failed)
    manifests = list((tmp_path / "repo").rglob("manifest.json"))
    assert len(manifests) == 1

    third = _run(_args(postgres, repository, source_db, compression="none", retention={"keep_last": 1}))
    assert not third.get("failed"), third
    assert [p["id"] for p in third["pruned"]] == [first["backup_id"]]
    assert [p.parent.name for p in (tmp_path / "repo").rglob("manifest.json")] == [third["backup_id"]]


def test_check_mode_changes_nothing(postgres, tmp_path, source_db):
    repository = {"repository": "file://%s" % (tmp_path / "repo")}
    planned = _run(_args(postgres, repository, source_db, compression="none"), check_mode=True)
    assert not planned.get("failed"), planned
    assert planned["changed"] is True and planned["backup_id"] is None
    assert not (tmp_path / "repo").exists() or not list((tmp_path / "repo").rglob("*"))

    done = _run(_args(postgres, repository, source_db, compression="none"))
    assert not done.get("failed"), done
    before = databases(postgres)
    target = source_db + "_check"
    for mode in ("new", "swap"):
        would = _run(_args(postgres, repository, source_db, state="restore", mode=mode, target_db=target),
                     check_mode=True)
        assert not would.get("failed"), would
        assert would["changed"] is True
    would_verify = _run(_args(postgres, repository, source_db, state="verify", level="restore"), check_mode=True)
    assert not would_verify.get("failed") and would_verify["verified"][0]["level"] == "archive"
    assert databases(postgres) == before


def test_clear_errors(postgres, tmp_path, source_db):
    repository = {"repository": "file://%s" % (tmp_path / "repo")}
    missing = _run(_args(postgres, repository, "no_such_db_x"))
    assert missing.get("failed") and 'database "no_such_db_x" does not exist on 127.0.0.1:%d' % postgres.port in missing["msg"]
    no_repo = _run(_args(postgres, repository, source_db, state="restore"))
    assert no_repo.get("failed") and "does not exist" in no_repo["msg"] and "repository" in no_repo["msg"]
    (tmp_path / "repo").mkdir()
    nothing = _run(_args(postgres, repository, source_db, state="restore"))
    assert nothing.get("failed") and "no complete postgresql backup" in nothing["msg"]
    bad_jobs = _run(_args(postgres, repository, source_db, jobs=2))
    assert bad_jobs.get("failed") and "format=directory" in bad_jobs["msg"]


def test_clean_restore_into_a_missing_database_is_refused(postgres, tmp_path, source_db):
    """mode=clean writes into an existing database only: with a good backup at hand, a missing target
    is refused by name, before anything is read or created, in check mode too."""
    repository = {"repository": "file://%s" % (tmp_path / "repo")}
    stored = _run(_args(postgres, repository, source_db, compression="none"))
    assert not stored.get("failed"), stored
    absent = "absent_%s" % uuid.uuid4().hex[:6]
    before = databases(postgres)
    for check_mode in (True, False):
        refused = _run(_args(postgres, repository, source_db, state="restore", mode="clean", target_db=absent),
                       check_mode=check_mode)
        assert refused.get("failed"), refused
        assert refused["msg"].startswith('restore mode=clean: database "%s" does not exist on 127.0.0.1:%d'
                                         % (absent, postgres.port)), refused["msg"]
    assert databases(postgres) == before
    # The same backup restores with a mode that creates the database.
    created = _run(_args(postgres, repository, source_db, state="restore", mode="new", target_db=absent))
    assert not created.get("failed"), created
    assert fingerprint(postgres, absent) == fingerprint(postgres, source_db)
