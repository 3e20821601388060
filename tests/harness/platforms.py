"""The lab's platforms, built in the cluster from their inventory description.

Each host of ``inventories/lab/host_vars/`` describes one platform once (namespace, workloads in
start order, Services, Ingresses, Certificates, ConfigMaps, Secrets, HPAs, CronJobs, databases,
Redis). :func:`seed` turns that description into Kubernetes objects, idempotently: an object that
exists is left alone. KWOK runs the Pods; its ``ClusterPortForward`` leads the database ports of
every Pod in the namespace to the lab's PostgreSQL and Redis, ``ClusterLogs`` serves each
container's log file, ``ClusterExec`` runs ``kubectl exec`` commands on this machine with the
platform's database settings in the environment.
"""

from __future__ import annotations

import datetime
import typing as t
from pathlib import Path

from tests.harness import kwok
from tests.harness.collection import REPO
from tests.harness.k8s import certificate, create_certificate, namespace, wait_for

INVENTORY = REPO / "inventories" / "lab"
STORAGE_CLASS = "lab-local"


class Endpoints(t.NamedTuple):
    """Where the lab's processes listen and where its files are."""

    postgres: t.Tuple[str, int]
    redis: t.Tuple[str, int]
    redis_tls: t.Tuple[str, int]
    logs: Path
    volumes: Path
    exec_env: t.Mapping[str, str]
    exec_dir: Path


def load(inventory: Path = INVENTORY) -> t.Dict[str, dict]:
    """``{platform: its host_vars}`` for every host of the ``platforms`` group."""
    import yaml

    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    names = list(hosts["all"]["children"]["platforms"]["hosts"])
    return {name: yaml.safe_load((inventory / "host_vars" / ("%s.yml" % name)).read_text()) for name in names}


# ----------------------------------------------------------------------------------------------
# Objects


def _container(workload: dict) -> dict:
    return {"name": workload["app"], "image": "registry.lab/%s:1.0" % workload["app"],
            "ports": [{"containerPort": workload["port"], "protocol": "TCP"}]}


def workload_body(ns: str, workload: dict) -> t.Tuple[str, dict]:
    """``(plural, body)`` of a Deployment or StatefulSet labelled ``app=<app>``."""
    labels = {"app": workload["app"]}
    template: dict = {"metadata": {"labels": labels}, "spec": {"containers": [_container(workload)]}}
    if workload.get("fault"):
        # How KWOK is told to fail this workload's Pods (see kwok.FAULTS).
        template["metadata"]["annotations"] = {kwok.FAULT_ANNOTATION: workload["fault"]}
    spec: dict = {"replicas": workload["replicas"], "selector": {"matchLabels": labels}, "template": template}
    meta = {"name": workload["name"], "namespace": ns, "labels": labels}
    if workload["kind"] == "Deployment":
        return "deployments", {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": spec}
    spec["serviceName"] = workload["app"]
    claim = workload.get("volume_claim")
    if claim:
        template["spec"]["containers"][0]["volumeMounts"] = [{"name": claim, "mountPath": "/data"}]
        spec["volumeClaimTemplates"] = [{"metadata": {"name": claim}, "spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": STORAGE_CLASS,
            "resources": {"requests": {"storage": "1Gi"}}}}]
    return "statefulsets", {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta, "spec": spec}


def claim_names(workload: dict) -> t.List[str]:
    """PVC names a StatefulSet's volume claim template produces (``<claim>-<name>-<ordinal>``)."""
    claim = workload.get("volume_claim")
    if workload["kind"] != "StatefulSet" or not claim:
        return []
    return ["%s-%s-%d" % (claim, workload["name"], i) for i in range(workload["replicas"])]


def volume_body(ns: str, claim: str, root: Path) -> dict:
    """A PersistentVolume reserved for one claim (the lab has no provisioner)."""
    return {"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "lab-%s-%s" % (ns, claim), "labels": {"runbook.ops/lab": "true"}},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "storageClassName": STORAGE_CLASS, "persistentVolumeReclaimPolicy": "Retain",
                     "claimRef": {"namespace": ns, "name": claim},
                     "hostPath": {"path": str(root / ns / claim)}}}


def claim_body(ns: str, claim: str, app: str) -> dict:
    """The claim a StatefulSet's template would make, made first and bound to its own volume, so
    the StatefulSet adopts it and its Pod is never held back by an unbound claim."""
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": ns, "labels": {"app": app}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": STORAGE_CLASS,
                     "volumeName": "lab-%s-%s" % (ns, claim), "resources": {"requests": {"storage": "1Gi"}}}}


def _bound(client: t.Any, ns: str, claim: str) -> bool:
    obj = client.get("v1", "persistentvolumeclaims", claim, ns, missing_ok=True) or {}
    return (obj.get("status") or {}).get("phase") == "Bound"


def service_body(ns: str, svc: dict) -> dict:
    meta = {"name": svc["name"], "namespace": ns, "labels": {"app": svc["app"]}}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"selector": {"app": svc["app"]},
                     "ports": [{"name": "tcp-%d" % svc["port"], "port": svc["port"], "targetPort": svc["port"]}]}}


def ingress_body(ns: str, ing: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": ing["name"], "namespace": ns, "labels": {"app": ing["service"]}},
            "spec": {"tls": [{"hosts": [ing["host"]], "secretName": ing["tls_secret"]}],
                     "rules": [{"host": ing["host"], "http": {"paths": [{
                         "path": "/", "pathType": "Prefix",
                         "backend": {"service": {"name": ing["service"], "port": {"number": ing["port"]}}}}]}}]}}


def hpa_body(ns: str, hpa: dict) -> dict:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": hpa["name"], "namespace": ns, "labels": {"app": hpa["target"]}},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": hpa["target"]},
                     "minReplicas": hpa["min"], "maxReplicas": hpa["max"],
                     "metrics": [{"type": "Resource", "resource": {
                         "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]}}


def cronjob_body(ns: str, cron: dict, db: dict) -> dict:
    command = ["pg_dump", "-Fc", "-h", db["service"], "-U", db["owner"], "-f", "/backup/%s.dump" % db["name"],
               db["name"]]
    return {"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": cron["name"], "namespace": ns, "labels": {"app": cron["name"]}},
            "spec": {"schedule": cron["schedule"], "concurrencyPolicy": "Forbid",
                     "jobTemplate": {"spec": {"template": {
                         "metadata": {"labels": {"app": cron["name"]}},
                         "spec": {"restartPolicy": "OnFailure", "containers": [{
                             "name": cron["name"], "image": "registry.lab/postgres:15", "command": command}]}}}}}}


def configmap_body(ns: str, cm: dict) -> dict:
    policy = "package authz\n\ndefault allow = false\n\nallow {\n  input.user.roles[_] == \"admin\"\n}\n"
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": cm["name"], "namespace": ns, "labels": {"app": cm["app"]}},
            "data": {"authz.rego": policy}}


def secret_body(ns: str, secret: dict, values: t.Mapping[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret["name"], "namespace": ns},
            "type": "Opaque", "stringData": {key: values[key] for key in secret["keys"]}}


# ----------------------------------------------------------------------------------------------
# Seeding


def _ensure(client: t.Any, api_version: str, plural: str, body: dict) -> None:
    meta = body["metadata"]
    if client.get(api_version, plural, meta["name"], meta.get("namespace"), missing_ok=True) is None:
        client.create(api_version, plural, body, meta.get("namespace"))


def _log_lines(ns: str, app: str) -> t.List[str]:
    return ['{"level":"info","msg":"starting %s","namespace":"%s"}' % (app, ns),
            '{"level":"info","msg":"listening","app":"%s"}' % app,
            '{"level":"info","msg":"ready to serve requests","app":"%s"}' % app]


def _wire(client: t.Any, ns: str, platform: dict, lab: Endpoints) -> None:
    """KWOK's side: port-forwards to the lab's processes, container logs, exec on this machine."""
    tls = any(r.get("tls") for r in platform["platform_redis"])
    redis = lab.redis_tls if tls else lab.redis
    kwok.port_forward(client, "lab-%s" % ns, {5432: lab.postgres, 6379: redis}, namespaces=[ns])
    files = {}
    apps = [w["app"] for w in platform["platform_workloads"]] + [c["name"] for c in platform["platform_cronjobs"]]
    for app in apps:
        path = lab.logs / ns / ("%s.log" % app)
        if not path.exists():
            kwok.write_cri_log(path, _log_lines(ns, app))
        files[app] = path
    kwok.container_logs(client, "lab-%s" % ns, files, namespaces=[ns])
    kwok.local_exec(client, "lab-%s" % ns, lab.exec_env, lab.exec_dir, namespaces=[ns])


def seed_platform(client: t.Any, platform: dict, lab: Endpoints, secrets: t.Mapping[str, t.Mapping[str, str]],
                  now: t.Optional[datetime.datetime] = None) -> None:
    """Create what ``platform`` describes that does not exist yet (no waiting; see :func:`wait_ready`)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    ns = platform["platform_namespace"]
    namespace(client, ns, {"runbook.ops/platform": platform["platform_name"]})
    _wire(client, ns, platform, lab)
    for body in [configmap_body(ns, cm) for cm in platform["platform_configmaps"]]:
        _ensure(client, "v1", "configmaps", body)
    for secret in platform["platform_secrets"]:
        _ensure(client, "v1", "secrets", secret_body(ns, secret, secrets[secret["name"]]))
    for workload in platform["platform_workloads"]:
        for claim in claim_names(workload):
            _ensure(client, "v1", "persistentvolumes", volume_body(ns, claim, lab.volumes))
            _ensure(client, "v1", "persistentvolumeclaims", claim_body(ns, claim, workload["app"]))
            wait_for(lambda c=claim: _bound(client, ns, c), what="PersistentVolumeClaim/%s/%s bound" % (ns, claim))
        plural, body = workload_body(ns, workload)
        _ensure(client, "apps/v1", plural, body)
    # Seeded faults: workloads that never become ready (wait_ready leaves them out).
    for workload in platform.get("platform_faults") or []:
        plural, body = workload_body(ns, workload)
        _ensure(client, "apps/v1", plural, body)
    for svc in platform["platform_services"]:
        _ensure(client, "v1", "services", service_body(ns, svc))
    for ing in platform["platform_ingresses"]:
        _ensure(client, "networking.k8s.io/v1", "ingresses", ingress_body(ns, ing))
    for hpa in platform["platform_hpas"]:
        _ensure(client, "autoscaling/v2", "horizontalpodautoscalers", hpa_body(ns, hpa))
    for cron in platform["platform_cronjobs"]:
        _ensure(client, "batch/v1", "cronjobs", cronjob_body(ns, cron, platform["platform_databases"][0]))
    for cert in platform["platform_certificates"]:
        if client.get("cert-manager.io/v1", "certificates", cert["name"], ns, missing_ok=True) is None:
            body = certificate(cert["name"], ns, now + datetime.timedelta(days=cert["valid_days"]))
            body["spec"].update(secretName=cert["secret"], dnsNames=list(cert["dns_names"]))
            create_certificate(client, body)


def workloads_ready(client: t.Any, platform: dict) -> t.Tuple[int, int]:
    """``(ready, total)`` workloads of the platform."""
    ns = platform["platform_namespace"]
    ready = 0
    for workload in platform["platform_workloads"]:
        plural = "deployments" if workload["kind"] == "Deployment" else "statefulsets"
        ready += 1 if kwok.rolled_out(client, plural, ns, workload["name"]) else 0
    return ready, len(platform["platform_workloads"])


def wait_ready(client: t.Any, platforms: t.Mapping[str, dict], timeout: float = 90.0) -> None:
    for name, platform in platforms.items():
        wait_for(lambda p=platform: workloads_ready(client, p)[0] == workloads_ready(client, p)[1],
                 timeout=timeout, what="every workload of platform %s rolled out" % name)


def describe(client: t.Any, platform: dict) -> t.List[str]:
    """Lines for ``make lab-status``: workloads with ready replicas, Services with ready endpoints."""
    ns = platform["platform_namespace"]
    ready, total = workloads_ready(client, platform)
    lines = ["%s (namespace %s): %d/%d workloads rolled out" % (platform["platform_name"], ns, ready, total)]
    for workload in platform["platform_workloads"]:
        plural = "deployments" if workload["kind"] == "Deployment" else "statefulsets"
        obj = client.get("apps/v1", plural, workload["name"], ns, missing_ok=True) or {}
        ready_replicas = (obj.get("status") or {}).get("readyReplicas", 0)
        lines.append("  %-12s %-18s %s/%s ready"
                     % (workload["kind"], workload["name"], ready_replicas, workload["replicas"]))
    for svc in platform["platform_services"]:
        slices = client.list("discovery.k8s.io/v1", "endpointslices", ns,
                             label_selector="kubernetes.io/service-name=%s" % svc["name"])
        endpoints = sum(1 for s in slices for e in s.get("endpoints") or [] if (e.get("conditions") or {}).get("ready"))
        lines.append("  %-12s %-18s port %d, %d ready endpoint(s)" % ("Service", svc["name"], svc["port"], endpoints))
    return lines
