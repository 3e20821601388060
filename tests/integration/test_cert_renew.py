"""cert_renew against the harness API server, a local TLS endpoint and files; `openssl` is the independent judge."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import threading
import typing as t
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.harness.collection import run_module, run_playbook
from tests.harness.k8s import RESTRICTED_TOKEN, certificate, create_certificate, deployment, ts

CM = "cert-manager.io/v1"
DAY = datetime.timedelta(days=1)


# ----------------------------------------------------------------------------------------------
# Helpers: a CA, leaf certificates, Secrets


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "runbook lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(obj: t.Any) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CA:
    def __init__(self, cn: str = "runbook test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(_now() - 400 * DAY).not_valid_after(_now() + 3650 * DAY)
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                  key_encipherment=False, data_encipherment=False,
                                                  key_agreement=False, key_cert_sign=True, crl_sign=True,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))

    @property
    def cert_pem(self) -> str:
        return _pem(self.cert).decode()

    @property
    def key_pem(self) -> str:
        return _pem(self.key).decode()

    def leaf(self, cn: str, days_left: float, lifetime: float = 90.0,
             dns: t.Sequence[str] = ()) -> t.Tuple[x509.Certificate, t.Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        end = _now() + datetime.timedelta(days=days_left)
        start = end - datetime.timedelta(days=lifetime)
        sans = [x509.DNSName(d) for d in (dns or [cn])] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .sign(self.key, hashes.SHA256()))
        return cert, key


def tls_secret(client: t.Any, ns: str, name: str, cert: x509.Certificate, key: t.Any, ca: CA,
               labels: t.Optional[dict] = None) -> dict:
    data = {"tls.crt": _pem(cert), "tls.key": _pem(key), "ca.crt": _pem(ca.cert)}
    return client.create("v1", "secrets", {
        "metadata": {"name": name, "namespace": ns, "labels": dict(labels or {})}, "type": "kubernetes.io/tls",
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()}})


def secret_file(client: t.Any, ns: str, name: str, key: str, path: Path) -> Path:
    secret = client.get("v1", "secrets", name, ns)
    path.write_bytes(base64.b64decode(secret["data"][key]))
    return path


def openssl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


def cert_renew(cluster: t.Any, check_mode: bool = False, token: t.Optional[str] = None, diff: bool = False,
               **args: t.Any) -> dict:
    params = dict(cluster.auth(token) if token else cluster.auth())
    params.update(args)
    result = run_module("cert_renew", params, check_mode=check_mode, diff=diff)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def one(result: dict, obj: str) -> dict:
    found = [c for c in result["certificates"] if c["object"] == obj]
    assert len(found) == 1, (obj, result)
    return found[0]


def ca_issuer(ca: CA) -> dict:
    return {"type": "ca", "ca_cert": ca.cert_pem, "ca_key": ca.key_pem}


# ----------------------------------------------------------------------------------------------
# tls_secret + CA issuer


def test_secret_near_expiry_is_renewed_by_the_ca_and_passes_openssl(kube_cluster, kube_admin, kube_namespace,
                                                                    tmp_path):
    ns = kube_namespace
    ca = CA()
    near, near_key = ca.leaf("near.%s.svc" % ns, days_left=5)
    far, far_key = ca.leaf("far.%s.svc" % ns, days_left=200, lifetime=365)
    tls_secret(kube_admin, ns, "near-tls", near, near_key, ca, {"tls": "internal"})
    far_before = tls_secret(kube_admin, ns, "far-tls", far, far_key, ca, {"tls": "internal"})
    kube_admin.create("v1", "secrets", {"metadata": {"name": "plain", "namespace": ns, "labels": {"tls": "internal"}},
                                        "type": "Opaque", "stringData": {"x": "y"}})

    result = cert_renew(kube_cluster, diff=True, sources=[{"type": "tls_secret", "namespace": ns,
                                                           "label_selector": "tls=internal"}],
                        issuer=ca_issuer(ca), validity_days=90)
    assert not result.get("failed"), result
    assert result["changed"] is True and result["renewed"] == 1
    assert len(result["certificates"]) == 2  # the Opaque Secret is not a TLS Secret
    near_row = one(result, "Secret/%s/near-tls" % ns)
    assert near_row["should_renew"] is True and near_row["renewed"] is True
    assert near_row["msg"].startswith("expires in %d days, below 30; renewed by the ca issuer"
                                      % int(near_row["days_left"])), near_row["msg"]
    assert 4 < near_row["days_left"] <= 5
    far_row = one(result, "Secret/%s/far-tls" % ns)
    assert far_row["should_renew"] is False and far_row["renewed"] is False
    assert "more than 30 days left" in far_row["msg"]
    assert "PRIVATE KEY" not in json.dumps(result)
    assert result["diff"]["before"]["Secret/%s/near-tls" % ns]["serial"] == near_row["serial"]

    # The independent checks: openssl verifies the chain and that it is valid for 80 more days.
    crt = secret_file(kube_admin, ns, "near-tls", "tls.crt", tmp_path / "near.crt")
    ca_file = secret_file(kube_admin, ns, "near-tls", "ca.crt", tmp_path / "ca.crt")
    key_file = secret_file(kube_admin, ns, "near-tls", "tls.key", tmp_path / "near.key")
    assert ca_file.read_text() == ca.cert_pem
    verify = openssl("verify", "-CAfile", str(ca_file), str(crt))
    assert verify.returncode == 0 and verify.stdout.strip().endswith(": OK"), verify.stdout + verify.stderr
    checkend = openssl("x509", "-checkend", str(80 * 86400), "-noout", "-in", str(crt))
    assert checkend.returncode == 0, checkend.stdout + checkend.stderr
    assert openssl("x509", "-checkend", str(91 * 86400), "-noout", "-in", str(crt)).returncode == 1
    # Same subject and SANs, new serial, and the key in the Secret belongs to the certificate.
    new = x509.load_pem_x509_certificate(crt.read_bytes())
    assert new.subject == near.subject
    assert (new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            == near.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    assert new.serial_number != near.serial_number
    assert int(near_row["new"]["serial"], 16) == new.serial_number
    pub_cert = openssl("x509", "-noout", "-pubkey", "-in", str(crt)).stdout
    pub_key = openssl("pkey", "-pubout", "-in", str(key_file)).stdout
    assert pub_cert and pub_cert == pub_key
    # The far one was not touched.
    far_after = kube_admin.get("v1", "secrets", "far-tls", ns)
    assert far_after["metadata"]["resourceVersion"] == far_before["metadata"]["resourceVersion"]

    # Second run: nothing is due any more.
    again = cert_renew(kube_cluster, sources=[{"type": "tls_secret", "namespace": ns, "label_selector": "tls=internal"}],
                       issuer=ca_issuer(ca))
    assert again["changed"] is False and again["renewed"] == 0, again
    assert again["status"] == "ok"


def test_issuer_whose_key_does_not_match_is_refused_before_anything_is_written(
        kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    ca, other = CA(), CA("another CA")
    near, near_key = ca.leaf("near", days_left=5)
    before = tls_secret(kube_admin, ns, "near-tls", near, near_key, ca)
    result = cert_renew(kube_cluster, sources=[{"type": "tls_secret", "namespace": ns, "name": "near-tls"}],
                        issuer={"type": "ca", "ca_cert": ca.cert_pem, "ca_key": other.key_pem})
    assert result.get("failed") is True
    assert "ca_key does not match the public key of issuer.ca_cert" in result["msg"]
    assert "nothing was renewed or written" in result["msg"]
    assert "PRIVATE KEY" not in json.dumps(result)
    after = kube_admin.get("v1", "secrets", "near-tls", ns)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["data"] == before["data"]


def test_check_mode_reports_what_it_would_renew_and_writes_nothing(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    ca = CA()
    near, near_key = ca.leaf("near", days_left=5)
    secret_before = tls_secret(kube_admin, ns, "near-tls", near, near_key, ca)
    cert_before = create_certificate(kube_admin, certificate("soon", ns, _now() + 5 * DAY))
    result = cert_renew(kube_cluster, check_mode=True,
                        sources=[{"type": "tls_secret", "namespace": ns, "name": "near-tls"},
                                 {"type": "certificate", "namespace": ns, "all": True}],
                        issuer=ca_issuer(ca))
    assert not result.get("failed"), result
    assert result["changed"] is True and result["renewed"] == 2
    assert all(c["renewed"] and c["new"] is None for c in result["certificates"])
    assert "would renew" in one(result, "Secret/%s/near-tls" % ns)["msg"]
    assert "would set Issuing" in one(result, "Certificate/%s/soon" % ns)["msg"]
    assert result["status"] == "warning"
    assert kube_admin.get("v1", "secrets", "near-tls", ns)["metadata"]["resourceVersion"] == \
        secret_before["metadata"]["resourceVersion"]
    cert_after = kube_admin.get(CM, "certificates", "soon", ns)
    assert cert_after["metadata"]["resourceVersion"] == cert_before["metadata"]["resourceVersion"]
    assert not [c for c in cert_after["status"]["conditions"] if c["type"] == "Issuing"]


def test_secret_without_issuer_is_reported_not_renewed(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    ca = CA()
    expired, key = ca.leaf("old", days_left=-3)
    tls_secret(kube_admin, ns, "old-tls", expired, key, ca)
    result = cert_renew(kube_cluster, sources=[{"type": "tls_secret", "namespace": ns, "name": "old-tls"},
                                               {"type": "tls_secret", "namespace": ns, "name": "missing-tls"}])
    assert not result.get("failed"), result
    assert result["changed"] is False
    row = one(result, "Secret/%s/old-tls" % ns)
    assert row["should_renew"] is True and row["renewed"] is False
    assert row["msg"].startswith("expired 3 days ago") and "no issuer given" in row["msg"]
    assert result["status"] == "critical" and result["summary"]["critical"] == 2
    missing = one(result, "Secret/%s/missing-tls" % ns)
    assert "not found" in missing["msg"]


def test_restricted_credentials_give_unknown_not_ok(kube_cluster, kube_namespace):
    result = cert_renew(kube_cluster, token=RESTRICTED_TOKEN,
                        sources=[{"type": "tls_secret", "namespace": kube_namespace, "name": "any"}])
    assert not result.get("failed"), result
    assert result["status"] == "unknown"
    assert result["findings"][0]["details"]["status"] == 403


# ----------------------------------------------------------------------------------------------
# cert-manager Certificates


def issuing(cert: dict) -> t.List[dict]:
    return [c for c in (cert.get("status") or {}).get("conditions") or [] if c["type"] == "Issuing"]


def test_certificate_gets_the_issuing_condition_exactly_once(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    create_certificate(kube_admin, certificate("soon", ns, _now() + 5 * DAY))
    create_certificate(kube_admin, certificate("later", ns, _now() + 200 * DAY))
    args = dict(sources=[{"type": "certificate", "namespace": ns, "all": True}])
    first = cert_renew(kube_cluster, diff=True, **args)
    assert not first.get("failed"), first
    assert first["changed"] is True and first["renewed"] == 1
    soon = one(first, "Certificate/%s/soon" % ns)
    assert soon["renewed"] is True and "Issuing set" in soon["msg"]
    assert one(first, "Certificate/%s/later" % ns)["renewed"] is False
    assert first["diff"]["after"]["Certificate/%s/soon" % ns] == {"Issuing": "True (ManuallyTriggered)"}
    obj = kube_admin.get(CM, "certificates", "soon", ns)
    conds = issuing(obj)
    assert len(conds) == 1
    assert conds[0]["status"] == "True" and conds[0]["reason"] == "ManuallyTriggered"
    assert conds[0]["observedGeneration"] == obj["metadata"]["generation"]
    assert [c["type"] for c in obj["status"]["conditions"]].count("Ready") == 1  # other conditions kept
    assert not issuing(kube_admin.get(CM, "certificates", "later", ns))
    version = obj["metadata"]["resourceVersion"]

    second = cert_renew(kube_cluster, **args)
    assert not second.get("failed"), second
    assert second["changed"] is False and second["renewed"] == 0
    assert "already issuing" in one(second, "Certificate/%s/soon" % ns)["msg"]
    assert kube_admin.get(CM, "certificates", "soon", ns)["metadata"]["resourceVersion"] == version


def test_wait_sees_the_new_certificate_and_restarts_its_consumers(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    old_end = _now() + 5 * DAY
    create_certificate(kube_admin, certificate("api", ns, old_end))
    consumer = deployment("api", ns)
    consumer["spec"]["template"]["spec"]["volumes"] = [{"name": "tls", "secret": {"secretName": "api-tls"}}]
    kube_admin.create("apps/v1", "deployments", consumer)
    new_end = _now() + 90 * DAY
    stop = threading.Event()

    def cert_manager() -> None:
        """Plays cert-manager: on Issuing, write a later notAfter, Ready, and drop Issuing."""
        while not stop.is_set():
            current = kube_admin.get(CM, "certificates", "api", ns)
            if issuing(current):
                current["status"]["conditions"] = [c for c in current["status"]["conditions"] if c["type"] != "Issuing"]
                current["status"]["notAfter"] = ts(new_end)
                current["status"]["notBefore"] = ts(_now())
                kube_admin.update_status(CM, "certificates", current)
                return
            stop.wait(0.3)

    thread = threading.Thread(target=cert_manager, daemon=True)
    thread.start()
    try:
        result = cert_renew(kube_cluster, sources=[{"type": "certificate", "namespace": ns, "name": "api"}],
                            wait=True, wait_timeout=60, restart_consumers=True)
    finally:
        stop.set()
        thread.join(5)
    assert not result.get("failed"), result
    row = one(result, "Certificate/%s/api" % ns)
    assert row["renewed"] is True and "re-issued: Ready" in row["msg"]
    assert row["new"]["not_after"] == ts(new_end)
    assert row["days_left"] < 6  # judged on the certificate as it was before the renewal
    assert result["consumers"] == [{"kind": "Deployment", "namespace": ns, "name": "api", "secrets": ["api-tls"],
                                    "restarted": True}]
    annotations = kube_admin.get("apps/v1", "deployments", "api", ns)["spec"]["template"]["metadata"].get(
        "annotations") or {}
    assert "kubectl.kubernetes.io/restartedAt" in annotations


def test_wait_times_out_when_cert_manager_does_nothing(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    create_certificate(kube_admin, certificate("stuck", ns, _now() + 2 * DAY))
    result = cert_renew(kube_cluster, sources=[{"type": "certificate", "namespace": ns, "name": "stuck"}],
                        wait=True, wait_timeout=2)
    assert result.get("failed") is True
    assert "Certificate/%s/stuck was not Ready with a later notAfter within 2s" % ns in result["msg"]
    assert result["api_requests"] > 0 and result["status"] == "critical"  # the partial result is kept
    assert one(result, "Certificate/%s/stuck" % ns)["renewed"] is True  # Issuing was set
    assert issuing(kube_admin.get(CM, "certificates", "stuck", ns))


def test_not_ready_certificate_is_critical(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    create_certificate(kube_admin, certificate("broken", ns, _now() + 60 * DAY, ready=False, reason="Failed",
                                               message="issuer not found"))
    result = cert_renew(kube_cluster, check_mode=True, sources=[{"type": "certificate", "namespace": ns, "name": "broken"}])
    row = one(result, "Certificate/%s/broken" % ns)
    assert "not Ready (Failed: issuer not found)" in row["msg"]
    assert result["status"] == "critical" and row["should_renew"] is False


# ----------------------------------------------------------------------------------------------
# Consumers


def test_consumers_are_restarted_only_when_asked(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    ca = CA()
    for name in ("one-tls", "two-tls"):
        cert, key = ca.leaf(name, days_left=3)
        tls_secret(kube_admin, ns, name, cert, key, ca)
    mounts = deployment("mounts", ns)
    mounts["spec"]["template"]["spec"]["volumes"] = [{"name": "tls", "secret": {"secretName": "one-tls"}}]
    env_ref = deployment("env-ref", ns)
    env_ref["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "CERT", "valueFrom": {"secretKeyRef": {"name": "two-tls", "key": "tls.crt"}}}]
    unrelated = deployment("unrelated", ns)
    for body in (mounts, env_ref, unrelated):
        kube_admin.create("apps/v1", "deployments", body)

    def restarted(name: str) -> bool:
        template = kube_admin.get("apps/v1", "deployments", name, ns)["spec"]["template"]["metadata"]
        return "kubectl.kubernetes.io/restartedAt" in (template.get("annotations") or {})

    first = cert_renew(kube_cluster, sources=[{"type": "tls_secret", "namespace": ns, "name": "one-tls"}],
                       issuer=ca_issuer(ca))
    assert first["renewed"] == 1, first
    assert first["consumers"] == [{"kind": "Deployment", "namespace": ns, "name": "mounts", "secrets": ["one-tls"],
                                   "restarted": False}]
    assert not restarted("mounts") and not restarted("env-ref") and not restarted("unrelated")

    second = cert_renew(kube_cluster, sources=[{"type": "tls_secret", "namespace": ns, "name": "two-tls"}],
                        issuer=ca_issuer(ca), restart_consumers=True)
    assert second["renewed"] == 1 and second["changed"] is True, second
    assert [(c["name"], c["restarted"]) for c in second["consumers"]] == [("env-ref", True)]
    assert restarted("env-ref") and not restarted("mounts") and not restarted("unrelated")


# ----------------------------------------------------------------------------------------------
# Endpoints and files (no Kubernetes involved)


class TLSServer:
    """A TLS endpoint on a free loopback port that completes handshakes with the given certificate."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert_file), str(key_file))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _addr = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                conn.settimeout(5)
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass
            finally:
                conn.close()

    def __enter__(self) -> "TLSServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: t.Any) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_endpoint_certificate_is_reported_with_its_days_left(tmp_path):
    ca = CA()
    cert, key = ca.leaf("endpoint.test", days_left=12.5)
    (tmp_path / "ep.crt").write_bytes(_pem(cert))
    (tmp_path / "ep.key").write_bytes(_pem(key))
    closed = _free_port()
    with TLSServer(tmp_path / "ep.crt", tmp_path / "ep.key") as server:
        result = run_module("cert_renew", {"sources": [
            {"type": "endpoint", "host": "127.0.0.1", "port": server.port, "server_name": "endpoint.test"},
            {"type": "endpoint", "host": "127.0.0.1", "port": closed}], "connect_timeout": 3})
    assert not result.get("failed"), result
    assert result["changed"] is False and result["api_requests"] == 0  # no Kubernetes client was opened
    row = one(result, "Endpoint/127.0.0.1:%d/endpoint.test" % server.port)
    assert 12 < row["days_left"] <= 12.5
    assert row["msg"].startswith("expires in 12 days, below 30") and "report only" in row["msg"]
    assert row["should_renew"] is True and row["renewed"] is False
    assert row["subject"] == "CN=endpoint.test,O=runbook lab"
    assert row["sans"] == ["DNS:endpoint.test", "IP:127.0.0.1"]
    assert int(row["serial"], 16) == cert.serial_number
    down = one(result, "Endpoint/127.0.0.1:%d" % closed)
    assert "cannot connect: connection refused" in down["msg"]
    assert result["status"] == "critical"


def test_file_is_renewed_self_signed_and_passes_openssl(tmp_path):
    ca = CA()
    cert, key = ca.leaf("file.test", days_left=10)
    crt, key_file = tmp_path / "site.crt", tmp_path / "site.key"
    crt.write_bytes(_pem(cert))
    key_file.write_bytes(_pem(key))
    crt.chmod(0o644)
    key_file.chmod(0o600)
    args = {"sources": [{"type": "file", "path": str(crt), "key_path": str(key_file)}],
            "issuer": {"type": "selfsigned"}, "validity_days": 120, "key_type": "rsa-2048"}
    dry = run_module("cert_renew", args, check_mode=True)
    assert dry["changed"] is True and crt.read_bytes() == _pem(cert), dry
    result = run_module("cert_renew", args)
    assert not result.get("failed"), result
    assert result["renewed"] == 1
    verify = openssl("verify", "-CAfile", str(crt), str(crt))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert openssl("x509", "-checkend", str(110 * 86400), "-noout", "-in", str(crt)).returncode == 0
    text = openssl("x509", "-noout", "-text", "-in", str(crt)).stdout
    assert "DNS:file.test" in text and "IP Address:127.0.0.1" in text
    assert "rsaEncryption" in text and "Public-Key: (2048 bit)" in text
    assert "Issuer: O = runbook lab, CN = file.test" in text
    assert (key_file.stat().st_mode & 0o777) == 0o600 and (crt.stat().st_mode & 0o777) == 0o644
    pub_cert = openssl("x509", "-noout", "-pubkey", "-in", str(crt)).stdout
    assert pub_cert == openssl("pkey", "-pubout", "-in", str(key_file)).stdout
    assert run_module("cert_renew", args)["changed"] is False


def test_bad_source_options_fail_with_a_clear_message():
    result = run_module("cert_renew", {"sources": [{"type": "endpoint"}]})
    assert result.get("failed") is True
    assert "type is endpoint but all of the following are missing: host found in sources" in result["msg"]
    result = run_module("cert_renew", {"sources": [{"type": "file", "path": "/nonexistent"}],
                                       "remaining_percentage": 33})
    assert result.get("failed") is True and "between 0 and 1" in result["msg"]


def test_a_failed_renewal_keeps_the_other_results_and_the_old_files(tmp_path):
    ca = CA()
    good_cert, good_key = ca.leaf("good.test", days_left=4)
    bad_cert, bad_key = ca.leaf("bad.test", days_left=4)
    good, bad = tmp_path / "good.crt", tmp_path / "bad.crt"
    good.write_bytes(_pem(good_cert))
    bad.write_bytes(_pem(bad_cert))
    (tmp_path / "good.key").write_bytes(_pem(good_key))
    mismatched = tmp_path / "mismatched.key"
    mismatched.write_bytes(_pem(good_key))  # not the key of bad.crt
    result = run_module("cert_renew", {
        "sources": [{"type": "file", "path": str(bad), "key_path": str(mismatched)},
                    {"type": "file", "path": str(good), "key_path": str(tmp_path / "good.key")},
                    {"type": "file", "path": str(tmp_path / "nowhere.crt")}],
        "issuer": ca_issuer(ca), "reuse_key": True})
    assert result.get("failed") is True
    assert "reuse_key is set but the existing private key (%s) does not match" % mismatched in result["msg"]
    assert result["renewed"] == 1
    bad_row = one(result, "File%s" % bad)
    assert bad_row["renewed"] is False and "renewal failed" in bad_row["msg"]
    good_row = one(result, "File%s" % good)
    assert good_row["renewed"] is True
    assert "cannot read" in one(result, "File%s" % (tmp_path / "nowhere.crt"))["msg"]
    assert bad.read_bytes() == _pem(bad_cert) and mismatched.read_bytes() == _pem(good_key)
    # reuse_key kept the key: the renewed certificate carries the same public key.
    renewed = x509.load_pem_x509_certificates(good.read_bytes())
    assert renewed[0].public_key().public_numbers() == good_key.public_key().public_numbers()
    assert renewed[1] == ca.cert  # the CA follows the certificate in the file
    (tmp_path / "ca.pem").write_bytes(_pem(ca.cert))
    assert openssl("verify", "-CAfile", str(tmp_path / "ca.pem"), str(good)).returncode == 0


def test_no_key_material_in_verbose_playbook_output(tmp_path):
    ca = CA()
    cert, key = ca.leaf("verbose.test", days_left=3)
    (tmp_path / "v.crt").write_bytes(_pem(cert))
    (tmp_path / "v.key").write_bytes(_pem(key))
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - runbook.ops.cert_renew:\n"
        "        sources: [{type: file, path: '%s', key_path: '%s'}]\n"
        "        issuer: {type: ca, ca_cert: '{{ ca_cert }}', ca_key: '{{ ca_key }}'}\n"
        "      register: out\n"
        "    - ansible.builtin.debug: {var: out}\n" % (tmp_path / "v.crt", tmp_path / "v.key"))
    proc = run_playbook(playbook, {"ca_cert": ca.cert_pem, "ca_key": ca.key_pem}, verbosity=4)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "renewed by the ca issuer" in proc.stdout
    body = "".join(ca.key_pem.strip().splitlines()[1:-1])
    new_key = "".join((tmp_path / "v.key").read_text().strip().splitlines()[1:-1])
    flat = proc.stdout.replace("\\n", "").replace("\n", "")
    # Skip the DER header (the same for every P-256 key): look for the private scalar.
    assert body[52:92] not in flat and new_key[52:92] not in flat
    assert "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" in flat or "********" in flat


# ----------------------------------------------------------------------------------------------
# Plain-text ports, read-only and full file systems


class PlainServer:
    """A TCP listener that is no TLS server: it answers every connection with ``reply`` (an HTTP error,
    as a plain-text web server does), or with nothing at all when ``reply`` is empty (as Redis does
    until it sees a whole command line)."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.conns: t.List[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _addr = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conns.append(conn)
            if self.reply:
                try:
                    conn.settimeout(2)
                    conn.recv(4096)
                    conn.sendall(self.reply)
                except OSError:
                    pass

    def __enter__(self) -> "PlainServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: t.Any) -> None:
        self.stop.set()
        self.thread.join(5)
        for conn in self.conns:
            conn.close()
        self.sock.close()


def test_an_endpoint_that_does_not_speak_tls_is_named_as_such():
    http = b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
    with PlainServer(http) as web, PlainServer(b"") as silent:
        result = run_module("cert_renew", {"sources": [
            {"type": "endpoint", "host": "127.0.0.1", "port": web.port},
            {"type": "endpoint", "host": "127.0.0.1", "port": silent.port}], "connect_timeout": 1.5})
    assert "Traceback" not in result.stderr, result.stderr
    assert not result.get("failed"), result
    answered = one(result, "Endpoint/127.0.0.1:%d" % web.port)
    assert "TLS endpoint 127.0.0.1:%d does not speak TLS on this port" % web.port in answered["msg"], answered
    waited = one(result, "Endpoint/127.0.0.1:%d" % silent.port)
    assert "no TLS handshake reply from TLS endpoint 127.0.0.1:%d" % silent.port in waited["msg"], waited
    assert "probably does not speak TLS" in waited["msg"]
    assert result["status"] == "critical"
    for row in (answered, waited):
        assert "WRONG_VERSION_NUMBER" not in row["msg"].split("(")[0] and "timed out" not in row["msg"]


def _mount_tmpfs(path: Path, size: str = "1m") -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size, "tmpfs", str(path)], check=True)


def _remount_read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


@pytest.fixture
def mounts():
    """tmpfs file systems for one test (root ignores file modes, a read-only mount stops it); unmounted after."""
    made: t.List[Path] = []

    def make(path: Path, size: str = "1m") -> Path:
        _mount_tmpfs(path, size)
        made.append(path)
        return path
    yield make
    for path in reversed(made):
        subprocess.run(["umount", "-l", str(path)], check=False)


def _file_pair(ca: "CA", crt: Path, key_file: Path, cn: str = "ro.test") -> t.Tuple[bytes, bytes]:
    cert, key = ca.leaf(cn, days_left=5)
    crt.write_bytes(_pem(cert))
    key_file.write_bytes(_pem(key))
    return crt.read_bytes(), key_file.read_bytes()


@pytest.mark.parametrize("check_mode", [True, False])
def test_key_path_on_a_read_only_file_system_fails_cleanly_and_keeps_both_files(tmp_path, mounts, check_mode):
    ca = CA()
    keys = mounts(tmp_path / "keys")
    crt, key_file = tmp_path / "site.crt", keys / "site.key"
    old_cert, old_key = _file_pair(ca, crt, key_file)
    _remount_read_only(keys)
    result = run_module("cert_renew", {"sources": [{"type": "file", "path": str(crt), "key_path": str(key_file)}],
                                       "issuer": ca_issuer(ca)}, check_mode=check_mode)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.get("failed") is True, result
    msg = result["msg"]
    assert "unexpected" not in msg.lower() and "OSError" not in msg, msg
    assert ("renew File%s: cannot write key_path %s: its directory %s is on a read-only file system; nothing was written"
            % (crt, key_file, keys)) in msg, msg
    row = one(result, "File%s" % crt)
    assert row["renewed"] is False and "renewal failed" in row["msg"]
    assert result["changed"] is False
    assert crt.read_bytes() == old_cert and key_file.read_bytes() == old_key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys", "site.crt"]


def test_certificate_on_a_read_only_file_system_with_reuse_key(tmp_path, mounts):
    ca = CA()
    tls = mounts(tmp_path / "tls")
    crt, key_file = tls / "site.crt", tls / "site.key"
    old_cert, old_key = _file_pair(ca, crt, key_file)
    _remount_read_only(tls)
    result = run_module("cert_renew", {"sources": [{"type": "file", "path": str(crt), "key_path": str(key_file)}],
                                       "issuer": ca_issuer(ca), "reuse_key": True})
    assert result.get("failed") is True, result
    assert "cannot write path %s: its directory %s is on a read-only file system" % (crt, tls) in result["msg"]
    assert crt.read_bytes() == old_cert and key_file.read_bytes() == old_key


def test_a_file_system_that_fills_up_after_the_new_key_keeps_the_old_key_and_certificate(tmp_path, mounts):
    """The new key fits, the certificate (with a long CA chain, more than one block) does not: the old
    key must stay, or the server would load a key that does not match its certificate."""
    ca = CA()
    issuer = ca_issuer(ca)
    issuer["ca_cert"] += "".join(CA("intermediate %d" % n).cert_pem for n in range(8))
    tls = mounts(tmp_path / "tls", size="64k")
    crt, key_file = tls / "site.crt", tls / "site.key"
    old_cert, old_key = _file_pair(ca, crt, key_file)
    info = os.statvfs(tls)
    assert len(issuer["ca_cert"]) > info.f_bsize
    (tls / "filler").write_bytes(b"\0" * (info.f_bavail * info.f_bsize - info.f_bsize))  # one block left
    result = run_module("cert_renew", {"sources": [{"type": "file", "path": str(crt), "key_path": str(key_file)}],
                                       "issuer": issuer})
    assert "Traceback" not in result.stderr, result.stderr
    assert result.get("failed") is True, result
    assert key_file.read_bytes() == old_key, "a new key was left beside the old certificate"
    assert crt.read_bytes() == old_cert
    assert "cannot write %s: No space left on device; nothing was written" % crt in result["msg"], result["msg"]
    assert sorted(p.name for p in tls.iterdir()) == ["filler", "site.crt", "site.key"]
