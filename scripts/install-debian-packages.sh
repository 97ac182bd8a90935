#!/usr/bin/env bash
# Debian packages Conveyor's set-up needs on a fresh machine: Python with venv; with --browser,
# Chromium and its driver for the dashboard's browser test (`make test` asks for them); with
# --services, the RabbitMQ and PostgreSQL servers of the distributed-mode tests (CI machines
# already run them).
set -euo pipefail
need=()
command -v python3 >/dev/null || need+=(python3)
python3 -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv)
command -v make >/dev/null || need+=(make)
for option in "$@"; do
    case "$option" in
        --browser)
            command -v chromium >/dev/null || need+=(chromium)
            command -v chromedriver >/dev/null || need+=(chromium-driver)
            ;;
        --services)
            command -v rabbitmq-server >/dev/null || need+=(rabbitmq-server)
            command -v pg_ctlcluster >/dev/null || need+=(postgresql)
            ;;
        *) echo "unknown option $option (use --browser, --services)" >&2; exit 2 ;;
    esac
done
if ((${#need[@]})); then
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
