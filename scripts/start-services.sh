#!/usr/bin/env bash
# Start RabbitMQ and PostgreSQL on 127.0.0.1 if they are down, and wait until they answer.
# The distributed-mode tests need both; in CI an unreachable service fails the run.
set -uo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # name port seconds
    for _ in $(seq 1 "$3"); do up "$2" && return 0; sleep 1; done
    echo "$1 did not come up on 127.0.0.1:$2" >&2
    return 1
}

if ! up 5432; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
if ! up 5672; then
    echo "starting RabbitMQ"
    rabbitmq-server -detached || true
fi
wait_for PostgreSQL 5432 60 && wait_for RabbitMQ 5672 90 || exit 1
# RabbitMQ accepts TCP before its app is fully booted; wait for it to answer AMQP-level checks.
command -v rabbitmqctl >/dev/null && timeout 90 rabbitmqctl await_startup >/dev/null 2>&1 || true
psql -h 127.0.0.1 -U postgres -d test -c "select 1" >/dev/null 2>&1 || \
    psql -h 127.0.0.1 -U postgres -c "create database test" >/dev/null 2>&1 || true
echo "services are up"
