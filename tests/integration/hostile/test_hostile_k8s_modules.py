"""Hostile input against ``jwt_rotate``, ``cert_renew`` and ``ns_isolate``: every value a user or a
survey can set (names with traversal, separators, control bytes, upper case or too long; numbers
that are zero, negative, huge or not finite; binary files, devices, FIFOs and directories where PEM
text is expected; read-only destinations; planted records).

Every case ends in a clean failure of the module's own (or, for a certificate source that cannot
be read, in a ``critical`` finding as documented), never an "unexpected" exception; no secret is
printed; and nothing changes in the cluster or on disk outside the place the test allows.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import subprocess
import typing as t
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.harness.collection import run_module
from tests.harness.hostile import CONTROL, TOO_LONG, TRAVERSAL, assert_clean_failure, tree_snapshot
from tests.harness.k8s import ADMIN_TOKEN, namespace, wait_for

NOW = "2026-03-01T00:00:00Z"
SECRET = "hostile-keys"
SECRET_VALUE = "hostile-db-password-5f1c"
PASSPHRASE = "hostile-ca-passphrase-93a7"
BAD_NAMES = TRAVERSAL + CONTROL + TOO_LONG + ["Upper", "a_b", "-dash"]
SOME_BAD_NAMES = ["../outside", "a/../../b", "with\x00nul", "line\nbreak", "x" * 300, "Upper"]
BAD_KEYS = TRAVERSAL + CONTROL + TOO_LONG + ["..hidden", "a b"]
STATE_KINDS = (("v1", "secrets"), ("v1", "configmaps"), ("networking.k8s.io/v1", "networkpolicies"),
               ("apps/v1", "deployments"), ("v1", "services"), ("v1", "pods"))


# ----------------------------------------------------------------------------------------------
# The cluster: one namespace with a key set, a Secret and a Pod, and a neighbour called "outside"


class Place(t.NamedTuple):
    ns: str
    outside: str
    private: t.List[str]  # private key material of the stored key set


@pytest.fixture(scope="module")
def place(kube_cluster, kube_admin) -> t.Iterator[Place]:
    ns, outside = "hostile-" + uuid.uuid4().hex[:8], "outside"
    for name in (ns, outside):
        if kube_admin.get("v1", "namespaces", name, missing_ok=True) is None:
            namespace(kube_admin, name, {"runbook.test/hostile": "true"})
        wait_for(lambda: kube_admin.get("v1", "configmaps", "kube-root-ca.crt", name, missing_ok=True),
                 what="kube-root-ca.crt in %s" % name)
    kube_admin.create("v1", "secrets", {"metadata": {"name": "db-credentials", "namespace": ns},
                                        "type": "Opaque", "stringData": {"password": SECRET_VALUE}})
    kube_admin.create("v1", "pods", {"metadata": {"name": "web-0", "namespace": ns, "labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "web", "image": "example/web:1"}]}})
    made = run_module("jwt_rotate", dict(kube_cluster.auth(), namespace=ns, secret_name=SECRET, algorithm="ES256",
                                         now=NOW))
    assert not made.get("failed"), made
    made = run_module("jwt_rotate", dict(kube_cluster.auth(), namespace=ns, secret_name=SECRET, algorithm="ES256",
                                         now="2026-03-01T01:00:00Z", force=True))
    assert not made.get("failed"), made
    stored = json.loads(base64.b64decode(kube_admin.get("v1", "secrets", SECRET, ns)["data"]["jwks.json"]))
    private = [key["d"] for key in stored["keys"]]
    yield Place(ns, outside, private)
    kube_admin.delete("v1", "namespaces", ns, missing_ok=True)


def cluster_state(admin, names: t.Sequence[str]) -> t.Dict[str, str]:
    """Every object a module could write, in the namespaces that matter, with its resourceVersion."""
    state = {}
    for ns in names:
        for api_version, plural in STATE_KINDS:
            for obj in admin.list(api_version, plural, ns):
                state["%s/%s/%s" % (plural, ns, obj["metadata"]["name"])] = obj["metadata"]["resourceVersion"]
    return state


@pytest.fixture
def unchanged(kube_admin, place):
    """Asserts after the test that nothing changed in the test namespace, in "outside", in default and
    in kube-system."""
    names = (place.ns, place.outside, "default", "kube-system")
    before = cluster_state(kube_admin, names)
    yield
    assert cluster_state(kube_admin, names) == before


def secrets_of(place: Place) -> t.List[str]:
    return [ADMIN_TOKEN, SECRET_VALUE, PASSPHRASE] + place.private


def set_option(args: dict, option: str, value: t.Any) -> dict:
    """``option`` may be ``a.b`` (a suboption) or ``a[0].b`` (of the first list item)."""
    args = json.loads(json.dumps(args))
    head, _dot, rest = option.partition(".")
    if head.endswith("[0]"):
        head = head[:-3]
        if rest:
            args[head][0][rest] = value
        else:
            args[head] = [value]
    elif rest:
        args.setdefault(head, {})[rest] = value
    else:
        args[option] = value
    return args


# ----------------------------------------------------------------------------------------------
# jwt_rotate


def jwt_args(cluster, place: Place) -> dict:
    return dict(cluster.auth(), namespace=place.ns, secret_name=SECRET, algorithm="ES256", now="2026-03-01T02:00:00Z",
                public_jwks={"name": "hostile-public"}, active_key_secret={"name": "hostile-active"},
                restart=[{"name": "missing-on-purpose"}])


JWT_NAME_OPTIONS = {
    "namespace": BAD_NAMES + [""],
    "secret_name": BAD_NAMES + [""],
    "secret_key": BAD_KEYS,
    "public_jwks.name": SOME_BAD_NAMES,
    "public_jwks.namespace": SOME_BAD_NAMES,
    "public_jwks.key": ["../outside", "a/b", "with\x00nul", "x" * 300],
    "active_key_secret.name": SOME_BAD_NAMES,
    "active_key_secret.namespace": SOME_BAD_NAMES,
    "active_key_secret.key": ["../outside", "a/b", "with\x00nul", "x" * 300],
    "restart[0].name": SOME_BAD_NAMES,
    "restart[0].namespace": SOME_BAD_NAMES,
}


@pytest.mark.parametrize("option, value", [(o, v) for o, values in JWT_NAME_OPTIONS.items() for v in values])
def test_jwt_rotate_refuses_hostile_names(kube_cluster, place, unchanged, option, value):
    result = run_module("jwt_rotate", set_option(jwt_args(kube_cluster, place), option, value))
    msg = assert_clean_failure(result, secrets=secrets_of(place))
    assert option.split(".")[-1].replace("[0]", "") in msg, msg


@pytest.mark.parametrize("kid", TRAVERSAL + CONTROL + TOO_LONG + ["all-but-not-all"])
@pytest.mark.parametrize("check_mode", [False, True])
def test_jwt_rotate_revoke_of_a_hostile_kid_revokes_nothing(kube_cluster, place, unchanged, kid, check_mode):
    args = dict(jwt_args(kube_cluster, place), revoke=[kid], restart=[])
    result = run_module("jwt_rotate", args, check_mode=check_mode)
    msg = assert_clean_failure(result, secrets=secrets_of(place), mentions=["revoke"])
    assert "control character" in msg or ("no key with kid" in msg and "(active, ES256)" in msg), msg


@pytest.mark.parametrize("option, value, words", [
    ("key_size", -1, "key_size"), ("key_size", 0, "key_size"), ("key_size", 10 ** 9, "key_size"),
    ("rotate_after", "0", "rotate_after"), ("rotate_after", "-1d", "rotate_after"),
    ("rotate_after", "1e308", "rotate_after"), ("rotate_after", "nan", "rotate_after"),
    ("rotate_after", "inf", "rotate_after"), ("rotate_after", "soon", "rotate_after"),
    ("grace_period", "-1", "grace_period"), ("grace_period", "inf", "grace_period"),
    ("grace_period", "1e20", "grace_period"), ("prepublish", "40d", "prepublish"),
    ("prepublish", "-5m", "prepublish"), ("wait_timeout", 0, "wait_timeout"), ("wait_timeout", -5, "wait_timeout"),
    ("wait_timeout", 10 ** 9, "wait_timeout"), ("now", "9999-12-31T23:59:59Z", "now"),
    ("now", "0001-01-01T00:00:00Z", "now"), ("now", "yesterday", "now"), ("now", "2026-03-01\x00", "now"),
])
def test_jwt_rotate_refuses_hostile_numbers_and_durations(kube_cluster, place, unchanged, option, value, words):
    args = dict(jwt_args(kube_cluster, place), restart=[], wait=True)
    if option == "key_size":
        args["algorithm"] = "RS256"
    result = run_module("jwt_rotate", dict(args, **{option: value}), timeout=120)
    assert_clean_failure(result, secrets=secrets_of(place), mentions=[words])


def test_jwt_rotate_refuses_a_damaged_stored_key_set(kube_cluster, kube_admin, place):
    jwks = {"keys": [{"kty": "EC", "crv": "P-256", "x": 12345, "y": ["no"], "d": None, "alg": "ES256",
                      "state": "active"}]}
    kube_admin.create("v1", "secrets", {"metadata": {"name": "damaged-keys", "namespace": place.ns},
                                        "stringData": {"jwks.json": json.dumps(jwks)}})
    binary = {"metadata": {"name": "binary-keys", "namespace": place.ns},
              "data": {"jwks.json": base64.b64encode(os.urandom(512) + b"\xff\xfe").decode()}}
    kube_admin.create("v1", "secrets", binary)
    for name in ("damaged-keys", "binary-keys"):
        before = kube_admin.get("v1", "secrets", name, place.ns)["metadata"]["resourceVersion"]
        result = run_module("jwt_rotate", dict(kube_cluster.auth(), namespace=place.ns, secret_name=name))
        assert_clean_failure(result, secrets=secrets_of(place), mentions=[name])
        assert kube_admin.get("v1", "secrets", name, place.ns)["metadata"]["resourceVersion"] == before


# ----------------------------------------------------------------------------------------------
# ns_isolate


def isolate_args(cluster, place: Place, tmp_path: Path) -> dict:
    return dict(cluster.auth(), namespace=place.ns, incident_id="inc-hostile", pod_selector={"app": "web"},
                evidence={"repository": "file://%s" % (tmp_path / "repo")})


ISOLATE_OPTIONS = {
    "namespace": BAD_NAMES + [""],
    "incident_id": BAD_NAMES + ["", "inc-1\n", "inc-" + "1" * 63],
    "allow_from_namespaces[0]": SOME_BAD_NAMES,
    "scale_to_zero[0]": ["Deployment/" + v for v in SOME_BAD_NAMES] + ["Deployment", "Pod/web-0", "Deployment/"],
    "allow_cidrs[0]": ["10.0.0.0/33", "../outside", "with\x00nul", "x" * 300],
    "evidence.set": TRAVERSAL + CONTROL + TOO_LONG,
    "evidence.log_tail_lines": [0, -1],
    "evidence.log_limit_bytes": [0, -1],
    "evidence.since": ["0", "-5m", "nan", "whenever"],
    "evidence.encryption_recipients": [["age1notakey"], ["with\x00nul"]],
    "evidence.repository": ["ftp://host/x", "file://relative/path", "s3://", "/no/scheme"],
}


@pytest.mark.parametrize("option, value, check_mode", [
    (o, v, check) for o, values in ISOLATE_OPTIONS.items() for v in values
    for check in ((False,) if o.startswith(("incident_id", "allow_")) else (False, True))])
def test_ns_isolate_refuses_hostile_values(kube_cluster, place, unchanged, tmp_path, option, value, check_mode):
    result = run_module("ns_isolate", set_option(isolate_args(kube_cluster, place, tmp_path), option, value),
                        check_mode=check_mode)
    msg = assert_clean_failure(result, secrets=secrets_of(place))
    name = option.split(".")[-1].replace("[0]", "")
    assert name in msg or (name == "encryption_recipients" and "recipient" in msg), msg
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("labels", [
    {"app": "web,tier=db"}, {"app": "web", "x": "a b"}, {"app!": "web"}, {"../outside": "x"}, {"app": "x" * 64},
    {"app": "with\x00nul"}, {"app": None}, {"app": ["web"]}, {"a/b/c": "x"}, {"": "x"},
])
def test_ns_isolate_refuses_a_pod_selector_that_is_not_labels(kube_cluster, place, unchanged, tmp_path, labels):
    args = dict(isolate_args(kube_cluster, place, tmp_path), pod_selector=labels)
    msg = assert_clean_failure(run_module("ns_isolate", args), secrets=secrets_of(place), mentions=["pod_selector"])
    assert "label" in msg or "control character" in msg, msg


@pytest.mark.parametrize("check_mode", [False, True])
def test_ns_isolate_with_a_selector_that_matches_nothing_changes_nothing(kube_cluster, place, unchanged, tmp_path,
                                                                         check_mode):
    args = dict(isolate_args(kube_cluster, place, tmp_path), pod_selector={"app": "wbe"})
    msg = assert_clean_failure(run_module("ns_isolate", args, check_mode=check_mode), secrets=secrets_of(place),
                               mentions=["app=wbe", place.ns, "allow_empty_selector"])
    assert "app=web" in msg
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("record", ["[]", "null", "\"text\"", "{not json", json.dumps({"incident_id": "other"})])
def test_ns_isolate_refuses_a_planted_record(kube_cluster, kube_admin, place, tmp_path, record):
    name = "runbook-isolation-inc-planted"
    kube_admin.create("v1", "configmaps", {"metadata": {"name": name, "namespace": place.ns},
                                           "data": {"record.json": record}})
    try:
        for state in ("isolated", "released"):
            before = cluster_state(kube_admin, (place.ns, place.outside))
            args = dict(isolate_args(kube_cluster, place, tmp_path), incident_id="inc-planted", state=state)
            assert_clean_failure(run_module("ns_isolate", args), secrets=secrets_of(place), mentions=[name])
            assert cluster_state(kube_admin, (place.ns, place.outside)) == before
    finally:
        kube_admin.delete("v1", "configmaps", name, place.ns, missing_ok=True)


# ----------------------------------------------------------------------------------------------
# cert_renew: names, endpoints, numbers


@pytest.mark.parametrize("option, value", [("namespace", v) for v in BAD_NAMES] + [("name", v) for v in BAD_NAMES])
def test_cert_renew_refuses_hostile_kubernetes_names(kube_cluster, place, unchanged, option, value):
    for kind in ("tls_secret", "certificate"):
        source = {"type": kind, "namespace": place.ns, "name": "web-tls", option: value}
        result = run_module("cert_renew", dict(kube_cluster.auth(), sources=[source], issuer={"type": "selfsigned"}))
        assert_clean_failure(result, secrets=secrets_of(place), mentions=["sources[0].%s" % option])


@pytest.mark.parametrize("selector", ["../outside", "app in (", "with\x00nul", "x" * 2000, "a=b=c"])
def test_cert_renew_label_selector_the_api_refuses(kube_cluster, place, unchanged, selector):
    source = {"type": "tls_secret", "namespace": place.ns, "label_selector": selector}
    result = run_module("cert_renew", dict(kube_cluster.auth(), sources=[source]))
    assert_clean_failure(result, secrets=secrets_of(place))


@pytest.mark.parametrize("source", [
    {"host": "with\x00nul"}, {"host": "line\nbreak"}, {"host": "x" * 300}, {"host": ""}, {"host": " 127.0.0.1"},
    {"host": "127.0.0.1", "port": 0}, {"host": "127.0.0.1", "port": -1}, {"host": "127.0.0.1", "port": 70000},
    {"host": "127.0.0.1", "server_name": "with\x00nul"}, {"host": "127.0.0.1", "server_name": "x" * 300},
    {"host": "a" * 64 + ".example"},
])
def test_cert_renew_refuses_hostile_endpoints(source):
    result = run_module("cert_renew", {"sources": [dict(source, type="endpoint")], "connect_timeout": 2})
    if result.get("failed"):
        assert_clean_failure(result, mentions=["sources[0]"] if "64" not in json.dumps(source) else [])
    else:  # a host name no resolver knows is a finding of that endpoint, as documented
        row = result["certificates"][0]
        assert result["status"] == "critical" and "TLS endpoint" in row["msg"], result
        assert "unexpected" not in row["msg"].lower()


@pytest.mark.parametrize("option, value", [
    ("remaining_days", -1), ("remaining_days", "nan"), ("remaining_days", 1e9), ("remaining_percentage", 0),
    ("remaining_percentage", 1), ("remaining_percentage", "nan"), ("validity_days", 0), ("validity_days", -1),
    ("validity_days", 10 ** 9), ("wait_timeout", 0), ("wait_timeout", -1), ("connect_timeout", 0),
    ("connect_timeout", -1), ("connect_timeout", "inf"), ("now", "with\x00nul"), ("now", "later"),
])
def test_cert_renew_refuses_hostile_numbers(tmp_path, option, value):
    result = run_module("cert_renew", {"sources": [{"type": "file", "path": str(tmp_path / "x.crt")}], option: value})
    assert_clean_failure(result, mentions=[option])


# ----------------------------------------------------------------------------------------------
# cert_renew: files


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class Files(t.NamedTuple):
    root: Path
    crt: Path
    key: Path
    ca_cert: str
    ca_key: str
    ca_key_pem: str
    binary: Path
    fifo: Path


@pytest.fixture
def files(tmp_path: Path) -> Files:
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("hostile CA")).issuer_name(_name("hostile CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name("hostile.test")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=80)).not_valid_after(now + datetime.timedelta(days=5))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("hostile.test")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    root = tmp_path / "tls"
    root.mkdir()
    crt, key_file = root / "site.crt", root / "site.key"
    crt.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    encrypted = ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.BestAvailableEncryption(PASSPHRASE.encode())).decode()
    plain = ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()
    binary = tmp_path / "binary.bin"
    binary.write_bytes(os.urandom(4096) + b"\xff\xfe-----BEGIN CERTIFICATE-----\xff\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    return Files(root, crt, key_file, ca.public_bytes(serialization.Encoding.PEM).decode(), encrypted, plain,
                 binary, fifo)


def key_secrets(files: Files) -> t.List[str]:
    """The CA key and the site key (their base64 bodies) and the passphrase."""
    bodies = []
    for pem in (files.ca_key_pem, files.key.read_text()):
        lines = pem.strip().splitlines()[1:-1]
        bodies += [line for line in lines if len(line) > 40]
    return bodies + [PASSPHRASE]


def renew(files: Files, source: t.Optional[dict] = None, check_mode: bool = False, **args: t.Any) -> dict:
    base = {"sources": [dict({"type": "file", "path": str(files.crt), "key_path": str(files.key)}, **(source or {}))],
            "issuer": {"type": "ca", "ca_cert": files.ca_cert, "ca_key": files.ca_key,
                       "ca_key_passphrase": PASSPHRASE}}
    base.update(args)
    return run_module("cert_renew", base, check_mode=check_mode, timeout=60)


def _outcome(result: dict, secrets: t.Sequence[str]) -> str:
    """The failure message, or the message of the certificate row when the source was only reported."""
    if result.get("failed"):
        return assert_clean_failure(result, secrets=secrets)
    text = json.dumps(result)
    for secret in secrets:
        assert secret not in text
    row = result["certificates"][0]
    assert result["status"] == "critical" and row["renewed"] is False, result
    assert "unexpected" not in row["msg"].lower() and "Traceback" not in text
    return row["msg"]


@pytest.mark.parametrize("which", ["binary", "dev_zero", "fifo", "directory", "missing", "traversal", "etc_passwd"])
@pytest.mark.parametrize("check_mode", [False, True])
def test_cert_renew_path_that_is_not_a_pem_file(files, tmp_path, which, check_mode):
    path = {"binary": str(files.binary), "dev_zero": "/dev/zero", "fifo": str(files.fifo), "directory": str(tmp_path),
            "missing": str(tmp_path / "missing.crt"), "traversal": str(files.root / ".." / ".." / "outside.crt"),
            "etc_passwd": "/etc/passwd"}[which]
    before = tree_snapshot(tmp_path), os.stat("/etc/passwd").st_mtime
    msg = _outcome(renew(files, {"path": path}, check_mode=check_mode), key_secrets(files))
    assert path in msg and ("cannot read" in msg or "no PEM certificate" in msg or "cannot parse" in msg), msg
    assert (tree_snapshot(tmp_path), os.stat("/etc/passwd").st_mtime) == before


@pytest.mark.parametrize("which", ["binary", "dev_zero", "fifo", "directory", "control", "too_long"])
def test_cert_renew_key_path_that_is_not_a_pem_file(files, tmp_path, which):
    key_path = {"binary": str(files.binary), "dev_zero": "/dev/zero", "fifo": str(files.fifo),
                "directory": str(tmp_path), "control": str(tmp_path / "a\x00b"), "too_long": "/" + "x" * 5000}[which]
    before = tree_snapshot(tmp_path)
    msg = assert_clean_failure(renew(files, {"key_path": key_path}, reuse_key=True), secrets=key_secrets(files))
    assert "key_path" in msg, msg
    assert tree_snapshot(tmp_path) == before


@pytest.mark.parametrize("option", ["ca_cert", "ca_key"])
@pytest.mark.parametrize("which", ["binary", "dev_zero", "fifo", "directory", "missing", "control", "too_long"])
def test_cert_renew_issuer_file_that_is_not_pem(files, tmp_path, option, which):
    value = {"binary": str(files.binary), "dev_zero": "/dev/zero", "fifo": str(files.fifo), "directory": str(tmp_path),
             "missing": str(tmp_path / "missing.pem"), "control": "/tmp/ca\x00.pem", "too_long": "/" + "x" * 5000}[which]
    before = tree_snapshot(tmp_path)
    args = {"issuer": {"type": "ca", "ca_cert": files.ca_cert, "ca_key": files.ca_key, "ca_key_passphrase": PASSPHRASE}}
    args["issuer"][option] = value
    msg = assert_clean_failure(renew(files, **args), secrets=key_secrets(files), mentions=["issuer.%s" % option])
    assert "nothing" in msg or "cannot read" in msg or "PEM" in msg, msg
    assert tree_snapshot(tmp_path) == before


def test_cert_renew_never_shows_a_ca_key_given_without_its_pem_header(files, tmp_path):
    body = "".join(files.ca_key_pem.strip().splitlines()[1:-1])
    for mangled in (body, body + "\n\x00", "\n".join(files.ca_key_pem.strip().splitlines()[1:-1])):
        result = renew(files, issuer={"type": "ca", "ca_cert": files.ca_cert, "ca_key": mangled})
        assert_clean_failure(result, secrets=key_secrets(files) + [body[:40], body[-40:]], mentions=["issuer.ca_key"])


def test_cert_renew_wrong_or_missing_passphrase(files):
    result = renew(files, issuer={"type": "ca", "ca_cert": files.ca_cert, "ca_key": files.ca_key})
    assert_clean_failure(result, secrets=key_secrets(files), mentions=["encrypted"])
    result = renew(files, issuer={"type": "ca", "ca_cert": files.ca_cert, "ca_key": files.ca_key,
                                  "ca_key_passphrase": "wrong\x00\udcff"})
    assert_clean_failure(result, secrets=key_secrets(files), mentions=["issuer.ca_key"])
    result = renew(files, issuer={"type": "ca", "ca_cert": files.ca_cert, "ca_key": files.ca_key_pem,
                                  "ca_key_passphrase": PASSPHRASE})
    assert_clean_failure(result, secrets=key_secrets(files), mentions=["not encrypted"])


@pytest.fixture
def read_only(files: Files, tmp_path: Path) -> t.Iterator[Path]:
    """A tmpfs holding a copy of the certificate and key and an old CA file, mounted read-only (root
    ignores file modes, not a read-only mount); unmounted afterwards."""
    path = tmp_path / "ro"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], check=True)
    try:
        (path / "ca.pem").write_text("old CA\n")
        (path / "site.crt").write_bytes(files.crt.read_bytes())
        (path / "site.key").write_bytes(files.key.read_bytes())
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("option", ["key_path", "ca_path", "path"])
@pytest.mark.parametrize("check_mode", [False, True])
def test_cert_renew_read_only_destination_keeps_every_file(files, read_only, tmp_path, option, check_mode):
    """One of the files to write is on a read-only file system: the task fails naming it, before any
    file is written (in check mode too), whichever it is."""
    destination = read_only / {"key_path": "site.key", "ca_path": "ca.pem", "path": "site.crt"}[option]
    before = tree_snapshot(tmp_path), files.crt.read_bytes(), files.key.read_bytes()
    result = renew(files, {option: str(destination)}, check_mode=check_mode)
    msg = assert_clean_failure(result, secrets=key_secrets(files),
                               mentions=["cannot write %s %s" % (option, destination), "read-only file system"])
    assert "nothing was written" in msg
    assert (tree_snapshot(tmp_path), files.crt.read_bytes(), files.key.read_bytes()) == before
