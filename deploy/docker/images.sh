#!/usr/bin/env bash
# Build the images `docker compose` needs from Debian's packages alone (`make images`), for
# machines where no image registry answers:
#
#   stratus-offline/base       Debian bookworm (debootstrap minbase) with python3 in a venv on
#                              PATH (python, pip) and the machine's CA bundle
#   stratus-offline/postgres   \
#   stratus-offline/rabbitmq    > stand-ins for postgres:16, rabbitmq:3.13-management, redis:7
#   stratus-offline/redis      /  (deploy/docker/offline/*.Dockerfile)
#   stratus-offline/haproxy    the load balancer of deploy/docker/compose.ha.yml
#   stratus:latest             the project's Dockerfile built on stratus-offline/base
#
# Each image is tagged with a hash of its inputs and reused while that tag exists; `:latest`
# points at the current one. deploy/docker/compose.offline.yml points compose at them:
#   docker compose -f docker-compose.yml -f deploy/docker/compose.offline.yml ... up -d --wait
#
# Environment: DEBIAN_MIRROR (the first deb.debian.org-like URI of the machine's apt sources),
# DEBIAN_SUITE (bookworm), STRATUS_IMAGE (stratus:latest), IMAGES (which ones: default all).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="${REPO}/deploy/docker"
OFFLINE="${HERE}/offline"
SUITE="${DEBIAN_SUITE:-bookworm}"
STRATUS_IMAGE="${STRATUS_IMAGE:-stratus:latest}"
IMAGES="${IMAGES:-base postgres rabbitmq redis haproxy stratus}"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

log() { printf 'images: %s\n' "$*" >&2; }
die() { printf 'images: %s\n' "$*" >&2; exit 1; }

timeout 10 docker info >/dev/null 2>&1 || die "no Docker engine answers (scripts/docker-engine.sh ensure starts one)"

mirror() {
    if [[ -n ${DEBIAN_MIRROR:-} ]]; then echo "${DEBIAN_MIRROR}"; return; fi
    local uri
    uri="$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
        /etc/apt/sources.list.d/*.list 2>/dev/null | grep -v security | head -n1 \
        | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//' | awk '{print $1}')"
    echo "${uri:-http://deb.debian.org/debian}"
}

# a short hash of files' contents (and of extra strings)
hash_of() {
    { for f in "$@"; do
          if [[ -d ${f} ]]; then
              find "${f}" -type f -not -path '*/__pycache__/*' -not -name '*.pyc' -print0 \
                  | sort -z | xargs -0 sha256sum
          elif [[ -f ${f} ]]; then sha256sum "${f}"
          else echo "${f}"; fi
      done; } | sed "s#${REPO}/##" | sha256sum | cut -c1-16
}

have() { docker image inspect "$1" >/dev/null 2>&1; }

# docker build without its legacy-builder notice (Debian's engine has no buildx)
build() { docker build "$@" 2> >(grep -v -e 'legacy builder is deprecated' -e 'buildx' -e '^ *$' >&2); }

# what the base image is made of (its hash names it): change it and the base is built again
BASE_INCLUDE="python3,python3-venv,ca-certificates,python-is-python3"
BASE_RECIPE="suite=${SUITE} include=${BASE_INCLUDE} venv=/opt/python recipe=1"
BASE_HASH="$(hash_of "${BASE_RECIPE}" "${CA_BUNDLE}")"
BASE="stratus-offline/base:${BASE_HASH}"

build_base() {
    if have "${BASE}"; then log "reusing ${BASE}"; else
        command -v debootstrap >/dev/null 2>&1 || {
            log "installing Debian's debootstrap"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null \
                || die "apt-get install debootstrap failed"
        }
        local root m
        m="$(mirror)"
        root="$(mktemp -d /var/tmp/stratus-base.XXXXXX)"
        trap 'rm -rf "${root}"' RETURN
        log "debootstrap ${SUITE} from ${m} (about a minute)"
        debootstrap --variant=minbase \
            --include="${BASE_INCLUDE}" \
            "${SUITE}" "${root}" "${m}" >"${root}.log" 2>&1 \
            || { tail -n 5 "${root}.log" >&2; die "debootstrap failed"; }
        rm -f "${root}.log"
        # the machine's CA bundle: pip and apt inside the containers trust what the host trusts
        cp "${CA_BUNDLE}" "${root}/etc/ssl/certs/ca-certificates.crt"
        chroot "${root}" python3 -m venv /opt/python
        rm -rf "${root}"/var/cache/apt/archives/*.deb "${root}"/var/lib/apt/lists/*
        log "importing ${BASE}"
        tar -C "${root}" -c . | docker import \
            -c 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt LANG=C.UTF-8' \
            -c 'CMD ["python"]' - "${BASE}" >/dev/null
    fi
    docker tag "${BASE}" stratus-offline/base:latest
}

build_standin() {
    local name="$1" tag
    tag="stratus-offline/${name}:$(hash_of "${BASE}" "${OFFLINE}/${name}.Dockerfile" "${OFFLINE}/${name}-entrypoint.sh")"
    if have "${tag}"; then log "reusing ${tag}"; else
        log "building ${tag}"
        build -q --build-arg "BASE_IMAGE=${BASE}" -f "${OFFLINE}/${name}.Dockerfile" \
            -t "${tag}" "${OFFLINE}" >/dev/null || die "building ${tag} failed"
    fi
    docker tag "${tag}" "stratus-offline/${name}:latest"
    prune "stratus-offline/${name}" "${tag}" .
}

build_stratus() {
    local tag
    tag="stratus:offline-$(hash_of "${BASE}" "${REPO}/Dockerfile" "${REPO}/pyproject.toml" \
        "${REPO}/alembic.ini" "${REPO}/migrations" "${REPO}/shared" "${REPO}/services")"
    if have "${tag}"; then log "reusing ${tag}"; else
        log "building ${tag} (the first build installs the dependencies: minutes)"
        build -q --build-arg "BASE_IMAGE=${BASE}" -t "${tag}" "${REPO}" >/dev/null \
            || die "building ${tag} failed"
    fi
    docker tag "${tag}" "${STRATUS_IMAGE}"
    prune stratus "${tag}" '^stratus:offline-'
}

# the tags of earlier builds (other inputs) go; layers still in use stay
prune() {
    local repo="$1" keep="$2" pattern="$3"
    docker images --format '{{.Repository}}:{{.Tag}}' "${repo}" | grep -e "${pattern}" \
        | grep -v -x -e "${keep}" -e "${repo}:latest" | xargs -r docker rmi >/dev/null 2>&1 || true
}

prune_base() { prune stratus-offline/base "${BASE}" .; }

for image in ${IMAGES}; do
    case "${image}" in
        base) build_base; prune_base ;;
        postgres | rabbitmq | redis | haproxy) have "${BASE}" || build_base; build_standin "${image}" ;;
        stratus) have "${BASE}" || build_base; build_stratus ;;
        *) die "unknown image ${image}" ;;
    esac
done
