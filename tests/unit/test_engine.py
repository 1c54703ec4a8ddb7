"""The storage engine as a user of any door would notice it: thin, durable, shared, checked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lmdb
import pytest

import curvefuse
from curvefuse.engine import Engine, WouldBlock
from curvefuse.errors import FormatError, OutOfRangeError

from ..util import assert_store_clean

MiB = 2**20
GiB = 2**30
TiB = 2**40


def run_python(code: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a snippet in a new interpreter (a separate process using the same store)."""
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code), *args], check=check,
                          capture_output=True, text=True, timeout=120)


def du_bytes(path: Path) -> int:
    """Disk blocks actually used under path, as du counts them."""
    return sum(os.lstat(os.path.join(root, name)).st_blocks * 512
               for root, _dirs, files in os.walk(path) for name in files)


def test_terabyte_volume_is_thin(store: curvefuse.Store, data_dir: Path) -> None:
    """A 1 TiB volume with 10 MiB written uses about 10 MiB of disk; the rest reads as zeros."""
    store.create('/big', '1T')
    pattern = os.urandom(MiB)
    with store.open('/big', 'r+b') as vol:
        for i in range(10):
            vol.pwrite(pattern, i * 97 * GiB)  # scattered over the whole terabyte
        vol.flush()
        assert vol.pread(MiB, 5 * 97 * GiB) == pattern
        assert vol.pread(4096, TiB - 4096) == bytes(4096)
        assert vol.pread(MiB, 3 * GiB) == bytes(MiB)
    assert store.stat('/big').length == TiB
    assert 10 * MiB <= store.allocated('/big') < 11 * MiB
    assert du_bytes(data_dir / 'chunks') < 12 * MiB


def test_zero_writes_allocate_nothing_and_a_zeroed_chunk_is_freed(store: curvefuse.Store) -> None:
    """Zeros written where nothing is allocated take no space; zeroing a whole chunk frees it."""
    chunk = store.chunk_size
    store.create('/v', 4 * chunk)
    with store.open('/v', 'r+b') as vol:
        vol.pwrite(bytes(2 * chunk), 0)
        vol.flush()
        assert store.allocated('/v') == 0
        vol.pwrite(b'\x01' * chunk, chunk)
        vol.flush()
        assert store.allocated('/v') >= chunk
        vol.pwrite(bytes(chunk), chunk)
        vol.flush()
        assert store.allocated('/v') == 0
        assert vol.pread(chunk, chunk) == bytes(chunk)


def test_io_spanning_chunks_round_trips(store: curvefuse.Store) -> None:
    chunk = store.chunk_size
    store.create('/v', 4 * chunk)
    data = os.urandom(2 * chunk + 8192)
    with store.open('/v', 'r+b') as vol:
        vol.pwrite(data, chunk - 4096)
        assert vol.pread(len(data), chunk - 4096) == data
        vol.flush()
    with store.open('/v') as vol:
        assert vol.pread(len(data) + 8192, chunk - 8192) == bytes(4096) + data + bytes(4096)


def test_write_past_the_end_changes_nothing(store: curvefuse.Store) -> None:
    store.create('/v', 8192)
    with store.open('/v', 'r+b') as vol:
        with pytest.raises(OutOfRangeError) as info:
            vol.pwrite(b'x' * 8192, 4096)
        assert info.value.code == -2  # Curve's FAILED
        assert vol.pread(8192, 0) == bytes(8192)


WRITER = '''
import os, sys, curvefuse
store = curvefuse.open_store(sys.argv[1], create=True)
vol = store.open('/v', 'r+b')
vol.pwrite(b'D' * 65536, 0)          # durable: flushed below
vol.pwrite(b'E' * 65536, 65536)
vol.flush()
vol.pwrite(b'L' * 65536, 8 * 2**20)  # never flushed: may be lost, must not corrupt
print('flushed', flush=True)
sys.stdin.read()                     # wait to be killed
'''


def test_flushed_data_survives_kill_9(store: curvefuse.Store, data_dir: Path,
                                      expect_logs) -> None:
    """Everything written before flush survives kill -9 of the writer; what was not flushed
    leaves at most a leak that fsck --repair frees, never a corruption."""
    store.create('/v', 64 * MiB)
    proc = subprocess.Popen([sys.executable, '-c', WRITER, str(data_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == 'flushed'
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with store.open('/v') as vol:
        assert vol.pread(65536, 0) == b'D' * 65536
        assert vol.pread(65536, 65536) == b'E' * 65536
        assert vol.pread(65536, 8 * MiB) in (b'L' * 65536, bytes(65536))
    expect_logs('fsck: leak')
    report = store.fsck()
    assert not report.corruption
    assert report.exit_code == 3  # the killed writer's unflushed chunk and its reservation
    store.fsck(repair=True)
    assert store.fsck().clean


def test_flushed_writes_are_seen_by_another_process(store: curvefuse.Store, data_dir: Path) -> None:
    store.create('/shared', 16 * MiB)
    run_python('''
        import sys, curvefuse
        with curvefuse.open_store(sys.argv[1]) as store, store.open('/shared', 'r+b') as vol:
            vol.pwrite(b'from-child' * 410, 4096)
    ''', str(data_dir))
    with store.open('/shared') as vol:
        assert vol.pread(4100, 4096) == b'from-child' * 410
    ours = store.open('/shared', 'r+b')
    ours.pwrite(b'P' * 4096, 12 * MiB)
    ours.flush()
    out = run_python('''
        import sys, curvefuse
        with curvefuse.open_store(sys.argv[1]) as store, store.open('/shared') as vol:
            sys.stdout.write(vol.pread(4096, 12 * 2**20).decode())
    ''', str(data_dir)).stdout
    ours.close()
    assert out == 'P' * 4096


def test_two_processes_write_one_store_at_once(data_dir: Path) -> None:
    """Two writers, each creating directories and volumes and writing them concurrently:
    nothing is lost, nothing is corrupt."""
    code = '''
        import os, sys, curvefuse
        name, count = sys.argv[2], 20
        with curvefuse.open_store(sys.argv[1], create=True) as store:
            store.mkdir(f'/{name}')
            for i in range(count):
                store.create(f'/{name}/vol{i}', '8M')
                with store.open(f'/{name}/vol{i}', 'r+b') as vol:
                    for block in range(0, 8 * 2**20, 2**20):
                        vol.pwrite(f'{name}:{i}:{block}'.encode().ljust(4096, b'.'), block)
    '''
    procs = [subprocess.Popen([sys.executable, '-c', textwrap.dedent(code), str(data_dir), name])
             for name in ('alpha', 'beta')]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with curvefuse.open_store(str(data_dir)) as store:
        for name in ('alpha', 'beta'):
            assert len(store.listdir(f'/{name}')) == 20
            for i in range(20):
                with store.open(f'/{name}/vol{i}') as vol:
                    for block in range(0, 8 * MiB, MiB):
                        expected = f'{name}:{i}:{block}'.encode().ljust(4096, b'.')
                        assert vol.pread(4096, block) == expected
    assert_store_clean(data_dir)


def test_not_a_store_and_unknown_format_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match='not a curvefuse store'):
        curvefuse.open_store(str(tmp_path / 'nothing'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FormatError, match='not a curvefuse store'):
        curvefuse.open_store(str(tmp_path / 'empty'))
    curvefuse.open_store(str(tmp_path / 's'), create=True).close()
    env = lmdb.open(str(tmp_path / 's' / 'meta'), max_dbs=8)
    with env.begin(write=True, db=env.open_db(b'config')) as txn:
        txn.put(b'format', b'99')
    env.close()
    with pytest.raises(FormatError, match='format 99'):
        curvefuse.open_store(str(tmp_path / 's'))


def test_store_settings_are_kept(tmp_path: Path) -> None:
    """Chunk size and cluster id are chosen at creation and stay; reopening never changes them."""
    path = str(tmp_path / 's')
    with curvefuse.open_store(path, create=True, chunk_size=2**20) as store:
        cluster = store.cluster_id
    with curvefuse.open_store(path, create=True, chunk_size=2**24) as store:
        assert (store.chunk_size, store.cluster_id) == (2**20, cluster)


def test_one_engine_per_process(data_dir: Path) -> None:
    """Opening a store twice in one process shares one LMDB environment (LMDB's rule)."""
    first = Engine.open(str(data_dir), create=True)
    second = Engine.open(str(data_dir))
    try:
        assert first is second
    finally:
        second.close()
        first.close()


def fsck_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'curvefuse.cli', 'fsck', str(data_dir), *args],
                          capture_output=True, text=True, timeout=60)


def test_fsck_tells_clean_leaks_and_corruption_apart(data_dir: Path, expect_logs) -> None:
    """Exit 0 clean, 3 leaks only, 2 corruption, as qemu-img check; --repair frees leaks."""
    with curvefuse.open_store(str(data_dir), create=True) as store:
        store.create('/v', '16M')
        with store.open('/v', 'r+b') as vol:
            vol.pwrite(b'x' * 4096, 0)
            vol.pwrite(b'y' * 4096, 8 * MiB)
        chunk_files = sorted(p for p in (data_dir / 'chunks').rglob('*') if p.is_file())
    assert fsck_cli(data_dir).returncode == 0

    stray = chunk_files[0].parent / f'{0xfffff0:016x}'
    stray.write_bytes(b'orphan')
    result = fsck_cli(data_dir)
    assert result.returncode == 3, result.stdout
    assert 'unreferenced chunk file' in result.stdout
    assert fsck_cli(data_dir, '--repair').returncode == 0
    assert not stray.exists()
    assert fsck_cli(data_dir).returncode == 0

    chunk_files[0].unlink()
    result = fsck_cli(data_dir)
    assert result.returncode == 2
    assert 'is missing' in result.stdout
    assert 'Traceback' not in result.stderr
    # Put the store right so the data_dir fixture's own check passes: drop the volume.
    with curvefuse.open_store(str(data_dir)) as store:
        store.remove('/v')
        store.delete_forever(store.listdir('/RecycleBin')[0].name.join(['/RecycleBin/', '']))


def test_fsck_sees_nothing_wrong_while_another_process_writes(store: curvefuse.Store,
                                                              data_dir: Path) -> None:
    """Chunks a live process wrote but has not flushed yet are in flight, not leaks."""
    store.create('/v', 64 * MiB)
    proc = subprocess.Popen([sys.executable, '-c', WRITER, str(data_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == 'flushed'
        assert store.fsck().clean
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert store.fsck().clean


def test_recycle_bin_keeps_data_until_destroyed(store: curvefuse.Store, data_dir: Path) -> None:
    store.create('/v', '8M')
    with store.open('/v', 'r+b') as vol:
        vol.pwrite(b'k' * MiB, 0)
    store.remove('/v')
    [recycled] = store.listdir('/RecycleBin')
    assert recycled.original_path == '/v'
    assert store.allocated(f'/RecycleBin/{recycled.name}') >= MiB
    store.recover('/v')
    with store.open('/v') as vol:
        assert vol.pread(MiB, 0) == b'k' * MiB
    store.remove('/v')
    assert store.empty_recycle_bin() == 1
    assert store.listdir('/RecycleBin') == []
    assert du_bytes(data_dir / 'chunks') == 0


def test_timestamps_follow_changes(store: curvefuse.Store) -> None:
    store.create('/v', '1M')
    before = store.stat('/v')
    time.sleep(0.01)
    with store.open('/v', 'r+b') as vol:
        vol.pwrite(b'x' * 4096, 0)
    after = store.stat('/v')
    assert after.modified > before.modified
    assert after.created == before.created  # a write is not a creation


def test_nowait_read_starts_the_fetch_and_later_succeeds(store: curvefuse.Store) -> None:
    """The mount's non-blocking read: data not in the page cache gives WouldBlock, having
    started the disk read, so a later try returns the right bytes without blocking."""
    store.create('/v', '32M')
    data = os.urandom(65536)
    with store.open('/v', 'r+b') as vol:
        vol.pwrite(data, 5 * MiB)
        vol.flush()
        engine = store.engine
        with engine.meta.read() as txn:
            [(_idx, _seq, chunk_id, _bits)] = engine.meta.volume_chunks(txn, vol.handle.vol_id)
        fd = os.open(engine.chunks.chunk_path(chunk_id), os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # evict it from the page cache
        os.close(fd)
        with pytest.raises(WouldBlock):
            vol.handle.read(5 * MiB, 65536, nowait=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                assert vol.handle.read(5 * MiB, 65536, nowait=True) == data
                break
            except WouldBlock:
                assert time.monotonic() < deadline, 'the fetch never completed'
                time.sleep(0.001)
        # The never-written tail of a chunk file is zeros, cached or not: no WouldBlock.
        assert vol.handle.read(12 * MiB, 4096, nowait=True) == bytes(4096)
        # Sequential readers may ask for more to come in; the answer is the same bytes.
        assert vol.handle.read(5 * MiB, 4096, nowait=True, readahead=MiB) == data[:4096]


def test_nowait_write_that_must_allocate_changes_nothing(store: curvefuse.Store) -> None:
    store.create('/v', '32M')
    with store.open('/v', 'r+b') as vol:
        with pytest.raises(WouldBlock):
            vol.handle.write(0, b'x' * 4096, nowait=True)
        assert store.allocated('/v') == 0
        vol.pwrite(b'y' * 4096, 0)  # allocates the chunk
        assert vol.handle.write(4096, b'z' * 4096, nowait=True) == 4096
        assert vol.pread(8192, 0) == b'y' * 4096 + b'z' * 4096


def test_directory_entries_and_snapshot_children_are_both_answered(store: curvefuse.Store) -> None:
    """The mount lists a directory by id while the snapshot API lists a snapshot's clones by
    path: neither may shadow the other (one did, and every `ls` in the mount gave EINVAL)."""
    engine = store._engine
    store.create('/v', MiB)
    store.snapshot('/v', 's', protect=True)
    store.clone('/v', 's', '/c')
    assert sorted(node.name for node in engine.dir_entries(engine.stat('/').id)) == \
        ['RecycleBin', 'c', 'v']
    assert engine.children('/v', 's') == ['/c']


def test_flatten_keeps_holes_holes(store: curvefuse.Store) -> None:
    """A flattened clone uses the disk its source's data needs, not a MiB per scattered block."""
    chunk = store.chunk_size
    store.create('/v', 2 * chunk)
    with store.open('/v', 'r+b') as vol:
        vol.pwrite(b'a' * 4096, 8192)
        vol.pwrite(b'b' * 4096, chunk + 2**20 + 4096)
    store.snapshot('/v', 's', protect=True)
    store.clone('/v', 's', '/c')
    store.flatten('/c')
    assert store.clone_state('/c') is None
    assert store.allocated('/c') == 8192
    with store.open('/c') as clone, store.open('/v') as source:
        assert clone.read() == source.read()
    store.remove('/c')
    store.empty_recycle_bin()
