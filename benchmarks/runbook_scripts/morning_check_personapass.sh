#!/usr/bin/env bash
# Morning check (09:00) of the personapass platform: API and web front end, PostgreSQL and Redis
# run as Deployments.
#
# A reconstruction of the commands the platform's runbook lists for its morning check, not the
# original script (which is not published): the same tools (kubectl, pg_isready, psql, redis-cli,
# openssl, aws), the same order, and output left for a person to read. It judges nothing itself.
#
# Connection settings come from the environment, as in the operator's shell once the tunnels are
# open: KUBECONFIG (and KUBECTL, the kubectl to use); PGHOST, PGPORT, PGUSER, PGPASSWORD, PGSSLMODE,
# PGSSLROOTCERT; REDIS_HOST, REDIS_PORT, REDISCLI_AUTH; BACKUP_URL (s3://bucket/prefix),
# S3_ENDPOINT_URL (empty for AWS) and the AWS_* credentials.
NS=personapass
KUBECTL=${KUBECTL:-kubectl}
S3_ENDPOINT_ARGS=()
[ -n "${S3_ENDPOINT_URL:-}" ] && S3_ENDPOINT_ARGS=(--endpoint-url "$S3_ENDPOINT_URL")

echo "===== morning check: $NS, $(date -u '+%Y-%m-%d %H:%M UTC') ====="

echo "----- pods not Running"
"$KUBECTL" get pods -n "$NS" | grep -v Running
echo "----- pods Running (count)"
"$KUBECTL" get pods -n "$NS" | grep -c Running

echo "----- services (expected: personapass-api personapass-web postgres redis)"
"$KUBECTL" get svc -n "$NS" | grep -E '^(personapass-api|personapass-web|postgres|redis) '

echo "----- deployments"
"$KUBECTL" get deploy -n "$NS"

echo "----- postgresql"
pg_isready -h "$PGHOST" -p "$PGPORT"
psql -d personapass -c "select count(*) from pg_stat_activity"

echo "----- redis"
redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping
redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" info memory

echo "----- certificate personapass-tls (enddate)"
"$KUBECTL" get secret personapass-tls -n "$NS" -o jsonpath='{.data.tls\.crt}' | base64 -d | openssl x509 -noout -enddate

echo "----- backups (newest last)"
aws "${S3_ENDPOINT_ARGS[@]}" s3 ls "$BACKUP_URL/" --recursive | grep "$NS" | tail -n 20

echo "===== end of morning check: $NS ====="
