# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kubernetes watches: ``GET <list path>?watch=true&resourceVersion=...`` read event by event.

:class:`~._k8s.K8sClient` reads whole answers, which a watch never finishes; a watch therefore gets
its own connection, built from the same settings (server, CA, client certificate, token), and is
read line by line as the API server sends each event. ``timeoutSeconds`` makes the server end the
stream at the caller's deadline, so a wait never outlives it.
"""

from __future__ import annotations

import http.client
import json
import ssl
import typing as t
import urllib.parse

from ansible_collections.runbook.ops.plugins.module_utils._k8s import K8sClient, K8sError, K8sForbidden, K8sGone, K8sObject
from ansible_collections.runbook.ops.plugins.module_utils._kubeconfig import ssl_context

Event = t.Tuple[str, K8sObject]
"""``(type, object)``: ``ADDED``, ``MODIFIED``, ``DELETED``, ``BOOKMARK`` or ``ERROR`` (a Status)."""

_CONTEXTS: t.Dict[int, ssl.SSLContext] = {}


def _context(client: K8sClient) -> ssl.SSLContext:
    """One TLS context per client (loading the CA costs more than the watch request)."""
    key = id(client.settings)
    if key not in _CONTEXTS:
        _CONTEXTS[key] = ssl_context(client.settings)
    return _CONTEXTS[key]


def _token(client: K8sClient) -> t.Optional[str]:
    settings = client.settings
    if settings.token:
        return settings.token
    if settings.token_file:
        with open(settings.token_file, "r", encoding="utf-8") as handle:
            return handle.read().strip()
    return None


def watch(client: K8sClient, path: str, query: t.Mapping[str, t.Any], timeout: float) -> t.Iterator[Event]:
    """Events of one watch request on ``path`` (a list path) from ``query["resourceVersion"]``, until
    the server ends the stream (after ``timeout`` seconds at most). Counted in ``client.requests``.

    Raises :class:`K8sForbidden` when the credentials may not watch, :class:`K8sGone` when the
    resourceVersion is too old (list again), :class:`K8sError` otherwise.
    """
    parsed = urllib.parse.urlsplit(client.settings.host)
    seconds = max(1, int(timeout + 0.999))
    params = dict((k, v) for k, v in query.items() if v is not None)
    params.update(watch="true", timeoutSeconds=str(seconds), allowWatchBookmarks="true")
    url = parsed.path.rstrip("/") + path + "?" + urllib.parse.urlencode(params)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    conn: http.client.HTTPConnection
    if parsed.scheme == "https":
        conn = http.client.HTTPSConnection(parsed.hostname or "", port, timeout=seconds + 10, context=_context(client))
    else:
        conn = http.client.HTTPConnection(parsed.hostname or "", port, timeout=seconds + 10)
    headers = {"Accept": "application/json", "User-Agent": client.user_agent}
    token = _token(client)
    if token:
        headers["Authorization"] = "Bearer " + token
    try:
        client.requests += 1
        conn.request("GET", url, headers=headers)
        response = conn.getresponse()
        if response.status != 200:
            raise _failure(response.status, response.read(), path)
        while True:
            line = response.readline()
            if not line:
                return
            event = json.loads(line)
            obj = t.cast(K8sObject, event.get("object") or {})
            if event.get("type") == "ERROR" and obj.get("code") == 410:
                raise K8sGone("watch of %s: resourceVersion expired" % path, status=410)
            yield str(event.get("type", "")), obj
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise K8sError("watch of %s broke: %s" % (path, exc or type(exc).__name__))
    finally:
        conn.close()


def _failure(status: int, data: bytes, path: str) -> K8sError:
    try:
        message = str(json.loads(data).get("message", ""))
    except (ValueError, AttributeError):
        message = data.decode(errors="replace")[:300]
    if status == 403:
        return K8sForbidden("cannot watch %s: forbidden (403): %s" % (path, message), status=403)
    if status == 410:
        return K8sGone("cannot watch %s: resourceVersion expired" % path, status=410)
    return K8sError("cannot watch %s: HTTP %d: %s" % (path, status, message), status=status)
