#!/usr/bin/env bash
# Debian packages Conveyor's set-up needs on a fresh machine: Python with venv, Chromium and its
# driver for the dashboard's browser test, and for the distributed-mode tests the RabbitMQ and
# PostgreSQL servers (CI machines already run them).
set -euo pipefail
need=()
command -v python3 >/dev/null || need+=(python3)
python3 -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv)
command -v make >/dev/null || need+=(make)
[[ "${CONVEYOR_NO_BROWSER:-}" == "1" ]] || {
    command -v chromium >/dev/null || need+=(chromium)
    command -v chromedriver >/dev/null || need+=(chromium-driver)
}
if [[ "${1:-}" == "--services" ]]; then
    command -v rabbitmq-server >/dev/null || need+=(rabbitmq-server)
    command -v pg_ctlcluster >/dev/null || need+=(postgresql)
fi
if ((${#need[@]})); then
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
