"""execution-environment.yml and bindep.txt with the real tools: ``ansible-galaxy collection build``
makes the tarball, ``ansible-builder create`` (no container engine needed) makes the build context,
whose Containerfile installs that tarball, the pinned Python requirements and the system packages,
and checks the PostgreSQL client's version; bindep resolves the system packages for Debian and RPM
platforms. No image is built or pulled here."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest
import yaml
from bindep.depends import Depends
from packaging.requirements import Requirement

from tests.harness.collection import REPO, ansible_env

BIN = Path(sys.executable).parent
EE = yaml.safe_load((REPO / "execution-environment.yml").read_text())
VERSION = yaml.safe_load((REPO / "galaxy.yml").read_text())["version"]
TARBALL = "runbook-ops-%s.tar.gz" % VERSION
RPM = ["platform:rpm", "platform:redhat", "platform:centos", "platform:centos-9", "platform:dnf"]
DEBIAN = ["platform:dpkg", "platform:debian", "platform:debian-12", "platform:apt"]


def requirement_lines(path: Path) -> t.List[Requirement]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [Requirement(line) for line in lines if line]


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> t.Tuple[Path, Path]:
    """(the build context, the tarball) made the way the README says."""
    work = tmp_path_factory.mktemp("ee")
    built = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", "--force", "--output-path", str(work),
                            str(REPO)], capture_output=True, text=True, env=ansible_env(), timeout=300, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    for name in ("execution-environment.yml", "bindep.txt"):
        shutil.copy(REPO / name, work / name)
    created = subprocess.run([str(BIN / "ansible-builder"), "create", "-f", "execution-environment.yml", "-c", "context",
                              "--output-filename", "Containerfile"], cwd=work, capture_output=True, text=True,
                             timeout=300, check=False)
    assert created.returncode == 0, created.stdout + created.stderr
    return work / "context", work / TARBALL


def test_base_image_is_pinned_by_digest():
    name = EE["images"]["base_image"]["name"]
    assert re.fullmatch(r"[a-z0-9./-]+(:[\w.-]+)?@sha256:[0-9a-f]{64}", name), name
    assert ":latest" not in name


def test_containerfile_installs_the_built_tarball(context):
    ctx, tarball = context
    containerfile = (ctx / "Containerfile").read_text()
    assert containerfile.startswith('ARG EE_BASE_IMAGE="%s"' % EE["images"]["base_image"]["name"])
    assert "COPY _build /build" in containerfile
    assert re.search(r"ansible-galaxy collection install \$ANSIBLE_GALAXY_CLI_COLLECTION_OPTS -r requirements.yml",
                     containerfile)
    requirements = yaml.safe_load((ctx / "_build" / "requirements.yml").read_text())
    assert requirements["collections"] == [{"name": "collections/%s" % TARBALL, "type": "file"}]
    copied = ctx / "_build" / "collections" / TARBALL
    assert hashlib.sha256(copied.read_bytes()).digest() == hashlib.sha256(tarball.read_bytes()).digest()
    # --no-deps is only right while the collection depends on no other collection.
    assert "--no-deps" in EE["build_arg_defaults"]["ANSIBLE_GALAXY_CLI_COLLECTION_OPTS"]
    assert not yaml.safe_load((REPO / "galaxy.yml").read_text()).get("dependencies")
    # Not a directory source resolved inside the build (ansible-builder#380).
    assert "type: dir" not in (REPO / "execution-environment.yml").read_text()


def test_the_tarball_installs_the_collection_without_the_checkout_clutter(context, tmp_path):
    _ctx, tarball = context
    proc = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "install", "--no-deps", "--force", "-p", str(tmp_path),
                           str(tarball)], capture_output=True, text=True, env=ansible_env(), timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root = tmp_path / "ansible_collections" / "runbook" / "ops"
    for needed in ("plugins/modules/pg_backup.py", "roles/daily_check/meta/argument_specs.yml", "playbooks/daily_check.yml"):
        assert (root / needed).is_file(), needed
    for clutter in (".venv", ".lab", ".git"):
        assert not (root / clutter).exists(), clutter


def test_python_requirements_are_pinned_and_within_the_supported_ranges(context):
    ctx, _tarball = context
    pinned = {r.name.lower(): r for r in requirement_lines(ctx / "_build" / "requirements.txt")}
    supported = {r.name.lower(): r for r in requirement_lines(REPO / "requirements.txt")}
    assert set(pinned) == set(supported)
    for name, requirement in pinned.items():
        (spec,) = list(requirement.specifier)
        assert spec.operator == "==", requirement
        assert supported[name].specifier.contains(spec.version), (requirement, supported[name])
        assert requirement.extras == supported[name].extras, name
    test_pins = {r.name.lower(): r for r in requirement_lines(REPO / "requirements-test.txt") if r.specifier}
    for name, requirement in pinned.items():
        if name in test_pins:  # the versions the test suite runs
            assert requirement.specifier == test_pins[name].specifier, name
    core = EE["dependencies"]["ansible_core"]["package_pip"]
    assert Requirement(core).specifier == test_pins["ansible-core"].specifier
    assert "==" in EE["dependencies"]["ansible_runner"]["package_pip"]


def pg_check_step(containerfile: str) -> str:
    (step,) = [line for line in containerfile.splitlines() if line.startswith("RUN ") and "pg_dump --version" in line]
    return step[len("RUN "):]


def run_step(step: str, tmp_path: Path, version_line: t.Optional[str], minimum: str) -> subprocess.CompletedProcess:
    path = os.environ["PATH"]
    if version_line is not None:
        fake = tmp_path / "bin"
        fake.mkdir(exist_ok=True)
        (fake / "pg_dump").write_text("#!/bin/sh\necho '%s'\n" % version_line)
        (fake / "pg_dump").chmod(0o755)
        path = "%s:%s" % (fake, path)
    env = {"PATH": path, "RUNBOOK_PG_SERVER_MAJOR": minimum}
    return subprocess.run(["/bin/sh", "-c", step], capture_output=True, text=True, env=env, timeout=60, check=False)


def test_build_fails_when_pg_dump_is_older_than_the_newest_server(context, tmp_path):
    ctx, _tarball = context
    containerfile = (ctx / "Containerfile").read_text()
    step = pg_check_step(containerfile)
    assert "ARG RUNBOOK_PG_SERVER_MAJOR=" in containerfile
    # The check comes after the system packages are installed.
    assert containerfile.index("install-from-bindep") < containerfile.index(step)
    older = run_step(step, tmp_path, "pg_dump (PostgreSQL) 16.4", "17")
    assert older.returncode != 0 and "older than the newest PostgreSQL server to back up (17)" in older.stderr
    assert run_step(step, tmp_path, "pg_dump (PostgreSQL) 17.2", "17").returncode == 0
    assert run_step(step, tmp_path, "pg_dump (PostgreSQL) 18beta1", "17").returncode == 0
    assert run_step(step, tmp_path, "something else", "17").returncode != 0
    # And with this machine's real client (the harness's PostgreSQL 15 tools).
    real = shutil.which("pg_dump") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_dump"))), None)
    assert real, "no pg_dump on this machine"
    version = subprocess.run([str(real), "--version"], capture_output=True, text=True, check=True).stdout.strip()
    major = re.search(r"\(PostgreSQL\) (\d+)", version).group(1)
    env_path = "%s:%s" % (Path(real).parent, os.environ["PATH"])
    ok = subprocess.run(["/bin/sh", "-c", step], capture_output=True, text=True, timeout=60, check=False,
                        env={"PATH": env_path, "RUNBOOK_PG_SERVER_MAJOR": major})
    assert ok.returncode == 0, ok.stderr
    too_old = subprocess.run(["/bin/sh", "-c", step], capture_output=True, text=True, timeout=60, check=False,
                             env={"PATH": env_path, "RUNBOOK_PG_SERVER_MAJOR": str(int(major) + 1)})
    assert too_old.returncode != 0


def test_the_pg_client_installed_is_the_one_the_check_expects():
    text = (REPO / "execution-environment.yml").read_text()
    minimum = re.search(r"ARG RUNBOOK_PG_SERVER_MAJOR=(\d+)", text).group(1)
    packages = {rule[0] for rule in Depends((REPO / "bindep.txt").read_text()).active_rules(RPM)}
    assert "postgresql%s" % minimum in packages
    assert "/usr/pgsql-%s/bin" % minimum in text


def test_bindep_resolves_the_system_packages_for_rpm_and_debian():
    depends = Depends((REPO / "bindep.txt").read_text())
    assert {rule[0] for rule in depends.active_rules(RPM)} == {"postgresql17", "redis"}
    assert {rule[0] for rule in depends.active_rules(DEBIAN)} == {"postgresql-client", "redis-tools"}
    with_tests = {rule[0] for rule in depends.active_rules(DEBIAN + ["test"])}
    assert {"postgresql-15", "redis-server", "age", "zstd"} <= with_tests
    # The CLI on this (Debian) machine: it parses the file and lists what is missing, nothing else.
    proc = subprocess.run([str(BIN / "bindep"), "-b"], cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode in (0, 1) and not proc.stderr.strip(), proc.stderr
    assert set(proc.stdout.split()) <= {"postgresql-client", "redis-tools"}
