"""Pure parts of cert_renew: judging expiry, issuing and checking certificates, finding consumers;
options validated through the module's own argument spec."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from ansible_collections.runbook.ops.plugins.module_utils import _cert_files, _cert_issuer, _cert_renew, _cert_x509
from ansible_collections.runbook.ops.plugins.module_utils._cert_renew import CertRenewOptions, run_cert_renew
from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._k8s import K8sClient, K8sConflict
from tests.harness.tasks import InvalidParams, make_task, validated

NOW = datetime.datetime(2026, 3, 1, 6, 0, tzinfo=datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def make_cert(cn: str, key, signer_key=None, signer_name=None, start=NOW - 85 * DAY, end=NOW + 5 * DAY,
              ca: bool = False, sans=("svc.example",)):
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lab"), x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(signer_name or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(s) for s in sans] + [x509.IPAddress(__import__("ipaddress").ip_address("10.0.0.7"))]),
            critical=False)
    signer = signer_key or key
    return builder.sign(signer, None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256())


def pem(obj) -> str:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM).decode()
    return _cert_x509.key_pem(obj).decode()


def options(**params) -> CertRenewOptions:
    params.setdefault("sources", [{"type": "file", "path": "/etc/site.crt"}])
    return CertRenewOptions.from_params(validated("cert_renew", params))


def issuer_from(**issuer) -> _cert_issuer.Issuer:
    now = issuer.pop("now", None)
    built = options(issuer=issuer).issuer
    assert built is not None
    return _cert_issuer.Issuer.from_options(built, now=now)


@pytest.fixture(scope="module")
def ca():
    key = ec.generate_private_key(ec.SECP256R1())
    cert = make_cert("Lab CA", key, start=NOW - 400 * DAY, end=NOW + 3650 * DAY, ca=True, sans=())
    return cert, key


# ----------------------------------------------------------------------------------------------
# judge


def test_judge_below_threshold_is_warning_with_human_message():
    verdict = _cert_renew.judge(NOW - 78 * DAY, NOW + 12 * DAY, NOW, 30, None)
    assert verdict["should_renew"] is True
    assert verdict["severity"] == "warning"
    assert verdict["msg"] == "expires in 12 days, below 30"
    assert verdict["days_left"] == 12.0


def test_judge_far_from_expiry_is_ok_and_not_renewed():
    verdict = _cert_renew.judge(NOW - 165 * DAY, NOW + 200 * DAY, NOW, 30, None)
    assert verdict["should_renew"] is False
    assert verdict["severity"] == "ok"
    assert "expires in 200 days" in verdict["msg"]


def test_judge_expired_is_critical():
    verdict = _cert_renew.judge(NOW - 92 * DAY, NOW - 2 * DAY, NOW, 30, None)
    assert verdict["should_renew"] is True
    assert verdict["severity"] == "critical"
    assert verdict["msg"].startswith("expired 2 days ago")
    assert verdict["days_left"] == -2.0


def test_judge_percentage_of_lifetime():
    # 90-day certificate, 35 days left: above 30 days but below a third of its lifetime (38.9%).
    verdict = _cert_renew.judge(NOW - 55 * DAY, NOW + 35 * DAY, NOW, 30, 0.4)
    assert verdict["should_renew"] is True
    assert "38% of its lifetime left, below 40%" in verdict["msg"]
    assert _cert_renew.judge(NOW - 55 * DAY, NOW + 35 * DAY, NOW, 30, 0.33)["should_renew"] is False


def test_judge_force_and_not_yet_valid():
    verdict = _cert_renew.judge(NOW - 10 * DAY, NOW + 80 * DAY, NOW, 30, None, force=True)
    assert verdict["should_renew"] is True and verdict["severity"] == "ok"
    assert verdict["msg"].endswith("renewal forced")
    future = _cert_renew.judge(NOW + DAY, NOW + 91 * DAY, NOW, 30, None)
    assert future["severity"] == "critical" and "not valid before" in future["msg"]


# ----------------------------------------------------------------------------------------------
# issuing


@pytest.mark.parametrize("key_type", list(_cert_issuer.KEY_TYPES))
def test_ca_issuer_keeps_subject_and_sans_with_new_serial(ca, key_type):
    ca_cert, ca_key = ca
    old_key = ec.generate_private_key(ec.SECP256R1())
    old = make_cert("auth.svc", old_key, ca_key, ca_cert.subject)
    issuer = issuer_from(type="ca", ca_cert=pem(ca_cert), ca_key=pem(ca_key), now=NOW)
    key = _cert_issuer.generate_key(key_type)
    issued = issuer.issue(old, key, 90)
    new, ca_pem, notes = issued.cert, issued.ca_pem, issued.notes
    assert new.subject == old.subject
    assert _cert_x509.sans_of(new) == _cert_x509.sans_of(old) == ["DNS:svc.example", "IP:10.0.0.7"]
    assert new.serial_number != old.serial_number
    assert new.issuer == ca_cert.subject
    assert _cert_x509.signed_by(new, ca_cert)
    assert _cert_x509.key_matches(key, new)
    assert ca_pem.strip() == pem(ca_cert).encode().strip()
    assert notes == []
    lifetime = _cert_x509.not_after(new) - _cert_x509.not_before(new)
    assert datetime.timedelta(days=90) <= lifetime <= datetime.timedelta(days=90, minutes=6)


def test_selfsigned_issuer_signs_with_its_own_key():
    old_key = ed25519.Ed25519PrivateKey.generate()
    old = make_cert("self.example", old_key)
    key = _cert_issuer.generate_key("ed25519")
    issued = issuer_from(type="selfsigned").issue(old, key, 30)
    new, ca_pem = issued.cert, issued.ca_pem
    assert new.issuer == new.subject == old.subject
    assert _cert_x509.signed_by(new, new)
    assert ca_pem == _cert_x509.cert_pem(new)


def test_validity_is_cut_to_the_ca_expiry():
    ca_key = ec.generate_private_key(ec.SECP256R1())
    soon = datetime.datetime.now(datetime.timezone.utc) + 10 * DAY
    ca_cert = make_cert("Short CA", ca_key, start=NOW - 400 * DAY, end=soon, ca=True, sans=())
    old = make_cert("x", ec.generate_private_key(ec.SECP256R1()), ca_key, ca_cert.subject)
    issuer = issuer_from(type="ca", ca_cert=pem(ca_cert), ca_key=pem(ca_key))
    issued = issuer.issue(old, _cert_issuer.generate_key("ecdsa-p256"), 90)
    new, notes = issued.cert, issued.notes
    assert _cert_x509.not_after(new) == ca_cert.not_valid_after_utc
    assert notes and "CA's expiry" in notes[0]


def test_issuer_key_not_matching_its_certificate_is_refused(ca):
    ca_cert, _ca_key = ca
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(RunbookError, match="does not match the public key of issuer.ca_cert"):
        issuer_from(type="ca", ca_cert=pem(ca_cert), ca_key=pem(other), now=NOW)


def test_issuer_that_is_not_a_ca_is_refused():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = make_cert("leaf", key, start=NOW - DAY, end=NOW + 100 * DAY)
    with pytest.raises(RunbookError, match="not a CA certificate"):
        issuer_from(type="ca", ca_cert=pem(leaf), ca_key=pem(key), now=NOW)


def test_encrypted_ca_key_needs_its_passphrase(ca):
    ca_cert, ca_key = ca
    encrypted = ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.BestAvailableEncryption(b"s3cret")).decode()
    with pytest.raises(RunbookError, match="encrypted and no passphrase"):
        issuer_from(type="ca", ca_cert=pem(ca_cert), ca_key=encrypted, now=NOW)
    with pytest.raises(RunbookError, match="passphrase is wrong"):
        issuer_from(type="ca", ca_cert=pem(ca_cert), ca_key=encrypted, ca_key_passphrase="wrong", now=NOW)
    issuer = issuer_from(type="ca", ca_cert=pem(ca_cert), ca_key=encrypted, ca_key_passphrase="s3cret", now=NOW)
    assert issuer.kind == "ca"


def test_check_issued_refuses_a_key_mismatch_and_a_foreign_signature(ca):
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    good = make_cert("a", key, ca_key, ca_cert.subject, start=now - DAY, end=now + 30 * DAY)
    _cert_issuer.check_issued(good, key, ca_cert)
    with pytest.raises(RunbookError, match="does not match the private key"):
        _cert_issuer.check_issued(good, ec.generate_private_key(ec.SECP256R1()), ca_cert)
    rogue = make_cert("a", key, ec.generate_private_key(ec.SECP256R1()), ca_cert.subject, start=now - DAY,
                      end=now + 30 * DAY)
    with pytest.raises(RunbookError, match="does not verify with the CA"):
        _cert_issuer.check_issued(rogue, key, ca_cert)
    expired = make_cert("a", key, ca_key, ca_cert.subject, start=now - 30 * DAY, end=now - DAY)
    with pytest.raises(RunbookError, match="not valid now"):
        _cert_issuer.check_issued(expired, key, ca_cert)


def test_load_certificates_rejects_non_pem():
    with pytest.raises(RunbookError, match="holds no PEM certificate"):
        _cert_x509.load_certificates(b"hello", "Secret/a/b tls.crt")


# ----------------------------------------------------------------------------------------------
# consumers


def test_referenced_secrets_covers_volumes_projected_env_and_env_from():
    spec = {
        "volumes": [{"name": "tls", "secret": {"secretName": "a-tls"}},
                    {"name": "p", "projected": {"sources": [{"secret": {"name": "b-tls"}}, {"configMap": {"name": "c"}}]}},
                    {"name": "cm", "configMap": {"name": "not-a-secret"}}],
        "containers": [{"name": "app", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "c-tls", "key": "k"}}},
                                               {"name": "Y", "value": "plain"}]}],
        "initContainers": [{"name": "init", "envFrom": [{"secretRef": {"name": "d-tls"}}, {"configMapRef": {"name": "e"}}]}],
    }
    assert _cert_renew.referenced_secrets(spec) == {"a-tls", "b-tls", "c-tls", "d-tls"}
    assert _cert_renew.referenced_secrets({}) == set()


# ----------------------------------------------------------------------------------------------
# A Secret that changes between read and write


class _RacingClient:
    """Serves one TLS Secret and answers its write with 409, as the API server does for a stale resourceVersion."""

    requests = 2

    def __init__(self, secret):
        self.secret = secret
        self.written = []

    def get(self, api_version, plural, name, namespace=None, **_kwargs):
        return dict(self.secret)

    def replace(self, api_version, plural, body, namespace=None, **_kwargs):
        self.written.append(body["metadata"]["resourceVersion"])
        raise K8sConflict("update Secret/auth/near-tls: conflict", status=409)


def test_secret_changed_between_read_and_write_is_not_overwritten(ca):
    import base64

    ca_cert, ca_key = ca
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = make_cert("near", key, ca_key, ca_cert.subject, start=now - 85 * DAY, end=now + 5 * DAY)
    secret = {"metadata": {"name": "near-tls", "namespace": "auth", "resourceVersion": "41"},
              "type": "kubernetes.io/tls",
              "data": {"tls.crt": base64.b64encode(pem(leaf).encode()).decode(),
                       "tls.key": base64.b64encode(pem(key).encode()).decode()}}
    client = _RacingClient(secret)
    params = {"sources": [{"type": "tls_secret", "namespace": "auth", "name": "near-tls"}],
              "issuer": {"type": "ca", "ca_cert": pem(ca_cert), "ca_key": pem(ca_key)}}
    task = make_task("cert_renew", CertRenewOptions.from_params, params, clients={K8sClient.from_params: client})
    with pytest.raises(RunbookError) as failed:
        run_cert_renew(task)
    assert client.written == ["41"]  # written with the resourceVersion it was read with
    assert "changed since it was read (resourceVersion 41)" in failed.value.msg
    result = failed.value.details  # the partial result the task returns beside failed: true
    assert result["api_requests"] == 2
    row = result["certificates"][0]
    assert row["renewed"] is False and row["new"] is None and "renewal failed" in row["msg"]
    assert result["changed"] is False and result["status"] == "critical"


# ----------------------------------------------------------------------------------------------
# Files: what may be read, and writing a key with its certificate


def test_read_pem_file_refuses_devices_fifos_directories_and_huge_files(tmp_path):
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.pem"
    huge.write_bytes(b"-" * (_cert_x509.MAX_PEM_BYTES + 1))
    for path, words in ((fifo, "not a regular file"), ("/dev/zero", "not a regular file"),
                        (tmp_path, "not a regular file"), (huge, "larger than any PEM file"),
                        (tmp_path / "missing", "No such file"), ("/tmp/a\x00b", "control character")):
        with pytest.raises(RunbookError, match=words):
            _cert_x509.read_pem_file(str(path), "issuer.ca_cert")
    (tmp_path / "ok.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    assert _cert_x509.read_pem_file(str(tmp_path / "ok.pem")) == b"-----BEGIN CERTIFICATE-----\n"


def test_text_or_file_never_shows_a_secret_that_is_no_path():
    secret = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg" * 3 + "\x00"
    with pytest.raises(RunbookError) as caught:
        _cert_x509.text_or_file(secret, "issuer.ca_key", secret=True)
    assert "MIGH" not in caught.value.msg and "issuer.ca_key holds no PEM text" in caught.value.msg


def test_binary_pem_and_unusable_keys_are_refused():
    with pytest.raises(RunbookError, match="cannot parse the PEM certificate"):
        _cert_x509.load_certificates(b"-----BEGIN CERTIFICATE-----\n\xff\xfe\x00\n-----END CERTIFICATE-----\n", "f")
    with pytest.raises(RunbookError, match="not a readable PEM private key"):
        _cert_x509.load_private_key(b"\xff\xfe" * 100, "key_path")
    from cryptography.hazmat.primitives.asymmetric import x25519

    x_key = x25519.X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(RunbookError, match="only RSA, ECDSA and Ed25519 keys sign certificates"):
        _cert_x509.load_private_key(x_key, "issuer.ca_key")


def test_write_together_leaves_every_file_when_one_cannot_be_written(tmp_path):
    key, crt = tmp_path / "site.key", tmp_path / "site.crt"
    key.write_bytes(b"old key")
    crt.write_bytes(b"old cert")
    with pytest.raises(RunbookError, match="cannot write %s.*nothing was written" % (tmp_path / "missing" / "ca.pem")):
        _cert_files.write_together([(str(key), b"new key", 0o600), (str(crt), b"new cert", None),
                                    (str(tmp_path / "missing" / "ca.pem"), b"ca", None)])
    assert key.read_bytes() == b"old key" and crt.read_bytes() == b"old cert"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.crt", "site.key"]
    _cert_files.write_together([(str(key), b"new key", 0o600), (str(crt), b"new cert", None)])
    assert key.read_bytes() == b"new key" and (key.stat().st_mode & 0o777) == 0o600
    assert crt.read_bytes() == b"new cert"


def test_unwritable_names_the_reason(tmp_path):
    assert _cert_files.unwritable(str(tmp_path / "new.pem")) is None
    assert _cert_files.unwritable(str(tmp_path)) == "it is a directory"
    assert _cert_files.unwritable(str(tmp_path / "no" / "x.pem")) == "its directory %s does not exist" % (tmp_path / "no")


@pytest.mark.parametrize("option, value, words", [
    ("remaining_days", -1, "remaining_days must be at least 0"),
    ("remaining_days", float("nan"), "remaining_days must be a finite number"),
    ("validity_days", 0, "validity_days must be at least 1"),
    ("validity_days", 10 ** 9, "at most 36500"),
    ("connect_timeout", 0, "connect_timeout must be above 0"),
    ("wait_timeout", -1, "wait_timeout must be above 0"),
])
def test_numbers_out_of_range_are_refused(option, value, words):
    with pytest.raises(RunbookError, match=words):
        options(**{option: value})


@pytest.mark.parametrize("source, words", [
    ({"type": "endpoint", "host": "127.0.0.1", "port": 0}, "sources[0].port"),
    ({"type": "endpoint", "host": "x" * 300}, "sources[0].host"),
    ({"type": "endpoint", "host": "h", "server_name": "a\nb"}, "sources[0].server_name"),
    ({"type": "file", "path": "/a\x00b"}, "sources[0].path"),
    ({"type": "tls_secret", "namespace": "Auth", "name": "x"}, "sources[0].namespace"),
    ({"type": "tls_secret", "namespace": "auth", "name": "../x"}, "sources[0].name"),
])
def test_hostile_source_values_are_refused(source, words):
    with pytest.raises(RunbookError) as caught:
        options(sources=[source])
    assert words in caught.value.msg


# ----------------------------------------------------------------------------------------------
# What the argument spec refuses, and what is left to the options


@pytest.mark.parametrize("source, words", [
    ({"type": "endpoint"}, "type is endpoint but all of the following are missing: host found in sources"),
    ({"type": "file"}, "type is file but all of the following are missing: path found in sources"),
    ({"type": "tls_secret", "namespace": "auth"},
     "type is tls_secret but any of the following are missing: name, label_selector found in sources"),
    ({"type": "certificate", "namespace": "auth"},
     "type is certificate but any of the following are missing: name, all found in sources"),
    ({"type": "tls_secret", "name": "a-tls"}, "missing parameter(s) required by 'name': namespace"),
    ({"type": "tls_secret", "label_selector": "tls=internal"}, "required by 'label_selector': namespace"),
    ({"type": "tls_secret", "namespace": "auth", "name": "a", "label_selector": "x=y"},
     "parameters are mutually exclusive: name|label_selector found in sources"),
    ({"type": "certificate", "namespace": "auth", "name": "a", "all": True},
     "parameters are mutually exclusive: name|all found in sources"),
    ({"type": "file", "key_path": "/k"}, "required by 'key_path': path"),
    ({"type": "nonsense"}, "value of type must be one of"),
])
def test_the_argument_spec_refuses_incomplete_sources(source, words):
    with pytest.raises(InvalidParams) as caught:
        validated("cert_renew", {"sources": [source]})
    assert words in str(caught.value)


def test_a_ca_issuer_needs_its_certificate_and_key():
    with pytest.raises(InvalidParams, match="type is ca but all of the following are missing: ca_cert, ca_key"):
        validated("cert_renew", {"sources": [{"type": "file", "path": "/x"}], "issuer": {"type": "ca"}})


@pytest.mark.parametrize("source, words", [
    ({"type": "tls_secret", "namespace": "auth", "label_selector": "x=y", "all": True}, "use label_selector to select"),
    ({"type": "certificate", "namespace": "auth", "label_selector": "x=y", "all": True}, "use name or all: true"),
    ({"type": "certificate", "namespace": "auth", "all": False}, "sources[0] (type certificate) needs name or all: true"),
])
def test_what_the_spec_cannot_express_is_refused_by_the_options(source, words):
    with pytest.raises(RunbookError, match=words.replace("(", "\\(").replace(")", "\\)").replace("[", "\\[")):
        options(sources=[source])


def test_defaults_come_from_the_argument_spec_and_kubernetes_is_only_for_its_sources():
    opts = options()
    assert (opts.remaining_days, opts.key_policy.validity_days, opts.key_policy.key_type) == (30, 90, "ecdsa-p256")
    assert opts.sources[0].port == 443 and opts.wait_timeout == 300 and opts.connect_timeout == 10
    assert opts.needs_kubernetes is False
    assert options(sources=[{"type": "certificate", "all": True}]).needs_kubernetes is True


def test_a_file_only_run_opens_no_kubernetes_client_and_says_what_it_did(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    (tmp_path / "far.crt").write_text(pem(make_cert("far", key, start=now - DAY, end=now + 200 * DAY)))

    class Untouched:
        requests = 99  # would show as api_requests had the run opened the client

    task = make_task("cert_renew", CertRenewOptions.from_params, {"sources": [
        {"type": "file", "path": str(tmp_path / "far.crt")}]}, clients={K8sClient.from_params: Untouched()})
    result = run_cert_renew(task)
    assert result["api_requests"] == 0 and result["changed"] is False
    assert result["msg"] == "1 certificate checked, 0 due for renewal, 0 renewed; status ok"
    assert "diff" not in result and task.warnings == []
