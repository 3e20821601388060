"""Environment defaults of the modules' options: every option that falls back to an environment
variable documents it (``E(NAME)`` in its description, as ansible-doc shows it) and every
documented variable is read; what a task acts on never comes from the environment; an empty
variable counts as unset; an explicit option wins."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest

from tests.harness.awx import argument_spec, fallbacks, module_names
from tests.harness.collection import ansible_env, ensure_collection_path
from tests.harness.tasks import make_task, validated

ensure_collection_path()

from ansible_collections.runbook.ops.plugins.module_utils._pg_connection import (  # noqa: E402  pylint: disable=wrong-import-position
    PgConnection, PgConnectionOptions)
from ansible_collections.runbook.ops.plugins.module_utils._repository import (  # noqa: E402  pylint: disable=wrong-import-position
    IDENTITY_FILE_VARIABLE)

MODULES = module_names()
_VARIABLE = re.compile(r"E\(([A-Z0-9_]+)\)")
# Options that name what a task acts on: an environment default would silently point a backup,
# restore, purge, prune or rotation somewhere else.
TARGETS = {"repository", "db", "target_db", "databases", "set", "backup_id", "kind", "namespace", "namespaces",
           "secret", "role", "second_role", "group_role", "user", "table", "schema", "redis_db", "service_name",
           "incident_id", "ingresses", "command_names"}
# Where an option of those names only says where to connect.
TARGET_EXCEPTIONS = {("pg_health", "db")}  # the database the server-wide checks connect to


def ansible_doc_options(module: str) -> t.Dict[str, t.Any]:
    """The module's options as ansible-doc shows them (doc fragments merged)."""
    cmd = [str(Path(sys.executable).parent / "ansible-doc"), "--json", "runbook.ops.%s" % module]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ansible_env(), timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return t.cast(t.Dict[str, t.Any], json.loads(proc.stdout)["runbook.ops.%s" % module]["doc"]["options"])


def documented_variables(options: t.Mapping[str, t.Any], prefix: str = "") -> t.Dict[str, t.List[str]]:
    """``{option path: [variables]}`` as the documentation names them."""
    found: t.Dict[str, t.List[str]] = {}
    for name, option in options.items():
        description = option.get("description", [])
        text = " ".join(description) if isinstance(description, list) else str(description)
        names = _VARIABLE.findall(text)
        if names:
            found[prefix + name] = names
        if option.get("suboptions"):
            found.update(documented_variables(option["suboptions"], prefix + name + "."))
    return found


@pytest.mark.parametrize("module", MODULES)
def test_every_environment_default_is_documented_and_every_documented_one_is_read(module) -> None:
    read = fallbacks(argument_spec(module))
    documented = documented_variables(ansible_doc_options(module))
    assert read == documented


@pytest.mark.parametrize("module", MODULES)
def test_what_a_task_acts_on_never_comes_from_the_environment(module) -> None:
    read = fallbacks(argument_spec(module))
    offending = [path for path in read
                 if path.split(".")[-1] in TARGETS and (module, path) not in TARGET_EXCEPTIONS]
    assert not offending, "%s: %s take an environment default" % (module, offending)


@pytest.mark.parametrize("module", MODULES)
def test_no_variable_turns_database_or_s3_certificate_checks_off(module) -> None:
    # Only the Kubernetes option keeps the K8S_AUTH_VERIFY_SSL of kubernetes.core and AWX's credential.
    read = fallbacks(argument_spec(module))
    for path, names in read.items():
        if path.split(".")[-1] in ("validate_certs", "tls_validate_certs"):
            assert names == ["K8S_AUTH_VERIFY_SSL"], (module, path, names)


def test_the_connection_and_secret_options_have_their_variables() -> None:
    assert fallbacks(argument_spec("pg_backup"))["login_password"] == ["PGPASSWORD"]
    assert fallbacks(argument_spec("redis_snapshot"))["login_password"] == ["REDIS_PASSWORD"]
    repo = fallbacks(argument_spec("backup_repo"))
    assert repo["secret_key"] == ["AWS_SECRET_ACCESS_KEY"]
    assert repo["s3_endpoint_url"] == ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
    assert repo["encryption_identity"] == [IDENTITY_FILE_VARIABLE]
    isolate = fallbacks(argument_spec("ns_isolate"))
    assert isolate["evidence.access_key"] == ["AWS_ACCESS_KEY_ID"]
    rotate = fallbacks(argument_spec("pg_credential_rotate"))
    assert rotate["ssl_rootcert"] == ["PGSSLROOTCERT"] and rotate["login_host"] == ["PGHOST"]
    assert rotate["database"] == ["PGDATABASE"] and rotate["host"] == ["K8S_AUTH_HOST"]


def test_variables_fill_unset_options_and_empty_ones_count_as_unset(monkeypatch) -> None:
    monkeypatch.setenv("PGHOST", "db.example.com")
    monkeypatch.setenv("PGPORT", "")
    monkeypatch.setenv("PGPASSWORD", "from-the-environment")
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    monkeypatch.delenv("PGUSER", raising=False)
    params = validated("pg_purge", {"db": "app", "table": "events", "column": "at", "older_than": "90d"})
    assert params["login_host"] == "db.example.com"
    assert params["login_port"] == 5432  # empty PGPORT: the default
    assert params["login_user"] == "postgres"
    assert params["login_password"] == "from-the-environment"
    assert params["ssl_mode"] == "verify-full"
    explicit = validated("pg_purge", {"db": "app", "table": "events", "column": "at", "older_than": "90d",
                                      "login_host": "other", "login_password": "given"})
    assert explicit["login_host"] == "other" and explicit["login_password"] == "given"


def test_redis_and_s3_variables_are_converted_like_options(monkeypatch) -> None:
    monkeypatch.setenv("REDIS_PORT", "6380")
    monkeypatch.setenv("REDIS_TLS", "true")
    monkeypatch.setenv("REDIS_TLS_CA_CERT", "")
    monkeypatch.setenv("AWS_REGION", "")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    monkeypatch.setenv(IDENTITY_FILE_VARIABLE, "/runner/env/tmpidentity")
    params = validated("redis_snapshot", {"state": "backup"})
    assert params["login_port"] == 6380 and params["tls"] is True and params["ca_certs"] is None
    assert params["region"] == "eu-central-1"
    assert params["encryption_identity"] == "/runner/env/tmpidentity"


def test_an_empty_kubernetes_variable_counts_as_unset(monkeypatch) -> None:
    monkeypatch.setenv("K8S_AUTH_REQUEST_TIMEOUT", "")
    monkeypatch.setenv("K8S_AUTH_HOST", "https://k8s.example.com:6443")
    params = validated("k8s_health", {})
    assert params["request_timeout"] == 30 and params["host"] == "https://k8s.example.com:6443"


def test_client_certificate_options_reach_libpq(monkeypatch) -> None:
    monkeypatch.setenv("PGSSLCERT", "/runner/env/cert")
    monkeypatch.setenv("PGSSLKEY", "/runner/env/key")
    task = make_task("pg_health", PgConnectionOptions.from_params, {"login_host": "db"})
    settings = PgConnection(task.options, "test").settings("postgres")
    assert settings["sslcert"] == "/runner/env/cert" and settings["sslkey"] == "/runner/env/key"
    monkeypatch.delenv("PGSSLCERT")
    with pytest.raises(Exception, match="ssl_key is set without ssl_cert"):
        make_task("pg_health", PgConnectionOptions.from_params, {"login_host": "db"})
    assert os.environ["PGSSLKEY"] == "/runner/env/key"


def test_a_client_key_others_may_read_reaches_libpq_as_a_private_copy(tmp_path) -> None:
    # AWX writes credential files 0660; libpq refuses a key with group or other access.
    shared = tmp_path / "key"
    shared.write_text("-----BEGIN PRIVATE KEY-----\nsample\n-----END PRIVATE KEY-----\n")
    shared.chmod(0o660)
    task = make_task("pg_health", PgConnectionOptions.from_params,
                     {"login_host": "db", "ssl_cert": str(tmp_path / "cert"), "ssl_key": str(shared)})
    key = PgConnection(task.options, "test").settings("postgres")["sslkey"]
    assert key != str(shared)
    assert os.stat(key).st_mode & 0o077 == 0
    with open(key, encoding="utf-8") as handle:
        assert handle.read() == shared.read_text()
    shared.chmod(0o600)
    private = PgConnection(task.options, "test").settings("postgres")["sslkey"]
    assert private == str(shared)
