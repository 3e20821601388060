"""extensions/controller against the tools that consume it: every job template's playbook passes
``ansible-playbook --syntax-check``; every object validates against awx.awx's own module argument
spec (the modules infra.aap_configuration's roles call); playbooks/controller_config.yml loads the
data and hands it to infra.aap_configuration's dispatch role, and says clearly when that collection
is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from tests.harness.collection import REPO, ansible_env
from tests.harness.controller_data import awx_documented_suboptions, awx_module_spec, controller_vars

DATA = controller_vars()
# infra.aap_configuration variable -> the awx.awx module its role calls.
MODULES = {
    "controller_projects": "project",
    "controller_execution_environments": "execution_environment",
    "controller_inventories": "inventory",
    "controller_inventory_sources": "inventory_source",
    "controller_templates": "job_template",
    "controller_schedules": "schedule",
    "controller_workflows": "workflow_job_template",
    "controller_credential_types": "credential_type",
}
# Field names infra.aap_configuration's roles accept besides the module's own option names.
RENAMED = {"survey": "survey_spec", "destroy_current_schema": "destroy_current_nodes",
           "ask_tags": "ask_tags_on_launch", "ask_skip_tags": "ask_skip_tags_on_launch"}
PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")


def as_module_params(item: dict) -> dict:
    params = {RENAMED.get(k, k): v for k, v in item.items()}
    for key in ("execution_environment", "inventory", "organization", "project"):
        if isinstance(params.get(key), dict):  # the roles also take {name: ...}
            params[key] = params[key]["name"]
    return params


def objects() -> t.List[t.Tuple[str, dict]]:
    found = [(var, item) for var in MODULES for item in DATA.get(var, [])]
    assert {var for var, _item in found} >= set(MODULES) - {"controller_credential_types"}
    return found


@pytest.mark.parametrize("variable,item", objects(), ids=lambda v: v["name"] if isinstance(v, dict) else v)
def test_controller_object_validates_against_awx_module_argument_spec(variable, item):
    spec, rules = awx_module_spec(MODULES[variable])
    params = as_module_params(item)
    unknown = set(params) - set(spec) - {a for o in spec.values() for a in o.get("aliases", [])}
    assert not unknown, "%s: %s are not options of awx.awx.%s" % (item["name"], sorted(unknown), MODULES[variable])
    result = ArgumentSpecValidator(spec, **rules).validate(params)
    assert not result.error_messages, (item["name"], result.error_messages)
    if params.get("workflow_nodes"):
        node_spec = awx_documented_suboptions("workflow_job_template", "workflow_nodes")
        for node in params["workflow_nodes"]:
            checked = ArgumentSpecValidator(node_spec).validate(node)
            assert not checked.error_messages, (item["name"], node["identifier"], checked.error_messages)


def test_the_validation_catches_a_wrong_field():
    spec, rules = awx_module_spec("schedule")
    bad = ArgumentSpecValidator(spec, **rules).validate({"name": "x", "rrule": "r", "enabled": "sometimes"})
    assert bad.error_messages
    node_spec = awx_documented_suboptions("workflow_job_template", "workflow_nodes")
    for node in ({"unified_job_template": {"name": "x", "type": "job_template"}},  # no identifier
                 {"identifier": "a", "job_template": "x"}):  # the old schema's field
        assert ArgumentSpecValidator(node_spec).validate(node).error_messages, node


@pytest.mark.parametrize("playbook", sorted({jt["playbook"] for jt in DATA["controller_templates"]}))
def test_job_template_playbook_passes_syntax_check(playbook):
    assert (REPO / playbook).is_file(), "%s does not exist" % playbook
    proc = subprocess.run([PLAYBOOK, "--syntax-check", "-i", str(REPO / "inventories" / "example" / "hosts.yml"),
                           str(REPO / playbook)], capture_output=True, text=True, env=ansible_env(), timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def run_controller_config(collections: str, extra: t.Optional[dict] = None) -> subprocess.CompletedProcess:
    env = ansible_env({"ANSIBLE_COLLECTIONS_PATH": collections})
    cmd = [PLAYBOOK, str(REPO / "playbooks" / "controller_config.yml")]
    if extra:
        cmd += ["-e", json.dumps(extra)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)


def test_controller_config_says_how_to_install_infra_aap_configuration_when_missing(tmp_path):
    empty = tmp_path / "collections"
    empty.mkdir()
    proc = run_controller_config(str(empty))
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert "infra.aap_configuration is not installed" in proc.stdout
    assert "ansible-galaxy collection install infra.aap_configuration awx.awx" in proc.stdout


def test_controller_config_hands_every_object_to_the_dispatch_role(tmp_path):
    """A stand-in infra.aap_configuration whose dispatch role records what it was given: the
    playbook finds it on the collections path and passes every data file's objects."""
    role = tmp_path / "collections" / "ansible_collections" / "infra" / "aap_configuration" / "roles" / "dispatch"
    (role / "tasks").mkdir(parents=True)
    (role.parents[1] / "galaxy.yml").write_text("namespace: infra\nname: aap_configuration\nversion: 0.0.1\n")
    record = tmp_path / "dispatched.json"
    (role / "tasks" / "main.yml").write_text(
        "- name: Record what the dispatch role received\n"
        "  ansible.builtin.copy:\n"
        "    dest: %s\n"
        "    content: \"{{ {'projects': controller_projects, 'templates': controller_templates,"
        " 'schedules': controller_schedules, 'workflows': controller_workflows,"
        " 'inventories': controller_inventories, 'execution_environments': controller_execution_environments}"
        " | to_json }}\"\n"
        "    mode: \"0600\"\n" % record)
    collections = os.pathsep.join([str(tmp_path / "collections"), str(REPO / ".venv" / "collections")])
    proc = run_controller_config(collections)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    got = json.loads(record.read_text())
    assert [t["name"] for t in got["templates"]] == [t["name"] for t in DATA["controller_templates"]]
    assert [s["rrule"] for s in got["schedules"]] == [s["rrule"] for s in DATA["controller_schedules"]]
    assert got["workflows"][0]["destroy_current_nodes"] is True
