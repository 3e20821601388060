"""The S3 part-size schedule: bounded memory for small streams, under 10,000 parts for huge ones."""

from __future__ import annotations

from ansible_collections.runbook.ops.plugins.module_utils import _repository as repo_mod


def _writer(size_hint=None):
    # The schedule needs no connection: build the writer around a backend that is never called.
    return repo_mod._S3Writer(repo_mod.S3Backend("bucket", "prefix", {}), "key", size_hint)  # pylint: disable=protected-access


def test_first_parts_are_small_and_the_size_doubles_every_thousand_parts():
    writer = _writer()
    assert writer._part_size(1) == 16 * 1024 * 1024  # pylint: disable=protected-access
    assert writer._part_size(1000) == 16 * 1024 * 1024  # pylint: disable=protected-access
    assert writer._part_size(1001) == 32 * 1024 * 1024  # pylint: disable=protected-access
    assert writer._part_size(10000) <= repo_mod.S3_MAX_PART  # pylint: disable=protected-access


def test_an_unknown_length_stream_of_several_tib_fits_in_10000_parts():
    writer = _writer()
    capacity = sum(writer._part_size(n) for n in range(1, repo_mod.S3_MAX_PARTS + 1))  # pylint: disable=protected-access
    assert capacity >= 8 * 1024 ** 4  # 8 TiB at least


def test_a_size_hint_raises_the_first_part_size():
    writer = _writer(size_hint=500 * 1024 ** 3)  # a 500 GiB database
    first = writer._part_size(1)  # pylint: disable=protected-access
    assert first > 16 * 1024 * 1024
    assert first * 9000 >= 500 * 1024 ** 3
