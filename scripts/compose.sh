#!/usr/bin/env bash
# `docker compose` with this project's files and secrets (what `make up` / `make down` run):
#
#   scripts/compose.sh up -d --wait          # any docker compose arguments
#   scripts/compose.sh down [-v]
#
# It passes --env-file run/stratus.env (created once by `python -m tools.cluster env`) and
# docker-compose.yml, plus deploy/docker/compose.offline.yml where no image registry answers
# (then `make images` builds the images from Debian's packages first, reusing cached ones).
# The choice is remembered in run/compose.mode until `down`, so `down` uses the same files.
#
# Environment: STRATUS_COMPOSE_OFFLINE=1|0 (skip the registry probe), COMPOSE_EXTRA (more
# files, space-separated, e.g. deploy/docker/compose.autoscale.yml), COMPOSE_PROJECT_NAME.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "${REPO}"
PY="${PY:-${REPO}/.venv/bin/python}"
ENV_FILE="${ENV_FILE:-run/stratus.env}"
MODE_FILE="run/compose.mode"

registry_answers() {
    # the Docker Hub registry answers 401 (a token is needed) to an anonymous /v2/
    local code
    code="$(curl -sS -m 8 -o /dev/null -w '%{http_code}' https://registry-1.docker.io/v2/ 2>/dev/null || true)"
    [[ ${code} == 401 || ${code} == 200 ]]
}

mode() {
    if [[ -n ${STRATUS_COMPOSE_OFFLINE:-} ]]; then
        [[ ${STRATUS_COMPOSE_OFFLINE} == 1 ]] && echo offline || echo online
    elif [[ -f ${MODE_FILE} ]]; then
        cat "${MODE_FILE}"
    elif registry_answers; then
        echo online
    else
        echo offline
    fi
}

[[ -f ${ENV_FILE} ]] || "${PY}" -m tools.cluster env >/dev/null
MODE="$(mode)"
files=(-f docker-compose.yml)
if [[ ${MODE} == offline ]]; then
    files+=(-f deploy/docker/compose.offline.yml)
fi
for extra in ${COMPOSE_EXTRA:-}; do files+=(-f "${extra}"); done

case "${1:-}" in
    up)
        mkdir -p run
        echo "${MODE}" >"${MODE_FILE}"
        if [[ ${MODE} == offline ]]; then
            echo "compose: no image registry answers: the images of deploy/docker/images.sh" >&2
            bash deploy/docker/images.sh
        fi
        ;;
esac

status=0
docker compose --env-file "${ENV_FILE}" "${files[@]}" "$@" || status=$?
if [[ ${1:-} == down && ${status} -eq 0 ]]; then rm -f "${MODE_FILE}"; fi
exit "${status}"
