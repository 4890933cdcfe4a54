# Source this before the tests (`. scripts/ci_postgres.sh`): it installs PostgreSQL when it is missing
# (Debian's `postgresql` package, as root), starts a throwaway cluster on 127.0.0.1 at
# ${TRANSFERKIT_PG_PORT:-54329} (the next free port up to +9) and exports TRANSFERKIT_TEST_PG_URL, which
# tests/test_search.py uses for its multi-worker search test. The cluster stops and its files go away
# when the sourcing shell exits.
#
# Sourced, so it never `exit`s and leaves the shell's options alone: on failure it says why and returns
# non-zero, and the PostgreSQL test skips.

_tk_pg_bin() {
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v pg_ctl)"
    return 0
  fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

_tk_as_pg() {  # initdb and the server refuse to run as root
  if [ "$(id -u)" -eq 0 ]; then
    su postgres -s /bin/sh -c "$1"
  else
    /bin/sh -c "$1"
  fi
}

_tk_pg_start() {
  local bin dir port base
  bin="$(_tk_pg_bin)"
  if [ -z "$bin" ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ci_postgres: installing postgresql" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bin="$(_tk_pg_bin)"
  fi
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    echo "ci_postgres: no PostgreSQL server binaries (initdb, pg_ctl); the PostgreSQL test will skip" >&2
    return 1
  fi
  dir="$(mktemp -d /tmp/tk-ci-pg.XXXXXX)" || return 1
  chmod 755 "$dir"
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres "$dir" || return 1
  fi
  if ! _tk_as_pg "'$bin/initdb' -D '$dir/data' -U postgres --auth=trust --no-sync -E UTF8" >"$dir/initdb.log" 2>&1; then
    echo "ci_postgres: initdb failed:" >&2
    tail -n 5 "$dir/initdb.log" >&2
    return 1
  fi
  base="${TRANSFERKIT_PG_PORT:-54329}"
  for port in $(seq "$base" $((base + 9))); do
    if _tk_as_pg "'$bin/pg_ctl' -D '$dir/data' -l '$dir/server.log' -w -t 30 -o \"-p $port -k '$dir' -c listen_addresses=127.0.0.1 -c fsync=off\" start" >/dev/null 2>&1; then
      export TRANSFERKIT_TEST_PG_URL="postgresql://postgres@127.0.0.1:$port/postgres"
      _TK_PG_STOP="_tk_as_pg \"'$bin/pg_ctl' -D '$dir/data' -m fast stop\" >/dev/null 2>&1; rm -rf '$dir'"
      trap 'eval "$_TK_PG_STOP"' EXIT
      echo "ci_postgres: PostgreSQL running at $TRANSFERKIT_TEST_PG_URL" >&2
      if [ -x .venv/bin/python ] && ! .venv/bin/python -c "import psycopg2" 2>/dev/null; then
        echo "ci_postgres: .venv has no psycopg2 (psycopg2-binary): the PostgreSQL test will skip" >&2
      fi
      return 0
    fi
  done
  echo "ci_postgres: PostgreSQL did not start on ports $base-$((base + 9)):" >&2
  tail -n 5 "$dir/server.log" >&2 2>/dev/null
  rm -rf "$dir"
  return 1
}

_tk_pg_start
