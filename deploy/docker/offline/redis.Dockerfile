# Redis from Debian's packages, a stand-in for the official redis image where no registry
# answers: `redis-server ...` as the command, reachable from the other containers (protected
# mode off when no config file is given, as the official image does), redis-cli on PATH.
ARG BASE_IMAGE=stratus-offline/base:latest
FROM ${BASE_IMAGE}
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        redis-server \
    && rm -rf /var/lib/apt/lists/*
COPY redis-entrypoint.sh /usr/local/bin/stratus-entrypoint
WORKDIR /data
ENTRYPOINT ["/usr/local/bin/stratus-entrypoint"]
CMD ["redis-server"]
EXPOSE 6379
