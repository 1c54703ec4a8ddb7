"""CBDClient's snapshots and clones, as a Curve user sees them: Curve's "/vol@snap" paths,
release1.5's commands (create, list, delete, protect, unprotect, clone, flatten, children) plus
Rollback, and the codes of curve-behaviour.md §3-4: -1 EXISTS, -2 FAILED, -4 AUTHFAIL,
-6 NOTEXIST, -7 UNDER_SNAPSHOT, -11 NOT_SUPPORT, -15 FILE_OCCUPIED, -16 PARAM_ERROR,
-32 READONLY, -100 UNKNOWN (kSnapshotFileProtected, kSnapshotFileNotProtected).
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest

import curvefuse
from curvefuse.client import (CURVE_FILE_CREATED, CURVE_FILE_FLATTENING,
                              CURVE_INODE_CLONE_PAGEFILE, CURVE_INODE_PAGEFILE,
                              CURVE_INODE_SNAPSHOT_PAGEFILE, CBDClient, FileInfo_t, UserInfo_t)

from ..util import user
from .test_client import (ALICE, AUTHFAIL, BLOCK, BOB, EXISTS, FAILED, NOT_SUPPORT, NOTEXIST,
                          OCCUPIED, OK, PARAM, ROOT, UNKNOWN, VOL_LEN, stat, tree)

UNDER_SNAPSHOT, READONLY = -7, -32
A, B, C, Z = (bytes([c]) * BLOCK for c in b'ABCZ')
a, b, c = (bytes([c]) * BLOCK for c in b'abc')
ZERO = bytes(BLOCK)

# What each volume and snapshot of `world` holds, block by block.
S1 = A + ZERO + C + ZERO
S2 = a + b + C + ZERO
S3 = a + b + c + ZERO
VOL = a + b + c + Z


# -- helpers ------------------------------------------------------------------------------------

def write(cbd: CBDClient, path: str, who: UserInfo_t, data: bytes, offset: int = 0) -> None:
    fd = cbd.Open(path, who)
    assert fd >= 0, fd
    assert cbd.Write(fd, data, offset, len(data)) == len(data)
    assert cbd.Close(fd) == OK


def content(cbd: CBDClient, path: str, who: UserInfo_t = ALICE) -> bytes:
    """Every byte of a volume or snapshot, read through one fd."""
    fd = cbd.Open(path, who)
    assert fd >= 0, fd
    data = cbd.Read(fd, '', 0, stat(cbd, path).length)
    assert cbd.Close(fd) == OK
    return data


def destroy(cbd: CBDClient, path: str) -> None:
    """Unlink a volume and destroy it in the recycle bin."""
    recycled = f'/RecycleBin/{path.rsplit("/", 1)[1]}-{stat(cbd, path).id}'
    assert cbd.Unlink(path, ALICE) == OK
    assert cbd.DeleteForce(recycled, ROOT) == OK


def wait_flattened(cbd: CBDClient, path: str, who: UserInfo_t = ALICE) -> None:
    deadline = time.monotonic() + 120
    while (progress := cbd.QueryFlattenStatus(path, who)) != 100:
        assert 0 <= progress < 100 and time.monotonic() < deadline, progress
        time.sleep(0.02)


def state(data_dir: Path) -> dict[str, Any]:
    """`tree` plus every volume's snapshots: name, protection, clone count and bytes."""
    found: dict[str, Any] = dict(tree(data_dir))
    with curvefuse.open_store(str(data_dir)) as store:
        for path, (_id, is_dir, *_rest) in list(found.items()):
            if is_dir or path.startswith('/RecycleBin'):
                continue
            for snap in store.snapshots(path):
                with store.open(snap.path) as frozen:
                    found[snap.path] = (snap.protected, snap.clones, frozen.read())
    return found


@pytest.fixture
def world(cbd: CBDClient) -> SimpleNamespace:
    """/alice/vol (alice, 4 blocks) with snapshots s1 (unprotected), s2 (protected, cloned to
    /alice/clone) and s3 (protected, no clones); /alice/sub an empty directory; /bob/vol with
    bob's snapshot s. Contents: S1, S2, S3, VOL above; the clone holds S2."""
    assert cbd.Mkdir('/alice', ALICE) == OK
    assert cbd.Mkdir('/alice/sub', ALICE) == OK
    assert cbd.Create('/alice/vol', ALICE, VOL_LEN) == OK
    write(cbd, '/alice/vol', ALICE, A)
    write(cbd, '/alice/vol', ALICE, C, 2 * BLOCK)
    assert cbd.CreateSnapshot('/alice/vol@s1', ALICE) == OK
    write(cbd, '/alice/vol', ALICE, a + b)
    assert cbd.CreateSnapshot('/alice/vol@s2', ALICE) == OK
    assert cbd.ProtectSnapshot('/alice/vol@s2', ALICE) == OK
    assert cbd.Clone('/alice/vol@s2', '/alice/clone', ALICE) == OK
    write(cbd, '/alice/vol', ALICE, c, 2 * BLOCK)
    assert cbd.CreateSnapshot('/alice/vol@s3', ALICE) == OK
    assert cbd.ProtectSnapshot('/alice/vol@s3', ALICE) == OK
    write(cbd, '/alice/vol', ALICE, Z, 3 * BLOCK)
    assert cbd.Mkdir('/bob', BOB) == OK
    assert cbd.Create('/bob/vol', BOB, VOL_LEN) == OK
    assert cbd.CreateSnapshot('/bob/vol@s', BOB) == OK
    return SimpleNamespace(vol_id=stat(cbd, '/alice/vol').id)


# -- snapshots ----------------------------------------------------------------------------------

def test_snapshots_keep_their_content_after_later_writes(cbd: CBDClient,
                                                         world: SimpleNamespace) -> None:
    """Each snapshot reads, at every block, what the volume held when it was taken."""
    assert content(cbd, '/alice/vol') == VOL
    assert content(cbd, '/alice/vol@s1') == S1
    assert content(cbd, '/alice/vol@s2') == S2
    assert content(cbd, '/alice/vol@s3') == S3
    fd = cbd.Open('/alice/vol@s1', ALICE)
    assert [cbd.Read(fd, '', i * BLOCK, BLOCK) for i in (3, 2, 1, 0)] == [ZERO, C, ZERO, A]
    assert cbd.Read(fd, '', BLOCK, 2 * BLOCK) == ZERO + C
    assert cbd.Close(fd) == OK


def test_list_snapshot_oldest_first(cbd: CBDClient, world: SimpleNamespace) -> None:
    """ListSnapshot gives the names (str) oldest first; a volume without any gives []."""
    assert cbd.ListSnapshot('/alice/vol', ALICE) == ['s1', 's2', 's3']
    assert cbd.ListSnapshot('/alice/vol', ROOT) == ['s1', 's2', 's3']
    assert cbd.ListSnapshot('/alice/clone', ALICE) == []
    assert cbd.DeleteSnapshot('/alice/vol@s1', ALICE) == OK
    assert cbd.ListSnapshot('/alice/vol', ALICE) == ['s2', 's3']


def test_statfile_of_a_snapshot(cbd: CBDClient) -> None:
    """StatFile('/vol@snap'): filetype INODE_SNAPSHOT_PAGEFILE (4), the volume as parentid, the
    length when it was taken, its own id and ctime (µs), the snapshot name and the owner."""
    assert cbd.Create('/v', ALICE, VOL_LEN) == OK
    volume = stat(cbd, '/v')
    before_us = time.time_ns() // 1000
    assert cbd.CreateSnapshot('/v@monday', ALICE) == OK
    after_us = time.time_ns() // 1000
    assert cbd.Extend('/v', ALICE, 2 * VOL_LEN) == OK
    finfo = FileInfo_t()
    assert cbd.StatFile('/v@monday', ALICE, finfo) == OK
    assert (finfo.filetype, finfo.parentid, finfo.length) == \
        (CURVE_INODE_SNAPSHOT_PAGEFILE, volume.id, VOL_LEN)
    assert finfo.id not in (0, volume.id)
    assert before_us <= finfo.ctime <= after_us
    assert (finfo.filename, finfo.owner, finfo.fileStatus) == \
        ('monday', 'alice', CURVE_FILE_CREATED)
    assert stat(cbd, '/v').filetype == CURVE_INODE_PAGEFILE
    assert stat(cbd, '/v').length == 2 * VOL_LEN


def test_snapshot_fd_is_read_only(cbd: CBDClient, world: SimpleNamespace, data_dir: Path) -> None:
    """Open('/vol@snap') gives the next fd; Read works at any offset; Write gives -32 READONLY and
    changes nothing; IO past the snapshot's length gives -2 even after the volume grew."""
    first = cbd.Open('/alice/vol', ALICE)
    fd = cbd.Open('/alice/vol@s1', ALICE)
    assert fd == first + 1
    assert cbd.Extend('/alice/vol', ALICE, 2 * VOL_LEN) == OK
    before = state(data_dir)
    assert cbd.Write(fd, b'w' * BLOCK, 0, BLOCK) == READONLY
    assert cbd.Write(fd, b'w' * BLOCK, 3 * BLOCK, BLOCK) == READONLY
    assert cbd.Read(fd, '', 2 * BLOCK, BLOCK) == C
    assert cbd.Read(fd, '', VOL_LEN, BLOCK) == FAILED
    assert state(data_dir) == before
    assert cbd.Close(fd) == OK
    assert cbd.Read(fd, '', 0, BLOCK) == -23
    assert cbd.Close(first) == OK


def test_open_snapshot_cannot_be_deleted_until_closed(cbd: CBDClient,
                                                      world: SimpleNamespace) -> None:
    """While an fd reads a snapshot, DeleteSnapshot gives -15; after Close it succeeds."""
    fd = cbd.Open('/alice/vol@s1', ALICE)
    assert cbd.DeleteSnapshot('/alice/vol@s1', ALICE) == OCCUPIED
    assert cbd.Close(fd) == OK
    assert cbd.DeleteSnapshot('/alice/vol@s1', ALICE) == OK
    assert cbd.Open('/alice/vol@s1', ALICE) == NOTEXIST


def test_delete_snapshot_leaves_the_others(cbd: CBDClient, world: SimpleNamespace) -> None:
    """Deleting s1, then s3 (unprotected first) keeps the volume, s2 and the clone intact."""
    assert cbd.DeleteSnapshot('/alice/vol@s1', ALICE) == OK
    assert cbd.UnprotectSnapshot('/alice/vol@s3', ALICE) == OK
    assert cbd.DeleteSnapshot('/alice/vol@s3', ALICE) == OK
    assert cbd.ListSnapshot('/alice/vol', ALICE) == ['s2']
    assert content(cbd, '/alice/vol') == VOL
    assert content(cbd, '/alice/vol@s2') == S2
    assert content(cbd, '/alice/clone') == S2


def test_protect_and_unprotect_are_idempotent(cbd: CBDClient, world: SimpleNamespace) -> None:
    """Protect twice and unprotect twice both answer 0; protection is what Clone and
    DeleteSnapshot see."""
    assert cbd.ProtectSnapshot('/alice/vol@s1', ALICE) == OK
    assert cbd.ProtectSnapshot('/alice/vol@s1', ALICE) == OK
    assert cbd.DeleteSnapshot('/alice/vol@s1', ALICE) == UNKNOWN
    assert cbd.UnprotectSnapshot('/alice/vol@s1', ALICE) == OK
    assert cbd.UnprotectSnapshot('/alice/vol@s1', ALICE) == OK
    assert cbd.Clone('/alice/vol@s1', '/alice/x', ALICE) == UNKNOWN
    assert cbd.DeleteSnapshot('/alice/vol@s1', ALICE) == OK


def test_volume_with_snapshots_cannot_be_deleted_renamed_or_reowned(
        cbd: CBDClient, world: SimpleNamespace, data_dir: Path) -> None:
    """Unlink, Rename (of or over it) and ChangeOwner of a volume with snapshots give -7; once its
    snapshots are gone (clones flattened first) each works."""
    before = state(data_dir)
    assert cbd.Unlink('/alice/vol', ALICE) == UNDER_SNAPSHOT
    assert cbd.Rename(ALICE, '/alice/vol', '/alice/moved') == UNDER_SNAPSHOT
    assert cbd.Rename(ALICE, '/alice/clone', '/alice/vol') == UNDER_SNAPSHOT
    assert cbd.ChangeOwner('/alice/vol', 'bob', ROOT) == UNDER_SNAPSHOT
    assert state(data_dir) == before
    assert cbd.Flatten('/alice/clone', ALICE) == OK
    wait_flattened(cbd, '/alice/clone')
    for name in ('s1', 's2', 's3'):
        assert cbd.UnprotectSnapshot(f'/alice/vol@{name}', ALICE) == OK
        assert cbd.DeleteSnapshot(f'/alice/vol@{name}', ALICE) == OK
    assert cbd.Rename(ALICE, '/alice/vol', '/alice/moved') == OK
    assert cbd.Unlink('/alice/moved', ALICE) == OK


def test_snapshot_of_a_volume_named_with_an_at(cbd: CBDClient) -> None:
    """A volume literally named 'odd@x' is what '/odd@x' means (it exists); '/odd@x@s' is its
    snapshot s, as Curve splits at the last '@'."""
    assert cbd.Create('/odd@x', ALICE, VOL_LEN) == OK
    write(cbd, '/odd@x', ALICE, A)
    assert stat(cbd, '/odd@x').filetype == CURVE_INODE_PAGEFILE
    assert cbd.CreateSnapshot('/odd@x', ALICE) == NOTEXIST  # snapshot x of a missing /odd
    assert cbd.CreateSnapshot('/odd@x@s', ALICE) == OK
    write(cbd, '/odd@x', ALICE, B)
    assert cbd.ListSnapshot('/odd@x', ALICE) == ['s']
    assert stat(cbd, '/odd@x@s').filetype == CURVE_INODE_SNAPSHOT_PAGEFILE
    assert content(cbd, '/odd@x@s') == A + bytes(VOL_LEN - BLOCK)
    assert content(cbd, '/odd@x') == B + bytes(VOL_LEN - BLOCK)
    assert cbd.DeleteSnapshot('/odd@x@s', ALICE) == OK


def test_rollback(cbd: CBDClient, world: SimpleNamespace) -> None:
    """Rollback to the newest snapshot gives the volume its content back; to an older one it
    gives -7 until the newer ones are deleted; while the volume is open, -15."""
    assert cbd.Rollback('/alice/vol@s1', ALICE) == UNDER_SNAPSHOT
    fd = cbd.Open('/alice/vol', ALICE)
    assert cbd.Rollback('/alice/vol@s3', ALICE) == OCCUPIED
    assert cbd.Close(fd) == OK
    assert cbd.Rollback('/alice/vol@s3', ALICE) == OK
    assert content(cbd, '/alice/vol') == S3
    assert cbd.UnprotectSnapshot('/alice/vol@s3', ALICE) == OK
    assert cbd.DeleteSnapshot('/alice/vol@s3', ALICE) == OK
    assert cbd.Rollback('/alice/vol@s2', ALICE) == OK
    assert content(cbd, '/alice/vol') == S2
    assert content(cbd, '/alice/clone') == S2
    assert content(cbd, '/alice/vol@s1') == S1


def test_rollback_brings_back_the_length(cbd: CBDClient) -> None:
    """A volume grown after the snapshot is as long as the snapshot again after Rollback."""
    assert cbd.Create('/v', ALICE, VOL_LEN) == OK
    assert cbd.CreateSnapshot('/v@small', ALICE) == OK
    assert cbd.Extend('/v', ALICE, 2 * VOL_LEN) == OK
    write(cbd, '/v', ALICE, Z, VOL_LEN)
    assert cbd.Rollback('/v@small', ALICE) == OK
    assert stat(cbd, '/v').length == VOL_LEN
    assert content(cbd, '/v') == bytes(VOL_LEN)
    assert cbd.DeleteSnapshot('/v@small', ALICE) == OK


# -- clones -------------------------------------------------------------------------------------

def test_clone_reads_the_snapshot_and_writes_apart(cbd: CBDClient, world: SimpleNamespace) -> None:
    """A clone holds the snapshot's content; its writes change neither the snapshot nor the
    volume, and theirs do not reach it. StatFile says INODE_CLONE_PAGEFILE (5)."""
    assert content(cbd, '/alice/clone') == S2
    write(cbd, '/alice/clone', ALICE, Z, BLOCK)
    write(cbd, '/alice/vol', ALICE, B, 0)
    assert content(cbd, '/alice/clone') == a + Z + C + ZERO
    assert content(cbd, '/alice/vol@s2') == S2
    assert content(cbd, '/alice/vol') == B + b + c + Z
    finfo = stat(cbd, '/alice/clone')
    assert (finfo.filetype, finfo.length, finfo.owner, finfo.fileStatus) == \
        (CURVE_INODE_CLONE_PAGEFILE, VOL_LEN, 'alice', CURVE_FILE_CREATED)


def test_clones_can_be_snapshotted_and_cloned_again(cbd: CBDClient,
                                                    world: SimpleNamespace) -> None:
    """A clone's snapshot clones too, and each generation keeps its own bytes."""
    write(cbd, '/alice/clone', ALICE, Z, BLOCK)
    assert cbd.CreateSnapshot('/alice/clone@g1', ALICE) == OK
    assert cbd.ProtectSnapshot('/alice/clone@g1', ALICE) == OK
    assert cbd.Clone('/alice/clone@g1', '/alice/grandchild', ALICE) == OK
    write(cbd, '/alice/clone', ALICE, B, 0)
    assert content(cbd, '/alice/grandchild') == a + Z + C + ZERO
    assert cbd.Children('/alice/clone', ALICE) == ['/alice/grandchild']
    destroy(cbd, '/alice/grandchild')
    assert cbd.UnprotectSnapshot('/alice/clone@g1', ALICE) == OK
    assert cbd.DeleteSnapshot('/alice/clone@g1', ALICE) == OK


def test_read_only_clone(cbd: CBDClient, world: SimpleNamespace, data_dir: Path) -> None:
    """Clone(..., readonly=True): Open works, Read gives the snapshot, Write gives -32."""
    assert cbd.Clone('/alice/vol@s3', '/alice/ro', ALICE, readonly=True) == OK
    fd = cbd.Open('/alice/ro', ALICE)
    assert fd >= 0
    before = state(data_dir)
    assert cbd.Write(fd, b'w' * BLOCK, 0, BLOCK) == READONLY
    assert state(data_dir) == before
    assert cbd.Read(fd, '', 0, VOL_LEN) == S3
    assert cbd.Close(fd) == OK


def test_children_of_a_snapshot_and_of_a_volume(cbd: CBDClient, world: SimpleNamespace) -> None:
    """Children('/vol@snap') lists that snapshot's clones, Children('/vol') those of all its
    snapshots (paths as str). A clone in the recycle bin stays a child (Recover can bring it
    back) until it is destroyed."""
    assert cbd.Clone('/alice/vol@s3', '/alice/sub/c3', ALICE) == OK
    assert cbd.Children('/alice/vol@s2', ALICE) == ['/alice/clone']
    assert cbd.Children('/alice/vol@s3', ALICE) == ['/alice/sub/c3']
    assert cbd.Children('/alice/vol@s1', ALICE) == []
    assert sorted(cbd.Children('/alice/vol', ALICE)) == ['/alice/clone', '/alice/sub/c3']
    assert cbd.Children('/alice/clone', ALICE) == []
    c3 = stat(cbd, '/alice/sub/c3').id
    assert cbd.Unlink('/alice/sub/c3', ALICE) == OK
    assert cbd.Children('/alice/vol@s3', ALICE) == [f'/RecycleBin/c3-{c3}']
    assert cbd.UnprotectSnapshot('/alice/vol@s3', ALICE) == OCCUPIED
    assert cbd.DeleteForce(f'/RecycleBin/c3-{c3}', ROOT) == OK
    assert cbd.Children('/alice/vol', ALICE) == ['/alice/clone']
    assert cbd.UnprotectSnapshot('/alice/vol@s3', ALICE) == OK


def test_unprotect_or_delete_with_clones_is_occupied(cbd: CBDClient, world: SimpleNamespace,
                                                     data_dir: Path) -> None:
    """A snapshot with clones cannot be unprotected or deleted (-15) until they are gone."""
    before = state(data_dir)
    assert cbd.UnprotectSnapshot('/alice/vol@s2', ALICE) == OCCUPIED
    assert cbd.DeleteSnapshot('/alice/vol@s2', ALICE) == OCCUPIED
    assert state(data_dir) == before
    destroy(cbd, '/alice/clone')
    assert cbd.UnprotectSnapshot('/alice/vol@s2', ALICE) == OK
    assert cbd.DeleteSnapshot('/alice/vol@s2', ALICE) == OK


def test_flatten_frees_the_source_snapshot(cbd: CBDClient, world: SimpleNamespace) -> None:
    """Flatten returns 0 at once; progress reaches 100; the clone is then a plain volume
    (filetype 1) with the same bytes, no longer a child, so its snapshot can be unprotected and
    deleted. Flatten of a plain volume is 0 and its progress 100, as Curve's."""
    write(cbd, '/alice/clone', ALICE, Z, 3 * BLOCK)
    assert cbd.Flatten('/alice/clone', ALICE) == OK
    wait_flattened(cbd, '/alice/clone')
    finfo = stat(cbd, '/alice/clone')
    assert (finfo.filetype, finfo.fileStatus) == (CURVE_INODE_PAGEFILE, CURVE_FILE_CREATED)
    assert cbd.Children('/alice/vol@s2', ALICE) == []
    assert cbd.UnprotectSnapshot('/alice/vol@s2', ALICE) == OK
    assert cbd.DeleteSnapshot('/alice/vol@s2', ALICE) == OK
    assert content(cbd, '/alice/clone') == a + b + C + Z
    assert cbd.Flatten('/alice/clone', ALICE) == OK
    assert cbd.Flatten('/alice/vol', ALICE) == OK
    assert cbd.QueryFlattenStatus('/alice/vol', ALICE) == 100


def test_clone_being_flattened_cannot_be_deleted_or_renamed(cbd: CBDClient,
                                                            data_dir: Path) -> None:
    """While a flatten runs (32 chunks to copy: far longer than the calls after Flatten), Unlink
    and Rename of the clone give -15, StatFile says FLATTENING (6) and progress is below 100;
    once it is done both work and the clone holds the snapshot's bytes."""
    chunk = curvefuse.open_store(str(data_dir)).chunk_size
    chunks = 32
    assert cbd.Create('/big', ALICE, chunks * chunk) == OK
    fd = cbd.Open('/big', ALICE)
    for index in range(chunks):
        assert cbd.Write(fd, A, index * chunk, BLOCK) == BLOCK
    assert cbd.Close(fd) == OK
    assert cbd.CreateSnapshot('/big@s', ALICE) == OK
    assert cbd.ProtectSnapshot('/big@s', ALICE) == OK
    assert cbd.Clone('/big@s', '/copy', ALICE) == OK
    assert cbd.Flatten('/copy', ALICE) == OK
    assert cbd.Unlink('/copy', ALICE) == OCCUPIED
    assert cbd.Rename(ALICE, '/copy', '/moved') == OCCUPIED
    assert stat(cbd, '/copy').fileStatus == CURVE_FILE_FLATTENING
    assert 0 <= cbd.QueryFlattenStatus('/copy', ALICE) < 100
    assert cbd.Flatten('/copy', ALICE) == OK  # joins the running flatten
    wait_flattened(cbd, '/copy')
    assert stat(cbd, '/copy').filetype == CURVE_INODE_PAGEFILE
    fd = cbd.Open('/copy', ALICE)
    assert [cbd.Read(fd, '', index * chunk, BLOCK) for index in range(chunks)] == [A] * chunks
    assert cbd.Close(fd) == OK
    assert cbd.Rename(ALICE, '/copy', '/moved') == OK
    assert cbd.Unlink('/moved', ALICE) == OK
    assert cbd.UnprotectSnapshot('/big@s', ALICE) == OK
    assert cbd.DeleteSnapshot('/big@s', ALICE) == OK


# -- error codes --------------------------------------------------------------------------------

ERRORS = [
    # CreateSnapshot
    ('Create-missing-volume', lambda c: c.CreateSnapshot('/alice/nope@s', ALICE), NOTEXIST),
    ('Create-missing-dir', lambda c: c.CreateSnapshot('/nodir/vol@s', ALICE), NOTEXIST),
    ('Create-others', lambda c: c.CreateSnapshot('/bob/vol@s2', ALICE), AUTHFAIL),
    ('Create-root-no-password', lambda c: c.CreateSnapshot('/alice/vol@x', user('root')),
     AUTHFAIL),
    ('Create-duplicate', lambda c: c.CreateSnapshot('/alice/vol@s1', ALICE), EXISTS),
    ('Create-directory', lambda c: c.CreateSnapshot('/alice/sub@s', ALICE), NOT_SUPPORT),
    ('Create-no-at', lambda c: c.CreateSnapshot('/alice/vol', ALICE), PARAM),
    ('Create-empty-name', lambda c: c.CreateSnapshot('/alice/vol@', ALICE), PARAM),
    ('Create-slash-in-name', lambda c: c.CreateSnapshot('/alice/vol@a/b', ALICE), PARAM),
    ('Create-nul-in-name', lambda c: c.CreateSnapshot('/alice/vol@s\0', ALICE), PARAM),
    ('Create-name-256-bytes', lambda c: c.CreateSnapshot('/alice/vol@' + 's' * 256, ALICE),
     PARAM),
    ('Create-dot-name', lambda c: c.CreateSnapshot('/alice/vol@..', ALICE), PARAM),
    # "@" cannot be inside a name: Curve splits at the last "@", so this is snapshot "b" of a
    # volume "/alice/vol@a", which does not exist.
    ('Create-at-in-name', lambda c: c.CreateSnapshot('/alice/vol@a@b', ALICE), NOTEXIST),
    ('Create-bad-volume-path', lambda c: c.CreateSnapshot('alice/vol@s', ALICE), PARAM),
    # ListSnapshot
    ('List-missing', lambda c: c.ListSnapshot('/alice/nope', ALICE), NOTEXIST),
    ('List-others', lambda c: c.ListSnapshot('/bob/vol', ALICE), AUTHFAIL),
    ('List-directory', lambda c: c.ListSnapshot('/alice/sub', ALICE), NOT_SUPPORT),
    ('List-snappath', lambda c: c.ListSnapshot('/alice/vol@s1', ALICE), NOTEXIST),
    # DeleteSnapshot
    ('Delete-missing-snapshot', lambda c: c.DeleteSnapshot('/alice/vol@nope', ALICE), NOTEXIST),
    ('Delete-missing-volume', lambda c: c.DeleteSnapshot('/alice/nope@s1', ALICE), NOTEXIST),
    ('Delete-others', lambda c: c.DeleteSnapshot('/bob/vol@s', ALICE), AUTHFAIL),
    ('Delete-protected', lambda c: c.DeleteSnapshot('/alice/vol@s3', ALICE), UNKNOWN),
    ('Delete-with-clones', lambda c: c.DeleteSnapshot('/alice/vol@s2', ALICE), OCCUPIED),
    ('Delete-no-at', lambda c: c.DeleteSnapshot('/alice/vol', ALICE), PARAM),
    ('Delete-empty-name', lambda c: c.DeleteSnapshot('/alice/vol@', ALICE), PARAM),
    # ProtectSnapshot / UnprotectSnapshot
    ('Protect-missing', lambda c: c.ProtectSnapshot('/alice/vol@nope', ALICE), NOTEXIST),
    ('Protect-others', lambda c: c.ProtectSnapshot('/bob/vol@s', ALICE), AUTHFAIL),
    ('Protect-nul', lambda c: c.ProtectSnapshot('/alice/vol@s\0', ALICE), PARAM),
    ('Unprotect-missing', lambda c: c.UnprotectSnapshot('/alice/vol@nope', ALICE), NOTEXIST),
    ('Unprotect-others', lambda c: c.UnprotectSnapshot('/bob/vol@s', ALICE), AUTHFAIL),
    ('Unprotect-with-clones', lambda c: c.UnprotectSnapshot('/alice/vol@s2', ALICE), OCCUPIED),
    # Clone
    ('Clone-unprotected', lambda c: c.Clone('/alice/vol@s1', '/alice/x', ALICE), UNKNOWN),
    ('Clone-missing-snapshot', lambda c: c.Clone('/alice/vol@nope', '/alice/x', ALICE),
     NOTEXIST),
    ('Clone-missing-volume', lambda c: c.Clone('/alice/nope@s1', '/alice/x', ALICE), NOTEXIST),
    ('Clone-dest-exists', lambda c: c.Clone('/alice/vol@s3', '/alice/clone', ALICE), EXISTS),
    ('Clone-dest-is-dir', lambda c: c.Clone('/alice/vol@s3', '/alice/sub', ALICE), EXISTS),
    ('Clone-dest-no-parent', lambda c: c.Clone('/alice/vol@s3', '/alice/nodir/x', ALICE),
     NOTEXIST),
    ('Clone-into-others-dir', lambda c: c.Clone('/alice/vol@s3', '/bob/x', ALICE), AUTHFAIL),
    ('Clone-others-snapshot', lambda c: c.Clone('/bob/vol@s', '/alice/x', ALICE), AUTHFAIL),
    ('Clone-into-recyclebin', lambda c: c.Clone('/alice/vol@s3', '/RecycleBin/x', ROOT),
     NOT_SUPPORT),
    ('Clone-bad-dest', lambda c: c.Clone('/alice/vol@s3', 'x', ALICE), PARAM),
    ('Clone-empty-dest', lambda c: c.Clone('/alice/vol@s3', '', ALICE), PARAM),
    ('Clone-no-at', lambda c: c.Clone('/alice/vol', '/alice/x', ALICE), PARAM),
    ('Clone-readonly-int', lambda c: c.Clone('/alice/vol@s3', '/alice/x', ALICE, 1), PARAM),
    ('Clone-readonly-str', lambda c: c.Clone('/alice/vol@s3', '/alice/x', ALICE, 'yes'), PARAM),
    # Flatten / QueryFlattenStatus
    ('Flatten-missing', lambda c: c.Flatten('/alice/nope', ALICE), NOTEXIST),
    ('Flatten-others', lambda c: c.Flatten('/bob/vol', ALICE), AUTHFAIL),
    ('Flatten-directory', lambda c: c.Flatten('/alice/sub', ALICE), NOT_SUPPORT),
    ('Flatten-snapshot', lambda c: c.Flatten('/alice/vol@s2', ALICE), NOTEXIST),
    ('Query-missing', lambda c: c.QueryFlattenStatus('/alice/nope', ALICE), NOTEXIST),
    ('Query-others', lambda c: c.QueryFlattenStatus('/bob/vol', ALICE), AUTHFAIL),
    ('Query-directory', lambda c: c.QueryFlattenStatus('/alice/sub', ALICE), NOT_SUPPORT),
    # Children
    ('Children-missing', lambda c: c.Children('/alice/nope', ALICE), NOTEXIST),
    ('Children-missing-snapshot', lambda c: c.Children('/alice/vol@nope', ALICE), NOTEXIST),
    ('Children-others', lambda c: c.Children('/bob/vol', ALICE), AUTHFAIL),
    ('Children-others-snapshot', lambda c: c.Children('/bob/vol@s', ALICE), AUTHFAIL),
    ('Children-directory', lambda c: c.Children('/alice/sub', ALICE), NOT_SUPPORT),
    # Rollback
    ('Rollback-newer-snapshots', lambda c: c.Rollback('/alice/vol@s1', ALICE), UNDER_SNAPSHOT),
    ('Rollback-missing', lambda c: c.Rollback('/alice/vol@nope', ALICE), NOTEXIST),
    ('Rollback-others', lambda c: c.Rollback('/bob/vol@s', ALICE), AUTHFAIL),
    ('Rollback-no-at', lambda c: c.Rollback('/alice/vol', ALICE), PARAM),
    # Open / StatFile of snapshots
    ('Open-missing-snapshot', lambda c: c.Open('/alice/vol@nope', ALICE), NOTEXIST),
    ('Open-others-snapshot', lambda c: c.Open('/bob/vol@s', ALICE), AUTHFAIL),
    ('Open-snapshot-of-dir', lambda c: c.Open('/alice/sub@s', ALICE), NOT_SUPPORT),
    ('Stat-missing-snapshot', lambda c: c.StatFile('/alice/vol@nope', ALICE, FileInfo_t()),
     NOTEXIST),
    ('Stat-others-snapshot', lambda c: c.StatFile('/bob/vol@s', ALICE, FileInfo_t()), AUTHFAIL),
    ('Stat-snapshot-name-too-long',
     lambda c: c.StatFile('/alice/vol@' + 's' * 256, ALICE, FileInfo_t()), PARAM),
]


@pytest.mark.parametrize('call, expected', [pytest.param(call, code, id=name)
                                            for name, call, code in ERRORS])
def test_error_codes(cbd: CBDClient, world: SimpleNamespace, data_dir: Path, call: Callable,
                     expected: int) -> None:
    """Each failure returns Curve's code and changes nothing, snapshots included."""
    before = state(data_dir)
    assert call(cbd) == expected
    assert state(data_dir) == before


# Every new method with arguments that succeed in `world` (the control test checks this).
GOOD_ARGS: dict[str, dict[str, Any]] = {
    'CreateSnapshot': {'snappath': '/alice/vol@new', 'user': ALICE},
    'ListSnapshot': {'filename': '/alice/vol', 'user': ALICE},
    'DeleteSnapshot': {'snappath': '/alice/vol@s1', 'user': ALICE},
    'ProtectSnapshot': {'snappath': '/alice/vol@s1', 'user': ALICE},
    'UnprotectSnapshot': {'snappath': '/alice/vol@s3', 'user': ALICE},
    'Clone': {'snappath': '/alice/vol@s3', 'dstpath': '/alice/new', 'user': ALICE,
              'readonly': False},
    'Flatten': {'filename': '/alice/clone', 'user': ALICE},
    'QueryFlattenStatus': {'filename': '/alice/clone', 'user': ALICE},
    'Children': {'path': '/alice/vol@s2', 'user': ALICE},
    'Rollback': {'snappath': '/alice/vol@s3', 'user': ALICE},
}
GOOD_RESULTS = {'ListSnapshot': ['s1', 's2', 's3'], 'Children': ['/alice/clone'],
                'QueryFlattenStatus': 0}


@pytest.mark.parametrize('method', GOOD_ARGS)
def test_control_good_arguments_succeed(cbd: CBDClient, world: SimpleNamespace,
                                        method: str) -> None:
    """The baseline of the tests below: with the good arguments each method succeeds."""
    assert getattr(cbd, method)(*GOOD_ARGS[method].values()) == GOOD_RESULTS.get(method, OK)


def _bad_arguments() -> list:
    bad_strings = {'None': None, 'int': 0, 'bytes': b'/alice/vol@s1', 'list': ['/alice/vol@s1'],
                   'surrogate': '/alice/vol@s\ud800'}
    bad_users = {'None': None, 'str': 'alice', 'owner-None': user(None),  # type: ignore[arg-type]
                 'owner-nul': user('alice\0'), 'owner-256-bytes': user('u' * 256)}
    params = []
    for method, args in GOOD_ARGS.items():
        for arg in args:
            if arg == 'readonly':
                continue  # in ERRORS
            for bad_id, bad in (bad_users if arg == 'user' else bad_strings).items():
                params.append(pytest.param(method, arg, bad, id=f'{method}-{arg}-{bad_id}'))
    return params


@pytest.mark.parametrize('method, arg, bad', _bad_arguments())
def test_bad_arguments_are_param_errors(cbd: CBDClient, world: SimpleNamespace, data_dir: Path,
                                        caplog, expect_logs, method: str, arg: str,
                                        bad: Any) -> None:
    """A non-string path, a string that cannot be one, or a malformed user: -16, nothing
    changed, nothing logged (an unexpected exception would log and give -17)."""
    expect_logs('unexpected error in CBDClient')  # asserted below, with the call that did it
    args = dict(GOOD_ARGS[method], **{arg: bad})
    before = state(data_dir)
    assert getattr(cbd, method)(*args.values()) == PARAM
    assert not [r for r in caplog.get_records('call') if r.levelname == 'ERROR']
    assert state(data_dir) == before


@pytest.mark.parametrize('method', GOOD_ARGS)
def test_root_may_act_and_others_may_not(cbd: CBDClient, world: SimpleNamespace, data_dir: Path,
                                         method: str) -> None:
    """Bob, and root without its password, get -4 on alice's volumes; root with it succeeds."""
    before = state(data_dir)
    for who in (BOB, user('root'), user('root', 'wrong')):
        assert getattr(cbd, method)(*dict(GOOD_ARGS[method], user=who).values()) == AUTHFAIL
    assert state(data_dir) == before
    assert getattr(cbd, method)(*dict(GOOD_ARGS[method], user=ROOT).values()) == \
        GOOD_RESULTS.get(method, OK)


@pytest.mark.parametrize('method', GOOD_ARGS)
def test_every_call_before_init_fails(method: str) -> None:
    """Without Init every snapshot call answers FAILED (-2), as the other calls do."""
    assert getattr(CBDClient(), method)(*GOOD_ARGS[method].values()) == FAILED


def test_curvefs_module_has_the_snapshot_constants() -> None:
    """`import curvefs` gives the snapshot and clone filetypes and the flattening status."""
    import curvefs
    assert (curvefs.CURVE_INODE_SNAPSHOT_PAGEFILE, curvefs.CURVE_INODE_CLONE_PAGEFILE,
            curvefs.CURVE_FILE_FLATTENING) == (4, 5, 6)
