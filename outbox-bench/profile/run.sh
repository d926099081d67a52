#!/usr/bin/env bash
# Statement-level profile of the drain designs, without Rust in the way:
# pgbench runs each script (one batch of 100 per transaction) on a fresh
# table of 60,000 pending entries made by the library's PostgreSQL
# migrations, and prints batches/s. The scripts are snapshots of the
# statements (the library's live SQL is in outbox/src/store/postgres.rs).
#
#   bash outbox-bench/profile/run.sh [postgres://root@127.0.0.1:5432/test]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
url=${1:-postgres://root@127.0.0.1:5432/test}
migrations="$here/../../outbox/migrations/postgres"
fill() { # fillfactor
    {
        echo "DROP TABLE IF EXISTS ob, ob_blocked, ob_claims;"
        sed 's/__TABLE__/ob/g; s/__NAME__/ob/g; s/__BLOCKED_TABLE__/ob_blocked/g' \
            "$migrations/0001_create_outbox.up.sql" "$migrations/0002_commit_order_and_blocked.up.sql"
        echo "ALTER TABLE ob SET (fillfactor = $1);"
        echo "CREATE TABLE ob_claims (token bigint PRIMARY KEY, lo bigint, hi bigint, ids bigint[], expires_at timestamptz);"
        echo "INSERT INTO ob (event_id, name, payload) SELECT gen_random_uuid(), 'order.placed',
              '{\"order_id\": 12345, \"customer\": \"c-000123\", \"total_cents\": 4999}' FROM generate_series(1, 60000);"
        echo "VACUUM ANALYZE ob; CHECKPOINT;"
    } | psql -q "$url" >/dev/null 2>&1
}
for design in one_transaction:100 claim_then_delete:100 claim_then_delete:50 settle_and_claim:50 claims_table:100; do
    script=${design%%:*} ff=${design##*:}
    fill "$ff"
    tps=$(pgbench -n -M prepared -D after=0 -D ids='{}' -D tok=0 -f "$here/$script.sql" -t 550 "$url" 2>&1 |
        sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    printf '%-20s fillfactor %3s  %8.0f batches/s\n' "$script" "$ff" "$tps"
done
psql -q "$url" -c "DROP TABLE IF EXISTS ob, ob_blocked, ob_claims" >/dev/null
