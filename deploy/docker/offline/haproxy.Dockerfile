# HAProxy from Debian's packages, a stand-in for the official haproxy image where no registry
# answers: `haproxy` on PATH, the configuration mounted by compose.ha.yml.
ARG BASE_IMAGE=stratus-offline/base:latest
FROM ${BASE_IMAGE}
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        haproxy \
    && rm -rf /var/lib/apt/lists/*
COPY haproxy-entrypoint.sh /usr/local/bin/stratus-entrypoint
ENTRYPOINT ["/usr/local/bin/stratus-entrypoint"]
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
STOPSIGNAL SIGUSR1
