"""The production playbooks run as AWX runs them: through ansible-runner, against a lab this module
starts for itself, with the credentials given only as the environment variables and files that
the credential types of ``extensions/controller/credential_types.yml`` inject (their injectors
rendered for the lab's credentials, as AWX renders them) and the cluster's as AWX's built-in
Kubernetes bearer token credential injects it. The inventory's platform descriptions hold no
secret, and no extra variable does.

AWX allows one credential of a type on a job, and the HIPAA platform's Redis has its own password:
each playbook runs as two jobs, one per group of platforms that share their credentials (a limit),
as a job template with different credentials (or a workflow) would run them.

The playbooks run in the order a platform lives through them (backup first: the daily check
verifies the newest backups and the DR drill restores them); each job's stdout and job events
(the artifacts AWX stores and shows) must not hold any secret of the lab."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import typing as t
from pathlib import Path

import pytest
import yaml

from tests.harness.awx import credential_type, inject, kubernetes_bearer_token
from tests.harness.collection import REPO, ensure_collection_path
from tests.harness.private_lab import lab_command

ansible_runner = pytest.importorskip("ansible_runner", reason="ansible-runner is pinned in requirements-test.txt")

# The production playbooks, in the order they run here; the test covers those present.
EXPECTED_PLAYBOOKS = ("backup", "daily_check", "maintenance_window", "dr_drill", "dr_restore", "incident_response")
REQUIRED_PLAYBOOKS = ("backup", "daily_check", "maintenance_window")
PRESENT = [name for name in EXPECTED_PLAYBOOKS if (REPO / "playbooks" / ("%s.yml" % name)).exists()]
# Platforms that share their credentials: the HIPAA platform's Redis has TLS and its own password.
GROUPS = {"shared-redis": ("rust-security", "personapass"), "hipaa": ("hungryhippaahneties",)}
# Playbooks that act on one platform per run (a restore, an incident): their job runs with a limit
# of one platform, the first of the group.
ONE_PLATFORM = ("dr_restore", "incident_response")
# The first Sunday of a month, 02:30 UTC: every platform's maintenance window is open.
IN_WINDOW = "2026-12-06T02:30:00Z"


class Lab(t.NamedTuple):
    work: Path
    inventory: Path
    facts: t.Dict[str, t.Any]
    state: t.Dict[str, t.Any]

    @property
    def reports(self) -> Path:
        return self.work / "reports"

    def secrets(self) -> t.Dict[str, str]:
        """Every secret the jobs get, by name."""
        from tests.harness.k8s import ADMIN_TOKEN

        identity = Path(self.facts["lab_age_identity_file"]).read_text()
        return {"postgresql password": self.state["pg_password"], "redis password": self.state["redis_password"],
                "tls redis password": self.state["redis_tls_password"],
                "s3 secret key": self.facts["lab_repository"]["secret_key"],
                "age identity": [line for line in identity.splitlines() if line.startswith("AGE-SECRET-KEY-")][0],
                "kubernetes token": ADMIN_TOKEN}


def _sanitized_facts(facts: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """The lab's inventory facts with only what says where things are: no password, key or token."""
    where = ("login_host", "login_port")
    return {
        "runbook_lab_dir": facts["runbook_lab_dir"],
        "lab_pg_login": {k: facts["lab_pg_login"][k] for k in where},
        "lab_redis_login": {k: facts["lab_redis_login"][k] for k in where},
        "lab_redis_tls_login": {k: facts["lab_redis_tls_login"][k] for k in where},
        # The scratch Redis a DR drill restores into (the plain Redis's password).
        "lab_redis_target_login": {k: facts["lab_redis_target_login"][k] for k in where},
        "lab_redis_tls_bgsave_command": facts["lab_redis_tls_bgsave_command"],
        "lab_repository": {"repository": facts["lab_repository"]["repository"]},
        "lab_file_repository": facts["lab_file_repository"],
        "lab_age_recipient": facts["lab_age_recipient"],
        # The cluster comes from the Kubernetes credential (K8S_AUTH_*).
        "lab_k8s_auth": {},
    }


def _write_inventory(inventory: Path, facts: t.Mapping[str, t.Any]) -> None:
    (inventory / "group_vars" / "all").mkdir(parents=True)
    (inventory / "host_vars").mkdir()
    source = REPO / "inventories" / "lab"
    shutil.copy(source / "hosts.yml", inventory / "hosts.yml")
    for path in (source / "host_vars").glob("*.yml"):
        text = path.read_text()
        # The age secret key is the credential's file, not a path the description names.
        text = text.replace(", 'encryption_identity': lab_age_identity_file", "")
        assert "lab_age_identity_file" not in text, path
        (inventory / "host_vars" / path.name).write_text(text)
    (inventory / "group_vars" / "all" / "lab.yml").write_text(yaml.safe_dump(_sanitized_facts(facts)))


@pytest.fixture(scope="module")
def lab() -> t.Iterator[Lab]:
    """The lab of ``python -m tests.harness.lab``, started under this module's own directory (its own
    services and ports), small data, stopped at the end; an inventory without secrets beside it."""
    # Not pytest's 0700 temporary directory: PostgreSQL runs as its own user and must reach its files.
    work = Path(tempfile.mkdtemp(prefix="runbook-awx-runner-"))
    work.chmod(0o755)
    facts_file = work / "lab-facts.yml"

    def run_lab(action: str) -> subprocess.CompletedProcess:
        return lab_command(action, work / "lab", facts_file, scale="0.05", check=False)

    try:
        started = run_lab("up")
        assert started.returncode == 0, started.stdout + started.stderr
        facts = yaml.safe_load(facts_file.read_text())
        state = json.loads((work / "lab" / "lab.json").read_text())
        inventory = work / "inventory"
        _write_inventory(inventory, facts)
        (work / "reports").mkdir()
        yield Lab(work, inventory, facts, state)
    finally:
        run_lab("down")
        shutil.rmtree(work, ignore_errors=True)


def credentials(lab: Lab, group: str, env_dir: Path, playbook: str) -> t.Dict[str, str]:
    """The environment of a job of ``group``: each credential's injectors rendered as AWX renders them
    (its files written into the job's private ``env`` directory, 0660 as AWX leaves them)."""
    ca_pem = Path(lab.facts["lab_ca_file"]).read_text()
    repository = lab.facts["lab_repository"]
    # A drill restores Redis into the lab's scratch Redis (plain, the plain Redis's password) and never
    # connects to the platform's own: the HIPAA drill's job template attaches that Redis's credential.
    tls = group == "hipaa" and playbook != "dr_drill"
    redis_password = lab.state["redis_tls_password" if tls else "redis_password"]
    kubeconfig = yaml.safe_load(Path(lab.facts["lab_k8s_auth"]["kubeconfig"]).read_text())
    cluster = kubeconfig["clusters"][0]["cluster"]
    from tests.harness.k8s import ADMIN_TOKEN

    injected = [
        inject(credential_type("runbook.ops PostgreSQL"), {
            "username": lab.facts["lab_pg_login"]["login_user"], "password": lab.state["pg_password"],
            "sslmode": "verify-full", "ca_cert": ca_pem}, env_dir),
        inject(credential_type("runbook.ops Redis"), dict(
            {"password": redis_password, "tls": tls}, **({"ca_cert": ca_pem} if tls else {})), env_dir),
        inject(credential_type("runbook.ops backup repository"), {
            "access_key": repository["access_key"], "secret_key": repository["secret_key"],
            "region": repository["region"], "endpoint_url": repository["s3_endpoint_url"],
            "age_identity": Path(lab.facts["lab_age_identity_file"]).read_text()}, env_dir),
        kubernetes_bearer_token(cluster["server"], ADMIN_TOKEN,
                                base64.b64decode(cluster["certificate-authority-data"]).decode(), env_dir),
    ]
    env: t.Dict[str, str] = {}
    for one in injected:
        assert not one.extra_vars
        assert not set(env) & set(one.env), "two credentials set the same variable"
        env.update(one.env)
        for path in one.files.values():
            path.chmod(0o660)
    return env


def job_extra_vars(lab: Lab, playbook: str, scenario: str) -> t.Dict[str, t.Any]:
    """What a job template or a survey would pass: report locations and the like, never a secret."""
    reports = str(lab.reports)
    per_playbook: t.Dict[str, t.Dict[str, t.Any]] = {
        "backup": {"backup_report_dir": reports},
        "daily_check": {"daily_check_report_dir": reports + "/{{ runbook_platform.name }}-daily-check",
                        "daily_check_fail_on": "never"},
        # The HIPAA platform's audit-shipper crash-loops by design of the lab: the window runs anyway.
        "maintenance_window": {"maintenance_window_now": IN_WINDOW, "maintenance_window_report_dir": reports,
                               "maintenance_window_abort_on": "never"},
        "dr_drill": {"dr_restore_report_dir": reports + "/drill"},
        "dr_restore": {"dr_restore_report_dir": reports + "/restore"},
        "incident_response": {"incident_response_scenario": scenario, "incident_response_incident_id": "awx-runner-1",
                              "incident_response_record_dir": reports + "/incidents",
                              "incident_response_report_dir": reports + "/incidents"},
    }
    return per_playbook[playbook]


def job_hosts(playbook: str, group: str) -> t.Tuple[str, ...]:
    return GROUPS[group][:1] if playbook in ONE_PLATFORM else GROUPS[group]


def run_job(lab: Lab, playbook: str, group: str, scenario: str = "") -> t.Tuple[t.Any, Path]:
    """One AWX-like job: ansible-runner with a private data directory, the credentials' environment,
    the inventory, non-secret extra vars and a limit. Returns the runner and its artifact directory."""
    ident = "%s-%s%s" % (playbook, group, "-" + scenario if scenario else "")
    hosts = job_hosts(playbook, group)
    private = lab.work / "jobs" / ident
    (private / "env").mkdir(parents=True)
    env = credentials(lab, group, private / "env", playbook)
    # What the execution environment provides: ansible-playbook on PATH and the collection installed.
    env.update(PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
               ANSIBLE_COLLECTIONS_PATH=str(ensure_collection_path()), ANSIBLE_NOCOLOR="1",
               ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_LOCALHOST_WARNING="0")
    runner = ansible_runner.run(
        private_data_dir=str(private), ident="job", project_dir=str(REPO),
        playbook=str(REPO / "playbooks" / ("%s.yml" % playbook)), inventory=str(lab.inventory),
        envvars=env, extravars=job_extra_vars(lab, playbook, scenario), limit=",".join(hosts),
        quiet=True, timeout=1800)
    return runner, private / "artifacts" / "job"


def leaked(lab: Lab, artifacts: Path) -> t.List[str]:
    """The secrets found in a job's stdout and job events (what AWX stores and shows; ansible-runner's
    ``command`` artifact holds the job's environment, as in AWX's private data directory, which AWX
    removes after the job and never shows)."""
    texts = [(artifacts / "stdout").read_text()]
    texts += [path.read_text() for path in sorted((artifacts / "job_events").glob("*.json"))]
    return sorted(name for name, secret in lab.secrets().items() if any(secret in text for text in texts))


def test_the_expected_production_playbooks_are_there() -> None:
    assert set(REQUIRED_PLAYBOOKS) <= set(PRESENT), PRESENT


def test_the_inventory_holds_no_secret(lab: Lab) -> None:
    texts = [path.read_text() for path in lab.inventory.rglob("*.yml")]
    found = [name for name, secret in lab.secrets().items() if any(secret in text for text in texts)]
    assert not found
    assert not any("lab_age_identity_file" in text or "login_password" in text for text in texts)


JOBS = [(playbook, scenario) for playbook in PRESENT
        for scenario in (("breach", "release") if playbook == "incident_response" else ("",))]


@pytest.mark.parametrize("playbook,scenario", JOBS, ids=["%s%s" % (p, "-" + s if s else "") for p, s in JOBS])
@pytest.mark.parametrize("group", list(GROUPS))
def test_playbook_runs_green_through_ansible_runner_with_credentials_from_the_environment(
        lab: Lab, playbook: str, scenario: str, group: str) -> None:
    runner, artifacts = run_job(lab, playbook, group, scenario)
    stdout = (artifacts / "stdout").read_text()
    assert runner.status == "successful" and runner.rc == 0, stdout[-6000:]
    hosts = {event["event_data"].get("host") for event in runner.events if event.get("event") == "runner_on_ok"}
    assert set(job_hosts(playbook, group)) <= hosts, "every platform of the job ran tasks: %s" % sorted(h for h in hosts if h)
    assert not leaked(lab, artifacts)
    # The secrets reached the job only through its environment (ansible-runner records it).
    job_env = json.loads((artifacts / "command").read_text())["env"]
    delivered = set(job_env.values())
    assert lab.state["pg_password"] in delivered and lab.facts["lab_repository"]["secret_key"] in delivered
    assert Path(job_env["RUNBOOK_AGE_IDENTITY_FILE"]).read_text() == Path(lab.facts["lab_age_identity_file"]).read_text()
    assert not json.loads((artifacts.parent.parent / "env" / "extravars").read_text() or "{}").keys() & {
        "login_password", "secret_key", "access_key", "encryption_identity", "api_key"}
    if playbook == "daily_check":
        for platform in GROUPS[group]:
            report = (lab.reports / ("%s-daily-check" % platform) / "daily-check.json").read_text()
            for refused in ("password authentication failed", "WRONGPASS", "NOAUTH", "InvalidAccessKeyId",
                            "no age secret key", "Unauthorized"):
                assert refused not in report, (platform, refused)
