"""The Kubernetes access layer: connection settings, paging, retries and error messages.

The transport is exercised against a small local HTTP server that answers like an API server.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
import typing as t
import urllib.parse

import pytest
import yaml

from ansible_collections.runbook.ops.plugins.module_utils import _k8s, _kubeconfig
from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from tests.harness.tasks import make_task, validated


# ----------------------------------------------------------------------------------------------
# Settings


def write_config(path, config: dict) -> str:
    path.write_text(yaml.safe_dump(config))
    return str(path)


def kubeconfig(current="a", **extra) -> dict:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": current,
        "clusters": [{"name": "c1", "cluster": {"server": "https://one.example:6443",
                                                "certificate-authority-data": base64.b64encode(b"PEM").decode()}},
                     {"name": "c2", "cluster": {"server": "https://two.example", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u1", "user": {"token": "tok-1"}},
                  {"name": "u2", "user": {"client-certificate": "certs/u2.crt", "client-key": "certs/u2.key"}}],
        "contexts": [{"name": "a", "context": {"cluster": "c1", "user": "u1"}},
                     {"name": "b", "context": {"cluster": "c2", "user": "u2"}}],
    }
    config.update(extra)
    return config


def test_kubeconfig_current_and_named_context(tmp_path):
    path = write_config(tmp_path / "config", kubeconfig())
    current = _k8s.resolve_settings({"kubeconfig": path})
    assert (current.host, current.token, current.ca_data, current.verify) == ("https://one.example:6443", "tok-1", b"PEM", True)
    other = _k8s.resolve_settings({"kubeconfig": path, "context": "b"})
    assert other.host == "https://two.example" and other.verify is False
    assert other.client_cert_file == str(tmp_path / "certs" / "u2.crt")  # relative to the kubeconfig
    assert other.describe() == "https://two.example (context b)"


def test_explicit_options_override_the_kubeconfig(tmp_path):
    path = write_config(tmp_path / "config", kubeconfig())
    settings = _k8s.resolve_settings({"kubeconfig": path, "host": "k8s.internal:6443", "api_key": "override",
                                      "validate_certs": False, "ca_cert": "/etc/ca.pem", "request_timeout": 5})
    assert settings.host == "https://k8s.internal:6443"
    assert (settings.token, settings.verify, settings.ca_file, settings.ca_data, settings.timeout) == (
        "override", False, "/etc/ca.pem", None, 5.0)


def test_kubeconfig_from_environment_is_merged_first_wins(tmp_path, monkeypatch):
    first = write_config(tmp_path / "one", {"current-context": "a", "contexts": [
        {"name": "a", "context": {"cluster": "c1", "user": "u1"}}], "users": [{"name": "u1", "user": {"token": "first"}}]})
    second = write_config(tmp_path / "two", kubeconfig(current="b"))
    monkeypatch.setenv("KUBECONFIG", first + ":" + second)
    settings = _k8s.resolve_settings({})
    assert settings.token == "first" and settings.host == "https://one.example:6443"


def test_missing_context_and_missing_configuration_are_clear(tmp_path, monkeypatch):
    path = write_config(tmp_path / "config", kubeconfig())
    with pytest.raises(RunbookError, match=r"context 'nope' not found in kubeconfig .* \(available: a, b\)"):
        _k8s.resolve_settings({"kubeconfig": path, "context": "nope"})
    with pytest.raises(RunbookError, match="does not exist"):
        _k8s.resolve_settings({"kubeconfig": str(tmp_path / "absent")})
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(RunbookError, match="no Kubernetes API server configured"):
        _k8s.resolve_settings({})
    assert _k8s.resolve_settings({"host": "https://h", "api_key": "t"}).token == "t"


def test_inline_kubeconfig_dict_and_exec_plugin(tmp_path):
    plugin = tmp_path / "plugin.sh"
    plugin.write_text("#!/bin/sh\necho '{\"apiVersion\": \"client.authentication.k8s.io/v1\", "
                      "\"kind\": \"ExecCredential\", \"status\": {\"token\": \"from-exec-'$1'\"}}'\n")
    plugin.chmod(0o755)
    config = kubeconfig()
    config["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin),
                                           "args": ["x"]}}
    assert _k8s.resolve_settings({"kubeconfig": config}).token == "from-exec-x"


def test_in_cluster(tmp_path, monkeypatch):
    (tmp_path / "token").write_text("sa-token\n")
    (tmp_path / "ca.crt").write_text("PEM")
    monkeypatch.setattr(_kubeconfig, "IN_CLUSTER_DIR", str(tmp_path))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    settings = _k8s.resolve_settings({})
    assert settings.host == "https://10.96.0.1:443" and settings.token_file == str(tmp_path / "token")
    assert settings.source == "in-cluster service account"


@pytest.mark.parametrize("timeout", [-1, 0, float("nan"), float("inf")])
def test_request_timeout_must_be_a_positive_finite_number(timeout):
    with pytest.raises(RunbookError, match="request_timeout must be"):
        _k8s.resolve_settings({"host": "https://h", "request_timeout": timeout})


def test_request_timeout_default_comes_from_the_argument_spec():
    params = validated("k8s_health", {"host": "https://h"})
    assert params["request_timeout"] == 30
    assert _k8s.resolve_settings(params).timeout == 30.0
    assert _k8s.resolve_settings(validated("k8s_health", {"host": "https://h", "request_timeout": 2.5})).timeout == 2.5


def test_names_that_moved_to_kubeconfig_are_still_importable_from_k8s():
    for name in ("resolve_settings", "k8s_auth_argspec", "ConnectionSettings", "inline_kubeconfig_secrets",
                 "AUTH_OPTIONS"):
        assert getattr(_k8s, name) is getattr(_kubeconfig, name)


def test_argspec_matches_kubernetes_core_names_and_env():
    spec = _k8s.k8s_auth_argspec()
    assert set(spec) == {"kubeconfig", "context", "host", "api_key", "validate_certs", "ca_cert", "client_cert",
                         "client_key", "request_timeout"}
    assert spec["api_key"]["no_log"] is True
    assert spec["validate_certs"]["aliases"] == ["verify_ssl"]
    assert spec["host"]["fallback"][1] == ["K8S_AUTH_HOST"]


def test_paths():
    assert _k8s.resource_path("v1", "pods", "ns", "p") == "/api/v1/namespaces/ns/pods/p"
    assert _k8s.resource_path("apps/v1", "deployments") == "/apis/apps/v1/deployments"
    assert _k8s.resource_path("cert-manager.io/v1", "certificates", "a", "b", "status") == \
        "/apis/cert-manager.io/v1/namespaces/a/certificates/b/status"
    assert _k8s.object_ref("Deployment", "api", "auth") == "Deployment/auth/api"


# ----------------------------------------------------------------------------------------------
# Transport against a fake API server


class FakeAPI(http.server.ThreadingHTTPServer):
    """Answers from ``script``: a list of (status, body, headers) per path, consumed in order."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: t.Dict[str, t.List[t.Tuple[int, t.Any]]] = {}
        self.seen: t.List[t.Tuple[str, str, dict, t.Any]] = []

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.server_address[1]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: t.Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        parsed = urllib.parse.urlsplit(self.path)
        self.server.seen.append((self.command, self.path, dict(self.headers), body))  # type: ignore[attr-defined]
        queue = self.server.script.get(parsed.path) or [(404, {"kind": "Status", "reason": "NotFound",  # type: ignore
                                                               "message": "the server could not find the requested resource"})]
        status, answer = queue.pop(0) if len(queue) > 1 else queue[0]
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 429:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer


@pytest.fixture
def api() -> t.Iterator[FakeAPI]:
    server = FakeAPI()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def client_for(api: FakeAPI, **kwargs: t.Any) -> _k8s.K8sClient:
    return _k8s.K8sClient.from_params({"host": api.url, "api_key": "secret-token"}, backoff=0.01, **kwargs)


def test_list_pages_with_continue_and_sets_kind(api):
    api.script["/api/v1/pods"] = [
        (200, {"kind": "PodList", "metadata": {"continue": "c1"}, "items": [{"metadata": {"name": "a"}}]}),
        (200, {"kind": "PodList", "metadata": {}, "items": [{"metadata": {"name": "b"}}]}),
    ]
    client = client_for(api)
    items = client.list("v1", "pods", page_size=1, label_selector="app=x")
    assert [i["metadata"]["name"] for i in items] == ["a", "b"]
    assert items[0]["kind"] == "Pod" and items[0]["apiVersion"] == "v1"
    assert client.requests == 2
    assert "continue=c1" in api.seen[1][1] and "labelSelector=app%3Dx" in api.seen[0][1]
    assert api.seen[0][2]["Authorization"] == "Bearer secret-token"


def test_retries_on_429_and_5xx_then_succeeds(api):
    api.script["/api/v1/namespaces/ns/pods/p"] = [(429, {}), (503, {}), (200, {"metadata": {"name": "p"}})]
    client = client_for(api)
    assert client.get("v1", "pods", "p", "ns")["metadata"]["name"] == "p"
    assert client.requests == 3


def test_retries_are_bounded(api):
    api.script["/api/v1/namespaces"] = [(500, {"message": "etcd is down"})]
    client = client_for(api, retries=2)
    with pytest.raises(_k8s.K8sError, match="cannot list namespaces in all namespaces: HTTP 500: etcd is down"):
        client.list("v1", "namespaces")
    assert client.requests == 3


def test_post_is_not_retried_on_500(api):
    api.script["/api/v1/namespaces/ns/configmaps"] = [(500, {"message": "boom"})]
    client = client_for(api)
    with pytest.raises(_k8s.K8sError):
        client.create("v1", "configmaps", {"metadata": {"name": "c", "namespace": "ns"}})
    assert client.requests == 1


@pytest.mark.parametrize("status,cls,word", [
    (401, _k8s.K8sUnauthorized, "unauthorized"), (403, _k8s.K8sForbidden, "forbidden (403)"),
    (404, _k8s.K8sNotFound, "not found (404)"), (409, _k8s.K8sConflict, "conflict (409)"),
])
def test_errors_are_typed_and_readable(api, status, cls, word):
    api.script["/apis/apps/v1/namespaces/auth/deployments/api"] = [(status, {"kind": "Status", "message": "because"})]
    client = client_for(api)
    with pytest.raises(cls) as info:
        client.get("apps/v1", "deployments", "api", "auth")
    assert str(info.value).startswith("cannot get Deployment/auth/api: %s" % word)
    assert "because" in str(info.value) and api.url in str(info.value)
    assert "secret-token" not in str(info.value)


def test_get_missing_ok_and_delete_missing_ok(api):
    client = client_for(api)
    assert client.get("v1", "secrets", "s", "ns", missing_ok=True) is None
    assert client.delete("v1", "secrets", "s", "ns", missing_ok=True) is None


def test_unreachable_server(api):
    client = _k8s.K8sClient.from_params({"host": "http://127.0.0.1:1", "api_key": "x"}, backoff=0.01)
    with pytest.raises(_k8s.K8sUnreachable, match="cannot list pods in namespace ns: Kubernetes API server "
                                                  "http://127.0.0.1:1 is unreachable: connection refused"):
        client.list("v1", "pods", "ns")
    assert client.requests == 4  # first try + 3 retries


def test_conditional_patch_and_modify_retry_on_conflict(api):
    path = "/api/v1/namespaces/ns/configmaps/cm"
    client = client_for(api)
    api.script[path] = [(200, {"metadata": {"name": "cm", "namespace": "ns", "resourceVersion": "7"}})]
    client.patch("v1", "configmaps", "cm", {"data": {"a": "1"}}, "ns", resource_version="7")
    method, headers, body = api.seen[-1][0], api.seen[-1][2], api.seen[-1][3]
    assert method == "PATCH" and headers["Content-Type"] == "application/merge-patch+json"
    assert body == {"data": {"a": "1"}, "metadata": {"resourceVersion": "7"}}
    client.patch("v1", "configmaps", "cm", [{"op": "add", "path": "/data/b", "value": "2"}], "ns",
                 patch_type="json", resource_version="7")
    assert api.seen[-1][3][0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "7"}

    api.seen.clear()
    api.script[path] = [
        (200, {"metadata": {"name": "cm", "namespace": "ns", "resourceVersion": "7"}, "data": {}}),  # GET
        (409, {"message": "the object has been modified"}),                                          # PUT
        (200, {"metadata": {"name": "cm", "namespace": "ns", "resourceVersion": "8"}, "data": {}}),  # GET again
        (200, {"metadata": {"name": "cm", "namespace": "ns", "resourceVersion": "9"}, "data": {"k": "v"}}),  # PUT
    ]
    changed, before, after = client.modify("v1", "configmaps", "cm", lambda obj: dict(obj, data={"k": "v"}), "ns")
    assert changed and after["metadata"]["resourceVersion"] == "9"
    puts = [seen[3] for seen in api.seen if seen[0] == "PUT"]
    assert [p["metadata"]["resourceVersion"] for p in puts] == ["7", "8"]


def test_list_namespaces_falls_back_per_namespace_when_cluster_list_is_forbidden(api):
    api.script["/api/v1/pods"] = [(403, {"message": "cannot list pods at the cluster scope"})]
    api.script["/api/v1/namespaces/a/pods"] = [(200, {"kind": "PodList", "items": [{"metadata": {"name": "p"}}]})]
    api.script["/api/v1/namespaces/b/pods"] = [(403, {"message": "no"})]
    client = client_for(api)
    items, errors = client.list_namespaces("v1", "pods", ["a", "b"])
    assert [p["metadata"]["name"] for p in items["a"]] == ["p"] and items["b"] == []
    assert list(errors) == ["b"] and isinstance(errors["b"], _k8s.K8sForbidden)
    assert client.requests == 3


def test_api_requests_are_reported_on_success_and_on_failure(api):
    api.script["/api/v1/namespaces"] = [(200, {"kind": "NamespaceList", "items": []})]
    client = client_for(api)
    task = make_task("k8s_health", lambda params: None, {"host": api.url}, clients={_k8s.K8sClient.from_params: client})

    def lists_twice(task):
        task.client(_k8s.K8sClient.from_params).list("v1", "namespaces")
        task.client(_k8s.K8sClient.from_params).list("v1", "namespaces")
        return {"changed": False, "msg": "done"}
    assert _k8s.reports_api_requests(lists_twice)(task)["api_requests"] == 2

    def fails_after_one(task):
        task.client(_k8s.K8sClient.from_params).list("v1", "namespaces")
        raise RunbookError("gave up", findings=[])
    with pytest.raises(RunbookError) as failed:
        _k8s.reports_api_requests(fails_after_one)(task)
    assert failed.value.details == {"findings": [], "api_requests": 3}

    unconfigured = make_task("k8s_health", lambda params: None, {"host": "ftp://nowhere"})
    with pytest.raises(RunbookError, match="only https://") as refused:
        _k8s.reports_api_requests(lists_twice)(unconfigured)
    assert refused.value.details["api_requests"] == 0
