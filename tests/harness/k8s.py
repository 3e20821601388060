"""A real Kubernetes API on loopback: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
and KWOK as the node agent.

``KubeCluster(workdir).start()`` generates a CA, serving certificate, service-account keys and a
static token file, starts the processes on free ports (pid files and logs in ``workdir``),
installs a test-written cert-manager ``Certificate`` CRD and writes kubeconfigs:

* ``admin.kubeconfig``   the admin user (group ``system:masters``);
* ``contexts.kubeconfig`` contexts ``admin``, ``restricted`` (a user with no permissions until a test
  binds it to a Role) and ``unreachable`` (a closed port); current context ``restricted``.

KWOK manages the Node ``kwok-node-0`` and plays the Pod lifecycle by the Stage rules in
``tests/harness/kwok/`` (see ``tests.harness.kwok``): Pods the scheduler places there run, become
Ready or fail on purpose, and their logs, exec and port-forward work through the API server.
``Kubelet`` writes only what KWOK cannot express (back-dated states, exact restart counts, Nodes
under pressure, Events) on a stand-in Node KWOK does not manage.

``KubeCluster.attach(workdir).stop()`` stops a cluster another process started (the lab).

Binaries: ``$RUNBOOK_K8S_BIN``, else ``$KUBEBUILDER_ASSETS`` (per binary), else what
``scripts/k8s-binaries`` prints (it builds them on first use). ``$RUNBOOK_TEST_KUBECONFIG`` points
the tests at an existing cluster instead (kind, k3d, minikube).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import os
import ssl
import subprocess
import time
import typing as t
import urllib.request
from pathlib import Path

from tests.harness.collection import REPO, ensure_collection_path
from tests.harness.process import ManagedProcess, ServiceError, free_port, wait_for  # noqa: F401  pylint: disable=unused-import

ensure_collection_path()

from ansible_collections.runbook.ops.plugins.module_utils import _k8s  # noqa: E402  pylint: disable=wrong-import-position

ADMIN_TOKEN = "runbook-admin-token"
RESTRICTED_TOKEN = "runbook-restricted-token"
CONTROLLER_TOKEN = "runbook-controller-manager-token"
SCHEDULER_TOKEN = "runbook-scheduler-token"
KWOK_TOKEN = "runbook-kwok-token"
RESTRICTED_USER = "restricted"
NODE_NAME = "lab-node-1"
STAND_IN_SCHEDULER = "runbook-stand-in"
STAND_IN_TAINT = {"key": "runbook.ops/stand-in", "value": "true", "effect": "NoSchedule"}
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

CERTIFICATE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "certificates.cert-manager.io"},
    "spec": {
        "group": "cert-manager.io",
        "names": {"kind": "Certificate", "listKind": "CertificateList", "plural": "certificates",
                  "singular": "certificate", "shortNames": ["cert", "certs"]},
        "scope": "Namespaced",
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
            }},
        }],
    },
}


# ----------------------------------------------------------------------------------------------
# Binaries


def binary_dir() -> Path:
    """The directory holding etcd, kube-apiserver and kube-controller-manager (built if needed)."""
    explicit = os.environ.get("RUNBOOK_K8S_BIN")
    if explicit:
        return Path(explicit)
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and all((Path(assets) / name).exists() for name in BINARIES):
        return Path(assets)
    proc = subprocess.run([str(REPO / "scripts" / "k8s-binaries")], stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise ServiceError("scripts/k8s-binaries failed (exit %d): cannot get the Kubernetes test binaries"
                           % proc.returncode)
    return Path(proc.stdout.strip().splitlines()[-1])


def _binary(bin_dir: Path, name: str) -> str:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and (Path(assets) / name).exists() and not os.environ.get("RUNBOOK_K8S_BIN"):
        return str(Path(assets) / name)
    path = bin_dir / name
    if not path.exists():
        raise ServiceError("%s not found in %s" % (name, bin_dir))
    return str(path)


# ----------------------------------------------------------------------------------------------
# Certificates


def _pki(workdir: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)

    def write_key(path: Path, key: t.Any) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "runbook-test-ca")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    (workdir / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    write_key(workdir / "ca.key", ca_key)

    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(n) for n in ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                      "kubernetes.default.svc.cluster.local")]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "10.96.0.1")]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (workdir / "apiserver.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_key(workdir / "apiserver.key", key)
    # KWOK's kubelet server (logs, exec, port-forward) presents the same loopback identity.
    (workdir / "kwok.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_key(workdir / "kwok.key", key)

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_key(workdir / "sa.key", sa_key)
    (workdir / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    tokens = workdir / "tokens.csv"
    tokens.write_text("\n".join([
        '%s,admin,uid-admin,"system:masters"' % ADMIN_TOKEN,
        '%s,system:kube-controller-manager,uid-kcm,"system:masters"' % CONTROLLER_TOKEN,
        '%s,system:kube-scheduler,uid-scheduler,"system:masters"' % SCHEDULER_TOKEN,
        '%s,system:node:kwok,uid-kwok,"system:masters"' % KWOK_TOKEN,
        '%s,%s,uid-restricted' % (RESTRICTED_TOKEN, RESTRICTED_USER),
    ]) + "\n")
    tokens.chmod(0o600)


def kubeconfig_dict(server: str, ca_pem: bytes, users: t.Mapping[str, str],
                    contexts: t.Mapping[str, t.Tuple[str, str]], current: str) -> dict:
    """A kubeconfig: ``users`` maps user name to token, ``contexts`` maps name to (server, user)."""
    servers = sorted({srv for srv, _user in contexts.values()} | {server})
    cluster_names = {srv: "cluster-%d" % i for i, srv in enumerate(servers)}
    return {
        "apiVersion": "v1", "kind": "Config", "preferences": {}, "current-context": current,
        "clusters": [{"name": cluster_names[srv], "cluster": {
            "server": srv, "certificate-authority-data": base64.b64encode(ca_pem).decode()}} for srv in servers],
        "users": [{"name": name, "user": {"token": token}} for name, token in users.items()],
        "contexts": [{"name": name, "context": {"cluster": cluster_names[srv], "user": user}}
                     for name, (srv, user) in contexts.items()],
    }


def _write_kubeconfig(path: Path, config: dict) -> None:
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


# ----------------------------------------------------------------------------------------------
# The cluster


class KubeCluster:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + KWOK under ``workdir``.

    ``node_agent=False`` leaves out the scheduler and KWOK (a cluster whose Pods never run).
    """

    def __init__(self, workdir: t.Union[str, Path], bin_dir: t.Optional[Path] = None,
                 controller_manager: bool = True, audit: bool = False, node_agent: bool = True) -> None:
        self.workdir = Path(workdir)
        self.audit = audit
        self.bin_dir = bin_dir
        self._apiserver_argv: t.List[str] = []
        self.with_controller_manager = controller_manager
        self.with_node_agent = node_agent
        self.etcd = ManagedProcess("etcd", self.workdir)
        self.apiserver = ManagedProcess("kube-apiserver", self.workdir)
        self.controller_manager = ManagedProcess("kube-controller-manager", self.workdir)
        self.scheduler = ManagedProcess("kube-scheduler", self.workdir)
        self.kwok = ManagedProcess("kwok", self.workdir)
        self.state_file = self.workdir / "cluster.json"
        self.server = ""
        self.external = False

    # -- paths ----------------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def contexts_kubeconfig(self) -> Path:
        return self.workdir / "contexts.kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "ca.crt"

    def auth(self, token: str = ADMIN_TOKEN) -> dict:
        """Module auth options for a token user (no kubeconfig)."""
        if self.external:
            return {"kubeconfig": str(self.kubeconfig)}
        return {"host": self.server, "api_key": token, "ca_cert": str(self.ca_file)}

    def client(self, token: str = ADMIN_TOKEN) -> _k8s.K8sClient:
        if self.external:
            return _k8s.K8sClient.from_params({"kubeconfig": str(self.kubeconfig)})
        return _k8s.K8sClient.from_params(self.auth(token))

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def existing(cls, kubeconfig: t.Union[str, Path], workdir: t.Union[str, Path]) -> "KubeCluster":
        """Use a running cluster (kind, k3d, minikube) instead of starting one: start/stop do nothing."""
        cluster = cls(workdir)
        cluster.external = True
        cluster.workdir.mkdir(parents=True, exist_ok=True)
        cluster.workdir.joinpath("admin.kubeconfig").write_bytes(Path(kubeconfig).read_bytes())
        cluster.server = cluster.client().settings.host
        return cluster

    @classmethod
    def attach(cls, workdir: t.Union[str, Path]) -> "KubeCluster":
        """The cluster a previous ``start()`` left running in ``workdir`` (to query or stop it)."""
        cluster = cls(workdir)
        state = json.loads(cluster.state_file.read_text())
        cluster.server = state["server"]
        return cluster

    def running(self) -> bool:
        return self.apiserver.running() and self.etcd.running()

    def node_agent_running(self) -> bool:
        return self.scheduler.running() and self.kwok.running()

    def start(self, timeout: float = 60.0) -> "KubeCluster":
        if self.external:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        bin_dir = self.bin_dir or binary_dir()
        try:
            self._start(bin_dir, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, bin_dir: Path, timeout: float) -> None:
        started = time.monotonic()
        _pki(self.workdir)
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        self.etcd.spawn([
            _binary(bin_dir, "etcd"), "--name", "default", "--data-dir", str(self.workdir / "etcd-data"),
            "--listen-client-urls", "http://127.0.0.1:%d" % etcd_port,
            "--advertise-client-urls", "http://127.0.0.1:%d" % etcd_port,
            "--listen-peer-urls", "http://127.0.0.1:%d" % peer_port,
            "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % peer_port,
            "--initial-cluster", "default=http://127.0.0.1:%d" % peer_port,
            "--unsafe-no-fsync", "--log-level", "warn",
        ])
        self.etcd.wait_port("127.0.0.1", etcd_port, timeout=timeout)
        self.server = "https://127.0.0.1:%d" % api_port
        wd = self.workdir
        self._apiserver_argv = [
            _binary(bin_dir, "kube-apiserver"),
            "--etcd-servers", "http://127.0.0.1:%d" % etcd_port,
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", str(api_port),
            "--tls-cert-file", str(wd / "apiserver.crt"), "--tls-private-key-file", str(wd / "apiserver.key"),
            "--client-ca-file", str(wd / "ca.crt"),
            "--token-auth-file", str(wd / "tokens.csv"),
            "--authorization-mode", "RBAC",
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(wd / "sa.pub"),
            "--service-account-signing-key-file", str(wd / "sa.key"),
            "--service-cluster-ip-range", "10.96.0.0/16",
            "--allow-privileged=true",
            # No kubelet: Pods must be creatable before the controller manager made the default
            # ServiceAccount, and need no token volume.
            "--disable-admission-plugins", "ServiceAccount",
            # The kubernetes Service may not point at a loopback address: no endpoint reconciler.
            "--endpoint-reconciler-type", "none",
            # KWOK's Node answers logs, exec and port-forward on 127.0.0.1 (its InternalIP).
            "--kubelet-preferred-address-types", "InternalIP,Hostname",
            "--profiling=false", "--v=0",
        ] + self._audit_args()
        self.apiserver.spawn(self._apiserver_argv)
        self._write_state()
        ca_pem = (wd / "ca.crt").read_bytes()
        _write_kubeconfig(self.kubeconfig, kubeconfig_dict(
            self.server, ca_pem, {"admin": ADMIN_TOKEN}, {"admin": (self.server, "admin")}, "admin"))
        closed = "https://127.0.0.1:%d" % free_port()
        _write_kubeconfig(self.contexts_kubeconfig, kubeconfig_dict(
            self.server, ca_pem, {"admin": ADMIN_TOKEN, RESTRICTED_USER: RESTRICTED_TOKEN},
            {"admin": (self.server, "admin"), "restricted": (self.server, RESTRICTED_USER),
             "unreachable": (closed, "admin")}, "restricted"))
        for name, token in (("controller-manager", CONTROLLER_TOKEN), ("scheduler", SCHEDULER_TOKEN),
                            ("kwok", KWOK_TOKEN)):
            _write_kubeconfig(wd / ("%s.kubeconfig" % name), kubeconfig_dict(
                self.server, ca_pem, {name: token}, {name: (self.server, name)}, name))
        self.apiserver.wait_until(self._ready, timeout=timeout, what="ready (/readyz)")
        if self.with_controller_manager:
            self.controller_manager.spawn([
                _binary(bin_dir, "kube-controller-manager"),
                "--kubeconfig", str(wd / "controller-manager.kubeconfig"),
                # Every default controller except the node lifecycle one (it would mark the stand-in
                # Node NotReady and evict its Pods) and the HPA one (there is no metrics API: it
                # would only fill the namespaces with FailedGetResourceMetric warnings).
                "--controllers", "*,-node-lifecycle-controller,-horizontal-pod-autoscaler-controller",
                "--service-account-private-key-file", str(wd / "sa.key"),
                "--root-ca-file", str(wd / "ca.crt"),
                "--use-service-account-credentials=true",
                "--leader-elect=false", "--secure-port=0",
                "--concurrent-deployment-syncs", "10", "--concurrent-replicaset-syncs", "10",
                "--kube-api-qps", "200", "--kube-api-burst", "400",
                "--v=0",
            ])
        admin = self.client()
        admin.apply(CERTIFICATE_CRD)
        deadline = time.monotonic() + timeout
        while not _established(admin.get("apiextensions.k8s.io/v1", "customresourcedefinitions",
                                         CERTIFICATE_CRD["metadata"]["name"])):
            if time.monotonic() > deadline:
                raise ServiceError("the Certificate CRD was not established within %ss" % timeout)
            time.sleep(0.1)
        if self.with_controller_manager:
            self.controller_manager.wait_until(lambda: self._has_default_sa(admin), timeout=timeout,
                                               what="running (default ServiceAccount created)")
        if self.with_node_agent:
            self._start_node_agent(bin_dir, admin, timeout)
        self.started_in = round(time.monotonic() - started, 1)

    def _start_node_agent(self, bin_dir: Path, admin: _k8s.K8sClient, timeout: float) -> None:
        """kube-scheduler places Pods; KWOK runs those on its Node by the shipped Stage rules."""
        from tests.harness import kwok

        wd = self.workdir
        self.scheduler.spawn([
            _binary(bin_dir, "kube-scheduler"), "--kubeconfig", str(wd / "scheduler.kubeconfig"),
            "--leader-elect=false", "--secure-port=0", "--kube-api-qps", "200", "--kube-api-burst", "400", "--v=0",
        ])
        for crd in kwok.crds():
            admin.apply(crd)
        deadline = time.monotonic() + timeout
        for crd in kwok.crds():
            while not _established(admin.get("apiextensions.k8s.io/v1", "customresourcedefinitions",
                                             crd["metadata"]["name"])):
                if time.monotonic() > deadline:
                    raise ServiceError("the KWOK CRDs were not established within %ss" % timeout)
                time.sleep(0.1)
        config = wd / "kwok.yaml"
        config.write_text(json.dumps(kwok.configuration(free_port(), wd / "kwok.crt", wd / "kwok.key")))
        argv = [_binary(bin_dir, "kwok"), "--kubeconfig", str(wd / "kwok.kubeconfig"), "--config", str(config)]
        for stages in kwok.STAGES:
            argv += ["--config", str(stages)]
        self.kwok.spawn(argv)
        if admin.get("v1", "nodes", kwok.NODE_NAME, missing_ok=True) is None:
            admin.create("v1", "nodes", kwok.node())
        else:
            # A restarted cluster (the lab after a reboot): KWOK listens on a new port, so let it
            # initialise its Node again, which records that port as the kubelet endpoint.
            admin.modify("v1", "nodes", kwok.NODE_NAME, lambda obj: dict(obj, status={}), subresource="status")
        self.kwok.wait_until(lambda: kwok.node_ready(admin), timeout=timeout, what="running its Node (Ready)")

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def _audit_args(self) -> t.List[str]:
        """With ``audit=True`` every request is logged (one JSON line, metadata only) to ``audit.log``:
        how the benchmark counts what a client sent."""
        if not self.audit:
            return []
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(json.dumps({"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
                                      "omitStages": ["RequestReceived"], "rules": [{"level": "Metadata"}]}))
        return ["--audit-policy-file", str(policy), "--audit-log-path", str(self.audit_log),
                "--audit-log-format", "json", "--audit-log-mode", "blocking", "--audit-log-maxsize", "0"]

    def audit_requests(self, start: int = 0, user: str = "admin") -> t.Tuple[int, int]:
        """``(requests by user, new offset)`` counted in the audit log from byte ``start`` on."""
        count = 0
        with open(self.audit_log, "rb") as handle:
            handle.seek(start)
            data = handle.read()
        for line in data.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("stage") == "ResponseComplete" and (event.get("user") or {}).get("username") == user:
                count += 1
        return count, start + len(data)

    def audit_offset(self) -> int:
        return self.audit_log.stat().st_size if self.audit_log.exists() else 0

    def _has_default_sa(self, admin: _k8s.K8sClient) -> bool:
        return admin.get("v1", "serviceaccounts", "default", "default", missing_ok=True) is not None

    def _ready(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(self.server + "/readyz", context=context, timeout=2) as answer:  # nosec
                return answer.status == 200
        except OSError:
            return False

    def _write_state(self) -> None:
        self.state_file.write_text(json.dumps({"server": self.server, "kubeconfig": str(self.kubeconfig)}))

    def restart_apiserver(self, timeout: float = 60.0) -> None:
        """Start kube-apiserver again, after a test killed it, with the arguments it ran with (etcd
        kept the state); returns once it answers ``/readyz``."""
        self.apiserver.stop()
        self.apiserver.spawn(self._apiserver_argv)
        self.apiserver.wait_until(self._ready, timeout=timeout, what="ready again (/readyz)")

    def stop(self) -> None:
        """Stop every process (controller manager first, etcd last); safe to call more than once."""
        if self.external:
            return
        for proc in (self.kwok, self.scheduler, self.controller_manager, self.apiserver, self.etcd):
            proc.stop()

    def logs(self) -> str:
        from tests.harness.process import log_tail

        return "\n".join("== %s ==\n%s" % (p.name, log_tail(p.log_file)) for p in
                         (self.etcd, self.apiserver, self.controller_manager, self.scheduler, self.kwok))


def _established(crd: t.Optional[dict]) -> bool:
    for cond in ((crd or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Established" and cond.get("status") == "True":
            return True
    return False


# ----------------------------------------------------------------------------------------------
# The kubelet's part


def ts(moment: t.Optional[datetime.datetime] = None, ago: float = 0.0) -> str:
    moment = moment or datetime.datetime.now(datetime.timezone.utc)
    moment = moment - datetime.timedelta(seconds=ago)
    return moment.astimezone(datetime.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kubelet:
    """Writes the states KWOK cannot express, on a stand-in Node KWOK does not manage.

    KWOK runs every Pod the scheduler places on its Node: Running and Ready, crash loops, image
    pull failures, unready and OOM-killed containers (see ``tests.harness.kwok.FAULTS``). What its
    Stage rules cannot express is history and arbitrary status:

    * a Pod Pending or unready *since* a given time (back-dated transitions, for grace periods);
    * a container with an exact restart count (KWOK's crash loop counts up by itself);
    * a Pod running on a Node whose kubelet cannot be reached (KWOK's Node always answers);
    * any other waiting reason (``ErrImagePull``, ``CreateContainerConfigError`` ...);
    * a Node that is NotReady or under memory/disk pressure beside the healthy KWOK Node;
    * EndpointSlices with no Pod behind them, and Events first and last seen at given times.

    Its Pods name a scheduler that does not exist (so kube-scheduler leaves them alone) and are
    bound to the stand-in Node, which is tainted so the scheduler puts nothing else there.
    """

    def __init__(self, client: _k8s.K8sClient, node: str = NODE_NAME) -> None:
        self.client = client
        self.node = node
        self._ip = 10

    # -- nodes ----------------------------------------------------------------------------------

    def ensure_node(self, name: t.Optional[str] = None, ready: bool = True,
                    pressure: t.Sequence[str] = ()) -> dict:
        """A Node object with the given Ready state and pressure conditions (MemoryPressure, ...)."""
        name = name or self.node
        node = self.client.get("v1", "nodes", name, missing_ok=True)
        if node is None:
            node = self.client.create("v1", "nodes", {"metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "runbook.test/fake": "true"}},
                "spec": {"taints": [STAND_IN_TAINT]}})
        now = ts()
        conditions = [
            {"type": kind, "status": "True" if kind in pressure else "False", "reason": "KubeletHas" + (
                "" if kind in pressure else "No") + kind, "message": kind, "lastHeartbeatTime": now,
             "lastTransitionTime": now}
            for kind in ("MemoryPressure", "DiskPressure", "PIDPressure")]
        conditions.append({"type": "Ready", "status": "True" if ready else "False",
                           "reason": "KubeletReady" if ready else "KubeletNotReady",
                           "message": "kubelet is posting ready status" if ready else "container runtime is down",
                           "lastHeartbeatTime": now, "lastTransitionTime": now})
        status = {"conditions": conditions, "addresses": [{"type": "InternalIP", "address": "192.0.2.10"}],
                  "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                  "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}
        node = self.client.modify("v1", "nodes", name, lambda obj: dict(obj, status=status), subresource="status")[2]
        if ready and (node.get("spec") or {}).get("taints") != [STAND_IN_TAINT]:
            # Admission taints a new node not-ready; its (absent) lifecycle controller would lift that.
            # The stand-in taint stays: the scheduler must place real workloads on KWOK's Node.
            node = self.client.patch("v1", "nodes", name, {"spec": {"taints": [STAND_IN_TAINT]}})
        return node

    # -- pods -----------------------------------------------------------------------------------

    def create_pod(self, namespace: str, name: str, labels: t.Optional[dict] = None, image: str = "example/app:1.0",
                   containers: t.Sequence[str] = ("app",), owner: t.Optional[dict] = None) -> dict:
        """A Pod whose status this helper writes (kube-scheduler and KWOK leave it alone)."""
        meta: dict = {"name": name, "namespace": namespace, "labels": dict(labels or {"app": name})}
        if owner:
            meta["ownerReferences"] = [owner]
        return self.client.create("v1", "pods", {"metadata": meta, "spec": {
            "schedulerName": STAND_IN_SCHEDULER, "tolerations": [dict(STAND_IN_TAINT, operator="Equal")],
            "containers": [{"name": c, "image": image} for c in containers]}}, namespace)

    def bind(self, pod: dict) -> dict:
        """Schedule the Pod onto the fake node (the binding subresource, as the scheduler does)."""
        meta = pod["metadata"]
        if not (pod.get("spec") or {}).get("nodeName"):
            self.client.request("POST", _k8s.resource_path("v1", "pods", meta["namespace"], meta["name"], "binding"),
                                body={"apiVersion": "v1", "kind": "Binding", "metadata": {"name": meta["name"]},
                                      "target": {"apiVersion": "v1", "kind": "Node", "name": self.node}},
                                what="bind Pod/%s/%s" % (meta["namespace"], meta["name"]))
        return self.client.get("v1", "pods", meta["name"], meta["namespace"])

    def _next_ip(self) -> str:
        self._ip += 1
        return "10.244.%d.%d" % (self._ip // 250, self._ip % 250 + 2)

    def set_status(self, namespace: str, name: str, phase: str = "Running", ready: bool = True,
                   waiting: t.Optional[t.Tuple[str, str]] = None, restarts: int = 0,
                   last_terminated: t.Optional[t.Tuple[str, int]] = None, started_ago: float = 600.0,
                   ready_changed_ago: t.Optional[float] = None, scheduled: bool = True,
                   unschedulable_message: str = "0/1 nodes are available: 1 Insufficient cpu.") -> dict:
        """Write a Pod's status the way a kubelet would.

        ``waiting`` is ``(reason, message)`` for every container (CrashLoopBackOff, ImagePullBackOff,
        ...); ``last_terminated`` ``(reason, exit_code)`` such as ``("OOMKilled", 137)``;
        ``scheduled=False`` leaves the Pod Pending and unschedulable.
        """
        for attempt in range(5):
            try:
                return self._set_status(namespace, name, phase, ready, waiting, restarts, last_terminated, started_ago,
                                        ready_changed_ago, scheduled, unschedulable_message)
            except _k8s.K8sConflict:
                if attempt == 4:
                    raise
        raise AssertionError("not reached")

    def _set_status(self, namespace: str, name: str, phase: str, ready: bool, waiting: t.Optional[t.Tuple[str, str]],
                    restarts: int, last_terminated: t.Optional[t.Tuple[str, int]], started_ago: float,
                    ready_changed_ago: t.Optional[float], scheduled: bool, unschedulable_message: str) -> dict:
        pod = self.client.get("v1", "pods", name, namespace)
        if scheduled and phase != "Pending":
            pod = self.bind(pod)
        start = ts(ago=started_ago)
        changed = ts(ago=started_ago if ready_changed_ago is None else ready_changed_ago)
        statuses = []
        for container in pod["spec"]["containers"]:
            status: dict = {"name": container["name"], "image": container["image"], "imageID": "",
                            "restartCount": restarts, "ready": ready and waiting is None, "started": waiting is None}
            if waiting:
                status["state"] = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
            elif phase == "Running":
                status["state"] = {"running": {"startedAt": start}}
                status["containerID"] = "containerd://%s" % (name.encode().hex()[:32])
            else:
                status["state"] = {"waiting": {"reason": "ContainerCreating"}}
            if last_terminated:
                status["lastState"] = {"terminated": {"reason": last_terminated[0], "exitCode": last_terminated[1],
                                                      "startedAt": start, "finishedAt": ts(ago=30)}}
            statuses.append(status)
        is_ready = ready and waiting is None and phase == "Running"
        conditions = [{"type": "PodScheduled", "status": "True" if scheduled else "False",
                       "lastTransitionTime": start}]
        if not scheduled:
            conditions[0].update(reason="Unschedulable", message=unschedulable_message)
        else:
            conditions += [
                {"type": "Initialized", "status": "True", "lastTransitionTime": start},
                {"type": "ContainersReady", "status": "True" if is_ready else "False", "lastTransitionTime": changed},
                {"type": "Ready", "status": "True" if is_ready else "False", "lastTransitionTime": changed},
            ]
            if not is_ready:
                conditions[-1]["reason"] = conditions[-2]["reason"] = "ContainersNotReady"
        pod["status"] = {"phase": phase, "conditions": conditions, "startTime": start, "qosClass": "BestEffort"}
        if scheduled:
            ip = self._next_ip()
            pod["status"].update(hostIP="192.0.2.10", podIP=ip, podIPs=[{"ip": ip}], containerStatuses=statuses)
        return self.client.update_status("v1", "pods", pod)

    def running(self, namespace: str, name: str, restarts: int = 0) -> dict:
        """Running and Ready on the stand-in Node (whose kubelet endpoint nobody answers), its
        containers restarted exactly ``restarts`` times."""
        return self.set_status(namespace, name, "Running", True, restarts=restarts)

    def not_ready(self, namespace: str, name: str, since: float = 900.0) -> dict:
        """Running, not Ready for the last ``since`` seconds."""
        return self.set_status(namespace, name, "Running", False, ready_changed_ago=since)

    def crash_loop(self, namespace: str, name: str, restarts: int = 7) -> dict:
        """CrashLoopBackOff with exactly ``restarts`` restarts."""
        return self.set_status(namespace, name, "Running", False, restarts=restarts, last_terminated=("Error", 1),
                               waiting=("CrashLoopBackOff", "back-off 5m0s restarting failed container"))

    def pending(self, namespace: str, name: str, since: float = 900.0) -> dict:
        """Unschedulable for the last ``since`` seconds."""
        return self.set_status(namespace, name, "Pending", False, scheduled=False, started_ago=since)

    # -- endpoints and events -------------------------------------------------------------------

    def endpoint_slice(self, namespace: str, service: str, ready: t.Sequence[bool] = (True,), port: int = 8080) -> dict:
        """An EndpointSlice for ``service`` with one endpoint per entry of ``ready``."""
        return self.client.create("discovery.k8s.io/v1", "endpointslices", {
            "metadata": {"generateName": service + "-", "namespace": namespace, "labels": {
                "kubernetes.io/service-name": service, "endpointslice.kubernetes.io/managed-by": "runbook-test"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [self._next_ip()], "conditions": {"ready": r}} for r in ready],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        }, namespace)

    def event(self, namespace: str, involved: dict, reason: str, message: str, count: int = 1,
              type_: str = "Warning", ago: float = 60.0, first_ago: t.Optional[float] = None) -> dict:
        """A core/v1 Event about ``involved`` ({kind, name[, namespace, apiVersion]})."""
        obj = {"kind": involved["kind"], "name": involved["name"],
               "namespace": involved.get("namespace", namespace), "apiVersion": involved.get("apiVersion", "v1")}
        return self.client.create("v1", "events", {
            "metadata": {"generateName": "%s.%s." % (involved["name"], reason.lower()), "namespace": namespace},
            "involvedObject": obj, "reason": reason, "message": message, "type": type_, "count": count,
            "firstTimestamp": ts(ago=first_ago if first_ago is not None else ago), "lastTimestamp": ts(ago=ago),
            "source": {"component": "kubelet", "host": self.node},
        }, namespace)


# ----------------------------------------------------------------------------------------------
# Object builders shared by the tests, the lab and the benchmark


SERVER_OWNED = ("resourceVersion", "managedFields", "generation", "creationTimestamp", "uid")


def without_server_fields(obj: dict, owned: t.Sequence[str] = SERVER_OWNED) -> dict:
    """A deep copy of ``obj`` without its status and the ``owned`` metadata the server sets: what a test
    compares before and after an undo."""
    obj = json.loads(json.dumps(obj))
    obj.pop("status", None)
    for key in owned:
        obj["metadata"].pop(key, None)
    return obj


def namespace(client: _k8s.K8sClient, name: str, labels: t.Optional[dict] = None) -> dict:
    existing = client.get("v1", "namespaces", name, missing_ok=True)
    if existing is not None:
        return existing
    return client.create("v1", "namespaces", {"metadata": {"name": name, "labels": dict(labels or {})}})


def deployment(name: str, namespace_: str, replicas: int = 1, labels: t.Optional[dict] = None,
               image: str = "example/app:1.0") -> dict:
    labels = dict(labels or {"app": name})
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace_, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": labels["app"]}},
                     "progressDeadlineSeconds": 600,
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "app", "image": image}]}}}}


def service(name: str, namespace_: str, selector: t.Optional[dict] = None, port: int = 8080) -> dict:
    spec: dict = {"ports": [{"name": "http", "port": port, "targetPort": port}]}
    if selector is not None:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace_}, "spec": spec}


def certificate(name: str, namespace_: str, not_after: datetime.datetime, ready: bool = True,
                reason: str = "Ready", message: str = "Certificate is up to date and has not expired") -> dict:
    return {"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
            "metadata": {"name": name, "namespace": namespace_},
            "spec": {"secretName": name + "-tls", "dnsNames": ["%s.%s.svc" % (name, namespace_)],
                     "issuerRef": {"name": "lab-ca", "kind": "ClusterIssuer"}},
            "_status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False", "reason": reason,
                                        "message": message, "lastTransitionTime": ts(ago=3600)}],
                        "notBefore": ts(not_after - datetime.timedelta(days=90)), "notAfter": ts(not_after),
                        "renewalTime": ts(not_after - datetime.timedelta(days=30))}}


def create_certificate(client: _k8s.K8sClient, body: dict) -> dict:
    """Create a Certificate and set its status through the status subresource (cert-manager's part)."""
    body = dict(body)
    status = body.pop("_status")
    created = client.create("cert-manager.io/v1", "certificates", body)
    created["status"] = status
    return client.update_status("cert-manager.io/v1", "certificates", created)


def grant_read(client: _k8s.K8sClient, namespace_: str, resources: t.Mapping[str, t.Sequence[str]],
               user: str = RESTRICTED_USER, name: str = "runbook-restricted-read") -> None:
    """Bind ``user`` to a Role in ``namespace_`` allowing get/list/watch on ``{api_group: [plurals]}``."""
    rules = [{"apiGroups": [group], "resources": list(plurals), "verbs": ["get", "list", "watch"]}
             for group, plurals in resources.items()]
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": namespace_}, "rules": rules}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": name, "namespace": namespace_},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}
    client.apply(role)
    client.apply(binding)


def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    """``python -m tests.harness.k8s start|stop|status WORKDIR``: a cluster on its own (the lab
    starts its own with ``python -m tests.harness.lab up``)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("workdir")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    if args.action == "start":
        cluster = KubeCluster(workdir)
        if (workdir / "cluster.json").exists() and KubeCluster.attach(workdir).running():
            print("already running: %s (kubeconfig %s)" % (KubeCluster.attach(workdir).server, cluster.kubeconfig))
            return 0
        cluster.start()
        print("Kubernetes API %s up in %.1fs; kubeconfig %s" % (cluster.server, cluster.started_in, cluster.kubeconfig))
        return 0
    if args.action == "status":
        cluster = KubeCluster.attach(workdir)
        print("running" if cluster.running() else "stopped", cluster.server)
        return 0 if cluster.running() else 1
    with contextlib.suppress(FileNotFoundError):
        KubeCluster.attach(workdir).stop()
    KubeCluster(workdir).stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
