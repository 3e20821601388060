"""Make the checkout importable as ``ansible_collections.runbook.ops`` and run modules for real.

The repository root is the collection root; a symlink under ``.venv/collections`` gives it the
``ansible_collections/runbook/ops`` path that Ansible and Python imports expect.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import typing as t
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = Path(os.environ.get("RUNBOOK_COLLECTIONS_DIR", REPO / ".venv" / "collections"))


def ensure_collection_path() -> Path:
    link = COLLECTIONS / "ansible_collections" / "runbook" / "ops"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO, target_is_directory=True)
    if str(COLLECTIONS) not in sys.path:
        sys.path.insert(0, str(COLLECTIONS))
    return COLLECTIONS


def ansible_env(extra: t.Optional[dict] = None) -> dict:
    env = dict(os.environ)
    env["ANSIBLE_COLLECTIONS_PATH"] = str(ensure_collection_path())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(COLLECTIONS), env.get("PYTHONPATH", "")]))
    env.setdefault("ANSIBLE_NOCOLOR", "1")
    env.setdefault("ANSIBLE_HOST_KEY_CHECKING", "0")
    env.setdefault("ANSIBLE_LOCALHOST_WARNING", "0")
    env.setdefault("ANSIBLE_INVENTORY_UNPARSED_WARNING", "0")
    if extra:
        env.update(extra)
    return env


class ModuleResult(dict):
    """A module's JSON result; ``.rc`` and ``.stderr`` keep what the process said besides."""

    rc: int = 0
    stderr: str = ""


def run_module(name: str, args: dict, check_mode: bool = False, diff: bool = False,
               env: t.Optional[dict] = None, timeout: float = 600) -> ModuleResult:
    """Run ``plugins/modules/<name>.py`` in its own process, the way Ansible's local runner does.

    Returns the parsed result; ``failed`` is set as Ansible would see it.
    """
    payload = dict(args)
    payload["_ansible_check_mode"] = check_mode
    payload["_ansible_diff"] = diff
    payload.setdefault("_ansible_tmpdir", tempfile.gettempdir())
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": payload}, handle)
        args_path = handle.name
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ansible_collections.runbook.ops.plugins.modules.%s" % name, args_path],
            capture_output=True, text=True, env=ansible_env(env), timeout=timeout, check=False,
        )
    finally:
        os.unlink(args_path)
    try:
        result = ModuleResult(json.loads(proc.stdout))
    except ValueError:
        result = ModuleResult(failed=True, msg="module printed no JSON", stdout=proc.stdout)
    result.rc = proc.returncode
    result.stderr = proc.stderr
    if proc.returncode != 0:
        result.setdefault("failed", True)
    return result


def run_playbook(playbook: t.Union[str, Path], extra_vars: t.Optional[dict] = None, inventory: t.Optional[str] = None,
                 verbosity: int = 0, env: t.Optional[dict] = None, check: bool = False,
                 timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``ansible-playbook`` from the venv; returns the completed process (stdout + stderr merged)."""
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), str(playbook)]
    cmd += ["-i", inventory or "localhost,", "-c", "local"]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    if verbosity:
        cmd.append("-" + "v" * verbosity)
    if check:
        cmd.append("--check")
    extra = {"ANSIBLE_PYTHON_INTERPRETER": sys.executable}
    extra.update(env or {})
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=ansible_env(extra), timeout=timeout, check=False)
