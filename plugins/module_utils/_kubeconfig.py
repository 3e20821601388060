# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where the Kubernetes API server is and how to authenticate to it: the auth options (the names of
kubernetes.core), kubeconfig documents, exec credential plugins, the in-cluster service account,
and the TLS context built from all of that. The HTTP client itself is in ``_k8s``.

Order, as kubernetes.core does it: explicit options (their ``K8S_AUTH_*`` fallbacks are applied by
the argument spec) override what the kubeconfig says; the kubeconfig is the ``kubeconfig`` option,
else ``$KUBECONFIG`` (merged like kubectl: the first definition of a name wins), else
``~/.kube/config``; without any of them and without ``host``, the in-cluster service account.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import tempfile
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._env import env_default
from ansible_collections.runbook.ops.plugins.module_utils._names import number

IN_CLUSTER_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_TIMEOUT = 30.0
EXEC_PLUGIN_TIMEOUT = 60

Document = t.Dict[str, t.Any]
"""A kubeconfig (or one of its sections) as parsed from YAML."""
Documents = t.List[t.Tuple[Document, t.Optional[str]]]
"""``(kubeconfig, path)`` pairs, the path None for an inline kubeconfig."""


def k8s_auth_argspec() -> t.Dict[str, t.Dict[str, t.Any]]:
    """Argument spec of the ``runbook.ops.k8s_auth`` doc fragment; use ``dict(**k8s_auth_argspec(), ...)``.
    The ``K8S_AUTH_*`` fallbacks ignore empty variables (AWX sets every variable a credential names)."""
    return dict(
        kubeconfig=dict(type="raw", fallback=env_default("K8S_AUTH_KUBECONFIG")),
        context=dict(type="str", fallback=env_default("K8S_AUTH_CONTEXT")),
        host=dict(type="str", fallback=env_default("K8S_AUTH_HOST")),
        api_key=dict(type="str", no_log=True, fallback=env_default("K8S_AUTH_API_KEY")),
        validate_certs=dict(type="bool", aliases=["verify_ssl"], fallback=env_default("K8S_AUTH_VERIFY_SSL")),
        ca_cert=dict(type="path", aliases=["ssl_ca_cert"], fallback=env_default("K8S_AUTH_SSL_CA_CERT")),
        client_cert=dict(type="path", aliases=["cert_file"], fallback=env_default("K8S_AUTH_CERT_FILE")),
        client_key=dict(type="path", aliases=["key_file"], no_log=False,
                        fallback=env_default("K8S_AUTH_KEY_FILE")),
        request_timeout=dict(type="float", default=DEFAULT_TIMEOUT, fallback=env_default("K8S_AUTH_REQUEST_TIMEOUT")),
    )


AUTH_OPTIONS = tuple(k8s_auth_argspec())


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


# ----------------------------------------------------------------------------------------------
# Kubeconfig documents


def _expand(path: str, base: t.Optional[str]) -> str:
    path = os.path.expanduser(path)
    if base and not os.path.isabs(path):
        path = os.path.join(os.path.dirname(base), path)
    return path


def _load_yaml(path: str) -> Document:
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


def kubeconfig_documents(kubeconfig: t.Any) -> Documents:
    """``(document, path)`` pairs: the ``kubeconfig`` option (path or dict), else ``$KUBECONFIG``
    (every existing path), else ``~/.kube/config``. Empty when none exists."""
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


def _where(docs: Documents) -> str:
    return ", ".join(p or "(inline kubeconfig)" for _doc, p in docs)


def _named(docs: Documents, section: str, name: str) -> t.Tuple[t.Optional[Document], t.Optional[str]]:
    """The first entry called ``name`` in ``section`` (``clusters``, ``users``, ``contexts``) and its file."""
    for doc, path in docs:
        for entry in doc.get(section) or []:
            if isinstance(entry, dict) and entry.get("name") == name:
                inner: Document = entry.get(section[:-1]) or {}
                return inner, path
    return None, None


def _from_kubeconfig(settings: ConnectionSettings, docs: Documents, context: t.Optional[str]) -> None:
    if not context:
        context = next((doc.get("current-context") for doc, _path in docs if doc.get("current-context")), None)
    where = _where(docs)
    if not context:
        raise RunbookError("kubeconfig %s has no current-context; set the context option" % where)
    ctx = _named(docs, "contexts", context)[0]
    if ctx is None:
        names = sorted({str(e.get("name")) for d, _path in docs for e in d.get("contexts") or [] if isinstance(e, dict)})
        raise RunbookError("context %r not found in kubeconfig %s (available: %s)"
                           % (context, where, ", ".join(names) or "none"))
    settings.context = context
    settings.source = "kubeconfig %s" % where
    cluster, cluster_path = _named(docs, "clusters", ctx.get("cluster", ""))
    if cluster is None:
        raise RunbookError("context %r refers to cluster %r, which kubeconfig %s does not define"
                           % (context, ctx.get("cluster"), where))
    _cluster_settings(settings, cluster, cluster_path)
    user, user_path = _named(docs, "users", ctx.get("user", ""))
    if user is None:
        if ctx.get("user"):
            raise RunbookError("context %r refers to user %r, which kubeconfig %s does not define"
                               % (context, ctx.get("user"), where))
        return
    _user_settings(settings, user, user_path, context)


def _cluster_settings(settings: ConnectionSettings, cluster: Document, path: t.Optional[str]) -> None:
    settings.host = cluster.get("server", "")
    if cluster.get("insecure-skip-tls-verify"):
        settings.verify = False
    if cluster.get("certificate-authority-data"):
        settings.ca_data = base64.b64decode(cluster["certificate-authority-data"])
    elif cluster.get("certificate-authority"):
        settings.ca_file = _expand(cluster["certificate-authority"], path)
    settings.tls_server_name = cluster.get("tls-server-name")


def _user_settings(settings: ConnectionSettings, user: Document, path: t.Optional[str], context: str) -> None:
    if user.get("token"):
        settings.token = user["token"]
    elif user.get("tokenFile"):
        settings.token_file = _expand(user["tokenFile"], path)
    if user.get("client-certificate-data"):
        settings.client_cert_data = base64.b64decode(user["client-certificate-data"])
    elif user.get("client-certificate"):
        settings.client_cert_file = _expand(user["client-certificate"], path)
    if user.get("client-key-data"):
        settings.client_key_data = base64.b64decode(user["client-key-data"])
    elif user.get("client-key"):
        settings.client_key_file = _expand(user["client-key"], path)
    if user.get("exec"):
        _run_exec_plugin(settings, user["exec"], context)
    elif user.get("auth-provider"):
        raise RunbookError("context %r uses the legacy auth-provider %r, which is not supported; use an exec "
                           "credential plugin or a token" % (context, (user["auth-provider"] or {}).get("name")))


def _run_exec_plugin(settings: ConnectionSettings, spec: Document, context: str) -> None:
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
                              timeout=EXEC_PLUGIN_TIMEOUT, check=False)
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


# ----------------------------------------------------------------------------------------------
# Secrets of an inline kubeconfig

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


# ----------------------------------------------------------------------------------------------
# Resolution


def resolve_settings(params: t.Mapping[str, t.Any]) -> ConnectionSettings:
    """Turn the auth options into :class:`ConnectionSettings` (order: see the module docstring).

    ``params`` are validated module parameters; options left out (a test's partial mapping) count
    as not set.
    """
    settings = ConnectionSettings()
    if params.get("request_timeout") is not None:
        settings.timeout = number("request_timeout", params["request_timeout"], 0, None, above=True)
    kubeconfig, context = params.get("kubeconfig"), params.get("context")
    if kubeconfig or context or not params.get("host"):
        docs = kubeconfig_documents(kubeconfig)
        if docs:
            try:
                _from_kubeconfig(settings, docs, context)
            except (AttributeError, TypeError, ValueError) as exc:
                # A section of the wrong shape (a string where a mapping belongs, bad base64 data).
                raise RunbookError("kubeconfig %s is malformed: %s (%s)" % (
                    _where(docs), type(exc).__name__, "a value has the wrong type or encoding"))
        elif context:
            raise RunbookError("context %r was given but no kubeconfig was found (set kubeconfig or $KUBECONFIG)" % context)
        elif not params.get("host") and not _in_cluster(settings):
            raise RunbookError("no Kubernetes API server configured: set host (K8S_AUTH_HOST) or kubeconfig "
                               "(K8S_AUTH_KUBECONFIG, $KUBECONFIG, ~/.kube/config), or run in a Pod")
    _apply_options(settings, params)
    if not settings.host:
        raise RunbookError("no Kubernetes API server address: the %s gives none and host is not set" % settings.source)
    if "://" not in settings.host:
        settings.host = "https://" + settings.host
    settings.host = settings.host.rstrip("/")
    return settings


def _apply_options(settings: ConnectionSettings, params: t.Mapping[str, t.Any]) -> None:
    """Explicit options win over the kubeconfig; a file option replaces the kubeconfig's inline data."""
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


def ssl_context(settings: ConnectionSettings) -> ssl.SSLContext:
    """The TLS context for ``settings``: its CA (file or kubeconfig data) and client certificate."""
    if not settings.verify:
        context = ssl._create_unverified_context()  # pylint: disable=protected-access  # nosec: validate_certs=false
    else:
        try:
            context = ssl.create_default_context(
                cafile=settings.ca_file, cadata=settings.ca_data.decode() if settings.ca_data else None)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise RunbookError("cannot load the CA certificate %s: %s" % (settings.ca_file or "(kubeconfig data)", exc))
    if settings.client_cert_data or settings.client_cert_file:
        _load_client_certificate(context, settings)
    return context


def _load_client_certificate(context: ssl.SSLContext, settings: ConnectionSettings) -> None:
    cert_file, key_file = settings.client_cert_file, settings.client_key_file
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
        context.load_cert_chain(t.cast(str, cert_file), key_file)
    except (OSError, ssl.SSLError) as exc:
        raise RunbookError("cannot load the client certificate %s: %s" % (settings.client_cert_file or "(kubeconfig data)", exc))
    finally:
        if tmpdir:
            for name in os.listdir(tmpdir):
                os.unlink(os.path.join(tmpdir, name))
            os.rmdir(tmpdir)


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
