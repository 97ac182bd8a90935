"""A worker host of its own: a Linux network namespace joined to this one by a veth pair on a
private /30 (``10.213.x.y``), so a scenario can cut the host off (link down) and heal it (link
up) without touching any other connection on the machine.

Names carry the owning pid (``cvy-ns-<pid>``, ``cvy<pid>h``/``cvy<pid>n``): a run killed before
its cleanup leaves them behind, and the next run deletes those whose owner is gone (and only
those: a run of another checkout may be using its own at the same time).
"""

from __future__ import annotations

import os
import random
import re
import subprocess
from collections.abc import Sequence

PREFIX = "cvy"
SUBNET = "10.213"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def purge_leftovers() -> list[str]:
    """Delete the namespaces and host-side veths of runs whose process is gone; their names."""
    removed = []
    for line in ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        found = re.fullmatch(rf"{PREFIX}-ns-(\d+)", name)
        if found and not _alive(int(found.group(1))):
            ip("netns", "del", name, check=False)  # takes its end of the veth pair, and so the pair, with it
            removed.append(name)
    for line in ip("-o", "link", "show").stdout.splitlines():
        found = re.match(rf"\d+: ({PREFIX}(\d+)[hn])[@:]", line)
        if found and not _alive(int(found.group(2))):
            ip("link", "del", found.group(1), check=False)
            removed.append(found.group(1))
    return removed


def _free_subnet() -> tuple[str, str, str]:
    """A /30 under 10.213/16 that no interface here uses: network, host and namespace addresses."""
    used = ip("-o", "-4", "addr", "show").stdout
    for _ in range(100):
        third, fourth = random.randrange(256), random.randrange(0, 256, 4)
        if f"{SUBNET}.{third}." not in used:
            base = f"{SUBNET}.{third}."
            return f"{base}{fourth}/30", f"{base}{fourth + 1}", f"{base}{fourth + 2}"
    raise RuntimeError(f"no free /30 under {SUBNET}/16")


class Namespace:
    """``create`` makes the namespace and the link; ``exec_prefix`` runs a command inside it;
    ``cut``/``heal`` take the host's end of the link down and up; ``close`` removes it all."""

    def __init__(self) -> None:
        pid = os.getpid()
        self.name = f"{PREFIX}-ns-{pid}"
        self.host_if = f"{PREFIX}{pid}h"
        self.inner_if = f"{PREFIX}{pid}n"
        self.network, self.host_addr, self.inner_addr = _free_subnet()

    def create(self) -> None:
        ip("netns", "add", self.name)
        try:
            ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.inner_if)
            ip("link", "set", self.inner_if, "netns", self.name)
            ip("addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
            ip("link", "set", self.host_if, "up")
            self.inside("ip", "addr", "add", f"{self.inner_addr}/30", "dev", self.inner_if)
            self.inside("ip", "link", "set", self.inner_if, "up")
            self.inside("ip", "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    @property
    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def inside(self, *command: str) -> str:
        done = subprocess.run([*self.exec_prefix, *command], capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"in {self.name}: {' '.join(command)}: {done.stderr.strip()}")
        return done.stdout

    def cut(self) -> None:
        ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        ip("link", "set", self.host_if, "up")

    def close(self) -> None:
        ip("netns", "del", self.name, check=False)
        ip("link", "del", self.host_if, check=False)

    def leftovers(self) -> Sequence[str]:
        """What of this namespace still exists (empty after ``close``)."""
        names = [self.name] if self.name in ip("netns", "list").stdout.split() else []
        if ip("link", "show", self.host_if, check=False).returncode == 0:
            names.append(self.host_if)
        return names
