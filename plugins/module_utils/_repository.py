# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How a backup is stored: one repository format for PostgreSQL, Redis, Kubernetes state and evidence.

Layout: ``<prefix>/<kind>/<set>/<backup_id>/`` holding the data objects and ``manifest.json``.
The manifest is written last and is the commit marker: without it a backup does not exist for
list, latest, restore or retention; it is only reported as incomplete (and removed by cleanup).
Objects are written under their final names only when complete: files via rename, S3 via a
multipart upload that is aborted on failure.
"""

from __future__ import annotations

import datetime
import json
import os
import queue
import secrets
import tempfile
import threading
import typing as t
from urllib.parse import urlparse

from ansible_collections.runbook.ops.plugins.module_utils._common import (
    RunbookError, isoformat, parse_duration, parse_time, utcnow)
from ansible_collections.runbook.ops.plugins.module_utils._env import env_default
from ansible_collections.runbook.ops.plugins.module_utils._names import backup_id as check_backup_id
from ansible_collections.runbook.ops.plugins.module_utils._names import path_segment, trusted_manifest
from ansible_collections.runbook.ops.plugins.module_utils._retention import apply_retention
from ansible_collections.runbook.ops.plugins.module_utils._stream import (
    NullSink, StreamError, decode_stream, encode_stream, recipient_fingerprint)

MANIFEST = "manifest.json"
# A manifest larger than this is not one of ours (it is read whole into memory).
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
FORMAT_VERSION = 1
TOOL_VERSION = "0.1.0"
KINDS = ("postgresql", "redis", "kubernetes", "evidence", "drill")
Json = t.Dict[str, t.Any]
"""A manifest, a summary or an option mapping: JSON-shaped data."""
DEFAULT_REPOSITORY = "file:///var/backups/runbook"

# S3 multipart: the first parts are small so memory stays low; the part size doubles every
# 1000 parts up to S3's 5 GiB maximum (see part_size).
S3_MIN_PART = 16 * 1024 * 1024
S3_MAX_PART = 5 * 1024 * 1024 * 1024
S3_PARTS_PER_STEP = 1000
S3_MAX_PARTS = 10000
# The largest stream of unknown length that fits in S3_MAX_PARTS parts: 1000 parts each of 16, 32,
# ..., 4096 MiB, then 1000 of 5 GiB (the 8 GiB step is capped): 13,296,000 MiB, about 12.68 TiB.
# A size hint (a database's size) raises the first part size and the limit with it.
S3_UNKNOWN_LENGTH_LIMIT = 13296000 * 1024 * 1024
# A part buffer larger than this is spooled to a 0600 temporary file (page cache, not process
# memory): the part being filled, the one queued and the one uploading cost little RSS.
S3_PART_MEMORY = 4 * 1024 * 1024


def part_size(number: int, base_part: int = S3_MIN_PART) -> int:
    """Bytes in multipart part ``number`` (from 1): ``base_part``, doubled every S3_PARTS_PER_STEP parts."""
    return min(S3_MAX_PART, base_part << ((number - 1) // S3_PARTS_PER_STEP))


def repository_argspec() -> Json:
    """Options shared by every module that reads or writes the repository."""
    # The S3 settings fall back to the AWS SDK's variables (what an AWX credential injects). The
    # repository URL has no environment default: it is where prunes and restores act.
    return dict(
        repository=dict(type="str", default=DEFAULT_REPOSITORY),
        s3_endpoint_url=dict(type="str", fallback=env_default("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")),
        region=dict(type="str", aliases=["aws_region"], fallback=env_default("AWS_REGION", "AWS_DEFAULT_REGION")),
        access_key=dict(type="str", aliases=["aws_access_key_id"], no_log=True, fallback=env_default("AWS_ACCESS_KEY_ID")),
        secret_key=dict(type="str", aliases=["aws_secret_access_key"], no_log=True,
                        fallback=env_default("AWS_SECRET_ACCESS_KEY")),
        session_token=dict(type="str", aliases=["aws_session_token"], no_log=True, fallback=env_default("AWS_SESSION_TOKEN")),
        profile=dict(type="str", aliases=["aws_profile"]),
        s3_sse=dict(type="str", choices=["none", "AES256", "aws:kms"], default="none"),
        s3_kms_key_id=dict(type="str"),
        s3_checksum=dict(type="str", choices=["when_supported", "when_required"], default="when_supported"),
        validate_certs=dict(type="bool", default=True),
    )


IDENTITY_FILE_VARIABLE = "RUNBOOK_AGE_IDENTITY_FILE"
"""The environment variable naming the age identity file (an AWX ``file`` injector's path)."""


def encryption_identity_argspec() -> Json:
    return dict(encryption_identity=dict(type="str", no_log=True, fallback=env_default(IDENTITY_FILE_VARIABLE)))


def new_backup_id(now: t.Optional[datetime.datetime] = None) -> str:
    moment = (now or utcnow()).astimezone(datetime.timezone.utc)
    # Millisecond precision: two backups of one set within a second still sort by time.
    return "%s.%03dZ-%s" % (moment.strftime("%Y%m%dT%H%M%S"), moment.microsecond // 1000, secrets.token_hex(3))


class RepositoryMissing(RunbookError):
    """The repository itself is not there (a file repository's directory, an S3 bucket)."""


def name_rules() -> Json:
    """Validators of the repository options that become parts of a key (see ``_names.check_params``)."""
    return {"set": path_segment, "backup_id": lambda what, value: check_backup_id(value, what)}


# --------------------------------------------------------------------------- backends

class ObjectWriter(t.Protocol):
    def write(self, data: bytes) -> int: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class StoredObject(t.NamedTuple):
    key: str
    size: int
    modified: datetime.datetime


class UnfinishedUpload(t.NamedTuple):
    key: str
    upload_id: str
    started: datetime.datetime


class Backend:
    url = ""

    def open_writer(self, key: str, size_hint: t.Optional[int] = None) -> ObjectWriter:
        raise NotImplementedError

    def put_bytes(self, key: str, data: bytes) -> None:
        writer = self.open_writer(key)
        try:
            writer.write(data)
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    def get_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def open_reader(self, key: str) -> t.Any:
        raise NotImplementedError

    def list_objects(self, prefix: str) -> t.Iterator[StoredObject]:
        raise NotImplementedError

    def delete(self, keys: t.Sequence[str]) -> None:
        raise NotImplementedError

    def unfinished_uploads(self, prefix: str) -> t.List[UnfinishedUpload]:
        raise NotImplementedError

    def abort_upload(self, upload: UnfinishedUpload) -> None:
        raise NotImplementedError

    def describe(self, key: str) -> str:
        return "%s/%s" % (self.url.rstrip("/"), key)

    def require_exists(self) -> None:
        """Raise :class:`RepositoryMissing` when the repository itself is not there."""

    def discard_prefix(self, prefix: str) -> None:
        """Forget an empty backup prefix (file repositories remove its empty directories)."""

    def close(self) -> None:
        """Release connections (S3); a file repository holds none."""


class _FileWriter:
    def __init__(self, final: str) -> None:
        self.final = final
        directory = os.path.dirname(final)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.partial = "%s.partial-%s" % (final, secrets.token_hex(4))
        self.handle = open(self.partial, "xb")  # pylint: disable=consider-using-with
        os.chmod(self.partial, 0o600)

    def _failed(self, exc: OSError) -> StreamError:
        return StreamError("store", "writing %s failed: %s" % (self.final, exc.strerror or exc))

    def write(self, data: bytes) -> int:
        try:
            self.handle.write(data)
        except OSError as exc:
            raise self._failed(exc)
        return len(data)

    def commit(self) -> None:
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            os.replace(self.partial, self.final)
        except OSError as exc:
            raise self._failed(exc)
        _fsync_dir(os.path.dirname(self.final))

    def abort(self) -> None:
        if not self.handle.closed:
            try:
                self.handle.close()
            except OSError:
                pass  # the flush of a full disk fails again; the partial file goes anyway
        try:
            os.unlink(self.partial)
        except FileNotFoundError:
            pass


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class FileBackend(Backend):
    def __init__(self, root: str) -> None:
        self.root = root
        self.url = "file://" + root

    def _path(self, key: str) -> str:
        parts = key.rstrip("/").split("/")
        # Keys are built from validated names; refuse anything that could still leave the root.
        if any(part in ("", ".", "..") or "\x00" in part for part in parts):
            raise RunbookError("refusing repository key %r: it would leave %s" % (key, self.url))
        return os.path.join(self.root, *parts)

    def require_exists(self) -> None:
        if not os.path.isdir(self.root):
            raise RepositoryMissing("repository %s does not exist (no directory %s); check the repository URL"
                                    % (self.url, self.root))

    def discard_prefix(self, prefix: str) -> None:
        directory = self._path(prefix)
        while directory.startswith(self.root + os.sep):
            try:
                os.rmdir(directory)
            except OSError:
                break
            directory = os.path.dirname(directory)

    def open_writer(self, key: str, size_hint: t.Optional[int] = None) -> ObjectWriter:
        try:
            return _FileWriter(self._path(key))
        except OSError as exc:
            raise StreamError("store", "cannot write %s: %s" % (self.describe(key), exc.strerror or exc))

    def get_bytes(self, key: str) -> bytes:
        with open(self._path(key), "rb") as handle:
            return handle.read(MAX_MANIFEST_BYTES + 1)

    def open_reader(self, key: str) -> t.Any:
        try:
            return open(self._path(key), "rb")  # pylint: disable=consider-using-with
        except OSError as exc:
            raise StreamError("read", "cannot open %s: %s" % (self.describe(key), exc.strerror or exc))

    def list_objects(self, prefix: str) -> t.Iterator[StoredObject]:
        base = self._path(prefix) if prefix else self.root
        if not os.path.isdir(base):
            return
        for directory, _dirs, files in os.walk(base):
            for name in files:
                path = os.path.join(directory, name)
                try:
                    info = os.stat(path)
                except FileNotFoundError:
                    continue
                key = os.path.relpath(path, self.root).replace(os.sep, "/")
                yield StoredObject(key, info.st_size,
                                   datetime.datetime.fromtimestamp(info.st_mtime, datetime.timezone.utc))

    def delete(self, keys: t.Sequence[str]) -> None:
        directories = set()
        for key in keys:
            path = self._path(key)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            directories.add(os.path.dirname(path))
        for directory in sorted(directories, key=len, reverse=True):
            while directory.startswith(self.root) and directory != self.root:
                try:
                    os.rmdir(directory)
                except OSError:
                    break
                directory = os.path.dirname(directory)

    def unfinished_uploads(self, prefix: str) -> t.List[UnfinishedUpload]:
        return [UnfinishedUpload(obj.key, obj.key, obj.modified)
                for obj in self.list_objects(prefix) if ".partial-" in obj.key.rsplit("/", 1)[-1]]

    def abort_upload(self, upload: UnfinishedUpload) -> None:
        self.delete([upload.key])


class _S3Writer:
    """Multipart upload with a growing part size and one background uploader.

    Memory: the part being filled, one queued and one uploading (each spooled to a temporary
    file past S3_PART_MEMORY). A small object is sent with one PUT at commit.
    """

    def __init__(self, backend: "S3Backend", key: str, size_hint: t.Optional[int]) -> None:
        self.backend = backend
        self.key = key
        self.upload_id: t.Optional[str] = None
        self.parts: t.List[Json] = []
        self.base_part = max(S3_MIN_PART, -(-(size_hint or 0) * 3 // 2 // 9000))
        self.buffer = self._new_buffer()
        self.buffered = 0
        self.queue: "queue.Queue[t.Optional[t.Tuple[int, t.Any]]]" = queue.Queue(maxsize=1)
        self.error: t.Optional[BaseException] = None
        self.thread: t.Optional[threading.Thread] = None
        self._sent = 0

    @staticmethod
    def _new_buffer() -> t.Any:
        return tempfile.SpooledTemporaryFile(max_size=S3_PART_MEMORY)  # pylint: disable=consider-using-with

    def _part_size(self, number: int) -> int:
        return part_size(number, self.base_part)

    def write(self, data: bytes) -> int:
        if self.error is not None:
            raise self._store_error(self.error)
        view = memoryview(data)
        while view:
            take = view[:self._next_size() - self.buffered]
            self.buffer.write(take)
            self.buffered += len(take)
            view = view[len(take):]
            if self.buffered >= self._next_size():
                self._send_buffer()
        return len(data)

    def _next_size(self) -> int:
        return self._part_size(self._sent + 1)

    def _send_buffer(self) -> None:
        if self.upload_id is None:
            self.upload_id = self.backend.create_upload(self.key)
            self.thread = threading.Thread(target=self._uploader, args=(self.upload_id,), daemon=True)
            self.thread.start()
        self._sent += 1
        if self._sent > S3_MAX_PARTS:
            limit_tib = S3_UNKNOWN_LENGTH_LIMIT / 1024.0 ** 4
            raise StreamError("store", "%s: the stream needs more than S3's %d multipart parts (without a size hint "
                                       "about %.2f TiB fit)" % (self.backend.describe(self.key), S3_MAX_PARTS, limit_tib))
        self.buffer.seek(0)
        item = (self._sent, self.buffer)
        while True:
            if self.error is not None:
                raise self._store_error(self.error)
            try:
                self.queue.put(item, timeout=0.5)
                break
            except queue.Full:
                continue
        self.buffer = self._new_buffer()
        self.buffered = 0

    def _uploader(self, upload_id: str) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            number, body = item
            try:
                if self.error is None:
                    etag = self.backend.upload_part(self.key, upload_id, number, body)
                    self.parts.append({"PartNumber": number, "ETag": etag})
            except BaseException as exc:  # pylint: disable=broad-except
                self.error = exc
            finally:
                body.close()

    def _store_error(self, exc: BaseException) -> StreamError:
        if isinstance(exc, StreamError):
            return exc
        return StreamError("store", "upload of %s failed: %s" % (self.backend.describe(self.key), exc))

    def _drain(self) -> None:
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()
            self.thread = None

    def commit(self) -> None:
        if self.upload_id is None:
            self.buffer.seek(0)
            self.backend.put_object(self.key, self.buffer.read())
            self.buffer.close()
            return
        if self.buffered:
            self._send_buffer()
        self._drain()
        if self.error is not None:
            raise self._store_error(self.error)
        self.backend.complete_upload(self.key, self.upload_id, sorted(self.parts, key=lambda p: p["PartNumber"]))
        self.upload_id = None

    def abort(self) -> None:
        self.error = self.error or RuntimeError("aborted")
        self._drain()
        self.buffer.close()
        if self.upload_id is not None:
            try:
                self.backend.abort_upload(UnfinishedUpload(self.key, self.upload_id, utcnow()))
            except Exception:  # pylint: disable=broad-except
                # The endpoint may be the thing that failed; cleanup aborts stale uploads later.
                pass
            self.upload_id = None


class S3Backend(Backend):
    def __init__(self, bucket: str, prefix: str, options: t.Mapping[str, t.Any]) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = "s3://%s/%s" % (bucket, self.prefix) if self.prefix else "s3://%s" % bucket
        self.options = options
        self._client: t.Any = None

    @property
    def client(self) -> t.Any:
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise RunbookError("the boto3 Python package is required for s3:// repositories (pip install boto3)")
            config_args: Json = dict(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10,
                                     read_timeout=120, signature_version="s3v4")
            if self.options.get("s3_checksum") == "when_required":
                config_args.update(request_checksum_calculation="when_required",
                                   response_checksum_validation="when_required")
            session = boto3.session.Session(
                aws_access_key_id=self.options.get("access_key"),
                aws_secret_access_key=self.options.get("secret_key"),
                aws_session_token=self.options.get("session_token"),
                profile_name=self.options.get("profile"),
                region_name=self.options.get("region"))
            self._client = session.client("s3", endpoint_url=self.options.get("s3_endpoint_url"),
                                          verify=self.options.get("validate_certs", True),
                                          config=Config(**config_args))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _key(self, key: str) -> str:
        return "%s/%s" % (self.prefix, key) if self.prefix else key

    def _unkey(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    def _sse(self) -> Json:
        sse = self.options.get("s3_sse") or "none"
        if sse == "none":
            return {}
        args = {"ServerSideEncryption": sse}
        if sse == "aws:kms" and self.options.get("s3_kms_key_id"):
            args["SSEKMSKeyId"] = self.options["s3_kms_key_id"]
        return args

    def _call(self, what: str, key: str, func: t.Callable[..., t.Any], **kwargs: t.Any) -> t.Any:
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return func(**kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "")
            if code in ("NoSuchBucket",):
                raise RepositoryMissing("bucket %s does not exist (%s)" % (self.bucket, self.options.get("s3_endpoint_url") or "AWS"))
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                raise RunbookError("access denied to %s during %s: %s" % (self.describe(key), what, error.get("Message") or code))
            raise StreamError("store" if what != "read" else "read",
                              "%s %s: %s %s" % (what, self.describe(key), code, error.get("Message", "")))
        except BotoCoreError as exc:
            raise StreamError("store" if what != "read" else "read", "%s %s: %s" % (what, self.describe(key), exc))

    def open_writer(self, key: str, size_hint: t.Optional[int] = None) -> ObjectWriter:
        return _S3Writer(self, key, size_hint)

    def put_object(self, key: str, data: bytes) -> None:
        self._call("upload", key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data, **self._sse())

    def create_upload(self, key: str) -> str:
        reply = self._call("upload", key, self.client.create_multipart_upload, Bucket=self.bucket,
                           Key=self._key(key), **self._sse())
        return str(reply["UploadId"])

    def upload_part(self, key: str, upload_id: str, number: int, body: t.Any) -> str:
        reply = self._call("upload", key, self.client.upload_part, Bucket=self.bucket, Key=self._key(key),
                           UploadId=upload_id, PartNumber=number, Body=body)
        return str(reply["ETag"])

    def complete_upload(self, key: str, upload_id: str, parts: t.List[Json]) -> None:
        self._call("upload", key, self.client.complete_multipart_upload, Bucket=self.bucket, Key=self._key(key),
                   UploadId=upload_id, MultipartUpload={"Parts": parts})

    def get_bytes(self, key: str) -> bytes:
        data: bytes = self.open_reader(key).read(MAX_MANIFEST_BYTES + 1)
        return data

    def open_reader(self, key: str) -> t.Any:
        reply = self._call("read", key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return reply["Body"]

    def list_objects(self, prefix: str) -> t.Iterator[StoredObject]:
        full = self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call("list", prefix, lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=full)))
        for page in pages:
            for item in page.get("Contents", []):
                yield StoredObject(self._unkey(item["Key"]), item["Size"], item["LastModified"])

    def delete(self, keys: t.Sequence[str]) -> None:
        keys = list(keys)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[start:start + 1000]]
            reply = self._call("delete", keys[start], self.client.delete_objects, Bucket=self.bucket,
                               Delete={"Objects": batch, "Quiet": True})
            if reply.get("Errors"):
                first = reply["Errors"][0]
                raise StreamError("delete", "%s: %s" % (first.get("Key"), first.get("Message")))

    def unfinished_uploads(self, prefix: str) -> t.List[UnfinishedUpload]:
        full = self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        paginator = self.client.get_paginator("list_multipart_uploads")
        pages = self._call("list", prefix, lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=full)))
        return [UnfinishedUpload(self._unkey(u["Key"]), u["UploadId"], u["Initiated"])
                for page in pages for u in page.get("Uploads", [])]

    def abort_upload(self, upload: UnfinishedUpload) -> None:
        self._call("abort", upload.key, self.client.abort_multipart_upload, Bucket=self.bucket,
                   Key=self._key(upload.key), UploadId=upload.upload_id)


def backend_from_options(options: t.Mapping[str, t.Any]) -> Backend:
    url = options.get("repository") or DEFAULT_REPOSITORY
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise RunbookError("repository %r: file URLs take an absolute path (file:///var/backups/runbook)" % url)
        if not parsed.path.startswith("/"):
            raise RunbookError("repository %r: the path must be absolute" % url)
        return FileBackend(os.path.normpath(parsed.path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise RunbookError("repository %r: no bucket (use s3://bucket/prefix)" % url)
        return S3Backend(parsed.netloc, parsed.path, options)
    raise RunbookError("repository %r: unsupported scheme (use file:///path or s3://bucket/prefix)" % url)


# --------------------------------------------------------------------------- the repository

class BackupWriter:
    """Writes one backup; ``commit()`` writes the manifest last. Leaving the ``with`` block with
    an exception removes every object written so far."""

    def __init__(self, repo: "Repository", kind: str, set_name: str, labels: t.Optional[Json] = None,
                 now: t.Optional[datetime.datetime] = None) -> None:
        if kind not in KINDS:
            raise RunbookError("kind %r is not one of %s" % (kind, ", ".join(KINDS)))
        self.repo = repo
        self.kind = kind
        self.set = path_segment("set", set_name)
        self.labels = {str(k): str(v) for k, v in (labels or {}).items()}
        self.started = now or utcnow()
        self.backup_id = new_backup_id(self.started)
        self.prefix = "%s/%s/%s" % (kind, self.set, self.backup_id)
        self.objects: t.List[Json] = []
        self._written: t.List[str] = []
        self._recipients: t.List[str] = []
        self.committed = False

    def add_object(self, name: str, source: t.Any, compression: str = "zstd", level: t.Optional[int] = None,
                   threads: int = 0, recipients: t.Sequence[str] = (), size_hint: t.Optional[int] = None) -> Json:
        """Stream ``source`` (a readable) into object ``name``; returns its manifest entry."""
        path_segment("object name", name)
        key = "%s/%s" % (self.prefix, name)
        writer = self.repo.backend.open_writer(key, size_hint)
        try:
            stats = encode_stream(source, writer, compression, level, threads, recipients)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        self._written.append(key)
        self._recipients += [r for r in recipients if r not in self._recipients]
        entry = {"name": name, "size": stats["size"], "sha256": stats["sha256"], "raw_size": stats["raw_size"],
                 "compression": compression, "encrypted": bool(recipients)}
        self.objects.append(entry)
        return entry

    def add_sidecar(self, name: str, data: bytes) -> None:
        """Store ``data`` as is beside the objects, unlisted in the manifest because it may grow later
        (evidence's ``custody.jsonl``); removed with the backup when it is aborted."""
        key = "%s/%s" % (self.prefix, path_segment("object name", name))
        self.repo.backend.put_bytes(key, data)
        self._written.append(key)

    def commit(self, source: t.Optional[Json] = None, fmt: str = "", compression: t.Optional[Json] = None,
               extra: t.Optional[Json] = None) -> Json:
        """Write the manifest (the commit marker). ``compression`` describes the settings used
        (algorithm, level, threads); encryption is recorded from the objects' recipients."""
        finished = utcnow()
        manifest = {
            "format_version": FORMAT_VERSION,
            "id": self.backup_id,
            "kind": self.kind,
            "set": self.set,
            "created": isoformat(self.started),
            "finished": isoformat(finished),
            "duration_s": round((finished - self.started).total_seconds(), 3),
            "tool": {"name": "runbook.ops", "version": TOOL_VERSION},
            "source": source or {},
            "format": fmt,
            "compression": compression or {"algorithm": "none"},
            "encryption": {"algorithm": "age" if self._recipients else "none",
                           "recipients": [recipient_fingerprint(r) for r in self._recipients]},
            "objects": self.objects,
            "raw_size": sum(o["raw_size"] for o in self.objects),
            "size": sum(o["size"] for o in self.objects),
            "labels": self.labels,
        }
        if extra:
            manifest.update(extra)
        self.repo.backend.put_bytes("%s/%s" % (self.prefix, MANIFEST),
                                    json.dumps(manifest, indent=2, sort_keys=True).encode())
        self.committed = True
        return manifest

    def abort(self) -> None:
        if self.committed:
            return
        try:
            if self._written:
                self.repo.backend.delete(self._written)
            self.repo.backend.discard_prefix(self.prefix + "/")
        except Exception:  # pylint: disable=broad-except
            # The backend itself failed; without a manifest these objects never count as a backup.
            pass

    def __enter__(self) -> "BackupWriter":
        return self

    def __exit__(self, exc_type: t.Any, exc: t.Any, tb: t.Any) -> None:
        if exc_type is not None or not self.committed:
            self.abort()


def backup_summary(manifest: t.Mapping[str, t.Any]) -> Json:
    """What ``list`` shows for one backup."""
    return {
        "id": manifest["id"], "kind": manifest["kind"], "set": manifest["set"],
        "created": manifest.get("created"), "finished": manifest.get("finished"),
        "size": manifest.get("raw_size", 0), "stored_size": manifest.get("size", 0),
        "encrypted": manifest.get("encryption", {}).get("algorithm", "none") != "none",
        "compression": manifest.get("compression", {}).get("algorithm", "none"),
        "labels": manifest.get("labels", {}),
    }


class Repository:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @classmethod
    def from_options(cls, options: t.Mapping[str, t.Any]) -> "Repository":
        """The repository the options name; also the opener a task uses (``task.client(Repository.from_options)``)."""
        return cls(backend_from_options(options))

    def close(self) -> None:
        self.backend.close()

    @property
    def url(self) -> str:
        return self.backend.url

    def new_backup(self, kind: str, set_name: str, labels: t.Optional[Json] = None,
                   now: t.Optional[datetime.datetime] = None) -> BackupWriter:
        return BackupWriter(self, kind, set_name, labels, now)

    @staticmethod
    def _scope(kind: t.Optional[str], set_name: t.Optional[str]) -> str:
        if kind and kind not in KINDS:
            raise RunbookError("kind %r is not one of %s" % (kind, ", ".join(KINDS)))
        if set_name:
            path_segment("set", set_name)
        if kind and set_name:
            return "%s/%s/" % (kind, set_name)
        if kind:
            return "%s/" % kind
        return ""

    def scan(self, kind: t.Optional[str] = None, set_name: t.Optional[str] = None,
             with_uploads: bool = False) -> t.Tuple[t.List[Json], t.List[Json]]:
        """``(manifests newest first, incomplete backups)`` below the scope.

        A manifest counts only when it matches the path it was found under (see
        ``_names.trusted_manifest``). With ``with_uploads``, unfinished S3 multipart uploads (a
        backup killed mid-upload leaves nothing else behind) are reported as incomplete too.
        """
        scope = self._scope(kind, set_name)
        groups: t.Dict[t.Tuple[str, str, str], t.List[StoredObject]] = {}
        for obj in self.backend.list_objects(scope):
            parts = obj.key.split("/")
            if len(parts) != 4 or parts[0] not in KINDS:
                continue
            groups.setdefault((parts[0], parts[1], parts[2]), []).append(obj)
        manifests, incomplete = [], []
        for (group_kind, group_set, backup_id), objects in groups.items():
            if any(o.key.endswith("/" + MANIFEST) for o in objects):
                try:
                    manifest = self._load_manifest(group_kind, group_set, backup_id)
                except RunbookError as exc:
                    item = self._incomplete(group_kind, group_set, backup_id, objects, exc.msg)
                    item["_removable"] = False  # maybe a real backup moved by hand: report, never delete
                    incomplete.append(item)
                    continue
                except (ValueError, OSError) as exc:
                    incomplete.append(self._incomplete(group_kind, group_set, backup_id, objects, "unreadable manifest: %s" % exc))
                    continue
                manifests.append(manifest)
            else:
                incomplete.append(self._incomplete(group_kind, group_set, backup_id, objects, "no manifest"))
        if with_uploads:
            incomplete += self._unfinished_upload_groups(scope, groups)
        manifests.sort(key=lambda m: m["id"], reverse=True)
        incomplete.sort(key=lambda i: i["backup_id"], reverse=True)
        return manifests, incomplete

    def _load_manifest(self, kind: str, set_name: str, backup_id: str) -> Json:
        key = "%s/%s/%s/%s" % (kind, set_name, backup_id, MANIFEST)
        data = self.backend.get_bytes(key)
        if len(data) > MAX_MANIFEST_BYTES:
            raise RunbookError("manifest %s is larger than %d bytes; it is not trusted" % (self.backend.describe(key), MAX_MANIFEST_BYTES))
        return trusted_manifest(json.loads(data), kind, set_name, backup_id, self.backend.describe(key))

    def _unfinished_upload_groups(self, scope: str, groups: t.Mapping[t.Tuple[str, str, str], t.List[StoredObject]]) -> t.List[Json]:
        pending: t.Dict[t.Tuple[str, str, str], t.List[UnfinishedUpload]] = {}
        for upload in self.backend.unfinished_uploads(scope):
            parts = upload.key.split("/")
            if len(parts) != 4 or parts[0] not in KINDS:
                continue
            group = (parts[0], parts[1], parts[2])
            if any(o.key == upload.key for o in groups.get(group, [])):
                continue  # a partial file, already listed with its backup
            if group in groups and any(o.key.endswith("/" + MANIFEST) for o in groups[group]):
                continue
            pending.setdefault(group, []).append(upload)
        items = []
        for (kind, set_name, backup_id), uploads in pending.items():
            objects = groups.get((kind, set_name, backup_id), [])
            if objects:
                continue  # listed already as "no manifest"; cleanup aborts its uploads too
            items.append({"kind": kind, "set": set_name, "backup_id": backup_id,
                          "reason": "unfinished upload (the backup was interrupted)",
                          "prefix": self.backend.describe("%s/%s/%s/" % (kind, set_name, backup_id)),
                          "objects": sorted(u.key.rsplit("/", 1)[-1] for u in uploads),
                          "stored_size": 0, "modified": isoformat(max(u.started for u in uploads)),
                          "_keys": []})
        return items

    def _incomplete(self, kind: str, set_name: str, backup_id: str, objects: t.List[StoredObject], reason: str) -> Json:
        return {"kind": kind, "set": set_name, "backup_id": backup_id, "reason": reason,
                "prefix": self.backend.describe("%s/%s/%s/" % (kind, set_name, backup_id)),
                "objects": sorted(o.key.rsplit("/", 1)[-1] for o in objects),
                "stored_size": sum(o.size for o in objects),
                "modified": isoformat(max(o.modified for o in objects)),
                "_keys": [o.key for o in objects]}

    def latest(self, kind: str, set_name: str) -> t.Optional[Json]:
        manifests = self.scan(kind, set_name)[0]
        return manifests[0] if manifests else None

    def get(self, kind: str, set_name: str, backup_id: t.Optional[str] = None) -> Json:
        """The manifest of ``backup_id`` (the latest complete one when empty); a clear error if none."""
        self._scope(kind, set_name)
        if not backup_id:
            manifest = self.latest(kind, set_name)
            if manifest is None:
                self.backend.require_exists()
                raise RunbookError("no complete %s backup of set %r in %s" % (kind, set_name, self.url))
            return manifest
        check_backup_id(backup_id)
        try:
            return self._load_manifest(kind, set_name, backup_id)
        except (OSError, StreamError, ValueError):
            self.backend.require_exists()
            raise RunbookError("backup %s of %s set %r not found in %s (or it is incomplete: no manifest)"
                               % (backup_id, kind, set_name, self.url))

    def object_key(self, manifest: Json, name: str) -> str:
        return "%s/%s/%s/%s" % (manifest["kind"], path_segment("set", manifest["set"]),
                                check_backup_id(manifest["id"]), path_segment("object name", name))

    def read_object(self, manifest: Json, entry: Json, destination: t.Any, identities: t.Sequence[t.Any] = ()) -> Json:
        """Stream one object's plain bytes into ``destination``, checked against the manifest."""
        reader = self.backend.open_reader(self.object_key(manifest, entry["name"]))
        try:
            return decode_stream(reader, destination, entry.get("compression", "none"), identities,
                                 encrypted=entry.get("encrypted", False), expected_sha256=entry.get("sha256"),
                                 expected_size=entry.get("size"), object_name=entry["name"])
        finally:
            reader.close()

    def verify(self, manifest: Json, identities: t.Sequence[t.Any] = ()) -> Json:
        """Re-read every object: size and sha256 against the manifest; with identities, decrypt and
        decompress to the end too. Returns ``{backup_id, kind, set, ok, level, problems}``."""
        problems: t.List[str] = []
        deep = bool(identities) or manifest.get("encryption", {}).get("algorithm", "none") == "none"
        for entry in manifest.get("objects", []):
            try:
                if deep:
                    self.read_object(manifest, entry, NullSink(), identities)
                else:
                    self._checksum_only(manifest, entry)
            except RunbookError as exc:
                problems.append(exc.msg if entry["name"] in exc.msg else "%s: %s" % (entry["name"], exc.msg))
        return {"backup_id": manifest["id"], "kind": manifest["kind"], "set": manifest["set"],
                "level": "decrypt" if deep else "checksum", "ok": not problems, "problems": problems}

    def _checksum_only(self, manifest: Json, entry: Json) -> None:
        reader = self.backend.open_reader(self.object_key(manifest, entry["name"]))
        try:
            decode_stream(reader, NullSink(), "none", encrypted=False, expected_sha256=entry.get("sha256"),
                          expected_size=entry.get("size"), object_name=entry["name"])
        finally:
            reader.close()

    def read_sidecar(self, manifest: Json, name: str) -> t.Optional[bytes]:
        """A sidecar object of the backup (see :meth:`BackupWriter.add_sidecar`); None when absent."""
        try:
            return self.backend.get_bytes(self.object_key(manifest, name))
        except (OSError, RunbookError):
            return None

    def write_sidecar(self, manifest: Json, name: str, data: bytes) -> None:
        """Replace a sidecar object whole (a file repository renames it into place)."""
        self.backend.put_bytes(self.object_key(manifest, name), data)

    def delete_backup(self, manifest: Json) -> None:
        """Manifest first: an interrupted delete leaves an incomplete backup, never a broken complete one."""
        prefix = "%s/%s/%s/" % (manifest["kind"], manifest["set"], manifest["id"])
        self.backend.delete([prefix + MANIFEST])
        self.backend.delete([o.key for o in self.backend.list_objects(prefix)])

    def prune(self, policy: t.Mapping[str, t.Any], kind: t.Optional[str] = None, set_name: t.Optional[str] = None,
              dry_run: bool = False) -> t.Tuple[t.List[Json], t.List[Json]]:
        """Apply ``policy`` to each set in scope; returns ``(kept, removed)`` summaries."""
        manifests = self.scan(kind, set_name)[0]
        by_set: t.Dict[t.Tuple[str, str], t.List[Json]] = {}
        for manifest in manifests:
            by_set.setdefault((manifest["kind"], manifest["set"]), []).append(manifest)
        kept, removed = [], []
        for _key, items in sorted(by_set.items()):
            keep, remove = apply_retention(items, policy, lambda m: parse_time(m["created"], "created"))
            kept += [dict(backup_summary(m), reasons=m["reasons"]) for m in keep]
            for manifest in remove:
                if not dry_run:
                    self.delete_backup(manifest)
                removed.append(backup_summary(manifest))
        return kept, removed

    def cleanup(self, older_than: t.Union[str, float, None], kind: t.Optional[str] = None,
                set_name: t.Optional[str] = None, dry_run: bool = False,
                now: t.Optional[datetime.datetime] = None) -> t.Tuple[t.List[Json], t.List[Json]]:
        """Remove incomplete backups and abort unfinished uploads older than ``older_than``
        (so a backup running right now is not touched). Returns ``(incomplete, uploads)`` removed."""
        age = parse_duration(older_than, "older_than") or 0.0
        limit = (now or utcnow()) - datetime.timedelta(seconds=age)
        incomplete = self.scan(kind, set_name)[1]
        removed_backups = []
        for item in incomplete:
            if item.get("_removable", True) and parse_time(item["modified"], "modified") <= limit:
                if not dry_run:
                    self.backend.delete(item["_keys"])
                removed_backups.append({k: v for k, v in item.items() if not k.startswith("_")})
        aborted = []
        for upload in self.backend.unfinished_uploads(self._scope(kind, set_name)):
            if upload.started <= limit:
                if not dry_run:
                    self.backend.abort_upload(upload)
                aborted.append({"key": self.backend.describe(upload.key), "started": isoformat(upload.started)})
        return removed_backups, aborted


def public_incomplete(items: t.Sequence[Json]) -> t.List[Json]:
    return [{k: v for k, v in item.items() if not k.startswith("_")} for item in items]
