#!/bin/sh
# First start: initdb with POSTGRES_USER as superuser and POSTGRES_DB created (as the official
# image does); then PostgreSQL in the foreground as the postgres user.
set -eu
: "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=${POSTGRES_USER}}"
[ -n "${POSTGRES_PASSWORD:-}" ] || { echo "POSTGRES_PASSWORD is required" >&2; exit 1; }
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
mkdir -p "${PGDATA}" /var/run/postgresql
chown postgres:postgres "${PGDATA}" /var/run/postgresql
chmod 700 "${PGDATA}"
if [ ! -s "${PGDATA}/PG_VERSION" ]; then
    pwfile="$(mktemp)"; printf '%s\n' "${POSTGRES_PASSWORD}" > "${pwfile}"; chown postgres "${pwfile}"
    as_pg initdb -D "${PGDATA}" --username="${POSTGRES_USER}" --pwfile="${pwfile}" \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "${pwfile}"
    echo "host all all all scram-sha-256" >> "${PGDATA}/pg_hba.conf"
    as_pg pg_ctl -D "${PGDATA}" -o "-c listen_addresses=''" -w start >/dev/null
    if [ "${POSTGRES_DB}" != postgres ]; then
        as_pg psql -q -v ON_ERROR_STOP=1 -U "${POSTGRES_USER}" -d postgres \
            -c "CREATE DATABASE \"${POSTGRES_DB}\""
    fi
    as_pg pg_ctl -D "${PGDATA}" -m fast -w stop >/dev/null
fi
if [ "${1}" = postgres ]; then
    shift
    exec setpriv --reuid=postgres --regid=postgres --init-groups \
        postgres -D "${PGDATA}" -c listen_addresses='*' "$@"
fi
exec "$@"
