"""Inode numbers and the attributes the kernel is given for them.

Three kinds of inode, in ranges that never meet, each stable across remounts:

- a node (directory or volume): its node id + 1, so the root directory (node 0) is FUSE's inode 1;
- a snapshot file in ``.snapshots``: its snapshot id + 1. Snapshot ids come from the node id
  counter, so no snapshot shares a number with a node;
- a directory of the ``.snapshots`` tree mirroring node N: MIRROR_BASE + N (``.snapshots`` itself
  mirrors the root, so it is MIRROR_BASE). Ids are far below 2**62, so no mirror number is ever a
  node's or a snapshot's.
"""

from __future__ import annotations

import stat

import pyfuse3

BLKSIZE = 128 * 1024  # what cp and friends size their buffers by
DEFAULT_MODES = {True: 0o755, False: 0o644}  # is_dir -> permission bits of a node without its own
MIRROR_BASE = 2**62


def inode_of(node_id: int) -> int:
    return node_id + 1


def node_of(inode: int) -> int:
    return inode - 1


def entry_attributes(inode: int, is_dir: bool, mode: int, uid: int, gid: int, size: int,
                     times: tuple[int, int, int], allocated: int = 0) -> pyfuse3.EntryAttributes:
    """Attributes the kernel must not cache (timeouts 0): other doors change the store at any
    time. `mode` holds the permission bits, `times` is (mtime, ctime, birth time) in ns."""
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = inode
    attr.generation = 0
    attr.entry_timeout = 0
    attr.attr_timeout = 0
    attr.st_mode = (stat.S_IFDIR if is_dir else stat.S_IFREG) | mode
    attr.st_nlink = 2 if is_dir else 1
    attr.st_uid = uid
    attr.st_gid = gid
    attr.st_rdev = 0
    attr.st_size = 0 if is_dir else size
    attr.st_blksize = BLKSIZE
    attr.st_blocks = -(-allocated // 512)
    attr.st_atime_ns = attr.st_mtime_ns = times[0]
    attr.st_ctime_ns = times[1]
    attr.st_birthtime_ns = times[2]
    return attr


__all__ = ['BLKSIZE', 'DEFAULT_MODES', 'MIRROR_BASE', 'entry_attributes', 'inode_of', 'node_of']
