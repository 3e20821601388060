"""Benchmark pg_backup against the ways runbooks back up PostgreSQL today, in one run.

Starts its own PostgreSQL (tests/harness/services.py) and S3 (moto), generates two databases:

* ``realistic``: 3 million rows of uuids, e-mail addresses, jsonb payloads, short text and
  timestamps (about 850 MB, compresses about 4x);
* ``pgbench``: ``pgbench -i -s 50`` (mostly blank padding, compresses about 50x);

and for each measures wall time, peak memory (largest RSS of the process tree, from wait4) and
stored bytes of:

* ``seed``: ``pg_dump -Fc | gpg --symmetric`` to a file (the runbooks' way, before the upload);
* ``pg_dump -Fc``: plain custom-format dump to a local file;
* ``floor``: ``pg_dump -Fc -Z0 > /dev/null`` (what the server and pg_dump cost alone);
* ``postgresql_db``: community.postgresql's module state=dump (``.pgc``) plus an S3 upload of the
  file (when the collection is found in ``--community-collections`` or $ANSIBLE_COLLECTIONS_PATH);
* ``pg_backup``: this module to S3 with zstd and age encryption (default level, and level 1);

then restore time of ``pg_restore`` from the local ``pg_dump -Fc`` file against ``pg_backup``
restore (mode new from S3 and from a file repository, mode clean from a file repository).

Figures are printed beside their baselines with the ratios the targets are stated in.
Usage: .venv/bin/python benchmarks/bench_pg_backup.py [--rows 3000000] [--pgbench-scale 50]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness.collection import ansible_env, ensure_collection_path  # noqa: E402
from tests.harness.services import MotoS3Server, PostgresServer  # noqa: E402

REALISTIC_SQL = """
CREATE TABLE users (
    id uuid PRIMARY KEY,
    email text NOT NULL,
    profile jsonb NOT NULL,
    note text,
    created timestamptz NOT NULL
);
INSERT INTO users
SELECT gen_random_uuid(),
       'user' || (random() * 1e6)::int || '@example.com',
       jsonb_build_object('plan', (ARRAY['free', 'pro', 'team', 'enterprise'])[1 + g % 4],
                          'logins', (random() * 10000)::int, 'score', (random() * 1e6)::int,
                          'region', (ARRAY['eu-west-1', 'us-east-1', 'ap-south-1'])[1 + g % 3]),
       repeat(md5(g::text), 1 + g % 3),
       now() - (g || ' s')::interval
  FROM generate_series(1, ROWS) g;
ANALYZE users;
"""


TIME = shutil.which("time", path="/usr/bin:/bin")


class Measure(t.NamedTuple):
    wall_s: float
    peak_mib: float
    stored_bytes: int
    note: str = ""


def run_measured(argv: t.Sequence[str], env: t.Optional[dict] = None, stdout: t.Any = subprocess.DEVNULL,
                 shell: bool = False) -> t.Tuple[float, float, int, str]:
    """Wall time, peak RSS (MiB, the largest process of the tree), exit status, stderr tail."""
    err = tempfile.TemporaryFile()
    command = list(argv) if not shell else ["bash", "-o", "pipefail", "-c", argv[0]]
    # A child forked from this (large) Python process keeps its pre-exec RSS as its maximum:
    # GNU time forks from a small process, so its figure is the measured tree's own.
    with tempfile.NamedTemporaryFile("r") as rss:
        if TIME:
            command = [TIME, "-q", "-f", "%M", "-o", rss.name] + command
        start = time.monotonic()
        proc = subprocess.Popen(command, env=env, stdout=stdout, stderr=err, stdin=subprocess.DEVNULL)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
        peak_kib = usage.ru_maxrss
        if TIME:
            lines = [line for line in rss.read().splitlines() if line.strip().isdigit()]
            peak_kib = int(lines[-1]) if lines else peak_kib
    proc.returncode = os.waitstatus_to_exitcode(status)
    err.seek(0)
    tail = err.read().decode("utf-8", "replace")[-1500:]
    return wall, peak_kib / 1024.0, proc.returncode, tail


def module_cmd(module: str, args: dict, workdir: Path) -> t.List[str]:
    path = workdir / ("%s-args.json" % module.rsplit(".", 1)[-1])
    payload = dict(args, _ansible_check_mode=False, _ansible_diff=False, _ansible_tmpdir=str(workdir))
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": payload}))
    os.chmod(path, 0o600)
    return [sys.executable, "-m", module, str(path)]


def run_module_measured(module: str, args: dict, workdir: Path, env: dict) -> t.Tuple[float, float, dict]:
    out = tempfile.TemporaryFile()
    wall, peak, rc, err = run_measured(module_cmd(module, args, workdir), env=env, stdout=out)
    out.seek(0)
    text = out.read().decode("utf-8", "replace")
    try:
        result = json.loads(text)
    except ValueError:
        result = {"failed": True, "msg": "no JSON: %s %s" % (text[-500:], err)}
    if rc != 0 or result.get("failed"):
        raise SystemExit("%s failed: %s" % (module, result.get("msg")))
    return wall, peak, result


def s3_prefix_bytes(s3: MotoS3Server, bucket: str, prefix: str) -> int:
    total = 0
    for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        total += sum(o["Size"] for o in page.get("Contents", []) if not o["Key"].endswith("manifest.json"))
    return total


def find_community(explicit: t.Optional[str]) -> t.Optional[Path]:
    roots = [explicit] if explicit else []
    roots += (os.environ.get("ANSIBLE_COLLECTIONS_PATH") or "").split(os.pathsep)
    roots += [str(Path.home() / ".ansible" / "collections"), "/usr/share/ansible/collections", str(COMMUNITY_CACHE)]
    for root in filter(None, roots):
        if (Path(root) / "ansible_collections" / "community" / "postgresql" / "plugins" / "modules" / "postgresql_db.py").exists():
            return Path(root)
    return None


COMMUNITY_CACHE = Path(os.environ.get("RUNBOOK_CACHE") or Path.home() / ".cache" / "runbook-ops") / "community-collections"


def install_community() -> t.Optional[Path]:
    """community.postgresql into a cache outside the repository: from Galaxy, or else from the
    ``ansible`` package on PyPI (which bundles it). None when neither is reachable."""
    COMMUNITY_CACHE.mkdir(parents=True, exist_ok=True)
    galaxy = Path(sys.executable).parent / "ansible-galaxy"
    proc = subprocess.run([str(galaxy), "collection", "install", "community.postgresql", "-p", str(COMMUNITY_CACHE)],
                          capture_output=True, text=True, check=False, timeout=300)
    if proc.returncode == 0 and find_community(str(COMMUNITY_CACHE)):
        return COMMUNITY_CACHE
    print("ansible-galaxy could not install community.postgresql (%s); trying the ansible package from PyPI"
          % (proc.stderr.strip().splitlines() or ["no output"])[-1], flush=True)
    with tempfile.TemporaryDirectory() as download:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", download, "ansible"],
                              capture_output=True, text=True, check=False, timeout=600)
        wheels = list(Path(download).glob("ansible-*.whl"))
        if proc.returncode != 0 or not wheels:
            print("pip download ansible failed: %s" % proc.stderr.strip()[-300:], flush=True)
            return None
        import zipfile
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in wheel.namelist():
                if name.startswith("ansible_collections/community/postgresql/"):
                    wheel.extract(name, str(COMMUNITY_CACHE))
    return find_community(str(COMMUNITY_CACHE))


def bench_database(name: str, pg: PostgresServer, s3: MotoS3Server, bucket: str, work: Path,
                   community: t.Optional[Path], keys: dict) -> dict:
    env = pg.env
    bin_dir = pg.bin_dir
    results: t.Dict[str, Measure] = {}
    size = int(pg.psql("SELECT pg_database_size('%s')" % name))
    print("\n== %s: %.0f MB" % (name, size / 1e6), flush=True)

    passfile = work / "gpg.pass"
    passfile.write_text("bench-passphrase\n")
    os.chmod(passfile, 0o600)
    seed_file = work / ("%s.dump.gpg" % name)
    wall, peak, rc, err = run_measured([
        "%s/pg_dump -Fc -d %s | gpg --batch --yes --symmetric --pinentry-mode loopback --passphrase-file %s -o %s"
        % (bin_dir, name, passfile, seed_file)], env=env, shell=True)
    assert rc == 0, err
    results["seed: pg_dump -Fc, piped to gpg --symmetric"] = Measure(wall, peak, seed_file.stat().st_size)
    seed_file.unlink()

    plain_file = work / ("%s.dump" % name)
    wall, peak, rc, err = run_measured([str(bin_dir / "pg_dump"), "-Fc", "-d", name, "-f", str(plain_file)], env=env)
    assert rc == 0, err
    results["pg_dump -Fc (local file)"] = Measure(wall, peak, plain_file.stat().st_size)

    wall, peak, rc, err = run_measured([str(bin_dir / "pg_dump"), "-Fc", "-Z0", "-d", name], env=env)
    assert rc == 0, err
    results["floor: pg_dump -Fc -Z0 > /dev/null"] = Measure(wall, peak, 0)

    if community is not None:
        target = work / ("%s.pgc" % name)
        cenv = ansible_env({"PYTHONPATH": os.pathsep.join([str(community), str(ensure_collection_path())]),
                            "PATH": "%s:%s" % (bin_dir, os.environ.get("PATH", ""))})
        wall, peak, _result = run_module_measured(
            "ansible_collections.community.postgresql.plugins.modules.postgresql_db",
            {"name": name, "state": "dump", "target": str(target), "login_host": pg.host, "login_port": pg.port,
             "login_user": pg.user, "login_password": pg.password}, work, cenv)
        upload_start = time.monotonic()
        s3.client().upload_file(str(target), bucket, "community/%s.pgc" % name)
        upload = time.monotonic() - upload_start
        results["postgresql_db dump + S3 upload"] = Measure(wall + upload, peak, target.stat().st_size,
                                                            "dump %.1f s + upload %.1f s" % (wall, upload))
        target.unlink()
    else:
        print("community.postgresql not found: postgresql_db variant not measured", flush=True)

    repo = s3.repository_options(bucket, prefix="bench-%s" % name)
    menv = ansible_env()
    ids = {}
    file_repo = {"repository": "file://%s" % (work / "repository")}
    for label, level, where in (("pg_backup -> S3, zstd (default level) + age", None, repo),
                                ("pg_backup -> S3, zstd -1 + age", 1, repo),
                                ("pg_backup -> local file repository, zstd (default level) + age", None, file_repo)):
        args = dict(pg.login, db=name, encryption_recipients=[keys["recipient"]], **where)
        args["set"] = "%s-l%s-%s" % (name, level or "d", "s3" if where is repo else "file")
        if level is not None:
            args["compression_level"] = level
        wall, peak, result = run_module_measured("ansible_collections.runbook.ops.plugins.modules.pg_backup",
                                                 args, work, menv)
        counted = result["manifest"]["postgresql"]["row_counts"]
        results[label] = Measure(wall, peak, result["manifest"]["size"],
                                 "%d tables, %d rows counted" % (len(counted), sum(counted.values())))
        ids[label] = (args["set"], result["backup_id"])

    # Restores: pg_restore from the local file vs pg_backup from S3.
    restores: t.Dict[str, Measure] = {}
    pg.psql("DROP DATABASE IF EXISTS r_local")
    pg.psql("CREATE DATABASE r_local")
    wall, peak, rc, err = run_measured([str(bin_dir / "pg_restore"), "-d", "r_local", "--exit-on-error",
                                        str(plain_file)], env=env)
    assert rc == 0, err
    restores["pg_restore from local file"] = Measure(wall, peak, 0)
    pg.psql("DROP DATABASE r_local")
    pg.psql("DROP DATABASE IF EXISTS r_module")
    variants = (
        ("pg_backup restore mode=new from S3 (zstd -1)", "pg_backup -> S3, zstd -1 + age", repo, "new",
         "one streamed pass, row counts checked"),
        ("pg_backup restore mode=new from file repository", "pg_backup -> local file repository, zstd (default level) + age",
         file_repo, "new", "one streamed pass, row counts checked"),
        ("pg_backup restore mode=clean from file repository", "pg_backup -> local file repository, zstd (default level) + age",
         file_repo, "clean", "separate verify_first pass + --single-transaction"),
    )
    for label, source, where, mode, note in variants:
        set_name, backup_id = ids[source]
        args = dict(pg.login, db=name, state="restore", mode=mode, target_db="r_module", backup_id=backup_id,
                    encryption_identity=keys["identity"], **where)
        args["set"] = set_name
        wall, peak, _result = run_module_measured("ansible_collections.runbook.ops.plugins.modules.pg_backup",
                                                  args, work, menv)
        restores[label] = Measure(wall, peak, 0, note)
        if mode == "new" and where is repo:
            pg.psql("DROP DATABASE r_module")
    pg.psql("DROP DATABASE r_module")
    plain_file.unlink()
    return {"size": size, "backups": results, "restores": restores}


def print_table(name: str, data: dict) -> None:
    backups = data["backups"]
    plain = backups["pg_dump -Fc (local file)"]
    floor = backups["floor: pg_dump -Fc -Z0 > /dev/null"]
    print("\n### %s (%.0f MB database)" % (name, data["size"] / 1e6))
    print("| variant | wall s | x pg_dump -Fc | x floor | peak MiB | stored MB | note |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for label, m in backups.items():
        print("| %s | %.1f | %.2f | %.2f | %.0f | %s | %s |" % (
            label, m.wall_s, m.wall_s / plain.wall_s, m.wall_s / floor.wall_s, m.peak_mib,
            "%.1f" % (m.stored_bytes / 1e6) if m.stored_bytes else "-", m.note))
    base = data["restores"]["pg_restore from local file"]
    print("\n| restore | wall s | x pg_restore (local file) | peak MiB | note |")
    print("|---|---:|---:|---:|---|")
    for label, m in data["restores"].items():
        print("| %s | %.1f | %.2f | %.0f | %s |" % (label, m.wall_s, m.wall_s / base.wall_s, m.peak_mib, m.note))


def _stop(signum: int, _frame: t.Any) -> None:
    raise SystemExit("stopped by signal %d" % signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--rows", type=int, default=3000000)
    parser.add_argument("--pgbench-scale", type=int, default=50)
    parser.add_argument("--community-collections", help="a collections path holding community.postgresql")
    parser.add_argument("--workdir", help="keep the server and data here (default: a temporary directory)")
    parser.add_argument("--json", help="also write the figures here")
    opts = parser.parse_args()

    # Stop our servers on SIGTERM/SIGINT too (background jobs ignore SIGINT by default).
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop)
    import pyrage
    identity = pyrage.x25519.Identity.generate()
    keys = {"identity": str(identity), "recipient": str(identity.to_public())}
    community = find_community(opts.community_collections) or install_community()

    root = Path(opts.workdir or tempfile.mkdtemp(prefix="bench-pg-"))
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    work = root / "files"
    work.mkdir(exist_ok=True)
    pg = PostgresServer(root / "pg")
    s3 = MotoS3Server(root / "s3")
    try:
        pg.start()
        s3.start()
        bucket = s3.create_bucket("bench")
        print("PostgreSQL %s on %s:%d, S3 at %s" % (pg.psql("SHOW server_version"), pg.host, pg.port, s3.endpoint_url))
        started = time.monotonic()
        pg.psql("CREATE DATABASE realistic")
        pg.psql(REALISTIC_SQL.replace("ROWS", str(opts.rows)), db="realistic")
        print("generated realistic (%d rows) in %.0f s" % (opts.rows, time.monotonic() - started), flush=True)
        started = time.monotonic()
        pg.psql("CREATE DATABASE pgbench")
        subprocess.run([str(pg.bin_dir / "pgbench"), "-i", "-q", "-s", str(opts.pgbench_scale), "pgbench"],
                       env=pg.env, check=True, capture_output=True)
        print("generated pgbench scale %d in %.0f s" % (opts.pgbench_scale, time.monotonic() - started), flush=True)
        pg.psql("CHECKPOINT")
        figures = {}
        for name in ("realistic", "pgbench"):
            figures[name] = bench_database(name, pg, s3, bucket, work, community, keys)
        print("\nmachine: %d cores; peak MiB = largest RSS of one process in the measured tree (%s)"
              % (os.cpu_count() or 0, "GNU time" if TIME else "wait4, includes the benchmark's own RSS at fork"))
        for name, data in figures.items():
            print_table(name, data)
        real = figures["realistic"]["backups"]
        module = real["pg_backup -> S3, zstd (default level) + age"]
        print("\ntargets on realistic: backup <= 0.35 x pg_dump -Fc: %.2f; <= 1.15 x floor: %.2f; stored <= pg_dump -Fc: "
              "%.1f vs %.1f MB; module peak < 150 MiB: %.0f; restore <= 1.1 x pg_restore: %.2f" % (
                  module.wall_s / real["pg_dump -Fc (local file)"].wall_s,
                  module.wall_s / real["floor: pg_dump -Fc -Z0 > /dev/null"].wall_s,
                  module.stored_bytes / 1e6, real["pg_dump -Fc (local file)"].stored_bytes / 1e6, module.peak_mib,
                  figures["realistic"]["restores"]["pg_backup restore mode=new from S3 (zstd -1)"].wall_s
                  / figures["realistic"]["restores"]["pg_restore from local file"].wall_s))
        if opts.json:
            Path(opts.json).write_text(json.dumps(
                {n: {"size": d["size"], "backups": {k: v._asdict() for k, v in d["backups"].items()},
                     "restores": {k: v._asdict() for k, v in d["restores"].items()}} for n, d in figures.items()},
                indent=2))
    finally:
        s3.stop()
        pg.stop()
        if not opts.workdir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
