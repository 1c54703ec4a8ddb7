"""The Pythonic API's snapshots and clones: Store methods raising EngineErrors that carry Curve's
code (`.code`) and the mount's errno (`.errno`), and "vol@snap" opened as a read-only file."""

from __future__ import annotations

import errno
import io
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pytest

import curvefuse
from curvefuse.errors import (AccessError, BusyError, ExistsError, HasSnapshotsError,
                              InvalidArgumentError, IsDirectoryError, NameTooLongError,
                              NotFoundError, NotProtectedError, ProtectedError, ReadOnlyError)

KiB = 1024


@pytest.fixture
def disk(store: curvefuse.Store) -> curvefuse.Store:
    """/disk (64 KiB) holding b'old' at 0, snapshot 'monday' of it, then b'new' at 0 and b'tail'
    at 60 KiB."""
    store.create('/disk', '64K')
    with store.open('/disk', 'r+b') as vol:
        vol.write(b'old')
    store.snapshot('/disk', 'monday')
    with store.open('/disk', 'r+b') as vol:
        vol.write(b'new')
        vol.pwrite(b'tail', 60 * KiB)
    return store


def test_snapshot_describes_itself(store: curvefuse.Store) -> None:
    """store.snapshot returns a Snapshot: its "vol@snap" path, length, owner, creation time,
    protection and clone count; get_snapshot and snapshots return the same facts."""
    store.as_user('alice').create('/vm', '8K')
    before = datetime.now(timezone.utc)
    snap = store.as_user('alice').snapshot('/vm', 'base', protect=True)
    after = datetime.now(timezone.utc)
    assert (snap.path, snap.volume, snap.name, snap.length) == ('/vm@base', '/vm', 'base', 8 * KiB)
    assert (snap.owner, snap.protected, snap.clones) == ('alice', True, 0)
    assert snap.volume_id == store.stat('/vm').id != snap.id
    assert before <= snap.created <= after
    assert store.get_snapshot('/vm', 'base') == snap
    assert store.snapshots('/vm') == [snap]
    store.clone('/vm', 'base', '/vm2')
    assert store.get_snapshot('/vm', 'base').clones == 1


def test_snapshot_opens_as_a_read_only_seekable_file(disk: curvefuse.Store) -> None:
    """open('vol@snap') gives a Volume that reads the frozen bytes anywhere, seeks, and refuses
    writes with ReadOnlyError (Curve's READONLY -32, EROFS)."""
    with disk.open('/disk@monday') as snap:
        assert (snap.readable(), snap.writable(), snap.seekable()) == (True, False, True)
        assert len(snap) == 64 * KiB
        assert snap.read(3) == b'old'
        assert snap.seek(60 * KiB) == 60 * KiB  # where the volume now holds b'tail'
        assert snap.read(4) == bytes(4)
        assert snap.seek(-4, io.SEEK_END) == 64 * KiB - 4
        assert snap.read() == bytes(4)
        assert snap.read(1) == b''
        assert snap.pread(3, 0) == b'old'
        for write in (lambda: snap.write(b'x'), lambda: snap.pwrite(b'x', 0)):
            with pytest.raises(ReadOnlyError) as info:
                write()
            assert (info.value.code, info.value.errno) == (-32, errno.EROFS)
    with disk.open('/disk') as vol:
        assert vol.read(3) == b'new'


@pytest.mark.parametrize('mode', ['r+b', 'rb+'])
def test_snapshot_cannot_be_opened_for_writing(disk: curvefuse.Store, mode: str) -> None:
    with pytest.raises(ReadOnlyError):
        disk.open('/disk@monday', mode)


def test_snapshot_of_finds_snapshot_paths(disk: curvefuse.Store) -> None:
    """snapshot_of splits at the last "@", unless a volume of the literal name exists."""
    assert disk.snapshot_of('/disk@monday') == ('/disk', 'monday')
    assert disk.snapshot_of('/disk') is None
    disk.create('/odd@x', '4K')
    assert disk.snapshot_of('/odd@x') is None
    assert disk.snapshot_of('/odd@x@s') == ('/odd@x', 's')
    assert disk.snapshot_of('/dir@x/vol') is None


def test_delete_snapshot_and_list(disk: curvefuse.Store) -> None:
    disk.snapshot('/disk', 'tuesday')
    assert [snap.name for snap in disk.snapshots('/disk')] == ['monday', 'tuesday']
    disk.delete_snapshot('/disk', 'monday')
    assert [snap.name for snap in disk.snapshots('/disk')] == ['tuesday']
    with disk.open('/disk@tuesday') as snap:
        assert snap.read(3) == b'new'


def test_protected_snapshot_is_deleted_only_with_unprotect(disk: curvefuse.Store) -> None:
    disk.protect('/disk', 'monday')
    disk.protect('/disk', 'monday')  # idempotent
    with pytest.raises(ProtectedError) as info:
        disk.delete_snapshot('/disk', 'monday')
    assert (info.value.code, info.value.errno) == (-100, errno.EBUSY)
    disk.delete_snapshot('/disk', 'monday', unprotect=True)
    assert disk.snapshots('/disk') == []


def test_clone_flatten_and_clone_state(disk: curvefuse.Store) -> None:
    """A clone reads the snapshot and writes apart; clone_state follows it until flatten (wait)
    makes it a plain volume and frees the snapshot."""
    disk.protect('/disk', 'monday')
    disk.clone('/disk', 'monday', '/copy')
    state = disk.clone_state('/copy')
    assert (state.source_path, state.snapshot, state.readonly, state.flattening,
            state.progress) == ('/disk', 'monday', False, False, 0)
    assert disk.clone_state('/disk') is None
    assert disk.children('/disk') == disk.children('/disk', 'monday') == ['/copy']
    with disk.open('/copy', 'r+b') as copy:
        assert copy.read(3) == b'old'
        copy.pwrite(b'mine', 8 * KiB)
    disk.flatten('/copy')
    assert disk.flatten_progress('/copy') == 100
    assert disk.clone_state('/copy') is None
    assert disk.children('/disk') == []
    disk.unprotect('/disk', 'monday')
    disk.delete_snapshot('/disk', 'monday')
    with disk.open('/copy') as copy:
        assert (copy.pread(3, 0), copy.pread(4, 8 * KiB)) == (b'old', b'mine')


def test_background_flatten_reports_progress(store: curvefuse.Store) -> None:
    """flatten(wait=False) returns at once; clone_state says flattening and the clone is busy
    until it is done."""
    _clone_of_many_chunks(store)
    store.flatten('/copy', wait=False)
    state = store.clone_state('/copy')
    assert state is not None and state.flattening and 0 <= state.progress < 100
    with pytest.raises(BusyError) as info:
        store.remove('/copy')
    assert (info.value.code, info.value.errno) == (-15, errno.EBUSY)
    _wait_flattened(store, '/copy')
    assert store.clone_state('/copy') is None
    with store.open('/copy') as copy:
        assert [copy.pread(1, index * store.chunk_size) for index in range(32)] == [b'x'] * 32


def _clone_of_many_chunks(store: curvefuse.Store, chunks: int = 32) -> None:
    """/copy: a clone whose flatten copies `chunks` chunks (far longer than a few calls take)."""
    chunk = store.chunk_size
    store.create('/big', chunks * chunk)
    with store.open('/big', 'r+b') as vol:
        for index in range(chunks):
            vol.pwrite(b'x', index * chunk)
    store.snapshot('/big', 's', protect=True)
    store.clone('/big', 's', '/copy')


def _wait_flattened(store: curvefuse.Store, path: str) -> None:
    deadline = time.monotonic() + 120
    while store.flatten_progress(path) < 100:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_flatten_given_up_at_close_is_taken_up_by_another_process(
        store: curvefuse.Store, data_dir: Path, tmp_path: Path) -> None:
    """A process that starts a flatten and closes its store, but lives on, gives the flatten up:
    the clone is not busy, and another process's flatten finishes it."""
    _clone_of_many_chunks(store)
    starter = subprocess.Popen([sys.executable, '-c', textwrap.dedent(f'''
        import time, curvefuse
        store = curvefuse.open_store({str(data_dir)!r})
        store.flatten('/copy', wait=False)
        store.close()
        print('closed', flush=True)
        time.sleep(120)
    ''')], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert starter.stdout.readline() == 'closed\n'
        assert store.clone_state('/copy').progress < 100
        store.rename('/copy', '/moved')
        store.flatten('/moved', wait=False)
        _wait_flattened(store, '/moved')
    finally:
        starter.kill()
        starter.wait()
        starter.stdout.close()
    with store.open('/moved') as copy:
        assert [copy.pread(1, index * store.chunk_size) for index in range(32)] == [b'x'] * 32


def test_read_only_clone_refuses_writes(disk: curvefuse.Store) -> None:
    disk.protect('/disk', 'monday')
    disk.clone('/disk', 'monday', '/ro', readonly=True)
    assert disk.clone_state('/ro').readonly
    with disk.open('/ro', 'r+b') as ro:
        assert not ro.writable()
        assert ro.read(3) == b'old'
        with pytest.raises(ReadOnlyError) as info:
            ro.write(b'x')
        assert info.value.code == -32


def test_rollback(disk: curvefuse.Store) -> None:
    entry = disk.rollback('/disk', 'monday')
    assert entry.length == 64 * KiB
    with disk.open('/disk') as vol:
        assert (vol.read(3), vol.pread(4, 60 * KiB)) == (b'old', bytes(4))


def _protected_with_clone(store: curvefuse.Store) -> None:
    store.protect('/disk', 'monday')
    store.clone('/disk', 'monday', '/copy')


# (id, set-up or None, the failing call, exception type, Curve code, errno)
FAILURES: list[tuple[str, Callable | None, Callable, type, int, int]] = [
    ('duplicate', None, lambda s: s.snapshot('/disk', 'monday'), ExistsError, -1, errno.EEXIST),
    ('missing-snapshot', None, lambda s: s.get_snapshot('/disk', 'nope'), NotFoundError, -6,
     errno.ENOENT),
    ('missing-volume', None, lambda s: s.snapshot('/nope', 'x'), NotFoundError, -6,
     errno.ENOENT),
    ('open-missing-snapshot', None, lambda s: s.open('/disk@nope'), NotFoundError, -6,
     errno.ENOENT),
    ('directory', lambda s: s.mkdir('/dir'), lambda s: s.snapshot('/dir', 'x'),
     IsDirectoryError, -11, errno.EISDIR),
    ('at-in-name', None, lambda s: s.snapshot('/disk', 'a@b'), InvalidArgumentError, -16,
     errno.EINVAL),
    ('slash-in-name', None, lambda s: s.snapshot('/disk', 'a/b'), InvalidArgumentError, -16,
     errno.EINVAL),
    ('empty-name', None, lambda s: s.snapshot('/disk', ''), InvalidArgumentError, -16,
     errno.EINVAL),
    ('nul-in-name', None, lambda s: s.snapshot('/disk', 'a\0'), InvalidArgumentError, -16,
     errno.EINVAL),
    ('name-not-str', None, lambda s: s.snapshot('/disk', 5), InvalidArgumentError, -16,
     errno.EINVAL),
    ('name-256-bytes', None, lambda s: s.snapshot('/disk', 'n' * 256), NameTooLongError, -16,
     errno.ENAMETOOLONG),
    ('clone-unprotected', None, lambda s: s.clone('/disk', 'monday', '/copy'),
     NotProtectedError, -100, errno.EINVAL),
    ('unprotect-with-clones', _protected_with_clone, lambda s: s.unprotect('/disk', 'monday'),
     BusyError, -15, errno.EBUSY),
    ('delete-with-clones', _protected_with_clone,
     lambda s: s.delete_snapshot('/disk', 'monday', unprotect=True), BusyError, -15, errno.EBUSY),
    ('clone-onto-existing', lambda s: s.protect('/disk', 'monday'),
     lambda s: s.clone('/disk', 'monday', '/disk'), ExistsError, -1, errno.EEXIST),
    ('remove-with-snapshots', None, lambda s: s.remove('/disk'), HasSnapshotsError, -7,
     errno.EBUSY),
    ('rename-with-snapshots', None, lambda s: s.rename('/disk', '/moved'), HasSnapshotsError, -7,
     errno.EBUSY),
    ('rollback-past-newer', lambda s: s.snapshot('/disk', 'tuesday'),
     lambda s: s.rollback('/disk', 'monday'), HasSnapshotsError, -7, errno.EBUSY),
    ('others-volume', None, lambda s: s.as_user('bob').snapshots('/disk'), AccessError, -4,
     errno.EACCES),
    ('root-wrong-password', None, lambda s: s.as_user('root', 'nope'), AccessError, -4,
     errno.EACCES),
]


@pytest.mark.parametrize('setup, call, kind, code, os_errno',
                         [pytest.param(*row[1:], id=row[0]) for row in FAILURES])
def test_failures_raise_with_code_and_errno(disk: curvefuse.Store, setup: Callable | None,
                                            call: Callable, kind: type, code: int,
                                            os_errno: int) -> None:
    """Each failure raises its EngineError subclass with Curve's code and the errno, and leaves
    the snapshots as they were."""
    if setup is not None:
        setup(disk)
    before = disk.snapshots('/disk')
    with pytest.raises(kind) as info:
        call(disk)
    assert type(info.value) is kind
    assert (info.value.code, info.value.errno) == (code, os_errno)
    assert disk.snapshots('/disk') == before
