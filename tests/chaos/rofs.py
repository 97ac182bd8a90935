"""A pass-through FUSE file system that turns read-only, for every open file at once, while a
switch file exists: what a disk remounted read-only does to a running process (writes through
handles it already holds fail with EROFS), which the kernel will not do on demand (``mount -o
remount,ro`` refuses while a file is open for writing, chmod and ``chattr +i`` only refuse new
opens, and an ext4 forced read-only by an error stays so until unmounted).

Run: ``python -m tests.chaos.rofs BACKING MOUNTPOINT SWITCH`` (root; libfuse2 and fusepy). It
serves BACKING at MOUNTPOINT in the foreground until unmounted. No ``lock`` operation: the kernel
then keeps POSIX locks itself, which SQLite's locking across processes of one host needs.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

from fuse import FUSE, FuseOSError, Operations  # type: ignore[import-untyped]

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


class Switchable(Operations):  # type: ignore[misc]
    def __init__(self, backing: str, switch: str) -> None:
        self.backing = os.path.realpath(backing)
        self.switch = switch

    def _full(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    def _writable(self) -> None:
        if os.path.exists(self.switch):
            raise FuseOSError(errno.EROFS)

    # -- reads --------------------------------------------------------------------------------
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.lstat(self._full(path))
        return {key: getattr(st, key) for key in ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime",
                                                  "st_nlink", "st_size", "st_uid")}

    def access(self, path: str, mode: int) -> None:
        if mode & os.W_OK:
            self._writable()
        if not os.access(self._full(path), mode):
            raise FuseOSError(errno.EACCES)

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._full(path))]

    def statfs(self, path: str) -> dict[str, Any]:
        st = os.statvfs(self._full(path))
        return {key: getattr(st, key) for key in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                                  "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

    def open(self, path: str, flags: int) -> int:
        if flags & WRITE_FLAGS:
            self._writable()
        return os.open(self._full(path), flags)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def release(self, path: str, fh: int) -> None:
        os.close(fh)

    def flush(self, path: str, fh: int) -> None:
        return None

    # -- writes: refused while the switch is on --------------------------------------------------
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        self._writable()
        return os.open(self._full(path), os.O_RDWR | os.O_CREAT, mode)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        self._writable()
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        self._writable()
        os.truncate(self._full(path), length)

    def fsync(self, path: str, datasync: int, fh: int) -> None:
        self._writable()
        (os.fdatasync if datasync else os.fsync)(fh)

    def unlink(self, path: str) -> None:
        self._writable()
        os.unlink(self._full(path))

    def rename(self, old: str, new: str) -> None:
        self._writable()
        os.rename(self._full(old), self._full(new))

    def mkdir(self, path: str, mode: int) -> None:
        self._writable()
        os.mkdir(self._full(path), mode)

    def rmdir(self, path: str) -> None:
        self._writable()
        os.rmdir(self._full(path))

    def chmod(self, path: str, mode: int) -> None:
        self._writable()
        os.chmod(self._full(path), mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        self._writable()
        os.chown(self._full(path), uid, gid)

    def utimens(self, path: str, times: tuple[float, float] | None = None) -> None:
        self._writable()
        os.utime(self._full(path), times)


def main(argv: list[str]) -> None:
    backing, mountpoint, switch = argv
    FUSE(Switchable(backing, switch), mountpoint, foreground=True, nothreads=False, fsname="conveyor-rofs")


if __name__ == "__main__":
    main(sys.argv[1:])
