"""The lab: the runbooks' three platforms on one machine, built from ``inventories/lab``.

    python -m tests.harness.lab up|down|status

``up`` starts (or finds running) one PostgreSQL serving TLS with a certificate from the lab CA and
holding every platform's database, a plain Redis and a TLS Redis (password, BGSAVE renamed as the
HIPAA runbook does), a second plain Redis to restore into, moto S3, and a Kubernetes API whose
Pods KWOK runs; then it creates each platform described in ``inventories/lab/host_vars/`` and
writes the connection facts to ``inventories/lab/group_vars/all/lab.yml``. ``up`` on a running
lab changes nothing.

``RUNBOOK_LAB_SCALE`` sets the data volume when the databases are first filled (see
:data:`SCALE_HELP`). Measured at 20: 345 MB in the three databases and 333 MB of Redis memory,
filled in about 40 s on two cores; the volume grows linearly with the scale.

Everything the lab holds is throwaway test data; its passwords are generated per lab and written
only under ``.lab/`` and the (ignored) inventory vars.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import secrets
import sys
import time
import typing as t
from pathlib import Path

from tests.harness.collection import REPO, ensure_collection_path
from tests.harness.services import MotoS3Server, PostgresServer, RedisServer

LAB = Path(os.environ.get("RUNBOOK_LAB_DIR", REPO / ".lab"))
STATE = LAB / "lab.json"
# RUNBOOK_LAB_VARS puts the connection facts elsewhere, so a test's own lab (its own RUNBOOK_LAB_DIR)
# leaves the facts of the lab people use alone.
VARS = Path(os.environ.get("RUNBOOK_LAB_VARS", REPO / "inventories" / "lab" / "group_vars" / "all" / "lab.yml"))
BUCKET = "lab-backups"
# What .lab holds; an older layout (namespaces auth/policy, no KWOK) is not upgraded in place.
LAYOUT = 2
HIPAA_BGSAVE = "HIPAA_BGSAVE_i9j0k1l2"
SCALE_HELP = ("RUNBOOK_LAB_SCALE=1 (default) fills about 16 MB of PostgreSQL data and 17 MB of Redis; "
              "RUNBOOK_LAB_SCALE=64 about 1 GB of each")


def _load() -> dict:
    try:
        return json.loads(STATE.read_text())
    except (OSError, ValueError):
        return {}


def scale() -> float:
    raw = os.environ.get("RUNBOOK_LAB_SCALE", "1")
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit("RUNBOOK_LAB_SCALE must be a number, not %r (%s)" % (raw, SCALE_HELP))
    if not 0 < value <= 1000:
        raise SystemExit("RUNBOOK_LAB_SCALE must be above 0 and at most 1000 (%s)" % SCALE_HELP)
    return value


# ----------------------------------------------------------------------------------------------
# The lab CA and the certificate PostgreSQL and Redis serve


def _tls() -> t.Dict[str, Path]:
    """``.lab/ca/``: a CA (10 years) and one server certificate for loopback and every in-cluster
    name of the platforms' database Services. Made once; kept across ``up`` runs."""
    ca_dir = LAB / "ca"
    files = {"ca": ca_dir / "ca.crt", "cert": ca_dir / "server.crt", "key": ca_dir / "server.key"}
    if all(p.exists() for p in files.values()):
        return files
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from tests.harness import platforms

    ca_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "runbook lab CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    names = {"localhost"}
    for platform in platforms.load().values():
        ns = platform["platform_namespace"]
        for svc in platform["platform_services"]:
            if svc["port"] in (5432, 6379):
                names.update({svc["name"], "%s.%s" % (svc["name"], ns), "%s.%s.svc" % (svc["name"], ns),
                              "%s.%s.svc.cluster.local" % (svc["name"], ns)})
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(n) for n in sorted(names)] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    files["key"].chmod(0o600)
    return files


# ----------------------------------------------------------------------------------------------
# Services


def _new_state() -> dict:
    from tests.harness.process import free_port
    return {"layout": LAYOUT, "pg_password": secrets.token_urlsafe(18), "redis_password": secrets.token_urlsafe(18),
            "redis_tls_password": secrets.token_urlsafe(18), "app_passwords": {},
            "pg_port": free_port(), "redis_port": free_port(), "redis_tls_port": free_port(),
            "redis_tls_plain_port": free_port(), "redis_target_port": free_port(), "s3_port": free_port()}


def _services(state: dict) -> t.Dict[str, t.Any]:
    tls = _tls()
    pg = PostgresServer(LAB / "postgres", password=state["pg_password"], port=state["pg_port"],
                        ssl_cert_file=tls["cert"], ssl_key_file=tls["key"])
    redis = RedisServer(LAB / "redis", name="redis", password=state["redis_password"], port=state["redis_port"])
    # The HIPAA platform's Redis: TLS, its own password, BGSAVE renamed. The plain port stays on
    # loopback for the harness's readiness check only; the platform's Service leads to the TLS port.
    redis_tls = RedisServer(LAB / "redis-tls", name="redis-tls", password=state["redis_tls_password"],
                            port=state["redis_tls_plain_port"], tls_port=state["redis_tls_port"],
                            tls_cert_file=tls["cert"], tls_key_file=tls["key"], tls_ca_file=tls["ca"],
                            extra_config=["rename-command BGSAVE %s" % HIPAA_BGSAVE])
    target = RedisServer(LAB / "redis-target", name="redis-target", password=state["redis_password"],
                         port=state["redis_target_port"])
    s3 = MotoS3Server(LAB / "s3", port=state["s3_port"])
    return {"postgres": pg, "redis": redis, "redis-tls": redis_tls, "redis-target": target, "s3": s3}


def _pgpass(pg: PostgresServer) -> Path:
    """A password file for ``kubectl exec ... -- psql/pg_dump`` (the platforms' ClusterExec)."""
    path = LAB / "postgres" / "pgpass"
    path.write_text("*:%d:*:%s:%s\n" % (pg.port, pg.user, pg.password))
    path.chmod(0o600)
    return path


# ----------------------------------------------------------------------------------------------
# Data


def _rows(base: int, factor: float) -> int:
    return max(1, int(base * factor))


def _seed_database(pg: PostgresServer, db: dict, password: str, factor: float) -> bool:
    """Create the role, the database it owns and its tables with generated rows; False if it existed."""
    if pg.psql("select 1 from pg_database where datname = '%s'" % db["name"]):
        return False
    owner = db["owner"]
    if not pg.psql("select 1 from pg_roles where rolname = '%s'" % owner):
        pg.psql("create role %s login password '%s'" % (owner, password))
    pg.psql("create database %s owner %s" % (db["name"], owner))
    pg.psql("set role %s;\n%s" % (owner, ";\n".join(_table_sql(table, factor) for table in db["tables"])), db=db["name"])
    return True


# Every table has a key, a timestamp and a few columns of the shape its name suggests; the bulk of
# the volume is in the audit tables (jsonb and text, about 300 bytes a row, as NOTES measured).
_TABLES = {
    "users": ("id uuid primary key default gen_random_uuid(), email text unique not null, password_hash text not null, "
              "profile jsonb not null, created_at timestamptz not null",
              "'user' || g || '@example.com', md5(g::text), jsonb_build_object('plan', (array['free','team',"
              "'enterprise'])[1 + g % 3], 'logins', g % 97), now() - (g || ' minutes')::interval", 2000),
    "sessions": ("id bigserial primary key, user_email text not null, token text not null, expires_at timestamptz not null",
                 "'user' || g % 2000 || '@example.com', md5('s' || g), now() + (g % 86400 || ' seconds')::interval", 4000),
    "user_sessions": ("id bigserial primary key, user_email text not null, token text not null, "
                      "expires_at timestamptz not null",
                      "'user' || g % 2000 || '@example.com', md5('s' || g), now() + (g % 86400 || ' seconds')::interval",
                      4000),
    "patients": ("id uuid primary key default gen_random_uuid(), mrn text unique not null, name text not null, "
                 "birth_date date not null, record jsonb not null",
                 "'MRN' || lpad(g::text, 8, '0'), 'Patient ' || g, date '1950-01-01' + g % 25000, "
                 "jsonb_build_object('allergies', g % 5, 'insurer', 'plan-' || g % 40)", 2000),
    "appointments": ("id bigserial primary key, mrn text not null, at timestamptz not null, notes text not null",
                     "'MRN' || lpad((g % 2000)::text, 8, '0'), now() + (g || ' hours')::interval, repeat(md5(g::text), 2)",
                     4000),
    "api_keys": ("id bigserial primary key, owner text not null, key_hash text not null, created_at timestamptz not null",
                 "'user' || g % 2000 || '@example.com', md5('k' || g), now() - (g || ' hours')::interval", 500),
    "credentials": ("id uuid primary key default gen_random_uuid(), holder text not null, type text not null, "
                    "document jsonb not null, issued_at timestamptz not null",
                    "'did:lab:' || md5(g::text), (array['VerifiableId','EmailCredential','AgeOver18'])[1 + g % 3], "
                    "jsonb_build_object('issuer', 'did:lab:issuer', 'n', g, 'proof', md5('p' || g)), "
                    "now() - (g || ' hours')::interval", 2000),
    "presentations": ("id bigserial primary key, holder text not null, verifier text not null, at timestamptz not null",
                      "'did:lab:' || md5(g::text), 'verifier-' || g % 30, now() - (g || ' minutes')::interval", 2000),
    "verification_requests": ("id bigserial primary key, verifier text not null, status text not null, "
                              "at timestamptz not null",
                              "'verifier-' || g % 30, (array['pending','verified','rejected'])[1 + g % 3], "
                              "now() - (g || ' minutes')::interval", 2000),
}
_AUDIT = ("id bigserial primary key, actor text not null, action text not null, details jsonb not null, "
          "payload text not null, at timestamptz not null",
          # Spread evenly over the last two years.
          "'user' || g % 2000 || '@example.com', (array['login','logout','read','update','export'])[1 + g % 5], "
          "jsonb_build_object('ip', '10.0.' || g % 250 || '.' || g % 200, 'ok', g % 11 <> 0), "
          "repeat(md5(g::text), 1 + g % 3), now() - ((g * 63072000.0 / {n}) || ' seconds')::interval", 20000)


def _table_sql(table: str, factor: float) -> str:
    columns, values, base = _TABLES.get(table, _AUDIT)
    rows = _rows(base, factor)
    select = values.replace("{n}", str(rows))
    names = [c.strip().split()[0] for c in columns.split(", ") if "default" not in c and "serial" not in c]
    sql = "create table %s (%s);\ninsert into %s (%s) select %s from generate_series(1, %d) g" % (
        table, columns, table, ", ".join(names), select, rows)
    if table not in _TABLES:
        # Audit tables are purged by age (the platforms' purge rules): their time column is indexed.
        sql += ";\ncreate index %s_at on %s (at)" % (table, table)
    return sql


def _seed_redis(client: t.Any, keys: int, prefix: str) -> bool:
    """Sessions, user hashes, queues and sorted sets; about 800 bytes of memory a session."""
    if client.dbsize() > 0:
        return False
    batch = 1000
    for start in range(0, keys, batch):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + batch, keys)):
            pipe.set("%s:session:%08d" % (prefix, i), secrets.token_hex(256), ex=86400 * 30)
            if i % 10 == 0:
                pipe.hset("%s:user:%07d" % (prefix, i // 10), mapping={"email": "user%d@example.com" % i, "plan": "team"})
            if i % 100 == 0:
                pipe.rpush("%s:queue:%05d" % (prefix, i // 100), *["job-%d" % j for j in range(20)])
                pipe.zadd("%s:leaderboard:%05d" % (prefix, i // 100), {"player-%d" % j: j * 1.5 for j in range(25)})
        pipe.execute()
    return True


def _seed_data(services: dict, state: dict, platforms: t.Mapping[str, dict], factor: float) -> t.List[str]:
    done = []
    pg = services["postgres"]
    for platform in platforms.values():
        for db in platform["platform_databases"]:
            password = state["app_passwords"].setdefault(db["owner"], secrets.token_urlsafe(18))
            STATE.write_text(json.dumps(state, indent=2))
            if _seed_database(pg, db, password, factor):
                done.append("database %s" % db["name"])
    if _seed_redis(services["redis"].client(), _rows(15500, factor), "lab"):
        done.append("redis")
    if _seed_redis(services["redis-tls"].client(), _rows(5200, factor), "hipaa"):
        done.append("redis-tls")
    return done


# ----------------------------------------------------------------------------------------------
# Kubernetes and the platforms


def _secret_values(state: dict, services: dict, platform: dict) -> t.Dict[str, t.Dict[str, str]]:
    db = platform["platform_databases"][0]
    password = state["app_passwords"][db["owner"]]
    host = "%s.%s.svc" % (db["service"], platform["platform_namespace"])
    redis_host = "redis.%s.svc" % platform["platform_namespace"]
    common = {
        "DATABASE_URL": "postgresql://%s:%s@%s:5432/%s?sslmode=verify-full" % (db["owner"], password, host, db["name"]),
        "REDIS_URL": "redis://:%s@%s:6379/0" % (state["redis_password"], redis_host),
        "username": db["owner"], "password": password, "host": host, "port": "5432", "database": db["name"],
        "POSTGRES_USER": db["owner"], "POSTGRES_PASSWORD": password, "POSTGRES_DB": db["name"],
        "JWT_SECRET": state.setdefault("jwt_secret_%s" % platform["platform_name"], secrets.token_urlsafe(32)),
        "kid": "lab-%s" % datetime.date.today().strftime("%Y-%m"),
    }
    return {s["name"]: {k: common[k] for k in s["keys"]} for s in platform["platform_secrets"]}


def _kubernetes(state: dict, services: dict, platforms: t.Mapping[str, dict]) -> dict:
    """Start (or find running) the lab's cluster and build every platform in it."""
    from tests.harness import k8s
    from tests.harness import platforms as plat

    workdir = LAB / "kubernetes"
    cluster = None
    if (workdir / "cluster.json").exists():
        cluster = k8s.KubeCluster.attach(workdir)
        if not (cluster.running() and cluster.node_agent_running()):
            cluster.stop()
            cluster = None
    if cluster is None:
        cluster = k8s.KubeCluster(workdir).start()
        print("lab: started kubernetes (API %s, KWOK node agent) in %.1fs" % (cluster.server, cluster.started_in))
    else:
        print("lab: kubernetes already running")
    client = cluster.client()
    pg, redis, redis_tls = services["postgres"], services["redis"], services["redis-tls"]
    tls = _tls()
    endpoints = plat.Endpoints(
        postgres=(pg.host, pg.port), redis=(redis.host, redis.port), redis_tls=(redis_tls.host, redis_tls.tls_port),
        logs=LAB / "logs", volumes=LAB / "volumes", exec_dir=LAB,
        exec_env={"PGHOST": "localhost", "PGPORT": str(pg.port), "PGUSER": pg.user, "PGSSLMODE": "verify-full",
                  "PGSSLROOTCERT": str(tls["ca"]), "PGPASSFILE": str(_pgpass(pg))})
    for platform in platforms.values():
        plat.seed_platform(client, platform, endpoints, _secret_values(state, services, platform))
    plat.wait_ready(client, platforms)
    return {"kubeconfig": str(cluster.kubeconfig)}


def _age_keys() -> t.Tuple[str, str]:
    import pyrage
    key_file = LAB / "age" / "identity.txt"
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        identity = pyrage.x25519.Identity.generate()
        key_file.write_text("# public key: %s\n%s\n" % (identity.to_public(), identity))
        key_file.chmod(0o600)
    text = key_file.read_text()
    identity = pyrage.x25519.Identity.from_str(text.strip().splitlines()[-1])
    return str(key_file), str(identity.to_public())


def _write_vars(state: dict, services: dict, kube: dict) -> None:
    pg, redis, redis_tls = services["postgres"], services["redis"], services["redis-tls"]
    target, s3 = services["redis-target"], services["s3"]
    ca = str(_tls()["ca"])
    identity_file, recipient = _age_keys()
    pg_login = dict(pg.login, login_host="localhost", ssl_mode="verify-full", ca_cert=ca)
    redis_tls_login = {"login_host": "localhost", "login_port": redis_tls.tls_port,
                       "login_password": redis_tls.password, "tls": True, "ca_certs": ca}
    values = {
        "runbook_lab_dir": str(LAB),
        "lab_ca_file": ca,
        "lab_pg_login": pg_login,
        "lab_app_passwords": state["app_passwords"],
        "lab_redis_login": redis.login,
        "lab_redis_tls_login": redis_tls_login,
        "lab_redis_tls_bgsave_command": HIPAA_BGSAVE,
        "lab_redis_target_login": target.login,
        "lab_repository": s3.repository_options(BUCKET, "runbook"),
        "lab_file_repository": "file://%s" % (LAB / "repository"),
        "lab_age_recipient": recipient,
        "lab_age_identity_file": identity_file,
        "lab_k8s_auth": kube,
    }
    lines = ["---", "# Generated by `make lab`: connection facts of the running lab. Not for production use."]
    lines += ["%s: %s" % (key, json.dumps(value)) for key, value in values.items()]
    VARS.parent.mkdir(parents=True, exist_ok=True)
    VARS.write_text("\n".join(lines) + "\n")
    VARS.chmod(0o600)


# ----------------------------------------------------------------------------------------------
# Commands


def up() -> int:
    from tests.harness import platforms as plat

    started = time.monotonic()
    factor = scale()
    LAB.mkdir(parents=True, exist_ok=True)
    LAB.chmod(0o755)
    state = _load() or _new_state()
    if state.get("layout") != LAYOUT:
        print("lab: %s was made by an earlier version of the lab (namespaces auth and policy, no KWOK); "
              "run `make lab-down`, remove %s and run `make lab` again" % (LAB, LAB))
        return 1
    STATE.write_text(json.dumps(state, indent=2))
    STATE.chmod(0o600)
    platforms = plat.load()
    services = _services(state)
    for name, service in services.items():
        if service.process.running():
            print("lab: %s already running" % name)
            continue
        service.start()
        print("lab: started %s" % name)
    client = services["s3"].client()
    if BUCKET not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=BUCKET)
    filled = _seed_data(services, state, platforms, factor)
    if filled:
        state["scale"] = factor
        STATE.write_text(json.dumps(state, indent=2))
        print("lab: filled %s (RUNBOOK_LAB_SCALE=%g)" % (", ".join(filled), factor))
    elif state.get("scale", 1) != factor:
        print("lab: data was filled at RUNBOOK_LAB_SCALE=%g; `make lab-down` and remove .lab to refill at %g"
              % (state.get("scale", 1), factor))
    kube = _kubernetes(state, services, platforms)
    _write_vars(state, services, kube)
    bin_dir = _bin_dir()
    print("lab: up in %.0fs: platforms %s; inventory vars in %s" % (
        time.monotonic() - started, ", ".join(platforms), os.path.relpath(VARS, REPO)))
    print("export KUBECONFIG=%s" % kube["kubeconfig"])
    print("export PATH=%s:$PATH  # kubectl" % bin_dir)
    return 0


def _bin_dir() -> str:
    from tests.harness import k8s
    return str(k8s.binary_dir())


def down() -> int:
    state = _load()
    if (LAB / "kubernetes" / "cluster.json").exists():
        from tests.harness import k8s
        k8s.KubeCluster.attach(LAB / "kubernetes").stop()
        print("lab: stopped kubernetes")
    if state:
        for name, service in _services(state).items():
            service.stop()
            print("lab: stopped %s" % name)
    return 0


def status() -> int:
    state = _load()
    if not state:
        print("lab: not created (run `make lab`)")
        return 1
    problems = 0
    for name, service in _services(state).items():
        alive = service.process.running()
        problems += 0 if alive else 1
        print("%-14s %s" % (name, "running" if alive else "stopped"))
    from tests.harness import k8s
    from tests.harness import platforms as plat
    workdir = LAB / "kubernetes"
    cluster = k8s.KubeCluster.attach(workdir) if (workdir / "cluster.json").exists() else None
    if cluster is None or not cluster.running():
        print("%-14s stopped" % "kubernetes")
        return 1
    agent = "running" if cluster.node_agent_running() else "stopped"
    print("%-14s running %s (KWOK %s)" % ("kubernetes", cluster.server, agent))
    client = cluster.client()
    for platform in plat.load().values():
        lines = plat.describe(client, platform)
        ready, total = plat.workloads_ready(client, platform)
        problems += 0 if ready == total else 1
        print("\n".join(lines))
    print("export KUBECONFIG=%s" % cluster.kubeconfig)
    return 0 if problems == 0 else 1


def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    ensure_collection_path()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("up", "down", "status"))
    args = parser.parse_args(argv)
    return {"up": up, "down": down, "status": status}[args.action]()


if __name__ == "__main__":
    sys.exit(main())
