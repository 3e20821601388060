"""Pure logic of the credential rotation modules: options, passwords, verifiers, URLs, consumers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import string

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._credentials import (
    DEFAULT_ALPHABET, Login, Record, generate_password, rewrite_url,
)
from ansible_collections.runbook.ops.plugins.module_utils._pg_credentials import (
    PgRotateOptions, scram_verifier, verifier_matches,
)
from ansible_collections.runbook.ops.plugins.module_utils._redis_credentials import RedisRotateOptions
from tests.harness.tasks import validated

SECRET = {"namespace": "app", "name": "db-credentials"}


def pg_options(**params):
    merged = dict(role="app", secret=SECRET)
    merged.update(params)
    return PgRotateOptions.from_params(validated("pg_credential_rotate", merged))


def test_defaults_come_from_the_argument_spec():
    opts = pg_options()
    assert opts.strategy == "single" and opts.second_role == "app_b" and opts.database == "postgres"
    rotation = opts.rotation
    assert rotation.rotate_after == 30 * 86400 and rotation.grace_period == 0
    assert rotation.password_length == 32 and rotation.secret.password_key == "password"
    assert rotation.secret.user_key is None and rotation.discover_consumers is True
    assert rotation.secret.record_name == "db-credentials-rotation"


def test_alternating_needs_a_group_and_a_user_key():
    with pytest.raises(Exception, match="group_role"):
        pg_options(strategy="alternating")
    with pytest.raises(RunbookError, match="user_key"):
        pg_options(strategy="alternating", group_role="app_group")
    opts = pg_options(strategy="alternating", group_role="app_group", secret=dict(SECRET, user_key="username"))
    assert opts.group_role == "app_group"


@pytest.mark.parametrize("params, message", [
    ({"password_alphabet": "abc"}, "at least 16"),
    ({"password_alphabet": "abcdefghijklmnop q"}, "printable ASCII"),
    ({"password_length": 8}, "password_length"),
    ({"rotate_after": "0"}, "rotate_after"),
    ({"secret": dict(SECRET, user_key="password")}, "different keys"),
    ({"secret": dict(SECRET, name="Not_A_Name")}, "secret.name"),
])
def test_bad_options_are_refused_before_anything_runs(params, message):
    merged = dict(role="app", secret=SECRET)
    merged.update(params)
    with pytest.raises(RunbookError, match=message):
        PgRotateOptions.from_params(validated("pg_credential_rotate", merged))


def test_kubernetes_options_keep_their_names_beside_the_database_ones():
    params = validated("pg_credential_rotate", dict(role="app", secret=SECRET, ca_cert="/k8s/ca.crt",
                                                    ssl_rootcert="/pg/ca.crt", host="https://k8s:6443"))
    opts = PgRotateOptions.from_params(params)
    assert opts.connection.ca_cert == "/pg/ca.crt" and params["ca_cert"] == "/k8s/ca.crt"
    redis = RedisRotateOptions.from_params(validated("redis_credential_rotate", dict(
        user="app", secret=SECRET, tls_validate_certs=False, validate_certs=True)))
    assert redis.connection.validate_certs is False


def test_passwords_use_the_alphabet_and_differ():
    first, second = generate_password(32, DEFAULT_ALPHABET), generate_password(32, DEFAULT_ALPHABET)
    assert first != second and len(first) == 32 and set(first) <= set(string.ascii_letters + string.digits)


def test_scram_verifier_is_what_postgresql_computes():
    salt = b"0123456789abcdef"
    verifier = scram_verifier("pencil", salt, 4096)
    head, keys = verifier.split("$", 2)[1:]
    assert head == "4096:" + base64.b64encode(salt).decode()
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096)
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    assert keys.split(":")[1] == base64.b64encode(server_key).decode()
    assert verifier_matches("pencil", verifier) is True
    assert verifier_matches("pencil2", verifier) is False
    assert verifier_matches("pencil", "md5abc") is None
    assert verifier_matches("pe\u00f1cil", verifier) is None


def test_url_keeps_everything_but_the_credentials():
    url = "postgresql://old:secret@db.svc:5432/app?sslmode=require"
    assert rewrite_url(url, Login("app_b", "n3w/p@ss")) == "postgresql://app_b:n3w%2Fp%40ss@db.svc:5432/app?sslmode=require"
    with pytest.raises(RunbookError, match="URL"):
        rewrite_url("not a url", Login("a", "b"))


def test_login_and_record_never_show_the_password():
    login = Login("app", "very-secret-value")
    assert "very-secret-value" not in repr(login)


def test_a_record_of_a_dead_local_process_is_not_held():
    import datetime
    import socket

    future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    record = Record(new=Login("a", "b"), previous=Login("a", "c"), phase="changing",
                    holder="%s/999999999/x" % socket.gethostname(), expires=future, revoke_after=None, stamp="", obj={})
    assert not record.held(datetime.datetime.now(datetime.timezone.utc))
    record.holder = "elsewhere/1/x"
    assert record.held(datetime.datetime.now(datetime.timezone.utc))
    assert not record.held(future + datetime.timedelta(seconds=1))
