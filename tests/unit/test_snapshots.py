"""Snapshots, clones, flatten and rollback as a user of the Pythonic API notices them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import curvefuse
from curvefuse.errors import (BusyError, ExistsError, HasSnapshotsError, InvalidArgumentError,
                              NotFoundError, NotProtectedError, NotSupportedError, ProtectedError,
                              ReadOnlyError)

MiB = 2**20
BLOCK = 4096


def chunk_files(data_dir: Path) -> int:
    return sum(len(files) for _root, _dirs, files in os.walk(data_dir / 'chunks'))


def written_volume(store: curvefuse.Store, path: str, chunks: int) -> bytes:
    """A volume of `chunks` chunks, every byte written with a pattern; returns the content."""
    size = store.chunk_size
    store.create(path, chunks * size)
    content = b''.join(os.urandom(64) * (size // 64) for _ in range(chunks))
    with store.open(path, 'r+b') as vol:
        vol.pwrite(content, 0)
    return content


def test_a_snapshot_copies_nothing_and_keeps_the_old_bytes(store: curvefuse.Store,
                                                          data_dir: Path) -> None:
    """Taking a snapshot makes no chunk file; later writes leave the snapshot's bytes alone."""
    content = written_volume(store, '/v', 4)
    before = chunk_files(data_dir)
    snap = store.snapshot('/v', 'monday')
    assert chunk_files(data_dir) == before
    assert (snap.name, snap.length, snap.path) == ('monday', len(content), '/v@monday')
    with store.open('/v', 'r+b') as vol:
        vol.pwrite(b'new' * 1000, 12345)
        vol.pwrite(b'x' * store.chunk_size, store.chunk_size)  # a whole chunk
    with store.open('/v@monday') as old, store.open('/v') as new:
        assert old.read() == content
        expected = bytearray(content)
        expected[12345:15345] = b'new' * 1000
        expected[store.chunk_size:2 * store.chunk_size] = b'x' * store.chunk_size
        assert new.read() == bytes(expected)


def test_the_first_small_write_after_a_snapshot_copies_one_block_at_most(
        store: curvefuse.Store) -> None:
    """Copy-on-write is per 4 KiB block: an aligned 4 KiB write copies nothing, a 512-byte
    write copies its one block; the chunk is not copied whole."""
    written_volume(store, '/v', 2)
    base = store.allocated('/v')
    store.snapshot('/v', 's')
    with store.open('/v', 'r+b') as vol:
        vol.pwrite(b'a' * BLOCK, 10 * BLOCK)
        vol.pwrite(b'b' * 512, 20 * BLOCK + 1000)
        vol.flush()
        assert vol.pread(BLOCK, 20 * BLOCK)[1000:1512] == b'b' * 512
    assert store.allocated('/v') - base == 2 * BLOCK


def test_deleting_snapshots_frees_what_only_they_used(store: curvefuse.Store,
                                                       data_dir: Path) -> None:
    """Space only a deleted snapshot read goes back; what the volume still reads stays."""
    content = written_volume(store, '/v', 3)
    store.snapshot('/v', 's1')
    with store.open('/v', 'r+b') as vol:
        vol.pwrite(os.urandom(store.chunk_size), 0)  # chunk 0 replaced: s1 alone reads the old
        vol.pwrite(b'z' * BLOCK, store.chunk_size)  # chunk 1: a partial over s1's
    with_snapshot = store.allocated('/v')
    store.delete_snapshot('/v', 's1')
    freed = with_snapshot - store.allocated('/v')
    assert freed == store.chunk_size  # chunk 0's old version; chunk 1's is still read
    with store.open('/v') as vol:
        assert vol.pread(store.chunk_size, 2 * store.chunk_size) == content[2 * store.chunk_size:]
    assert store.fsck().clean


def test_rollback(store: curvefuse.Store) -> None:
    """Rollback brings back the snapshot's bytes and length; it waits for newer snapshots to
    go and for the volume to be closed."""
    content = written_volume(store, '/v', 1)
    store.snapshot('/v', 's1')
    store.resize('/v', 2 * store.chunk_size)
    with store.open('/v', 'r+b') as vol:
        vol.pwrite(b'later', 0)
        with pytest.raises(BusyError) as busy:
            store.rollback('/v', 's1')
        assert busy.value.code == -15
    store.snapshot('/v', 's2')
    with pytest.raises(HasSnapshotsError, match='s2'):
        store.rollback('/v', 's1')
    store.delete_snapshot('/v', 's2')
    entry = store.rollback('/v', 's1')
    assert entry.length == store.chunk_size
    with store.open('/v') as vol:
        assert vol.read() == content


def test_protection_clones_and_children(store: curvefuse.Store) -> None:
    """Clones need a protected snapshot; a snapshot with clones can be neither unprotected nor
    deleted; a flattened clone lets go of it."""
    content = written_volume(store, '/v', 2)
    store.snapshot('/v', 's')
    with pytest.raises(NotProtectedError) as refused:
        store.clone('/v', 's', '/c')
    assert refused.value.code == -100
    store.protect('/v', 's')
    store.protect('/v', 's')  # idempotent
    with pytest.raises(ProtectedError):
        store.delete_snapshot('/v', 's')
    clone = store.clone('/v', 's', '/c')
    assert clone.length == len(content)
    with pytest.raises(ExistsError):
        store.clone('/v', 's', '/c')
    assert store.children('/v', 's') == ['/c'] == store.children('/v')
    for refuse in (lambda: store.unprotect('/v', 's'),
                   lambda: store.delete_snapshot('/v', 's', unprotect=True)):
        with pytest.raises(BusyError, match='/c'):
            refuse()
    with store.open('/c', 'r+b') as vol:
        assert vol.read() == content
        vol.pwrite(b'mine', 100)
    with store.open('/v', 'r+b') as vol:
        vol.pwrite(b'source moves on', 0)
    assert store.flatten_progress('/c') == 0
    store.flatten('/c')
    assert store.flatten_progress('/c') == 100
    assert store.children('/v') == []
    store.delete_snapshot('/v', 's', unprotect=True)
    with store.open('/c') as vol:
        assert vol.read() == content[:100] + b'mine' + content[104:]
    assert store.fsck().clean


def test_clones_of_clones_and_snapshots_of_clones(store: curvefuse.Store) -> None:
    content = written_volume(store, '/v', 1)
    store.snapshot('/v', 's', protect=True)
    store.clone('/v', 's', '/c1')
    with store.open('/c1', 'r+b') as vol:
        vol.pwrite(b'one', 0)
    store.snapshot('/c1', 't', protect=True)
    store.clone('/c1', 't', '/c2')
    with store.open('/c1', 'r+b') as vol:
        vol.pwrite(b'ONE', 0)
    with store.open('/c2') as vol:
        assert vol.read() == b'one' + content[3:]
    with pytest.raises(BusyError):
        store.unprotect('/c1', 't')
    store.flatten('/c2')
    store.flatten('/c1')
    store.delete_snapshot('/c1', 't', unprotect=True)
    store.delete_snapshot('/v', 's', unprotect=True)
    with store.open('/c2') as c2, store.open('/c1') as c1:
        assert c2.read() == b'one' + content[3:]
        assert c1.read() == b'ONE' + content[3:]


def test_read_only_things_refuse_writes(store: curvefuse.Store) -> None:
    """A snapshot and a read-only clone read fine and refuse writes with Curve's READONLY."""
    written_volume(store, '/v', 1)
    store.snapshot('/v', 's', protect=True)
    store.clone('/v', 's', '/ro', readonly=True)
    with pytest.raises(ReadOnlyError):
        store.open('/v@s', 'r+b')
    with store.open('/v@s') as snap, store.open('/ro', 'r+b') as clone:
        assert snap.read(10) == clone.read(10)
        assert not snap.writable()
        for vol in (snap, clone):
            with pytest.raises(ReadOnlyError) as refused:
                vol.pwrite(b'no', 0)
            assert (refused.value.code, refused.value.errno) == (-32, 30)  # EROFS
    with pytest.raises(ReadOnlyError):
        store.resize('/ro', 2 * store.chunk_size)


def test_a_volume_with_snapshots_cannot_go_away(store: curvefuse.Store) -> None:
    """Curve's rule: delete, rename and chown of a volume with snapshots give UNDER_SNAPSHOT;
    shrinking is refused too (it would free what snapshots read)."""
    written_volume(store, '/v', 1)
    store.snapshot('/v', 's')
    for refuse in (lambda: store.remove('/v'), lambda: store.rename('/v', '/w'),
                   lambda: store.chown('/v', 'alice'),
                   lambda: store.resize('/v', BLOCK, allow_shrink=True)):
        with pytest.raises(HasSnapshotsError) as refused:
            refuse()
        assert refused.value.code == -7
    store.delete_snapshot('/v', 's')
    store.resize('/v', BLOCK, allow_shrink=True)
    store.remove('/v')


def test_an_unflattened_clone_cannot_shrink(store: curvefuse.Store) -> None:
    written_volume(store, '/v', 1)
    store.snapshot('/v', 's', protect=True)
    store.clone('/v', 's', '/c')
    with pytest.raises(NotSupportedError):
        store.resize('/c', BLOCK, allow_shrink=True)


def test_shrinking_after_snapshots_were_deleted_hides_their_old_bytes(
        store: curvefuse.Store) -> None:
    """A volume whose chunks are layered over an old version shrinks and grows back to zeros."""
    chunk = store.chunk_size
    written_volume(store, '/v', 2)
    store.snapshot('/v', 's')
    with store.open('/v', 'r+b') as vol:
        vol.pwrite(b'n' * BLOCK, 0)
    store.delete_snapshot('/v', 's')
    store.resize('/v', chunk // 2, allow_shrink=True)
    store.resize('/v', 2 * chunk)
    with store.open('/v') as vol:
        data = vol.read()
    assert data[:BLOCK] == b'n' * BLOCK
    assert data[chunk // 2:] == bytes(2 * chunk - chunk // 2)


@pytest.mark.parametrize('name', ['', 'a/b', 'a@b', 'nul\0', 'x' * 256, '..'])
def test_bad_snapshot_names_change_nothing(store: curvefuse.Store, name: str) -> None:
    store.create('/v', MiB)
    with pytest.raises(InvalidArgumentError) as refused:
        store.snapshot('/v', name)
    assert refused.value.code == -16
    assert store.snapshots('/v') == []


def test_snapshot_errors(store: curvefuse.Store) -> None:
    store.create('/v', MiB)
    store.mkdir('/d')
    store.snapshot('/v', 's')
    with pytest.raises(ExistsError):
        store.snapshot('/v', 's')
    with pytest.raises(NotFoundError):
        store.delete_snapshot('/v', 'missing')
    with pytest.raises(NotFoundError):
        store.snapshot('/missing', 's')
    with pytest.raises(curvefuse.EngineError):
        store.snapshot('/d', 's')
    alice = store.as_user('alice')
    with pytest.raises(curvefuse.AccessError):
        alice.snapshots('/v')
    assert [s.name for s in store.snapshots('/v')] == ['s']


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code), *args], check=True,
                          capture_output=True, text=True, timeout=120)


def test_a_snapshot_taken_by_another_process_never_changes(store: curvefuse.Store,
                                                          data_dir: Path) -> None:
    """Blocks this process wrote but had not flushed when another process took a snapshot stay
    out of that snapshot, yet stay in the volume."""
    content = written_volume(store, '/v', 1)
    store.snapshot('/v', 's1')
    with store.open('/v', 'r+b') as vol:
        vol.pwrite(b'a' * BLOCK, 0)
        vol.flush()  # a committed partial chunk at the live version
        vol.pwrite(b'b' * BLOCK, 8 * BLOCK)  # unflushed, in that same partial chunk
        run_python('''
            import sys, curvefuse
            with curvefuse.open_store(sys.argv[1]) as store:
                store.snapshot('/v', 's2')
            ''', str(data_dir))
        vol.flush()
        vol.pwrite(b'c' * BLOCK, 0)  # over a block the snapshot holds
    expected_s2 = b'a' * BLOCK + content[BLOCK:]
    with store.open('/v@s2') as s2, store.open('/v') as live:
        assert s2.read() == expected_s2
        now = live.read()
    assert now[:BLOCK] == b'c' * BLOCK
    assert now[8 * BLOCK:9 * BLOCK] == b'b' * BLOCK


def test_a_flatten_killed_halfway_resumes_and_completes(tmp_path: Path, expect_logs) -> None:
    """kill -9 of the process flattening leaves its progress in the store; the next flatten
    resumes there and ends with the right bytes (the dead process's in-flight chunk is a leak
    fsck repairs)."""
    data_dir = tmp_path / 'flat'
    with curvefuse.open_store(str(data_dir), create=True, chunk_size=MiB) as store:
        content = written_volume(store, '/v', 384)
        store.snapshot('/v', 's', protect=True)
        store.clone('/v', 's', '/c')
        with store.open('/c', 'r+b') as vol:
            vol.pwrite(b'own', 5 * MiB)
    worker = subprocess.Popen([sys.executable, '-c', textwrap.dedent('''
        import sys, curvefuse
        with curvefuse.open_store(sys.argv[1]) as store:
            store.flatten('/c')
        '''), str(data_dir)])
    try:
        with curvefuse.open_store(str(data_dir)) as store:
            deadline = time.monotonic() + 60
            while store.flatten_progress('/c') < 10 and time.monotonic() < deadline:
                time.sleep(0.01)
            progress = store.flatten_progress('/c')
            with pytest.raises(BusyError) as busy:
                store.remove('/c')
            assert busy.value.code == -15
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            stopped_at = store.flatten_progress('/c')
            assert 10 <= progress <= stopped_at < 100
            store.flatten('/c')
            assert store.flatten_progress('/c') == 100
            with store.open('/c') as vol:
                assert vol.read() == content[:5 * MiB] + b'own' + content[5 * MiB + 3:]
            report = store.fsck(repair=True)
            assert not report.corruption
            store.delete_snapshot('/v', 's', unprotect=True)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
