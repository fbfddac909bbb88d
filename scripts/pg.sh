#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests: Debian's postgresql package, a private cluster in
# $VCL_PG_DIR (default /tmp/vcl-test-pg), listening on a Unix socket only (no TCP port at all).
#   scripts/pg.sh start   -> prints the SQLAlchemy URL of an empty database `vcl_test`
#   scripts/pg.sh stop
set -euo pipefail
dir=${VCL_PG_DIR:-/tmp/vcl-test-pg}
port=${VCL_PG_PORT:-54329}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$bin" ] || { echo "PostgreSQL is not installed: run scripts/setup.sh (apt package postgresql)" >&2; exit 1; }
as_pg() { PGOPTIONS="-c client_min_messages=warning" runuser -u postgres -- "$@"; }

case "${1:-}" in
start)
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        mkdir -p "$dir/data" "$dir/sock"
        chown -R postgres:postgres "$dir"
        as_pg "$bin/initdb" -D "$dir/data" --auth=trust -U postgres >"$dir/initdb.log" 2>&1
    fi
    if ! as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
            -o "-c listen_addresses='' -k $dir/sock -p $port -c fsync=off -c max_connections=100" start >/dev/null
    fi
    as_pg "$bin/psql" -h "$dir/sock" -p "$port" -U postgres -qAt -c "DROP DATABASE IF EXISTS vcl_test WITH (FORCE)" >/dev/null
    as_pg "$bin/psql" -h "$dir/sock" -p "$port" -U postgres -qAt -c "CREATE DATABASE vcl_test" >/dev/null
    echo "postgresql+psycopg://postgres@/vcl_test?host=$dir/sock&port=$port"
    ;;
stop)
    as_pg "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
    ;;
*)
    echo "usage: scripts/pg.sh start|stop" >&2; exit 2 ;;
esac
