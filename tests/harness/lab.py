"""The lab: the harness's real services started persistently under ``.lab/`` and seeded like a
small platform, plus a generated inventory pointing at them.

    python -m tests.harness.lab up|down|status

``up`` on a running lab changes nothing. Everything the lab holds is throwaway test data; its
passwords are generated per lab and written only under ``.lab/`` and the (ignored) inventory vars.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import typing as t
from pathlib import Path

from tests.harness.collection import REPO, ensure_collection_path
from tests.harness.services import MotoS3Server, PostgresServer, RedisServer

LAB = Path(os.environ.get("RUNBOOK_LAB_DIR", REPO / ".lab"))
STATE = LAB / "lab.json"
VARS = REPO / "inventories" / "lab" / "group_vars" / "all" / "lab.yml"
BUCKET = "lab-backups"


def _load() -> dict:
    try:
        return json.loads(STATE.read_text())
    except (OSError, ValueError):
        return {}


def _services(state: dict) -> t.Dict[str, t.Any]:
    pg = PostgresServer(LAB / "postgres", password=state["pg_password"], port=state["pg_port"])
    redis = RedisServer(LAB / "redis", name="redis", password=state["redis_password"], port=state["redis_port"])
    target = RedisServer(LAB / "redis-target", name="redis-target", password=state["redis_password"],
                         port=state["redis_target_port"])
    s3 = MotoS3Server(LAB / "s3", port=state["s3_port"])
    return {"postgres": pg, "redis": redis, "redis-target": target, "s3": s3}


def _new_state() -> dict:
    from tests.harness.process import free_port
    return {"pg_password": secrets.token_urlsafe(18), "redis_password": secrets.token_urlsafe(18),
            "pg_port": free_port(), "redis_port": free_port(), "redis_target_port": free_port(),
            "s3_port": free_port(), "seeded": []}


def _seed_postgres(pg: PostgresServer) -> None:
    existing = set(pg.psql("select datname from pg_database").split())
    if "auth_service" not in existing:
        pg.psql("create database auth_service")
        subprocess.run([str(pg.bin_dir / "pgbench"), "-i", "-s", "5", "-q", "auth_service"], env=pg.env,
                       check=True, capture_output=True)
        pg.psql("""
            create table users (id uuid primary key default gen_random_uuid(), email text not null unique,
                                profile jsonb not null, created_at timestamptz not null default now());
            insert into users (email, profile, created_at)
              select 'user' || g || '@example.com',
                     jsonb_build_object('plan', (array['free','team','enterprise'])[1 + g % 3], 'logins', g % 97),
                     now() - (g || ' minutes')::interval
              from generate_series(1, 20000) g;
        """, db="auth_service")
    if "policy_service" not in existing:
        pg.psql("create database policy_service")
        pg.psql("""
            create table policies (id serial primary key, name text not null unique, rego text not null,
                                   version int not null default 1, updated_at timestamptz not null default now());
            insert into policies (name, rego)
              select 'policy-' || g, 'package authz.p' || g || E'\\ndefault allow = false'
              from generate_series(1, 500) g;
            create table decisions (id bigserial primary key, policy_id int references policies(id),
                                    allowed boolean not null, at timestamptz not null default now());
            insert into decisions (policy_id, allowed, at)
              select 1 + g % 500, g % 7 <> 0, now() - (g || ' seconds')::interval
              from generate_series(1, 50000) g;
        """, db="policy_service")


def _seed_redis(redis: RedisServer) -> None:
    client = redis.client()
    if client.dbsize() > 0:
        return
    pipe = client.pipeline(transaction=False)
    for i in range(2000):
        pipe.set("session:%05d" % i, secrets.token_hex(16), ex=3600 + i)
    for i in range(300):
        pipe.hset("user:%04d" % i, mapping={"email": "user%d@example.com" % i, "plan": "team", "logins": i})
    for i in range(100):
        pipe.rpush("queue:%03d" % i, *["job-%d" % j for j in range(20)])
        pipe.sadd("tags:%03d" % i, *["tag-%d" % j for j in range(10)])
        pipe.zadd("leaderboard:%03d" % i, {"player-%d" % j: j * 1.5 for j in range(25)})
    pipe.xadd("audit-stream", {"event": "login", "user": "alice"})
    pipe.execute()
    cache = redis.client(db=1)
    cache.mset({"rate:%04d" % i: i for i in range(500)})


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


def _write_vars(state: dict, services: dict, kube: t.Optional[dict]) -> None:
    pg, redis, target, s3 = services["postgres"], services["redis"], services["redis-target"], services["s3"]
    identity_file, recipient = _age_keys()
    lines = [
        "---",
        "# Generated by `make lab`: connection facts of the running lab. Not for production use.",
        "runbook_lab_dir: %s" % json.dumps(str(LAB)),
        "lab_pg_login: %s" % json.dumps(pg.login),
        "lab_redis_login: %s" % json.dumps(redis.login),
        "lab_redis_target_login: %s" % json.dumps(target.login),
        "lab_repository: %s" % json.dumps(s3.repository_options(BUCKET, "runbook")),
        "lab_file_repository: %s" % json.dumps("file://%s" % (LAB / "repository")),
        "lab_age_recipient: %s" % json.dumps(recipient),
        "lab_age_identity_file: %s" % json.dumps(identity_file),
        "lab_k8s_auth: %s" % json.dumps(kube or {}),
    ]
    VARS.parent.mkdir(parents=True, exist_ok=True)
    VARS.write_text("\n".join(lines) + "\n")
    VARS.chmod(0o600)


def _kubernetes(up: bool) -> t.Optional[dict]:
    """Start (or find running) the lab's Kubernetes API; returns module auth options."""
    from tests.harness import k8s
    workdir = LAB / "kubernetes"
    if (workdir / "cluster.json").exists():
        cluster = k8s.KubeCluster.attach(workdir)
        if cluster.running():
            return {"kubeconfig": str(cluster.kubeconfig)}
        if not up:
            return None
        cluster.stop()
    if not up:
        return None
    cluster = k8s.KubeCluster(workdir).start()
    k8s.seed_lab(cluster.client())
    return {"kubeconfig": str(cluster.kubeconfig)}


def up() -> int:
    LAB.mkdir(parents=True, exist_ok=True)
    LAB.chmod(0o755)
    state = _load() or _new_state()
    STATE.write_text(json.dumps(state, indent=2))
    STATE.chmod(0o600)
    services = _services(state)
    for name, service in services.items():
        if service.process.running():
            print("lab: %s already running" % name)
            continue
        service.start()
        print("lab: started %s" % name)
    s3 = services["s3"]
    client = s3.client()
    if BUCKET not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=BUCKET)
    _seed_postgres(services["postgres"])
    _seed_redis(services["redis"])
    kube = _kubernetes(up=True)
    _write_vars(state, services, kube)
    print("lab: up — inventory vars in %s" % VARS.relative_to(REPO))
    return 0


def down() -> int:
    state = _load()
    if state:
        for name, service in _services(state).items():
            service.stop()
            print("lab: stopped %s" % name)
    if (LAB / "kubernetes" / "cluster.json").exists():
        from tests.harness import k8s
        k8s.KubeCluster.attach(LAB / "kubernetes").stop()
        print("lab: stopped kubernetes")
    return 0


def status() -> int:
    state = _load()
    if not state:
        print("lab: not created (run `make lab`)")
        return 1
    down_count = 0
    for name, service in _services(state).items():
        alive = service.process.running()
        down_count += 0 if alive else 1
        print("%-14s %s" % (name, "running" if alive else "stopped"))
    kube = _kubernetes(up=False)
    print("%-14s %s" % ("kubernetes", "running" if kube else "stopped"))
    return 0 if down_count == 0 and kube else 1


def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    ensure_collection_path()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("up", "down", "status"))
    args = parser.parse_args(argv)
    return {"up": up, "down": down, "status": status}[args.action]()


if __name__ == "__main__":
    sys.exit(main())
