# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How runbook.ops talks to Kubernetes: one small client over HTTPS that reads and writes raw JSON.

* Connection settings come from the same options as kubernetes.core (see ``_kubeconfig``, which
  resolves them; its public names are re-exported here).
* Objects stay plain dicts: no model classes, so a list of thousands of Pods costs one
  ``json.loads``. Lists are paged with ``limit``/``continue``.
* 429, 5xx and connection errors are retried with bounded backoff (only where repeating the
  request is safe); 401/403/404/409 and unreachable servers raise :class:`K8sError` subclasses
  whose message names the operation, the object and the cause.
* ``requests`` counts every HTTP request sent, so modules report what they cost
  (:func:`reports_api_requests`).
"""

from __future__ import annotations

import functools
import http.client
import json
import socket
import ssl
import time
import typing as t
import urllib.parse

from ansible_collections.runbook.ops.plugins.module_utils._common import (
    Result, RunbookError, RunbookModule, Task, explain_tls_failure,
)
from ansible_collections.runbook.ops.plugins.module_utils._kubeconfig import (
    AUTH_OPTIONS, DEFAULT_TIMEOUT, ConnectionSettings, inline_kubeconfig_secrets, k8s_auth_argspec, resolve_settings,
    ssl_context,
)
from ansible_collections.runbook.ops.plugins.module_utils._names import k8s_name, no_control

# Moved to _kubeconfig; importable from here as before.
__all__ = ["AUTH_OPTIONS", "DEFAULT_TIMEOUT", "ConnectionSettings", "inline_kubeconfig_secrets", "k8s_auth_argspec",
           "resolve_settings", "K8sClient", "K8sError", "K8sUnauthorized", "K8sForbidden", "K8sNotFound",
           "K8sConflict", "K8sGone", "K8sUnreachable", "K8sObject", "k8s_module", "client_from_module",
           "reports_api_requests", "api_prefix", "resource_path", "object_ref"]

K8sObject = t.Dict[str, t.Any]
"""A Kubernetes object (or any JSON object the API server sends), as decoded."""

DEFAULT_PAGE_SIZE = 500
RETRY_STATUSES = (429, 500, 502, 503, 504)
IDEMPOTENT_METHODS = ("GET", "HEAD", "PUT", "DELETE", "OPTIONS")

PATCH_CONTENT_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
    "apply": "application/apply-patch+yaml",
}


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
        self._ssl = ssl_context(settings) if parsed.scheme == "https" else None
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

    def _url(self, path: str, query: t.Optional[t.Mapping[str, t.Any]]) -> str:
        url = self._base_path + path
        pairs = [(k, v if not isinstance(v, bool) else str(v).lower()) for k, v in (query or {}).items() if v is not None]
        if pairs:
            url += "?" + urllib.parse.urlencode(pairs)
        return url

    def _headers(self, raw: bool, content_type: t.Optional[str], accept: t.Optional[str] = None) -> t.Dict[str, str]:
        headers = {"Accept": accept or ("*/*" if raw else "application/json"), "User-Agent": self.user_agent}
        if content_type:
            headers["Content-Type"] = content_type
        token = self._token()
        if token:
            headers["Authorization"] = "Bearer " + token
        return headers

    def request(self, method: str, path: str, query: t.Optional[t.Mapping[str, t.Any]] = None,
                body: t.Any = None, content_type: str = "application/json", what: str = "",
                raw: bool = False, retry: bool = True, accept: t.Optional[str] = None) -> t.Any:
        """Send one API request (with retries) and return the decoded JSON answer.

        ``what`` describes the operation for error messages (e.g. ``list pods in namespace auth``).
        ``raw`` returns the body as bytes (Pod logs are not JSON); ``retry=False`` makes one attempt,
        for reads whose failure is itself worth reporting at once. ``accept`` replaces the Accept
        header (aggregated discovery asks for its own media type).
        """
        url = self._url(path, query)
        payload: t.Optional[bytes] = None
        if body is not None:
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = self._headers(raw, content_type if payload is not None else None, accept)
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

    def _object(self, method: str, path: str, **kwargs: t.Any) -> K8sObject:
        """:meth:`request` for an answer that is one JSON object."""
        return t.cast(K8sObject, self.request(method, path, **kwargs))

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
            subresource: t.Optional[str] = None, missing_ok: bool = False) -> t.Optional[K8sObject]:
        """One object; with ``missing_ok`` None instead of :class:`K8sNotFound`."""
        try:
            return self._object("GET", resource_path(api_version, plural, namespace, name, subresource),
                                what=self._describe("get", api_version, plural, name, namespace))
        except K8sNotFound:
            if missing_ok:
                return None
            raise

    def list(self, api_version: str, plural: str, namespace: t.Optional[str] = None,
             label_selector: t.Optional[str] = None, field_selector: t.Optional[str] = None,
             page_size: int = DEFAULT_PAGE_SIZE) -> t.List[K8sObject]:
        """All items, following ``continue`` tokens; ``namespace=None`` lists across all namespaces.

        Items get ``apiVersion`` and ``kind`` set (list responses leave them out). If a ``continue``
        token expires mid-way (410), the list starts over once.
        """
        path = resource_path(api_version, plural, namespace)
        what = self._describe("list", api_version, plural, None, namespace)
        for restart in (0, 1):
            items: t.List[K8sObject] = []
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
                        ) -> t.Tuple[t.Dict[str, t.List[K8sObject]], t.Dict[str, K8sError]]:
        """List a namespaced resource in several namespaces with as few requests as the credentials allow.

        Returns ``(items_by_namespace, errors_by_namespace)``. ``namespaces=None`` means all. One list
        across all namespaces is tried first (one request per page whatever the number of
        namespaces), filtered to ``namespaces``; if that is forbidden, each namespace is listed on its
        own, so credentials limited to some namespaces still read those. Only 403 and 404 land in
        the errors; anything else raises.
        """
        wanted = None if namespaces is None else list(dict.fromkeys(namespaces))
        by_ns: t.Dict[str, t.List[K8sObject]] = {ns: [] for ns in wanted or []}
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

    def create(self, api_version: str, plural: str, body: K8sObject, namespace: t.Optional[str] = None,
               dry_run: bool = False) -> K8sObject:
        namespace = namespace or (body.get("metadata") or {}).get("namespace")
        name = (body.get("metadata") or {}).get("name") or (body.get("metadata") or {}).get("generateName", "")
        body = dict(body, apiVersion=api_version, kind=body.get("kind") or self.kind_of(api_version, plural))
        return self._object("POST", resource_path(api_version, plural, namespace), body=body,
                            query={"dryRun": "All" if dry_run else None},
                            what=self._describe("create", api_version, plural, name, namespace))

    def replace(self, api_version: str, plural: str, body: K8sObject, namespace: t.Optional[str] = None,
                subresource: t.Optional[str] = None, dry_run: bool = False) -> K8sObject:
        """PUT the whole object. With ``metadata.resourceVersion`` set (as read), a concurrent change
        makes the server answer 409 (:class:`K8sConflict`) instead of losing that change."""
        meta = body.get("metadata") or {}
        namespace = namespace or meta.get("namespace")
        return self._object("PUT", resource_path(api_version, plural, namespace, meta["name"], subresource), body=body,
                            query={"dryRun": "All" if dry_run else None},
                            what=self._describe("update" if not subresource else "update %s of" % subresource,
                                                api_version, plural, meta["name"], namespace))

    def update_status(self, api_version: str, plural: str, body: K8sObject, namespace: t.Optional[str] = None) -> K8sObject:
        """PUT the ``status`` subresource (optimistic concurrency through ``metadata.resourceVersion``)."""
        return self.replace(api_version, plural, body, namespace, subresource="status")

    def patch(self, api_version: str, plural: str, name: str, patch: t.Any, namespace: t.Optional[str] = None,
              patch_type: str = "merge", subresource: t.Optional[str] = None, resource_version: t.Optional[str] = None,
              dry_run: bool = False, field_manager: t.Optional[str] = None, force: t.Optional[bool] = None) -> K8sObject:
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
        return self._object("PATCH", resource_path(api_version, plural, namespace, name, subresource), body=patch,
                            content_type=PATCH_CONTENT_TYPES[patch_type],
                            query={"dryRun": "All" if dry_run else None, "fieldManager": field_manager, "force": force},
                            what=self._describe("patch", api_version, plural, name, namespace))

    def delete(self, api_version: str, plural: str, name: str, namespace: t.Optional[str] = None,
               propagation: str = "Background", missing_ok: bool = False, resource_version: t.Optional[str] = None,
               dry_run: bool = False) -> t.Optional[K8sObject]:
        body: K8sObject = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        if resource_version:
            body["preconditions"] = {"resourceVersion": resource_version}
        if dry_run:
            body["dryRun"] = ["All"]
        try:
            return self._object("DELETE", resource_path(api_version, plural, namespace, name), body=body,
                                what=self._describe("delete", api_version, plural, name, namespace))
        except K8sNotFound:
            if missing_ok:
                return None
            raise

    def apply(self, body: K8sObject, plural: t.Optional[str] = None, field_manager: t.Optional[str] = None,
              force: bool = True) -> K8sObject:
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

    def modify(self, api_version: str, plural: str, name: str, mutate: t.Callable[[K8sObject], t.Optional[K8sObject]],
               namespace: t.Optional[str] = None, subresource: t.Optional[str] = None, attempts: int = 5,
               dry_run: bool = False) -> t.Tuple[bool, K8sObject, K8sObject]:
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
                        at: t.Optional[str] = None, dry_run: bool = False) -> K8sObject:
        """What ``kubectl rollout restart`` does: stamp the pod template so the controller rolls it."""
        stamp = at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        patch = {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}}
        return self.patch(api_version, plural, name, patch, namespace, patch_type="strategic", dry_run=dry_run)

    def version(self) -> K8sObject:
        return self._object("GET", "/version", what="read the server version")


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


OptionsT = t.TypeVar("OptionsT")


def reports_api_requests(action: t.Callable[[Task[OptionsT]], Result]) -> t.Callable[[Task[OptionsT]], Result]:
    """``action(task)`` with ``api_requests`` (the requests its :class:`K8sClient` sent) in the result,
    also when it fails with a :class:`RunbookError` (0 when the client could not even be set up)."""
    @functools.wraps(action)
    def run(task: Task[OptionsT]) -> Result:
        try:
            client = task.client(K8sClient.from_params)
        except RunbookError as exc:
            exc.details.setdefault("api_requests", 0)
            raise
        try:
            result = action(task)
        except RunbookError as exc:
            exc.details["api_requests"] = client.requests
            raise
        result["api_requests"] = client.requests
        return result
    return run
