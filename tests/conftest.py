"""Pytest entry point: make the collection importable and load the service fixtures."""

from tests.harness.collection import ensure_collection_path

ensure_collection_path()

pytest_plugins = [
    "tests.harness.fixtures",
    "tests.harness.fixtures_k8s",
]
