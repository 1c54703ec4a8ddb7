"""CurveOperations: the store as a file tree, for pyfuse3. Translation only, no storage logic.

- Inode numbers (see `inodes`) are node ids + 1, so they are stable across remounts; the
  virtual ``.snapshots`` tree (see `snapshots`) has numbers of its own. Nodes and snapshots live
  in the store, not in this process, so nothing is freed in `forget`: the kernel's lookup counts
  need no bookkeeping here.
- Every other door may change the store at any time, so the kernel caches no entries and no
  attributes (timeouts 0) and drops a file's cached pages when it is opened (keep_cache off): a
  volume written and closed through CBDClient reads back new through the mount.
- Directories read and attribute lookups are short LMDB reads, done inline; chunk IO and every
  metadata write run in worker threads, so no handler blocks the trio loop.
- Handlers raise only FUSEError: engine errors become the errno of the one table in
  `curvefuse.errors`; anything unexpected is logged and answered with EIO.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from ..engine import (RECYCLE_ID, ROOT_ID, Engine, Node, VolumeHandle, WouldBlock,
                      join_path)
from ..errors import EngineError, ExistsError, ReadOnlyError, codes_for
from .inodes import DEFAULT_MODES, entry_attributes, inode_of, node_of
from .snapshots import SNAPSHOT_DIR, SnapshotTree, sets_time_to_now

log = logging.getLogger(__name__)
P = ParamSpec('P')
T = TypeVar('T')

XATTR_FACTS = 'user.curvefuse.'  # read-only attributes showing the engine's view of a node
ROOT_INODE = inode_of(ROOT_ID)
ALLOCATED_TTL = 1.0  # seconds st_blocks may lag behind writes made through other doors
READ_POLL_SECONDS = 0.002  # how long a read polls the page cache before a thread takes over
READAHEAD = 2**20  # bytes fetched ahead for a handle that reads sequentially


def fuse_errors(handler: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """The only exception a pyfuse3 handler may raise is FUSEError; anything else kills the
    mount. Engine errors map through the one table, the rest is a bug: logged, EIO."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except EngineError as exc:
            log.debug('%s: %s', handler.__name__, exc)
            raise pyfuse3.FUSEError(codes_for(exc).errno) from None
        except Exception:
            log.exception('unexpected error in %s', handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


def _posix(mode: int, ctx: Any) -> dict[str, int]:
    """The mode bits and owner a new node gets from the request that makes it."""
    return {'mode': stat.S_IMODE(mode), 'uid': ctx.uid, 'gid': ctx.gid}


class CurveOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, engine: Engine, read_only: bool = False, allow_shrink: bool = False):
        super().__init__()
        self.engine = engine
        self.read_only = read_only
        self.allow_shrink = allow_shrink
        self.snapshots = SnapshotTree(engine)
        self._files: dict[int, VolumeHandle] = {}
        self._dirs: dict[int, list[tuple[str, pyfuse3.EntryAttributes]]] = {}
        # volume or snapshot id (never equal) -> (when, bytes on disk)
        self._allocated: dict[int, tuple[float, int]] = {}
        self._read_ends: dict[int, int] = {}  # fh -> where its last read ended
        self._next_fh = 1
        # Bounds the worker threads (trio's own default is 40); LMDB writes serialize anyway.
        self._limiter = trio.CapacityLimiter(16)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _new_fh(self) -> int:
        fh, self._next_fh = self._next_fh, self._next_fh + 1
        return fh

    def _path(self, parent_inode: int, name: bytes | None = None) -> str:
        base = self.engine.path_of(node_of(parent_inode))
        if name is None:
            return base
        return join_path(base, _name(name))

    def _check_writable(self) -> None:
        if self.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)

    def _virtual(self, parent_inode: int, name: bytes | None = None) -> bool:
        """Whether the inode, or its entry `name`, is in the ``.snapshots`` tree."""
        return self.snapshots.owns(parent_inode) or (
            parent_inode == ROOT_INODE and name is not None and _name(name) == SNAPSHOT_DIR)

    # -- attributes ---------------------------------------------------------------------------

    def _attributes(self, node: Node, allocated: int = 0) -> pyfuse3.EntryAttributes:
        return entry_attributes(inode_of(node.id), node.is_dir,
                                node.extra.get('mode', DEFAULT_MODES[node.is_dir]),
                                node.extra.get('uid', 0), node.extra.get('gid', 0), node.length,
                                (node.mtime_ns, node.ctime_ns, node.btime_ns), allocated)

    async def _allocated_bytes(self, key: int, count: Callable[..., int], *args: Any) -> int:
        """st_blocks needs a stat of every chunk file (so in a thread), and the kernel asks for
        attributes before every read: the answer is kept until this mount writes the volume or
        ALLOCATED_TTL passes (for other doors' writes)."""
        cached = self._allocated.get(key)
        if cached is None or time.monotonic() - cached[0] > ALLOCATED_TTL:
            stamp = time.monotonic()
            cached = (stamp, await self._run(count, *args))
            self._allocated[key] = cached
        return cached[1]

    async def _full_attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        """With st_blocks."""
        if node.is_dir:
            return self._attributes(node)
        return self._attributes(node, await self._allocated_bytes(
            node.id, self.engine.data.allocated_bytes, node.id))

    async def _virtual_attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        """With st_blocks for a snapshot."""
        if not self.snapshots.is_snapshot(inode):
            return self.snapshots.attributes(inode)
        snap = self.snapshots.snapshot(inode)
        allocated = await self._allocated_bytes(snap.id, self.snapshots.allocated_bytes, snap)
        return self.snapshots.snapshot_attributes(snap, allocated)

    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        if self._virtual(parent_inode, name):
            if parent_inode == ROOT_INODE:
                return self.snapshots.root_attributes()
            found = self.snapshots.lookup(parent_inode, _name(name))
            return await self._virtual_attributes(found.st_ino)
        return await self._full_attributes(self.engine.child(node_of(parent_inode), _name(name)))

    @fuse_errors
    async def getattr(self, inode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        if self.snapshots.owns(inode):
            return await self._virtual_attributes(inode)
        return await self._full_attributes(self.engine.node(node_of(inode)))

    @fuse_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: Any,
                      fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        self._check_writable()
        if self.snapshots.owns(inode):
            # touch's utimensat("now") right after taking a snapshot: nothing to change.
            if not sets_time_to_now(attr, fields):
                raise ReadOnlyError('the .snapshots tree is read-only')
            return await self._virtual_attributes(inode)
        node_id = node_of(inode)
        if fields.update_size:
            path = self.engine.path_of(node_id)
            await self._run(functools.partial(self.engine.resize, path, attr.st_size,
                                              aligned=False, allow_shrink=self.allow_shrink))
        posix = {}
        if fields.update_mode:
            posix['mode'] = stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            posix['uid'] = attr.st_uid
        if fields.update_gid:
            posix['gid'] = attr.st_gid
        mtime = attr.st_mtime_ns if fields.update_mtime else None
        if posix or mtime is not None:
            await self._run(self.engine.set_attributes, node_id, posix, mtime)
        return await self._full_attributes(self.engine.node(node_id))

    @fuse_errors
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        """The backing disk's real capacity and free space, so df tells the truth."""
        disk = os.statvfs(self.engine.data_dir)
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = disk.f_frsize  # equal, or df miscounts
        data.f_blocks, data.f_bfree, data.f_bavail = disk.f_blocks, disk.f_bfree, disk.f_bavail
        data.f_files, data.f_ffree, data.f_favail = disk.f_files, disk.f_ffree, disk.f_favail
        data.f_namemax = 255
        return data

    # -- directories --------------------------------------------------------------------------

    @fuse_errors
    async def opendir(self, inode: int, ctx: Any) -> int:
        # The listing is taken once per open: readdir offsets index into it, so they stay
        # stable while other doors change the directory.
        if self.snapshots.owns(inode):
            entries = self.snapshots.entries(inode)
        else:
            entries = [(node.name, self._attributes(node))
                       for node in self.engine.dir_entries(node_of(inode))]
            if inode == ROOT_INODE:  # .snapshots hides a real entry of that name
                entries = [(SNAPSHOT_DIR, self.snapshots.root_attributes())] + [
                    entry for entry in entries if entry[0] != SNAPSHOT_DIR]
        fh = self._new_fh()
        self._dirs[fh] = entries
        return fh

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        entries = self._dirs[fh]
        for index in range(start_id, len(entries)):
            name, attributes = entries[index]
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attributes, index + 1):
                break

    @fuse_errors
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: Any) -> pyfuse3.EntryAttributes:
        self._check_writable()
        self._refuse_virtual(parent_inode, name)
        node = await self._run(functools.partial(
            self.engine.mkdir, self._path(parent_inode, name), posix=_posix(mode, ctx)))
        return self._attributes(node)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._check_writable()
        self._refuse_virtual(parent_inode, name)
        if not self.engine.child(node_of(parent_inode), _name(name)).is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        await self._run(self.engine.remove, self._path(parent_inode, name))

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        """A volume goes to /RecycleBin (Curve's Unlink); in /RecycleBin it is destroyed."""
        self._check_writable()
        if self._virtual(parent_inode, name):
            if parent_inode == ROOT_INODE:
                raise ReadOnlyError(f'{SNAPSHOT_DIR} cannot be removed')
            await self._run(self.snapshots.delete, parent_inode, _name(name))
            return
        if self.engine.child(node_of(parent_inode), _name(name)).is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        await self._run(functools.partial(self.engine.remove, self._path(parent_inode, name),
                                          check_open=False))

    @fuse_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:
        """Moving a volume out of /RecycleBin recovers it; a replaced volume goes there."""
        self._check_writable()
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        self._refuse_virtual(parent_inode_old, name_old)
        self._refuse_virtual(parent_inode_new, name_new)
        if (parent_inode_old, name_old) == (parent_inode_new, name_new):
            return
        await self._run(functools.partial(
            self.engine.rename, self._path(parent_inode_old, name_old),
            self._path(parent_inode_new, name_new), check_open=False,
            replace=not flags & pyfuse3.RENAME_NOREPLACE, posix=True))

    def _refuse_virtual(self, parent_inode: int, name: bytes) -> None:
        if self._virtual(parent_inode, name):
            raise ReadOnlyError(f'the {SNAPSHOT_DIR} tree changes only by touch and rm of '
                                'snapshots')

    # -- volumes ------------------------------------------------------------------------------

    def _open_handle(self, node: Node, flags: int) -> pyfuse3.FileInfo:
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable:
            self._check_writable()
        handle = self.engine.open_node(node.id, writable)
        if writable and not handle.writable:  # POSIX says so at open: EROFS
            handle.close()
            raise ReadOnlyError(f'{node.name} is a read-only clone')
        return self._new_file(handle)

    def _new_file(self, handle: VolumeHandle) -> pyfuse3.FileInfo:
        fh = self._new_fh()
        self._files[fh] = handle
        return pyfuse3.FileInfo(fh=fh, keep_cache=False, direct_io=True)

    @fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        """A new, empty volume; writes past its end grow it (so cp works). In a volume's
        directory in .snapshots: a new snapshot, opened read-only (touch)."""
        self._check_writable()
        if self._virtual(parent_inode, name):
            attributes = await self._take_snapshot(parent_inode, name)
            return self._new_file(self.snapshots.open(attributes.st_ino)), attributes
        node = await self._make_volume(parent_inode, name, mode, ctx)
        return self._open_handle(node, flags), self._attributes(node)

    @fuse_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: Any) -> pyfuse3.EntryAttributes:
        self._check_writable()
        if not stat.S_ISREG(mode):
            raise pyfuse3.FUSEError(errno.EPERM)  # only volumes live here
        if self._virtual(parent_inode, name):
            return await self._take_snapshot(parent_inode, name)
        return self._attributes(await self._make_volume(parent_inode, name, mode, ctx))

    async def _take_snapshot(self, parent_inode: int, name: bytes) -> pyfuse3.EntryAttributes:
        if parent_inode == ROOT_INODE:  # the kernel had not found .snapshots a moment ago
            raise ExistsError(f'{SNAPSHOT_DIR} exists')
        return await self._run(self.snapshots.take, parent_inode, _name(name))

    async def _make_volume(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Node:
        return await self._run(functools.partial(
            self.engine.create_volume, self._path(parent_inode, name), 0, aligned=False,
            posix=_posix(mode, ctx)))

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if self.snapshots.owns(inode):
            if (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC:
                raise ReadOnlyError('a snapshot is read-only')
            return self._new_file(self.snapshots.open(inode))
        node = self.engine.node(node_of(inode))
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_TRUNC and node.length:
            # Truncating a disk image to nothing is a shrink: allowed only with allow_shrink.
            self._check_writable()
            await self._run(functools.partial(
                self.engine.resize, self.engine.path_of(node.id), 0, aligned=False,
                allow_shrink=self.allow_shrink))
        return self._open_handle(node, flags)

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        """Answered without a worker thread when possible: a thread hop costs ~60 us, and
        ~140 us when the worker sleeps on the disk, against 1 us for a cached read and 64 us for
        a disk read. A read that misses the page cache has already started the disk read (see
        `ChunkStore.pread`); we ask again between checkpoints, so other requests are served
        meanwhile, and give it to a thread only if the disk is slow."""
        handle = self._files[fh]
        # Files are opened direct_io (no kernel page cache, so no kernel readahead): a reader
        # going forward gets ours.
        readahead = READAHEAD if self._read_ends.get(fh) == off else 0
        self._read_ends[fh] = off + size
        deadline = None
        while True:
            try:
                return handle.read(off, size, clamp=True, nowait=True, readahead=readahead)
            except WouldBlock:
                pass
            now = trio.current_time()
            if deadline is None:
                deadline = now + READ_POLL_SECONDS
            elif now > deadline:
                return await self._run(functools.partial(handle.read, off, size, clamp=True))
            await trio.sleep(0)

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        # Inline unless it must allocate (metadata writes). The page-cache copy itself is not
        # proven non-blocking: the kernel may throttle us when the disk falls behind.
        handle = self._files[fh]
        self._allocated.pop(handle.vol_id, None)
        try:
            return handle.write(off, buf, grow=True, nowait=True)
        except WouldBlock:
            return await self._run(functools.partial(handle.write, off, buf, grow=True))

    @fuse_errors
    async def flush(self, fh: int) -> None:
        """Every close(): commit, so other doors see what was written."""
        handle = self._files[fh]
        await self._run(handle.flush)
        self._allocated.pop(handle.vol_id, None)

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._run(self._files[fh].flush)

    @fuse_errors
    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        self._read_ends.pop(fh, None)
        if handle is not None:
            await self._run(handle.close)

    # -- extended attributes ------------------------------------------------------------------

    def _facts(self, inode: int) -> dict[str, bytes]:
        """Stats chunk files: for a worker thread."""
        if self.snapshots.owns(inode):
            facts = self.snapshots.facts(inode)
        else:
            facts = self._node_facts(self.engine.node(node_of(inode)))
        return {XATTR_FACTS + key: str(value).encode() for key, value in facts.items()}

    def _node_facts(self, node: Node) -> dict[str, object]:
        facts: dict[str, object] = {'id': node.id, 'owner': node.owner, 'status': node.status,
                                    'type': 'directory' if node.is_dir else 'volume'}
        if not node.is_dir:
            facts['allocated'] = self.engine.data.allocated_bytes(node.id)
            facts['chunk_size'] = self.engine.chunk_size
            clone = self.engine.clone_state(node.id)
            # On every volume, so a script polling it sees 100 once the clone is flat.
            facts['flatten_progress'] = 100 if clone is None else clone.progress
            if clone is not None:
                facts['source'] = f'{clone.source_path}@{clone.snapshot}'
                facts['readonly'] = 'yes' if clone.readonly else 'no'
                facts['flattening'] = 'yes' if clone.flattening else 'no'
        if node.parent == RECYCLE_ID and 'original_path' in node.extra:
            facts['original_path'] = node.extra['original_path']
        return facts

    def _settable(self, inode: int, name: str) -> None:
        if self.snapshots.owns(inode):
            raise ReadOnlyError('the .snapshots tree is read-only')
        if name.startswith(XATTR_FACTS):
            raise pyfuse3.FUSEError(errno.EPERM)  # the engine's facts are read-only
        if not name.startswith('user.'):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        key = _name(name)
        if key.startswith(XATTR_FACTS):
            value = (await self._run(self._facts, inode)).get(key)
        elif self.snapshots.owns(inode):
            value = None
        elif key.startswith('user.'):
            value = self.engine.get_xattr(node_of(inode), key)
        else:
            value = None  # security.capability is asked on every write: answer fast
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @fuse_errors
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        names = list(await self._run(self._facts, inode))
        if not self.snapshots.owns(inode):
            names += self.engine.list_xattrs(node_of(inode))
        return [os.fsencode(name) for name in names]

    @fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        self._check_writable()
        key = _name(name)
        self._settable(inode, key)
        await self._run(self.engine.set_xattr, node_of(inode), key, value)

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        self._check_writable()
        key = _name(name)
        self._settable(inode, key)
        if not await self._run(self.engine.remove_xattr, node_of(inode), key):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    # -- life cycle -----------------------------------------------------------------------------

    def close_all(self) -> None:
        """At unmount: flush and close what the kernel left open."""
        for handle in self._files.values():
            try:
                handle.close()
            except EngineError as exc:
                log.error('closing volume %d at unmount failed: %s', handle.vol_id, exc)
        self._files.clear()


__all__ = ['CurveOperations']
