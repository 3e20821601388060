# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """Options of the backup repository, shared by every module that stores or reads backups."""

    DOCUMENTATION = r"""
options:
  repository:
    description:
      - Where backups live, as a URL.
      - V(file:///path) stores them in a local directory of the managed host (created 0700 when absent).
      - V(s3://bucket/prefix) stores them in any S3 API (AWS, MinIO, Ceph, ...). The bucket must exist.
      - The layout is C(<prefix>/<kind>/<set>/<backup_id>/) with the data objects and C(manifest.json),
        which is written last; a backup without a manifest is incomplete and never used for a restore.
      - A manifest counts only when its C(kind), C(set) and C(id) match the path it is stored under and its
        object names are plain names; any other is reported as incomplete (not trusted) and never deleted.
      - Reading a V(file://) repository whose directory does not exist is an error (a mistyped path must not
        read as "no backups"), as is a missing S3 bucket; the first backup creates the directory.
      - No environment variable sets it. The repository is where prunes and restores act, so the task (the
        platform description) always names it; it is never picked up from the job's environment.
    type: str
    default: file:///var/backups/runbook
  s3_endpoint_url:
    description:
      - URL of an S3-compatible endpoint, for example V(https://minio.example.com:9000). Empty means AWS.
      - The environment variable E(AWS_ENDPOINT_URL_S3), else E(AWS_ENDPOINT_URL), is used when this is not set.
    type: str
  region:
    description:
      - The S3 region.
      - The environment variable E(AWS_REGION), else E(AWS_DEFAULT_REGION), is used when this is not set.
    type: str
    aliases: [aws_region]
  access_key:
    description:
      - S3 access key id. When empty, the usual AWS sources apply (O(profile), instance role).
      - The environment variable E(AWS_ACCESS_KEY_ID) is used when this is not set.
    type: str
    aliases: [aws_access_key_id]
  secret_key:
    description:
      - S3 secret access key.
      - The environment variable E(AWS_SECRET_ACCESS_KEY) is used when this is not set.
    type: str
    aliases: [aws_secret_access_key]
  session_token:
    description:
      - S3 session token for temporary credentials.
      - The environment variable E(AWS_SESSION_TOKEN) is used when this is not set.
    type: str
    aliases: [aws_session_token]
  profile:
    description: A named profile of the AWS shared credentials files.
    type: str
    aliases: [aws_profile]
  s3_sse:
    description:
      - Server-side encryption asked of S3 for every object written. Independent of (and in addition to)
        the client-side age encryption of backups.
    type: str
    choices: [none, AES256, "aws:kms"]
    default: none
  s3_kms_key_id:
    description: The KMS key for O(s3_sse=aws:kms); empty means the bucket's default key.
    type: str
  s3_checksum:
    description:
      - When the S3 client adds integrity checksums to requests. Some S3-compatible stores reject
        the checksums recent AWS SDKs add by default; V(when_required) is the remedy for them.
      - Our own sha256 of every object is kept in the manifest either way.
    type: str
    choices: [when_supported, when_required]
    default: when_supported
  validate_certs:
    description:
      - Verify the TLS certificate of O(s3_endpoint_url). No environment variable can turn it off.
    type: bool
    default: true
notes:
  - An option whose description names an environment variable takes its value from there when the task
    does not set it; an empty variable counts as unset. The collection's AWX credential types
    (C(extensions/controller/credential_types.yml)) inject exactly these variables.
"""

    ENCRYPTION_IDENTITY = r"""
options:
  encryption_identity:
    description:
      - The age secret key(s) to read encrypted backups, as the key text (V(AGE-SECRET-KEY-1...), one
        per line; blank lines and C(#) comment lines, as C(age-keygen) writes them, are ignored) or the
        path of a text file holding them on the managed host.
      - Never shown in output.
      - The environment variable E(RUNBOOK_AGE_IDENTITY_FILE) (the path of such a file; the collection's
        backup repository credential type writes the key into a file and sets it) is used when this is not set.
    type: str
"""

    BACKUP_JOB = r"""
options:
  set:
    description:
      - The backup set, the name that groups backups of the same thing in the repository
        (C(<kind>/<set>/<backup_id>/)); retention and "latest" work per set.
      - One path component of at most 200 bytes; slashes, backslashes, control characters and a leading dot are refused.
    type: str
  labels:
    description: Free-form string labels recorded in the manifest and shown by M(runbook.ops.backup_repo_info).
    type: dict
    default: {}
  max_age:
    description:
      - When the newest complete backup of this set finished less than this long ago (V(6h), V(1d), ...),
        do nothing and return RV(skipped=true) with C(changed=false). Makes scheduled runs idempotent.
    type: str
"""

    RETENTION = r"""
options:
  retention:
    description:
      - Which backups of each set to keep, with restic C(forget) meaning; the kept set is the union of
        all rules and always includes the newest complete backup of the set.
      - A period rule (O(retention.keep_hourly) to O(retention.keep_yearly)) that still has periods left when it
        reaches the oldest backup keeps that one too, as restic does.
      - A policy whose rules are all 0 or empty removes nothing.
      - The backup modules apply it only after a B(successful) backup, never after a failed one;
        M(runbook.ops.backup_repo) applies it with O(ignore:state=prune) to each set in scope.
    type: dict
    suboptions:
      keep_last:
        description: Keep the newest N backups.
        type: int
      keep_hourly:
        description: Keep the newest backup of each of the last N hours that have one (UTC).
        type: int
      keep_daily:
        description: Keep the newest backup of each of the last N days that have one (UTC).
        type: int
      keep_weekly:
        description: Keep the newest backup of each of the last N ISO weeks that have one.
        type: int
      keep_monthly:
        description: Keep the newest backup of each of the last N months that have one.
        type: int
      keep_yearly:
        description:
          - Keep the newest backup of each of the last N years that have one (UTC), e.g. V(7) for backups
            that must be kept seven years.
        type: int
      keep_within:
        description:
          - Keep every backup taken less than this long before the B(newest) backup of the set (not before
            now, so a set whose backups stopped keeps its last ones), as restic C(--keep-within).
          - Years, months, days and hours in that order, as restic writes them, e.g. V(7y), V(1y6m), V(30d), V(1d12h).
            V(m) means months, not minutes; months and years are calendar units.
        type: str
"""
