"""The S3 part-size schedule: bounded memory for small streams, under 10,000 parts for huge ones."""

from __future__ import annotations

import pytest

from ansible_collections.runbook.ops.plugins.module_utils import _repository as repo_mod
from tests.harness.collection import REPO


def _writer(size_hint=None):
    # The schedule needs no connection: build the writer around a backend that is never called.
    return repo_mod._S3Writer(repo_mod.S3Backend("bucket", "prefix", {}), "key", size_hint)  # pylint: disable=protected-access


def test_first_parts_are_small_and_the_size_doubles_every_thousand_parts():
    writer = _writer()
    assert writer._part_size(1) == 16 * 1024 * 1024  # pylint: disable=protected-access
    assert writer._part_size(1000) == 16 * 1024 * 1024  # pylint: disable=protected-access
    assert writer._part_size(1001) == 32 * 1024 * 1024  # pylint: disable=protected-access
    assert writer._part_size(10000) <= repo_mod.S3_MAX_PART  # pylint: disable=protected-access


def test_the_stated_limit_for_an_unknown_length_stream_is_the_sum_of_the_schedule():
    writer = _writer()
    capacity = sum(writer._part_size(n) for n in range(1, repo_mod.S3_MAX_PARTS + 1))  # pylint: disable=protected-access
    assert capacity == repo_mod.S3_UNKNOWN_LENGTH_LIMIT
    # Worked by hand: 1000 parts each of 16, 32, ..., 4096 MiB (16 MiB x 511 x 1000), then 1000 of
    # 5 GiB (the 8 GiB step is capped by S3's maximum part size).
    assert capacity == (16 * 511 * 1000 + 5 * 1024 * 1000) * 1024 ** 2
    assert 12.68 < capacity / 1024 ** 4 < 12.69  # "about 12.68 TiB", not the 16 TiB once promised


def test_docs_state_the_same_limit():
    tib = "%.2f TiB" % (repo_mod.S3_UNKNOWN_LENGTH_LIMIT / 1024 ** 4)
    for doc in ("README.md", "docs/repository.md"):
        text = (REPO / doc).read_text()
        assert tib in text, "%s does not state the S3 limit %s" % (doc, tib)
        assert "16 TiB" not in text, doc


def test_a_stream_past_the_limit_fails_with_the_store_stage_named():
    writer = _writer()
    writer._sent = repo_mod.S3_MAX_PARTS  # pylint: disable=protected-access
    writer.upload_id = "pretend"  # the upload is under way: no request is made before the check
    with pytest.raises(repo_mod.StreamError) as raised:
        writer._send_buffer()  # pylint: disable=protected-access
    assert raised.value.stage == "store" and "10000 multipart parts" in raised.value.msg and "12.68 TiB" in raised.value.msg


def test_a_size_hint_raises_the_first_part_size():
    writer = _writer(size_hint=500 * 1024 ** 3)  # a 500 GiB database
    first = writer._part_size(1)  # pylint: disable=protected-access
    assert first > 16 * 1024 * 1024
    assert first * 9000 >= 500 * 1024 ** 3
