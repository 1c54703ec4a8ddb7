"""The mount's virtual ``.snapshots`` tree: every volume's snapshots as read-only files.

    MOUNT/.snapshots/                           mirrors the root directory
    MOUNT/.snapshots/<dir>/                     mirrors each real directory
    MOUNT/.snapshots/<dir>/<volume>/            a directory listing that volume's snapshots
    MOUNT/.snapshots/<dir>/<volume>/<snapshot>  mode 0444: the volume as of the snapshot

- ``touch .snapshots/<volume path>/<name>`` takes a snapshot (FUSE create or mknod): a snapshot
  is a file, and mkdir must answer with a directory. The utimensat("now") touch sends next is
  accepted and changes nothing, so touching an existing snapshot succeeds too.
- ``rm`` deletes one, unprotecting it first as Curve's REST DeleteSnapshot does: EBUSY while
  clones depend on it or something has it open.
- Anything else that would change the tree (writing, mkdir, rename, chmod...) is EROFS.
- Permissions follow the real nodes, so the kernel's checks say who may do what: a volume's
  directory has the volume's owner and bits, with x wherever r is (who may write the volume may
  snapshot it; who may read it may list and read its snapshots); a directory's mirror has the
  directory's bits without w.
- ``.snapshots`` is in the root's readdir (``ls -a`` shows it, ``ls`` hides it as a dot file,
  ``find`` and ``du`` walk it). A real entry named ``.snapshots`` in the root, made through
  another door, is hidden behind it in the mount; its snapshots show as ``.snapshots/.snapshots``.

Inode numbers are in `inodes`. The kernel knows only the inodes this tree gave it, so the tree
remembers, for each snapshot inode it gave, the volume and name to find the snapshot by.
"""

from __future__ import annotations

import stat
import time

import pyfuse3

from ..engine import ROOT_ID, Engine, Node, SnapshotInfo, VolumeHandle
from ..errors import IsDirectoryError, NotDirectoryError, NotFoundError, ReadOnlyError
from .inodes import DEFAULT_MODES, MIRROR_BASE, entry_attributes, inode_of

SNAPSHOT_DIR = '.snapshots'
SNAPSHOT_MODE = 0o444
NOW_TOLERANCE_NS = 5 * 10**9  # a "now" from utimensat is the kernel's clock when it sent it
_WRITE_BITS = 0o222
_READ_BITS = 0o444


def mirror_inode(node_id: int) -> int:
    return MIRROR_BASE + node_id


def _volume_dir_mode(mode: int) -> int:
    """A volume's bits with x wherever r is (0644 -> 0755, 0600 -> 0700)."""
    return stat.S_IMODE(mode) | (mode & _READ_BITS) >> 2


def sets_time_to_now(attr: pyfuse3.EntryAttributes, fields: object) -> bool:
    """Whether a setattr only sets atime and/or mtime to about now (what touch sends). The
    kernel sends "now" as the time it read from its clock, so "about now" is all one can
    tell."""
    if any(getattr(fields, name) for name in ('update_mode', 'update_uid', 'update_gid',
                                                'update_size')):
        return False
    now = time.time_ns()
    times = [value for flag, value in ((fields.update_atime, attr.st_atime_ns),
                                       (fields.update_mtime, attr.st_mtime_ns)) if flag]
    return all(abs(value - now) < NOW_TOLERANCE_NS for value in times)


class SnapshotTree:
    """Answers for the inodes of ``.snapshots``. Synchronous; the mount decides what runs in a
    worker thread (`take`, `delete` and allocated bytes) and what inline (short LMDB reads)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._snapshots: dict[int, tuple[int, str]] = {}  # inode -> (volume id, name)

    def owns(self, inode: int) -> bool:
        return inode >= MIRROR_BASE or inode in self._snapshots

    def is_snapshot(self, inode: int) -> bool:
        return inode in self._snapshots

    # -- looking things up ----------------------------------------------------------------

    def _mirrored(self, inode: int) -> Node:
        if inode in self._snapshots:
            raise NotDirectoryError('a snapshot is a file')
        if inode < MIRROR_BASE:
            raise NotFoundError(f'inode {inode} is not in {SNAPSHOT_DIR}')
        return self.engine.node(inode - MIRROR_BASE)

    def _volume(self, parent_inode: int) -> Node:
        """The volume whose snapshots parent_inode lists; only there are snapshots made."""
        node = self._mirrored(parent_inode)
        if node.is_dir:
            raise ReadOnlyError('snapshots are made in the directory of a volume in .snapshots')
        return node

    def snapshot(self, inode: int) -> SnapshotInfo:
        if inode not in self._snapshots:
            raise IsDirectoryError(f'inode {inode} is a directory of {SNAPSHOT_DIR}')
        vol_id, name = self._snapshots[inode]
        snap = self.engine.snapshot_by_id(vol_id, name)
        if inode_of(snap.id) != inode:  # deleted, and the name taken again
            raise NotFoundError(f'snapshot {name!r} of volume {vol_id} was deleted')
        return snap

    def root_attributes(self) -> pyfuse3.EntryAttributes:
        return self._mirror_attributes(self.engine.node(ROOT_ID))

    def _mirror_attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        mode = node.extra.get('mode', DEFAULT_MODES[node.is_dir])
        mode = mode & ~_WRITE_BITS if node.is_dir else _volume_dir_mode(mode)
        return entry_attributes(mirror_inode(node.id), True, mode, node.extra.get('uid', 0),
                                node.extra.get('gid', 0), 0,
                                (node.mtime_ns, node.ctime_ns, node.btime_ns))

    def snapshot_attributes(self, snap: SnapshotInfo,
                            allocated: int = 0) -> pyfuse3.EntryAttributes:
        inode = inode_of(snap.id)
        self._snapshots[inode] = (snap.vol_id, snap.name)
        volume = self.engine.node(snap.vol_id)
        created = snap.created_ns
        return entry_attributes(inode, False, SNAPSHOT_MODE, volume.extra.get('uid', 0),
                                volume.extra.get('gid', 0), snap.length,
                                (created, created, created), allocated)

    def attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        """Without st_blocks for a snapshot (see `allocated_bytes`)."""
        if inode in self._snapshots:
            return self.snapshot_attributes(self.snapshot(inode))
        return self._mirror_attributes(self._mirrored(inode))

    def allocated_bytes(self, snap: SnapshotInfo) -> int:
        """Stats chunk files: for a worker thread."""
        return self.engine.snapshot_allocated_bytes(snap.vol_id, snap.seq)

    def lookup(self, parent_inode: int, name: str) -> pyfuse3.EntryAttributes:
        parent = self._mirrored(parent_inode)
        if parent.is_dir:
            return self._mirror_attributes(self.engine.child(parent.id, name))
        return self.snapshot_attributes(self.engine.snapshot_by_id(parent.id, name))

    def entries(self, inode: int) -> list[tuple[str, pyfuse3.EntryAttributes]]:
        node = self._mirrored(inode)
        if node.is_dir:
            return [(child.name, self._mirror_attributes(child))
                    for child in self.engine.dir_entries(node.id)]
        return [(snap.name, self.snapshot_attributes(snap))
                for snap in self.engine.snapshots_by_id(node.id)]

    # -- changing things (worker threads) ---------------------------------------------------

    def take(self, parent_inode: int, name: str) -> pyfuse3.EntryAttributes:
        """A new snapshot of the volume parent_inode mirrors."""
        volume = self._volume(parent_inode)
        snap = self.engine.create_snapshot(self.engine.path_of(volume.id), name)
        return self.snapshot_attributes(snap)

    def delete(self, parent_inode: int, name: str) -> None:
        volume = self._volume(parent_inode)
        self.engine.delete_snapshot(self.engine.path_of(volume.id), name, unprotect=True)

    def open(self, inode: int) -> VolumeHandle:
        snap = self.snapshot(inode)
        return VolumeHandle(self.engine, snap.vol_id, False, snap)

    def facts(self, inode: int) -> dict[str, object]:
        """The engine's view of a snapshot, for the mount's read-only xattrs (stats chunk
        files: for a worker thread); nothing for the directories."""
        if inode not in self._snapshots:
            return {}
        snap = self.snapshot(inode)
        return {'id': snap.id, 'uuid': snap.uuid, 'type': 'snapshot',
                'volume': self.engine.path_of(snap.vol_id),
                'protected': 'yes' if snap.protected else 'no',
                'allocated': self.allocated_bytes(snap)}


__all__ = ['SNAPSHOT_DIR', 'SnapshotTree', 'mirror_inode', 'sets_time_to_now']
