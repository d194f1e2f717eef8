#!/bin/sh
# The default user, password and vhost go into rabbitmq.conf (applied when the node's database
# is created, as with the official image); the node runs in the foreground as rabbitmq.
set -eu
{
    echo "loopback_users = none"
    echo "default_user = ${RABBITMQ_DEFAULT_USER:-guest}"
    echo "default_pass = ${RABBITMQ_DEFAULT_PASS:-guest}"
    echo "default_vhost = ${RABBITMQ_DEFAULT_VHOST:-/}"
    echo "default_permissions.configure = .*"
    echo "default_permissions.read = .*"
    echo "default_permissions.write = .*"
} > /etc/rabbitmq/rabbitmq.conf
chown rabbitmq:rabbitmq /etc/rabbitmq/rabbitmq.conf
chmod 600 /etc/rabbitmq/rabbitmq.conf
mkdir -p /var/lib/rabbitmq /var/log/rabbitmq
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /var/log/rabbitmq
if [ "${1}" = rabbitmq-server ]; then
    shift
    export HOME=/var/lib/rabbitmq RABBITMQ_LOGS=-
    exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
        /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
fi
exec "$@"
