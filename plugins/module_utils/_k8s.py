# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How runbook.ops talks to Kubernetes: one small client over HTTPS that reads and writes raw JSON.

* Connection settings come from the same options as kubernetes.core (``kubeconfig``, ``context``,
  ``host``, ``api_key``, ``validate_certs``, ``ca_cert``, ``client_cert``, ``client_key``) plus
  ``request_timeout``; the ``K8S_AUTH_*`` environment variables are the fallbacks (wired in the
  argument spec), then ``$KUBECONFIG`` / ``~/.kube/config``, then the in-cluster service account.
* Objects stay plain dicts: no model classes, so a list of thousands of Pods costs one
  ``json.loads``. Lists are paged with ``limit``/``continue``.
* 429, 5xx and connection errors are retried with bounded backoff (only where repeating the
  request is safe); 401/403/404/409 and unreachable servers raise :class:`K8sError` subclasses
  whose message names the operation, the object and the cause.
* ``requests`` counts every HTTP request sent, so modules can report what they cost.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import os
import socket
import ssl
import subprocess
import tempfile
import time
import typing as t
import urllib.parse

from ansible.module_utils.basic import env_fallback

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError, RunbookModule, explain_tls_failure
from ansible_collections.runbook.ops.plugins.module_utils._names import k8s_name, no_control

IN_CLUSTER_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_TIMEOUT = 30.0
DEFAULT_PAGE_SIZE = 500
RETRY_STATUSES = (429, 500, 502, 503, 504)
IDEMPOTENT_METHODS = ("GET", "HEAD", "PUT", "DELETE", "OPTIONS")

PATCH_CONTENT_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
    "apply": "application/apply-patch+yaml",
}


def k8s_auth_argspec() -> t.Dict[str, dict]:
    """Argument spec of the ``runbook.ops.k8s_auth`` doc fragment; use ``dict(**k8s_auth_argspec(), ...)``."""
    return dict(
        kubeconfig=dict(type="raw", fallback=(env_fallback, ["K8S_AUTH_KUBECONFIG"])),
        context=dict(type="str", fallback=(env_fallback, ["K8S_AUTH_CONTEXT"])),
        host=dict(type="str", fallback=(env_fallback, ["K8S_AUTH_HOST"])),
        api_key=dict(type="str", no_log=True, fallback=(env_fallback, ["K8S_AUTH_API_KEY"])),
        validate_certs=dict(type="bool", aliases=["verify_ssl"], fallback=(env_fallback, ["K8S_AUTH_VERIFY_SSL"])),
        ca_cert=dict(type="path", aliases=["ssl_ca_cert"], fallback=(env_fallback, ["K8S_AUTH_SSL_CA_CERT"])),
        client_cert=dict(type="path", aliases=["cert_file"], fallback=(env_fallback, ["K8S_AUTH_CERT_FILE"])),
        client_key=dict(type="path", aliases=["key_file"], no_log=False,
                        fallback=(env_fallback, ["K8S_AUTH_KEY_FILE"])),
        request_timeout=dict(type="float", default=DEFAULT_TIMEOUT, fallback=(env_fallback, ["K8S_AUTH_REQUEST_TIMEOUT"])),
    )


AUTH_OPTIONS = tuple(k8s_auth_argspec())


def k8s_module(**kwargs: t.Any) -> RunbookModule:
    """The module object of a Kubernetes module: ``AnsibleModule`` arguments, with an inline
    kubeconfig's credentials masked in every output (see :func:`inline_kubeconfig_secrets`)."""
    return RunbookModule(sensitive=[inline_kubeconfig_secrets], **kwargs)


# ----------------------------------------------------------------------------------------------
# Errors


class K8sError(RunbookError):
    """A Kubernetes API request failed; ``status`` is the HTTP status (0 when nothing answered)."""

    def __init__(self, msg: str, status: int = 0, reason: str = "", api_message: str = "") -> None:
        super().__init__(msg, status=status, reason=reason)
        self.status = status
        self.reason = reason
        self.api_message = api_message


class K8sUnauthorized(K8sError):
    """401: the credentials were not accepted."""


class K8sForbidden(K8sError):
    """403: RBAC (or an admission policy) refused the request."""


class K8sNotFound(K8sError):
    """404: the object, its namespace or the resource type does not exist."""


class K8sConflict(K8sError):
    """409: the object changed since it was read (stale resourceVersion) or already exists."""


class K8sGone(K8sError):
    """410: a ``continue`` token or resourceVersion expired."""


class K8sUnreachable(K8sError):
    """No HTTP answer: connection refused, DNS, TLS or timeout."""


_STATUS_CLASSES = {401: K8sUnauthorized, 403: K8sForbidden, 404: K8sNotFound, 409: K8sConflict, 410: K8sGone}
_STATUS_WORDS = {
    401: "unauthorized (the credentials were not accepted)",
    403: "forbidden",
    404: "not found",
    409: "conflict",
    410: "gone (expired)",
    422: "invalid",
    429: "too many requests",
}


# ----------------------------------------------------------------------------------------------
# Connection settings


class ConnectionSettings:
    """Where the API server is and how to authenticate; built by :func:`resolve_settings`."""

    def __init__(self) -> None:
        self.host: str = ""
        self.token: t.Optional[str] = None
        self.token_file: t.Optional[str] = None
        self.verify: bool = True
        self.ca_file: t.Optional[str] = None
        self.ca_data: t.Optional[bytes] = None
        self.client_cert_file: t.Optional[str] = None
        self.client_key_file: t.Optional[str] = None
        self.client_cert_data: t.Optional[bytes] = None
        self.client_key_data: t.Optional[bytes] = None
        self.tls_server_name: t.Optional[str] = None
        self.timeout: float = DEFAULT_TIMEOUT
        self.context: t.Optional[str] = None
        self.source: str = "options"

    def describe(self) -> str:
        return self.host + (" (context %s)" % self.context if self.context else "")


def _expand(path: str, base: t.Optional[str]) -> str:
    path = os.path.expanduser(path)
    if base and not os.path.isabs(path):
        path = os.path.join(os.path.dirname(base), path)
    return path


def _load_yaml(path: str) -> dict:
    import yaml  # ansible-core depends on PyYAML

    try:
        with open(path, "r", encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
    except OSError as exc:
        raise RunbookError("cannot read kubeconfig %s: %s" % (path, exc.strerror or exc))
    except UnicodeDecodeError:
        raise RunbookError("kubeconfig %s is not a text file (binary content)" % path)
    except yaml.YAMLError as exc:
        raise RunbookError("kubeconfig %s is not valid YAML: %s" % (path, exc))
    if not isinstance(data, dict):
        raise RunbookError("kubeconfig %s is not a kubeconfig (expected a mapping)" % path)
    return data


def _kubeconfig_documents(kubeconfig: t.Any) -> t.List[t.Tuple[dict, t.Optional[str]]]:
    """``(document, path)`` pairs: the ``kubeconfig`` option (path or dict), else ``$KUBECONFIG``
    (every existing path, merged like kubectl: the first definition of a name wins), else
    ``~/.kube/config``. Empty when none exists."""
    if isinstance(kubeconfig, dict):
        return [(kubeconfig, None)]
    if kubeconfig and not isinstance(kubeconfig, str):
        raise RunbookError("kubeconfig must be a file path or a kubeconfig dictionary, not a %s" % type(kubeconfig).__name__)
    if kubeconfig:
        path = os.path.expanduser(str(kubeconfig))
        if not os.path.exists(path):
            raise RunbookError("kubeconfig %s does not exist" % path)
        return [(_load_yaml(path), path)]
    paths = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    if not paths:
        paths = [os.path.expanduser("~/.kube/config")]
    return [(_load_yaml(p), p) for p in paths if os.path.exists(p)]


def _named(docs: t.List[t.Tuple[dict, t.Optional[str]]], section: str, name: str) -> t.Tuple[t.Optional[dict], t.Optional[str]]:
    for doc, path in docs:
        for entry in doc.get(section) or []:
            if isinstance(entry, dict) and entry.get("name") == name:
                inner = entry.get(section[:-1]) or {}
                return inner, path
    return None, None


def _from_kubeconfig(settings: ConnectionSettings, docs: t.List[t.Tuple[dict, t.Optional[str]]],
                     context: t.Optional[str]) -> None:
    if not context:
        context = next((doc.get("current-context") for doc, _path in docs if doc.get("current-context")), None)
    where = ", ".join(p or "(inline kubeconfig)" for _doc, p in docs)
    if not context:
        raise RunbookError("kubeconfig %s has no current-context; set the context option" % where)
    ctx = _named(docs, "contexts", context)[0]
    if ctx is None:
        names = sorted({e.get("name") for d, _path in docs for e in d.get("contexts") or [] if isinstance(e, dict)})
        raise RunbookError("context %r not found in kubeconfig %s (available: %s)"
                           % (context, where, ", ".join(names) or "none"))
    settings.context = context
    settings.source = "kubeconfig %s" % where
    cluster, cluster_path = _named(docs, "clusters", ctx.get("cluster", ""))
    if cluster is None:
        raise RunbookError("context %r refers to cluster %r, which kubeconfig %s does not define"
                           % (context, ctx.get("cluster"), where))
    settings.host = cluster.get("server", "")
    if cluster.get("insecure-skip-tls-verify"):
        settings.verify = False
    if cluster.get("certificate-authority-data"):
        settings.ca_data = base64.b64decode(cluster["certificate-authority-data"])
    elif cluster.get("certificate-authority"):
        settings.ca_file = _expand(cluster["certificate-authority"], cluster_path)
    settings.tls_server_name = cluster.get("tls-server-name")
    user, user_path = _named(docs, "users", ctx.get("user", ""))
    if user is None:
        if ctx.get("user"):
            raise RunbookError("context %r refers to user %r, which kubeconfig %s does not define"
                               % (context, ctx.get("user"), where))
        return
    if user.get("token"):
        settings.token = user["token"]
    elif user.get("tokenFile"):
        settings.token_file = _expand(user["tokenFile"], user_path)
    if user.get("client-certificate-data"):
        settings.client_cert_data = base64.b64decode(user["client-certificate-data"])
    elif user.get("client-certificate"):
        settings.client_cert_file = _expand(user["client-certificate"], user_path)
    if user.get("client-key-data"):
        settings.client_key_data = base64.b64decode(user["client-key-data"])
    elif user.get("client-key"):
        settings.client_key_file = _expand(user["client-key"], user_path)
    if user.get("exec"):
        _run_exec_plugin(settings, user["exec"], context)
    elif user.get("auth-provider"):
        raise RunbookError("context %r uses the legacy auth-provider %r, which is not supported; use an exec "
                           "credential plugin or a token" % (context, (user["auth-provider"] or {}).get("name")))


def _run_exec_plugin(settings: ConnectionSettings, spec: dict, context: str) -> None:
    """Run a client-go exec credential plugin (EKS, GKE, OIDC helpers) and take its token or cert."""
    command = spec.get("command")
    if not command:
        raise RunbookError("context %r: exec credential plugin has no command" % context)
    env = dict(os.environ)
    for item in spec.get("env") or []:
        env[item["name"]] = item["value"]
    env["KUBERNETES_EXEC_INFO"] = json.dumps({
        "apiVersion": spec.get("apiVersion", "client.authentication.k8s.io/v1"),
        "kind": "ExecCredential", "spec": {"interactive": False}})
    try:
        proc = subprocess.run([command] + list(spec.get("args") or []), capture_output=True, env=env,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunbookError("context %r: exec credential plugin %s failed: %s" % (context, command, exc))
    if proc.returncode != 0:
        raise RunbookError("context %r: exec credential plugin %s exited %d: %s"
                           % (context, command, proc.returncode, proc.stderr.decode(errors="replace").strip()[-500:]))
    try:
        status = json.loads(proc.stdout)["status"]
    except (ValueError, KeyError, TypeError):
        raise RunbookError("context %r: exec credential plugin %s printed no ExecCredential status" % (context, command))
    if status.get("token"):
        settings.token = status["token"]
    if status.get("clientCertificateData"):
        settings.client_cert_data = status["clientCertificateData"].encode()
        settings.client_key_data = (status.get("clientKeyData") or "").encode()


def _in_cluster(settings: ConnectionSettings) -> bool:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    token_file = os.path.join(IN_CLUSTER_DIR, "token")
    if not (host and port and os.path.exists(token_file)):
        return False
    if ":" in host:
        host = "[%s]" % host
    settings.host = "https://%s:%s" % (host, port)
    settings.token_file = token_file
    ca_file = os.path.join(IN_CLUSTER_DIR, "ca.crt")
    if os.path.exists(ca_file):
        settings.ca_file = ca_file
    settings.source = "in-cluster service account"
    return True


def request_timeout(value: t.Any) -> float:
    """``request_timeout`` (or K8S_AUTH_REQUEST_TIMEOUT) as positive seconds; empty means the default."""
    if value is None or value == "":
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise RunbookError("request_timeout %r is not a number of seconds" % (value,))
    if math.isnan(seconds) or seconds <= 0 or math.isinf(seconds):
        raise RunbookError("request_timeout must be a positive number of seconds, got %r" % (value,))
    return seconds


# Keys of a kubeconfig user entry that name no secret; every other string under ``users`` is masked.
_PUBLIC_USER_KEYS = frozenset(("username", "command", "apiVersion", "interactiveMode", "installHint", "client-certificate",
                               "client-key", "tokenFile", "provideClusterInfo", "name", "as", "as-uid", "args"))


def inline_kubeconfig_secrets(params: t.Mapping[str, t.Any]) -> t.List[str]:
    """Credentials inside a ``kubeconfig`` given as a dict (tokens, keys, passwords, exec env values,
    auth-provider config), to be masked in every output like a ``no_log`` option's value. The
    option itself is not ``no_log``: a kubeconfig path is no secret and names the file in messages."""
    kubeconfig = params.get("kubeconfig")
    found: t.List[str] = []
    if not isinstance(kubeconfig, dict):
        return found

    def walk(value: t.Any, key: str) -> None:
        if isinstance(value, dict):
            for child_key, child in value.items():
                walk(child, str(child_key))
        elif isinstance(value, list):
            for child in value:
                walk(child, key)
        elif value is not None and key not in _PUBLIC_USER_KEYS:
            text = str(value)
            if len(text) >= 4:
                found.append(text)

    for entry in kubeconfig.get("users") or []:
        if isinstance(entry, dict):
            walk(entry.get("user"), "user")
    return found


def resolve_settings(params: t.Mapping[str, t.Any]) -> ConnectionSettings:
    """Turn the auth options into :class:`ConnectionSettings`.

    Order, as kubernetes.core does it: explicit options (their ``K8S_AUTH_*`` fallbacks are applied
    by the argument spec) override what the kubeconfig says; the kubeconfig is the ``kubeconfig``
    option, else ``$KUBECONFIG``, else ``~/.kube/config``; without any of them and without ``host``,
    the in-cluster service account is used.
    """
    settings = ConnectionSettings()
    settings.timeout = request_timeout(params.get("request_timeout"))
    kubeconfig, context = params.get("kubeconfig"), params.get("context")
    if kubeconfig or context or not params.get("host"):
        docs = _kubeconfig_documents(kubeconfig)
        if docs:
            try:
                _from_kubeconfig(settings, docs, context)
            except (AttributeError, TypeError, ValueError) as exc:
                # A section of the wrong shape (a string where a mapping belongs, bad base64 data).
                raise RunbookError("kubeconfig %s is malformed: %s (%s)" % (
                    ", ".join(p or "(inline kubeconfig)" for _doc, p in docs), type(exc).__name__,
                    "a value has the wrong type or encoding"))
        elif context:
            raise RunbookError("context %r was given but no kubeconfig was found (set kubeconfig or $KUBECONFIG)" % context)
        elif not params.get("host") and not _in_cluster(settings):
            raise RunbookError("no Kubernetes API server configured: set host (K8S_AUTH_HOST) or kubeconfig "
                               "(K8S_AUTH_KUBECONFIG, $KUBECONFIG, ~/.kube/config), or run in a Pod")
    if params.get("host"):
        settings.host = params["host"]
    if params.get("api_key"):
        settings.token, settings.token_file = params["api_key"], None
    if params.get("ca_cert"):
        settings.ca_file, settings.ca_data = params["ca_cert"], None
    if params.get("client_cert"):
        settings.client_cert_file, settings.client_cert_data = params["client_cert"], None
    if params.get("client_key"):
        settings.client_key_file, settings.client_key_data = params["client_key"], None
    if params.get("validate_certs") is not None:
        settings.verify = bool(params["validate_certs"])
    if not settings.host:
        raise RunbookError("no Kubernetes API server address: the %s gives none and host is not set" % settings.source)
    if "://" not in settings.host:
        settings.host = "https://" + settings.host
    settings.host = settings.host.rstrip("/")
    return settings


def _ssl_context(settings: ConnectionSettings) -> ssl.SSLContext:
    if not settings.verify:
        context = ssl._create_unverified_context()  # pylint: disable=protected-access  # nosec: validate_certs=false
    else:
        try:
            context = ssl.create_default_context(
                cafile=settings.ca_file, cadata=settings.ca_data.decode() if settings.ca_data else None)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise RunbookError("cannot load the CA certificate %s: %s" % (settings.ca_file or "(kubeconfig data)", exc))
    cert_file, key_file = settings.client_cert_file, settings.client_key_file
    if settings.client_cert_data or cert_file:
        tmpdir = None
        try:
            if settings.client_cert_data or settings.client_key_data:
                # load_cert_chain only reads files: a 0600 file in a private directory, removed at once.
                tmpdir = tempfile.mkdtemp(prefix="runbook-k8s-")
                if settings.client_cert_data:
                    cert_file = os.path.join(tmpdir, "client.crt")
                    _write_private(cert_file, settings.client_cert_data)
                if settings.client_key_data:
                    key_file = os.path.join(tmpdir, "client.key")
                    _write_private(key_file, settings.client_key_data)
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise RunbookError("cannot load the client certificate %s: %s" % (settings.client_cert_file or "(kubeconfig data)", exc))
        finally:
            if tmpdir:
                for name in os.listdir(tmpdir):
                    os.unlink(os.path.join(tmpdir, name))
                os.rmdir(tmpdir)
    return context


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


# ----------------------------------------------------------------------------------------------
# Resource addressing

# apiVersion -> {plural: (Kind, namespaced)} for the kinds runbook.ops modules use; anything else is
# found through discovery (one request per group version, cached).
_KNOWN: t.Dict[str, t.Dict[str, t.Tuple[str, bool]]] = {
    "v1": {
        "namespaces": ("Namespace", False), "nodes": ("Node", False), "pods": ("Pod", True),
        "services": ("Service", True), "endpoints": ("Endpoints", True), "secrets": ("Secret", True),
        "configmaps": ("ConfigMap", True), "persistentvolumeclaims": ("PersistentVolumeClaim", True),
        "persistentvolumes": ("PersistentVolume", False), "events": ("Event", True),
        "serviceaccounts": ("ServiceAccount", True),
    },
    "apps/v1": {
        "deployments": ("Deployment", True), "statefulsets": ("StatefulSet", True),
        "daemonsets": ("DaemonSet", True), "replicasets": ("ReplicaSet", True),
    },
    "batch/v1": {"jobs": ("Job", True), "cronjobs": ("CronJob", True)},
    "discovery.k8s.io/v1": {"endpointslices": ("EndpointSlice", True)},
    "networking.k8s.io/v1": {"networkpolicies": ("NetworkPolicy", True), "ingresses": ("Ingress", True)},
    "rbac.authorization.k8s.io/v1": {
        "roles": ("Role", True), "rolebindings": ("RoleBinding", True),
        "clusterroles": ("ClusterRole", False), "clusterrolebindings": ("ClusterRoleBinding", False),
    },
    "apiextensions.k8s.io/v1": {"customresourcedefinitions": ("CustomResourceDefinition", False)},
    "cert-manager.io/v1": {
        "certificates": ("Certificate", True), "issuers": ("Issuer", True),
        "clusterissuers": ("ClusterIssuer", False), "certificaterequests": ("CertificateRequest", True),
    },
}


def api_prefix(api_version: str) -> str:
    """``v1`` -> ``/api/v1``; ``apps/v1`` -> ``/apis/apps/v1``."""
    return "/api/%s" % api_version if "/" not in api_version else "/apis/%s" % api_version


def resource_path(api_version: str, plural: str, namespace: t.Optional[str] = None, name: t.Optional[str] = None,
                  subresource: t.Optional[str] = None) -> str:
    parts = [api_prefix(api_version)]
    if namespace:
        parts += ["namespaces", urllib.parse.quote(k8s_name("namespace", namespace, label=True), safe="")]
    parts.append(plural)
    if name:
        # Object names are quoted; "." and ".." would still be resolved as path steps by the server.
        if name in (".", "..") or not no_control("name", name):
            raise RunbookError("%r is not a valid Kubernetes object name" % name)
        parts.append(urllib.parse.quote(name, safe=""))
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


def object_ref(kind: str, name: str = "", namespace: t.Optional[str] = None) -> str:
    """How objects are named in messages and findings: ``Deployment/payments/auth-service``."""
    return "/".join(part for part in (kind, namespace, name) if part)


# ----------------------------------------------------------------------------------------------
# The client


class K8sClient:
    """A Kubernetes API client over one keep-alive HTTPS connection.

    Resources are addressed by ``api_version`` and ``plural`` (``"apps/v1", "deployments"``), objects
    are dicts. Every method raises :class:`K8sError` subclasses with a readable message.
    """

    def __init__(self, settings: ConnectionSettings, retries: int = 3, backoff: float = 0.25,
                 max_backoff: float = 4.0, user_agent: str = "runbook.ops") -> None:
        self.settings = settings
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.user_agent = user_agent
        self.requests = 0
        parsed = urllib.parse.urlsplit(settings.host)
        if parsed.scheme not in ("https", "http"):
            raise RunbookError("host %r: only https:// (or http://) API server URLs are supported" % settings.host)
        self._scheme = parsed.scheme
        self._netloc = parsed.hostname or ""
        self._port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._base_path = parsed.path.rstrip("/")
        self._ssl = _ssl_context(settings) if parsed.scheme == "https" else None
        self._conn: t.Optional[http.client.HTTPConnection] = None
        self._discovery: t.Dict[str, t.Optional[t.Dict[str, t.Tuple[str, bool]]]] = {}

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any], **kwargs: t.Any) -> "K8sClient":
        return cls(resolve_settings(params), **kwargs)

    # -- transport ------------------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._ssl is not None:
                self._conn = http.client.HTTPSConnection(self._netloc, self._port, timeout=self.settings.timeout,
                                                         context=self._ssl)
                if self.settings.tls_server_name:
                    self._conn.server_hostname = self.settings.tls_server_name  # type: ignore[attr-defined]
            else:
                self._conn = http.client.HTTPConnection(self._netloc, self._port, timeout=self.settings.timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _token(self) -> t.Optional[str]:
        if self.settings.token:
            return self.settings.token
        if self.settings.token_file:
            try:
                with open(self.settings.token_file, "r", encoding="utf-8") as handle:
                    return handle.read().strip()  # re-read: projected tokens rotate
            except OSError as exc:
                raise RunbookError("cannot read the token file %s: %s" % (self.settings.token_file, exc.strerror))
        return None

    def request(self, method: str, path: str, query: t.Optional[t.Mapping[str, t.Any]] = None,
                body: t.Any = None, content_type: str = "application/json", what: str = "",
                raw: bool = False, retry: bool = True) -> t.Any:
        """Send one API request (with retries) and return the decoded JSON answer.

        ``what`` describes the operation for error messages (e.g. ``list pods in namespace auth``).
        ``raw`` returns the body as bytes (Pod logs are not JSON); ``retry=False`` makes one attempt,
        for reads whose failure is itself worth reporting at once.
        """
        url = self._base_path + path
        if query:
            pairs = [(k, v if not isinstance(v, bool) else str(v).lower()) for k, v in query.items() if v is not None]
            if pairs:
                url += "?" + urllib.parse.urlencode(pairs)
        payload: t.Optional[bytes] = None
        headers = {"Accept": "*/*" if raw else "application/json", "User-Agent": self.user_agent}
        if body is not None:
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        token = self._token()
        if token:
            headers["Authorization"] = "Bearer " + token
        what = what or "%s %s" % (method, path)
        retries = self.retries if retry else 0
        attempt = 0
        while True:
            attempt += 1
            retry_after: t.Optional[float] = None
            try:
                conn = self._connection()
                self.requests += 1
                conn.request(method, url, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
                status = response.status
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                refused = isinstance(exc, ConnectionRefusedError)
                if attempt <= retries and (method in IDEMPOTENT_METHODS or refused):
                    self._sleep(attempt, None)
                    continue
                raise K8sUnreachable("cannot %s: Kubernetes API server %s is unreachable: %s"
                                     % (what, self.settings.describe(), _describe_os_error(exc)))
            if status < 300:
                if raw:
                    return data
                if not data:
                    return {}
                try:
                    return json.loads(data)
                except ValueError:
                    raise K8sError("cannot %s: the API server answered %d with something that is not JSON" % (what, status),
                                   status=status)
            if status in RETRY_STATUSES and attempt <= retries and (method in IDEMPOTENT_METHODS or status in (429, 503)):
                retry_after = _retry_after(response.getheader("Retry-After"))
                self._sleep(attempt, retry_after)
                continue
            raise self._error(status, data, what)

    def _sleep(self, attempt: int, retry_after: t.Optional[float]) -> None:
        delay = min(self.max_backoff, self.backoff * (2 ** (attempt - 1)))
        if retry_after is not None:
            delay = min(self.max_backoff, max(delay, retry_after))
        time.sleep(delay)

    def _error(self, status: int, data: bytes, what: str) -> K8sError:
        reason, api_message = "", ""
        try:
            decoded = json.loads(data)
            reason, api_message = decoded.get("reason", ""), decoded.get("message", "")
        except (ValueError, AttributeError):
            api_message = data.decode(errors="replace").strip()[:300]
        word = _STATUS_WORDS.get(status, "HTTP %d" % status)
        msg = "cannot %s: %s" % (what, word)
        if status in _STATUS_WORDS and status != 401:
            msg += " (%d)" % status
        if api_message:
            msg += ": %s" % api_message
        msg += " [API server %s]" % self.settings.describe()
        return _STATUS_CLASSES.get(status, K8sError)(msg, status=status, reason=reason, api_message=api_message)

    # -- discovery ------------------------------------------------------------------------------

    def resources(self, api_version: str) -> t.Optional[t.Dict[str, t.Tuple[str, bool]]]:
        """``{plural: (Kind, namespaced)}`` served for ``api_version``; None when the group version is
        not served (e.g. a CRD that is not installed). One request per group version, cached."""
        if api_version not in self._discovery:
            try:
                answer = self.request("GET", api_prefix(api_version), what="discover %s" % api_version)
            except K8sNotFound:
                self._discovery[api_version] = None
            else:
                self._discovery[api_version] = {
                    r["name"]: (r["kind"], bool(r.get("namespaced")))
                    for r in answer.get("resources", []) if "/" not in r["name"]}
        return self._discovery[api_version]

    def kind_of(self, api_version: str, plural: str) -> str:
        known = _KNOWN.get(api_version, {}).get(plural)
        if known:
            return known[0]
        served = self.resources(api_version) or {}
        return served.get(plural, (plural, True))[0]

    def _describe(self, verb: str, api_version: str, plural: str, name: t.Optional[str], namespace: t.Optional[str]) -> str:
        kind = self.kind_of(api_version, plural) if name else plural
        if name:
            return "%s %s" % (verb, object_ref(kind, name, namespace))
        return "%s %s %s" % (verb, plural, "in namespace %s" % namespace if namespace else "in all namespaces")

    # -- reads ----------------------------------------------------------------------------------

    def get(self, api_version: str, plural: str, name: str, namespace: t.Optional[str] = None,
            subresource: t.Optional[str] = None, missing_ok: bool = False) -> t.Optional[dict]:
        """One object; with ``missing_ok`` None instead of :class:`K8sNotFound`."""
        try:
            return self.request("GET", resource_path(api_version, plural, namespace, name, subresource),
                                what=self._describe("get", api_version, plural, name, namespace))
        except K8sNotFound:
            if missing_ok:
                return None
            raise

    def list(self, api_version: str, plural: str, namespace: t.Optional[str] = None,
             label_selector: t.Optional[str] = None, field_selector: t.Optional[str] = None,
             page_size: int = DEFAULT_PAGE_SIZE) -> t.List[dict]:
        """All items, following ``continue`` tokens; ``namespace=None`` lists across all namespaces.

        Items get ``apiVersion`` and ``kind`` set (list responses leave them out). If a ``continue``
        token expires mid-way (410), the list starts over once.
        """
        path = resource_path(api_version, plural, namespace)
        what = self._describe("list", api_version, plural, None, namespace)
        for restart in (0, 1):
            items: t.List[dict] = []
            token: t.Optional[str] = None
            kind = ""
            try:
                while True:
                    page = self.request("GET", path, query={
                        "labelSelector": label_selector, "fieldSelector": field_selector,
                        "limit": page_size or None, "continue": token}, what=what)
                    if not kind and str(page.get("kind", "")).endswith("List"):
                        kind = page["kind"][:-4]
                    items.extend(page.get("items") or [])
                    token = (page.get("metadata") or {}).get("continue")
                    if not token:
                        break
            except K8sGone:
                if restart or not token:
                    raise
                continue
            kind = kind or self.kind_of(api_version, plural)
            for item in items:
                item.setdefault("apiVersion", api_version)
                item.setdefault("kind", kind)
            return items
        return []  # not reached

    def list_namespaces(self, api_version: str, plural: str, namespaces: t.Optional[t.Sequence[str]] = None,
                        label_selector: t.Optional[str] = None, field_selector: t.Optional[str] = None,
                        ) -> t.Tuple[t.Dict[str, t.List[dict]], t.Dict[str, K8sError]]:
        """List a namespaced resource in several namespaces with as few requests as the credentials allow.

        Returns ``(items_by_namespace, errors_by_namespace)``. ``namespaces=None`` means all. One list
        across all namespaces is tried first (one request per page whatever the number of
        namespaces), filtered to ``namespaces``; if that is forbidden, each namespace is listed on its
        own, so credentials limited to some namespaces still read those. Only 403 and 404 land in
        the errors; anything else raises.
        """
        wanted = None if namespaces is None else list(dict.fromkeys(namespaces))
        by_ns: t.Dict[str, t.List[dict]] = {ns: [] for ns in wanted or []}
        errors: t.Dict[str, K8sError] = {}
        if wanted is not None and len(wanted) == 1:
            try:
                by_ns[wanted[0]] = self.list(api_version, plural, wanted[0], label_selector, field_selector)
            except (K8sForbidden, K8sNotFound) as exc:
                errors[wanted[0]] = exc
            return by_ns, errors
        try:
            items = self.list(api_version, plural, None, label_selector, field_selector)
        except K8sNotFound as exc:
            for ns in wanted or ["*"]:
                errors[ns] = exc
            return by_ns, errors
        except K8sForbidden as exc:
            if wanted is None:
                errors["*"] = exc
                return by_ns, errors
            for ns in wanted:
                try:
                    by_ns[ns] = self.list(api_version, plural, ns, label_selector, field_selector)
                except (K8sForbidden, K8sNotFound) as inner:
                    errors[ns] = inner
            return by_ns, errors
        keep = None if wanted is None else set(wanted)
        for item in items:
            ns = (item.get("metadata") or {}).get("namespace", "")
            if keep is None or ns in keep:
                by_ns.setdefault(ns, []).append(item)
        return by_ns, errors

    # -- writes ---------------------------------------------------------------------------------

    def create(self, api_version: str, plural: str, body: dict, namespace: t.Optional[str] = None,
               dry_run: bool = False) -> dict:
        namespace = namespace or (body.get("metadata") or {}).get("namespace")
        name = (body.get("metadata") or {}).get("name") or (body.get("metadata") or {}).get("generateName", "")
        body = dict(body, apiVersion=api_version, kind=body.get("kind") or self.kind_of(api_version, plural))
        return self.request("POST", resource_path(api_version, plural, namespace), body=body,
                            query={"dryRun": "All" if dry_run else None},
                            what=self._describe("create", api_version, plural, name, namespace))

    def replace(self, api_version: str, plural: str, body: dict, namespace: t.Optional[str] = None,
                subresource: t.Optional[str] = None, dry_run: bool = False) -> dict:
        """PUT the whole object. With ``metadata.resourceVersion`` set (as read), a concurrent change
        makes the server answer 409 (:class:`K8sConflict`) instead of losing that change."""
        meta = body.get("metadata") or {}
        namespace = namespace or meta.get("namespace")
        return self.request("PUT", resource_path(api_version, plural, namespace, meta["name"], subresource), body=body,
                            query={"dryRun": "All" if dry_run else None},
                            what=self._describe("update" if not subresource else "update %s of" % subresource,
                                                api_version, plural, meta["name"], namespace))

    def update_status(self, api_version: str, plural: str, body: dict, namespace: t.Optional[str] = None) -> dict:
        """PUT the ``status`` subresource (optimistic concurrency through ``metadata.resourceVersion``)."""
        return self.replace(api_version, plural, body, namespace, subresource="status")

    def patch(self, api_version: str, plural: str, name: str, patch: t.Any, namespace: t.Optional[str] = None,
              patch_type: str = "merge", subresource: t.Optional[str] = None, resource_version: t.Optional[str] = None,
              dry_run: bool = False, field_manager: t.Optional[str] = None, force: t.Optional[bool] = None) -> dict:
        """Patch with ``merge`` (RFC 7386), ``strategic``, ``json`` (RFC 6902) or server-side ``apply``.

        ``resource_version`` makes the patch conditional (merge/strategic: it is put into the patch's
        metadata; json: a ``test`` operation is prepended), so it fails with 409 if the object changed.
        """
        if patch_type not in PATCH_CONTENT_TYPES:
            raise RunbookError("unknown patch type %r (use %s)" % (patch_type, ", ".join(PATCH_CONTENT_TYPES)))
        if resource_version is not None:
            if patch_type == "json":
                patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": resource_version}] + list(patch)
            else:
                patch = dict(patch)
                patch["metadata"] = dict(patch.get("metadata") or {}, resourceVersion=resource_version)
        if patch_type == "apply" and not field_manager:
            field_manager = self.user_agent
        return self.request("PATCH", resource_path(api_version, plural, namespace, name, subresource), body=patch,
                            content_type=PATCH_CONTENT_TYPES[patch_type],
                            query={"dryRun": "All" if dry_run else None, "fieldManager": field_manager, "force": force},
                            what=self._describe("patch", api_version, plural, name, namespace))

    def delete(self, api_version: str, plural: str, name: str, namespace: t.Optional[str] = None,
               propagation: str = "Background", missing_ok: bool = False, resource_version: t.Optional[str] = None,
               dry_run: bool = False) -> t.Optional[dict]:
        body: dict = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        if resource_version:
            body["preconditions"] = {"resourceVersion": resource_version}
        if dry_run:
            body["dryRun"] = ["All"]
        try:
            return self.request("DELETE", resource_path(api_version, plural, namespace, name), body=body,
                                what=self._describe("delete", api_version, plural, name, namespace))
        except K8sNotFound:
            if missing_ok:
                return None
            raise

    def apply(self, body: dict, plural: t.Optional[str] = None, field_manager: t.Optional[str] = None,
              force: bool = True) -> dict:
        """Server-side apply of a whole manifest (creates or updates)."""
        api_version = body["apiVersion"]
        plural = plural or self.plural_of(api_version, body["kind"])
        meta = body["metadata"]
        return self.patch(api_version, plural, meta["name"], body, meta.get("namespace"), patch_type="apply",
                          field_manager=field_manager, force=force)

    def plural_of(self, api_version: str, kind: str) -> str:
        for plural, (known_kind, _namespaced) in _KNOWN.get(api_version, {}).items():
            if known_kind == kind:
                return plural
        for plural, (served_kind, _namespaced) in (self.resources(api_version) or {}).items():
            if served_kind == kind:
                return plural
        raise RunbookError("the API server does not serve kind %s in %s" % (kind, api_version))

    def modify(self, api_version: str, plural: str, name: str, mutate: t.Callable[[dict], t.Optional[dict]],
               namespace: t.Optional[str] = None, subresource: t.Optional[str] = None, attempts: int = 5,
               dry_run: bool = False) -> t.Tuple[bool, dict, dict]:
        """Read, change, write back with the read ``resourceVersion``; on 409 read again and retry.

        ``mutate`` gets a deep copy of the object and returns the changed object, or None for "no change".
        Returns ``(changed, before, after)``. This is the safe way to update shared objects (a Secret of
        signing keys, a ConfigMap) that another actor may be changing at the same time.
        """
        for attempt in range(1, attempts + 1):
            before = self.get(api_version, plural, name, namespace) or {}
            after = mutate(json.loads(json.dumps(before)))
            if after is None or after == before:
                return False, before, before
            after.setdefault("metadata", {})["resourceVersion"] = before["metadata"]["resourceVersion"]
            try:
                written = self.replace(api_version, plural, after, namespace, subresource, dry_run=dry_run)
            except K8sConflict:
                if attempt == attempts:
                    raise
                time.sleep(min(self.max_backoff, self.backoff * attempt))
                continue
            return True, before, written
        raise RunbookError("not reached")  # pragma: no cover

    def rollout_restart(self, api_version: str, plural: str, name: str, namespace: str,
                        at: t.Optional[str] = None, dry_run: bool = False) -> dict:
        """What ``kubectl rollout restart`` does: stamp the pod template so the controller rolls it."""
        stamp = at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        patch = {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}}
        return self.patch(api_version, plural, name, patch, namespace, patch_type="strategic", dry_run=dry_run)

    def version(self) -> dict:
        return self.request("GET", "/version", what="read the server version")


def _retry_after(value: t.Optional[str]) -> t.Optional[float]:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "TLS certificate verification failed (%s); set ca_cert or validate_certs" % exc.verify_message
    if isinstance(exc, ssl.SSLError):
        return explain_tls_failure(exc, "the server") or "TLS error: %s" % (exc.reason or exc)
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the host name (%s)" % exc.strerror
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def client_from_module(module: t.Any, **kwargs: t.Any) -> K8sClient:
    """The client for a module whose argument spec includes :func:`k8s_auth_argspec`."""
    return K8sClient.from_params({key: module.params.get(key) for key in AUTH_OPTIONS}, **kwargs)
