"""Interleavings and failures the data path must survive, forced deterministically: a delay or a
crash is injected at the exact point, and the real engine does the rest."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from curvefuse.engine import Engine
from curvefuse.engine import fsck as fsck_module
from curvefuse.engine.chunks import ChunkStore
from curvefuse.engine.fsck import fsck

MiB = 2**20


@pytest.fixture
def engine(data_dir: Path):
    opened = Engine.open(str(data_dir), create=True, chunk_size=MiB)
    yield opened
    opened.close()


def test_flush_during_a_write_still_syncs_that_write(engine: Engine,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush that runs while another thread's pwrite is in progress must not take that chunk
    off the to-sync list: the writer's own flush afterwards syncs it."""
    engine.create_volume('/v', 4 * MiB)
    handle = engine.open_volume('/v')
    handle.write(0, b'a' * 4096)
    handle.flush()
    real_pwrite = ChunkStore.pwrite
    writing, flushed = threading.Event(), threading.Event()

    def slow_pwrite(entry, data, offset):
        writing.set()
        flushed.wait(10)
        real_pwrite(entry, data, offset)

    monkeypatch.setattr(engine.chunks, 'pwrite', slow_pwrite)
    writer = threading.Thread(target=handle.write, args=(0, b'B' * 4096))
    writer.start()
    writing.wait(10)
    handle.flush()  # another thread's flush, in the middle of the write
    flushed.set()
    writer.join()
    synced = []
    real_fsync = engine.chunks.fsync
    monkeypatch.setattr(engine.chunks, 'fsync', lambda cid: (synced.append(cid), real_fsync(cid)))
    handle.flush()
    assert synced, 'the write that finished after a flush was never fsynced'
    handle.close()


def test_failed_chunk_create_leaves_nothing_to_commit(engine: Engine) -> None:
    """Creating a chunk file can fail (no space, no inodes, no file descriptors): the write
    fails, and no mapping to a missing file is committed later."""
    engine.create_volume('/v', 64 * MiB)
    handle = engine.open_volume('/v')
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    failed = None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        for i in range(64):
            handle.write(i * MiB, b'x' * 4096)
    except Exception as exc:  # noqa: BLE001 - whichever error the OS gives
        failed = i
        assert 'Too many open files' in str(exc)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert failed is not None, 'the file descriptor limit was never reached'
    engine.chunks.close()  # give the descriptors back
    handle.flush()
    assert handle.read(failed * MiB, 4096) == bytes(4096)
    handle.write(failed * MiB, b'y' * 4096)
    handle.close()
    assert not fsck(engine).corruption


def test_write_during_a_shrink_does_not_wedge_later_flushes(engine: Engine,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk freed by a shrink while another thread had written to it must not stay on the
    to-sync list: every later flush would fail on the missing file."""
    engine.create_volume('/v', 4 * MiB)
    handle = engine.open_volume('/v')
    handle.write(3 * MiB, b'a' * 4096)
    handle.flush()
    real_flush = engine.data.flush

    def flush_then_a_write(vol):  # another thread writes while the shrink goes on
        real_flush(vol)
        handle.write(3 * MiB, b'b' * 4096)

    monkeypatch.setattr(engine.data, 'flush', flush_then_a_write)
    engine.resize('/v', MiB, allow_shrink=True)
    monkeypatch.setattr(engine.data, 'flush', real_flush)
    handle.write(0, b'new data')
    handle.flush()
    handle.close()
    assert engine.open_volume('/v', writable=False).read(0, 8) == b'new data'


def test_read_of_a_chunk_freed_meanwhile_sees_the_new_state(engine: Engine,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk freed (here: zeroed whole) between a read's lookup and its open: the read looks
    again and returns zeros, not EIO."""
    engine.create_volume('/v', 4 * MiB)
    handle = engine.open_volume('/v')
    handle.write(0, b'a' * 4096)
    handle.flush()
    engine.chunks.close()  # no cached descriptor, as after an eviction
    real_pread = engine.chunks.pread
    raced = []

    def pread_after_a_zeroing(*args, **kwargs):
        if not raced:
            raced.append(True)
            zeroing = threading.Thread(target=handle.write, args=(0, bytes(MiB)))
            zeroing.start()
            zeroing.join()
        return real_pread(*args, **kwargs)

    monkeypatch.setattr(engine.chunks, 'pread', pread_after_a_zeroing)
    assert handle.read(0, 4096) == bytes(4096)
    handle.close()


def test_crash_while_destroying_a_volume_leaves_only_leaks(data_dir: Path, expect_logs) -> None:
    """Node, name and chunk mappings go in one commit; a crash before the chunk files are
    deleted leaves leaks that fsck --repair frees, never corruption."""
    subprocess.run([sys.executable, '-c', textwrap.dedent(f'''
        import os
        from curvefuse.engine import Engine
        engine = Engine.open({str(data_dir)!r}, create=True, chunk_size=2**20)
        engine.create_volume('/v', 2**20)
        handle = engine.open_volume('/v')
        handle.write(0, b'x' * 4096)
        handle.close()
        engine.remove('/v')
        Engine._destroy_chunks = lambda self, destroyed: os._exit(9)  # power cut right here
        engine.remove('/RecycleBin/' + engine.listdir('/RecycleBin')[0].name)
    ''')], check=False)
    expect_logs('fsck: leak')
    engine = Engine.open(str(data_dir))
    try:
        report = fsck(engine)
        assert report.corruption == []
        assert any('unreferenced chunk file' in leak for leak in report.leaks)
        fsck(engine, repair=True)
        assert fsck(engine).clean
    finally:
        engine.close()


def test_fsck_repair_spares_chunks_reserved_after_its_snapshot(
        engine: Engine, data_dir: Path, monkeypatch: pytest.MonkeyPatch, expect_logs) -> None:
    """A process that starts writing while fsck --repair runs (reserving chunk ids after fsck's
    first look) keeps its data."""
    engine.create_volume('/v', MiB)
    writer = subprocess.Popen([sys.executable, '-c', textwrap.dedent(f'''
        import sys
        from curvefuse.engine import Engine
        sys.stdin.readline()  # wait until fsck has taken its snapshot
        engine = Engine.open({str(data_dir)!r})
        handle = engine.open_volume('/v')
        handle.write(0, b'important' * 400)  # reserves ids, makes a chunk, does not flush
        print('written', flush=True)
        sys.stdin.readline()
        handle.close()
        engine.close()
    ''')], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    real_check = fsck_module._Checker._check_chunkmap

    def check_then_let_the_writer_start(self, txn, nodes):
        result = real_check(self, txn, nodes)
        writer.stdin.write('go\n')
        writer.stdin.flush()
        line = writer.stdout.readline().strip()
        assert line == 'written', (writer.poll(), writer.stderr.read())
        return result

    monkeypatch.setattr(fsck_module._Checker, '_check_chunkmap', check_then_let_the_writer_start)
    try:
        assert fsck(engine, repair=True).repaired == []
    finally:
        monkeypatch.setattr(fsck_module._Checker, '_check_chunkmap', real_check)
        writer.stdin.write('\n')
        writer.stdin.close()
        assert writer.wait(timeout=60) == 0
    assert engine.open_volume('/v', writable=False).read(0, 9) == b'important'
    assert fsck(engine).clean
