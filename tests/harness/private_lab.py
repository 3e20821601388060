"""A lab of one test module's own: ``python -m tests.harness.lab`` under its own directory (its own
services on free ports), writing its connection facts to its own file, at the data scale it asks for."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import typing as t
from pathlib import Path

from tests.harness.collection import REPO, ansible_env


def lab_command(action: str, lab_dir: Path, facts_file: Path, scale: t.Optional[str] = None,
                timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    """``up``, ``down`` or ``status`` of that lab; with ``check``, a failure raises with the lab's output."""
    extra = {"RUNBOOK_LAB_DIR": str(lab_dir), "RUNBOOK_LAB_VARS": str(facts_file)}
    if scale is not None:
        extra["RUNBOOK_LAB_SCALE"] = scale
    proc = subprocess.run([sys.executable, "-m", "tests.harness.lab", action], cwd=str(REPO), env=ansible_env(extra),
                          capture_output=True, text=True, timeout=timeout, check=False)
    if check:
        assert proc.returncode == 0, "lab %s failed: %s %s" % (action, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


@contextlib.contextmanager
def lab_with_inventory(prefix: str, timeout: float = 600) -> t.Iterator[t.Tuple[Path, Path]]:
    """``(root, inventory)``: a lab under a new directory ``root`` (``root / "lab"``) and an inventory that is the
    lab inventory with this lab's connection facts; stopped and removed at the end."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)  # PostgreSQL runs as its own user
    inventory = root / "inventory"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    (inventory / "hosts.yml").symlink_to(REPO / "inventories" / "lab" / "hosts.yml")
    (inventory / "host_vars").symlink_to(REPO / "inventories" / "lab" / "host_vars")
    facts = inventory / "group_vars" / "all" / "lab.yml"
    try:
        lab_command("up", root / "lab", facts, timeout=timeout)
        yield root, inventory
    finally:
        lab_command("down", root / "lab", facts, timeout=timeout)
        shutil.rmtree(root, ignore_errors=True)
