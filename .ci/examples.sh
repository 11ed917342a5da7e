#!/usr/bin/env bash
# Runs every example twice: with DATABASE_URL unset (the harness starts a throwaway cluster), and with
# DATABASE_URL pointing at a freshly created, empty database of a server started here; then checks that the
# examples left that database as they found it (nothing in schema public). Runs as root (the server as the
# `postgres` user) or as an ordinary user. Stops its server however it exits.
set -euo pipefail
cd "$(dirname "$0")/.."

examples=(
  "-p sqlx-advisory --example sqlx_quickstart"
  "-p sqlx-advisory --example sqlx_insert_update_race"
  "-p diesel-advisory --features r2d2 --example diesel_quickstart"
  "-p diesel-advisory --features r2d2 --example diesel_insert_update_race"
  "-p diesel-advisory --no-default-features --features bb8 --example diesel_async_quickstart"
)

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$bin" ] || bin=$(dirname "$(command -v initdb)")
as_pg=()
[ "$(id -u)" = 0 ] && as_pg=(runuser -u postgres --)
dir=$(mktemp -d /tmp/ci-examples-pg.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres: "$dir"
port=$((40000 + RANDOM % 20000))
stop() {
  "${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap stop EXIT
"${as_pg[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
"${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
psql=("$bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres)
"${psql[@]}" -d postgres -c "CREATE DATABASE examples_empty"
url="postgres://postgres@127.0.0.1:$port/examples_empty"
objects() {
  "${psql[@]}" -d examples_empty -tA -c "SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace)
    + (SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace)"
}
[ "$(objects)" = 0 ] || { echo "examples: the new database is not empty" >&2; exit 1; }

for e in "${examples[@]}"; do
  echo "examples: cargo run $e   (DATABASE_URL unset: throwaway cluster)"
  # shellcheck disable=SC2086
  env -u DATABASE_URL cargo run -q $e
  echo "examples: cargo run $e   (DATABASE_URL = an empty database)"
  # shellcheck disable=SC2086
  DATABASE_URL="$url" cargo run -q $e
  left=$(objects)
  [ "$left" = 0 ] || { echo "examples: FAIL: $e left $left objects in the database" >&2; exit 1; }
done
echo "examples: all ran both ways; the database was left empty"
