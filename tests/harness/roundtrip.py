"""Child process for memory-bounded streaming tests: back up N MiB from a subprocess into a
repository, read it back, and print sizes, checksums and this process's peak RSS as JSON.

Usage: python -m tests.harness.roundtrip <mib> <repository options JSON> [recipient identity]
"""

from __future__ import annotations

import hashlib
import json
import resource
import sys

from tests.harness.collection import ensure_collection_path

ensure_collection_path()

# pylint: disable=wrong-import-position
from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository  # noqa: E402
from ansible_collections.runbook.ops.plugins.module_utils._stream import (  # noqa: E402
    CountingReader, SubprocessSource, identity_recipients, load_identities)


class HashSink:
    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def main() -> None:
    mib = int(sys.argv[1])
    options = json.loads(sys.argv[2])
    identities = load_identities(sys.argv[3]) if len(sys.argv) > 3 else []
    repo = Repository.from_options(options)
    # Half random, half repetitive text: both the incompressible and the compressible path run.
    script = ("head -c %d /dev/urandom; yes 'runbook ops streaming test line' | head -c %d"
              % (mib * 524288, mib * 524288))
    with repo.new_backup("postgresql", "roundtrip") as backup:
        with SubprocessSource(["sh", "-c", script], name="generator") as source:
            hashed = CountingReader(source.stdout, hash_bytes=True)
            backup.add_object("data", hashed, compression="zstd", level=1,
                              recipients=identity_recipients(identities))
            source.finish()
        manifest = backup.commit(fmt="raw", compression={"algorithm": "zstd", "level": 1})
    sink = HashSink()
    repo.read_object(manifest, manifest["objects"][0], sink, identities)
    print(json.dumps({"written": hashed.count, "written_sha256": hashed.sha256, "read": sink.size,
                      "read_sha256": sink.hash.hexdigest(), "stored": manifest["size"],
                      "backup_id": manifest["id"],
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))


if __name__ == "__main__":
    main()
