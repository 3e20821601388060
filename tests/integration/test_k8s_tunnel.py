"""The Kubernetes tunnel against a real API server, with KWOK as the node agent whose Pods forward
their ports to the harness's PostgreSQL and Redis: bytes go client -> loopback port -> WebSocket ->
kube-apiserver -> KWOK -> the database, and back."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import signal
import socket
import subprocess
import threading
import typing as t
import uuid

import psycopg
import pytest
import redis

from ansible_collections.runbook.ops.plugins.module_utils import _k8s_tunnel
from ansible_collections.runbook.ops.plugins.module_utils._k8s_tunnel import KubernetesTunnel, TunnelError
from tests.harness import k8s, kwok
from tests.harness.collection import run_module
from tests.harness.process import port_open

# A Pod port KWOK has no forward for: the Pod side of the port-forward fails.
UNFORWARDED_PORT = 7777


def pod_template(name: str, ports: t.Sequence[t.Tuple[str, int]]) -> dict:
    return {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{
        "name": "main", "image": "example/db:1.0",
        "ports": [{"name": port_name, "containerPort": number, "protocol": "TCP"} for port_name, number in ports]}]}}


def statefulset(name: str, namespace: str, ports: t.Sequence[t.Tuple[str, int]], replicas: int = 1) -> dict:
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "serviceName": name, "selector": {"matchLabels": {"app": name}},
                     "template": pod_template(name, ports)}}


def deployment(name: str, namespace: str, ports: t.Sequence[t.Tuple[str, int]], replicas: int = 1) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": pod_template(name, ports)}}


def service(name: str, namespace: str, app: str, ports: t.Sequence[dict]) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"app": app}, "ports": [dict(p, protocol="TCP") for p in ports]}}


def rolled_out(admin: t.Any, namespace: str, *workloads: t.Tuple[str, str]) -> None:
    for plural, name in workloads:
        k8s.wait_for(lambda: kwok.rolled_out(admin, plural, namespace, name), timeout=90,
                     what="%s/%s/%s rolled out" % (plural, namespace, name))


def forwarding(admin: t.Any, namespace: str, target: str, port: int) -> None:
    """Wait until KWOK has picked up the ClusterPortForward (a watched object): a connection through
    the API server then reaches the local service instead of failing on the Pod side."""
    def reaches() -> bool:
        tunnel = KubernetesTunnel(admin, namespace, _k8s_tunnel.parse_target(target), port)
        try:
            with tunnel as (host, local):
                with socket.create_connection((host, local), timeout=5) as sock:
                    sock.sendall(b"\r\n")
                    sock.settimeout(2)
                    try:
                        sock.recv(1)
                    except socket.timeout:
                        pass
        except TunnelError:
            return False
        return True
    k8s.wait_for(reaches, timeout=60, what="KWOK forwarding %s port %d" % (target, port))


class Lab(t.NamedTuple):
    cluster: k8s.KubeCluster
    admin: t.Any
    namespace: str


def seed(admin: t.Any, namespace: str, pg_port: int, redis_port: int) -> None:
    k8s.namespace(admin, namespace)
    kwok.port_forward(admin, "tunnel-" + namespace, {5432: ("127.0.0.1", pg_port), 6379: ("127.0.0.1", redis_port)},
                      namespaces=[namespace])
    admin.create("apps/v1", "statefulsets", statefulset("postgres", namespace, [("postgres", 5432)]))
    admin.create("v1", "services", service("postgres", namespace, "postgres",
                                           [{"name": "sql", "port": 5432, "targetPort": "postgres"}]))
    admin.create("apps/v1", "statefulsets", statefulset("redis-master", namespace, [("redis", 6379)]))
    admin.create("v1", "services", service("redis", namespace, "redis-master",
                                           [{"name": "redis", "port": 6380, "targetPort": 6379}]))
    admin.create("apps/v1", "deployments", deployment("cache", namespace, [("redis", 6379), ("debug", UNFORWARDED_PORT)],
                                                      replicas=2))
    admin.create("apps/v1", "statefulsets", statefulset("empty", namespace, [("postgres", 5432)], replicas=0))
    admin.create("v1", "services", service("orphan", namespace, "nothing-matches", [{"port": 5432}]))
    rolled_out(admin, namespace, ("statefulsets", "postgres"), ("statefulsets", "redis-master"), ("deployments", "cache"))
    # The EndpointSlice controller lists the Ready Pods behind the Services.
    k8s.wait_for(lambda: _k8s_tunnel.ready_endpoint_pods(admin.list(
        "discovery.k8s.io/v1", "endpointslices", namespace, label_selector="kubernetes.io/service-name=postgres")),
        timeout=60, what="endpoints of Service postgres")
    forwarding(admin, namespace, "pod/redis-master-0", 6379)


@pytest.fixture(scope="module")
def lab(kube_cluster, kube_admin, postgres, redis_plain) -> t.Iterator[Lab]:
    namespace = "rust-security-" + uuid.uuid4().hex[:6]
    try:
        seed(kube_admin, namespace, postgres.port, redis_plain.port)
        yield Lab(kube_cluster, kube_admin, namespace)
    finally:
        kube_admin.delete("v1", "namespaces", namespace, missing_ok=True)
        kube_admin.delete(kwok.API, kwok.KINDS["ClusterPortForward"][0], "tunnel-" + namespace, missing_ok=True)


def options(lab: Lab, target: str, port: t.Any = None, token: str = k8s.ADMIN_TOKEN, **extra: t.Any) -> dict:
    return dict(lab.cluster.auth(token), namespace=lab.namespace, target=target, port=port, **extra)


def tunnel_threads() -> t.List[threading.Thread]:
    return [th for th in threading.enumerate() if th.name.startswith("kubernetes-tunnel-")]


# ----------------------------------------------------------------------------------------------
# Bytes through the tunnel


def test_postgres_through_service_with_psycopg_and_psql(lab, postgres):
    tunnel = KubernetesTunnel.from_params(options(lab, "service/postgres", 5432))
    with tunnel as (host, port):
        assert host == "127.0.0.1" and port != postgres.port
        assert tunnel.route == _k8s_tunnel.Route(lab.namespace, "postgres-0", 5432)  # named targetPort resolved
        with psycopg.connect(host=host, port=port, user=postgres.user, password=postgres.password, dbname="postgres",
                             connect_timeout=10) as conn:
            payload = os.urandom(300_000).hex()
            assert conn.execute("select md5(%s), inet_server_port()", (payload,)).fetchone() == (
                hashlib.md5(payload.encode()).hexdigest(), postgres.port)
        env = dict(os.environ, PGPASSWORD=postgres.password)
        out = subprocess.run([str(postgres.bin_dir / "psql"), "-h", host, "-p", str(port), "-U", postgres.user,
                              "-d", "postgres", "-Atc", "select count(*) from generate_series(1, 12345)"],
                             env=env, capture_output=True, text=True, timeout=60, check=True).stdout
        assert out.strip() == "12345"
    assert tunnel.failures == [] and tunnel.connections == 2


def strip_restrict_keys(dump: bytes) -> bytes:
    return b"\n".join(line for line in dump.split(b"\n") if not line.startswith((b"\\restrict ", b"\\unrestrict ")))


def test_pg_dump_subprocess_through_statefulset(lab, postgres):
    postgres.psql("create table if not exists tunnel_rows as select g as id, md5(g::text) as v "
                  "from generate_series(1, 50000) g")
    env = dict(os.environ, PGPASSWORD=postgres.password)
    dump = [str(postgres.bin_dir / "pg_dump"), "-U", postgres.user, "-d", "postgres", "-t", "tunnel_rows", "-Fp"]
    direct = subprocess.run(dump + ["-h", postgres.host, "-p", str(postgres.port)], env=env, capture_output=True,
                            check=True).stdout
    with KubernetesTunnel.from_params(options(lab, "statefulset/postgres", "postgres")) as (host, port):
        through = subprocess.run(dump + ["-h", host, "-p", str(port)], env=env, capture_output=True, check=True,
                                 timeout=120).stdout
    # pg_dump writes a random \restrict key into every plain dump; everything else must be identical.
    assert len(through) > 1_500_000
    assert strip_restrict_keys(through) == strip_restrict_keys(direct)


def test_redis_ping_and_large_values_through_pod(lab, redis_plain):
    with KubernetesTunnel.from_params(options(lab, "pod/redis-master-0", 6379)) as (host, port):
        client = redis.Redis(host=host, port=port, password=redis_plain.password, socket_timeout=20)
        assert client.ping() is True
        blob = os.urandom(3 * 1024 * 1024)
        client.set("tunnel:blob", blob)
        assert client.get("tunnel:blob") == blob
        assert redis_plain.client().get("tunnel:blob") == blob  # it reached the real server
        client.close()


def test_service_port_maps_to_numeric_target_port_and_deployment_named_port(lab, redis_plain):
    svc = KubernetesTunnel.from_params(options(lab, "svc/redis", 6380))
    with svc as (host, port):
        assert svc.route.pod == "redis-master-0" and svc.route.port == 6379
        assert redis.Redis(host=host, port=port, password=redis_plain.password).ping()
    dep = KubernetesTunnel.from_params(options(lab, "deployment/cache", "redis"))
    with dep as (host, port):
        assert dep.route.pod.startswith("cache-") and dep.route.port == 6379
        assert redis.Redis(host=host, port=port, password=redis_plain.password).ping()


def test_kubeconfig_auth_and_only_port_default(lab, redis_plain):
    tunnel = KubernetesTunnel.from_params({"kubeconfig": str(lab.cluster.kubeconfig), "namespace": lab.namespace,
                                           "target": "sts/redis-master"})
    with tunnel as (host, port):
        assert tunnel.route.port == 6379
        assert redis.Redis(host=host, port=port, password=redis_plain.password).ping()


def test_concurrent_connections_each_get_their_own_stream(lab, redis_plain):
    tunnel = KubernetesTunnel.from_params(options(lab, "service/redis", "redis"))

    def worker(index: int, host: str, port: int) -> bool:
        client = redis.Redis(host=host, port=port, password=redis_plain.password, socket_timeout=30)
        try:
            value = os.urandom(200_000 + index)
            for round_ in range(5):
                key = "tunnel:concurrent:%d:%d" % (index, round_)
                client.set(key, value)
                if client.get(key) != value:
                    return False
            return True
        finally:
            client.close()

    with tunnel as (host, port):
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: worker(i, host, port), range(8)))
    assert results == [True] * 8
    assert tunnel.connections == 8 and tunnel.failures == []


# ----------------------------------------------------------------------------------------------
# Refusals


def test_no_ready_pod_names_the_object(lab):
    with pytest.raises(TunnelError) as err:
        KubernetesTunnel.from_params(options(lab, "statefulset/empty")).open()
    ns = lab.namespace
    assert "StatefulSet/%s/empty has no Ready Pod (Pods: none)" % ns in err.value.msg
    assert err.value.msg.startswith("kubernetes_tunnel to statefulset/empty in namespace %s: " % ns)
    with pytest.raises(TunnelError, match="Service/%s/orphan has no Ready endpoint Pod" % ns):
        KubernetesTunnel.from_params(options(lab, "service/orphan", 5432)).open()
    # A Pod no Node can take stays Pending.
    spec = dict(pod_template("stuck", [("postgres", 5432)])["spec"], nodeSelector={"runbook.test/none": "x"})
    lab.admin.create("v1", "pods", {"metadata": {"name": "stuck", "namespace": ns}, "spec": spec})
    with pytest.raises(TunnelError, match=r"Pod/%s/stuck is not running \(stuck \(Pending\)\)" % ns):
        KubernetesTunnel.from_params(options(lab, "pod/stuck", 5432)).open()
    with pytest.raises(TunnelError, match="cannot get Deployment/%s/missing: not found" % ns):
        KubernetesTunnel.from_params(options(lab, "deployment/missing", 5432)).open()
    assert tunnel_threads() == []


def test_port_the_pod_does_not_expose_names_its_ports(lab):
    with pytest.raises(TunnelError) as err:
        KubernetesTunnel.from_params(options(lab, "pod/redis-master-0", 6380)).open()
    assert err.value.msg == ("kubernetes_tunnel to pod/redis-master-0 port 6380 in namespace {0}: Pod/{0}/redis-master-0 "
                             "does not expose TCP port 6380 (its ports: 6379/TCP (redis))".format(lab.namespace))
    with pytest.raises(TunnelError, match=r"Service/%s/postgres has no TCP port number 5433 \(its ports: 5432 \(sql\)\)"
                       % lab.namespace):
        KubernetesTunnel.from_params(options(lab, "service/postgres", 5433)).open()


def grant(admin: t.Any, namespace: str, name: str, rules: t.List[dict]) -> None:
    admin.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                 "metadata": {"name": name, "namespace": namespace}, "rules": rules})
    admin.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": name, "namespace": namespace},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                 "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": k8s.RESTRICTED_USER}]})


def test_token_without_portforward_permission(lab, redis_plain, monkeypatch):
    grant(lab.admin, lab.namespace, "tunnel-read", [
        {"apiGroups": [""], "resources": ["pods", "services"], "verbs": ["get", "list"]},
        # "get" alone on the subresource is what older API servers checked for WebSocket upgrades.
        {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["get"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list"]},
        {"apiGroups": ["apps"], "resources": ["statefulsets"], "verbs": ["get"]}])
    expected = ("kubernetes_tunnel to pod/redis-master-0 port 6379 in namespace {0} (Pod redis-master-0 port 6379): "
                "the credentials may not open a port-forward: RBAC must allow create pods/portforward in namespace "
                "{0}".format(lab.namespace))
    with pytest.raises(TunnelError) as err:
        KubernetesTunnel.from_params(options(lab, "pod/redis-master-0", 6379, token=k8s.RESTRICTED_TOKEN)).open()
    assert err.value.msg.startswith(expected)
    # Without the up-front review, the WebSocket handshake itself is refused (403) and named the same way.
    monkeypatch.setattr(KubernetesTunnel, "check_permission", lambda self: None)
    tunnel = KubernetesTunnel.from_params(options(lab, "pod/redis-master-0", 6379, token=k8s.RESTRICTED_TOKEN))
    with pytest.raises(TunnelError) as err:
        with tunnel as (host, port):
            with pytest.raises(redis.ConnectionError):
                redis.Redis(host=host, port=port, password=redis_plain.password, socket_timeout=10).ping()
    assert err.value.msg.startswith(expected)
    monkeypatch.undo()
    # With the permission the same token works.
    grant(lab.admin, lab.namespace, "tunnel-forward", [
        {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["create"]}])
    with KubernetesTunnel.from_params(options(lab, "service/redis", 6380, token=k8s.RESTRICTED_TOKEN)) as (host, port):
        assert redis.Redis(host=host, port=port, password=redis_plain.password).ping()


def test_pod_side_failure_comes_back_through_the_error_channel(lab):
    tunnel = KubernetesTunnel.from_params(options(lab, "deployment/cache", "debug"))
    with pytest.raises(TunnelError) as err:
        with tunnel as (host, port):
            with socket.create_connection((host, port), timeout=10) as sock:
                sock.sendall(b"hello\n")
                sock.settimeout(10)
                assert sock.recv(100) == b""  # the tunnel closes the connection
    assert err.value.msg.startswith("kubernetes_tunnel to deployment/cache port debug in namespace %s (Pod cache-"
                                    % lab.namespace)
    assert "the Pod side of the port-forward failed" in err.value.msg and "7777" in err.value.msg


# ----------------------------------------------------------------------------------------------
# Closing


def test_closed_afterwards_on_success_and_on_error(lab, redis_plain):
    before = set(threading.enumerate())
    tunnel = KubernetesTunnel.from_params(options(lab, "pod/redis-master-0", 6379))
    with tunnel as (host, port):
        idle = socket.create_connection((host, port), timeout=10)  # still open when the block ends
        assert redis.Redis(host=host, port=port, password=redis_plain.password).ping()
    assert not port_open(host, port)
    idle.settimeout(10)
    assert idle.recv(10) == b""  # closed by the tunnel
    idle.close()
    with pytest.raises(RuntimeError, match="task failed"):
        with KubernetesTunnel.from_params(options(lab, "pod/redis-master-0", 6379)) as (host2, port2):
            raise RuntimeError("task failed")
    assert not port_open(host2, port2)
    assert tunnel_threads() == []
    assert set(threading.enumerate()) <= before


# ----------------------------------------------------------------------------------------------
# The API server stops mid-stream (a cluster of its own: this test kills it)


@pytest.fixture
def doomed_lab(own_kube_cluster, postgres) -> t.Iterator[Lab]:
    cluster = own_kube_cluster
    admin = cluster.client()
    namespace = "t-" + uuid.uuid4().hex[:8]
    k8s.namespace(admin, namespace)
    kwok.port_forward(admin, "tunnel-postgres", {5432: ("127.0.0.1", postgres.port)}, namespaces=[namespace])
    admin.create("apps/v1", "statefulsets", statefulset("postgres", namespace, [("postgres", 5432)]))
    admin.create("v1", "services", service("postgres", namespace, "postgres", [{"port": 5432}]))
    rolled_out(admin, namespace, ("statefulsets", "postgres"))
    forwarding(admin, namespace, "pod/postgres-0", 5432)
    yield Lab(cluster, admin, namespace)


def test_api_server_stopping_mid_stream_fails_naming_the_tunnel(doomed_lab, postgres):
    postgres.psql("create table if not exists tunnel_big as select g as id, repeat(md5(g::text), 8) as v "
                  "from generate_series(1, 400000) g")
    env = dict(os.environ, PGPASSWORD=postgres.password)
    tunnel = KubernetesTunnel.from_params(options(doomed_lab, "service/postgres", 5432))
    with pytest.raises(TunnelError) as err:
        with tunnel as (host, port):
            dump = subprocess.Popen([str(postgres.bin_dir / "pg_dump"), "-h", host, "-p", str(port), "-U", postgres.user,
                                     "-d", "postgres", "-t", "tunnel_big", "-Fp"], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            assert dump.stdout is not None
            first = dump.stdout.read(1_000_000)  # the dump is under way; the pipe then fills and it waits
            assert len(first) == 1_000_000
            doomed_lab.cluster.apiserver.send_signal(signal.SIGKILL)
            rest = dump.stdout.read()
            code = dump.wait(60)
            stderr = dump.stderr.read().decode() if dump.stderr else ""
            assert code != 0, "pg_dump must not succeed on a cut stream"
            assert len(first) + len(rest) < 60_000_000
            # What a backup module does before it commits: the tunnel says what broke.
            with pytest.raises(TunnelError, match="broke mid-stream"):
                tunnel.check()
            raise RuntimeError("pg_dump exited %d: %s" % (code, stderr.strip()[-200:]))
    msg = err.value.msg
    assert msg.startswith("kubernetes_tunnel to service/postgres port 5432 in namespace %s (Pod postgres-0 port 5432): "
                          % doomed_lab.namespace)
    assert "the connection through the API server %s broke mid-stream" % doomed_lab.cluster.server in msg
    assert "the task failed with: pg_dump exited" in msg
    assert tunnel_threads() == []
    assert not port_open("127.0.0.1", tunnel.address[1])


# ----------------------------------------------------------------------------------------------
# The modules through the tunnel (the kubernetes_tunnel option of every PostgreSQL and Redis module)


def tunnel_option(lab: Lab, target: str, port: t.Any = None) -> dict:
    return {"kubernetes_tunnel": options(lab, target, port)}


def test_pg_backup_through_the_tunnel_matches_a_direct_backup_and_restores(lab, postgres, tmp_path):
    postgres.psql("drop database if exists tunnel_src")
    postgres.psql("create database tunnel_src")
    postgres.psql("create table accounts as select g as id, md5(g::text) as email from generate_series(1, 20000) g; "
                  "create table audit as select g as id from generate_series(1, 777) g", db="tunnel_src")
    repo = {"repository": "file://%s" % (tmp_path / "repo")}
    login = dict(postgres.login, db="tunnel_src")
    direct = run_module("pg_backup", dict(login, set="direct", **repo))
    through = run_module("pg_backup", dict(login, set="tunnel", **repo, **tunnel_option(lab, "service/postgres", 5432)))
    assert not direct.get("failed") and not through.get("failed"), through
    counts = through["manifest"]["postgresql"]["row_counts"]
    assert counts == direct["manifest"]["postgresql"]["row_counts"] == {"public.accounts": 20000, "public.audit": 777}
    source = through["manifest"]["source"]
    assert source["port"] == postgres.port and source["kubernetes_tunnel"].startswith(
        "kubernetes_tunnel to service/postgres port 5432 in namespace %s" % lab.namespace)
    restored = run_module("pg_backup", dict(login, set="tunnel", state="restore", mode="new", target_db="tunnel_copy",
                                            **repo, **tunnel_option(lab, "statefulset/postgres", "postgres")))
    assert not restored.get("failed"), restored
    assert restored["verified"][0]["ok"] is True
    assert postgres.psql("select count(*) from accounts", db="tunnel_copy") == "20000"
    assert tunnel_threads() == []


def test_redis_snapshot_and_health_through_the_tunnel(lab, redis_plain, tmp_path):
    redis_plain.client().set("tunnel:marker", "here")
    repo = {"repository": "file://%s" % (tmp_path / "repo")}
    login = dict(redis_plain.login, **tunnel_option(lab, "pod/redis-master-0", 6379))
    backup = run_module("redis_snapshot", dict(login, **repo))
    assert not backup.get("failed"), backup
    assert backup["manifest"]["source"]["kubernetes_tunnel"].startswith("kubernetes_tunnel to pod/redis-master-0")
    verified = run_module("redis_snapshot", dict(login, state="verify", level="rdb", **repo))
    assert not verified.get("failed") and verified["verified"][0]["ok"] is True, verified
    health = run_module("redis_health", login)
    assert not health.get("failed"), health
    assert "through kubernetes_tunnel to pod/redis-master-0" in health["msg"]
    assert health["server"]["role"] == "master"


def test_a_tunnel_to_nothing_fails_the_module_naming_the_object(lab, postgres, tmp_path):
    result = run_module("pg_backup", dict(postgres.login, db="postgres", repository="file://%s" % tmp_path,
                                          **tunnel_option(lab, "statefulset/empty", 5432)))
    assert result.get("failed")
    assert "kubernetes_tunnel to statefulset/empty" in result["msg"] and "Ready" in result["msg"], result["msg"]
    assert not list(tmp_path.rglob("manifest.json"))


def test_pg_backup_fails_naming_the_tunnel_when_the_api_server_dies_mid_dump(doomed_lab, postgres, tmp_path):
    postgres.psql("create table if not exists tunnel_big as select g as id, repeat(md5(g::text), 8) as v "
                  "from generate_series(1, 400000) g")
    repo = tmp_path / "repo"
    args = dict(postgres.login, db="postgres", repository="file://%s" % repo, compression_level=19,
                **tunnel_option(doomed_lab, "service/postgres", 5432))
    outcome: t.Dict[str, t.Any] = {}
    runner = threading.Thread(target=lambda: outcome.update(result=run_module("pg_backup", args)))
    runner.start()
    # Mid-dump: the data object is being written under the repository.
    k8s.wait_for(lambda: any(path.is_file() and path.stat().st_size > 200_000 for path in repo.rglob("*")),
                 timeout=120, what="the backup under way")
    doomed_lab.cluster.apiserver.send_signal(signal.SIGKILL)
    runner.join(180)
    result = outcome["result"]
    assert result.get("failed"), result
    assert result["msg"].startswith("kubernetes_tunnel to service/postgres port 5432 in namespace %s"
                                    % doomed_lab.namespace), result["msg"]
    assert "broke mid-stream" in result["msg"]
    assert not list(repo.rglob("manifest.json")), "nothing may be committed"
