# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``k8s_backup`` state ``restore`` and ``diff``.

The stored object is read, decrypted and every object's sha256 compared with the manifest before
anything is written: a flipped byte or a wrong identity fails with nothing touched. Objects are
restored in Velero's order (CRDs, waiting until they are Established, then Namespaces, storage,
Secrets, ConfigMaps, RBAC, Services, workloads, custom resources last), each rank with bounded
parallel requests (one connection per worker; 429 answers are retried after their Retry-After).
An object that exists is compared with the backup first: identical ones are never written, so a
rerun after an interruption only does what is left.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import threading
import time
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._backup_job import verified_entry
from ansible_collections.runbook.ops.plugins.module_utils._common import Result, RunbookError, Stopwatch, Task
from ansible_collections.runbook.ops.plugins.module_utils._k8s import (
    K8sClient, K8sConflict, K8sNotFound, K8sObject, K8sUnreachable, api_prefix,
)
from ansible_collections.runbook.ops.plugins.module_utils._k8s_backup import (
    KIND, OBJECTS, ClientPool, K8sBackupOptions, Snapshot, read_namespaced)
from ansible_collections.runbook.ops.plugins.module_utils._k8s_objects import (
    CUSTOM_RANK, ResourceType, comparable, digest, group_of, map_namespaces, masked, meta, object_key, patch_summary,
    ref, restore_form, restore_rank)
from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository
from ansible_collections.runbook.ops.plugins.module_utils._stream import load_identities

ESTABLISHED_TIMEOUT = 60.0
RECREATE_ATTEMPTS = 20


# --------------------------------------------------------------------------- the stored backup

class StoredState:
    """A backup's manifest and its objects, proven against the manifest's per-object sha256."""

    def __init__(self, manifest: t.Dict[str, t.Any], objects: t.List[K8sObject]) -> None:
        self.manifest = manifest
        self.objects = objects
        section = manifest.get("kubernetes") or {}
        self.kinds: t.Dict[str, t.Dict[str, t.Any]] = dict(section.get("kinds") or {})

    @classmethod
    def load(cls, repo: Repository, opts: K8sBackupOptions) -> "StoredState":
        manifest = repo.get(KIND, opts.set_name, opts.backup_id)
        entries = [o for o in manifest.get("objects", []) if o.get("name") == OBJECTS]
        expected = (manifest.get("kubernetes") or {}).get("objects")
        if not entries or not isinstance(expected, dict):
            raise RunbookError("backup %s of set %s is not a k8s_backup backup (no %s)" % (manifest["id"], manifest["set"], OBJECTS))
        sink = io.BytesIO()
        repo.read_object(manifest, entries[0], sink, load_identities(opts.encryption_identity))
        objects: t.List[K8sObject] = []
        seen: t.Dict[str, str] = {}
        for line in sink.getvalue().splitlines():
            obj = json.loads(line)
            seen[object_key(obj)] = digest(line)
            objects.append(obj)
        problems = [key for key in set(seen) | set(expected) if seen.get(key) != expected.get(key)]
        if problems:
            raise RunbookError("backup %s: %d object(s) differ from the manifest (e.g. %s); nothing was restored"
                               % (manifest["id"], len(problems), sorted(problems)[0]))
        return cls(manifest, objects)

    def plural(self, obj: K8sObject) -> t.Optional[str]:
        entry = self.kinds.get("%s/%s" % (obj.get("apiVersion"), obj.get("kind")))
        return str(entry["plural"]) if entry else None

    def selected(self, opts: K8sBackupOptions) -> t.List[K8sObject]:
        """The objects in ``namespaces`` and of ``kinds`` (a Namespace counts as in itself)."""
        namespaces = set(opts.namespaces)
        chosen = []
        for obj in self.objects:
            metadata = obj.get("metadata") or {}
            home = metadata.get("name") if obj.get("kind") == "Namespace" else metadata.get("namespace")
            if namespaces and home is not None and home not in namespaces:
                continue
            kind = _type_of(obj, self.plural(obj) or "")
            if opts.kinds and not any(kind.matches(k) for k in opts.kinds):
                continue
            if any(kind.matches(k) for k in opts.exclude_kinds):
                continue
            chosen.append(obj)
        return chosen


def _type_of(obj: K8sObject, plural: str) -> ResourceType:
    return ResourceType(str(obj.get("apiVersion")), plural, str(obj.get("kind")), bool(meta(obj).get("namespace")))


def _entry(obj: K8sObject, action: str, reason: str, **extra: t.Any) -> t.Dict[str, t.Any]:
    return dict(ref(obj), action=action, reason=reason, **extra)


# --------------------------------------------------------------------------- restore

class Restore:
    """Restore the selected objects of ``stored``, rank by rank."""

    def __init__(self, task: Task[K8sBackupOptions], client: K8sClient, stored: StoredState) -> None:
        self.task = task
        self.opts = task.options
        self.client = client
        self.stored = stored
        self.dry_run = task.check_mode
        self.entries: t.List[t.Dict[str, t.Any]] = []
        self.diffs: t.List[t.Dict[str, t.Any]] = []
        self.new_namespaces: t.Set[str] = set()
        self.new_crds: t.Set[str] = set()
        self.served: t.Dict[str, t.Optional[t.Set[str]]] = {}
        self.lock = threading.Lock()
        self.stopped = False

    def bodies(self) -> t.List[K8sObject]:
        """What is written: selected, mapped, stripped; a bare Namespace for a target without one."""
        mapping = self.opts.namespace_mapping
        bodies = [restore_form(map_namespaces(obj, mapping), self.opts.preserve_node_ports)
                  for obj in self.stored.selected(self.opts)]
        have = {meta(b)["name"] for b in bodies if b.get("kind") == "Namespace"}
        needed = sorted({meta(b)["namespace"] for b in bodies if meta(b).get("namespace")} - have)
        bodies += [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in needed]
        return bodies

    def run(self) -> None:
        ranks: t.Dict[int, t.List[K8sObject]] = {}
        for body in self.bodies():
            ranks.setdefault(restore_rank(body), []).append(body)
        # More retries and a longer backoff ceiling than a single task: a restore of many objects is
        # what makes an API server answer 429 with a Retry-After.
        workers = ClientPool(self.client, retries=6, max_backoff=30.0)
        try:
            with concurrent.futures.ThreadPoolExecutor(self.opts.parallel) as pool:
                for rank in sorted(ranks):
                    self._restore_rank(pool, workers, rank, ranks[rank])
        finally:
            workers.close()

    def _restore_rank(self, pool: concurrent.futures.ThreadPoolExecutor, workers: ClientPool, rank: int,
                      bodies: t.List[K8sObject]) -> None:
        if rank == CUSTOM_RANK:
            bodies = [b for b in bodies if self._servable(b)]
        futures = [pool.submit(self._restore_one, workers, body) for body in bodies]
        failure: t.Optional[BaseException] = None
        for future in futures:
            try:
                future.result()
            except K8sUnreachable as exc:  # the API server went away: stop, keep what was done
                failure = failure or exc
        if failure is not None:
            raise failure
        if bodies and bodies[0].get("kind") == "CustomResourceDefinition" and not self.dry_run:
            self._wait_established([meta(b)["name"] for b in bodies])

    def _record(self, body: K8sObject, action: str, reason: str, before: t.Optional[K8sObject] = None) -> None:
        with self.lock:
            self.entries.append(_entry(body, action, reason))
            if self.task.diff and action in ("created", "updated", "would_create", "would_update"):
                self.diffs.append({"before_header": object_key(body), "after_header": object_key(body),
                                   "before": masked(before) if before else {}, "after": masked(body)})

    def _servable(self, body: K8sObject) -> bool:
        """Whether the target serves a custom resource's kind; records it failed when not."""
        api_version = str(body.get("apiVersion"))
        plural = self.stored.plural(body) or ""
        crd = "%s.%s" % (plural, group_of(api_version))
        if crd in self.new_crds and self.dry_run:
            self._record(body, "would_create", "not validated: its CustomResourceDefinition %s would be created first" % crd)
            return False
        if api_version not in self.served:
            try:
                answer = self.client.request("GET", api_prefix(api_version), what="discover %s" % api_version)
                self.served[api_version] = {r["name"] for r in answer.get("resources", [])}
            except K8sNotFound:
                self.served[api_version] = None
        if plural not in (self.served[api_version] or set()):
            self._record(body, "failed", "the target cluster does not serve %s (kind %s): its CustomResourceDefinition "
                         "%s is absent" % (api_version, body.get("kind"), crd))
            return False
        return True

    def _wait_established(self, names: t.Sequence[str]) -> None:
        deadline = time.monotonic() + ESTABLISHED_TIMEOUT
        for name in names:
            while True:
                crd = self.client.get("apiextensions.k8s.io/v1", "customresourcedefinitions", name, missing_ok=True) or {}
                conditions = (crd.get("status") or {}).get("conditions") or []
                if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
                    break
                if time.monotonic() > deadline:
                    raise RunbookError("CustomResourceDefinition %s is not Established after %ds" % (name, ESTABLISHED_TIMEOUT))
                time.sleep(0.2)

    def _restore_one(self, workers: ClientPool, body: K8sObject) -> None:
        if self.stopped:
            return  # the API server is unreachable: the objects left are for the rerun
        with workers.lease() as client:
            self._restore_with(client, body)

    def _restore_with(self, client: K8sClient, body: K8sObject) -> None:
        plural = self.stored.plural(body) or client.plural_of(str(body["apiVersion"]), str(body["kind"]))
        metadata = meta(body)
        namespace = metadata.get("namespace")
        if namespace in self.new_namespaces and self.dry_run:
            self._record(body, "would_create", "not validated by the API server: namespace %s would be created first" % namespace)
            return
        try:
            body = self._owners(client, body)
            # A namespace this restore created holds nothing but what controllers add (its default
            # ServiceAccount): create at once, and read the object only when the server says it exists.
            fresh = namespace in self.new_namespaces
            live = None if fresh else client.get(str(body["apiVersion"]), plural, metadata["name"], namespace,
                                                 missing_ok=True)
            if live is None:
                try:
                    self._create(client, plural, body)
                    return
                except K8sConflict:
                    if not fresh:
                        raise
                live = client.get(str(body["apiVersion"]), plural, metadata["name"], namespace) or {}
            self._existing(client, plural, body, live)
        except K8sUnreachable:
            self.stopped = True
            raise
        except RunbookError as exc:
            self._record(body, "failed", exc.msg)

    def _create(self, client: K8sClient, plural: str, body: K8sObject) -> None:
        client.create(str(body["apiVersion"]), plural, body, dry_run=self.dry_run)
        if body.get("kind") == "Namespace":
            with self.lock:
                self.new_namespaces.add(meta(body)["name"])
        if body.get("kind") == "CustomResourceDefinition":
            with self.lock:
                self.new_crds.add(meta(body)["name"])
        self._record(body, "would_create" if self.dry_run else "created",
                     "validated by a server-side dry run" if self.dry_run else "not present in the cluster")

    def _existing(self, client: K8sClient, plural: str, body: K8sObject, live: K8sObject) -> None:
        preserve = self.opts.preserve_node_ports
        if comparable(live, preserve) == comparable(body, preserve):
            self._record(body, "skipped", "identical to the backup")
            return
        existing = self.opts.existing
        if existing == "skip":
            self._record(body, "skipped", "exists and differs from the backup; existing=skip leaves it (use existing=update)")
            return
        before = comparable(live, preserve)
        api_version = str(body["apiVersion"])
        metadata = meta(body)
        if existing == "update":
            written = dict(body, metadata=dict(metadata, resourceVersion=live["metadata"]["resourceVersion"]))
            client.replace(api_version, plural, written, dry_run=self.dry_run)
            self._record(body, "would_update" if self.dry_run else "updated",
                         "differs from the backup; replaced" + (" (server-side dry run)" if self.dry_run else ""), before)
            return
        if self.dry_run:
            client.delete(api_version, plural, metadata["name"], metadata.get("namespace"), dry_run=True)
            self._record(body, "would_update", "differs from the backup; would be deleted and created again", before)
            return
        client.delete(api_version, plural, metadata["name"], metadata.get("namespace"), missing_ok=True)
        for attempt in range(RECREATE_ATTEMPTS):
            try:
                client.create(api_version, plural, body)
                break
            except K8sConflict:  # still terminating (finalizers)
                if attempt == RECREATE_ATTEMPTS - 1:
                    raise
                time.sleep(0.5)
        self._record(body, "updated", "differed from the backup; deleted and created again", before)

    def _owners(self, client: K8sClient, body: K8sObject) -> K8sObject:
        """Owner references pointing at the owners as they exist now (new uid); references to an
        owner that does not exist are dropped (it was not restored)."""
        owners = meta(body).get("ownerReferences")
        if not owners:
            return body
        kept = []
        for owner in owners:
            fake = {"apiVersion": owner.get("apiVersion"), "kind": owner.get("kind")}
            try:
                plural = self.stored.plural(fake) or client.plural_of(str(owner.get("apiVersion")), str(owner.get("kind")))
                live = client.get(str(owner.get("apiVersion")), plural, str(owner.get("name")),
                                  meta(body).get("namespace"), missing_ok=True)
            except (RunbookError, K8sNotFound):
                live = None
            if live is not None:
                kept.append(dict(owner, uid=live["metadata"]["uid"]))
        metadata = dict(meta(body))
        if kept:
            metadata["ownerReferences"] = kept
        else:
            metadata.pop("ownerReferences", None)
        return dict(body, metadata=metadata)

    def counts(self) -> t.Dict[str, int]:
        tally: t.Dict[str, int] = {}
        for entry in self.entries:
            tally[entry["action"]] = tally.get(entry["action"], 0) + 1
        return tally


def _summary(counts: t.Mapping[str, int]) -> str:
    return ", ".join("%d %s" % (n, action) for action, n in sorted(counts.items())) or "nothing"


def _kind_counts(entries: t.Sequence[t.Mapping[str, t.Any]]) -> t.Dict[str, int]:
    tally: t.Dict[str, int] = {}
    for entry in entries:
        key = "%s/%s" % (entry["api_version"], entry["kind"])
        tally[key] = tally.get(key, 0) + 1
    return dict(sorted(tally.items()))


def _base(stored: StoredState) -> Result:
    return {"backup_id": stored.manifest["id"], "manifest": stored.manifest, "pruned": [],
            "unreadable": list((stored.manifest.get("kubernetes") or {}).get("unreadable") or [])}


def run_restore(task: Task[K8sBackupOptions], client: K8sClient, repo: Repository) -> Result:
    watch = Stopwatch()
    stored = StoredState.load(repo, task.options)
    restore = Restore(task, client, stored)
    result = _base(stored)
    try:
        restore.run()
    except RunbookError as exc:
        result.update(objects=restore.entries, counts=_kind_counts(restore.entries), status="critical",
                      changed=any(e["action"] in ("created", "updated") for e in restore.entries))
        raise RunbookError.keeping("restore of backup %s stopped after %d object(s) (%s): %s; run it again to "
                                   "finish: objects restored already are left as they are"
                                   % (stored.manifest["id"], len(restore.entries), _summary(restore.counts()), exc.msg),
                                   result)
    counts = restore.counts()
    failed = [e for e in restore.entries if e["action"] == "failed"]
    result.update(objects=sorted(restore.entries, key=lambda e: (e["namespace"] or "", e["kind"], e["name"])),
                  counts=_kind_counts(restore.entries), status="critical" if failed else "ok",
                  changed=any(e["action"] not in ("skipped", "failed") for e in restore.entries),
                  verified=[verified_entry(stored.manifest, "checksum", objects=len(stored.objects))],
                  duration_s=watch.elapsed)
    if restore.diffs:
        result["diff"] = restore.diffs
    verb = "would restore" if task.check_mode else "restored"
    result["msg"] = "%s backup %s (%d objects): %s" % (verb, stored.manifest["id"], len(restore.entries), _summary(counts))
    if failed:
        raise RunbookError.keeping("%s; %d object(s) failed: %s" % (result["msg"], len(failed), "; ".join(
            "%s/%s/%s: %s" % (e["kind"], e["namespace"] or "-", e["name"], e["reason"]) for e in failed[:10])), result)
    return result


# --------------------------------------------------------------------------- diff

def _live_snapshot(client: K8sClient, stored: StoredState, namespaces: t.List[str],
                   label_selector: t.Optional[str], parallel: int) -> Snapshot:
    types = [ResourceType(key.rsplit("/", 1)[0], str(entry["plural"]), key.rsplit("/", 1)[1], True)
             for key, entry in sorted(stored.kinds.items()) if entry.get("namespaced")]
    snapshot = Snapshot(namespaces)
    read_namespaced(client, snapshot, types, label_selector, parallel)
    return snapshot


def _cluster_objects(client: K8sClient, stored: StoredState, backed_up: t.Sequence[K8sObject]) -> t.List[K8sObject]:
    """The live twins of the backup's cluster-scoped objects (one GET each; they are few)."""
    found = []
    for obj in backed_up:
        plural = stored.plural(obj)
        if plural:
            live = client.get(str(obj["apiVersion"]), plural, meta(obj)["name"], missing_ok=True)
            if live is not None:
                found.append(live)
    return found


def run_diff(task: Task[K8sBackupOptions], client: K8sClient, repo: Repository) -> Result:
    """Live state against a backup: objects added, removed and changed since (Secret values masked)."""
    opts = task.options
    stored = StoredState.load(repo, opts)
    mapping = opts.namespace_mapping
    backup = [map_namespaces(obj, mapping) for obj in stored.selected(opts)]
    source_namespaces = opts.namespaces or list((stored.manifest.get("kubernetes") or {}).get("namespaces") or [])
    namespaces = [mapping.get(ns, ns) for ns in source_namespaces]
    live = _live_snapshot(client, stored, namespaces, (stored.manifest.get("kubernetes") or {}).get("label_selector"),
                          opts.parallel)
    live_objects = live.objects + _cluster_objects(client, stored, [o for o in backup if not meta(o).get("namespace")])
    preserve = opts.preserve_node_ports
    before = {object_key(o): comparable(o, preserve) for o in backup}
    after = {object_key(o): comparable(o, preserve) for o in live_objects
             if not opts.kinds or object_key(o) in before or any(
                 _type_of(o, stored.plural(o) or "").matches(k) for k in opts.kinds)}
    entries = []
    for key in sorted(set(before) | set(after)):
        if key not in before:
            entries.append(_entry(after[key], "added", "in the cluster, not in the backup"))
        elif key not in after:
            entries.append(_entry(before[key], "removed", "in the backup, not in the cluster"))
        elif before[key] != after[key]:
            entries.append(_entry(after[key], "changed", "differs from the backup",
                                  patch=patch_summary(before[key], after[key])))
    counts = {a: sum(1 for e in entries if e["action"] == a) for a in ("added", "removed", "changed")}
    result = _base(stored)
    result.update(changed=False, objects=entries, counts=_kind_counts(entries), status="info" if entries else "ok",
                  msg="live state against backup %s (%d objects): %d added, %d removed, %d changed" % (
                      stored.manifest["id"], len(before), counts["added"], counts["removed"], counts["changed"]))
    return result
