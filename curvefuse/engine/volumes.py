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

Snapshots and clones (see the chunk-map layout in meta.py). A volume writes at its sequence
number; a snapshot freezes that number and bumps it. The first write to a chunk whose visible
data belongs to an older sequence (or to a clone's source) does not copy the chunk: it starts a
*partial* chunk at the current sequence and writes just the written blocks into it; only the
4 KiB blocks that a write covers partly are first copied from below (copy-on-write at block
granularity). The partial's block bitmap stays in memory (``_Partial.bits``) until the flush
commits it with the data, like a new chunk's mapping.

A snapshot taken in this process first flushes and stops the volume's writes for the commit
(`DataPath.frozen`), so no write lands in a chunk the snapshot just froze. A snapshot taken by
another process cannot stop this one's writes: a write in flight at that moment may or may not be
in the snapshot (crash-consistent, as a disk is at power loss), and this process's unflushed
blocks of a partial chunk the snapshot froze are copied to a new partial chunk at the next flush
(``_migrate``), so the snapshot never changes after it was taken.

Locks, always taken in this order: ``flush_lock`` (one flush or chunk release at a time),
``cow_lock`` (one write at a time that starts or extends a partial chunk), then ``io_lock``
(short: decisions about which chunk a piece goes to, never held during bulk IO or fsync).
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import lmdb

from ..errors import IsDirectoryError, NotFoundError, OutOfRangeError, StorageError
from .chunks import CachedFd, ChunkGone, ChunkStore, WouldBlock
from .meta import (KIND_VOLUME, NODE_HEAD, U64, MetaStore, Node, decode_map_value,
                   encode_map_value, map_key)

log = logging.getLogger(__name__)

BLOCK_SIZE = 4096  # the copy-on-write unit
_RESERVE_BATCH = 1024
T = TypeVar('T')
_LOOKUP_ATTEMPTS = 3  # a chunk freed under a read or write: look its mapping up again
_CACHE_LIMIT = 2**20  # mappings kept per snapshot before starting afresh
_RESERVED_KEY = struct.Struct('>QQQ')


@dataclass(frozen=True)
class Layers:
    """A chunk version made of several chunk files: the partial entries that provide blocks,
    newest first, each with just the blocks it is the first to provide, and what every other
    block reads from (`base`: a chunk id, or None for zeros)."""

    partials: tuple[tuple[int, int], ...]
    base: int | None


#: What a chunk index of a volume version reads from: nothing (zeros), one chunk file, or layers.
Resolution = int | None | Layers


@dataclass(frozen=True)
class CloneSource:
    """Where a clone's unwritten blocks come from: a volume as of a sequence, up to a length."""

    vol: int
    seq: int
    length: int


def clone_source(node: Node) -> CloneSource | None:
    clone = node.extra.get('clone')
    if clone is None:
        return None
    return CloneSource(clone['vol'], clone['seq'], clone['length'])


@dataclass
class _SnapshotCache:
    """Volume heads and chunk mappings as read in the committed snapshot `txn_id`.

    LMDB gives every commit, from any process, a new transaction id, and a read transaction
    reports the id of the snapshot it sees; so what was read under one id stays exact for every
    later transaction with the same id. A new id starts a new cache: nothing is ever stale.
    """

    txn_id: int
    heads: dict[int, tuple[int, int]] = field(default_factory=dict)
    sources: dict[int, CloneSource | None] = field(default_factory=dict)
    exact: dict[tuple[int, int, int], tuple[int, int | None] | None] = field(default_factory=dict)
    chunks: dict[tuple[int, int, int], Resolution] = field(default_factory=dict)


@dataclass
class _Partial:
    """A partial chunk this process writes at sequence `seq`: `bits` are the blocks written since
    the last flush; `created` says the chunk file is this process's and not yet committed."""

    chunk_id: int
    seq: int
    created: bool
    bits: int = 0


@dataclass
class _Unflushed:
    """What this process wrote to one volume since its last flush."""

    new: dict[int, int] = field(default_factory=dict)  # chunk index -> uncommitted chunk id
    partial: dict[int, _Partial] = field(default_factory=dict)  # chunk index -> partial chunk
    written: set[int] = field(default_factory=set)  # chunk ids that need an fsync
    mtime_ns: int = 0
    length: int = 0  # grown by writes past the end (the mount's), not yet committed

    @property
    def dirty(self) -> bool:
        return bool(self.new or self.written or self.length or
                    any(p.bits for p in self.partial.values()))


#: Where a piece of a write goes: (pinned chunk, chunk id, offset in it, size, the partial chunk
#: whose bits the write sets).
_Target = tuple[CachedFd, int, int, int, _Partial | None]


class _NeedsCow(Exception):
    """A piece of a write starts or extends a partial chunk: redo the write under cow_lock."""


class _SequenceMoved(Exception):
    """Another process snapshotted the volume under this process's unflushed partial chunk:
    flush (which moves those blocks to the new sequence), then redo the write."""


def proc_stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (field 3, the state, comes first),
    or None if there is no such process."""
    try:
        with open(f'/proc/{pid}/stat', 'rb') as fh:
            return fh.read().rsplit(b')', 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def process_identity() -> tuple[int, int]:
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


def block_mask(in_chunk: int, length: int) -> int:
    """The bits of the blocks that [in_chunk, in_chunk + length) touches."""
    first, last = in_chunk // BLOCK_SIZE, (in_chunk + length - 1) // BLOCK_SIZE
    return ((1 << (last - first + 1)) - 1) << first


def block_runs(bits: int) -> Iterator[tuple[int, int]]:
    """(first block, count) of each run of set bits."""
    block = 0
    while bits:
        skip = (bits & -bits).bit_length() - 1
        bits >>= skip
        block += skip
        count = (~bits & (bits + 1)).bit_length() - 1
        yield block, count
        bits >>= count
        block += count


class DataPath:
    def __init__(self, meta: MetaStore, chunks: ChunkStore, chunk_size: int):
        self.meta = meta
        self.chunks = chunks
        self.chunk_size = chunk_size
        self.full_bits = (1 << (chunk_size // BLOCK_SIZE)) - 1
        self.bitmap_bytes = chunk_size // BLOCK_SIZE // 8
        self._zeros = memoryview(bytes(chunk_size))
        self.io_lock = threading.Lock()
        self.cow_lock = threading.Lock()
        self.flush_lock = threading.RLock()
        self._gate = threading.Condition(self.io_lock)
        self._inflight: dict[int, int] = {}  # volume -> writes between decision and bits set
        self._frozen: dict[int, tuple[int, int]] = {}  # volume -> (freezing thread, depth)
        self._unflushed: dict[int, _Unflushed] = {}
        self._committing: set[int] = set()  # new partial chunks the flush under way may map
        self._dropped: list[_Partial] = []  # of those, the ones a whole-chunk write replaced
        self.identity = process_identity()
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

    def _source(self, txn: lmdb.Transaction, cache: '_SnapshotCache',
                vol: int) -> CloneSource | None:
        try:
            return cache.sources[vol]
        except KeyError:
            node = self.meta.get_node(txn, vol)
            source = cache.sources[vol] = None if node is None else clone_source(node)
            return source

    def _exact(self, txn: lmdb.Transaction, cache: '_SnapshotCache', vol: int, idx: int,
               seq: int) -> tuple[int, int | None] | None:
        """The entry of chunk idx at exactly seq: (chunk id, bits or None), or None."""
        key = (vol, idx, seq)
        try:
            return cache.exact[key]
        except KeyError:
            raw = txn.get(map_key(vol, idx, seq), db=self.meta.db['chunkmap'])
            found = cache.exact[key] = None if raw is None else decode_map_value(raw)
            return found

    def _mapped(self, txn: lmdb.Transaction, cache: '_SnapshotCache', vol: int, idx: int,
                seq: int) -> Resolution:
        """What index idx of the volume as of seq reads from (committed state only)."""
        key = (vol, idx, seq)
        try:
            return cache.chunks[key]
        except KeyError:
            pass
        exact = self._exact(txn, cache, vol, idx, seq)
        if exact is not None and exact[1] is None:
            found: Resolution = exact[0] or None
        else:
            found = self._walk(txn, cache, vol, idx, seq)
        cache.chunks[key] = found
        return found

    def _walk(self, txn: lmdb.Transaction, cache: '_SnapshotCache', vol: int, idx: int,
              seq: int) -> Resolution:
        """Go down the versions of a chunk, then into the clone source, until every block has
        a provider."""
        partials: list[tuple[int, int]] = []
        covered = 0
        base = None
        while True:
            for _seq, chunk_id, bits in self.meta.versions(txn, vol, idx, seq):
                if bits is None:
                    base = chunk_id or None
                    break
                fresh = bits & ~covered
                if fresh:
                    partials.append((chunk_id, fresh))
                    covered |= fresh
                    if covered == self.full_bits:
                        break
            else:
                source = self._source(txn, cache, vol)
                if source is not None and idx * self.chunk_size < source.length:
                    vol, seq = source.vol, source.seq
                    continue
            break
        if not partials:
            return base
        return Layers(tuple(partials), base)

    def resolve(self, vol: int, idx: int, seq: int) -> Resolution:
        """What index idx of the volume as of seq reads from, committed state (for flatten)."""
        with self.meta.read() as txn:
            return self._mapped(txn, self._snapshot(txn), vol, idx, seq)

    # -- IO -------------------------------------------------------------------------------

    def read(self, vol: int, offset: int, length: int, clamp: bool = False,
             nowait: bool = False, readahead: int = 0, seq: int | None = None,
             seq_length: int = 0) -> bytes:
        """length bytes at offset; with clamp, fewer at the end of the volume instead of an
        OutOfRangeError. With nowait, WouldBlock unless the data is in the page cache, and then
        `readahead` bytes past the end (within the last chunk) start coming in too. With seq,
        the volume as of that sequence (a snapshot, `seq_length` bytes long)."""
        try:
            return self._read(vol, offset, length, clamp, nowait, readahead, seq, seq_length)
        except ChunkGone:
            return self._look_again(self._read, vol, offset, length, clamp, nowait, readahead,
                                    seq, seq_length)

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

    def _pending(self, vol: int, first: int, last: int) -> dict[int, Resolution]:
        """This process's unflushed chunks of [first, last], read before the transaction
        begins: a chunk that left `pending` did so after its mapping was committed, so the
        transaction sees it."""
        unflushed = self._unflushed.get(vol)
        pending: dict[int, Resolution] = {}
        if unflushed is None:
            return pending
        if unflushed.new:
            for idx in range(first, last + 1):
                chunk_id = unflushed.new.get(idx)
                if chunk_id is not None:
                    pending[idx] = chunk_id
        if unflushed.partial:
            for idx in range(first, last + 1):
                partial = unflushed.partial.get(idx)
                if partial is not None and partial.bits and idx not in pending:
                    pending[idx] = Layers(((partial.chunk_id, partial.bits),), None)
        return pending

    def _read(self, vol: int, offset: int, length: int, clamp: bool, nowait: bool,
              readahead: int, seq: int | None, seq_length: int) -> bytes:
        size = self.chunk_size
        first, last = offset // size, (offset + length - 1) // size
        live = seq is None
        unflushed = self._unflushed.get(vol) if live else None
        pending = self._pending(vol, first, last) if unflushed else {}
        txn = self.meta.begin_read()
        try:
            cache = self._snapshot(txn)
            vol_length, live_seq = self._head(txn, cache, vol)
            if live:
                seq = live_seq
                if unflushed and unflushed.length > vol_length:
                    vol_length = unflushed.length
            else:
                vol_length = seq_length
            if offset + length > vol_length:
                if not clamp:
                    raise OutOfRangeError(f'read [{offset}, {offset + length}) past the end '
                                          f'({vol_length})')
                length = max(0, vol_length - offset)
                last = (offset + length - 1) // size
            if first == last and not pending:  # the common case: one chunk
                source = self._mapped(txn, cache, vol, first, seq)
                sources = None
            else:
                sources = [(self._with_pending(pending.get(idx),
                                               lambda idx=idx: self._mapped(txn, cache, vol,
                                                                            idx, seq)),
                            in_chunk, n)
                           for idx, in_chunk, _at, n in self._pieces(offset, length)]
        finally:
            txn.abort()
        if sources is None:  # one chunk: the hot path, kept free of lists
            in_chunk = offset - first * size
            if type(source) is int:
                return self.chunks.pread(source, length, in_chunk, nowait,
                                         min(readahead, size - in_chunk - length))
            return self.read_resolved(source, in_chunk, length, nowait)
        ahead = [0] * (len(sources) - 1) + [readahead]
        return b''.join(self.chunks.pread(source, n, in_chunk, nowait,
                                          min(extra, size - in_chunk - n))
                        if type(source) is int else
                        self.read_resolved(source, in_chunk, n, nowait)
                        for (source, in_chunk, n), extra in zip(sources, ahead))

    @staticmethod
    def _with_pending(pending: Resolution, committed: Callable[[], Resolution]) -> Resolution:
        """Unflushed state over the committed: a new chunk hides it, a partial lies on top."""
        if pending is None:
            return committed()
        if type(pending) is int:
            return pending
        below = committed()
        if below is None or type(below) is int:
            return Layers(pending.partials, below)
        mine = pending.partials[0]
        rest = tuple((chunk_id, bits & ~mine[1]) for chunk_id, bits in below.partials
                     if bits & ~mine[1])
        return Layers((mine,) + rest, below.base)

    def read_resolved(self, source: Resolution, in_chunk: int, length: int,
                      nowait: bool = False) -> bytes:
        """Bytes [in_chunk, +length) of a chunk version."""
        if source is None:
            return bytes(length)
        if type(source) is int:
            return self.chunks.pread(source, length, in_chunk, nowait)
        return b''.join(bytes(n) if chunk_id is None else
                        self.chunks.pread(chunk_id, n, at, nowait)
                        for chunk_id, at, n in self._runs(source, in_chunk, length))

    @staticmethod
    def _runs(layers: Layers, in_chunk: int,
              length: int) -> list[tuple[int | None, int, int]]:
        """(chunk id or None, offset, size): which file each stretch of the range reads."""
        runs: list[tuple[int | None, int, int]] = []
        pos, end = in_chunk, in_chunk + length
        block = pos // BLOCK_SIZE
        while pos < end:
            chunk_id = layers.base
            for candidate, bits in layers.partials:
                if bits >> block & 1:
                    chunk_id = candidate
                    break
            stop = min((block + 1) * BLOCK_SIZE, end)
            if runs and runs[-1][0] == chunk_id:
                runs[-1] = (chunk_id, runs[-1][1], stop - runs[-1][1])
            else:
                runs.append((chunk_id, pos, stop - pos))
            pos, block = stop, block + 1
        return runs

    def write(self, vol: int, offset: int, data: bytes | memoryview, grow: bool = False,
              nowait: bool = False) -> int:
        """Write all of data at offset. Past the end is an error, or with grow the volume
        grows (committed with the data at the next flush).

        With nowait, WouldBlock (before anything changed) if the write must allocate or free a
        chunk, or copy blocks, which writes metadata or reads. A page-cache write itself is not
        proven non-blocking (Linux refuses RWF_NOWAIT for buffered writes on ext4): the kernel
        may throttle a writer that dirties memory faster than the disk drains it.
        """
        try:
            return self._write(vol, offset, data, grow, nowait, False)
        except (ChunkGone, _NeedsCow, _SequenceMoved):
            return self._write_slowly(vol, offset, data, grow, nowait)

    def _write_slowly(self, vol: int, offset: int, data: bytes | memoryview, grow: bool,
                      nowait: bool) -> int:
        """A write that starts or extends a partial chunk, or met a freed chunk or a snapshot
        taken elsewhere: under cow_lock, after a flush if the volume moved on. Only these
        come here, so the hot path pays no extra call."""
        for attempt in range(_LOOKUP_ATTEMPTS):
            releases: list[int] = []
            try:
                with self.cow_lock:
                    written = self._write(vol, offset, data, grow, nowait, True, releases)
            except ChunkGone:
                if attempt == _LOOKUP_ATTEMPTS - 1:
                    raise
                continue
            except _SequenceMoved:
                self.flush(vol)
                continue
            if releases:  # after cow_lock: releasing takes flush_lock, which comes first
                self._release_chunks(vol, releases)
            return written
        raise StorageError(f'volume {vol} kept being snapshotted under a write')

    def _write(self, vol: int, offset: int, data: bytes | memoryview, grow: bool,
               nowait: bool, cow: bool, deferred: list[int] | None = None) -> int:
        """One attempt at a write; whole chunks of zeros are released at the end, or with
        `deferred` left to the caller (which holds cow_lock)."""
        view = memoryview(data).cast('B')
        length = len(view)
        targets: list[tuple[CachedFd, int, int, int, int, _Partial | None]] = []
        releases: list[int] = []
        admitted = False
        try:
            with self.io_lock:
                frozen = self._frozen.get(vol)
                while frozen is not None and frozen[0] != threading.get_ident():
                    self._gate.wait()
                    frozen = self._frozen.get(vol)
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
                        piece = view[at:at + n]
                        target = self._place(txn, cache, vol, seq, unflushed, idx, in_chunk, n,
                                             piece, nowait, cow)
                        if target is None:
                            continue
                        if target == 'release':
                            releases.append(idx)
                            continue
                        targets.append((*target, at))
                    if grows:
                        unflushed.length = end
                    unflushed.mtime_ns = time.time_ns()
                self._inflight[vol] = self._inflight.get(vol, 0) + 1
                admitted = True
            for entry, _chunk_id, in_chunk, n, _partial, at in targets:
                self.chunks.pwrite(entry, view[at:at + n], in_chunk)
        finally:
            for entry, *_ in targets:
                self.chunks.release(entry)
            if admitted:
                with self.io_lock:
                    # Marked for fsync only now that the data is in: a flush that ran during
                    # the pwrite must not have been the one to take these chunks off the list.
                    if targets:
                        self._unflushed.setdefault(vol, _Unflushed()).written.update(
                            chunk_id for _e, chunk_id, *_ in targets)
                    for _entry, _chunk_id, in_chunk, n, partial, _at in targets:
                        if partial is not None:
                            partial.bits |= block_mask(in_chunk, n)
                    self._inflight[vol] -= 1
                    if not self._inflight[vol]:
                        del self._inflight[vol]
                        self._gate.notify_all()
        if deferred is not None:
            deferred.extend(releases)
        elif releases:
            self._release_chunks(vol, releases)
        return length

    def _place(self, txn: lmdb.Transaction, cache: '_SnapshotCache', vol: int, seq: int,
               unflushed: _Unflushed, idx: int, in_chunk: int, n: int, piece: memoryview,
               nowait: bool, cow: bool) -> _Target | str | None:
        """Where one piece of a write goes: (pinned chunk, chunk id, offset, size, the partial
        whose bits it sets), 'release' (a whole chunk of zeros), or None (nothing to write)."""
        chunk_id = unflushed.new.get(idx)
        if chunk_id is not None:
            return self._in_place(chunk_id, in_chunk, n, piece, nowait)
        exact = self._exact(txn, cache, vol, idx, seq)
        if exact is not None and exact[1] is None and exact[0]:  # a full chunk of this version
            return self._in_place(exact[0], in_chunk, n, piece, nowait)
        committed = exact[1] if exact is not None and exact[1] is not None else 0
        partial = unflushed.partial.get(idx)
        if partial is not None:
            if partial.seq != seq:
                raise WouldBlock() if nowait else _SequenceMoved()
            if not partial.created and (not committed or exact[0] != partial.chunk_id):
                self._give_way(vol, unflushed, idx, partial)  # replaced by another process
                partial = None
        target, have = (exact[0], committed) if committed else (0, 0)
        if partial is not None:  # its bits add to the committed ones of the same chunk
            have = partial.bits | (have if target == partial.chunk_id else 0)
            target = partial.chunk_id
        wanted = block_mask(in_chunk, n)
        if wanted & ~have == 0:
            # Blocks this version's partial chunk already holds: in place, the hot path.
            return self.chunks.acquire(target), target, in_chunk, n, None
        if nowait:
            raise WouldBlock()  # a new chunk, or copy-on-write
        below = self._mapped(txn, cache, vol, idx, seq)
        nothing_below = partial is None and below is None
        if n == self.chunk_size or nothing_below:
            # Nothing older shows through, or all of it is overwritten: a chunk of its own.
            if piece == self._zeros[:n]:
                return None if nothing_below else 'release'
            if partial is not None:
                self._drop_partial(unflushed, idx)
            chunk_id = self._new_chunk_id()
            # The mapping is remembered only once the file exists: a failed create (no space,
            # no inodes, no fds) leaves nothing to commit.
            entry = self.chunks.acquire(chunk_id, create=True)
            unflushed.new[idx] = chunk_id
            return entry, chunk_id, in_chunk, n, None
        if not cow:
            raise _NeedsCow()
        if partial is None:
            if committed:
                partial = _Partial(exact[0], seq, created=False)
                entry = self.chunks.acquire(partial.chunk_id)
            else:
                partial = _Partial(self._new_chunk_id(), seq, created=True)
                entry = self.chunks.acquire(partial.chunk_id, create=True)
            unflushed.partial[idx] = partial
        else:
            entry = self.chunks.acquire(partial.chunk_id)
        try:
            self._copy_edges(entry, below, in_chunk, n, wanted & ~have)
        except BaseException:
            self.chunks.release(entry)
            raise
        return entry, partial.chunk_id, in_chunk, n, partial

    def _in_place(self, chunk_id: int, in_chunk: int, n: int, piece: memoryview,
                  nowait: bool) -> tuple[CachedFd, int, int, int, None] | str:
        if n == self.chunk_size:
            if nowait:
                raise WouldBlock()
            if piece == self._zeros[:n]:
                # A whole chunk of zeros gives its chunk back (the only discard FUSE lets us see).
                return 'release'
        return self.chunks.acquire(chunk_id), chunk_id, in_chunk, n, None

    def _copy_edges(self, entry: CachedFd, below: Resolution, in_chunk: int, n: int,
                    missing: int) -> None:
        """Before a write covers part of a block new to the partial chunk, the rest of that
        block comes from below (the first and last block are the only ones a write can cover
        partly)."""
        for start in {in_chunk // BLOCK_SIZE, (in_chunk + n - 1) // BLOCK_SIZE}:
            at = start * BLOCK_SIZE
            if not missing >> start & 1 or (at >= in_chunk and at + BLOCK_SIZE <= in_chunk + n):
                continue
            if below is not None:
                self.chunks.pwrite(entry, self.read_resolved(below, at, BLOCK_SIZE), at)

    def _drop_partial(self, unflushed: _Unflushed, idx: int) -> None:
        """A whole-chunk write replaces a partial chunk: an uncommitted one's file goes now, a
        committed one's when the replacement is committed."""
        partial = unflushed.partial.pop(idx)
        if partial.created:
            unflushed.written.discard(partial.chunk_id)
            if partial.chunk_id in self._committing:
                self._dropped.append(partial)  # the flush under way may map it: it decides
            else:
                self.chunks.remove(partial.chunk_id)

    def _settle_dropped(self) -> None:
        """After a flush: the new partial chunks replaced during it go unless it mapped them
        (a mapped one is freed by the commit of what replaced it)."""
        with self.io_lock:
            dropped, self._dropped, self._committing = self._dropped, [], set()
        for partial in dropped:
            if partial.created:
                self.chunks.remove(partial.chunk_id)

    def _new_chunk_id(self) -> int:
        chunk_id = next(self._free_ids, None)
        if chunk_id is None:
            first = self.meta.write(self._reserve_ids)
            self._free_ids = iter(range(first, first + _RESERVE_BATCH))
            chunk_id = next(self._free_ids)
        return chunk_id

    def new_chunk(self) -> tuple[int, CachedFd]:
        """A fresh chunk file from this process's reserved ids, pinned (flatten's copies)."""
        with self.io_lock:
            chunk_id = self._new_chunk_id()
        return chunk_id, self.chunks.acquire(chunk_id, create=True)

    def _reserve_ids(self, txn: lmdb.Transaction) -> int:
        first = self.meta.next_id(txn, 'chunk', _RESERVE_BATCH)
        txn.put(reserved_key(*self.identity, first), U64.pack(first + _RESERVE_BATCH),
                db=self.meta.db['reserved'])
        return first

    def older_versions_show(self, txn: lmdb.Transaction, node: Node, idx: int) -> bool:
        """Whether a version below the live one, or the clone source, has chunk idx."""
        for seq, _chunk_id, _bits in self.meta.versions(txn, node.id, idx, node.seq - 1):
            return True
        source = clone_source(node)
        return source is not None and idx * self.chunk_size < source.length

    def _release_chunks(self, vol: int, releases: list[int]) -> None:
        """Chunks that now hold only zeros: their live entry goes (or becomes a tombstone where
        an older version or the clone source would show through), then their files. Other
        writes to the volume wait meanwhile: one deciding on the old mapping between the drop of
        the pending state and the commit would lay its blocks over the tombstone, or into a
        chunk this frees."""
        with self.flush_lock, self.frozen(vol):
            with self.io_lock:
                unflushed = self._unflushed.setdefault(vol, _Unflushed())
                for idx in releases:
                    chunk_id = unflushed.new.pop(idx, None)
                    if chunk_id is not None:
                        unflushed.written.discard(chunk_id)
                        self.chunks.remove(chunk_id)
                    if idx in unflushed.partial:
                        self._drop_partial(unflushed, idx)

            def unmap(txn: lmdb.Transaction) -> list[int]:
                node = self.meta.get_node(txn, vol)
                if node is None:
                    return []
                gone = []
                for idx in releases:
                    key = map_key(vol, idx, node.seq)
                    raw = txn.get(key, db=self.meta.db['chunkmap'])
                    if raw is not None:
                        gone.append(decode_map_value(raw)[0])
                    if self.older_versions_show(txn, node, idx):
                        txn.put(key, U64.pack(0), db=self.meta.db['chunkmap'])
                    elif raw is not None:
                        txn.delete(key, db=self.meta.db['chunkmap'])
                return [chunk_id for chunk_id in gone if chunk_id]

            self.discard_chunks(self.meta.write(unmap))

    # -- durability -----------------------------------------------------------------------

    @contextmanager
    def frozen(self, vol: int) -> Iterator[None]:
        """No write of this process to vol is in flight or starts until the block ends (the
        calling thread may still write)."""
        me = threading.get_ident()
        with self.io_lock:
            while vol in self._frozen and self._frozen[vol][0] != me:
                self._gate.wait()
            depth = self._frozen.get(vol, (me, 0))[1]
            self._frozen[vol] = (me, depth + 1)
            while self._inflight.get(vol):
                self._gate.wait()
        try:
            yield
        finally:
            with self.io_lock:
                if depth:
                    self._frozen[vol] = (me, depth)
                else:
                    del self._frozen[vol]
                self._gate.notify_all()

    def flush(self, vol: int) -> None:
        """Make everything this process wrote to vol durable and visible to other processes."""
        with self.flush_lock:
            try:
                for _attempt in range(_LOOKUP_ATTEMPTS):
                    if self._flush_once(vol):
                        return
                log.error('volume %d kept being snapshotted during a flush', vol)
            finally:
                self._settle_dropped()

    def _flush_once(self, vol: int) -> bool:
        """One flush attempt; False if a snapshot moved the volume on meanwhile (retry)."""
        with self.io_lock:
            unflushed = self._unflushed.get(vol)
            if unflushed is None or not unflushed.dirty:
                return True
        with self.meta.read() as txn:
            node = self.meta.get_node(txn, vol)
        if node is not None and any(not p.created and p.seq != node.seq
                                    for p in list(unflushed.partial.values())):
            self._migrate(vol, node.seq)
        with self.io_lock:
            new = dict(unflushed.new)
            partials = {idx: (p, p.bits) for idx, p in unflushed.partial.items()}
            written, unflushed.written = unflushed.written, set()
            mtime_ns, grown_to = unflushed.mtime_ns, unflushed.length
            # New partial chunks this commit may map: one a whole-chunk write replaces meanwhile
            # keeps its file until the flush is over (see `_drop_partial`).
            self._committing = {p.chunk_id for p, bits in partials.values()
                                if p.created and bits}
        created = set(new.values()) | self._committing
        try:
            self.chunks.fsync_all(written)
            if created:
                self.chunks.fsync_dirs_of(created)
        except Exception:
            with self.io_lock:
                unflushed.written |= written
            raise

        lost: list[int] = []

        def commit(txn: lmdb.Transaction) -> list[int] | None:
            node = self.meta.get_node(txn, vol)
            if node is None:
                return list(created)
            if any(not p.created and p.seq != node.seq for p, _bits in partials.values()):
                return None  # snapshotted since the migration: go round again
            chunkmap = self.meta.db['chunkmap']
            stale = []
            lost.clear()
            node.length = max(node.length, grown_to)
            for idx, chunk_id in new.items():
                if idx * self.chunk_size >= node.length:
                    stale.append(chunk_id)
                    continue
                key = map_key(vol, idx, node.seq)
                old = txn.get(key, db=chunkmap)
                if old is not None:
                    stale.append(self._replaced(vol, idx, decode_map_value(old)))
                txn.put(key, U64.pack(chunk_id), db=chunkmap)
            for idx, (partial, bits) in partials.items():
                if idx in new or not bits:
                    continue  # a created partial with no block yet waits for its first
                if idx * self.chunk_size >= node.length:
                    stale.append(partial.chunk_id)
                    continue
                key = map_key(vol, idx, node.seq)
                old = txn.get(key, db=chunkmap)
                old_id, old_bits = (0, None) if old is None else decode_map_value(old)
                if old_id == partial.chunk_id:
                    bits = self.full_bits if old_bits is None else bits | old_bits
                elif not partial.created or old is not None:
                    # Another process's flush replaced (and freed) our committed partial
                    # chunk, or mapped this version of the chunk since ours was layered on
                    # what lay below: either way what ours sits on changed, so that flush wins.
                    lost.append(idx)
                    if partial.created:
                        stale.append(partial.chunk_id)
                    continue
                txn.put(key, encode_map_value(partial.chunk_id,
                                              None if bits == self.full_bits else bits,
                                              self.bitmap_bytes), db=chunkmap)
            if mtime_ns:
                node.mtime_ns = node.ctime_ns = max(node.mtime_ns, mtime_ns)
            self.meta.put_node(txn, node)
            return [chunk_id for chunk_id in stale if chunk_id]

        stale = self.meta.write(commit)
        with self.io_lock:
            if stale is None:
                unflushed.written |= written
                return False
            for idx in lost:
                self._give_way(vol, unflushed, idx, partials[idx][0])
            for idx, chunk_id in new.items():
                if unflushed.new.get(idx) == chunk_id:
                    del unflushed.new[idx]
            for idx, (partial, bits) in partials.items():
                if not bits:
                    continue
                partial.bits &= ~bits
                partial.created = False
                if not partial.bits and unflushed.partial.get(idx) is partial:
                    del unflushed.partial[idx]
            if unflushed.length == grown_to:
                unflushed.length = 0
            if not unflushed.dirty:
                self._unflushed.pop(vol, None)
        self.discard_chunks(stale)
        return True

    @staticmethod
    def _replaced(vol: int, idx: int, old: tuple[int, int | None]) -> int:
        """The chunk an entry named before this flush replaced it; it is garbage now. A full
        chunk there was allocated by another process meanwhile."""
        if old[0] and old[1] is None:
            log.warning('volume %d chunk %d was allocated by another process too; the later '
                        'flush wins', vol, idx)
        return old[0]

    @staticmethod
    def _give_way(vol: int, unflushed: _Unflushed, idx: int, partial: _Partial) -> None:
        """Drop unflushed blocks another process's later write has made stale (io_lock held)."""
        if unflushed.partial.get(idx) is partial:
            del unflushed.partial[idx]
        log.warning('volume %d chunk %d was overwritten by another process; this process\'s '
                    'unflushed blocks in it are dropped (the later write wins)', vol, idx)

    def _migrate(self, vol: int, seq: int) -> None:
        """Another process froze a committed partial chunk this process still has unflushed
        blocks in: copy those blocks to a new partial chunk at the live sequence, so the
        snapshot keeps what it had."""
        with self.frozen(vol):
            with self.io_lock:
                unflushed = self._unflushed.get(vol)
                moving = [(idx, p) for idx, p in (unflushed.partial.items() if unflushed else ())
                          if not p.created and p.seq != seq]
            for idx, old in moving:
                chunk_id, entry = self.new_chunk()
                try:
                    for block, count in block_runs(old.bits):
                        at, size = block * BLOCK_SIZE, count * BLOCK_SIZE
                        self.chunks.pwrite(entry, self.chunks.pread(old.chunk_id, size, at), at)
                except ChunkGone:  # freed: another process overwrote the chunk since
                    with self.io_lock:
                        self._give_way(vol, unflushed, idx, old)
                    self.chunks.remove(chunk_id)
                    continue
                finally:
                    self.chunks.release(entry)
                with self.io_lock:
                    unflushed.partial[idx] = _Partial(chunk_id, seq, created=True, bits=old.bits)
                    unflushed.written.add(chunk_id)
                log.info('volume %d chunk %d: %d unflushed blocks moved past a snapshot taken '
                         'elsewhere', vol, idx, bin(old.bits).count('1'))

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
        """Drop this process's unflushed state of a volume being destroyed or rolled back; the
        chunk ids it had created."""
        with self.io_lock:
            unflushed = self._unflushed.pop(vol, None)
        if unflushed is None:
            return []
        return list(unflushed.new.values()) + [p.chunk_id for p in unflushed.partial.values()
                                               if p.created]

    def drop_reservations(self) -> None:
        pid, ticks = self.identity

        def drop(txn: lmdb.Transaction) -> None:
            cur = txn.cursor(db=self.meta.db['reserved'])
            prefix = reserved_key(pid, ticks, 0)[:16]
            if cur.set_range(prefix):
                while cur.key().startswith(prefix):
                    if not cur.delete():
                        break

        self.meta.write(drop)

    def allocated_bytes(self, vol: int, seq: int | None = None) -> int:
        """Disk used by the volume's chunks: every version's and this process's pending ones,
        or with seq only those that version reads from this volume."""
        with self.meta.read() as txn:
            if seq is None:
                ids = {chunk_id for _idx, _seq, chunk_id, _bits
                       in self.meta.volume_chunks(txn, vol)}
            else:
                ids = set()
                hidden: dict[int, int] = {}
                for idx, entry_seq, chunk_id, bits in self.meta.volume_chunks(txn, vol):
                    covered = hidden.get(idx, 0)
                    if entry_seq > seq or covered == self.full_bits:
                        continue
                    if (bits if bits is not None else self.full_bits) & ~covered:
                        ids.add(chunk_id)
                    hidden[idx] = covered | (self.full_bits if bits is None else bits)
        if seq is None:
            unflushed = self._unflushed.get(vol)
            if unflushed:
                ids |= set(unflushed.new.values())
                ids |= {p.chunk_id for p in unflushed.partial.values() if p.created}
        ids.discard(0)
        return sum(self.chunks.allocated_bytes(chunk_id) for chunk_id in ids)
