"""Every module at -vvvv with every secret-bearing option set, inline forms included (a kubeconfig
given as a dict, key text instead of a key file): no secret value appears anywhere in what
ansible-playbook prints, on success, on a failure of the module, or when the argument spec itself
refuses the task (the path where Ansible echoes the raw arguments)."""

from __future__ import annotations

import base64
import json
import typing as t

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.harness.collection import run_playbook
from tests.harness.k8s import ADMIN_TOKEN, kubeconfig_dict


def _ca(passphrase: bytes) -> t.Tuple[str, str, str]:
    """A CA certificate, its key encrypted with ``passphrase``, and a line of the key's PEM body."""
    import datetime
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leak-test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.BestAvailableEncryption(passphrase)).decode()
    body_line = [line for line in key_pem.splitlines() if "PRIVATE KEY" not in line][1]
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem, body_line


@pytest.fixture
def inline_kubeconfig(kube_cluster) -> dict:
    if kube_cluster.external:
        pytest.fail("this test needs the harness API server (it writes its own kubeconfig with a known token)")
    return kubeconfig_dict(kube_cluster.server, kube_cluster.ca_file.read_bytes(), {"admin": ADMIN_TOKEN},
                           {"admin": (kube_cluster.server, "admin")}, "admin")


def test_no_secret_of_any_module_at_vvvv(kube_cluster, kube_namespace, inline_kubeconfig, postgres, redis_plain,
                                         s3_server, s3_bucket, age_key, tmp_path):
    ns = kube_namespace
    passphrase = "leak-test-ca-passphrase"
    ca_cert, ca_key, ca_key_line = _ca(passphrase.encode())
    wrong_pg, wrong_redis = "wrong-pg-password-123", "wrong-redis-password-456"
    s3 = s3_server.repository_options(s3_bucket)
    pg = dict(postgres.login, db="postgres")
    redis = dict(redis_plain.login)
    k8s = {"kubeconfig": inline_kubeconfig}

    def task(name: str, module: str, args: dict, **extra: t.Any) -> dict:
        return dict({"name": name, "runbook.ops.%s" % module: args, "register": "out", "ignore_errors": True,
                     "diff": True}, **extra)

    admin = kube_cluster.client()
    postgres.psql("DROP ROLE IF EXISTS leak_app; CREATE ROLE leak_app LOGIN PASSWORD 'leak-app-old-password'")
    admin.create("v1", "secrets", {"metadata": {"name": "leak-pg", "namespace": ns}, "data": {
        "password": base64.b64encode(b"leak-app-old-password").decode()}}, ns)
    rotation = {"secret": {"namespace": ns, "name": "leak-pg"}}
    tasks = [
        task("pg_credential_rotate", "pg_credential_rotate", dict(k8s, **postgres.login, role="leak_app", **rotation)),
        task("pg_credential_rotate refused", "pg_credential_rotate",
             dict(k8s, **postgres.login, role="leak_app", bogus=1, **rotation)),
        task("redis_credential_rotate wrong password", "redis_credential_rotate",
             dict(k8s, **dict(redis, login_password=wrong_redis), user="backup", **rotation)),
        task("k8s_health inline kubeconfig", "k8s_health", dict(k8s, namespaces=[ns], checks=["pods"])),
        task("k8s_health refused by the argument spec", "k8s_health", dict(k8s, not_an_option=1)),
        task("k8s_health refused by the module", "k8s_health", dict(k8s, request_timeout=-1)),
        task("jwt_rotate inline kubeconfig", "jwt_rotate",
             dict(k8s, namespace=ns, secret_name="jwt-keys", algorithm="ES256")),
        task("jwt_rotate refused", "jwt_rotate", dict(k8s, namespace=ns, secret_name="jwt-keys", bogus=True)),
        task("cert_renew with a CA key and passphrase", "cert_renew",
             dict(k8s, sources=[{"type": "tls_secret", "namespace": ns, "all": True}],
                  issuer={"type": "ca", "ca_cert": ca_cert, "ca_key": ca_key, "ca_key_passphrase": passphrase}),
             check_mode=True),
        task("cert_renew refused", "cert_renew",
             dict(k8s, sources=[{"type": "nonsense"}],
                  issuer={"type": "ca", "ca_cert": ca_cert, "ca_key": ca_key, "ca_key_passphrase": passphrase})),
        task("ns_isolate with S3 evidence", "ns_isolate",
             dict(k8s, namespace=ns, incident_id="inc-leak-1", evidence=dict(s3)), check_mode=True),
        task("ns_isolate refused", "ns_isolate", dict(k8s, namespace=ns, incident_id="inc-leak-1",
                                                      evidence=dict(s3), bogus=1)),
        task("pg_backup to S3", "pg_backup", dict(pg, **s3, encryption_recipients=[age_key.recipient])),
        task("pg_backup verify with inline identity", "pg_backup",
             dict(pg, **s3, state="verify", encryption_identity=age_key.identity)),
        task("pg_backup wrong password", "pg_backup", dict(pg, **s3, login_password=wrong_pg)),
        task("pg_backup refused", "pg_backup", dict(pg, **s3, encryption_identity=age_key.identity, bogus=1)),
        task("redis_snapshot to S3", "redis_snapshot", dict(redis, **s3, encryption_recipients=[age_key.recipient])),
        task("redis_snapshot wrong password", "redis_snapshot", dict(redis, **s3, login_password=wrong_redis)),
        task("redis_snapshot refused", "redis_snapshot", dict(redis, **s3, bogus=1)),
        task("backup_repo verify with inline identity", "backup_repo",
             dict(s3, state="verify", encryption_identity=age_key.identity)),
        task("backup_repo refused", "backup_repo", dict(s3, encryption_identity=age_key.identity, bogus=1)),
    ]
    playbook = tmp_path / "leaks.yml"
    playbook.write_text(json.dumps([{"name": "Every secret option", "hosts": "localhost", "gather_facts": False,
                                     "tasks": tasks}]))
    proc = run_playbook(playbook, verbosity=4)
    output = proc.stdout
    assert "PLAY RECAP" in output, output[-3000:]
    printed = output.split("PLAY [", 1)[1]
    secrets = {
        "kubeconfig token": ADMIN_TOKEN, "CA key": ca_key_line, "CA passphrase": passphrase,
        "PostgreSQL password": postgres.password, "wrong PostgreSQL password": wrong_pg,
        "Redis password": redis_plain.password, "wrong Redis password": wrong_redis,
        "S3 secret key": s3_server.secret_key, "age identity": age_key.identity,
    }
    rotated = base64.b64decode(admin.get("v1", "secrets", "leak-pg", ns)["data"]["password"]).decode()
    assert rotated != "leak-app-old-password"  # the rotation ran
    secrets.update({"rotated password": rotated, "previous rotated password": "leak-app-old-password"})
    leaked = [what for what, value in secrets.items() if value in printed]
    assert not leaked, "leaked at -vvvv: %s" % leaked
    # The tasks really ran: the successful ones and each kind of refusal are in the output.
    assert printed.count("VALUE_SPECIFIED_IN_NO_LOG_PARAMETER") >= 5
    assert "Unsupported parameters" in printed
    assert "request_timeout must be above 0" in printed
    recap = output.rsplit("PLAY RECAP", 1)[1]
    assert "ok=" in recap and "ignored=" in recap
    for name in ("k8s_health inline kubeconfig", "pg_backup to S3", "redis_snapshot to S3",
                 "backup_repo verify with inline identity", "pg_backup verify with inline identity"):
        section = printed.split("TASK [%s]" % name, 1)[1].split("TASK [", 1)[0]
        assert "FAILED" not in section and "fatal:" not in section, section[-2000:]
