"""Which volumes are open, across every process using the store, without writing metadata.

Each open volume handle holds a shared open-file-description lock (F_OFD_SETLK) on one byte of
``DATA_DIR/opens.lock``, at the offset of the volume id. "Is it open?" asks for a conflicting
exclusive lock (F_OFD_GETLK). The kernel drops the locks of a process that dies, so a crashed
client never leaves a volume "occupied", and opening costs no fsync.
"""

from __future__ import annotations

import fcntl
import os
import struct

# struct flock: l_type, l_whence, l_start, l_len, l_pid (+ padding on x86_64 and aarch64)
_FLOCK = struct.Struct('hhqqi4x')


def _flock(lock_type: int, vol_id: int) -> bytes:
    return _FLOCK.pack(lock_type, os.SEEK_SET, vol_id, 1, 0)


class OpenRegistry:
    def __init__(self, path: str):
        self.path = path

    def hold(self, vol_id: int) -> int:
        """Mark vol_id open until the returned descriptor is passed to `release`."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_RDLCK, vol_id))
        except OSError:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def release(fd: int) -> None:
        os.close(fd)

    def is_open(self, vol_id: int) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK, vol_id))
        finally:
            os.close(fd)
        return _FLOCK.unpack(answer)[0] != fcntl.F_UNLCK
