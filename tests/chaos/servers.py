"""Private RabbitMQ nodes and PostgreSQL clusters that a chaos scenario may stop, restart, kill
or cut off without touching the machine's shared servers (:5672, :5432).

Each server runs in its own process session, from a data directory under a temporary folder,
on ports of its own. Three guards make sure none outlives the run, even if pytest is killed:
``close()`` (called by the fixtures), an ``atexit`` hook, and a watchdog process that SIGKILLs
the server's session and deletes its folder once the owning pid is gone or a deadline passed.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
MAX_LIFETIME_S = 3600.0  # a private server never outlives this, whatever happens to pytest

_WATCHDOG = """
import os, shutil, signal, sys, time
owner, deadline, pgid, folder = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
while time.time() < deadline and alive(owner) and os.path.isdir(folder):
    time.sleep(1)
if pgid:  # 0: the server is down already, only its folder is watched
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    time.sleep(1)
shutil.rmtree(folder, ignore_errors=True)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


class _Supervised:
    """A server process in its own session, watched by a watchdog that outlives pytest."""

    def __init__(self, name: str, folder: Path) -> None:
        self.name = name
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        atexit.register(self.close)

    def _spawn(self, command: Sequence[str], env: dict[str, str], log_name: str,
               preexec: Callable[[], None] | None = None) -> None:
        with (self.folder / log_name).open("ab") as log:
            self.proc = subprocess.Popen(list(command), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec,
                                         cwd=self.folder)
        self._watch(self.proc.pid)

    def _watch(self, pgid: int) -> None:
        """(Re)start the watchdog: it kills session ``pgid`` (0: none) and deletes the folder."""
        self._end_watchdog()
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(time.time() + MAX_LIFETIME_S),
             str(pgid), str(self.folder)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def _end_watchdog(self) -> None:
        """Once its server is gone the watchdog must not outlive it (the pid could be reused)."""
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait(timeout=10)
            self._watchdog = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL the server and everything in its session (no shutdown at all). Its folder is
        still watched (a scenario may start it again): deleted if pytest dies meanwhile."""
        self._kill()
        if self.folder.is_dir():
            self._watch(0)

    def _kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._end_watchdog()

    def close(self) -> None:
        self._kill()
        shutil.rmtree(self.folder, ignore_errors=True)


# -- RabbitMQ ------------------------------------------------------------------------------------


class PrivateRabbit(_Supervised):
    """One RabbitMQ node of our own: own node name, ports, data dir, config file and Erlang cookie
    (so ``rabbitmqctl`` here can never reach the shared node)."""

    def __init__(self, folder: Path | None = None, *, name: str | None = None, cookie: str | None = None,
                 listen: str = "127.0.0.1", port: int | None = None, extra_config: str = "") -> None:
        name = name or f"chaos-{uuid.uuid4().hex[:6]}"
        super().__init__(name, folder or Path(tempfile.mkdtemp(prefix=f"{name}-")))
        self.node = f"{name}@localhost"
        self.listen = listen
        self.port = port or free_port()
        self.dist_port = free_port()
        home = self.folder / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie_file = home / ".erlang.cookie"
        cookie_file.write_text(cookie or uuid.uuid4().hex.upper())
        cookie_file.chmod(0o400)
        (self.folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {listen}:{self.port}\nloopback_users = none\n"
            "heartbeat = 10\n"  # a dead peer is noticed in ~20 s rather than 2 minutes
            "cluster_formation.node_cleanup.only_log_warning = true\n" + extra_config
        )
        (self.folder / "enabled_plugins").write_text("[].\n")  # no management listener to clash
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "CONVEYOR_"))},
            "HOME": str(home), "RABBITMQ_NODENAME": self.node, "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port), "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"), "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.folder / "pid"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.folder / "advanced.config"),
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.listen}:{self.port}/"

    def start(self, timeout_s: float = 90.0) -> None:
        self._spawn([str(RABBIT_BIN / "rabbitmq-server")], self.env, "server.log")
        deadline = time.monotonic() + timeout_s
        while True:  # await_startup fails at once until the VM has registered with epmd
            if not self.running():
                raise RuntimeError(f"{self.node} exited:\n" + (self.folder / "server.log").read_text()[-3000:])
            if self.ctl("await_startup", timeout_s=timeout_s, check=False, quiet=True):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.node} did not start within {timeout_s} s")
            time.sleep(0.5)

    def ctl(self, *args: str, timeout_s: float = 60.0, check: bool = True, quiet: bool = False) -> str:
        """``rabbitmqctl`` on this node; its output (``quiet``: "ok" or "" for success or failure)."""
        done = subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout_s, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.node}: {done.stdout}{done.stderr}")
        if quiet:
            return "ok" if done.returncode == 0 else ""
        return done.stdout

    def stop(self) -> None:
        """A clean shutdown of the whole node (``rabbitmqctl stop``)."""
        self.ctl("stop", timeout_s=90)
        if self.proc is not None:
            self.proc.wait(timeout=30)
        self.kill9()

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app", timeout_s=90)
        self.ctl("await_startup", timeout_s=90)

    def restart(self) -> None:
        """Start the node again after ``kill9`` (same data dir: it rejoins its cluster)."""
        self.start()


class RabbitCluster:
    """Three private nodes on their own ports with their own config files (one cookie, so they can
    talk), joined into one cluster with ``rabbitmqctl join_cluster``. Each node keeps its own
    watchdog, so a node killed and restarted in a scenario is still removed if pytest dies."""

    def __init__(self, size: int = 3) -> None:
        cookie = uuid.uuid4().hex.upper()
        tag = uuid.uuid4().hex[:4]
        self.nodes = [PrivateRabbit(name=f"chaos-{tag}-n{i + 1}", cookie=cookie,
                                    extra_config="cluster_partition_handling = pause_minority\n")
                      for i in range(size)]

    def start(self) -> None:
        for node in self.nodes:  # booting 3 Erlang VMs at once on 2 cores is slower than in turn
            node.start()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.stop_app()
            node.ctl("join_cluster", first.node)
            node.start_app()
        self.wait_running(self.nodes)

    def url(self, order: Sequence[int] | None = None, *, vhost: str = "", query: str = "") -> str:
        """One URL naming every node (``amqp://guest:guest@h1:p1,h2:p2,h3:p3/vhost?query``), the
        nodes in ``order`` (indexes into ``nodes``) first."""
        nodes = [self.nodes[i] for i in (order or range(len(self.nodes)))]
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in nodes)
        return f"amqp://guest:guest@{hosts}/{quote(vhost, safe='')}" + (f"?{query}" if query else "")

    def node_on_port(self, port: int) -> PrivateRabbit:
        return next(n for n in self.nodes if n.port == port)

    def survivor(self, *besides: PrivateRabbit) -> PrivateRabbit:
        """A running node other than ``besides``, to run ``rabbitmqctl`` on."""
        return next(n for n in self.nodes if n.running() and n not in besides)

    def running_nodes(self, via: PrivateRabbit | None = None) -> set[str]:
        """The nodes the cluster (as ``via`` sees it) has running."""
        status = json.loads((via or self.survivor()).ctl("cluster_status", "--formatter", "json"))
        return set(status.get("running_nodes", []))

    def wait_running(self, nodes: Sequence[PrivateRabbit], timeout_s: float = 60.0) -> None:
        wanted = {n.node for n in nodes}
        wait_until(lambda: wanted <= self.running_nodes(), timeout_s, f"{sorted(wanted)} running in the cluster")

    def quorum_queues(self, vhost: str) -> list[dict[str, Any]]:
        """Every quorum queue of ``vhost``: name, leader, members, online members."""
        out = self.survivor().ctl("list_queues", "-p", vhost, "--formatter", "json",
                                  "name", "type", "leader", "members", "online")
        return [q for q in json.loads(out) if q.get("type") == "quorum"]

    def wait_rejoined(self, node: PrivateRabbit, vhost: str, timeout_s: float = 60.0) -> None:
        """``node`` (restarted) runs in the cluster again and is an online member of every quorum
        queue of ``vhost``: the Raft groups have their 3 members back."""
        self.wait_running([node], timeout_s)
        wait_until(lambda: all(node.node in q.get("online", []) for q in self.quorum_queues(vhost)), timeout_s,
                   f"{node.node} online in every quorum queue of {vhost}")

    def close(self) -> None:
        for node in self.nodes:
            node.close()


# -- PostgreSQL ------------------------------------------------------------------------------------


def _as_postgres_user() -> Callable[[], None] | None:
    """initdb/postgres refuse to run as root: demote the child to the ``postgres`` account."""
    if os.geteuid() != 0:
        return None
    account = pwd.getpwnam("postgres")

    def demote() -> None:
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)

    return demote


def _pg_bin(tool: str) -> str:
    found = shutil.which(tool)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not versions:
        raise FileNotFoundError(f"{tool} not found (install postgresql)")
    return str(versions[-1] / tool)


class PrivatePostgres(_Supervised):
    """A PostgreSQL cluster of our own (``initdb`` into a temp dir, own port, trust auth).
    ``clients``: more networks (CIDR) trusted beside loopback, for a server that listens on
    another address than 127.0.0.1."""

    def __init__(self, *, listen: str = "127.0.0.1", port: int | None = None, clients: Sequence[str] = ()) -> None:
        super().__init__("postgres", Path(tempfile.mkdtemp(prefix="chaos-pg-")))
        self.listen = listen
        self.port = port or free_port()
        self.data = self.folder / "data"
        demote = _as_postgres_user()
        if demote is not None:
            account = pwd.getpwnam("postgres")
            os.chown(self.folder, account.pw_uid, account.pw_gid)
        self._demote = demote
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "CONVEYOR_"))}
        subprocess.run([_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"],
                       env=self.env, preexec_fn=demote, capture_output=True, check=True, timeout=120,
                       cwd=self.folder)
        if clients:
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.writelines(f"host all all {network} trust\n" for network in clients)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.listen}:{self.port}/{database}"

    def start(self, timeout_s: float = 60.0) -> None:
        self._spawn([_pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.folder),
                     "-c", f"listen_addresses={self.listen}", "-c", "fsync=off", "-c", "max_connections=200"],
                    self.env, "server.log", self._demote)
        wait_until(lambda: self._accepts(), timeout_s, f"private PostgreSQL on {self.port}")

    def _accepts(self) -> bool:
        if not self.running():
            raise RuntimeError("private PostgreSQL exited:\n" + (self.folder / "server.log").read_text()[-3000:])
        try:
            import psycopg

            with psycopg.connect(self.url(), connect_timeout=2):
                return True
        except Exception:
            return False

    def stop(self, mode: str = "fast") -> None:
        """``fast`` (SIGINT: roll back, disconnect) or ``immediate`` (SIGQUIT: crash-like)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT if mode == "fast" else signal.SIGQUIT)
        try:
            self.proc.wait(timeout=60)
        finally:
            self.kill9()  # whatever is left of its session; the folder stays watched

    def sql(self, statement: str, database: str = "postgres") -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str) -> str:
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def terminate_backends(self, database: str) -> int:
        """``pg_terminate_backend`` on every other session of ``database``; returns how many."""
        rows = self.sql(f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        f"WHERE datname = '{database}' AND pid <> pg_backend_pid()")
        return int(rows[0][0])

    def refuse_connections(self, database: str, refuse: bool) -> None:
        """``ALLOW_CONNECTIONS false`` refuses every new session (superusers too); existing ones
        are cut as well, as a database failover would."""
        self.sql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {"false" if refuse else "true"}')
        if refuse:
            self.terminate_backends(database)
