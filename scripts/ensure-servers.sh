#!/usr/bin/env bash
# Make sure PostgreSQL, Redis and RabbitMQ answer on loopback (idempotent).
#
# For each server: if it answers, leave it alone; otherwise start it; if its binaries are
# missing, apt-get install them first. Then wait (bounded) until it answers. A server that is
# already running is never stopped or reconfigured.
#
#   scripts/ensure-servers.sh            # all three
#   scripts/ensure-servers.sh redis      # only some: postgres, redis, rabbitmq
#
# Environment: STRATUS_POSTGRES__PORT (5432), STRATUS_RABBIT__PORT (5672), REDIS_PORT (6379),
# ENSURE_WAIT_S (60 s per server).
set -euo pipefail

PG_PORT="${STRATUS_POSTGRES__PORT:-5432}"
REDIS_PORT="${REDIS_PORT:-6379}"
RABBIT_PORT="${STRATUS_RABBIT__PORT:-5672}"
WAIT_S="${ENSURE_WAIT_S:-60}"
APT_UPDATED=0

log() { printf '%-9s %s\n' "$1:" "$2"; }
die() { printf 'ensure-servers: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [[ ${EUID} -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* by hand"
    if [[ ${APT_UPDATED} -eq 0 ]]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null \
            || die "apt-get update failed"
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null \
        || die "apt-get install $* failed"
}

# wait_for NAME CHECK_FUNCTION: poll once a second for at most WAIT_S seconds.
wait_for() {
    local name=$1 check=$2 deadline=$((SECONDS + WAIT_S))
    until "${check}"; do
        if ((SECONDS >= deadline)); then
            die "${name} did not answer within ${WAIT_S}s"
        fi
        sleep 1
    done
}

tcp_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# --- PostgreSQL -------------------------------------------------------------------------------
pg_up() { pg_isready -q -h 127.0.0.1 -p "${PG_PORT}" -t 2 >/dev/null 2>&1; }

pg_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1; }

pg_trust_loopback() {
    # Only for a cluster this script has just installed: services connect as postgres over
    # TCP without a password, as on the development machines.
    local hba="/etc/postgresql/$1/main/pg_hba.conf"
    [[ -f ${hba} ]] || return 0
    grep -q '^# stratus: trust loopback' "${hba}" && return 0
    as_root sed -i '1i # stratus: trust loopback\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "${hba}"
}

ensure_postgres() {
    if command -v pg_isready >/dev/null 2>&1 && pg_up; then
        log postgres "already answering on 127.0.0.1:${PG_PORT}"
        return
    fi
    local installed=0
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || [[ -z $(pg_version) ]]; then
        log postgres "not installed; apt-get install postgresql"
        apt_install postgresql
        installed=1
    fi
    local version
    version=$(pg_version)
    [[ -n ${version} ]] || die "postgres: no cluster version under /etc/postgresql"
    if [[ ! -d /etc/postgresql/${version}/main ]]; then
        as_root pg_createcluster "${version}" main >/dev/null
        installed=1
    fi
    if [[ ${installed} -eq 1 ]]; then
        pg_trust_loopback "${version}"
    fi
    log postgres "starting cluster ${version}/main"
    as_root pg_ctlcluster --skip-systemctl-redirect "${version}" main start \
        || pg_up || die "postgres: pg_ctlcluster ${version} main start failed"
    wait_for postgres pg_up
    log postgres "up on 127.0.0.1:${PG_PORT}"
}

# --- Redis ------------------------------------------------------------------------------------
redis_up() {
    [[ $(timeout 3 redis-cli -h 127.0.0.1 -p "${REDIS_PORT}" ping 2>/dev/null) == "PONG" ]]
}

ensure_redis() {
    if command -v redis-cli >/dev/null 2>&1 && redis_up; then
        log redis "already answering on 127.0.0.1:${REDIS_PORT}"
        return
    fi
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        log redis "not installed; apt-get install redis-server"
        apt_install redis-server
        # The package may have started its own server meanwhile.
        if redis_up; then
            log redis "up on 127.0.0.1:${REDIS_PORT}"
            return
        fi
    fi
    log redis "starting redis-server"
    redis-server --daemonize yes --bind 127.0.0.1 --port "${REDIS_PORT}" \
        --save "" --appendonly no >/dev/null || die "redis: redis-server failed to start"
    wait_for redis redis_up
    log redis "up on 127.0.0.1:${REDIS_PORT}"
}

# --- RabbitMQ ---------------------------------------------------------------------------------
# The broker answers when it greets an AMQP client (Connection.Start, a method frame: type 1),
# not only when its port is open: a node out of file descriptors, or hung, keeps the port open.
amqp_greets() {
    local first
    first=$(timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1; printf 'AMQP\x00\x00\x09\x01' >&3;
        head -c 1 <&3 | od -An -tu1" 2>/dev/null | tr -d ' ')
    [[ ${first} == 1 ]]
}

rabbit_up() {
    amqp_greets "${RABBIT_PORT}" && timeout 15 rabbitmq-diagnostics -q ping >/dev/null 2>&1
}

# The running node's Erlang VM (not a CLI tool's: the node boots the rabbit application).
rabbit_node_pid() { pgrep -u rabbitmq -f 'beam.* -s rabbit boot' | head -n 1; }

# A node that runs but has not answered for WAIT_S seconds is hung: its state is on disk
# (durable queues and messages survive), so it is killed and started again.
restart_hung_rabbit() {
    local pid
    pid=$(rabbit_node_pid) || true
    [[ -n ${pid} ]] || return 0
    log rabbitmq "node ${pid} runs but does not answer; waiting up to ${WAIT_S}s"
    local deadline=$((SECONDS + WAIT_S))
    while ((SECONDS < deadline)); do
        rabbit_up && return 0
        sleep 2
    done
    log rabbitmq "node ${pid} still not answering: killing it to start it again"
    if [[ -f /var/log/rabbitmq/rabbit@$(hostname -s).log ]]; then
        tail -n 20 "/var/log/rabbitmq/rabbit@$(hostname -s).log" | sed 's/^/  rabbitmq log: /' >&2
    fi
    as_root kill -9 "${pid}" || true
    for _ in $(seq 1 20); do
        [[ -z $(rabbit_node_pid) ]] && break
        sleep 0.5
    done
}

ensure_rabbitmq() {
    if command -v rabbitmq-diagnostics >/dev/null 2>&1 && rabbit_up; then
        log rabbitmq "already answering on 127.0.0.1:${RABBIT_PORT}"
        return
    fi
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        log rabbitmq "not installed; apt-get install rabbitmq-server"
        apt_install rabbitmq-server
        if rabbit_up; then
            log rabbitmq "up on 127.0.0.1:${RABBIT_PORT}"
            return
        fi
    fi
    restart_hung_rabbit
    if rabbit_up; then
        log rabbitmq "answering on 127.0.0.1:${RABBIT_PORT}"
        return
    fi
    log rabbitmq "starting rabbitmq-server"
    # a connection is a file descriptor: the default limit of 1024 caps the broker at ~830
    as_root bash -c 'ulimit -n 65536 2>/dev/null || true; exec rabbitmq-server -detached' \
        || die "rabbitmq: rabbitmq-server -detached failed"
    timeout "${WAIT_S}" rabbitmqctl await_startup >/dev/null 2>&1 || true
    wait_for rabbitmq rabbit_up
    log rabbitmq "up on 127.0.0.1:${RABBIT_PORT}"
}

main() {
    local wanted=("$@")
    ((${#wanted[@]})) || wanted=(postgres redis rabbitmq)
    for server in "${wanted[@]}"; do
        case ${server} in
            postgres | postgresql) ensure_postgres ;;
            redis) ensure_redis ;;
            rabbitmq | rabbit) ensure_rabbitmq ;;
            *) die "unknown server '${server}' (postgres, redis, rabbitmq)" ;;
        esac
    done
}

main "$@"
