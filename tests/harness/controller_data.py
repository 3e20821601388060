"""Read the AWX / Automation Controller data in ``extensions/controller`` and what it refers to:
the playbooks' roles and the options their ``meta/argument_specs.yml`` declare, and awx.awx's
module argument specs (from the ``ansible`` package on PyPI, installed under the cache directory)."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import typing as t
from pathlib import Path

import yaml

from tests.harness.collection import REPO

CONTROLLER_DIR = REPO / "extensions" / "controller"
ROLE_PREFIX = "runbook.ops."
# The community package release that pairs with ansible-core 2.19 (also used by the benchmarks).
ANSIBLE_PACKAGE = "ansible==12.3.0"
CACHE = Path(os.environ.get("RUNBOOK_CACHE", Path.home() / ".cache" / "runbook-ops"))


class _Loader(yaml.SafeLoader):
    """YAML as Ansible reads vars files: ``!unsafe`` marks a string Ansible never templates."""


_Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def controller_vars() -> t.Dict[str, t.Any]:
    """Every top-level variable of every data file, as infra.aap_configuration's dispatch reads them."""
    merged: t.Dict[str, t.Any] = {}
    for path in sorted(CONTROLLER_DIR.glob("*.yml")):
        data = yaml.load(path.read_text(), Loader=_Loader) or {}
        overlap = set(merged) & set(data)
        assert not overlap, "%s defines %s again" % (path.name, sorted(overlap))
        merged.update(data)
    return merged


def playbook_roles(playbook: Path) -> t.List[str]:
    """Short names of the collection's roles a playbook runs (``roles:`` and include/import_role)."""
    names: t.List[str] = []
    for play in yaml.safe_load(playbook.read_text()) or []:
        for entry in play.get("roles") or []:
            names.append(entry["role"] if isinstance(entry, dict) else entry)
        for section in ("pre_tasks", "tasks", "post_tasks"):
            for task in play.get(section) or []:
                for action in ("ansible.builtin.include_role", "ansible.builtin.import_role", "include_role", "import_role"):
                    if action in task:
                        names.append(task[action]["name"])
    return [n[len(ROLE_PREFIX):] for n in names if n.startswith(ROLE_PREFIX)]


def role_options(role: str, seen: t.Optional[t.Set[str]] = None) -> t.Dict[str, dict]:
    """Options of a role's ``main`` entry point and of the collection roles it depends on."""
    seen = set() if seen is None else seen
    if role in seen:
        return {}
    seen.add(role)
    root = REPO / "roles" / role
    specs = yaml.safe_load((root / "meta" / "argument_specs.yml").read_text())
    options = dict(specs["argument_specs"]["main"].get("options") or {})
    meta = yaml.safe_load((root / "meta" / "main.yml").read_text()) or {}
    for dep in meta.get("dependencies") or []:
        name = dep["role"] if isinstance(dep, dict) else dep
        if name.startswith(ROLE_PREFIX):
            for key, value in role_options(name[len(ROLE_PREFIX):], seen).items():
                options.setdefault(key, value)
    return options


def playbook_options(playbook: str) -> t.Dict[str, dict]:
    options: t.Dict[str, dict] = {}
    for role in playbook_roles(REPO / playbook):
        options.update(role_options(role))
    return options


# ----------------------------------------------------------------------------------------------
# AWX's rrule rules (what its schedule serializer refuses), written from its documented behaviour

_DTSTART = re.compile(r"DTSTART(;TZID=[^:\s]+)?:(\d{8}T\d{6})(Z?)")
_NUMBERED_BYDAY = re.compile(r"BYDAY=[^;\s]*[+-]?\d+(MO|TU|WE|TH|FR|SA|SU)")


def awx_rrule_errors(rrule: str) -> t.List[str]:
    errors = []
    starts = _DTSTART.findall(rrule)
    if len(starts) != 1:
        errors.append("exactly one DTSTART is required")
    elif not starts[0][0]:
        errors.append("DTSTART needs ;TZID= (this project writes every schedule with an explicit zone)")
    rules = re.findall(r"RRULE:(\S+)", rrule)
    if not rules:
        errors.append("RRULE: is required")
    for rule in rules:
        if "INTERVAL=" not in rule:
            errors.append("INTERVAL is required in %s" % rule)
        if "FREQ=SECONDLY" in rule or "FREQ=MINUTELY" in rule:
            errors.append("no sub-hourly frequencies: %s" % rule)
        if _NUMBERED_BYDAY.search(rule):
            errors.append("BYDAY with a number (1SU) is refused by AWX; use BYSETPOS: %s" % rule)
        if "COUNT=" in rule and "UNTIL=" in rule:
            errors.append("COUNT and UNTIL together: %s" % rule)
    for word in ("EXDATE", "RDATE"):
        if word in rrule:
            errors.append("%s is refused by AWX" % word)
    return errors


# ----------------------------------------------------------------------------------------------
# awx.awx's own module argument specs

def awx_collection_root() -> Path:
    """A directory holding ``ansible_collections/awx/awx``: the ``ansible`` package, installed with
    ``--no-deps`` under the cache directory (ansible-core stays the project's)."""
    target = CACHE / "bench" / ANSIBLE_PACKAGE.replace("==", "-")
    if (target / "ansible_collections" / "awx" / "awx").is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="ansible-", dir=target.parent))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp), ANSIBLE_PACKAGE],
                   check=True)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


class _Captured(Exception):
    def __init__(self, argument_spec: dict, kwargs: dict) -> None:
        super().__init__("captured")
        self.argument_spec = argument_spec
        self.kwargs = kwargs


def awx_module_spec(module: str) -> t.Tuple[dict, dict]:
    """``(argument_spec, validator keyword arguments)`` of ``awx.awx.<module>``, as its ``main()``
    builds them (the authentication options included)."""
    root = str(awx_collection_root())
    if root not in sys.path:
        sys.path.append(root)
    api = importlib.import_module("ansible_collections.awx.awx.plugins.module_utils.controller_api")
    mod = importlib.import_module("ansible_collections.awx.awx.plugins.modules.%s" % module)

    def capture(argument_spec: dict, **kwargs: t.Any) -> None:
        raise _Captured(argument_spec, kwargs)

    original = mod.ControllerAPIModule
    mod.ControllerAPIModule = capture
    try:
        mod.main()
    except _Captured as captured:
        spec = dict(api.ControllerModule.AUTH_ARGSPEC)
        spec.update(captured.argument_spec)
        keys = ("mutually_exclusive", "required_together", "required_one_of", "required_if", "required_by")
        return spec, {k: v for k, v in captured.kwargs.items() if k in keys}
    finally:
        mod.ControllerAPIModule = original
    raise AssertionError("awx.awx.%s did not build its module" % module)


def _doc_to_spec(options: dict) -> dict:
    """An argument spec from documented options (type, elements, required, choices, suboptions)."""
    spec = {}
    for name, doc in options.items():
        entry: t.Dict[str, t.Any] = {"type": doc.get("type", "str")}
        for key in ("elements", "required", "choices", "aliases"):
            if key in doc:
                entry[key] = doc[key]
        if "suboptions" in doc:
            entry["options"] = _doc_to_spec(doc["suboptions"])
        spec[name] = entry
    return spec


def awx_documented_suboptions(module: str, option: str) -> dict:
    """The argument spec awx.awx documents for the elements of ``option`` of ``module``.

    ``workflow_job_template``'s code declares ``workflow_nodes`` as a plain list of dicts; its
    DOCUMENTATION is the only place that says what a node holds, so nodes are checked against that.
    """
    awx_module_spec(module)  # makes the collection importable
    mod = importlib.import_module("ansible_collections.awx.awx.plugins.modules.%s" % module)
    doc = yaml.safe_load(mod.DOCUMENTATION)
    return _doc_to_spec(doc["options"][option]["suboptions"])
