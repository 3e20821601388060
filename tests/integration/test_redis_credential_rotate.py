"""redis_credential_rotate against a real Redis (ACL file) and a real kube-apiserver (KWOK runs the Pods)."""

from __future__ import annotations

import base64
import typing as t

import pytest
import redis

from tests.harness.collection import run_module
from tests.harness.k8s import deployment, wait_for

SECRET = "redis-credentials"
OLD = "initial-redis-app-password"


@pytest.fixture
def acl_redis(service_factory):
    """A server whose users live in an ACL file, so ACL SAVE persists them."""
    from tests.harness.services import RedisServer

    workdir = service_factory.workdir("redis-rotate")
    acl = workdir / "users.acl"
    acl.write_text("user default on >harness-redis-secret ~* &* +@all\nuser app on >%s ~* &* +@all\n" % OLD)
    return service_factory.add(RedisServer(workdir, name="redis-rotate", extra_config=["aclfile %s" % acl]))


def put_secret(admin, ns: str, password: str) -> None:
    url = "redis://app:%s@redis.example:6379/0" % password
    admin.create("v1", "secrets", {"metadata": {"name": SECRET, "namespace": ns}, "type": "Opaque", "data": {
        "password": base64.b64encode(password.encode()).decode(),
        "REDIS_URL": base64.b64encode(url.encode()).decode()}}, ns)


def secret_data(admin, ns: str) -> t.Dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in admin.get("v1", "secrets", SECRET, ns)["data"].items()}


def consumer(name: str, ns: str) -> dict:
    body = deployment(name, ns)
    body["spec"]["template"]["spec"]["volumes"] = [{"name": "creds", "projected": {"sources": [
        {"secret": {"name": SECRET}}]}}]
    return body


def logs_in(server, password: str) -> bool:
    try:
        return bool(server.client(username="app", password=password, socket_timeout=5).ping())
    except redis.AuthenticationError:
        return False


def rotate(cluster, server, ns: str, check_mode: bool = False, **args: t.Any):
    secret = {"namespace": ns, "name": SECRET, "url_key": "REDIS_URL"}
    params = dict(cluster.auth(), **server.login, user="app", secret=secret)
    params.update(args)
    result = run_module("redis_credential_rotate", params, check_mode=check_mode)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_rotation_keeps_old_clients_until_consumers_moved_and_persists(
        kube_cluster, kube_admin, kube_namespace, acl_redis):
    ns, server = kube_namespace, acl_redis
    put_secret(kube_admin, ns, OLD)
    kube_admin.create("apps/v1", "deployments", consumer("worker", ns))
    old_client = server.client(username="app", password=OLD)
    assert old_client.ping()

    check = rotate(kube_cluster, server, ns, check_mode=True)
    assert check["changed"] is True and secret_data(kube_admin, ns)["password"] == OLD, check

    result = rotate(kube_cluster, server, ns)
    assert not result.get("failed"), result
    new = secret_data(kube_admin, ns)["password"]
    assert new != OLD and logs_in(server, new) and not logs_in(server, OLD)
    assert secret_data(kube_admin, ns)["REDIS_URL"] == "redis://app:%s@redis.example:6379/0" % new
    assert result["consumers"]["restarted"] == ["Deployment/%s/worker" % ns] and result["revoked"] is True
    assert [s["step"] for s in result["steps"]][-4:] == ["secret", "consumers", "verify", "revoke"]
    assert old_client.ping()  # authenticated before the removal: still served
    assert new not in repr(result) and OLD not in repr(result)

    server.stop()
    server.start()  # the ACL file was saved: the new password survives a restart, the old one does not
    assert logs_in(server, new) and not logs_in(server, OLD)


def test_crash_looping_consumer_leaves_old_password_valid(kube_cluster, kube_admin, kube_namespace, acl_redis):
    ns, server = kube_namespace, acl_redis
    put_secret(kube_admin, ns, OLD)
    body = consumer("broken", ns)
    body["spec"]["template"]["metadata"]["annotations"] = {"runbook.ops/fault": "crashloop"}
    kube_admin.create("apps/v1", "deployments", body)
    result = rotate(kube_cluster, server, ns, wait_timeout=5)
    assert result.get("failed") and "Deployment/%s/broken" % ns in result["msg"], result
    assert result["revoked"] is False and result["consumers"]["failed"] == ["Deployment/%s/broken" % ns]
    new = secret_data(kube_admin, ns)["password"]
    assert logs_in(server, OLD) and logs_in(server, new)
    # Fixed: the next run resumes, waits for the consumer and removes the old password.
    kube_admin.patch("apps/v1", "deployments", "broken", {"spec": {"template": {"metadata": {
        "annotations": {"runbook.ops/fault": None}}}}}, ns)
    wait_for(lambda: (kube_admin.get("apps/v1", "deployments", "broken", ns).get("status") or {})
             .get("availableReplicas") == 1, what="fixed consumer", timeout=60)
    again = rotate(kube_cluster, server, ns)
    assert not again.get("failed"), again
    assert not logs_in(server, OLD) and logs_in(server, secret_data(kube_admin, ns)["password"])
