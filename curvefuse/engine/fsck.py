"""fsck: check every invariant of a store, and repair what can be repaired without guessing.

Findings come in two grades, as in ``qemu-img check``:

- *corruption*: metadata that contradicts itself or points at data that is not there (a mapping to
  a missing chunk, a directory entry without its node, a node nobody can reach). Reads may be
  wrong. Not repaired automatically: a human decides.
- *leak*: space used by nothing (a chunk file no mapping names, a reservation of a dead process).
  Harmless but wasteful; ``repair=True`` frees it. A crash between writing a chunk and committing
  its mapping leaves exactly this.

Safe to run while other processes use the store: it reads one consistent LMDB snapshot, treats
unreferenced chunks inside a live process's reserved id range as in flight, and re-checks every
finding against a fresh snapshot before reporting it.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import lmdb

from .meta import (DIRENT_PREFIX, KIND_VOLUME, RECYCLE_ID, ROOT_ID, U64, Node, decode_map_key,
                   decode_map_value, decode_name)
from .store import Engine, SnapshotInfo
from .volumes import decode_reserved_key, process_alive

log = logging.getLogger(__name__)


@dataclass
class FsckReport:
    corruption: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    volumes: int = 0
    directories: int = 0
    chunks: int = 0
    snapshots: int = 0

    @property
    def clean(self) -> bool:
        return not self.corruption and not self.leaks

    @property
    def exit_code(self) -> int:
        """0 clean, 2 corruption, 3 leaks only (qemu-img check's codes)."""
        if self.corruption:
            return 2
        return 3 if self.leaks else 0

    def summary(self) -> str:
        state = ('clean' if self.clean else
                 f'{len(self.corruption)} corruption(s), {len(self.leaks)} leak(s)')
        return (f'{self.directories} directories, {self.volumes} volumes, {self.snapshots} '
                f'snapshots, {self.chunks} chunks: {state}' +
                (f'; repaired {len(self.repaired)}' if self.repaired else ''))


#: progress(done, total): chunk map entries checked so far, of all of them
Progress = Callable[[int, int], None]


class _Checker:
    def __init__(self, engine: Engine, progress: Progress | None = None):
        self.engine = engine
        self.meta = engine.meta
        self.report = FsckReport()
        self.progress = progress

    def run(self, repair: bool) -> FsckReport:
        with self.meta.read() as txn:
            nodes = self._check_nodes(txn)
            self._check_snapshots(txn, nodes)
            referenced = self._check_chunkmap(txn, nodes)
            live_ranges, dead_reservations = self._reservations(txn)
        self._check_chunk_files(referenced, live_ranges, dead_reservations, repair)
        return self.report

    def _corrupt(self, message: str) -> None:
        log.error('fsck: %s', message)
        self.report.corruption.append(message)

    def _check_nodes(self, txn: lmdb.Transaction) -> dict[int, Node]:
        nodes = {}
        for key, value in self.meta.iter_db(txn, 'nodes'):
            node_id = U64.unpack(key)[0]
            try:
                nodes[node_id] = Node.decode(node_id, value)
            except (ValueError, KeyError, struct.error) as exc:
                self._corrupt(f'node {node_id} is unreadable ({exc})')
        node_counter = U64.unpack(txn.get(b'node', db=self.meta.db['counters']))[0]
        for fixed in (ROOT_ID, RECYCLE_ID):
            if fixed not in nodes or not nodes[fixed].is_dir:
                self._corrupt(f'built-in directory {fixed} is missing')
        named: set[int] = set()
        for key, value in self.meta.iter_db(txn, 'dirents'):
            parent = DIRENT_PREFIX.unpack_from(key)[0]
            name = decode_name(bytes(key[DIRENT_PREFIX.size:]))
            child = U64.unpack(value)[0]
            node = nodes.get(child)
            if node is None:
                self._corrupt(f'entry {name!r} in directory {parent} names missing node {child}')
            elif (node.parent, node.name) != (parent, name):
                self._corrupt(f'entry {name!r} in {parent} names node {child}, which says it is '
                              f'{node.name!r} in {node.parent}')
            elif child in named:
                self._corrupt(f'node {child} has two names')
            if parent not in nodes or not nodes[parent].is_dir:
                self._corrupt(f'entry {name!r} lives in {parent}, which is not a directory')
            named.add(child)
        for node in nodes.values():
            if node.id >= node_counter:
                self._corrupt(f'node {node.id} is beyond the id counter {node_counter}')
            if node.id != ROOT_ID and node.id not in named:
                self._corrupt(f'node {node.id} ({node.name!r}) has no directory entry')
            if node.is_dir:
                self.report.directories += 1
            else:
                self.report.volumes += 1
            if not self._reaches_root(node, nodes):
                self._corrupt(f'node {node.id} ({node.name!r}) is not reachable from /')
        for key, _value in self.meta.iter_db(txn, 'xattrs'):
            if U64.unpack_from(key)[0] not in nodes:
                self._corrupt(f'extended attribute for missing node {U64.unpack_from(key)[0]}')
        return nodes

    @staticmethod
    def _reaches_root(node: Node, nodes: dict[int, Node]) -> bool:
        seen = set()
        while node.id != ROOT_ID:
            if node.id in seen or node.parent not in nodes:
                return False
            seen.add(node.id)
            node = nodes[node.parent]
        return True

    def _check_chunkmap(self, txn: lmdb.Transaction, nodes: dict[int, Node]) -> dict[int, str]:
        """Check every mapping; returns chunk id -> a description of its one user."""
        referenced: dict[int, str] = {}
        size = self.engine.chunk_size
        total = txn.stat(self.meta.db['chunkmap'])['entries']
        for done, (key, value) in enumerate(self.meta.iter_db(txn, 'chunkmap')):
            if self.progress is not None:
                self.progress(done, total)
            vol, idx, seq = decode_map_key(key)
            where = f'volume {vol} chunk {idx} (seq {seq})'
            if len(value) not in (U64.size, U64.size + self.engine.data.bitmap_bytes):
                self._corrupt(f'{where}: mapping of {len(value)} bytes')
                continue
            chunk_id, bits = decode_map_value(value)
            self.report.chunks += 1
            node = nodes.get(vol)
            if node is None or node.kind != KIND_VOLUME:
                self._corrupt(f'{where}: mapped for a volume that does not exist')
            elif idx * size >= node.length:
                self._corrupt(f'{where}: beyond the end of the volume ({node.length})')
            elif seq > node.seq:
                self._corrupt(f'{where}: newer than the volume (seq {node.seq})')
            if chunk_id == 0:
                if bits is not None:
                    self._corrupt(f'{where}: a partial mapping without a chunk')
                continue  # a tombstone: zeros, no file
            if chunk_id in referenced:
                self._corrupt(f'{where}: chunk {chunk_id:x} also used by {referenced[chunk_id]}')
            referenced[chunk_id] = where
            file_size = self.engine.chunks.size(chunk_id)
            if file_size is None:
                if self._still_mapped_and_missing(key, chunk_id):
                    self._corrupt(f'{where}: chunk file {chunk_id:x} is missing')
            elif file_size > size:
                self._corrupt(f'{where}: chunk file {chunk_id:x} is longer than a chunk')
        if self.progress is not None:
            self.progress(total, total)
        return referenced

    def _check_snapshots(self, txn: lmdb.Transaction, nodes: dict[int, Node]) -> None:
        """Snapshot records name live volumes and older sequences; clones and their sources'
        child lists agree."""
        children: dict[tuple[int, str], tuple[int, ...]] = {}
        for key, value in self.meta.iter_db(txn, 'snapshots'):
            vol = U64.unpack_from(key)[0]
            name = decode_name(bytes(key[U64.size:]))
            node = nodes.get(vol)
            if node is None or node.kind != KIND_VOLUME:
                self._corrupt(f'snapshot {name!r} of volume {vol}, which does not exist')
                continue
            snap = SnapshotInfo.decode(node, name, value)
            self.report.snapshots += 1
            if snap.seq >= node.seq:
                self._corrupt(f'snapshot {name!r} of volume {vol} has seq {snap.seq}, not older '
                              f'than the volume\'s {node.seq}')
            children[(vol, name)] = snap.children
            for child in snap.children:
                clone = nodes.get(child)
                source = None if clone is None else clone.extra.get('clone')
                if source is None or (source['vol'], source['snapshot']) != (vol, name):
                    self._corrupt(f'snapshot {name!r} of volume {vol} lists {child} as a clone, '
                                  f'which is not one of it')
        for node in nodes.values():
            source = node.extra.get('clone')
            if source is not None and node.id not in children.get(
                    (source['vol'], source['snapshot']), ()):
                self._corrupt(f'clone {node.id} ({node.name!r}) reads from snapshot '
                              f'{source["snapshot"]!r} of volume {source["vol"]}, which does not '
                              f'list it')

    def _still_mapped_and_missing(self, key: bytes, chunk_id: int) -> bool:
        """Re-check with a fresh snapshot: another process may have freed it meanwhile."""
        with self.meta.read() as txn:
            value = txn.get(key, db=self.meta.db['chunkmap'])
            still = value is not None and decode_map_value(value)[0] == chunk_id
        return still and self.engine.chunks.size(chunk_id) is None

    def _reservations(self, txn: lmdb.Transaction) -> tuple[list[range], list[bytes]]:
        live, dead = [], []
        for key, value in self.meta.iter_db(txn, 'reserved'):
            pid, ticks, first = decode_reserved_key(key)
            if process_alive(pid, ticks):
                live.append(range(first, U64.unpack(value)[0]))
            else:
                dead.append(bytes(key))
        return live, dead

    def _check_chunk_files(self, referenced: dict[int, str], live_ranges: list[range],
                           dead_reservations: list[bytes], repair: bool) -> None:
        fixes: list[tuple[str, Callable[[], None]]] = []
        unreferenced = [(chunk_id, path) for chunk_id, path in self.engine.chunks.all_files()
                        if chunk_id is None or (chunk_id not in referenced and
                                                not any(chunk_id in r for r in live_ranges))]
        if unreferenced:
            # Look again in a fresh snapshot: mappings committed since ours, and ids reserved
            # since ours by a process now writing them (a file we listed was reserved before it
            # was made, so before this snapshot).
            with self.meta.read() as txn:
                now_referenced = {U64.unpack_from(v)[0]
                                  for _k, v in self.meta.iter_db(txn, 'chunkmap')}
                live_now, _dead = self._reservations(txn)
        for chunk_id, path in unreferenced:
            if chunk_id is not None and (chunk_id in now_referenced or
                                         any(chunk_id in r for r in live_now)):
                continue
            fixes.append((f'unreferenced chunk file {os.path.relpath(path, self.engine.data_dir)}',
                          lambda path=path: os.unlink(path)))
        for key in dead_reservations:
            pid, _ticks, first = decode_reserved_key(key)
            fixes.append((f'reservation of chunk ids from {first:x} by dead process {pid}',
                          lambda key=key: self.meta.write(
                              lambda txn: txn.delete(key, db=self.meta.db['reserved']))))
        for message, fix in fixes:
            if repair:
                fix()
                self.report.repaired.append(message)
                log.info('fsck repaired: %s', message)
            else:
                log.warning('fsck: leak: %s', message)
                self.report.leaks.append(message)


def fsck(engine: Engine, repair: bool = False, progress: Progress | None = None) -> FsckReport:
    """Check the store behind `engine`; with repair, free the leaks found. progress, if given,
    is told how far the check of the chunk map (the bulk of the work) has come."""
    return _Checker(engine, progress).run(repair)

