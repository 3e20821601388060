"""KWOK as the cluster's node agent: its configuration, its Node, and the objects that wire Pods
to this machine (container logs from files, ``kubectl exec`` as local commands, port-forwards to
local services).

KWOK plays the Pod lifecycle by the Stage rules in ``tests/harness/kwok/*.yaml``: a Pod scheduled
onto a KWOK Node becomes Running and Ready at once (Job Pods then Succeeded), so Deployments,
StatefulSets, DaemonSets and Jobs roll out through the real controller manager and EndpointSlice
controller. A Pod fails on purpose by its ``runbook.ops/fault`` annotation or its image tag (see
:data:`FAULTS`).

The kubelet-facing objects (``ClusterPortForward``, ``PortForward``, ``ClusterLogs``, ``Logs``,
``ClusterExec``, ``Exec``) are served as CRDs, so a test or the lab adds them at run time with
the API client; KWOK watches them.
"""

from __future__ import annotations

import datetime
import typing as t
from pathlib import Path

from tests.harness.collection import ensure_collection_path

ensure_collection_path()

from ansible_collections.runbook.ops.plugins.module_utils import _k8s  # noqa: E402  pylint: disable=wrong-import-position

STAGES = tuple(sorted((Path(__file__).parent / "kwok").glob("*.yaml")))
NODE_NAME = "kwok-node-0"
NODE_ANNOTATION = "kwok.x-k8s.io/node"
FAULT_ANNOTATION = "runbook.ops/fault"
#: Faults a Pod can ask for (annotation value or image tag) and what KWOK makes of them.
FAULTS = {
    "crashloop": "Running, never Ready, CrashLoopBackOff with a restart count that climbs",
    "imagepullbackoff": "Pending with ImagePullBackOff",
    "unready": "Running with its containers up but never Ready",
    "oomkilled": "Running and Ready after one restart whose last state is OOMKilled",
}
API = "kwok.x-k8s.io/v1alpha1"
# kind -> (plural, namespaced)
KINDS = {
    "ClusterPortForward": ("clusterportforwards", False), "PortForward": ("portforwards", True),
    "ClusterLogs": ("clusterlogs", False), "Logs": ("logs", True),
    "ClusterExec": ("clusterexecs", False), "Exec": ("execs", True),
}


def crds() -> t.List[dict]:
    """CustomResourceDefinitions for the kinds KWOK watches (schemas left open: KWOK validates)."""
    out = []
    for kind, (plural, namespaced) in KINDS.items():
        out.append({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "%s.kwok.x-k8s.io" % plural},
            "spec": {"group": "kwok.x-k8s.io", "scope": "Namespaced" if namespaced else "Cluster",
                     "names": {"kind": kind, "listKind": kind + "List", "plural": plural,
                               "singular": kind.lower()},
                     "versions": [{"name": "v1alpha1", "served": True, "storage": True,
                                   "subresources": {"status": {}},
                                   "schema": {"openAPIV3Schema": {
                                       "type": "object", "properties": {
                                           "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                                           "status": {"type": "object",
                                                      "x-kubernetes-preserve-unknown-fields": True}}}}}]},
        })
    return out


def configuration(port: int, cert_file: Path, key_file: Path) -> dict:
    """The KwokConfiguration: which Nodes it manages, where its kubelet server listens."""
    return {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1", "kind": "KwokConfiguration",
        "options": {
            "manageAllNodes": False,
            "manageNodesWithAnnotationSelector": "%s=fake" % NODE_ANNOTATION,
            "cidr": "10.244.0.0/16",
            "nodeIP": "127.0.0.1", "nodePort": port, "serverAddress": "127.0.0.1:%d" % port,
            "tlsCertFile": str(cert_file), "tlsPrivateKeyFile": str(key_file),
            "enableDebuggingHandlers": True, "enableProfilingHandler": False,
            "enableCRDs": sorted(KINDS),
            # Left at zero these stop KWOK at start-up.
            "podPlayStageParallelism": 8, "nodePlayStageParallelism": 2,
            "nodeLeaseParallelism": 2, "nodeLeaseDurationSeconds": 40, "podsOnNodeSyncParallelism": 2,
        },
    }


def node(name: str = NODE_NAME) -> dict:
    """A Node KWOK manages (it sets the status; the harness lifts the not-ready taint once Ready)."""
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {NODE_ANNOTATION: "fake"},
                         "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                    "type": "kwok"}}}


def node_ready(client: _k8s.K8sClient, name: str = NODE_NAME) -> bool:
    """True once KWOK reported the Node Ready and nothing keeps the scheduler away from it."""
    obj = client.get("v1", "nodes", name, missing_ok=True)
    if obj is None:
        return False
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in (obj.get("status") or {}).get("conditions") or [])
    if ready and (obj.get("spec") or {}).get("taints"):
        # Admission taints every new Node not-ready; the node lifecycle controller (not run here:
        # it would evict the stand-in Node's Pods) is what lifts it.
        client.patch("v1", "nodes", name, {"spec": {"taints": None}})
        return False
    return ready


# ----------------------------------------------------------------------------------------------
# Pods KWOK runs


def pod(name: str, namespace: str, labels: t.Optional[dict] = None, image: str = "example/app:1.0",
        fault: t.Optional[str] = None, ports: t.Sequence[int] = (), container: str = "app") -> dict:
    """A Pod for the scheduler and KWOK; ``fault`` is one of :data:`FAULTS` (None: it just runs)."""
    if fault is not None and fault not in FAULTS:
        raise ValueError("unknown fault %r (one of %s)" % (fault, ", ".join(FAULTS)))
    meta: dict = {"name": name, "namespace": namespace, "labels": dict(labels or {"app": name})}
    if fault:
        meta["annotations"] = {FAULT_ANNOTATION: fault}
    spec_container: dict = {"name": container, "image": image}
    if ports:
        spec_container["ports"] = [{"containerPort": p, "protocol": "TCP"} for p in ports]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": [spec_container]}}


def pod_ready(client: _k8s.K8sClient, namespace: str, name: str) -> bool:
    obj = client.get("v1", "pods", name, namespace, missing_ok=True) or {}
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


def played(client: _k8s.K8sClient, namespace: str, name: str) -> t.Optional[dict]:
    """The Pod once KWOK has given it a status (a start time), else None."""
    obj = client.get("v1", "pods", name, namespace, missing_ok=True)
    if obj and (obj.get("status") or {}).get("startTime"):
        return obj
    return None


def rolled_out(client: _k8s.K8sClient, kind_plural: str, namespace: str, name: str) -> bool:
    """True when a Deployment/StatefulSet/DaemonSet has every replica of its current spec ready."""
    obj = client.get("apps/v1", kind_plural, name, namespace, missing_ok=True)
    if not obj:
        return False
    status = obj.get("status") or {}
    if status.get("observedGeneration", 0) < obj["metadata"].get("generation", 0):
        return False
    if kind_plural == "daemonsets":
        want = status.get("desiredNumberScheduled", -1)
        return want > 0 and status.get("numberReady") == want and status.get("updatedNumberScheduled") == want
    want = (obj.get("spec") or {}).get("replicas", 1)
    return status.get("readyReplicas", 0) == want and status.get("updatedReplicas", 0) == want \
        and status.get("replicas", 0) == want


# ----------------------------------------------------------------------------------------------
# Logs, exec and port-forward: what the kubelet server of a KWOK Node answers


def _selector(namespaces: t.Sequence[str], pods: t.Sequence[str]) -> t.Optional[dict]:
    selector: dict = {}
    if namespaces:
        selector["matchNamespaces"] = list(namespaces)
    if pods:
        selector["matchNames"] = list(pods)
    return selector or None


def _apply(client: _k8s.K8sClient, kind: str, name: str, spec: dict) -> dict:
    return client.apply({"apiVersion": API, "kind": kind, "metadata": {"name": name}, "spec": spec},
                        plural=KINDS[kind][0])


def port_forward(client: _k8s.K8sClient, name: str, forwards: t.Mapping[int, t.Tuple[str, int]],
                 namespaces: t.Sequence[str] = (), pods: t.Sequence[str] = ()) -> dict:
    """A ClusterPortForward: port P of the selected Pods leads to ``forwards[P]`` = (address, port)
    on this machine, so ``kubectl port-forward`` through the API server reaches a local process."""
    spec: dict = {"forwards": [{"ports": [pod_port], "target": {"address": address, "port": port}}
                               for pod_port, (address, port) in sorted(forwards.items())]}
    selector = _selector(namespaces, pods)
    if selector:
        spec["selector"] = selector
    return _apply(client, "ClusterPortForward", name, spec)


def container_logs(client: _k8s.K8sClient, name: str, files: t.Mapping[str, Path],
                   namespaces: t.Sequence[str] = (), pods: t.Sequence[str] = (),
                   previous: t.Optional[t.Mapping[str, Path]] = None) -> dict:
    """A ClusterLogs: container C of the selected Pods logs ``files[C]`` (CRI format, see
    :func:`write_cri_log`); ``previous`` answers ``kubectl logs --previous``."""
    logs = []
    for container, path in sorted(files.items()):
        entry: dict = {"containers": [container], "logsFile": str(path), "follow": True}
        if previous and container in previous:
            entry["previousLogsFile"] = str(previous[container])
        logs.append(entry)
    spec: dict = {"logs": logs}
    selector = _selector(namespaces, pods)
    if selector:
        spec["selector"] = selector
    return _apply(client, "ClusterLogs", name, spec)


def local_exec(client: _k8s.K8sClient, name: str, env: t.Mapping[str, str], workdir: Path,
               namespaces: t.Sequence[str] = (), pods: t.Sequence[str] = ()) -> dict:
    """A ClusterExec: ``kubectl exec`` into the selected Pods runs the command on this machine in
    ``workdir`` with ``env`` added (how ``kubectl exec deployment/postgres -- pg_dump`` works)."""
    spec: dict = {"execs": [{"local": {"workDir": str(workdir),
                                       "envs": [{"name": k, "value": v} for k, v in sorted(env.items())]}}]}
    selector = _selector(namespaces, pods)
    if selector:
        spec["selector"] = selector
    return _apply(client, "ClusterExec", name, spec)


def write_cri_log(path: Path, lines: t.Sequence[str], start: t.Optional[datetime.datetime] = None,
                  step: float = 1.0, stream: str = "stdout") -> Path:
    """Write ``lines`` as a container runtime writes a log (``<RFC3339Nano> <stream> F <line>``):
    the only format the kubelet log endpoint accepts."""
    start = start or datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=step * len(lines))
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for i, line in enumerate(lines):
        moment = (start + datetime.timedelta(seconds=step * i)).astimezone(datetime.timezone.utc)
        out.append("%s.%09dZ %s F %s\n" % (moment.strftime("%Y-%m-%dT%H:%M:%S"), moment.microsecond * 1000,
                                           stream, line))
    path.write_text("".join(out))
    return path
