"""The Pythonic API: a store of volumes, with exceptions and file objects.

    import curvefuse
    with curvefuse.open_store('/var/lib/curvefuse', create=True) as store:
        store.create('/vm1', '10G')
        with store.open('/vm1', 'r+b') as disk:
            disk.write(b'hello')

Errors are `curvefuse.EngineError` subclasses (`NotFoundError`, `ExistsError`, ...), each
carrying the code Curve would return (`exc.code`) and the errno the mount would give (`exc.errno`).
`CBDClient` is a thin adapter over this module.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .engine import (BLOCK_SIZE, DEFAULT_CHUNK_SIZE, DEFAULT_ROOT_PASSWORD, CloneState, Engine,
                     Node, VolumeHandle)
from .engine.fsck import FsckReport, fsck
from .engine.meta import KIND_DIRECTORY
from .engine.store import SnapshotInfo, check_snapshot_name, split_snapshot_path
from .errors import (ExistsError, InvalidArgumentError, NotFoundError, OutOfRangeError,
                     ReadOnlyError)

_SIZE = re.compile(r'^\s*(\d+)\s*([kmgtp]?)(i?b)?\s*$', re.IGNORECASE)
_UNITS = {'': 1, 'k': 2**10, 'm': 2**20, 'g': 2**30, 't': 2**40, 'p': 2**50}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as "10G", "512MiB", "4096" (binary units)."""
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    if isinstance(size, str):
        match = _SIZE.match(size)
        if match:
            return int(match.group(1)) * _UNITS[match.group(2).lower()]
    raise InvalidArgumentError(f'not a size: {size!r} (use bytes or e.g. "10G", "512MiB")')


def snapshot_spec(spec: str) -> tuple[str, str]:
    """"/vol@snap" as (volume path, snapshot name); refused without "@snap"."""
    volume, name = split_snapshot_path(spec)
    if name is None:
        raise InvalidArgumentError(f'{spec!r} names no snapshot (use VOLUME@SNAPSHOT)')
    check_snapshot_name(name)
    return volume, name


@dataclass(frozen=True)
class Entry:
    """What `Store.stat` and `Store.listdir` tell about a directory or volume."""

    name: str
    id: int
    parent_id: int
    is_dir: bool
    length: int
    owner: str
    status: int
    created: datetime
    modified: datetime
    original_path: str | None  # set for volumes in /RecycleBin

    @classmethod
    def from_node(cls, node: Node) -> 'Entry':
        return cls(node.name, node.id, node.parent, node.kind == KIND_DIRECTORY, node.length,
                   node.owner, node.status, _when(node.btime_ns), _when(node.mtime_ns),
                   node.extra.get('original_path'))


def _when(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)


@dataclass(frozen=True)
class Snapshot:
    """A named snapshot of a volume (`Store.snapshots`)."""

    volume: str  # the volume's path
    name: str
    uuid: str
    length: int
    created: datetime
    protected: bool
    clones: int  # how many clones depend on it
    id: int  # unique among entry and snapshot ids
    volume_id: int
    owner: str  # the volume's owner

    @property
    def path(self) -> str:
        """Curve's "volume@snapshot" form, which `Store.open` and CBDClient accept."""
        return f'{self.volume}@{self.name}'

    @classmethod
    def from_info(cls, volume: str, info: SnapshotInfo) -> 'Snapshot':
        return cls(volume, info.name, info.uuid, info.length, _when(info.created_ns),
                   info.protected, len(info.children), info.id, info.vol_id, info.owner)


def open_store(data_dir: str, *, create: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE,
               root_password: str = DEFAULT_ROOT_PASSWORD) -> 'Store':
    """Open (with create, make if missing) the store in data_dir as its trusted owner.

    `chunk_size` and `root_password` apply only when the store is created.
    """
    store = Store(Engine.open(data_dir, create=create, chunk_size=chunk_size,
                              root_password=root_password))
    store._owns_engine = True
    return store


class Store:
    """A curvefuse store, acting as one user. Thread-safe; usable as a context manager.

    Get one with `open_store`; `as_user` gives views that obey Curve's owner rules.
    """

    def __init__(self, engine: Engine, user: str | None = None):
        self._engine = engine
        self.user = user
        self._owns_engine = False

    def as_user(self, owner: str, password: str = '') -> 'Store':
        """A view of this store that obeys Curve's owner rules for `owner` (root needs the
        store's root password). Closing the view does not close the store."""
        self._engine.authenticate(owner, password)
        return Store(self._engine, owner)

    def close(self) -> None:
        """Flush everything and close (only the `open_store` object closes the store)."""
        if self._owns_engine:
            self._owns_engine = False
            self._engine.close()

    def __enter__(self) -> 'Store':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def cluster_id(self) -> str:
        """A UUID made when the store was created (Curve's GetClusterId)."""
        return self._engine.cluster_id

    @property
    def chunk_size(self) -> int:
        return self._engine.chunk_size

    # -- namespace ------------------------------------------------------------------------

    def create(self, path: str, size: int | str, *, exist_ok: bool = False) -> Entry:
        """A new thin volume of `size` bytes (a positive multiple of 4 KiB)."""
        try:
            return Entry.from_node(self._engine.create_volume(path, parse_size(size), self.user))
        except ExistsError:
            if exist_ok and not self.stat(path).is_dir:
                return self.stat(path)
            raise

    def mkdir(self, path: str) -> Entry:
        return Entry.from_node(self._engine.mkdir(path, self.user))

    def stat(self, path: str) -> Entry:
        return Entry.from_node(self._engine.stat(path, self.user))

    def exists(self, path: str) -> bool:
        try:
            self._engine.stat(path, self.user)
        except NotFoundError:
            return False
        return True

    def listdir(self, path: str = '/') -> list[Entry]:
        return [Entry.from_node(node) for node in self._engine.listdir(path, self.user)]

    def remove(self, path: str) -> None:
        """Move a volume to /RecycleBin (Curve's Unlink), or remove an empty directory."""
        self._engine.remove(path, self.user)

    def recover(self, path: str, file_id: int = 0) -> Entry:
        """Bring a volume back from /RecycleBin to path (by id, or the newest deleted there)."""
        return Entry.from_node(self._engine.recover(path, self.user, file_id))

    def delete_forever(self, path: str) -> None:
        """Destroy a volume in /RecycleBin and free its space (Curve's DeleteForce)."""
        self._engine.delete_force(path, self.user)

    def empty_recycle_bin(self, deleted_before: datetime | None = None) -> int:
        before_ns = None if deleted_before is None else int(deleted_before.timestamp() * 1e9)
        return self._engine.purge_recycle_bin(self.user, before_ns)

    def rename(self, old: str, new: str) -> None:
        self._engine.rename(old, new, self.user)

    def resize(self, path: str, size: int | str, allow_shrink: bool = False) -> Entry:
        """Grow a volume by a multiple of 4 KiB; shrink it only with allow_shrink (what lies
        past the new end is gone)."""
        return Entry.from_node(self._engine.resize(path, parse_size(size), self.user,
                                                   allow_shrink=allow_shrink))

    def chown(self, path: str, owner: str) -> None:
        self._engine.chown(path, owner, self.user)

    def allocated(self, path: str) -> int:
        """Bytes of disk a volume uses (thin: only what was written)."""
        return self._engine.allocated_bytes(path, self.user)

    def fsck(self, repair: bool = False,
             progress: Callable[[int, int], None] | None = None) -> FsckReport:
        """Check the store (see `curvefuse.engine.fsck`); progress(done, total) is called as
        the chunk map's entries are checked."""
        return fsck(self._engine, repair, progress)

    # -- snapshots and clones ---------------------------------------------------------------

    def snapshot(self, path: str, name: str, *, protect: bool = False) -> Snapshot:
        """Freeze the volume's content as `name` (instant; nothing is copied)."""
        return Snapshot.from_info(path, self._engine.create_snapshot(path, name, self.user,
                                                                     protect))

    def snapshots(self, path: str) -> list[Snapshot]:
        """The volume's snapshots, oldest first."""
        return [Snapshot.from_info(path, info)
                for info in self._engine.list_snapshots(path, self.user)]

    def get_snapshot(self, path: str, name: str) -> Snapshot:
        """One snapshot of the volume (NotFoundError if it has none of that name)."""
        return Snapshot.from_info(path, self._engine.get_snapshot(path, name, self.user))

    def snapshot_of(self, path: str) -> tuple[str, str] | None:
        """(volume path, snapshot name) when path is Curve's "vol@snap" (split at the last "@")
        and no volume of that literal name exists, which would win; else None."""
        volume, snapshot = split_snapshot_path(path)
        if snapshot is None or self.exists(path):
            return None
        return volume, snapshot

    def delete_snapshot(self, path: str, name: str, *, unprotect: bool = False) -> None:
        """Delete a snapshot and free what only it used. A protected one needs `unprotect`;
        one with clones is refused (`BusyError`)."""
        self._engine.delete_snapshot(path, name, self.user, unprotect)

    def protect(self, path: str, name: str) -> None:
        """Allow clones of the snapshot; a protected snapshot cannot be deleted."""
        self._engine.protect_snapshot(path, name, self.user)

    def unprotect(self, path: str, name: str) -> None:
        self._engine.unprotect_snapshot(path, name, self.user)

    def rollback(self, path: str, name: str) -> Entry:
        """Give the volume the snapshot's content and length again (the volume must not be
        open, and no newer snapshot may exist)."""
        return Entry.from_node(self._engine.rollback(path, name, self.user))

    def clone(self, path: str, name: str, dest: str, *, readonly: bool = False) -> Entry:
        """A new volume at dest with the (protected) snapshot's content, made at once."""
        return Entry.from_node(self._engine.clone(path, name, dest, self.user, readonly))

    def flatten(self, path: str, *, wait: bool = True) -> None:
        """Copy what a clone still reads from its snapshot, so it no longer depends on it;
        without wait, in the background (see `flatten_progress`)."""
        self._engine.flatten(path, self.user, wait)

    def flatten_progress(self, path: str) -> int:
        """0-100 (100 for a volume that is not a clone)."""
        return self._engine.flatten_progress(path, self.user)

    def children(self, path: str, name: str | None = None) -> list[str]:
        """Paths of the clones of one snapshot of the volume, or of all its snapshots."""
        return self._engine.children(path, name, self.user)

    def changed_since(self, path: str, snapshot: str,
                      until: str | None = None) -> list[tuple[int, int]]:
        """(offset, length) of the parts of the volume written after `snapshot`, up to snapshot
        `until` or now (committed writes; whole chunks, within the newer version's length).
        Every byte that differs lies in one of them; a resize is not counted."""
        chunks = self._engine.changed_chunks(path, snapshot, until, self.user)
        length = (self._engine.stat(path, self.user) if until is None else
                  self._engine.get_snapshot(path, until, self.user)).length
        size = self.chunk_size
        return [(idx * size, min(size, length - idx * size)) for idx in chunks
                if idx * size < length]

    def clone_state(self, path: str) -> CloneState | None:
        """Where a clone reads from and how its flatten stands; None for a volume that is not
        (or no longer) a clone."""
        return self._engine.clone_state(self._engine.stat(path, self.user).id)

    def snapshot_allocated(self, path: str, name: str) -> int:
        """Bytes of disk the snapshot reads from the volume's chunks (shared with the volume
        and its other snapshots; a clone's reads from its source are not counted)."""
        snap = self._engine.get_snapshot(path, name, self.user)
        return self._engine.snapshot_allocated_bytes(snap.vol_id, snap.seq)

    # -- data -------------------------------------------------------------------------------

    def open(self, path: str, mode: str = 'rb') -> 'Volume':
        """A volume as a binary file: 'rb' to read, 'r+b' to read and write. "vol@snap" opens
        a snapshot ('rb' only)."""
        if mode not in ('rb', 'r+b', 'rb+'):
            raise InvalidArgumentError(f"mode must be 'rb' or 'r+b', not {mode!r}")
        snapshot = self.snapshot_of(path)
        if snapshot is not None:
            if mode != 'rb':
                raise ReadOnlyError(f'{path} is a snapshot; open it with mode "rb"')
            return Volume(self._engine.open_snapshot(*snapshot, self.user), path, mode)
        handle = self._engine.open_volume(path, self.user, writable=mode != 'rb')
        return Volume(handle, path, mode)


class Volume(io.RawIOBase):
    """An open volume as an unbuffered binary file of fixed length.

    Reading at the end returns b''; writing past the end raises `OutOfRangeError` (like a
    block device's ENOSPC) and writes nothing. `flush()` makes every write before it durable
    and visible to other processes. `pread`/`pwrite` do positional IO without moving the
    file position and may be used from several threads at once. `handle` is the engine's
    handle underneath: strict ranges (past the end is an error), no file position.
    """

    def __init__(self, handle: VolumeHandle, path: str, mode: str):
        super().__init__()
        self.handle = handle
        self.name = path
        self.mode = mode
        self._pos = 0
        self._pos_lock = threading.Lock()

    # io.RawIOBase's contract
    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return self.handle.writable

    def seekable(self) -> bool:
        return True

    def __len__(self) -> int:
        return self.handle.length()

    @property
    def size(self) -> int:
        return self.handle.length()

    def read(self, size: int = -1) -> bytes:
        """Up to size bytes from the current position; all the rest with -1 or None."""
        with self._pos_lock:
            if size is None or size < 0:
                size = max(0, self.size - self._pos)
            data = self.pread(size, self._pos)
            self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast('B')
        with self._pos_lock:
            data = self.pread(len(view), self._pos)
            view[:len(data)] = data
            self._pos += len(data)
        return len(data)

    def write(self, data: Any) -> int:
        with self._pos_lock:
            written = self.pwrite(data, self._pos)
            self._pos += written
        return written

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if self.closed:
            raise ValueError('I/O operation on closed volume')
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: None}.get(whence, -1)
        if base == -1:
            raise InvalidArgumentError(f'invalid whence {whence}')
        new = offset + (self.size if base is None else base)
        if new < 0:
            raise InvalidArgumentError('negative seek position')
        self._pos = new
        return new

    def tell(self) -> int:
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        raise io.UnsupportedOperation('a volume has a fixed length; use Store.resize to grow it')

    def flush(self) -> None:
        if not self.closed:
            self.handle.flush()

    def close(self) -> None:
        if not self.closed:
            try:
                super().close()  # flushes
            finally:
                self.handle.close()

    def pread(self, size: int, offset: int) -> bytes:
        """Up to size bytes at offset (fewer at the end of the volume)."""
        if self.closed:
            raise ValueError('I/O operation on closed volume')
        return self.handle.read(offset, size, clamp=True)

    def pwrite(self, data: Any, offset: int) -> int:
        """Write all of data at offset; nothing is written if it does not fit."""
        if self.closed:
            raise ValueError('I/O operation on closed volume')
        return self.handle.write(offset, data)

    def __repr__(self) -> str:
        return f'<curvefuse.Volume {self.name!r} mode={self.mode!r}>'

__all__ = ['BLOCK_SIZE', 'Entry', 'OutOfRangeError', 'Store', 'Volume', 'open_store', 'parse_size']
