#!/usr/bin/env bash
# Morning check (09:00) of the hungryhippaahneties (HIPAA) platform: web tier behind the WAF,
# PostgreSQL, and Redis with TLS and a password.
#
# A reconstruction of the commands the platform's runbook lists for its morning check, not the
# original script (which is not published): the same tools (kubectl, pg_isready, psql, redis-cli,
# openssl, aws), the same order, and output left for a person to read. It judges nothing itself.
# The runbook's Redis commands pass the password with -a (redis-cli warns about it on stderr).
#
# Connection settings come from the environment, as in the operator's shell once the tunnels are
# open: KUBECONFIG (and KUBECTL, the kubectl to use); PGHOST, PGPORT, PGUSER, PGPASSWORD, PGSSLMODE,
# PGSSLROOTCERT; REDIS_HOST, REDIS_PORT, REDIS_PASSWORD, REDIS_CACERT; BACKUP_URL (s3://bucket/prefix),
# S3_ENDPOINT_URL (empty for AWS) and the AWS_* credentials.
NS=hungryhippaahneties
KUBECTL=${KUBECTL:-kubectl}
S3_ENDPOINT_ARGS=()
[ -n "${S3_ENDPOINT_URL:-}" ] && S3_ENDPOINT_ARGS=(--endpoint-url "$S3_ENDPOINT_URL")

echo "===== morning check: $NS, $(date -u '+%Y-%m-%d %H:%M UTC') ====="

echo "----- pods not Running"
"$KUBECTL" get pods -n "$NS" | grep -v Running
echo "----- pods Running (count)"
"$KUBECTL" get pods -n "$NS" | grep -c Running

echo "----- services (expected: postgresql redis backend api frontend modsecurity-waf nginx-proxy)"
"$KUBECTL" get svc -n "$NS" | grep -E '^(postgresql|redis|backend|api|frontend|modsecurity-waf|nginx-proxy) '

echo "----- deployments"
"$KUBECTL" get deploy -n "$NS"

echo "----- postgresql"
pg_isready -h "$PGHOST" -p "$PGPORT"
psql -d hungryhippaahneties_db -c "select count(*) from pg_stat_activity"

echo "----- redis (TLS)"
redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" --tls --cacert "$REDIS_CACERT" -a "$REDIS_PASSWORD" ping
redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" --tls --cacert "$REDIS_CACERT" -a "$REDIS_PASSWORD" info memory

echo "----- certificate hungryhippaahneties-tls (enddate)"
"$KUBECTL" get secret hungryhippaahneties-tls -n "$NS" -o jsonpath='{.data.tls\.crt}' | base64 -d | openssl x509 -noout -enddate

echo "----- backups (newest last)"
aws "${S3_ENDPOINT_ARGS[@]}" s3 ls "$BACKUP_URL/" --recursive | grep "$NS" | tail -n 20

echo "===== end of morning check: $NS ====="
