# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How bytes are streamed, compressed, encrypted and hashed — in both directions.

Backup:  source (subprocess or file-like) -> compression -> age encryption -> sha256/count -> sink
Restore: stored bytes -> sha256/count -> age decryption -> decompression -> destination

Everything is pull/push streaming with fixed-size buffers: memory does not grow with the data.
Every stage's failure is raised as ``StreamError`` naming the stage; a subprocess's exit status
is checked after its stream ends, so a source that dies half-way never looks like a short success.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import typing as t
import zlib

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError

CHUNK = 1 << 20
COMPRESSIONS = ("zstd", "gzip", "none")
DEFAULT_ZSTD_LEVEL = 1
ZSTD_JOB_SIZE = 4 * 1024 * 1024


class StreamError(RunbookError):
    """A stage of the pipeline failed; ``stage`` names it (source, compress, encrypt, store, ...)."""

    def __init__(self, stage: str, msg: str) -> None:
        super().__init__("%s failed: %s" % (stage, msg), stage=stage)
        self.stage = stage


def _import_zstd() -> t.Any:
    try:
        import zstandard
    except ImportError:
        raise RunbookError("the zstandard Python package is required for zstd compression (pip install zstandard)")
    return zstandard


def _import_pyrage() -> t.Any:
    try:
        import pyrage
    except ImportError:
        raise RunbookError("the pyrage Python package is required for age encryption (pip install pyrage)")
    return pyrage


# --------------------------------------------------------------------------- counting and hashing

class CountingReader:
    """Wraps a readable; counts (and optionally hashes) what passes through."""

    def __init__(self, raw: t.BinaryIO, stage: str = "source", hash_bytes: bool = False) -> None:
        self.raw = raw
        self.stage = stage
        self.count = 0
        self._hash = hashlib.sha256() if hash_bytes else None

    def read(self, size: int = -1) -> bytes:
        try:
            data = self.raw.read(size if size and size > 0 else CHUNK)
        except StreamError:
            raise
        except Exception as exc:
            raise StreamError(self.stage, "read error: %s" % exc)
        self.count += len(data)
        if self._hash is not None:
            self._hash.update(data)
        return data

    def readinto(self, buffer: t.Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest() if self._hash is not None else ""


class HashingWriter:
    """Wraps a writable sink; sha256 and size of the bytes as stored. Remembers the sink's error
    so that a failure inside a native stage (age) is reported as the sink's, not the stage's."""

    def __init__(self, sink: t.Any, stage: str = "store") -> None:
        self.sink = sink
        self.stage = stage
        self.size = 0
        self._hash = hashlib.sha256()
        self.error: t.Optional[BaseException] = None

    def write(self, data: t.Any) -> int:
        data = bytes(data)
        try:
            self.sink.write(data)
        except BaseException as exc:
            self.error = exc
            raise
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class GuardedWriter:
    """Wraps the destination of a read (a spool file, a restoring program's stdin) and remembers
    its failure, so that a full spool is reported as the destination's fault, not the backup's."""

    def __init__(self, destination: t.Any) -> None:
        self.destination = destination
        self.error: t.Optional[BaseException] = None

    def write(self, data: t.Any) -> int:
        try:
            self.destination.write(data)
        except BaseException as exc:
            self.error = exc
            raise
        return len(data)

    def flush(self) -> None:
        flush = getattr(self.destination, "flush", None)
        if flush is not None:
            try:
                flush()
            except BaseException as exc:
                self.error = exc
                raise

    def writable(self) -> bool:
        return True

    def failure(self, object_name: str) -> "StreamError":
        exc = self.error
        name = getattr(self.destination, "name", None)
        where = " %s" % name if isinstance(name, str) else ""
        if isinstance(exc, StreamError):
            return exc
        cause = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return StreamError("write", "writing %s to its destination%s failed: %s (the backup itself is not at fault)"
                           % (object_name, where, cause))


# --------------------------------------------------------------------------- compression

class _GzipReader:
    """gzip-compress a readable as a stream (single-threaded, as gzip is)."""

    def __init__(self, raw: t.Any, level: int) -> None:
        self.raw = raw
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)
        self._buf = b""
        self._eof = False

    def read(self, size: int = -1) -> bytes:
        size = size if size and size > 0 else CHUNK
        while len(self._buf) < size and not self._eof:
            chunk = self.raw.read(CHUNK)
            if not chunk:
                self._buf += self._z.flush()
                self._eof = True
            else:
                self._buf += self._z.compress(chunk)
        data, self._buf = self._buf[:size], self._buf[size:]
        return data


class _GzipWriter:
    def __init__(self, dst: t.Any) -> None:
        self.dst = dst
        self._z = zlib.decompressobj(31)

    def write(self, data: bytes) -> int:
        self.dst.write(self._z.decompress(data))
        return len(data)

    def flush(self) -> None:
        self.dst.write(self._z.flush())
        if not self._z.eof:
            raise StreamError("decompress", "gzip stream is truncated")


def compressed_reader(raw: t.Any, algorithm: str, level: t.Optional[int] = None, threads: int = 0) -> t.Any:
    """A readable of ``raw`` compressed with ``algorithm``; zstd uses ``threads`` workers (0: all cores)."""
    if algorithm == "none":
        return raw
    if algorithm == "gzip":
        return _GzipReader(raw, 6 if level is None else level)
    if algorithm == "zstd":
        zstd = _import_zstd()
        workers = threads if threads and threads > 0 else (os.cpu_count() or 1)
        # Level 1 by default: on database dumps it is faster than 3 and compresses about as well.
        # Jobs of at most 4 MiB keep the multi-threaded compressor's buffers small at any level.
        params = zstd.ZstdCompressionParameters.from_level(DEFAULT_ZSTD_LEVEL if level is None else level,
                                                           threads=workers, job_size=ZSTD_JOB_SIZE if workers > 1 else 0)
        return zstd.ZstdCompressor(compression_params=params).stream_reader(raw, read_size=CHUNK)
    raise RunbookError("unknown compression %r (choose from %s)" % (algorithm, ", ".join(COMPRESSIONS)))


class _Passthrough:
    def __init__(self, dst: t.Any) -> None:
        self.dst = dst

    def write(self, data: bytes) -> int:
        self.dst.write(data)
        return len(data)

    def flush(self) -> None:
        pass


class _ZstdWriter:
    """zstd decompression into a writable, in ``CHUNK``-sized writes.

    Memory stays bounded whatever the compression ratio: a megabyte of a highly repetitive stream
    can decompress to gigabytes, so output is never produced in one piece. Truncation is caught
    by the manifest's size and sha256 (and by age's authenticated final chunk when encrypted).
    """

    def __init__(self, dst: t.Any) -> None:
        zstd = _import_zstd()
        self._zstd = zstd
        self._writer = zstd.ZstdDecompressor().stream_writer(dst, write_size=CHUNK, write_return_read=True,
                                                             closefd=False)

    def write(self, data: bytes) -> int:
        try:
            return int(self._writer.write(data))
        except self._zstd.ZstdError as exc:
            raise StreamError("decompress", "zstd: %s" % exc)

    def flush(self) -> None:
        self._writer.flush()


def decompressing_writer(dst: t.Any, algorithm: str) -> t.Any:
    """A writable that decompresses into ``dst``; call ``flush()`` at the end to detect truncation."""
    if algorithm == "none":
        return _Passthrough(dst)
    if algorithm == "gzip":
        return _GzipWriter(dst)
    if algorithm == "zstd":
        return _ZstdWriter(dst)
    raise RunbookError("unknown compression %r in manifest" % algorithm)


# --------------------------------------------------------------------------- encryption (age)

def parse_recipients(recipients: t.Sequence[str]) -> t.List[t.Any]:
    pyrage = _import_pyrage()
    parsed = []
    for text in recipients or []:
        text = text.strip()
        try:
            parsed.append(pyrage.x25519.Recipient.from_str(text))
        except Exception:
            raise RunbookError("encryption_recipients: %r is not an age X25519 public key (age1...)" % text[:80])
    return parsed


def recipient_fingerprint(recipient: str) -> str:
    """A stable, short name for a public key, recorded in manifests (``sha256:`` + 16 hex)."""
    return "sha256:" + hashlib.sha256(recipient.strip().encode()).hexdigest()[:16]


def _is_key_text(text: str) -> bool:
    """Key text (not a path): it holds an age secret key line, after any comment lines that
    ``age-keygen`` writes above it (``# created: ...``, ``# public key: age1...``)."""
    return any(line.strip().upper().startswith("AGE-SECRET-KEY-") for line in text.splitlines())


def load_identities(value: t.Optional[str]) -> t.List[t.Any]:
    """``encryption_identity``: one or more ``AGE-SECRET-KEY-1...`` lines (``#`` comment lines and
    blank lines allowed, as ``age-keygen`` writes them), or a path to a file of them.

    Error messages never repeat the value: it may be a secret key.
    """
    if not value:
        return []
    pyrage = _import_pyrage()
    text = value.strip()
    if not _is_key_text(text):
        if "\n" in text or "\x00" in text:
            raise RunbookError("encryption_identity holds no age secret key (AGE-SECRET-KEY-1... line) and is not a file path")
        path = os.path.expanduser(text)
        if not os.path.isfile(path):
            raise RunbookError("encryption_identity is neither an age secret key nor a readable file")
        try:
            with open(path, "rb") as handle:
                data = handle.read(1024 * 1024 + 1)
        except OSError as exc:
            raise RunbookError("encryption_identity file %s cannot be read: %s" % (path, exc.strerror or exc))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise RunbookError("encryption_identity file %s is not a text file of age secret keys "
                               "(binary content; an age identity file is text written by age-keygen)" % path)
        if len(data) > 1024 * 1024:
            raise RunbookError("encryption_identity file %s is larger than 1 MiB; it is not an age identity file" % path)
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    identities = []
    for number, key in enumerate(keys, 1):
        try:
            identities.append(pyrage.x25519.Identity.from_str(key))
        except Exception:
            raise RunbookError("encryption_identity: key line %d is not an age X25519 secret key" % number)
    if not identities:
        raise RunbookError("encryption_identity holds no age secret key")
    return identities


def identity_recipients(identities: t.Sequence[t.Any]) -> t.List[str]:
    return [str(identity.to_public()) for identity in identities]


# --------------------------------------------------------------------------- sources

class SubprocessSource:
    """A subprocess whose stdout is the stream. Use as a context manager; ``finish()`` checks
    the exit status after the stream ended (and kills the process if we stop reading early)."""

    def __init__(self, argv: t.Sequence[str], env: t.Optional[t.Mapping[str, str]] = None, name: t.Optional[str] = None,
                 cwd: t.Optional[str] = None) -> None:
        self.argv = list(argv)
        self.name = name or os.path.basename(self.argv[0])
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=env, cwd=cwd)
        except OSError as exc:
            raise StreamError(self.name, "cannot start %s: %s" % (self.argv[0], exc.strerror or exc))
        # Both pipes exist: Popen was asked for them above.
        self._out: t.IO[bytes] = t.cast(t.IO[bytes], self.proc.stdout)
        self._err: t.IO[bytes] = t.cast(t.IO[bytes], self.proc.stderr)
        self._stderr: t.List[bytes] = []
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()
        self.stdout = CountingReader(t.cast(t.BinaryIO, self._out), stage=self.name)

    def _drain_stderr(self) -> None:
        total = 0
        for line in iter(self._err.readline, b""):
            if total < 65536:
                self._stderr.append(line)
                total += len(line)

    @property
    def stderr(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace").strip()

    def finish(self) -> None:
        """Wait for the process; a non-zero exit fails the stage with its stderr."""
        self._out.close()
        rc = self.proc.wait()
        self._stderr_thread.join(5)
        if rc != 0:
            detail = self.stderr or "no error output"
            raise StreamError(self.name, "%s exited with status %s: %s" % (self.name, rc, detail[-2000:]))

    def abort(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._stderr_thread.join(5)

    def __enter__(self) -> "SubprocessSource":
        return self

    def __exit__(self, exc_type: t.Any, exc: t.Any, tb: t.Any) -> None:
        if exc_type is not None:
            self.abort()


class SubprocessSink:
    """A subprocess that consumes the restored stream on stdin (``pg_restore``, ``redis-check-rdb``...).

    What it says (stderr, and stdout too with ``capture_stdout``, for tools that report there)
    is kept, the last 64 KiB of it, for error messages and for ``finish()`` to return.
    """

    def __init__(self, argv: t.Sequence[str], env: t.Optional[t.Mapping[str, str]] = None, name: t.Optional[str] = None,
                 capture_stdout: bool = False) -> None:
        self.argv = list(argv)
        self.name = name or os.path.basename(self.argv[0])
        try:
            self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
                stderr=subprocess.STDOUT if capture_stdout else subprocess.PIPE, env=env)
        except OSError as exc:
            raise StreamError(self.name, "cannot start %s: %s" % (self.argv[0], exc.strerror or exc))
        self._stdin: t.IO[bytes] = t.cast(t.IO[bytes], self.proc.stdin)  # a pipe: asked for above
        self._said = b""
        self._thread = threading.Thread(target=self._drain, args=(self.proc.stdout if capture_stdout else self.proc.stderr,),
                                        daemon=True)
        self._thread.start()

    def _drain(self, stream: t.Any) -> None:
        for line in iter(stream.readline, b""):
            self._said = (self._said + line)[-65536:]

    @property
    def output(self) -> str:
        return self._said.decode("utf-8", "replace").strip()

    def write(self, data: bytes) -> int:
        try:
            self._stdin.write(data)
        except BrokenPipeError:
            self.proc.wait()
            self._thread.join(5)
            raise StreamError(self.name, "%s stopped reading (exit status %s): %s"
                              % (self.name, self.proc.returncode, self.output[-2000:]))
        return len(data)

    def flush(self) -> None:
        pass

    def finish(self) -> str:
        """Close stdin and wait; a non-zero exit fails the stage. Returns what the program said."""
        try:
            self._stdin.close()
        except BrokenPipeError:
            pass
        rc = self.proc.wait()
        self._thread.join(5)
        if rc != 0:
            raise StreamError(self.name, "%s exited with status %s: %s" % (self.name, rc, self.output[-2000:] or "no error output"))
        return self.output

    def abort(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


# --------------------------------------------------------------------------- the two directions

class StreamStats(t.Dict[str, t.Any]):
    """raw_size (bytes before compression), size and sha256 (bytes as stored)."""


def pump(reader: t.Any, writer: t.Any, chunk: int = CHUNK) -> int:
    total = 0
    while True:
        data = reader.read(chunk)
        if not data:
            return total
        writer.write(data)
        total += len(data)


def encode_stream(source: t.Any, sink: t.Any, compression: str = "zstd", level: t.Optional[int] = None,
                  threads: int = 0, recipients: t.Sequence[str] = ()) -> StreamStats:
    """Compress and encrypt ``source`` (a readable) into ``sink`` (a writable); returns the stats.

    The caller owns both ends: it checks a subprocess source's exit and commits the sink only
    when this returns.
    """
    counted = source if isinstance(source, CountingReader) else CountingReader(source)
    stored = HashingWriter(sink)
    try:
        compressed = compressed_reader(counted, compression, level, threads)
    except StreamError:
        raise
    parsed = parse_recipients(recipients)
    try:
        if parsed:
            pyrage = _import_pyrage()
            try:
                pyrage.encrypt_io(compressed, stored, parsed)
            except pyrage.EncryptError as exc:
                raise _stage_error(exc, stored, counted, "encrypt")
        else:
            pump(compressed, stored)
    except StreamError:
        raise
    except Exception as exc:  # zstd errors, sink errors raised directly
        raise _stage_error(exc, stored, counted, "compress")
    return StreamStats(raw_size=counted.count, size=stored.size, sha256=stored.sha256)


def _stage_error(exc: BaseException, stored: HashingWriter, counted: CountingReader, stage: str) -> StreamError:
    """Name the stage that really failed: a native stage re-raises errors of the Python ends it calls."""
    if isinstance(stored.error, StreamError):
        return stored.error
    if stored.error is not None:
        return StreamError(stored.stage, str(stored.error))
    if isinstance(exc, StreamError):
        return exc
    return StreamError(stage, str(exc))


def decode_stream(stored: t.Any, destination: t.Any, compression: str, identities: t.Sequence[t.Any] = (),
                  encrypted: bool = False, expected_sha256: t.Optional[str] = None,
                  expected_size: t.Optional[int] = None, object_name: str = "object") -> StreamStats:
    """Read stored bytes, check them against the manifest, decrypt and decompress into ``destination``.

    The checksum is compared when the stored stream ends; callers that must not touch a target
    before the bytes are proven (restore with verify_first) verify in a separate pass first.
    """
    counted = CountingReader(stored, stage="read %s" % object_name, hash_bytes=True)
    guarded = GuardedWriter(destination)
    plain = decompressing_writer(guarded, compression)
    try:
        if encrypted:
            if not identities:
                raise RunbookError("%s is encrypted: encryption_identity is required to read it" % object_name)
            pyrage = _import_pyrage()
            try:
                pyrage.decrypt_io(counted, plain, list(identities))
            except pyrage.DecryptError as exc:
                if guarded.error is not None:
                    raise guarded.failure(object_name)
                if "No matching keys" in str(exc):
                    raise RunbookError("%s: encryption_identity does not match any recipient of this backup"
                                       % object_name)
                raise StreamError("decrypt", "%s: %s" % (object_name, exc))
            except OSError as exc:
                if guarded.error is not None:
                    raise guarded.failure(object_name)
                # The age payload failed authentication (tampered or truncated).
                raise StreamError("decrypt", "%s: %s (the stored bytes are corrupt or truncated)" % (object_name, exc))
        else:
            pump(counted, plain)
        plain.flush()
    except (StreamError, OSError, ValueError) as exc:
        # Bytes that differ from the manifest explain any later failure; else a failed destination
        # (a full spool, a restoring program that exited) is named, never the backup.
        mismatch = _checksum_problem(counted, expected_sha256, expected_size, object_name)
        if mismatch:
            raise StreamError("checksum", "%s (%s)" % (mismatch, getattr(exc, "msg", None) or exc))
        if guarded.error is not None:
            raise guarded.failure(object_name)
        if not isinstance(exc, StreamError):
            raise StreamError("decompress", "%s: %s" % (object_name, exc))
        raise
    mismatch = _checksum_problem(counted, expected_sha256, expected_size, object_name)
    if mismatch:
        raise StreamError("checksum", mismatch)
    return StreamStats(size=counted.count, sha256=counted.sha256)


def _checksum_problem(counted: CountingReader, sha256: t.Optional[str], size: t.Optional[int], name: str) -> str:
    # Drain what the decoder did not read, so the checksum covers the whole object.
    try:
        while counted.read(CHUNK):
            pass
    except StreamError:
        pass
    if size is not None and counted.count != size:
        return "%s: size %d differs from the manifest's %d" % (name, counted.count, size)
    if sha256 and counted.sha256 != sha256:
        return "%s: sha256 %s differs from the manifest's %s" % (name, counted.sha256, sha256)
    return ""


class NullSink:
    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass
