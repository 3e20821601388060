"""The credential types of ``extensions/controller/credential_types.yml``: their injectors render as
AWX renders them (sandboxed, here strictly: an optional field read without a check fails), they
inject exactly variables the modules read, every environment default of a module is provided by
one of them (or by AWX's Kubernetes credential), and no secret travels as an extra variable."""

from __future__ import annotations

import itertools
import typing as t
from pathlib import Path

import pytest
from ansible.parsing.dataloader import DataLoader

from tests.harness.awx import (
    AWX_JOB_VARIABLES, AWX_KUBERNETES_VARIABLES, CREDENTIAL_TYPES, Unsafe, env_name_allowed, inject, load_credential_types,
    module_variables, secret_fields)

TYPES = load_credential_types()
NAMES = [entry["name"] for entry in TYPES]


def full_inputs(ctype: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """A sample credential with every field filled in (booleans ticked, choices their first value)."""
    inputs: t.Dict[str, t.Any] = {}
    for field in ctype["inputs"]["fields"]:
        if field["type"] == "boolean":
            inputs[field["id"]] = True
        elif "choices" in field:
            inputs[field["id"]] = field["choices"][0]
        else:
            inputs[field["id"]] = "sample-%s-value" % field["id"]
    return inputs


def required_inputs(ctype: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    full = full_inputs(ctype)
    return {name: full[name] for name in ctype["inputs"].get("required", [])}


@pytest.fixture(scope="module")
def module_env() -> t.Dict[str, t.Dict[str, t.List[str]]]:
    return module_variables()


def read_variables(module_env: t.Mapping[str, t.Mapping[str, t.List[str]]]) -> t.Set[str]:
    return {name for options in module_env.values() for names in options.values() for name in names}


def test_the_file_holds_the_expected_types_in_the_aap_configuration_format() -> None:
    assert NAMES == ["runbook.ops PostgreSQL", "runbook.ops Redis", "runbook.ops backup repository",
                     "runbook.ops TLS client certificate", "runbook.ops Kubernetes kubeconfig"]
    for ctype in TYPES:
        assert set(ctype) <= {"name", "description", "kind", "inputs", "injectors"}, ctype["name"]
        assert ctype["kind"] == "cloud" and ctype["description"]
        ids = [field["id"] for field in ctype["inputs"]["fields"]]
        assert len(ids) == len(set(ids)), ctype["name"]
        assert set(ctype["inputs"].get("required", [])) <= set(ids)
        assert set(ctype["injectors"]) <= {"env", "file"}, "%s injects extra vars" % ctype["name"]
        for field in ctype["inputs"]["fields"]:
            assert field["type"] in ("string", "boolean") and field["label"]


@pytest.mark.parametrize("name", NAMES)
def test_every_template_is_unsafe_so_ansible_hands_it_to_awx_untouched(name) -> None:
    ctype = next(entry for entry in TYPES if entry["name"] == name)
    for kind in ("env", "file"):
        for key, template in ctype["injectors"].get(kind, {}).items():
            assert isinstance(template, Unsafe), "%s %s %s is not tagged !unsafe" % (name, kind, key)


def test_ansible_templating_leaves_the_injectors_as_written() -> None:
    # What infra.aap_configuration does first: load the file as variables and template them.
    from ansible.template import Templar

    loader = DataLoader()
    data = loader.load_from_file(str(CREDENTIAL_TYPES), cache="none", trusted_as_template=True)  # as include_vars
    rendered = Templar(loader=loader, variables={"host": "play-variable", "password": "play-secret"}).template(data)
    assert [dict(entry["injectors"]) for entry in rendered["controller_credential_types"]] == \
        [entry["injectors"] for entry in TYPES]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sample", ["full", "required only"])
def test_injectors_render_in_a_strict_sandbox_into_variables_the_modules_read(name, sample, tmp_path, module_env) -> None:
    ctype = next(entry for entry in TYPES if entry["name"] == name)
    inputs = full_inputs(ctype) if sample == "full" else required_inputs(ctype)
    injected = inject(ctype, inputs, tmp_path)
    assert not injected.extra_vars
    assert set(injected.env) <= read_variables(module_env), "%s injects variables no module reads" % name
    for variable in injected.env:
        assert env_name_allowed(variable), variable
        assert injected.env[variable].isascii()
    # A path variable names a file the file injector wrote, holding the field's value.
    written = {str(path): path for path in injected.files.values()}
    for variable, value in injected.env.items():
        if value.startswith(str(tmp_path)):
            assert value in written, (variable, value)
    if sample == "full":
        for field in ctype["inputs"]["fields"]:
            if field["type"] == "string" and field.get("secret"):
                value = inputs[field["id"]]
                delivered = list(injected.env.values()) + [p.read_text() for p in injected.files.values()]
                assert value in delivered, "%s: secret %s is not delivered" % (name, field["id"])


def test_blank_optional_fields_inject_empty_variables_that_count_as_unset(tmp_path) -> None:
    ctype = next(entry for entry in TYPES if entry["name"] == "runbook.ops backup repository")
    injected = inject(ctype, {"access_key": "AKIA", "secret_key": "s3cr3t"}, tmp_path)
    assert injected.env["AWS_SESSION_TOKEN"] == "" and injected.env["RUNBOOK_AGE_IDENTITY_FILE"] == ""
    full = inject(ctype, dict(full_inputs(ctype), age_identity="AGE-SECRET-KEY-1SAMPLE\n"), tmp_path)
    assert Path(full.env["RUNBOOK_AGE_IDENTITY_FILE"]).read_text() == "AGE-SECRET-KEY-1SAMPLE\n"


def test_tls_client_certificate_goes_only_to_the_services_ticked(tmp_path) -> None:
    ctype = next(entry for entry in TYPES if entry["name"] == "runbook.ops TLS client certificate")
    injected = inject(ctype, {"certificate": "CERT", "private_key": "KEY", "redis": True}, tmp_path)
    assert Path(injected.env["REDIS_TLS_CERT"]).read_text() == "CERT"
    assert Path(injected.env["REDIS_TLS_KEY"]).read_text() == "KEY"
    assert injected.env["PGSSLCERT"] == injected.env["K8S_AUTH_KEY_FILE"] == ""


def test_every_environment_default_of_every_module_is_provided(module_env, tmp_path) -> None:
    provided = set(AWX_KUBERNETES_VARIABLES) | set(AWX_JOB_VARIABLES)
    for ctype in TYPES:
        provided |= set(inject(ctype, full_inputs(ctype), tmp_path).env)
    missing = {"%s.%s" % (module, option): names for module, options in module_env.items()
               for option, names in options.items() if not provided & set(names)}
    assert not missing, "options whose variables no credential provides: %s" % missing


def test_no_variable_is_injected_by_two_types(tmp_path) -> None:
    # AWX applies credentials one after the other: a variable two types set would be decided by order.
    names = [set(inject(ctype, full_inputs(ctype), tmp_path).env) for ctype in TYPES] + [set(AWX_KUBERNETES_VARIABLES)]
    for first, second in itertools.combinations(names, 2):
        assert not first & second


def test_secrets_are_marked_secret_and_never_extra_vars() -> None:
    for ctype in TYPES:
        secrets = set(secret_fields(ctype))
        assert secrets, ctype["name"]
        for template in ctype["injectors"].get("extra_vars", {}).values():
            assert not any(secret in template for secret in secrets)
        labels = {field["id"]: field for field in ctype["inputs"]["fields"]}
        for field_id in ("password", "secret_key", "session_token", "age_identity", "private_key", "kubeconfig"):
            if field_id in labels:
                assert field_id in secrets, (ctype["name"], field_id)
