# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Chain of custody of incident evidence: ``custody.jsonl`` beside the evidence backup.

One JSON record per line. The capture writes an ``opened`` record (who collected, with which tool,
where from) and one ``collected`` record per artifact (its source object, the API request that read
it, the sha256 of the bytes as collected and as stored, the UTC time it was read). Every later access
(a verification, a download) appends a record. Each record carries the sha256 of the line before it,
so a removed or edited line breaks the chain; the manifest (written after the capture records) holds
the sha256 and count of the capture records, so they cannot be rewritten together with the chain.

Re-proving custody reads every stored object back: its stored bytes against the manifest and, when
the evidence can be decrypted (or is not encrypted), the plain bytes against the hash as collected.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError, isoformat, utcnow
from ansible_collections.runbook.ops.plugins.module_utils._repository import TOOL_VERSION, Json, Repository
from ansible_collections.runbook.ops.plugins.module_utils._stream import HashingWriter, NullSink

CUSTODY = "custody.jsonl"
TOOL = {"name": "runbook.ops", "version": TOOL_VERSION}
# AWX / Automation Controller sets JOB_ID in the environment of every job it runs.
AWX_JOB_ENV = "JOB_ID"


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def collector(kubernetes: t.Optional[Json] = None, given: t.Optional[t.Mapping[str, t.Any]] = None) -> Json:
    """Who acts: the Kubernetes identity (SelfSubjectReview) when known, the AWX job and user when
    given (the job id falls back to AWX's ``JOB_ID``), the local account and host, and a note."""
    given = given or {}
    try:
        account: t.Optional[str] = getpass.getuser()
    except (KeyError, OSError):
        account = None
    job = given.get("awx_job_id") or os.environ.get(AWX_JOB_ENV) or None
    return {"kubernetes": kubernetes, "awx_job_id": str(job) if job is not None else None,
            "awx_user_name": given.get("awx_user_name") or None, "note": given.get("note") or None,
            "os_user": account, "host": socket.gethostname()}


class CustodyLog:
    """The lines of ``custody.jsonl``; :meth:`append` chains each new record to the line before."""

    def __init__(self, lines: t.Optional[t.List[bytes]] = None) -> None:
        self.lines: t.List[bytes] = list(lines or [])

    def append(self, record: Json) -> Json:
        entry = dict(record, seq=len(self.lines), previous=_line_hash(self.lines[-1]) if self.lines else None)
        entry.setdefault("at", isoformat(utcnow()))
        self.lines.append(json.dumps(entry, sort_keys=True, separators=(",", ":")).encode())
        return entry

    def data(self, count: t.Optional[int] = None) -> bytes:
        lines = self.lines if count is None else self.lines[:count]
        return b"".join(line + b"\n" for line in lines)

    def records(self) -> t.List[Json]:
        return [json.loads(line) for line in self.lines]

    @classmethod
    def parse(cls, data: bytes) -> t.Tuple["CustodyLog", t.List[str]]:
        """The log and what is wrong with it: unreadable lines, a broken chain."""
        problems: t.List[str] = []
        lines = [line for line in data.split(b"\n") if line]
        previous: t.Optional[str] = None
        for number, line in enumerate(lines):
            try:
                record = json.loads(line)
            except ValueError:
                problems.append("custody record %d is not JSON" % number)
                previous = _line_hash(line)
                continue
            if not isinstance(record, dict) or record.get("seq") != number:
                problems.append("custody record %d is out of sequence" % number)
            elif record.get("previous") != previous:
                problems.append("custody record %d does not chain to the record before it (edited or removed lines)" % number)
            previous = _line_hash(line)
        return cls(lines), problems


def capture_log(*, backup: Json, who: Json, artifacts: t.Sequence[Json], at: str) -> CustodyLog:
    """The records a capture writes: ``opened``, then one ``collected`` per artifact."""
    log = CustodyLog()
    log.append({"event": "opened", "at": at, "backup": backup, "collector": who, "tool": TOOL})
    for artifact in artifacts:
        log.append({"event": "collected", "at": artifact["collected_at"], "artifact": artifact["name"],
                    "source": artifact["source"], "method": artifact["method"], "tool": TOOL,
                    "sha256_collected": artifact["sha256"], "size": artifact["size"],
                    "sha256_stored": artifact["sha256_stored"], "stored_size": artifact["stored_size"]})
    return log


def custody_head(log: CustodyLog) -> Json:
    """What the manifest keeps of the capture records."""
    return {"file": CUSTODY, "records": len(log.lines), "sha256": hashlib.sha256(log.data()).hexdigest()}


def has_custody(manifest: t.Mapping[str, t.Any]) -> bool:
    return bool(((manifest.get("evidence") or {}).get("custody") or {}).get("sha256"))


def _load(repo: Repository, manifest: Json) -> t.Tuple[CustodyLog, t.List[str]]:
    head = manifest["evidence"]["custody"]
    data = repo.read_sidecar(manifest, CUSTODY)
    if data is None:
        return CustodyLog(), ["%s is missing from the evidence backup" % CUSTODY]
    log, problems = CustodyLog.parse(data)
    if hashlib.sha256(log.data(int(head.get("records") or 0))).hexdigest() != head["sha256"]:
        problems.append("the capture records of %s differ from the manifest's sha256 (rewritten after the capture)" % CUSTODY)
    return log, problems


def _artifact_problems(log: CustodyLog, manifest: Json) -> t.Tuple[t.List[str], t.Dict[str, str]]:
    """Each collected record against the manifest; returns the problems and the hashes as collected."""
    problems: t.List[str] = []
    objects = {o["name"]: o for o in manifest.get("objects", [])}
    files = {f["name"]: f for f in (manifest.get("evidence") or {}).get("files", [])}
    collected: t.Dict[str, str] = {}
    for record in log.records():
        if not isinstance(record, dict) or record.get("event") != "collected":
            continue
        name = str(record.get("artifact"))
        collected[name] = str(record.get("sha256_collected"))
        if name not in objects:
            problems.append("%s: in the custody records but not in the backup" % name)
        elif objects[name]["sha256"] != record.get("sha256_stored"):
            problems.append("%s: stored sha256 in the custody records differs from the manifest's" % name)
        if name in files and files[name].get("sha256") != record.get("sha256_collected"):
            problems.append("%s: collected sha256 in the custody records differs from the manifest's" % name)
    for name in sorted(set(objects) - set(collected)):
        problems.append("%s: stored without a custody record" % name)
    return problems, collected


def reprove(repo: Repository, manifest: Json, identities: t.Sequence[t.Any] = ()) -> Json:
    """Re-prove the custody of an evidence backup: the chain, the capture records against the
    manifest, every object's stored bytes and (when readable) its plain bytes against the hash as
    collected. Returns ``{level, ok, problems, records}``."""
    log, problems = _load(repo, manifest)
    artifact_problems, collected = _artifact_problems(log, manifest)
    problems += artifact_problems
    deep = bool(identities) or manifest.get("encryption", {}).get("algorithm", "none") == "none"
    if deep:
        for entry in manifest.get("objects", []):
            plain = HashingWriter(NullSink())
            try:
                repo.read_object(manifest, entry, plain, identities)
            except RunbookError as exc:
                problems.append(exc.msg if entry["name"] in exc.msg else "%s: %s" % (entry["name"], exc.msg))
                continue
            if entry["name"] in collected and plain.sha256 != collected[entry["name"]]:
                problems.append("%s: the plain content's sha256 differs from the hash as collected" % entry["name"])
    else:
        problems += repo.verify(manifest)["problems"]
    return {"level": "decrypt" if deep else "checksum", "ok": not problems, "problems": problems,
            "records": len(log.lines)}


def record_access(repo: Repository, manifest: Json, record: Json) -> Json:
    """Append an access record to the backup's custody log (read again just before, so an access
    recorded meanwhile is kept)."""
    data = repo.read_sidecar(manifest, CUSTODY)
    if data is None:
        # Never start a new log in place of a lost one: re-proving must keep saying it is missing.
        raise RunbookError("%s of evidence backup %s is missing; the access cannot be recorded" % (CUSTODY, manifest["id"]))
    log = CustodyLog.parse(data)[0]
    entry = log.append(dict(record, tool=TOOL))
    repo.write_sidecar(manifest, CUSTODY, log.data())
    return entry


def reprove_and_record(repo: Repository, manifest: Json, identities: t.Sequence[t.Any], *, by: str,
                       who: Json, record: bool = True) -> Json:
    """:func:`reprove`, then (unless ``record`` is false: check mode) append a ``verified`` record
    with the outcome. The outcome's ``records`` counts the log with that record."""
    checked = reprove(repo, manifest, identities)
    if record and repo.read_sidecar(manifest, CUSTODY) is not None:
        record_access(repo, manifest, {"event": "verified", "by": by, "collector": who, "level": checked["level"],
                                       "ok": checked["ok"], "problems": checked["problems"]})
        checked["records"] += 1
    return checked
