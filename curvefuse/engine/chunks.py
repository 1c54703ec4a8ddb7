"""ChunkStore: sparse chunk files, named by chunk id, and a cache of their file descriptors.

A chunk file holds one chunk of one volume version. It is sparse: bytes never written are holes
that read as zeros and take no disk. Files live in ``chunks/XX/<id as 16 hex digits>``, fanned out
over 256 directories by the low byte of the id so no directory grows huge.

File descriptors are cached (a chunk is opened once, not per IO) and counted while in use, so a
descriptor is never closed while another thread still reads or writes through it.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator

from ..errors import NoSpaceError, StorageError

log = logging.getLogger(__name__)

_FD_CACHE_SIZE = 512
_FSYNC_THREADS = 16


class WouldBlock(Exception):
    """A nowait call would have had to wait for the disk (or for metadata writes); retry it
    without nowait where blocking is fine (a worker thread)."""


class ChunkGone(StorageError):
    """The chunk file was deleted since its mapping was read (freed by another thread or
    process); the caller looks the mapping up again."""


def data_runs(data: bytes, block: int = 4096) -> Iterator[tuple[int, int]]:
    """[start, end) of the runs of blocks in data that are not all zeros: what a sparse copy
    must write (the rest stays a hole)."""
    zero = bytes(block)
    start = None
    for pos in range(0, len(data), block):
        if data[pos:pos + block] == zero[:min(block, len(data) - pos)]:
            if start is not None:
                yield start, pos
                start = None
        elif start is None:
            start = pos
    if start is not None:
        yield start, len(data)


def storage_error(exc: OSError, what: str) -> Exception:
    """Turn an OSError from the disk into the engine's error for it."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError(f'{what}: disk full')
    if exc.errno == errno.ENOENT:
        return ChunkGone(f'{what}: gone', exc.errno)
    return StorageError(f'{what}: {exc.strerror}', exc.errno)


class CachedFd:
    __slots__ = ('fd', 'users', 'evicted')

    def __init__(self, fd: int):
        self.fd = fd
        self.users = 0
        self.evicted = False


class ChunkStore:
    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._fds: OrderedDict[int, CachedFd] = OrderedDict()

    @staticmethod
    def create_layout(path: str) -> None:
        for i in range(256):
            os.makedirs(os.path.join(path, f'{i:02x}'), exist_ok=True)

    def chunk_path(self, chunk_id: int) -> str:
        return os.path.join(self.path, f'{chunk_id & 0xff:02x}', f'{chunk_id:016x}')

    def acquire(self, chunk_id: int, create: bool = False) -> CachedFd:
        """Pin a chunk's descriptor (opening, or with create making, the file); `release` unpins."""
        with self._lock:
            entry = self._fds.get(chunk_id)
            if entry is None:
                entry = self._open_locked(chunk_id, create)
            else:
                self._fds.move_to_end(chunk_id)
            entry.users += 1
            return entry

    def _open_locked(self, chunk_id: int, create: bool = False) -> CachedFd:
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
        try:
            entry = CachedFd(os.open(self.chunk_path(chunk_id), flags, 0o600))
        except OSError as exc:
            raise storage_error(exc, f'chunk {chunk_id:x}') from exc
        self._fds[chunk_id] = entry
        self._evict_idle()
        return entry

    def release(self, entry: CachedFd) -> None:
        with self._lock:
            entry.users -= 1
            if entry.evicted and entry.users == 0:
                os.close(entry.fd)

    def _evict_idle(self) -> None:
        while len(self._fds) > _FD_CACHE_SIZE:
            _, victim = self._fds.popitem(last=False)
            self._drop(victim)

    @staticmethod
    def _drop(entry: CachedFd) -> None:
        entry.evicted = True
        if entry.users == 0:
            os.close(entry.fd)

    def pread(self, chunk_id: int, length: int, offset: int, nowait: bool = False,
              readahead: int = 0) -> bytes:
        """Read; a chunk file is shorter than a chunk where its tail was never written.

        With nowait, WouldBlock unless every byte is in the page cache (RWF_NOWAIT); before
        raising it starts reading the missing pages in (POSIX_FADV_WILLNEED submits the IO and
        returns), so asking again soon finds them; `readahead` bytes after the range are
        started too, for a reader going forward. The hot path of every read, so
        `acquire`/`release` are written out inline here.
        """
        lock = self._lock
        with lock:
            entry = self._fds.get(chunk_id)
            if entry is None:
                entry = self._open_locked(chunk_id)
            entry.users += 1
        try:
            if nowait:
                buf = bytearray(length)
                try:
                    got = os.preadv(entry.fd, [buf], offset, os.RWF_NOWAIT)
                except BlockingIOError:
                    got = -1
                # Short: the file's end (never-written tail: zeros) or a page not cached.
                if got < length and (got < 0 or offset + got < os.fstat(entry.fd).st_size):
                    os.posix_fadvise(entry.fd, offset, length + readahead,
                                     os.POSIX_FADV_WILLNEED)
                    raise WouldBlock()
                if readahead:
                    os.posix_fadvise(entry.fd, offset + length, readahead,
                                     os.POSIX_FADV_WILLNEED)
                return bytes(buf)
            data = os.pread(entry.fd, length, offset)
        except OSError as exc:
            raise storage_error(exc, f'reading chunk {chunk_id:x}') from exc
        finally:
            with lock:
                entry.users -= 1
                if entry.evicted and entry.users == 0:
                    os.close(entry.fd)
        if len(data) < length:
            data += bytes(length - len(data))
        return data

    @staticmethod
    def pwrite(entry: CachedFd, data: bytes | memoryview, offset: int) -> None:
        """Write all of data through a pinned descriptor."""
        try:
            written = os.pwrite(entry.fd, data, offset)
            while written < len(data):
                written += os.pwrite(entry.fd, data[written:], offset + written)
        except OSError as exc:
            raise storage_error(exc, 'writing a chunk') from exc

    def fsync(self, chunk_id: int) -> None:
        try:
            entry = self.acquire(chunk_id)
        except ChunkGone:
            log.debug('chunk %x was freed before its fsync: nothing to make durable', chunk_id)
            return
        try:
            os.fsync(entry.fd)
        except OSError as exc:
            raise storage_error(exc, f'syncing chunk {chunk_id:x}') from exc
        finally:
            self.release(entry)

    def fsync_all(self, chunk_ids: set[int]) -> None:
        """fsync many chunks at once: in parallel the disk gets a deep queue and ext4 can put
        the files in one journal commit, where one after another each waits for its own."""
        if len(chunk_ids) <= 1:
            for chunk_id in chunk_ids:
                self.fsync(chunk_id)
            return
        with ThreadPoolExecutor(min(len(chunk_ids), _FSYNC_THREADS)) as pool:
            list(pool.map(self.fsync, chunk_ids))  # list() re-raises the first error

    def fsync_dirs_of(self, chunk_ids: set[int]) -> None:
        """Make the names of newly created chunk files durable."""
        for low in {cid & 0xff for cid in chunk_ids}:
            fd = os.open(os.path.join(self.path, f'{low:02x}'), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def remove(self, chunk_id: int) -> None:
        """Delete a chunk file whose mapping is gone (missing already is fine: a retry)."""
        with self._lock:
            entry = self._fds.pop(chunk_id, None)
            if entry is not None:
                self._drop(entry)
        try:
            os.unlink(self.chunk_path(chunk_id))
        except FileNotFoundError:
            pass

    def truncate(self, chunk_id: int, length: int) -> None:
        """Cut a chunk file at length (what lies past it reads as zeros) and sync that."""
        entry = self.acquire(chunk_id)
        try:
            os.ftruncate(entry.fd, length)
            os.fsync(entry.fd)
        except OSError as exc:
            raise storage_error(exc, f'truncating chunk {chunk_id:x}') from exc
        finally:
            self.release(entry)

    def allocated_bytes(self, chunk_id: int) -> int:
        """Disk actually used by a chunk (holes excluded)."""
        try:
            return os.stat(self.chunk_path(chunk_id)).st_blocks * 512
        except FileNotFoundError:
            return 0

    def size(self, chunk_id: int) -> int | None:
        """A chunk file's length, or None if there is no such file (for fsck)."""
        try:
            return os.stat(self.chunk_path(chunk_id)).st_size
        except FileNotFoundError:
            return None

    def all_files(self) -> Iterator[tuple[int | None, str]]:
        """(chunk id, path) of every file in the chunk store; id None for a name not ours."""
        for sub in sorted(os.listdir(self.path)):
            for name in os.listdir(os.path.join(self.path, sub)):
                path = os.path.join(self.path, sub, name)
                try:
                    chunk_id = int(name, 16)
                except ValueError:
                    chunk_id = None
                if chunk_id is not None and path != self.chunk_path(chunk_id):
                    chunk_id = None
                yield chunk_id, path

    def close(self) -> None:
        with self._lock:
            while self._fds:
                self._drop(self._fds.popitem()[1])
