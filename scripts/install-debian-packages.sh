#!/usr/bin/env bash
# Debian packages Conveyor's set-up needs on a fresh machine: Python with venv, and for the
# distributed-mode tests the RabbitMQ and PostgreSQL servers (CI machines already run them).
#   --services  also the RabbitMQ and PostgreSQL servers
#   --test      also what the test suite needs beyond Python: spin (checks model/conveyor.pml,
#               compiled with gcc), faketime (a worker with a skewed clock), iproute2 (a
#               worker cut off in a network namespace) and libfuse2 (fusepy's library: the
#               embedded database on a file system that turns read-only)
#   --php       also PHP 8.2 for clients/php and its tests (make test): php-cli (with pcntl and
#               posix), php-amqplib, php-curl, php-mbstring, phpunit and php-laravel-framework.
#               Debian installs the libraries under /usr/share/php with their own autoload.php
#               files (PhpAmqpLib/autoload.php, Illuminate/autoload.php), found on PHP's include_path.
#   --browser   also Chromium and its driver, for the dashboard's browser test (make test)
set -euo pipefail
need=()
command -v python3 >/dev/null || need+=(python3)
python3 -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv)
command -v make >/dev/null || need+=(make)
for arg in "$@"; do
    case "$arg" in
        --browser)
            command -v chromium >/dev/null || need+=(chromium)
            command -v chromedriver >/dev/null || need+=(chromium-driver)
            ;;
        --test)
            command -v spin >/dev/null || need+=(spin)
            command -v gcc >/dev/null || need+=(gcc)
            [[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ]] || need+=(faketime)
            command -v ip >/dev/null || need+=(iproute2)
            ldconfig -p 2>/dev/null | grep -q 'libfuse\.so\.2' || need+=(libfuse2)
            ;;
        --services)
            command -v rabbitmq-server >/dev/null || need+=(rabbitmq-server)
            command -v pg_ctlcluster >/dev/null || need+=(postgresql)
            ;;
        --php)
            command -v php >/dev/null || need+=(php-cli)
            command -v phpunit >/dev/null || need+=(phpunit)
            php -m 2>/dev/null | grep -qx curl || need+=(php-curl)
            php -m 2>/dev/null | grep -qx mbstring || need+=(php-mbstring)
            [[ -f /usr/share/php/PhpAmqpLib/autoload.php ]] || need+=(php-amqplib)
            [[ -f /usr/share/php/Illuminate/autoload.php ]] || need+=(php-laravel-framework)
            ;;
    esac
done
if ((${#need[@]})); then
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
