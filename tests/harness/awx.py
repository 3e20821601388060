"""What AWX does with the collection's credential types, for tests: load
``extensions/controller/credential_types.yml`` as Ansible would (``!unsafe`` templates), render a
credential's injectors the way AWX does when a job starts, and the environment variables the
modules' options fall back to.

The rendering follows AWX's ``CredentialType.inject_credential``: a sandboxed Jinja environment;
the credential's fields as variables, where a field left blank is not defined and an unticked
boolean is false; every ``file`` template written to its own file first, its path as
``tower.filename`` (one file) or ``tower.filename.<name>`` (``template.<name>``); then every ``env``
template; ``extra_vars`` templates end up in a file passed with ``-e``. Here the environment is
strict (``StrictUndefined``), so a template that reads an optional field without checking that it
is defined fails instead of rendering an empty string.
"""

from __future__ import annotations

import glob
import importlib
import os
import re
import tempfile
import typing as t
from pathlib import Path

import yaml
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tests.harness.collection import REPO, ensure_collection_path

CREDENTIAL_TYPES = REPO / "extensions" / "controller" / "credential_types.yml"
# What AWX's built-in "OpenShift or Kubernetes API Bearer Token" credential injects (its
# kubernetes_bearer_token injector; the CA variable only with a CA certificate and verification on).
AWX_KUBERNETES_VARIABLES = ("K8S_AUTH_HOST", "K8S_AUTH_API_KEY", "K8S_AUTH_VERIFY_SSL", "K8S_AUTH_SSL_CA_CERT")
# What AWX sets in every job's environment itself.
AWX_JOB_VARIABLES = ("JOB_ID", "INVENTORY_ID", "PROJECT_REVISION")
# AWX refuses these (and every ANSIBLE_* name) as injected environment variables.
AWX_ENV_BLOCKLIST = frozenset((
    "VIRTUAL_ENV", "PATH", "PYTHONPATH", "JOB_ID", "INVENTORY_ID", "INVENTORY_SOURCE_ID", "INVENTORY_UPDATE_ID",
    "AD_HOC_COMMAND_ID", "REST_API_URL", "REST_API_TOKEN", "MAX_EVENT_RES", "CALLBACK_QUEUE", "CALLBACK_CONNECTION",
    "CACHE", "JOB_CALLBACK_DEBUG", "INVENTORY_HOSTVARS", "AWX_HOST", "PROJECT_REVISION", "SUPERVISOR_CONFIG_PATH"))
_ENV_NAME = re.compile(r"^[a-zA-Z_]+[a-zA-Z0-9_]*$")


class Unsafe(str):
    """A scalar tagged ``!unsafe``: Ansible passes it on as text and never templates it."""


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!unsafe", lambda loader, node: Unsafe(loader.construct_scalar(node)))


def load_credential_types(path: Path = CREDENTIAL_TYPES) -> t.List[t.Dict[str, t.Any]]:
    data = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - SafeLoader plus the !unsafe tag
    return list(data["controller_credential_types"])


def credential_type(name: str) -> t.Dict[str, t.Any]:
    for entry in load_credential_types():
        if entry["name"] == name:
            return entry
    raise KeyError(name)


def secret_fields(ctype: t.Mapping[str, t.Any]) -> t.List[str]:
    return [field["id"] for field in ctype["inputs"]["fields"] if field.get("secret")]


class _Files:
    """``tower.filename`` with several files: one attribute per file name."""


class _Tower:
    filename: t.Any = None


class Injected(t.NamedTuple):
    env: t.Dict[str, str]
    files: t.Dict[str, Path]
    extra_vars: t.Dict[str, str]


def _namespace(ctype: t.Mapping[str, t.Any], inputs: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    namespace: t.Dict[str, t.Any] = {}
    for field in ctype["inputs"]["fields"]:
        value = inputs.get(field["id"])
        if field["type"] == "boolean":
            namespace[field["id"]] = bool(value)
        elif value:  # AWX leaves a blank field undefined
            namespace[field["id"]] = value
    unknown = set(inputs) - {field["id"] for field in ctype["inputs"]["fields"]}
    if unknown:
        raise KeyError("inputs %s are not fields of %s" % (sorted(unknown), ctype["name"]))
    return namespace


def inject(ctype: t.Mapping[str, t.Any], inputs: t.Mapping[str, t.Any], private_dir: Path) -> Injected:
    """The environment, files and extra vars AWX makes of a credential of ``ctype`` with ``inputs``;
    files are written under ``private_dir`` (0600; AWX uses 0660 in its own private directory)."""
    sandbox = ImmutableSandboxedEnvironment(undefined=StrictUndefined)
    tower = _Tower()
    namespace = _namespace(ctype, inputs)
    namespace["tower"] = tower
    injectors = ctype.get("injectors", {})
    files: t.Dict[str, Path] = {}
    for label, template in injectors.get("file", {}).items():
        handle, name = tempfile.mkstemp(dir=str(private_dir))
        with os.fdopen(handle, "w") as out:
            out.write(sandbox.from_string(template).render(**namespace))
        if "." not in label:
            tower.filename = name
            files[label] = Path(name)
        else:
            if not isinstance(tower.filename, _Files):
                tower.filename = _Files()
            setattr(tower.filename, label.split(".", 1)[1], name)
            files[label.split(".", 1)[1]] = Path(name)
    env = {var: sandbox.from_string(template).render(**namespace) for var, template in injectors.get("env", {}).items()}
    extra = {var: sandbox.from_string(template).render(**namespace)
             for var, template in injectors.get("extra_vars", {}).items()}
    return Injected(env, files, extra)


def kubernetes_bearer_token(host: str, token: str, ca_pem: t.Optional[str], private_dir: Path) -> Injected:
    """What AWX's built-in Kubernetes bearer token credential injects (verification on with a CA)."""
    env = {"K8S_AUTH_HOST": host, "K8S_AUTH_API_KEY": token}
    files: t.Dict[str, Path] = {}
    if ca_pem:
        handle, name = tempfile.mkstemp(dir=str(private_dir))
        with os.fdopen(handle, "w") as out:
            out.write(ca_pem)
        env.update(K8S_AUTH_VERIFY_SSL="True", K8S_AUTH_SSL_CA_CERT=name)
        files["ssl_ca_cert"] = Path(name)
    else:
        env["K8S_AUTH_VERIFY_SSL"] = "False"
    return Injected(env, files, {})


def env_name_allowed(name: str) -> bool:
    """Whether AWX accepts ``name`` as an injected environment variable."""
    return bool(_ENV_NAME.match(name)) and not name.startswith("ANSIBLE_") and name not in AWX_ENV_BLOCKLIST


# ----------------------------------------------------------------------------------------------
# What the modules read


def module_names() -> t.List[str]:
    return sorted(Path(path).stem for path in glob.glob(str(REPO / "plugins" / "modules" / "*.py"))
                  if not Path(path).name.startswith("_"))


def argument_spec(module: str) -> t.Dict[str, t.Any]:
    ensure_collection_path()
    loaded = importlib.import_module("ansible_collections.runbook.ops.plugins.modules.%s" % module)
    return t.cast(t.Dict[str, t.Any], loaded.module_args()["argument_spec"])


def fallbacks(spec: t.Mapping[str, t.Any], prefix: str = "") -> t.Dict[str, t.List[str]]:
    """``{option path: [variables]}`` of every option (suboptions too) that falls back to the environment."""
    from ansible_collections.runbook.ops.plugins.module_utils._env import fallback_variables

    found: t.Dict[str, t.List[str]] = {}
    for name, option in spec.items():
        names = fallback_variables(option)
        if names:
            found[prefix + name] = names
        if option.get("options"):
            found.update(fallbacks(option["options"], prefix + name + "."))
    return found


def module_variables() -> t.Dict[str, t.Dict[str, t.List[str]]]:
    """``{module: {option path: [variables]}}`` for every module."""
    return {module: fallbacks(argument_spec(module)) for module in module_names()}
