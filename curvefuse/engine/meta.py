"""MetaStore: the store's one LMDB environment and the encoding of everything in it.

Key layout (integers are unsigned 64-bit big-endian, so LMDB's byte order is numeric order):

``config``    ascii key -> value. ``format`` (ascii int), ``chunk_size``, ``cluster_id``,
              ``root_password``.
``counters``  ascii key -> u64. ``node``: next node id. ``chunk``: next unreserved chunk id.
``nodes``     node id -> NODE_HEAD struct + JSON tail (see `Node`). Id 0 is ``/``, 1 is
              ``/RecycleBin``; user entries start at 3, as in Curve.
``dirents``   parent id + name bytes -> child node id.
``chunkmap``  volume id + chunk index + (2**64-1 - seq) -> chunk id [+ block bitmap]. The inverted
              sequence makes the newest version of a chunk sort first, so "the chunk as of
              sequence S" starts with one ``set_range`` to (vol, idx, ~S). A value of 8 bytes is
              a *full* entry: the chunk holds every block of that version (chunk id 0: a
              *tombstone*, all zeros, hiding older versions). A longer value is a *partial*
              entry: the bitmap (one bit per 4 KiB block, little-endian) says which blocks the
              chunk holds; the others come from the next older entry, and below the oldest from
              the clone source (see `Node.extra['clone']`) or zeros. Every chunk id is named by
              one entry at most. Seq 0 holds a flattened clone's copy of its source.
``snapshots`` volume id + snapshot name bytes -> JSON (see `SnapshotInfo` in store.py).
``xattrs``    node id + attribute name bytes -> value (the mount's ``user.*`` attributes).
``reserved``  pid + process start time + first chunk id -> end chunk id. A process writes chunk
              files with ids from its own reserved range before their mapping is committed; fsck
              uses the table to tell a live process's in-flight chunks from leaks.

One write transaction at a time per process (a `threading.Lock`, because LMDB's writer mutex
blocks the thread and py-lmdb raises if the same thread opens a second one). Every write goes
through `MetaStore.write(fn)`, which also grows the map when it fills.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import lmdb

from ..errors import FormatError, StorageError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ROOT_ID = 0
RECYCLE_ID = 1
FIRST_USER_ID = 3

KIND_DIRECTORY = 0  # Curve's CURVE_INODE_DIRECTORY
KIND_VOLUME = 1  # Curve's INODE_PAGEFILE

U64 = struct.Struct('>Q')
MAP_KEY = struct.Struct('>QQQ')
DIRENT_PREFIX = struct.Struct('>Q')
#: kind, status, parent, length, seq, btime_ns, mtime_ns, ctime_ns
NODE_HEAD = struct.Struct('>BBQQQQQQ')
MAX_U64 = 2**64 - 1

_DB_NAMES = ('config', 'counters', 'nodes', 'dirents', 'chunkmap', 'reserved', 'xattrs',
             'snapshots')
_INITIAL_MAP_SIZE = 2**36  # address space only: the file grows as pages are used
T = TypeVar('T')


@dataclass
class Node:
    """A directory or volume. The head fields are fixed-size for the IO path; the rest is JSON."""

    id: int
    kind: int
    status: int
    parent: int
    length: int
    seq: int
    btime_ns: int
    mtime_ns: int
    ctime_ns: int
    name: str = ''
    owner: str = ''
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_dir(self) -> bool:
        return self.kind == KIND_DIRECTORY

    def encode(self) -> bytes:
        head = NODE_HEAD.pack(self.kind, self.status, self.parent, self.length, self.seq,
                              self.btime_ns, self.mtime_ns, self.ctime_ns)
        tail = {'name': self.name, 'owner': self.owner}
        if self.extra:
            tail['extra'] = self.extra
        return head + json.dumps(tail, separators=(',', ':')).encode()

    @classmethod
    def decode(cls, node_id: int, raw: bytes) -> 'Node':
        head = NODE_HEAD.unpack_from(raw)
        tail = json.loads(bytes(raw[NODE_HEAD.size:]))
        return cls(node_id, *head, name=tail['name'], owner=tail['owner'],
                   extra=tail.get('extra', {}))


def encode_name(name: str) -> bytes:
    """Names are str in the API; bytes that are not UTF-8 survive through surrogateescape."""
    return name.encode('utf-8', 'surrogateescape')


def decode_name(raw: bytes) -> str:
    return raw.decode('utf-8', 'surrogateescape')


def dirent_key(parent: int, name: str) -> bytes:
    return DIRENT_PREFIX.pack(parent) + encode_name(name)


def map_key(vol: int, idx: int, seq: int) -> bytes:
    return MAP_KEY.pack(vol, idx, MAX_U64 - seq)


def decode_map_key(key: bytes) -> tuple[int, int, int]:
    vol, idx, inv = MAP_KEY.unpack(key)
    return vol, idx, MAX_U64 - inv


def encode_map_value(chunk_id: int, bits: int | None, bitmap_bytes: int) -> bytes:
    """A full entry (bits None) or a partial one holding the blocks set in bits."""
    if bits is None:
        return U64.pack(chunk_id)
    return U64.pack(chunk_id) + bits.to_bytes(bitmap_bytes, 'little')


def decode_map_value(value: bytes) -> tuple[int, int | None]:
    """(chunk id, block bits or None for a full entry)."""
    chunk_id = U64.unpack_from(value)[0]
    if len(value) == U64.size:
        return chunk_id, None
    return chunk_id, int.from_bytes(value[U64.size:], 'little')


class MetaStore:
    """The LMDB environment of one store; one instance per process (see `Engine.open`)."""

    def __init__(self, path: str, create: bool = False):
        if not create and not os.path.exists(os.path.join(path, 'data.mdb')):
            raise FormatError(f'{os.path.dirname(path)} is not a curvefuse store (no metadata)')
        try:
            self.env = lmdb.open(path, map_size=_INITIAL_MAP_SIZE, max_dbs=len(_DB_NAMES) + 2,
                                 max_readers=1024, subdir=True, create=create, readahead=False,
                                 max_spare_txns=8)
        except lmdb.Error as exc:
            raise StorageError(f'cannot open metadata in {path}: {exc}') from exc
        self._write_lock = threading.Lock()
        self.db = {name: self.env.open_db(name.encode()) for name in _DB_NAMES}
        # Slots left behind by crashed readers would otherwise run out one day.
        self.env.reader_check()

    def close(self) -> None:
        self.env.close()

    def begin_read(self) -> lmdb.Transaction:
        """A read transaction for the IO path; the caller aborts it. Never hold one across an
        await or for a handle's lifetime."""
        try:
            return self.env.begin()
        except lmdb.MapResizedError:
            # Another process grew the map; adopt its size.
            self.env.set_mapsize(0)
            return self.env.begin()

    @contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        """A short read transaction, as a context manager."""
        txn = self.begin_read()
        try:
            yield txn
        finally:
            txn.abort()

    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run fn(txn) in one write transaction and commit; the only way anything is written.

        `fn` may run twice (after the map was grown), so it must not have effects outside txn.
        """
        with self._write_lock:
            for _attempt in range(8):
                try:
                    with self.env.begin(write=True) as txn:
                        return fn(txn)
                except lmdb.MapFullError:
                    new_size = self.env.info()['map_size'] * 2
                    log.info('metadata map full, growing it to %d bytes', new_size)
                    self.env.set_mapsize(new_size)
                except lmdb.MapResizedError:
                    self.env.set_mapsize(0)
            raise StorageError('metadata map could not be grown')

    # -- small typed accessors, used inside transactions ------------------------------------

    def get_node(self, txn: lmdb.Transaction, node_id: int) -> Node | None:
        raw = txn.get(U64.pack(node_id), db=self.db['nodes'])
        return None if raw is None else Node.decode(node_id, raw)

    def put_node(self, txn: lmdb.Transaction, node: Node) -> None:
        txn.put(U64.pack(node.id), node.encode(), db=self.db['nodes'])

    def lookup(self, txn: lmdb.Transaction, parent: int, name: str) -> int | None:
        raw = txn.get(dirent_key(parent, name), db=self.db['dirents'])
        return None if raw is None else U64.unpack(raw)[0]

    def link(self, txn: lmdb.Transaction, parent: int, name: str, child: int) -> None:
        txn.put(dirent_key(parent, name), U64.pack(child), db=self.db['dirents'])

    def unlink(self, txn: lmdb.Transaction, parent: int, name: str) -> None:
        txn.delete(dirent_key(parent, name), db=self.db['dirents'])

    def entries(self, txn: lmdb.Transaction, parent: int,
                after: str | None = None) -> Iterator[tuple[str, int]]:
        """(name, child id) of a directory in name order, starting after `after`."""
        prefix = DIRENT_PREFIX.pack(parent)
        cur = txn.cursor(db=self.db['dirents'])
        start = prefix if after is None else dirent_key(parent, after) + b'\0'
        if not cur.set_range(start):
            return
        for key, value in cur:
            if not key.startswith(prefix):
                return
            yield decode_name(key[len(prefix):]), U64.unpack(value)[0]

    def has_entries(self, txn: lmdb.Transaction, parent: int) -> bool:
        return next(self.entries(txn, parent), None) is not None

    def next_id(self, txn: lmdb.Transaction, counter: str, count: int = 1) -> int:
        """Take `count` consecutive ids from a counter; returns the first."""
        key = counter.encode()
        raw = txn.get(key, db=self.db['counters'])
        first = U64.unpack(raw)[0]
        txn.put(key, U64.pack(first + count), db=self.db['counters'])
        return first

    def get_config(self, txn: lmdb.Transaction, key: str) -> str | None:
        raw = txn.get(key.encode(), db=self.db['config'])
        return None if raw is None else raw.decode()

    def put_config(self, txn: lmdb.Transaction, key: str, value: str) -> None:
        txn.put(key.encode(), value.encode(), db=self.db['config'])

    def versions(self, txn: lmdb.Transaction, vol: int, idx: int,
                 seq: int = MAX_U64) -> Iterator[tuple[int, int, int | None]]:
        """(seq, chunk id, bits or None) of chunk idx's entries with a sequence <= seq, newest
        first."""
        cur = txn.cursor(db=self.db['chunkmap'])
        if not cur.set_range(map_key(vol, idx, seq)):
            return
        prefix = MAP_KEY.pack(vol, idx, 0)[:16]
        for key, value in cur:
            if key[:16] != prefix:
                return
            yield (MAX_U64 - MAP_KEY.unpack(key)[2], *decode_map_value(value))

    def volume_chunks(self, txn: lmdb.Transaction,
                      vol: int) -> Iterator[tuple[int, int, int, int | None]]:
        """(index, seq, chunk id, bits or None) of every entry of a volume, in index order and
        newest first within an index."""
        prefix = U64.pack(vol)
        cur = txn.cursor(db=self.db['chunkmap'])
        if not cur.set_range(prefix):
            return
        for key, value in cur:
            if not key.startswith(prefix):
                return
            _, idx, seq = decode_map_key(key)
            yield (idx, seq, *decode_map_value(value))

    def delete_prefix(self, txn: lmdb.Transaction, name: str, prefix: bytes) -> int:
        """Delete every key of a sub-database that starts with prefix; how many went."""
        cur = txn.cursor(db=self.db[name])
        count = 0
        if cur.set_range(prefix):
            while cur.key().startswith(prefix) and cur.delete():
                count += 1
        return count

    def iter_db(self, txn: lmdb.Transaction, name: str) -> Iterator[tuple[bytes, bytes]]:
        return iter(txn.cursor(db=self.db[name]))
