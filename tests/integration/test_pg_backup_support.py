"""Helpers for the pg_backup integration tests (no tests here): a source database, and what "equal" means."""

from __future__ import annotations

import subprocess
import typing as t

SOURCE_SQL = """
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE SCHEMA audit;
CREATE TABLE accounts (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email text NOT NULL UNIQUE,
    profile jsonb NOT NULL,
    note text,
    created timestamptz NOT NULL
);
CREATE TABLE sessions (
    id bigserial PRIMARY KEY,
    account uuid NOT NULL REFERENCES accounts(id),
    token text NOT NULL,
    started timestamptz NOT NULL
);
CREATE INDEX sessions_account ON sessions(account);
CREATE TABLE audit.events (id bigserial PRIMARY KEY, kind text NOT NULL, payload jsonb);
CREATE TABLE audit."Mixed Case" (n int);
CREATE VIEW active_accounts AS SELECT id, email FROM accounts WHERE note IS NOT NULL;
INSERT INTO accounts (email, profile, note, created)
SELECT 'user' || g || '@example.com',
       jsonb_build_object('plan', (ARRAY['free','pro','team'])[1 + g % 3], 'logins', g % 97, 'score', random()),
       repeat(md5(g::text), 1 + g % 3),
       now() - (g || ' s')::interval
  FROM generate_series(1, ROWS) g;
INSERT INTO sessions (account, token, started)
SELECT id, md5(email), created FROM accounts;
INSERT INTO audit.events (kind, payload) SELECT 'login', jsonb_build_object('n', g) FROM generate_series(1, 500) g;
INSERT INTO audit."Mixed Case" SELECT g FROM generate_series(1, 7) g;
"""


def create_source(pg: t.Any, name: str, rows: int = 5000) -> None:
    pg.psql('CREATE DATABASE "%s"' % name)
    pg.psql(SOURCE_SQL.replace("ROWS", str(rows)), db=name)


def schema_dump(pg: t.Any, db: str) -> str:
    proc = subprocess.run([str(pg.bin_dir / "pg_dump"), "--schema-only", "--no-owner", "-d", db],
                          env=pg.env, capture_output=True, text=True, check=True)
    return "\n".join(line for line in proc.stdout.splitlines() if not line.startswith(("--", "\\restrict", "\\unrestrict")))


def table_checksums(pg: t.Any, db: str) -> dict:
    tables = pg.psql("SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                     "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1", db=db).splitlines()
    sums = {}
    for table in tables:
        sums[table] = pg.psql("SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') "
                              "FROM %s t" % table, db=db)
    return sums


def fingerprint(pg: t.Any, db: str) -> t.Tuple[str, dict]:
    return schema_dump(pg, db), table_checksums(pg, db)


def databases(pg: t.Any) -> t.List[str]:
    return pg.psql("SELECT datname FROM pg_database ORDER BY 1").splitlines()
