# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """Compression and encryption of backups written to the repository."""

    DOCUMENTATION = r"""
options:
  compression:
    description:
      - How the stream is compressed before it is encrypted and stored.
      - V(zstd) runs on several threads (see O(compression_threads)); V(gzip) is single-threaded.
    type: str
    choices: [zstd, gzip, none]
    default: zstd
  compression_level:
    description: The compression level; empty means V(1) for zstd (fast, and on database dumps about as small as 3) and V(6) for gzip.
    type: int
  compression_threads:
    description: Threads for zstd compression; V(0) uses every core.
    type: int
    default: 0
  encryption_recipients:
    description:
      - age X25519 public keys (V(age1...)) the backup is encrypted to; any one of the matching secret
        keys can read it, and so can the C(age) and C(rage) command line tools.
      - Empty means the backup is stored unencrypted, with a warning.
      - Only fingerprints of these keys are recorded in the manifest.
    type: list
    elements: str
    default: []
"""
