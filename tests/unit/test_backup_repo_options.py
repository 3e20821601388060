"""backup_repo and backup_repo_info options, built through their own argument specs (defaults and
rules apply as in a real run), and the retention results on a real file repository."""

from __future__ import annotations

import datetime

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._backup_repo import (
    BackupRepoInfoOptions, BackupRepoOptions, run_backup_repo, run_backup_repo_info)
from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository
from tests.harness.tasks import InvalidParams, make_task, validated


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, size: int = -1) -> bytes:
        size = len(self.data) if size < 0 else size
        chunk = self.data[self.pos:self.pos + size]
        self.pos += len(chunk)
        return chunk


def test_defaults_come_from_the_argument_spec():
    opts = BackupRepoOptions.from_params(validated("backup_repo", {"state": "cleanup"}))
    assert opts.older_than == 86400.0 and opts.latest_only is False and opts.identities == ()
    info = BackupRepoInfoOptions.from_params(validated("backup_repo_info", {"max_age": "26h"}))
    assert info.max_age == 26 * 3600.0 and info.max_age_text == "26h"


@pytest.mark.parametrize("params,message", [
    ({}, "missing required arguments: state"),
    ({"state": "list"}, "value of state must be one of: verify, prune, cleanup"),
    ({"state": "prune"}, "state is prune but all of the following are missing: retention"),
    ({"state": "verify", "set": "app"}, "missing parameter(s) required by 'set': kind"),
])
def test_the_argument_spec_refuses(params, message):
    with pytest.raises(InvalidParams) as raised:
        validated("backup_repo", params)
    assert message in str(raised.value)


def test_backup_repo_info_takes_no_state():
    with pytest.raises(InvalidParams, match="state"):
        validated("backup_repo_info", {"state": "list"})


def test_bad_values_fail_before_anything_runs():
    with pytest.raises(RunbookError, match="older_than"):
        BackupRepoOptions.from_params(validated("backup_repo", {"state": "cleanup", "older_than": "soon"}))
    with pytest.raises(RunbookError, match="keep_within"):
        BackupRepoOptions.from_params(validated("backup_repo", {"state": "prune", "retention": {"keep_within": "2 weeks"}}))
    with pytest.raises(RunbookError, match="^set "):
        BackupRepoInfoOptions.from_params(validated("backup_repo_info", {"kind": "redis", "set": "../x"}))


def test_secret_identities_stay_out_of_the_options_repr(tmp_path):
    import pyrage
    identity = str(pyrage.x25519.Identity.generate())
    opts = BackupRepoOptions.from_params(validated("backup_repo", {"state": "verify", "encryption_identity": identity}))
    assert len(opts.identities) == 1 and identity not in repr(opts)


def test_prune_and_info_on_a_real_file_repository(tmp_path):
    params = {"repository": "file://%s" % (tmp_path / "repo")}
    repo = Repository.from_options(params)
    for day in (1, 2, 3):
        with repo.new_backup("redis", "cache", now=datetime.datetime(2026, 5, day, tzinfo=datetime.timezone.utc)) as backup:
            backup.add_object("data", _Reader(b"x" * 100), compression="none")
            backup.commit()
    with make_task("backup_repo", BackupRepoOptions.from_params, dict(params, state="prune", retention={"keep_within": "1d12h"}),
                   check_mode=True) as task:
        result = run_backup_repo(task)
    assert [k["reasons"] for k in result["kept"]] == [["within"], ["within"]] and len(result["pruned"]) == 1
    assert result["msg"].startswith("would prune 1 backup and kept 2") and "diff" not in result
    assert [f["message"] for f in result["findings"]] == ["kept 2, would prune 1"]
    with make_task("backup_repo_info", BackupRepoInfoOptions.from_params, params) as task:
        listed = run_backup_repo_info(task)
    assert len(listed["backups"]) == 3 and listed["changed"] is False  # check mode removed nothing
    assert listed["msg"] == "3 complete backups and 0 incomplete ones in %s: status ok" % params["repository"]
