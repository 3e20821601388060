"""playbooks/backup.yml (the role runbook.ops.backup) against a lab this module starts for itself: the
three platforms' PostgreSQL databases, Redis instances and Kubernetes namespaces, backed up into moto S3.

Every check reads the repository itself (backup_repo_info, backup_repo verify, or the repository
reader straight against moto), not only what the play registered."""

from __future__ import annotations

import datetime
import json
import re
import shutil
import subprocess
import tempfile
import typing as t
from pathlib import Path

import pytest
import yaml

from ansible_collections.runbook.ops.plugins.module_utils import _repository
from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository
from tests.harness.collection import REPO, run_module, run_playbook
from tests.harness.proxy import FaultProxy
from tests.harness.private_lab import lab_command

PLATFORMS = ("rust-security", "hungryhippaahneties", "personapass")
KINDS = ("postgresql", "redis", "kubernetes")


class Lab(t.NamedTuple):
    inventory: Path
    facts: t.Dict[str, t.Any]
    work: Path

    @property
    def repository(self) -> t.Dict[str, t.Any]:
        return dict(self.facts["lab_repository"])

    @property
    def identity(self) -> str:
        return str(self.facts["lab_age_identity_file"])


@pytest.fixture(scope="module")
def lab() -> t.Iterator[Lab]:
    """The lab of ``python -m tests.harness.lab``, started under this module's own directory (its own
    services and ports, its own inventory facts), small data, stopped at the end."""
    # Not pytest's 0700 temporary directory: PostgreSQL runs as its own user and must reach its files.
    work = Path(tempfile.mkdtemp(prefix="runbook-backup-role-"))
    work.chmod(0o755)
    inventory = work / "inventory"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    source = REPO / "inventories" / "lab"
    (inventory / "hosts.yml").symlink_to(source / "hosts.yml")
    (inventory / "host_vars").symlink_to(source / "host_vars", target_is_directory=True)
    facts_file = inventory / "group_vars" / "all" / "lab.yml"

    def run_lab(action: str) -> subprocess.CompletedProcess:
        return lab_command(action, work / "lab", facts_file, scale="0.05", check=False)

    try:
        started = run_lab("up")
        assert started.returncode == 0, started.stdout + started.stderr
        yield Lab(inventory, yaml.safe_load(facts_file.read_text()), work)
    finally:
        run_lab("down")
        shutil.rmtree(work, ignore_errors=True)


def run_backup(lab: Lab, name: str, extra_vars: t.Optional[dict] = None, verbosity: int = 0
               ) -> t.Tuple[subprocess.CompletedProcess, t.Dict[str, t.List[dict]], Path]:
    """playbooks/backup.yml, then each platform's ``backup_result`` written to a file (a platform whose
    backup play failed writes none). Returns the run, the results by platform and the report directory."""
    out = lab.work / name
    out.mkdir()
    wrapper = out / "run.yml"
    wrapper.write_text(yaml.safe_dump([
        {"name": "Back up", "ansible.builtin.import_playbook": str(REPO / "playbooks" / "backup.yml")},
        {"name": "Keep each platform's result", "hosts": "{{ runbook_hosts | default('platforms') }}",
         "gather_facts": False, "tasks": [{"name": "Write it", "ansible.builtin.copy": {
             "content": "{{ backup_result | to_json }}", "dest": "%s/{{ inventory_hostname }}.json" % out,
             "mode": "0600"}, "changed_when": False}]},
    ]))
    # One report directory for every run: the recap then counts changes of the backup play alone.
    variables = {"backup_report_dir": str(lab.work / "reports")}
    variables.update(extra_vars or {})
    proc = run_playbook(wrapper, variables, inventory=str(lab.inventory), verbosity=verbosity, timeout=1200)
    results = {path.stem: json.loads(path.read_text()) for path in out.glob("*.json")}
    return proc, results, lab.work / "reports"


def listed(repository: dict, kind: t.Optional[str] = None, set_name: t.Optional[str] = None) -> t.List[dict]:
    """Complete backups in the repository, newest first, as backup_repo_info reads them."""
    args = dict(repository)
    args.update({key: value for key, value in (("kind", kind), ("set", set_name)) if value})
    info = run_module("backup_repo_info", args)
    assert not info.get("failed"), info
    return info["backups"]


def _set_ids(backups: t.List[dict]) -> t.Dict[t.Tuple[str, str], t.List[str]]:
    found: t.Dict[t.Tuple[str, str], t.List[str]] = {}
    for backup in backups:
        found.setdefault((backup["kind"], backup["set"]), []).append(backup["id"])
    return found


def _recap_changed(stdout: str) -> t.Dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", stdout, re.M)}


def test_second_run_in_a_row_does_nothing_because_every_set_is_fresh(lab: Lab) -> None:
    # The first run starts every set as a parallel job, the second runs them in turn: both paths are used.
    first, results, reports = run_backup(lab, "first", {"backup_parallel": True}, verbosity=1)
    assert first.returncode == 0, first.stdout[-6000:]
    assert sorted(results) == sorted(PLATFORMS)
    for platform, records in results.items():
        assert sorted(r["kind"] for r in records) == sorted(KINDS), records
        for record in records:
            assert record["taken"] and not record["not_due"] and not record["failed"], record
            assert record["verified"] is True, record
            assert record["set"].startswith(platform + "-")
    # -v prints every result and loop item: no password of the lab may be among them.
    secrets = [lab.facts["lab_pg_login"]["login_password"], lab.facts["lab_redis_login"]["login_password"],
               lab.facts["lab_redis_tls_login"]["login_password"], Path(lab.identity).read_text().split()[-1]]
    assert not [secret for secret in secrets if secret in first.stdout]

    # The repository holds exactly one backup per set, the one each result names, and each verifies.
    new_ids = {(r["kind"], r["set"]): [r["backup_id"]] for records in results.values() for r in records}
    assert _set_ids(listed(lab.repository)) == new_ids
    verified = run_module("backup_repo", dict(lab.repository, state="verify", encryption_identity=lab.identity))
    assert not verified.get("failed"), verified
    assert sorted((v["kind"], v["set"]) for v in verified["verified"] if v["ok"]) == sorted(new_ids)
    assert {v["level"] for v in verified["verified"]} == {"decrypt"}
    report = (reports / "rust-security-backup.md").read_text()
    assert "taken (" in report and "verified (archive)" in report and "verified (rdb)" in report
    assert "canary written at" in report
    _canary_is_in_the_restored_backup(lab, results["rust-security"])

    second, again, reports = run_backup(lab, "second")
    assert second.returncode == 0, second.stdout[-6000:]
    assert _recap_changed(second.stdout) == {platform: 0 for platform in PLATFORMS}
    for records in again.values():
        for record in records:
            assert record["not_due"] and not record["taken"] and record["verified"] is None, record
            assert [record["backup_id"]] == new_ids[(record["kind"], record["set"])]
    assert _set_ids(listed(lab.repository)) == new_ids
    report = (reports / "hungryhippaahneties-backup.md").read_text()
    for record in again["hungryhippaahneties"]:
        assert "not due: newest backup %s is" % record["backup_id"] in report
    assert "(due every 5h30m)" in report
    metrics = (reports / "personapass-backup.prom").read_text()
    assert re.search(r'runbook_backup_age_seconds\{[^}]*kind="redis",set="personapass-redis"\} \d+', metrics), metrics


def _canary_is_in_the_restored_backup(lab: Lab, records: t.List[dict]) -> None:
    """Every PostgreSQL and Redis backup taken was preceded by a canary; the PostgreSQL backup, restored into a
    scratch database, holds exactly that canary (the data time a drill measures its RPO from)."""
    for record in records:
        if record["kind"] in ("postgresql", "redis"):
            assert record["canary_written_at"] and record["canary_error"] is None, record
    pg = next(record for record in records if record["kind"] == "postgresql")
    login = dict(lab.facts["lab_pg_login"])
    scratch = "canary_check_%s" % pg["backup_id"][-6:]
    restored = run_module("pg_backup", dict(login, **lab.repository, state="restore", db=pg["name"], set=pg["set"],
                                            backup_id=pg["backup_id"], mode="new", scratch=True, target_db=scratch,
                                            encryption_identity=lab.identity))
    assert not restored.get("failed"), restored
    try:
        read = run_module("data_canary", dict(login, service="postgresql", db=scratch, state="read"))
        assert read.get("found") and read["written_at"] == pg["canary_written_at"], read
    finally:
        dropped = run_module("pg_backup", dict(login, state="dropped", db=pg["name"], target_db=scratch))
        assert not dropped.get("failed"), dropped


# ------------------------------------------------------------------------------------------------
# S3 lost mid-run, then retention once everything succeeds

DAY = datetime.datetime.now(datetime.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) \
    - datetime.timedelta(days=40)


def _seed(options: dict, kind: str, set_name: str, monkeypatch: pytest.MonkeyPatch) -> t.List[str]:
    """Ten complete backups of a set taken 40 days ago, one an hour from midnight (oldest first)."""
    repo = Repository.from_options(options)
    ids = []
    for hour in range(10):
        when = DAY + datetime.timedelta(hours=hour)
        monkeypatch.setattr(_repository, "utcnow", lambda when=when: when + datetime.timedelta(minutes=1))
        with repo.new_backup(kind, set_name, now=when) as backup:
            backup.add_object("data", _Bytes(b"seed %d " % hour * 100))
            ids.append(backup.commit(fmt="raw", compression={"algorithm": "zstd"})["id"])
    monkeypatch.undo()
    return ids


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, size: int = -1) -> bytes:
        chunk, self.data = (self.data, b"") if size < 0 else (self.data[:size], self.data[size:])
        return chunk


def test_s3_lost_mid_run_fails_the_set_prunes_nothing_then_retention_applies(lab: Lab, monkeypatch) -> None:
    direct = dict(lab.repository, repository="s3://lab-backups/fault")
    seeded = {kind: _seed(direct, kind, "rust-security-%s" % name, monkeypatch)
              for kind, name in (("postgresql", "auth_service"), ("kubernetes", "kubernetes"))}
    endpoint = direct["s3_endpoint_url"].rsplit(":", 1)
    # The first upload of the Redis snapshot cuts S3 off: PostgreSQL (backed up first) is stored by then.
    proxy = FaultProxy(endpoint[0].split("//")[1], int(endpoint[1]), cut_on=re.compile(rb"(PUT|POST) /[^ ]*/redis/"))
    try:
        through_proxy = dict(direct, s3_endpoint_url=proxy.url)
        play_vars = {"runbook_hosts": "rust-security", "backup_parallel": False,
                     "lab_repository": through_proxy}
        before = _set_ids(listed(direct))

        failed, results, reports = run_backup(lab, "fault", play_vars)
        assert failed.returncode != 0
        assert results == {}
        message = re.search(r"Backup of rust-security failed for ([^:]*):", failed.stdout)
        assert message, failed.stdout[-6000:]
        assert "rust-security-redis" in message.group(1) and "rust-security-kubernetes" in message.group(1)
        assert "No retention was applied" in failed.stdout
        after = _set_ids(listed(direct))
        # Nothing pruned: every seeded backup is still there; PostgreSQL got its new one, the others none.
        assert after[("kubernetes", "rust-security-kubernetes")] == before[("kubernetes", "rust-security-kubernetes")]
        pg_after = after[("postgresql", "rust-security-auth_service")]
        assert len(pg_after) == len(seeded["postgresql"]) + 1 and set(seeded["postgresql"]) < set(pg_after)
        assert ("redis", "rust-security-redis") not in after
        report = json.loads((reports / "rust-security-backup.json").read_text())
        assert report["status"] == "critical", report
        markdown = (reports / "rust-security-backup.md").read_text()
        assert "retention not applied" in markdown

        # S3 back: the backups stored before the cut still verify, through the same endpoint.
        proxy.restore()
        proxy.cut_on = None
        verified = run_module("backup_repo", dict(through_proxy, state="verify", kind="postgresql",
                                                  set="rust-security-auth_service", encryption_identity=lab.identity))
        assert not verified.get("failed"), verified
        assert len(verified["verified"]) == len(pg_after) and all(v["ok"] for v in verified["verified"])

        # Everything succeeds now: the due sets are backed up and retention runs
        # (keep_last 7, keep_daily 14, keep_weekly 8 on the seeds of one day: the newest, the six
        # latest seeds and the oldest, which the daily rule keeps with periods to spare).
        done, results, _reports = run_backup(lab, "after", play_vars)
        assert done.returncode == 0, done.stdout[-6000:]
        records = {r["kind"]: r for r in results["rust-security"]}
        assert records["postgresql"]["not_due"] and records["redis"]["taken"] and records["kubernetes"]["taken"]
        final = _set_ids(listed(direct))
        for kind in ("postgresql", "kubernetes"):
            expected_pruned = seeded[kind][1:4]
            assert sorted(records[kind]["pruned"]) == sorted(expected_pruned), records[kind]
            remaining = final[(kind, records[kind]["set"])]
            assert not set(expected_pruned) & set(remaining)
            assert set(seeded[kind][4:] + seeded[kind][:1]) < set(remaining) and len(remaining) == 8
        assert records["redis"]["pruned"] == [] and len(final[("redis", "rust-security-redis")]) == 1
    finally:
        proxy.close()
