"""The data path: reading and writing volume bytes through chunk files.

Allocation is deferred. The first write to a chunk that has no mapping creates a chunk file with an
id from this process's reserved range and remembers ``index -> chunk id`` in memory (``pending``);
the mapping is committed to LMDB only by `DataPath.flush`, after the chunk data and the chunk
directory were fsynced. So metadata never points at data that was not yet durable, and a crash
before a flush leaves at most unreferenced chunk files (leaks that fsck reports and repairs).

Visibility follows from that: this process sees its own writes at once; another process sees
writes into chunks that were already mapped at once, and writes that allocated chunks after the
writer's flush or close (the same promise as NFS close-to-open). When two processes allocate the
same chunk of one volume at once, the later flush wins for that chunk; Curve itself gives shared
writers no consistency guarantee.

Locks, always taken in this order: ``flush_lock`` (one flush or chunk release at a time), then
``io_lock`` (short: decisions about which chunk a piece goes to, never held during IO or fsync).
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import lmdb

from ..errors import IsDirectoryError, NotFoundError, OutOfRangeError
from .chunks import CachedFd, ChunkGone, ChunkStore, WouldBlock
from .meta import KIND_VOLUME, NODE_HEAD, U64, MetaStore, map_key

log = logging.getLogger(__name__)

_RESERVE_BATCH = 1024
T = TypeVar('T')
_LOOKUP_ATTEMPTS = 3  # a chunk freed under a read or write: look its mapping up again
_CACHE_LIMIT = 2**20  # mappings kept per snapshot before starting afresh
_RESERVED_KEY = struct.Struct('>QQQ')


@dataclass
class _SnapshotCache:
    """Volume heads and chunk mappings as read in the committed snapshot `txn_id`.

    LMDB gives every commit, from any process, a new transaction id, and a read transaction
    reports the id of the snapshot it sees; so what was read under one id stays exact for every
    later transaction with the same id. A new id starts a new cache: nothing is ever stale.
    """

    txn_id: int
    heads: dict[int, tuple[int, int]] = field(default_factory=dict)
    chunks: dict[tuple[int, int, int], int | None] = field(default_factory=dict)


@dataclass
class _Unflushed:
    """What this process wrote to one volume since its last flush."""

    new: dict[int, int] = field(default_factory=dict)  # chunk index -> uncommitted chunk id
    written: set[int] = field(default_factory=set)  # chunk ids that need an fsync
    mtime_ns: int = 0
    length: int = 0  # grown by writes past the end (the mount's), not yet committed

    @property
    def dirty(self) -> bool:
        return bool(self.new or self.written or self.length)


def proc_stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (field 3, the state, comes first),
    or None if there is no such process."""
    try:
        with open(f'/proc/{pid}/stat', 'rb') as fh:
            return fh.read().rsplit(b')', 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _process_identity() -> tuple[int, int]:
    """(pid, start time in clock ticks): a pid alone may be reused after a crash."""
    pid = os.getpid()
    return pid, int(proc_stat(pid)[19])


def process_alive(pid: int, start_ticks: int) -> bool:
    fields = proc_stat(pid)
    return fields is not None and int(fields[19]) == start_ticks


def reserved_key(pid: int, start_ticks: int, first: int) -> bytes:
    return _RESERVED_KEY.pack(pid, start_ticks, first)


def decode_reserved_key(key: bytes) -> tuple[int, int, int]:
    return _RESERVED_KEY.unpack(key)


class DataPath:
    def __init__(self, meta: MetaStore, chunks: ChunkStore, chunk_size: int):
        self.meta = meta
        self.chunks = chunks
        self.chunk_size = chunk_size
        self._zeros = memoryview(bytes(chunk_size))
        self.io_lock = threading.Lock()
        self.flush_lock = threading.RLock()
        self._unflushed: dict[int, _Unflushed] = {}
        self._identity = _process_identity()
        self._free_ids: Iterator[int] = iter(())
        self._cache = _SnapshotCache(-1)

    # -- geometry ------------------------------------------------------------------------

    def _pieces(self, offset: int, length: int) -> Iterator[tuple[int, int, int, int]]:
        """(chunk index, offset in chunk, offset in buffer, size) covering [offset, +length)."""
        size = self.chunk_size
        pos, end = offset, offset + length
        while pos < end:
            idx, in_chunk = divmod(pos, size)
            n = min(size - in_chunk, end - pos)
            yield idx, in_chunk, pos - offset, n
            pos += n

    def _snapshot(self, txn: lmdb.Transaction) -> '_SnapshotCache':
        """The cache for txn's snapshot, empty if anything was committed since the last one."""
        cache, txn_id = self._cache, txn.id()
        if cache.txn_id != txn_id or len(cache.chunks) > _CACHE_LIMIT:
            cache = self._cache = _SnapshotCache(txn_id)
        return cache

    def _head(self, txn: lmdb.Transaction, cache: '_SnapshotCache', vol: int) -> tuple[int, int]:
        """(length, sequence number) of a volume, from the fixed-size part of its node."""
        head = cache.heads.get(vol)
        if head is None:
            raw = txn.get(U64.pack(vol), db=self.meta.db['nodes'])
            if raw is None:
                raise NotFoundError(f'volume {vol} no longer exists')
            kind, _status, _parent, length, seq = NODE_HEAD.unpack_from(raw)[:5]
            if kind != KIND_VOLUME:
                raise IsDirectoryError(f'node {vol} is a directory')
            head = cache.heads[vol] = (length, seq)
        return head

    def _mapped(self, txn: lmdb.Transaction, cache: '_SnapshotCache', vol: int, idx: int,
                seq: int) -> int | None:
        """The committed chunk holding index idx of the volume as of seq."""
        key = (vol, idx, seq)
        try:
            return cache.chunks[key]
        except KeyError:
            pass
        exact = txn.get(map_key(vol, idx, seq), db=self.meta.db['chunkmap'])
        if exact is not None:
            chunk_id = U64.unpack(exact)[0]
        elif seq == 1:  # nothing older can exist
            chunk_id = None
        else:
            found = self.meta.chunk_at(txn, vol, idx, seq)
            chunk_id = None if found is None else found[0]
        cache.chunks[key] = chunk_id
        return chunk_id

    # -- IO -------------------------------------------------------------------------------

    def read(self, vol: int, offset: int, length: int, clamp: bool = False,
             nowait: bool = False, readahead: int = 0) -> bytes:
        """length bytes at offset; with clamp, fewer at the end of the volume instead of an
        OutOfRangeError. With nowait, WouldBlock unless the data is in the page cache, and then
        `readahead` bytes past the end (within the last chunk) start coming in too."""
        try:
            return self._read(vol, offset, length, clamp, nowait, readahead)
        except ChunkGone:
            return self._look_again(self._read, vol, offset, length, clamp, nowait, readahead)

    @staticmethod
    def _look_again(io: Callable[..., T], *args: Any) -> T:
        """Retry a read or write whose chunk was freed after it looked the chunk up (zeroed,
        shrunk or replaced, by another thread or process): the mapping is looked up anew. Only
        the rare retry comes here, so the hot path pays no extra call."""
        for _attempt in range(_LOOKUP_ATTEMPTS - 2):
            try:
                return io(*args)
            except ChunkGone:
                pass
        return io(*args)

    def _read(self, vol: int, offset: int, length: int, clamp: bool, nowait: bool,
              readahead: int) -> bytes:
        size = self.chunk_size
        first, last = offset // size, (offset + length - 1) // size
        unflushed = self._unflushed.get(vol)
        # Read `pending` before the transaction begins: a chunk that left `pending` did so after
        # its mapping was committed, so the transaction sees it.
        pending = {}
        if unflushed and unflushed.new:
            for idx in range(first, last + 1):
                chunk_id = unflushed.new.get(idx)
                if chunk_id is not None:
                    pending[idx] = chunk_id
        txn = self.meta.begin_read()
        try:
            cache = self._snapshot(txn)
            vol_length, seq = self._head(txn, cache, vol)
            if unflushed and unflushed.length > vol_length:
                vol_length = unflushed.length
            if offset + length > vol_length:
                if not clamp:
                    raise OutOfRangeError(f'read [{offset}, {offset + length}) past the end '
                                          f'({vol_length})')
                length = max(0, vol_length - offset)
                last = (offset + length - 1) // size
            if first == last:  # the common case: one chunk
                chunk_id = pending.get(first) or self._mapped(txn, cache, vol, first, seq)
                sources = None
            else:
                sources = [(pending.get(idx) or self._mapped(txn, cache, vol, idx, seq),
                            in_chunk, n)
                           for idx, in_chunk, _at, n in self._pieces(offset, length)]
        finally:
            txn.abort()
        if sources is None:  # one chunk: the hot path, kept free of lists
            if chunk_id is None:
                return bytes(length)
            in_chunk = offset - first * size
            return self.chunks.pread(chunk_id, length, in_chunk, nowait,
                                     min(readahead, size - in_chunk - length))
        ahead = [0] * (len(sources) - 1) + [readahead]
        return b''.join(bytes(n) if chunk_id is None else
                        self.chunks.pread(chunk_id, n, in_chunk, nowait,
                                          min(extra, size - in_chunk - n))
                        for (chunk_id, in_chunk, n), extra in zip(sources, ahead))

    def write(self, vol: int, offset: int, data: bytes | memoryview, grow: bool = False,
              nowait: bool = False) -> int:
        """Write all of data at offset. Past the end is an error, or with grow the volume
        grows (committed with the data at the next flush).

        With nowait, WouldBlock (before anything changed) if the write must allocate or free a
        chunk, which writes metadata. A page-cache write itself is not proven non-blocking
        (Linux refuses RWF_NOWAIT for buffered writes on ext4): the kernel may throttle a writer
        that dirties memory faster than the disk drains it.
        """
        try:
            return self._write(vol, offset, data, grow, nowait)
        except ChunkGone:
            return self._look_again(self._write, vol, offset, data, grow, nowait)

    def _write(self, vol: int, offset: int, data: bytes | memoryview, grow: bool,
               nowait: bool) -> int:
        view = memoryview(data).cast('B')
        length = len(view)
        targets: list[tuple[CachedFd, int, int, int, int]] = []
        releases: list[tuple[int, int]] = []
        try:
            with self.io_lock:
                with self.meta.read() as txn:
                    cache = self._snapshot(txn)
                    vol_length, seq = self._head(txn, cache, vol)
                    unflushed = self._unflushed.setdefault(vol, _Unflushed())
                    end = offset + length
                    grows = end > max(vol_length, unflushed.length)
                    if grows and not grow:
                        raise OutOfRangeError(f'write [{offset}, {end}) past the end '
                                              f'({max(vol_length, unflushed.length)})')
                    for idx, in_chunk, at, n in self._pieces(offset, length):
                        chunk_id = (unflushed.new.get(idx) or
                                    self._mapped(txn, cache, vol, idx, seq))
                        piece = view[at:at + n]
                        whole = n == self.chunk_size
                        if nowait and (chunk_id is None or whole):
                            raise WouldBlock()
                        if (chunk_id is None or whole) and piece == self._zeros[:n]:
                            # Zeros where nothing is allocated need no chunk; a whole chunk of
                            # zeros gives its chunk back (the only discard FUSE lets us see).
                            if chunk_id is not None:
                                releases.append((idx, chunk_id))
                            continue
                        if chunk_id is None:
                            chunk_id = self._new_chunk_id()
                            # The mapping is remembered only once the file exists: a failed
                            # create (no space, no inodes, no fds) leaves nothing to commit.
                            entry = self.chunks.acquire(chunk_id, create=True)
                            unflushed.new[idx] = chunk_id
                        else:
                            entry = self.chunks.acquire(chunk_id)
                        targets.append((entry, chunk_id, in_chunk, at, n))
                    if grows:
                        unflushed.length = end
                    unflushed.mtime_ns = time.time_ns()
            for entry, _chunk_id, in_chunk, at, n in targets:
                self.chunks.pwrite(entry, view[at:at + n], in_chunk)
        finally:
            for entry, *_ in targets:
                self.chunks.release(entry)
        if targets:
            # Marked for fsync only now that the data is in: a flush that ran during the pwrite
            # must not have been the one to take these chunks off the list.
            with self.io_lock:
                self._unflushed.setdefault(vol, _Unflushed()).written.update(
                    chunk_id for _e, chunk_id, *_ in targets)
        if releases:
            self._release_chunks(vol, releases)
        return length

    def _new_chunk_id(self) -> int:
        chunk_id = next(self._free_ids, None)
        if chunk_id is None:
            first = self.meta.write(self._reserve_ids)
            self._free_ids = iter(range(first, first + _RESERVE_BATCH))
            chunk_id = next(self._free_ids)
        return chunk_id

    def _reserve_ids(self, txn: lmdb.Transaction) -> int:
        first = self.meta.next_id(txn, 'chunk', _RESERVE_BATCH)
        txn.put(reserved_key(*self._identity, first), U64.pack(first + _RESERVE_BATCH),
                db=self.meta.db['reserved'])
        return first

    def _release_chunks(self, vol: int, releases: list[tuple[int, int]]) -> None:
        """Unmap chunks that now hold only zeros, then delete their files."""
        with self.flush_lock:
            with self.io_lock:
                unflushed = self._unflushed.setdefault(vol, _Unflushed())
                committed = []
                for idx, chunk_id in releases:
                    if unflushed.new.get(idx) == chunk_id:
                        del unflushed.new[idx]
                        unflushed.written.discard(chunk_id)
                        self.chunks.remove(chunk_id)
                    else:
                        committed.append((idx, chunk_id))

            def unmap(txn: lmdb.Transaction) -> list[int]:
                # A private cache: a write transaction's id is not a committed snapshot's.
                seq = self._head(txn, _SnapshotCache(-1), vol)[1]
                gone = []
                for idx, chunk_id in committed:
                    key = map_key(vol, idx, seq)
                    if txn.get(key, db=self.meta.db['chunkmap']) == U64.pack(chunk_id):
                        txn.delete(key, db=self.meta.db['chunkmap'])
                        gone.append(chunk_id)
                return gone

            self.discard_chunks(self.meta.write(unmap) if committed else [])

    # -- durability -----------------------------------------------------------------------

    def flush(self, vol: int) -> None:
        """Make everything this process wrote to vol durable and visible to other processes."""
        with self.flush_lock:
            with self.io_lock:
                unflushed = self._unflushed.get(vol)
                if unflushed is None or not unflushed.dirty:
                    return
                new = dict(unflushed.new)
                written, unflushed.written = unflushed.written, set()
                mtime_ns, grown_to = unflushed.mtime_ns, unflushed.length
            try:
                self.chunks.fsync_all(written)
                if new:
                    self.chunks.fsync_dirs_of(set(new.values()))
            except Exception:
                with self.io_lock:
                    unflushed.written |= written
                raise

            def commit(txn: lmdb.Transaction) -> list[int]:
                node = self.meta.get_node(txn, vol)
                if node is None:
                    return list(new.values())
                stale = []
                node.length = max(node.length, grown_to)
                for idx, chunk_id in new.items():
                    if idx * self.chunk_size >= node.length:
                        stale.append(chunk_id)
                        continue
                    key = map_key(vol, idx, node.seq)
                    old = txn.get(key, db=self.meta.db['chunkmap'])
                    if old is not None:
                        log.warning('volume %d chunk %d was allocated by another process too; '
                                    'the later flush wins', vol, idx)
                        stale.append(U64.unpack(old)[0])
                    txn.put(key, U64.pack(chunk_id), db=self.meta.db['chunkmap'])
                if mtime_ns:
                    node.mtime_ns = node.ctime_ns = max(node.mtime_ns, mtime_ns)
                self.meta.put_node(txn, node)
                return stale

            stale = self.meta.write(commit)
            with self.io_lock:
                for idx, chunk_id in new.items():
                    if unflushed.new.get(idx) == chunk_id:
                        del unflushed.new[idx]
                if unflushed.length == grown_to:
                    unflushed.length = 0
                if not unflushed.dirty:
                    self._unflushed.pop(vol, None)
            self.discard_chunks(stale)

    def discard_chunks(self, chunk_ids: list[int]) -> None:
        """Delete chunk files no mapping names any more, and forget they needed an fsync."""
        if not chunk_ids:
            return
        gone = set(chunk_ids)
        with self.io_lock:
            for unflushed in self._unflushed.values():
                unflushed.written -= gone
        for chunk_id in gone:
            self.chunks.remove(chunk_id)

    def flush_all(self) -> None:
        for vol in list(self._unflushed):
            self.flush(vol)

    def forget_write_time(self, vol: int) -> None:
        """An explicit mtime was set: the next flush keeps it instead of the last write's."""
        with self.io_lock:
            unflushed = self._unflushed.get(vol)
            if unflushed is not None:
                unflushed.mtime_ns = 0

    def pending_length(self, vol: int) -> int:
        """How far this process's unflushed writes have grown the volume (0: not at all)."""
        unflushed = self._unflushed.get(vol)
        return unflushed.length if unflushed else 0

    def forget_volume(self, vol: int) -> list[int]:
        """Drop this process's unflushed state of a volume being destroyed; its new chunk ids."""
        with self.io_lock:
            unflushed = self._unflushed.pop(vol, None)
        return list(unflushed.new.values()) if unflushed else []

    def drop_reservations(self) -> None:
        pid, ticks = self._identity

        def drop(txn: lmdb.Transaction) -> None:
            cur = txn.cursor(db=self.meta.db['reserved'])
            prefix = reserved_key(pid, ticks, 0)[:16]
            if cur.set_range(prefix):
                while cur.key().startswith(prefix):
                    if not cur.delete():
                        break

        self.meta.write(drop)

    def allocated_bytes(self, vol: int) -> int:
        """Disk used by the volume's committed and pending chunks."""
        with self.meta.read() as txn:
            ids = {chunk_id for _idx, _seq, chunk_id in self.meta.volume_chunks(txn, vol)}
        unflushed = self._unflushed.get(vol)
        if unflushed:
            ids |= set(unflushed.new.values())
        return sum(self.chunks.allocated_bytes(chunk_id) for chunk_id in ids)
