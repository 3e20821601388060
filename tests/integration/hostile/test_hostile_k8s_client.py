"""Hostile input against the Kubernetes access every Kubernetes module shares (through
``k8s_health``): bad timeouts, malformed and binary kubeconfigs, names that are not Kubernetes
names, TLS against a plain-text port, and an inline kubeconfig's token in every output."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import typing as t

import pytest

from tests.harness.collection import run_module
from tests.harness.hostile import CONTROL, TOO_LONG, TRAVERSAL, assert_clean_failure
from tests.harness.k8s import ADMIN_TOKEN, kubeconfig_dict


@pytest.fixture
def inline_kubeconfig(kube_cluster) -> dict:
    if kube_cluster.external:
        pytest.fail("this test needs the harness API server (a kubeconfig with a known token)")
    return kubeconfig_dict(kube_cluster.server, kube_cluster.ca_file.read_bytes(), {"admin": ADMIN_TOKEN},
                           {"admin": (kube_cluster.server, "admin")}, "admin")


@pytest.mark.parametrize("timeout", [-1, 0, -0.5])
def test_a_request_timeout_that_is_not_positive_is_refused(kube_cluster, timeout):
    result = run_module("k8s_health", dict(kube_cluster.auth(), request_timeout=timeout, checks=["nodes"]))
    assert_clean_failure(result, secrets=[ADMIN_TOKEN], mentions=["request_timeout"])


def test_request_timeout_from_the_environment_is_checked_too(kube_cluster):
    result = run_module("k8s_health", dict(kube_cluster.auth(), checks=["nodes"]),
                        env={"K8S_AUTH_REQUEST_TIMEOUT": "-3"})
    assert_clean_failure(result, mentions=["request_timeout"])


def test_an_inline_kubeconfig_token_is_masked_even_when_the_task_is_refused(inline_kubeconfig, kube_namespace):
    ok = run_module("k8s_health", {"kubeconfig": inline_kubeconfig, "namespaces": [kube_namespace], "checks": ["pods"]})
    assert not ok.get("failed"), ok
    assert ADMIN_TOKEN not in json.dumps(ok)
    refused = run_module("k8s_health", {"kubeconfig": inline_kubeconfig, "checks": ["no-such-check"]})
    assert_clean_failure(refused, secrets=[ADMIN_TOKEN])
    assert "invocation" in refused and "kubeconfig" in refused["invocation"]["module_args"]


@pytest.mark.parametrize("kubeconfig", [
    {"users": "not-a-list", "contexts": [{"name": "a", "context": {"cluster": "c", "user": "u"}}],
     "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}], "current-context": "a"},
    {"contexts": "x", "current-context": "a"},
    {"clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1", "certificate-authority-data": "!!"}}],
     "contexts": [{"name": "a", "context": {"cluster": "c"}}], "current-context": "a"},
    ["a", "list"],
    {},
])
def test_malformed_inline_kubeconfigs_fail_cleanly(kubeconfig):
    result = run_module("k8s_health", {"kubeconfig": kubeconfig, "checks": ["nodes"], "request_timeout": 2})
    assert_clean_failure(result)


@pytest.mark.parametrize("content", [os.urandom(2048), b"\xff\xfe\x00\x01", b"- just\n- a list\n", b"key: [unclosed\n"])
def test_kubeconfig_files_that_are_not_kubeconfigs_fail_cleanly(tmp_path, content):
    path = tmp_path / "kubeconfig"
    path.write_bytes(content)
    result = run_module("k8s_health", {"kubeconfig": str(path), "checks": ["nodes"]})
    assert_clean_failure(result, mentions=["kubeconfig"])


@pytest.mark.parametrize("bad", TRAVERSAL + CONTROL + TOO_LONG + ["UPPER", "a_b", "-leading"])
def test_namespaces_that_are_not_kubernetes_names_are_refused(kube_cluster, bad):
    result = run_module("k8s_health", dict(kube_cluster.auth(), namespaces=[bad], checks=["pods"]))
    assert_clean_failure(result, secrets=[ADMIN_TOKEN], mentions=["namespace"])


class _PlainTextServer:
    """A TCP server on loopback that answers every connection in plain text (like an HTTP port)."""

    def __init__(self, reply: bytes = b"HTTP/1.0 400 Bad Request\r\n\r\nplain text\r\n", silent: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.silent = silent
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        held: t.List[socket.socket] = []
        while not self.stopped:
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return
            conn.recv(4096)
            if self.silent:
                held.append(conn)  # waits for a full line, as a plain Redis port does
                continue
            conn.sendall(self.reply)
            conn.close()

    def close(self) -> None:
        self.stopped = True
        self.sock.close()


def test_tls_against_a_plain_text_port_says_so():
    server = _PlainTextServer()
    try:
        started = time.monotonic()
        result = run_module("k8s_health", {"host": "https://127.0.0.1:%d" % server.port, "api_key": "x" * 20,
                                           "checks": ["nodes"], "request_timeout": 5})
        msg = assert_clean_failure(result, secrets=["x" * 20])
        assert "does not speak TLS" in msg, msg
        assert time.monotonic() - started < 60
    finally:
        server.close()
