# RabbitMQ from Debian's packages, a stand-in for the official rabbitmq:*-management image where
# no registry answers: RABBITMQ_DEFAULT_USER / _PASS / _VHOST on a fresh node, the management
# plugin on 15672, data in /var/lib/rabbitmq, rabbitmq-diagnostics on PATH.
ARG BASE_IMAGE=stratus-offline/base:latest
FROM ${BASE_IMAGE}
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        rabbitmq-server \
    && rm -rf /var/lib/apt/lists/* \
    && echo '[rabbitmq_management].' > /etc/rabbitmq/enabled_plugins
COPY rabbitmq-entrypoint.sh /usr/local/bin/stratus-entrypoint
ENTRYPOINT ["/usr/local/bin/stratus-entrypoint"]
CMD ["rabbitmq-server"]
EXPOSE 5672 15672
