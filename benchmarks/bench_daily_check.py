"""Benchmark playbooks/daily_check.yml against the runbooks' own morning check scripts, in one run.

A lab of its own (``python -m tests.harness.lab up`` under a temporary directory: the three platforms of
``inventories/lab`` with their seeded faults), then, interleaved and ``--runs`` times each:

* the runbooks' morning checks, ``benchmarks/runbook_scripts/morning_check_<platform>.sh`` (kubectl,
  pg_isready, psql, redis-cli, openssl, aws against the same lab), one after another as a person runs
  them, and the three at once;
* ``ansible-playbook playbooks/daily_check.yml`` over the three platforms (one invocation; per-platform
  task time from ansible-core's ``junit`` callback);
* ``ansible-playbook`` with one ``debug`` task over the same hosts: Ansible's fixed cost.

Then, per seeded fault of each platform (``SEEDED_FAULTS`` of ``tests/integration/test_daily_check_role.py``),
whether the scripts' output shows it to a person reading it, and whether daily_check's JSON report has it.

The scripts judge nothing; their output is read here with the rule a person applies:

* pods: a line of ``get pods | grep -v Running`` (other than the header) for the Pod;
* workloads: the Deployment's READY column of ``get deploy`` shows fewer ready than wanted;
* expected Services: a Service the script greps for is missing from its listing (a Service the runbook does
  not list is not looked for);
* certificates: ``openssl x509 -enddate`` printed a date less than 30 days away;
* backups: no object of the set in the bucket listing, or the newest older than 26 hours (nightly);
* signing keys: the scripts do not look.

The lab has no cert-manager, so the Certificates' Secrets do not exist; the benchmark writes them as
cert-manager would (type ``kubernetes.io/tls``, ``notAfter`` as the Certificate's status says) so that the
runbooks' openssl check has something to read.

Usage: .venv/bin/python -m benchmarks.bench_daily_check [--runs 3] [--scale 1]
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness.collection import run_playbook  # noqa: E402
from tests.harness.k8s import KubeCluster, binary_dir  # noqa: E402
from tests.integration.test_daily_check_role import SEEDED_FAULTS, matches  # noqa: E402

PLATFORMS = tuple(SEEDED_FAULTS)
SCRIPTS = REPO / "benchmarks" / "runbook_scripts"
TOOLS = ("pg_isready", "psql", "redis-cli", "openssl", "aws", "base64")
CERT_WARNING_DAYS = 30
BACKUP_STALE = datetime.timedelta(hours=26)
Fault = t.Tuple[str, str, str, str]


# ----------------------------------------------------------------------------------------------
# The lab


def lab(action: str, root: Path, scale: str) -> None:
    env = dict(os.environ, RUNBOOK_LAB_DIR=str(root / "lab"), RUNBOOK_LAB_SCALE=scale,
               RUNBOOK_LAB_VARS=str(root / "inventory" / "group_vars" / "all" / "lab.yml"))
    proc = subprocess.run([sys.executable, "-m", "tests.harness.lab", action], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        raise SystemExit("lab %s failed: %s %s" % (action, proc.stdout[-3000:], proc.stderr[-3000:]))


def make_inventory(root: Path) -> Path:
    """The lab inventory with this lab's connection facts."""
    inventory = root / "inventory"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    (inventory / "hosts.yml").symlink_to(REPO / "inventories" / "lab" / "hosts.yml")
    (inventory / "host_vars").symlink_to(REPO / "inventories" / "lab" / "host_vars")
    return inventory


def write_certificate_secrets(cluster: KubeCluster) -> t.List[str]:
    """What cert-manager would have written for each Certificate: a TLS Secret whose certificate ends
    when the Certificate's status says. Self-signed (the lab CA's key is not kept)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    client = cluster.client()
    written = []
    for platform in PLATFORMS:
        for cert in client.list("cert-manager.io/v1", "certificates", platform):
            meta, spec = cert["metadata"], cert["spec"]
            not_after = datetime.datetime.fromisoformat(cert["status"]["notAfter"].replace("Z", "+00:00"))
            not_before = datetime.datetime.fromisoformat(cert["status"]["notBefore"].replace("Z", "+00:00"))
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spec["dnsNames"][0])])
            pem = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in spec["dnsNames"]]), critical=False)
                   .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
            key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
            body = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                    "metadata": {"name": spec["secretName"], "namespace": meta["namespace"],
                                 "annotations": {"cert-manager.io/certificate-name": meta["name"]}},
                    "data": {"tls.crt": base64.b64encode(pem).decode(), "tls.key": base64.b64encode(key_pem).decode()}}
            client.create("v1", "secrets", body, meta["namespace"])
            written.append("Secret/%s/%s" % (meta["namespace"], spec["secretName"]))
    return written


# ----------------------------------------------------------------------------------------------
# The runbooks' scripts


def script_env(facts: dict, platform: str, kubectl: Path) -> t.Dict[str, str]:
    """The operator's shell: tunnels open, credentials in the environment."""
    pg, repo = facts["lab_pg_login"], facts["lab_repository"]
    env = dict(os.environ, KUBECONFIG=facts["lab_k8s_auth"]["kubeconfig"], KUBECTL=str(kubectl),
               PGHOST=pg["login_host"], PGPORT=str(pg["login_port"]), PGUSER=pg["login_user"],
               PGPASSWORD=pg["login_password"], PGSSLMODE=pg["ssl_mode"], PGSSLROOTCERT=pg["ca_cert"],
               BACKUP_URL=repo["repository"], S3_ENDPOINT_URL=repo["s3_endpoint_url"], AWS_DEFAULT_REGION=repo["region"],
               AWS_ACCESS_KEY_ID=repo["access_key"], AWS_SECRET_ACCESS_KEY=repo["secret_key"])
    if platform == "hungryhippaahneties":
        redis = facts["lab_redis_tls_login"]
        env.update(REDIS_PASSWORD=redis["login_password"], REDIS_CACERT=redis["ca_certs"])
    else:
        redis = facts["lab_redis_login"]
        env.update(REDISCLI_AUTH=redis["login_password"])
    env.update(REDIS_HOST=redis["login_host"], REDIS_PORT=str(redis["login_port"]))
    return env


def run_script(platform: str, env: t.Mapping[str, str]) -> t.Tuple[float, str, str]:
    started = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPTS / ("morning_check_%s.sh" % platform))], env=dict(env),
                          capture_output=True, text=True, timeout=300, check=False)
    return time.monotonic() - started, proc.stdout, proc.stderr


def scripts_in_turn(envs: t.Mapping[str, t.Mapping[str, str]]) -> t.Tuple[float, t.Dict[str, float], t.Dict[str, str]]:
    started = time.monotonic()
    each, outputs = {}, {}
    for platform, env in envs.items():
        each[platform], outputs[platform], _stderr = run_script(platform, env)
    return time.monotonic() - started, each, outputs


def scripts_at_once(envs: t.Mapping[str, t.Mapping[str, str]]) -> float:
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(envs)) as pool:
        list(pool.map(lambda item: run_script(*item), envs.items()))
    return time.monotonic() - started


def sections(output: str) -> t.Dict[str, t.List[str]]:
    """The script's output by ``----- title`` section."""
    found: t.Dict[str, t.List[str]] = {}
    current = None
    for line in output.splitlines():
        if line.startswith("----- "):
            current = line[6:]
            found[current] = []
        elif current is not None and not line.startswith("====="):
            found[current].append(line)
    return found


def section(parts: t.Mapping[str, t.List[str]], prefix: str) -> t.Tuple[str, t.List[str]]:
    for title, lines in parts.items():
        if title.startswith(prefix):
            return title, lines
    return "", []


def first_fields(lines: t.Iterable[str]) -> t.List[str]:
    return [line.split()[0] for line in lines if line.strip() and not line.startswith("NAME ")]


def script_sees(output: str, fault: Fault, now: datetime.datetime) -> str:
    """``yes`` when a person reading the script's output sees the fault by the rule of the module
    docstring, else ``no`` with the reason."""
    _source, check, obj, _severity = fault
    kind, _ns, name = obj.split("/", 2)
    parts = sections(output)
    if check == "pods":
        hits = [n for n in first_fields(section(parts, "pods not Running")[1]) if n.startswith(name.rstrip("*"))]
        return "yes" if hits else "no"
    if check == "workloads":
        for line in section(parts, "deployments")[1]:
            fields = line.split()
            if fields and fields[0] == name:
                ready, wanted = fields[1].split("/")
                return "yes" if int(ready) < int(wanted) else "no"
        return "no (not listed)"
    if check == "expected_objects":
        title, lines = section(parts, "services")
        expected = re.findall(r"[\w-]+", title.split("expected:", 1)[-1].rstrip(")"))
        if kind != "Service" or name not in expected:
            return "no (the runbook does not list it)"
        return "yes" if name not in first_fields(lines) else "no"
    if check == "certificates":
        return certificate_seen(parts, name, now)
    if check == "backup_freshness":
        return backup_seen(parts, obj, now)
    return "no (not checked)"


def certificate_seen(parts: t.Mapping[str, t.List[str]], name: str, now: datetime.datetime) -> str:
    dates = [line.split("=", 1)[1] for line in section(parts, "certificate %s" % name)[1] if line.startswith("notAfter=")]
    if not dates:
        return "no (no enddate printed)"
    end = datetime.datetime.strptime(dates[0], "%b %d %H:%M:%S %Y %Z").replace(tzinfo=datetime.timezone.utc)
    return "yes" if end - now < datetime.timedelta(days=CERT_WARNING_DAYS) else "no"


def backup_seen(parts: t.Mapping[str, t.List[str]], obj: str, now: datetime.datetime) -> str:
    _kind, backup_kind, backup_set = obj.split("/", 2)
    listed = [line for line in section(parts, "backups")[1] if "/%s/%s/" % (backup_kind, backup_set) in line]
    if not listed:
        return "yes"
    newest = max(datetime.datetime.strptime(" ".join(line.split()[:2]), "%Y-%m-%d %H:%M:%S") for line in listed)
    # aws s3 ls prints local time.
    return "yes" if now - newest.astimezone(datetime.timezone.utc) > BACKUP_STALE else "no"


# ----------------------------------------------------------------------------------------------
# daily_check


def run_daily_check(inventory: Path, out: Path, playbook: Path, extra_vars: dict,
                    timed_tasks: bool = True) -> t.Tuple[float, subprocess.CompletedProcess]:
    """One ansible-playbook invocation; the junit callback writes per-host task times to ``out/junit``."""
    env = {"ANSIBLE_CALLBACKS_ENABLED": "ansible.builtin.junit", "JUNIT_OUTPUT_DIR": str(out / "junit"),
           "JUNIT_HIDE_TASK_ARGUMENTS": "true"} if timed_tasks else {}
    started = time.monotonic()
    proc = run_playbook(playbook, inventory=str(inventory), extra_vars=extra_vars, env=env)
    return time.monotonic() - started, proc


def task_times(junit_dir: Path) -> t.Dict[str, t.Dict[str, float]]:
    """``{platform: {task: seconds}}`` from the junit callback's newest file (then removed)."""
    newest = max(junit_dir.glob("*.xml"), key=lambda p: p.stat().st_mtime)
    times: t.Dict[str, t.Dict[str, float]] = {}
    for case in ET.parse(newest).getroot().iter("testcase"):
        match = re.match(r"\[([^\]]+)\] [^:]*: (.*)", case.get("name", ""))
        if match:
            task = match.group(2).split(" : ", 1)[-1]
            times.setdefault(match.group(1), {})[task] = float(case.get("time", 0))
    for path in junit_dir.glob("*.xml"):
        path.unlink()
    return times


def daily_check_findings(reports: Path, platform: str) -> t.List[dict]:
    data = json.loads((reports / platform / "daily-check.json").read_text())
    return [dict(f, source=s["source"]) for s in data["sections"] for f in s["findings"]]


def daily_check_sees(found: t.Sequence[dict], fault: Fault) -> str:
    source, check, obj, severity = fault
    hits = [f for f in found if matches(f, source, check, obj)]
    if not hits:
        return "no"
    return "yes" if all(f["severity"] == severity for f in hits) else "yes (%s)" % hits[0]["severity"]


TRIVIAL = """---
- name: Ansible's fixed cost over the same hosts
  hosts: platforms
  gather_facts: false
  tasks:
    - name: One task
      ansible.builtin.debug:
        msg: "{{ runbook_platform.name }}"
"""


# ----------------------------------------------------------------------------------------------
# Report


def median_best(values: t.Sequence[float]) -> str:
    return "%9.2f %9.2f" % (statistics.median(values), min(values))


def print_times(times: t.Mapping[str, t.List[float]], per_script: t.Mapping[str, t.List[float]],
                per_host: t.Mapping[str, t.Dict[str, t.List[float]]], runs: int) -> None:
    print("%-58s %9s %9s" % ("wall time, %d runs each (s)" % runs, "median", "best"))
    for label, values in times.items():
        print("%-58s %s" % (label, median_best(values)))
    print()
    print("%-22s %18s %24s" % ("per platform (median s)", "runbook script", "daily_check tasks"))
    for platform in PLATFORMS:
        host_totals = [sum(run) for run in zip(*per_host[platform].values())]
        print("%-22s %18.2f %24.2f" % (platform, statistics.median(per_script[platform]), statistics.median(host_totals)))
    print()
    print("daily_check task time per platform (median s; a platform's tasks run one after another,")
    print("the three platforms side by side under forks):")
    print("%-64s %s" % ("task", " ".join("%13s" % p[:13] for p in PLATFORMS)))
    tasks = list(per_host[PLATFORMS[0]])
    for task in tasks:
        cells = ["%13.2f" % statistics.median(per_host[p][task]) if task in per_host[p] else "%13s" % "-" for p in PLATFORMS]
        print("%-64s %s" % (task[:64], " ".join(cells)))


def print_detection(outputs: t.Mapping[str, str], findings: t.Mapping[str, t.List[dict]], now: datetime.datetime) -> int:
    both_missed: t.List[str] = []
    scripts_only: t.List[str] = []
    scripts_missed: t.List[str] = []
    for platform in PLATFORMS:
        print("\n%s: seeded fault -> seen by the runbook script? by daily_check?" % platform)
        print("  %-18s %-22s %-64s %-34s %s" % ("source", "check", "object", "runbook script", "daily_check"))
        for fault in SEEDED_FAULTS[platform]:
            by_script = script_sees(outputs[platform], fault, now)
            by_role = daily_check_sees(findings[platform], fault)
            print("  %-18s %-22s %-64s %-34s %s" % (fault[0], fault[1], fault[2], by_script, by_role))
            label = "%s: %s %s" % (platform, fault[1], fault[2])
            if by_script == "yes" and by_role == "no":
                scripts_only.append(label)
            if by_script != "yes":
                scripts_missed.append("%s (%s; daily_check: %s)" % (label, fault[0], by_role))
            if by_script != "yes" and by_role == "no":
                both_missed.append(label)
        failing = [f for f in findings[platform] if f["severity"] in ("warning", "critical", "unknown")]
        print("  daily_check findings at warning or worse: %d (%s)" % (
            len(failing), ", ".join("%s %d" % (s, sum(f["severity"] == s for f in failing))
                                    for s in ("critical", "warning", "unknown"))))
        for finding in failing:
            if not any(matches(finding, *fault[:3]) for fault in SEEDED_FAULTS[platform]):
                print("  not seeded: %(severity)s %(source)s %(check)s %(object)s: %(message).100s" % finding)
    print("\nseen by the scripts but missed by daily_check: %s" % ("; ".join(scripts_only) or "none"))
    print("missed by the scripts (%d):" % len(scripts_missed))
    for label in scripts_missed:
        print("  " + label)
    if both_missed:
        print("missed by both: %s" % "; ".join(both_missed))
    return 1 if scripts_only or both_missed else 0


LABELS = ("runbook scripts, one after another (as a person runs them)", "runbook scripts, the three at once",
          "daily_check playbook over the three platforms", "ansible-playbook, one debug task (fixed cost)")


class Measured(t.NamedTuple):
    times: t.Dict[str, t.List[float]]  # by LABELS
    per_script: t.Dict[str, t.List[float]]  # by platform
    per_host: t.Dict[str, t.Dict[str, t.List[float]]]  # by platform, then task
    outputs: t.Dict[str, str]  # the scripts' output of the last run


def measure(runs: int, envs: t.Mapping[str, t.Mapping[str, str]], inventory: Path, out: Path) -> Measured:
    trivial = out / "fixed_cost.yml"
    trivial.write_text(TRIVIAL)
    extra = {"daily_check_fail_on": "never", "daily_check_outputs": {
        "json": "%s/reports/{{ runbook_platform.name }}/daily-check.json" % out,
        "markdown": "%s/reports/{{ runbook_platform.name }}/daily-check.md" % out}}
    got = Measured({label: [] for label in LABELS}, {p: [] for p in PLATFORMS}, {p: {} for p in PLATFORMS}, {})
    for _run in range(runs):  # interleaved: a busy moment of the machine hits every tool
        elapsed, each, outputs = scripts_in_turn(envs)
        got.outputs.update(outputs)
        got.times[LABELS[0]].append(elapsed)
        for platform, seconds in each.items():
            got.per_script[platform].append(seconds)
        got.times[LABELS[1]].append(scripts_at_once(envs))
        elapsed, proc = run_daily_check(inventory, out, REPO / "playbooks" / "daily_check.yml", extra)
        if proc.returncode != 0:
            raise SystemExit("daily_check failed (%d): %s" % (proc.returncode, proc.stdout[-4000:]))
        got.times[LABELS[2]].append(elapsed)
        for platform, tasks in task_times(out / "junit").items():
            for task, seconds in tasks.items():
                got.per_host[platform].setdefault(task, []).append(seconds)
        elapsed, proc = run_daily_check(inventory, out, trivial, {}, timed_tasks=False)
        if proc.returncode != 0:
            raise SystemExit("the fixed-cost playbook failed: %s" % proc.stdout[-2000:])
        got.times[LABELS[3]].append(elapsed)
    return got


def tool_versions(kubectl: Path) -> str:
    lines = []
    for argv in (["aws", "--version"], [str(kubectl), "version", "--client"], ["psql", "--version"], ["redis-cli", "--version"]):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        lines.append((proc.stdout.strip() or proc.stderr.strip()).split("\n")[0])
    return "; ".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each; median and best are shown")
    parser.add_argument("--scale", default="1", help="RUNBOOK_LAB_SCALE of the benchmark's lab")
    options = parser.parse_args()
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if missing:
        raise SystemExit("missing %s: run scripts/bootstrap" % ", ".join(missing))
    kubectl = binary_dir() / "kubectl"
    root = Path(tempfile.mkdtemp(prefix="runbook-bench-daily-check-"))
    root.chmod(0o755)  # PostgreSQL runs as its own user
    out = root / "out"
    out.mkdir(mode=0o700)
    load = os.getloadavg()
    try:
        inventory = make_inventory(root)
        started = time.monotonic()
        lab("up", root, options.scale)
        written = write_certificate_secrets(KubeCluster.attach(root / "lab" / "kubernetes"))
        print("lab of its own (RUNBOOK_LAB_SCALE=%s) up in %.0f s; wrote %s as cert-manager would"
              % (options.scale, time.monotonic() - started, ", ".join(written)))
        facts = yaml.safe_load((inventory / "group_vars" / "all" / "lab.yml").read_text())
        envs = {platform: script_env(facts, platform, kubectl) for platform in PLATFORMS}
        got = measure(options.runs, envs, inventory, out)
        now = datetime.datetime.now(datetime.timezone.utc)
        findings = {platform: daily_check_findings(out / "reports", platform) for platform in PLATFORMS}
        print("tools of the scripts: %s" % tool_versions(kubectl))
        print("machine: %d cores; load average %.1f %.1f %.1f at the start, %.1f %.1f %.1f at the end"
              % ((os.cpu_count() or 0,) + load + os.getloadavg()))
        print()
        print_times(got.times, got.per_script, got.per_host, options.runs)
        status = print_detection(got.outputs, findings, now)
        print("\nthe scripts' output of the last run (redis INFO fields elided but used_memory_human):")
        for platform in PLATFORMS:
            print("\n".join(line for line in got.outputs[platform].splitlines()
                            if not re.match(r"[a-z_]+:\S*$", line) or line.startswith("used_memory_human:")))
        return status
    finally:
        try:
            lab("down", root, options.scale)
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
