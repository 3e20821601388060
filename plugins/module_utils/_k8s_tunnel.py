# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reach a TCP port of an in-cluster Pod through the Kubernetes API server, as ``kubectl port-forward`` does.

A module that talks to PostgreSQL or Redis from outside the cluster (a laptop, an AWX job) opens a
:class:`KubernetesTunnel` for the duration of its task: a loopback listening port whose every
accepted connection becomes its own WebSocket to ``pods/<name>/portforward`` on the API server.
Client libraries and subprocesses (``pg_dump``) simply connect to ``127.0.0.1:<port>``.

* Protocol: the channel protocol ``v4.channel.k8s.io`` over WebSocket (RFC 6455), which the API server
  hands through to the node's kubelet (or KWOK). One port per WebSocket; binary messages whose first
  byte is the channel: ``2*i`` carries port ``i``'s data, ``2*i+1`` its error text; the first two bytes
  the server sends on each channel are the port number (little endian). The protocol has no
  half-close: when the local client closes its side, the whole connection ends.
* Targets: ``pod/NAME``, ``service/NAME`` (a Ready endpoint Pod, the Service port mapped to its
  ``targetPort``, named ports included), ``statefulset/NAME`` and ``deployment/NAME`` (a Ready Pod).
* Connection settings, TLS and credentials are those of :mod:`._k8s` (``resolve_settings``, the
  client's SSL context and token), so kubeconfig, exec plugins, in-cluster accounts and
  ``K8S_AUTH_*`` variables behave as in every Kubernetes module of the collection.
* Failures are :class:`TunnelError` messages that name the tunnel: no Ready Pod, a port the Pod does
  not expose, missing ``create pods/portforward`` permission, and a connection that broke mid-stream
  (the API server went away). A broken connection is remembered: :meth:`KubernetesTunnel.check` and
  leaving the ``with`` block raise it, so a backup that ran through the tunnel fails with it.
* The tunnel runs one asyncio event loop in one thread; leaving the ``with`` block (any exit path)
  closes the listener and every connection and joins the thread.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import threading
import typing as t
import urllib.parse

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError, Task
from ansible_collections.runbook.ops.plugins.module_utils._k8s import (
    K8sClient, K8sError, K8sForbidden, K8sNotFound, inline_kubeconfig_secrets, k8s_auth_argspec, object_ref,
    resource_path,
)
from ansible_collections.runbook.ops.plugins.module_utils._websocket import (
    OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, FrameDecoder, ProtocolError, accept_value, client_frame,
    handshake_request, new_key, parse_response_head,
)

OPTION = "kubernetes_tunnel"
SUBPROTOCOL = "v4.channel.k8s.io"
_DATA_CHANNEL, _ERROR_CHANNEL = 0, 1
_CHUNK = 64 * 1024
_CLOSE_GRACE = 5.0

# kind words accepted in ``target`` (kubectl's spellings) -> canonical kind
_TARGET_KINDS = {
    "pod": "pod", "pods": "pod", "po": "pod",
    "service": "service", "services": "service", "svc": "service",
    "statefulset": "statefulset", "statefulsets": "statefulset", "sts": "statefulset",
    "deployment": "deployment", "deployments": "deployment", "deploy": "deployment",
}
_WORKLOADS = {"statefulset": ("apps/v1", "statefulsets", "StatefulSet"),
              "deployment": ("apps/v1", "deployments", "Deployment")}
_PORT_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")


class TunnelError(RunbookError):
    """The tunnel could not be opened, or one of its connections failed; the message names the tunnel
    (``named`` is False only for the pieces the tunnel puts its name in front of)."""

    def __init__(self, msg: str, named: bool = False) -> None:
        super().__init__(msg)
        self.named = named


# ----------------------------------------------------------------------------------------------
# Options


def kubernetes_tunnel_argspec() -> t.Dict[str, t.Dict[str, t.Any]]:
    """Argument spec of the ``runbook.ops.kubernetes_tunnel`` doc fragment: one ``kubernetes_tunnel``
    dict holding the target and the Kubernetes auth options (with their ``K8S_AUTH_*`` fallbacks)."""
    options = dict(
        namespace=dict(type="str", required=True),
        target=dict(type="str", required=True),
        port=dict(type="raw"),
    )
    options.update(k8s_auth_argspec())
    return {OPTION: dict(type="dict", options=options)}


def tunnel_kubeconfig_secrets(params: t.Mapping[str, t.Any]) -> t.List[str]:
    """Credentials of an inline kubeconfig given inside ``kubernetes_tunnel``, for ``RunbookModule(sensitive=...)``."""
    nested = params.get(OPTION)
    return inline_kubeconfig_secrets(nested) if isinstance(nested, dict) else []


class TunnelTarget(t.NamedTuple):
    kind: str
    name: str

    def __str__(self) -> str:
        return "%s/%s" % (self.kind, self.name)


def parse_target(text: t.Any) -> TunnelTarget:
    """``service/postgres`` -> ``TunnelTarget("service", "postgres")`` (kubectl's short kind words accepted)."""
    kind, sep, name = str(text or "").strip().partition("/")
    canonical = _TARGET_KINDS.get(kind.lower())
    if not sep or canonical is None or not name or "/" in name:
        raise TunnelError("%s.target %r must be KIND/NAME with KIND one of pod, service, statefulset, deployment "
                          "(for example service/postgres)" % (OPTION, text))
    if not re.match(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", name):
        raise TunnelError("%s.target %r: %r is not a valid Kubernetes object name" % (OPTION, text, name))
    return TunnelTarget(canonical, name)


def parse_port(value: t.Any) -> t.Union[int, str, None]:
    """A port number (1-65535) or a port name (IANA service name, as in container and Service ports)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise TunnelError("%s.port must be a port number or a port name, not %r" % (OPTION, value))
    text = str(value).strip()
    if text.isdigit():
        number = int(text)
        if not 1 <= number <= 65535:
            raise TunnelError("%s.port %s is out of range (1-65535)" % (OPTION, text))
        return number
    if not _PORT_NAME_RE.match(text) or not re.search(r"[a-z]", text):
        raise TunnelError("%s.port %r is neither a port number nor a port name" % (OPTION, value))
    return text


# ----------------------------------------------------------------------------------------------
# Choosing the Pod and the port (pure functions over API objects)


class Route(t.NamedTuple):
    """Where the connections go: ``pod`` in ``namespace``, container port ``port``."""

    namespace: str
    pod: str
    port: int


def pod_is_ready(pod: t.Mapping[str, t.Any]) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def pod_state(pod: t.Mapping[str, t.Any]) -> str:
    """How a Pod reads in a message: ``postgres-0 (Pending)``, ``web-1 (Running, not Ready)``."""
    name = (pod.get("metadata") or {}).get("name", "?")
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return "%s (Terminating)" % name
    phase = (pod.get("status") or {}).get("phase") or "Unknown"
    if phase == "Running" and not pod_is_ready(pod):
        return "%s (Running, not Ready)" % name
    return "%s (%s)" % (name, phase)


def container_ports(pod: t.Mapping[str, t.Any]) -> t.List[t.Tuple[int, str, str]]:
    """``(containerPort, name, protocol)`` of every container of the Pod, in declaration order."""
    found = []
    spec = pod.get("spec") or {}
    for container in list(spec.get("containers") or []) + list(spec.get("initContainers") or []):
        for entry in container.get("ports") or []:
            if entry.get("containerPort"):
                found.append((int(entry["containerPort"]), entry.get("name") or "", entry.get("protocol") or "TCP"))
    return found


def describe_ports(ports: t.Sequence[t.Tuple[int, str, str]]) -> str:
    if not ports:
        return "none declared"
    return ", ".join("%d/%s%s" % (number, proto, " (%s)" % name if name else "") for number, name, proto in ports)


def pod_port(pod: t.Mapping[str, t.Any], port: t.Union[int, str, None], ref: str) -> int:
    """The container port a connection goes to: ``port`` as a number or a container port name.

    A number must be one of the Pod's declared TCP container ports when it declares any (a Pod
    that declares none is taken at its word); a name must be declared.
    """
    declared = container_ports(pod)
    tcp = [entry for entry in declared if entry[2] == "TCP"]
    if port is None:
        if len(tcp) == 1:
            return tcp[0][0]
        raise TunnelError("%s exposes %s; set %s.port to choose one" % (
            ref, describe_ports(declared) if declared else "no declared container port", OPTION))
    if isinstance(port, str):
        for number, name, proto in declared:
            if name == port and proto == "TCP":
                return number
        raise TunnelError("%s has no TCP container port named %r (its ports: %s)" % (ref, port, describe_ports(declared)))
    if declared and not any(number == port for number, _name, _proto in tcp):
        raise TunnelError("%s does not expose TCP port %d (its ports: %s)" % (ref, port, describe_ports(declared)))
    return port


def service_port(service: t.Mapping[str, t.Any], port: t.Union[int, str, None], ref: str) -> t.Tuple[t.Dict[str, t.Any], t.Union[int, str]]:
    """The Service port ``port`` names (its number or its name) and its ``targetPort`` (number or name)."""
    ports = [entry for entry in (service.get("spec") or {}).get("ports") or [] if (entry.get("protocol") or "TCP") == "TCP"]
    listing = ", ".join("%s%s" % (entry.get("port"), " (%s)" % entry["name"] if entry.get("name") else "") for entry in ports)
    chosen: t.Optional[t.Dict[str, t.Any]] = None
    if port is None:
        if len(ports) == 1:
            chosen = ports[0]
        else:
            raise TunnelError("%s has %s; set %s.port to choose one" % (
                ref, "the TCP ports %s" % listing if ports else "no TCP port", OPTION))
    else:
        key = "name" if isinstance(port, str) else "port"
        chosen = next((entry for entry in ports if entry.get(key) == port), None)
        if chosen is None:
            raise TunnelError("%s has no TCP port %s %r (its ports: %s)" % (ref, key if key == "name" else "number", port,
                                                                            listing or "none"))
    target = chosen.get("targetPort")
    if target in (None, "", 0):
        target = chosen["port"]
    if isinstance(target, str) and target.isdigit():
        target = int(target)
    return chosen, target


def ready_endpoint_pods(slices: t.Sequence[t.Mapping[str, t.Any]]) -> t.List[str]:
    """Names of the Pods behind a Service's EndpointSlices that are ready and not terminating, in order."""
    names: t.List[str] = []
    for item in slices:
        for endpoint in item.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            ref = endpoint.get("targetRef") or {}
            # An unset ready condition means "unknown", which consumers treat as ready.
            if conditions.get("ready") is False or conditions.get("terminating") is True:
                continue
            if ref.get("kind") == "Pod" and ref.get("name") and ref["name"] not in names:
                names.append(ref["name"])
    return names


def label_selector(selector: t.Optional[t.Mapping[str, t.Any]]) -> str:
    """A LabelSelector object (``matchLabels``, ``matchExpressions``) as a ``labelSelector`` query string."""
    parts = ["%s=%s" % (key, value) for key, value in sorted(((selector or {}).get("matchLabels") or {}).items())]
    for expr in (selector or {}).get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In":
            parts.append("%s in (%s)" % (key, ",".join(values)))
        elif op == "NotIn":
            parts.append("%s notin (%s)" % (key, ",".join(values)))
        elif op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append("!%s" % key)
        else:
            raise TunnelError("unsupported label selector operator %r" % op)
    return ",".join(parts)


def _ordinal(name: str) -> int:
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 1 << 30


def choose_pod(pods: t.Sequence[t.Mapping[str, t.Any]], kind: str) -> t.Optional[t.Mapping[str, t.Any]]:
    """The Ready Pod to forward to: a StatefulSet's lowest ordinal (its first member, usually the
    primary), otherwise the oldest Ready Pod; None when no Pod is Ready."""
    ready = [pod for pod in pods if pod_is_ready(pod)]
    if not ready:
        return None

    def key(pod: t.Mapping[str, t.Any]) -> t.Tuple[t.Any, ...]:
        meta = pod.get("metadata") or {}
        if kind == "statefulset":
            return (_ordinal(meta.get("name", "")), meta.get("name", ""))
        return (meta.get("creationTimestamp") or "", meta.get("name", ""))

    return sorted(ready, key=key)[0]


# ----------------------------------------------------------------------------------------------
# The port-forward channel layer


class PortChannels:
    """The channel layer of one single-port port-forward WebSocket.

    ``message(payload)`` takes one binary message and returns the bytes for the local client;
    text on the error channel collects in ``error``. The port prefix (2 bytes, little endian) the
    server writes first on each channel is checked and dropped, whatever the message boundaries.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self._prefix: t.Dict[int, bytearray] = {_DATA_CHANNEL: bytearray(), _ERROR_CHANNEL: bytearray()}
        self.error = bytearray()

    def message(self, payload: bytes) -> bytes:
        if not payload:
            return b""
        channel, body = payload[0], payload[1:]
        if channel not in self._prefix:
            raise ProtocolError("a message on channel %d (one port uses channels 0 and 1)" % channel)
        prefix = self._prefix[channel]
        if len(prefix) < 2:
            need = 2 - len(prefix)
            prefix += body[:need]
            body = body[need:]
            if len(prefix) == 2 and int.from_bytes(prefix, "little") != self.port:
                raise ProtocolError("the server announced port %d on channel %d, not %d"
                                    % (int.from_bytes(prefix, "little"), channel, self.port))
        if channel == _DATA_CHANNEL:
            return body
        self.error += body
        return b""

    def data_frame(self, data: bytes) -> bytes:
        return client_frame(OP_BINARY, bytes([_DATA_CHANNEL]) + data)


# ----------------------------------------------------------------------------------------------
# The tunnel


class KubernetesTunnel:
    """A loopback port forwarded to a Pod port through the API server; use it as a context manager.

    ``with KubernetesTunnel.from_params(params) as (host, port): ...`` resolves the target, checks
    the permission, and listens on ``127.0.0.1``; every connection accepted becomes its own
    port-forward WebSocket. Leaving the block closes everything and raises :class:`TunnelError`
    if a connection failed (the failure names the tunnel; an exception of the block is kept in it).
    """

    def __init__(self, client: K8sClient, namespace: str, target: TunnelTarget, port: t.Union[int, str, None],
                 bind_host: str = "127.0.0.1") -> None:
        self.client = client
        self.namespace = namespace
        self.target = target
        self.requested_port = port
        self.bind_host = bind_host
        self.route: t.Optional[Route] = None
        self.address: t.Optional[t.Tuple[str, int]] = None
        self.connections = 0
        self.failures: t.List[str] = []
        self._lock = threading.Lock()
        self._thread: t.Optional[threading.Thread] = None
        self._loop: t.Optional[asyncio.AbstractEventLoop] = None
        self._stop: t.Optional[asyncio.Event] = None
        self._started = threading.Event()
        self._start_error: t.Optional[BaseException] = None
        self._listener: t.Optional[socket.socket] = None

    @classmethod
    def from_params(cls, options: t.Mapping[str, t.Any]) -> "KubernetesTunnel":
        """From the validated ``kubernetes_tunnel`` dict (target, namespace, port and auth options)."""
        target = parse_target(options.get("target"))
        port = parse_port(options.get("port"))
        namespace = options.get("namespace") or ""
        if not namespace:
            raise TunnelError("%s.namespace is required (the namespace of %s)" % (OPTION, target))
        try:
            client = K8sClient.from_params(options, user_agent="runbook.ops/kubernetes_tunnel")
        except RunbookError as exc:
            raise TunnelError("%s to %s in namespace %s: %s" % (OPTION, target, namespace, exc.msg))
        return cls(client, namespace, target, port)

    # -- naming ---------------------------------------------------------------------------------

    def describe(self) -> str:
        """``kubernetes_tunnel to service/postgres port 5432 in namespace db (Pod postgres-0 port 5432)``."""
        text = "%s to %s%s in namespace %s" % (OPTION, self.target, "" if self.requested_port is None else
                                               " port %s" % self.requested_port, self.namespace)
        if self.route is not None:
            text += " (Pod %s port %d)" % (self.route.pod, self.route.port)
        return text

    def _error(self, msg: str) -> TunnelError:
        return TunnelError("%s: %s" % (self.describe(), msg), named=True)

    # -- resolution -----------------------------------------------------------------------------

    def resolve(self) -> Route:
        """Find the Pod and container port (API reads only)."""
        try:
            if self.target.kind == "pod":
                pod = self.client.get("v1", "pods", self.target.name, self.namespace) or {}
                ref = object_ref("Pod", self.target.name, self.namespace)
                # An explicit Pod only has to run (as with kubectl); Services and workloads want Ready.
                if (pod.get("status") or {}).get("phase") != "Running" or (pod.get("metadata") or {}).get("deletionTimestamp"):
                    raise TunnelError("%s is not running (%s)" % (ref, pod_state(pod)))
                route = Route(self.namespace, self.target.name, pod_port(pod, self.requested_port, ref))
            elif self.target.kind == "service":
                route = self._resolve_service()
            else:
                route = self._resolve_workload()
        except TunnelError as exc:
            if exc.named:
                raise
            raise self._error(exc.msg)
        except RunbookError as exc:  # API errors, invalid names
            raise self._error(exc.msg)
        self.route = route
        return route

    def _resolve_service(self) -> Route:
        service = self.client.get("v1", "services", self.target.name, self.namespace) or {}
        ref = object_ref("Service", self.target.name, self.namespace)
        chosen, target_port = service_port(service, self.requested_port, ref)
        selector = (service.get("spec") or {}).get("selector") or {}
        names: t.List[str] = []
        slices: t.List[t.Dict[str, t.Any]] = []
        try:
            slices = self.client.list("discovery.k8s.io/v1", "endpointslices", self.namespace,
                                      label_selector="kubernetes.io/service-name=%s" % self.target.name)
            names = ready_endpoint_pods(slices)
        except (K8sForbidden, K8sNotFound):
            slices = []
        pods = [pod for pod in (self.client.get("v1", "pods", name, self.namespace, missing_ok=True) for name in names)
                if pod is not None]
        if not pods and selector:
            pods = self.client.list("v1", "pods", self.namespace, label_selector=label_selector({"matchLabels": selector}))
        pod = choose_pod(pods, "service")
        if pod is None:
            if not selector and not slices:
                raise TunnelError("%s has no selector and no EndpointSlices: no Pod to forward to" % ref)
            seen = ", ".join(pod_state(p) for p in pods) or "none"
            raise TunnelError("%s has no Ready endpoint Pod (Pods: %s)" % (ref, seen))
        pod_name = pod["metadata"]["name"]
        behind = "%s (behind %s port %s)" % (object_ref("Pod", pod_name, self.namespace), ref,
                                             chosen.get("name") or chosen.get("port"))
        port = pod_port(pod, target_port, behind)
        return Route(self.namespace, pod_name, port)

    def _resolve_workload(self) -> Route:
        api_version, plural, kind = _WORKLOADS[self.target.kind]
        workload = self.client.get(api_version, plural, self.target.name, self.namespace) or {}
        ref = object_ref(kind, self.target.name, self.namespace)
        selector = label_selector((workload.get("spec") or {}).get("selector"))
        if not selector:
            raise TunnelError("%s has no Pod selector" % ref)
        pods = self.client.list("v1", "pods", self.namespace, label_selector=selector)
        pod = choose_pod(pods, self.target.kind)
        if pod is None:
            seen = ", ".join(pod_state(p) for p in pods) or "none"
            raise TunnelError("%s has no Ready Pod (Pods: %s)" % (ref, seen))
        pod_name = pod["metadata"]["name"]
        return Route(self.namespace, pod_name, pod_port(pod, self.requested_port, object_ref("Pod", pod_name, self.namespace)
                                                        + " (of %s)" % ref))

    def check_permission(self) -> None:
        """Ask the API server (SelfSubjectAccessReview) whether these credentials may port-forward."""
        route = self.route or self.resolve()
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": {"namespace": route.namespace, "verb": "create", "resource": "pods",
                                                  "subresource": "portforward", "name": route.pod}}}
        try:
            answer = self.client.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=review,
                                         what="review the permission to port-forward")
        except (K8sForbidden, K8sNotFound):
            return  # cannot ask; the WebSocket handshake will tell
        except K8sError as exc:
            raise self._error(exc.msg)
        status = answer.get("status") or {}
        if not status.get("allowed"):
            raise self._error(_permission_message(route.namespace, status.get("reason") or ""))

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> t.Tuple[str, int]:
        return self.open()

    def __exit__(self, exc_type: t.Any, exc: t.Optional[BaseException], tb: t.Any) -> None:
        self.close()
        failure = self.failure()
        if failure is None:
            return
        if exc is not None and not isinstance(exc, TunnelError):
            own = getattr(exc, "msg", None) or str(exc) or type(exc).__name__
            raise TunnelError("%s; the task failed with: %s" % (failure, own), named=True) from exc
        if exc is None:
            raise TunnelError(failure, named=True)

    def open(self) -> t.Tuple[str, int]:
        """Resolve, check the permission, and start listening; returns ``(host, port)``."""
        self.resolve()
        self.check_permission()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind((self.bind_host, 0))
            listener.listen(64)
            listener.setblocking(False)
        except OSError as exc:
            listener.close()
            raise self._error("cannot listen on %s: %s" % (self.bind_host, exc.strerror or exc))
        self._listener = listener
        self.address = (self.bind_host, listener.getsockname()[1])
        self._thread = threading.Thread(target=self._run, name="kubernetes-tunnel-%s" % self.target.name, daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self.close()
            raise self._error("cannot start: %s" % self._start_error)
        return self.address

    def close(self) -> None:
        """Stop listening, end every connection and join the thread; safe to call twice."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and self._thread is not None and self._thread.is_alive():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass  # the loop already closed
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def failure(self) -> t.Optional[str]:
        with self._lock:
            return self.failures[0] if self.failures else None

    def check(self) -> None:
        """Raise :class:`TunnelError` if any connection through the tunnel failed so far; call it
        before committing what was read through the tunnel."""
        failure = self.failure()
        if failure is not None:
            raise TunnelError(failure, named=True)

    def _fail(self, msg: str) -> None:
        with self._lock:
            self.failures.append("%s: %s" % (self.describe(), msg))

    # -- the event loop thread ------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # pylint: disable=broad-except
            self._start_error = self._start_error or exc
        finally:
            self._started.set()
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                if hasattr(loop, "shutdown_default_executor"):
                    loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        tasks: t.Set["asyncio.Future[t.Any]"] = set()

        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # Our own task per connection (not the stream server's), so closing can cancel and await it.
            task = loop.create_task(self._connection(reader, writer))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        server = await asyncio.start_server(accepted, sock=self._listener, limit=_CHUNK)
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in list(tasks):
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _connection(self, local_reader: asyncio.StreamReader, local_writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        ws_writer: t.Optional[asyncio.StreamWriter] = None
        try:
            ws_reader, ws_writer = await self._websocket()
            await _Relay(self, local_reader, local_writer, ws_reader, ws_writer).run()
        except TunnelError as exc:
            self._fail(exc.msg)
        except asyncio.CancelledError:
            raise
        except (OSError, EOFError, ProtocolError, asyncio.TimeoutError) as exc:
            self._fail(_describe_failure(exc, self.client))
        finally:
            for writer in (local_writer, ws_writer):
                if writer is not None:
                    writer.close()

    async def _websocket(self) -> t.Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open the API server connection and upgrade it to the port-forward WebSocket."""
        route = self.route
        if route is None:
            raise TunnelError("not resolved")
        endpoint = _endpoint(self.client)
        timeout = self.client.settings.timeout
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                endpoint.host, endpoint.port, ssl=endpoint.ssl, server_hostname=endpoint.server_hostname,
                limit=_CHUNK * 4), timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise TunnelError("cannot reach the API server %s: %s" % (self.client.settings.describe(),
                                                                      _describe_failure(exc, self.client)))
        try:
            await self._upgrade(reader, writer, route, endpoint, timeout)
        except BaseException:
            writer.close()
            raise
        return reader, writer

    async def _upgrade(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, route: Route,
                       endpoint: "_Endpoint", timeout: float) -> None:
        key = new_key()
        path = endpoint.base_path + resource_path("v1", "pods", route.namespace, route.pod, "portforward")
        path += "?" + urllib.parse.urlencode({"ports": route.port})
        writer.write(handshake_request(path, endpoint.host_header, key, _token(self.client), self.client.user_agent,
                                       SUBPROTOCOL))
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except asyncio.IncompleteReadError:
            raise TunnelError("the API server %s closed the connection before answering the port-forward request"
                              % self.client.settings.describe())
        except asyncio.LimitOverrunError:
            raise TunnelError("the API server's answer to the port-forward request has oversized headers")
        status, headers = parse_response_head(head)
        if status != 101:
            body = await _read_body(reader, headers, timeout)
            raise TunnelError(_handshake_failure(status, body, route))
        if headers.get("sec-websocket-accept") != accept_value(key):
            raise TunnelError("the API server answered the WebSocket upgrade with a wrong Sec-WebSocket-Accept")
        chosen = headers.get("sec-websocket-protocol", "")
        if chosen not in ("", SUBPROTOCOL):
            raise TunnelError("the API server chose the WebSocket subprotocol %r, not %s" % (chosen, SUBPROTOCOL))


class _Relay:
    """Copies bytes both ways between one local connection and its port-forward WebSocket."""

    def __init__(self, tunnel: KubernetesTunnel, local_reader: asyncio.StreamReader, local_writer: asyncio.StreamWriter,
                 ws_reader: asyncio.StreamReader, ws_writer: asyncio.StreamWriter) -> None:
        self.tunnel = tunnel
        self.local_reader, self.local_writer = local_reader, local_writer
        self.ws_reader, self.ws_writer = ws_reader, ws_writer
        self.channels = PortChannels(tunnel.route.port if tunnel.route else 0)
        self.local_done = False  # the local client closed (or we closed the WebSocket on its behalf)
        self.close_sent = False

    async def run(self) -> None:
        upstream = asyncio.ensure_future(self._upstream())
        downstream = asyncio.ensure_future(self._downstream())
        try:
            done, _pending = await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
            if downstream in done:
                upstream.cancel()
            else:
                # The local client is done: give the server a moment to answer our close frame.
                await asyncio.wait({downstream}, timeout=_CLOSE_GRACE)
                downstream.cancel()
            await asyncio.gather(upstream, downstream, return_exceptions=True)
            for task in (downstream, upstream):
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in (upstream, downstream):
                task.cancel()

    def _send(self, frame: bytes) -> None:
        self.ws_writer.write(frame)

    async def _upstream(self) -> None:
        while True:
            try:
                data = await self.local_reader.read(_CHUNK)
            except OSError:
                data = b""  # the local client went away: same as a close
            if not data:
                break
            self._send(self.channels.data_frame(data))
            await self.ws_writer.drain()  # a broken API server connection raises here: a failure
        self.local_done = True
        if not self.close_sent:
            self.close_sent = True
            try:
                self._send(client_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
                await self.ws_writer.drain()
            except OSError:
                pass  # nothing more to say to a server that is gone, and the client is done

    async def _downstream(self) -> None:
        decoder = FrameDecoder()
        while True:
            chunk = await self.ws_reader.read(_CHUNK * 4)
            if not chunk:
                if self.local_done:
                    return
                raise TunnelError("the connection through the API server %s broke mid-stream (closed without a "
                                  "WebSocket close)" % self.tunnel.client.settings.describe())
            # Everything one read decoded goes to the client in one write (fewer loop turns per byte).
            pieces: t.List[bytes] = []
            closed = False
            for opcode, payload in decoder.feed(chunk):
                if opcode in (OP_BINARY, OP_TEXT):
                    pieces.append(self.channels.message(payload))
                elif opcode == OP_PING:
                    self._send(client_frame(OP_PONG, payload))
                elif opcode == OP_CLOSE:
                    closed = True
                    break
            data = b"".join(pieces)
            if data and not self.local_done:
                await self._deliver(data)
            if closed:
                self._closed_by_server()
                return

    async def _deliver(self, data: bytes) -> None:
        try:
            self.local_writer.write(data)
            await self.local_writer.drain()
        except OSError:
            self.local_done = True  # the client went away; its side of the relay closes the WebSocket

    def _closed_by_server(self) -> None:
        error = bytes(self.channels.error).decode("utf-8", "replace").strip()
        if not self.close_sent:
            self.close_sent = True
            self._send(client_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
        if error and not self.local_done:
            raise TunnelError("the Pod side of the port-forward failed: %s" % error)


# ----------------------------------------------------------------------------------------------
# Helpers over the shared Kubernetes client


class _Endpoint(t.NamedTuple):
    host: str
    port: int
    ssl: t.Optional[ssl.SSLContext]
    server_hostname: t.Optional[str]
    host_header: str
    base_path: str


def _endpoint(client: K8sClient) -> _Endpoint:
    """Where and how the shared client connects (its TLS context included), for our own connections."""
    parsed = urllib.parse.urlsplit(client.settings.host)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    context = client._ssl  # pylint: disable=protected-access  # the client's own TLS settings, not a copy
    server_hostname = (client.settings.tls_server_name or host) if context is not None else None
    host_header = parsed.netloc.rsplit("@", 1)[-1]
    return _Endpoint(host, port, context, server_hostname, host_header, parsed.path.rstrip("/"))


def _token(client: K8sClient) -> t.Optional[str]:
    return client._token()  # pylint: disable=protected-access  # re-reads a projected token file


async def _read_body(reader: asyncio.StreamReader, headers: t.Mapping[str, str], timeout: float) -> bytes:
    try:
        length = int(headers.get("content-length", "-1"))
    except ValueError:
        length = -1
    try:
        if length >= 0:
            return await asyncio.wait_for(reader.readexactly(min(length, 65536)), timeout)
        return await asyncio.wait_for(reader.read(65536), timeout)
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, OSError):
        return b""


def _permission_message(namespace: str, reason: str) -> str:
    msg = ("the credentials may not open a port-forward: RBAC must allow create pods/portforward in namespace %s"
           % namespace)
    return msg + (" (%s)" % reason if reason else "")


def _handshake_failure(status: int, body: bytes, route: Route) -> str:
    api_message = ""
    try:
        api_message = str(json.loads(body).get("message") or "")
    except (ValueError, AttributeError):
        api_message = body.decode("utf-8", "replace").strip()[:300]
    detail = " (%s)" % api_message if api_message else ""
    if status == 403:
        return _permission_message(route.namespace, api_message)
    if status == 401:
        return "the API server did not accept the credentials (401)%s" % detail
    if status == 404:
        return "Pod/%s/%s is gone (404)%s" % (route.namespace, route.pod, detail)
    return "the API server refused the port-forward (%d)%s" % (status, detail)


def _describe_failure(exc: BaseException, client: K8sClient) -> str:
    if isinstance(exc, TunnelError):
        return exc.msg
    if isinstance(exc, ProtocolError):
        return "protocol error on the port-forward WebSocket: %s" % exc
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer from the API server %s within %ss" % (client.settings.describe(), client.settings.timeout)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "TLS certificate verification failed (%s); set ca_cert or validate_certs" % exc.verify_message
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, EOFError)):
        return ("the connection through the API server %s broke mid-stream (%s)"
                % (client.settings.describe(), type(exc).__name__))
    if isinstance(exc, OSError):
        return (exc.strerror or str(exc) or type(exc).__name__).lower()
    return str(exc) or type(exc).__name__


def kubernetes_tunnel(params: t.Mapping[str, t.Any]) -> t.Optional[KubernetesTunnel]:
    """The tunnel a module's ``kubernetes_tunnel`` option asks for, or None when it is not set.

    Use it as ``with tunnel or contextlib.nullcontext((host, port)) as (host, port):`` and call
    ``tunnel.check()`` before committing what was read through it.
    """
    options = params.get(OPTION)
    if not options:
        return None
    return KubernetesTunnel.from_params(options)


class TunnelEnd(t.NamedTuple):
    """Where a task's tunnel listens, and the tunnel's name for manifests and messages."""

    host: str
    port: int
    name: str


def _open_listening(params: t.Mapping[str, t.Any]) -> KubernetesTunnel:
    tunnel = KubernetesTunnel.from_params(params[OPTION])
    try:
        tunnel.open()
    except BaseException:
        tunnel.close()
        raise
    return tunnel


def task_tunnel(task: "Task[t.Any]") -> t.Optional[TunnelEnd]:
    """The local end of the task's ``kubernetes_tunnel``, or None when the option is not set.

    Opened once per task as one of its clients: the runner closes it on every exit path and names
    it when a connection through it broke; ``task.verify_clients()`` raises that break before a
    backup commits what it read through the tunnel.
    """
    if not task.params.get(OPTION):
        return None
    tunnel = task.client(_open_listening)
    if tunnel.address is None:  # open() returned, so it listens; a guard for the type checker
        raise TunnelError("%s is not listening" % tunnel.describe())
    return TunnelEnd(tunnel.address[0], tunnel.address[1], tunnel.describe())
