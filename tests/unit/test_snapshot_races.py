"""Snapshots, clones and rollback meeting concurrent writes, flushes and failures: each
interleaving is forced at the exact point, and the real engine does the rest."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from curvefuse.engine import Engine
from curvefuse.engine import chunks as chunks_module
from curvefuse.engine.fsck import fsck
from curvefuse.errors import BusyError, NotFoundError

MiB = 2**20
BLOCK = 4096


@pytest.fixture
def engine(data_dir: Path):
    opened = Engine.open(str(data_dir), create=True, chunk_size=MiB)
    yield opened
    opened.close()


def test_a_refused_rollback_keeps_unflushed_writes(engine: Engine) -> None:
    """A rollback refused (the volume is open, or no such snapshot) changes nothing: the open
    handle's writes not yet flushed are still there and still reach the disk."""
    engine.create_volume('/v', 2 * MiB)
    handle = engine.open_volume('/v')
    handle.write(0, b'old' * 1000)
    handle.flush()
    engine.create_snapshot('/v', 's')
    handle.write(0, b'new' * 1000)  # a partial chunk over the snapshot's
    handle.write(MiB, b'fresh' * 1000)  # a chunk of its own
    with pytest.raises(NotFoundError):
        engine.rollback('/v', 'no-such-snapshot')
    with pytest.raises(BusyError):
        engine.rollback('/v', 's')
    handle.close()
    reader = engine.open_volume('/v', writable=False)
    assert reader.read(0, 3000) == b'new' * 1000
    assert reader.read(MiB, 5000) == b'fresh' * 1000
    reader.close()
    assert not fsck(engine).corruption


@pytest.mark.parametrize('partial_committed', [False, True])
def test_a_write_during_a_whole_chunk_zeroing_is_not_laid_over_the_snapshot(
        engine: Engine, monkeypatch: pytest.MonkeyPatch, partial_committed: bool) -> None:
    """A whole chunk of zeros releases the chunk (a tombstone hides the snapshot's). Another
    thread's small write landing between the release's decision and its commit must not end up
    as a partial chunk over the snapshot's data (or over a chunk the release freed): the chunk
    reads as zeros plus, at most, that write."""
    engine.create_volume('/v', MiB)
    handle = engine.open_volume('/v')
    handle.write(0, b'a' * MiB)
    handle.flush()
    engine.create_snapshot('/v', 's')
    if partial_committed:
        handle.write(0, b'b' * BLOCK)
        handle.flush()
    real_write = engine.meta.write
    other = threading.Thread(target=handle.write, args=(BLOCK, b'B' * BLOCK))

    def write_meanwhile(fn):
        if fn.__name__ == 'unmap' and not other.is_alive() and other.ident is None:
            other.start()
            other.join(0.5)  # with the release holding writes back, it waits instead
        return real_write(fn)

    monkeypatch.setattr(engine.meta, 'write', write_meanwhile)
    handle.write(0, bytes(MiB))
    other.join()
    monkeypatch.setattr(engine.meta, 'write', real_write)
    handle.flush()
    assert other.ident is not None
    data = handle.read(0, MiB)
    assert data[BLOCK:2 * BLOCK] in (bytes(BLOCK), b'B' * BLOCK)
    assert data[:BLOCK] + data[2 * BLOCK:] == bytes(MiB - BLOCK)
    handle.close()
    assert not fsck(engine).corruption
    assert engine.open_snapshot('/v', 's').read(0, MiB) == b'a' * MiB


def test_a_whole_chunk_write_during_a_flush_keeps_the_partial_it_replaces(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush is about to commit a new partial chunk when another write replaces the whole
    chunk: the partial chunk's file must stay until no mapping names it (a crash right after
    that flush must leave no mapping to a missing file)."""
    engine.create_volume('/v', MiB)
    handle = engine.open_volume('/v')
    handle.write(0, b'a' * MiB)
    handle.flush()
    engine.create_snapshot('/v', 's')
    handle.write(0, b'b' * BLOCK)  # a partial chunk over the snapshot's, not yet committed
    real_write = engine.meta.write

    def replace_the_chunk_first(fn):
        if fn.__name__ == 'commit':
            monkeypatch.setattr(engine.meta, 'write', real_write)
            handle.write(0, b'c' * MiB)  # another thread, between the flush's look and commit
        return real_write(fn)

    monkeypatch.setattr(engine.meta, 'write', replace_the_chunk_first)
    handle.flush()
    assert not fsck(engine).corruption  # the state a crash here would leave
    assert engine.open_snapshot('/v', 's').read(0, MiB) == b'a' * MiB
    handle.flush()
    assert handle.read(0, MiB) == b'c' * MiB
    handle.close()


def test_a_partial_chunk_replaced_by_another_process_is_not_mapped_again(
        engine: Engine, data_dir: Path, expect_logs) -> None:
    """This process has unflushed blocks in a committed partial chunk; another process
    replaces the whole chunk and flushes first, which frees that partial chunk. This process's
    flush must not map the freed file again (nor free the other process's chunk): the other
    flush won that chunk."""
    expect_logs('was overwritten by another process')
    engine.create_volume('/v', MiB)
    handle = engine.open_volume('/v')
    handle.write(0, b'a' * MiB)
    handle.flush()
    engine.create_snapshot('/v', 's')
    handle.write(0, b'b' * BLOCK)
    handle.flush()  # a committed partial chunk over the snapshot's
    handle.write(BLOCK, b'c' * BLOCK)  # more blocks in it, unflushed
    subprocess.run([sys.executable, '-c', textwrap.dedent(f'''
        from curvefuse.engine import Engine
        engine = Engine.open({str(data_dir)!r})
        handle = engine.open_volume('/v')
        handle.write(0, b'd' * 2**20)
        handle.close()
        engine.close()
    ''')], check=True)
    handle.flush()
    assert not fsck(engine).corruption
    assert handle.read(0, MiB) == b'd' * MiB
    handle.close()


def test_a_shrink_and_a_copy_on_write_that_frees_a_chunk_do_not_deadlock(data_dir: Path) -> None:
    """A write that copies on write (cow_lock) and zeroes a whole chunk frees that chunk
    (flush_lock) only after letting cow_lock go, so a shrink, which holds flush_lock while its
    tail copies on write, cannot wait on it in a circle. In a child process, so a deadlock is a
    timeout and a clean failure, not a hung test run."""
    result = subprocess.run([sys.executable, '-c', textwrap.dedent('''
        import sys, threading
        from curvefuse.engine import Engine
        from curvefuse.engine.fsck import fsck
        chunk, block = 2**20, 4096
        engine = Engine.open(sys.argv[1], create=True, chunk_size=chunk)
        engine.create_volume('/v', 3 * chunk)
        handle = engine.open_volume('/v')
        handle.write(0, b'x' * 3 * chunk)
        handle.flush()
        engine.create_snapshot('/v', 's')
        for idx in range(3):
            handle.write(idx * chunk, b'y' * block)  # partial chunks over the snapshot's
        handle.flush()
        handle.close()
        engine.delete_snapshot('/v', 's')  # the old chunks stay: the partials read through

        releasing, shrink_started = threading.Event(), threading.Event()
        release_chunks = engine.data._release_chunks

        def release_after_the_shrink_began(vol, releases):
            releasing.set()
            shrink_started.wait(10)
            threading.Event().wait(0.3)  # the shrink takes flush_lock, reaches its tail write
            release_chunks(vol, releases)

        engine.data._release_chunks = release_after_the_shrink_began

        def write():  # copy-on-write in chunk 0's last block, then chunk 1 all zeros
            writer = engine.open_volume('/v')
            writer.write(chunk - 100, bytes(100 + chunk))
            writer.close()

        def shrink():
            releasing.wait(10)
            shrink_started.set()
            engine.resize('/v', 2 * chunk + 2 * block, allow_shrink=True)

        threads = [threading.Thread(target=fn) for fn in (write, shrink)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        reader = engine.open_volume('/v')
        data = reader.read(0, 2 * chunk + 2 * block)
        reader.close()
        assert data == (b'y' * block + b'x' * (chunk - block - 100) + bytes(100 + chunk) +
                        b'y' * block + b'x' * block)
        assert fsck(engine).clean
        engine.close()
        print('done')
        '''), str(data_dir)], capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == 'done', result.stderr


def unflushed_blocks_over_a_snapshot(engine: Engine, snapshot: str):
    """/v, 1 MiB of b'o' frozen as `snapshot`, open with block 0 (b'a') in a committed partial
    chunk over the snapshot's and block 8 (b'b') unflushed in that same chunk."""
    engine.create_volume('/v', MiB)
    handle = engine.open_volume('/v')
    handle.write(0, b'o' * MiB)
    handle.flush()
    engine.create_snapshot('/v', snapshot)
    handle.write(0, b'a' * BLOCK)
    handle.flush()
    handle.write(8 * BLOCK, b'b' * BLOCK)
    return handle


def snapshot_kept_its_bytes_then_clean(engine: Engine, snapshot: str) -> None:
    """The snapshot of `unflushed_blocks_over_a_snapshot` still reads its 1 MiB of b'o'; once
    it is deleted the store is clean."""
    reader = engine.open_snapshot('/v', snapshot)
    assert reader.read(0, MiB) == b'o' * MiB
    reader.close()
    engine.delete_snapshot('/v', snapshot)
    assert fsck(engine).clean


@pytest.mark.parametrize('still_open', [True, False], ids=['fd-cached', 'fd-evicted'])
def test_unflushed_blocks_in_a_chunk_another_process_freed_give_way(
        engine: Engine, data_dir: Path, expect_logs, monkeypatch: pytest.MonkeyPatch,
        still_open: bool) -> None:
    """This process has unflushed blocks in a partial chunk; another process snapshots the
    volume, overwrites that whole chunk and deletes the snapshot, which frees the partial chunk.
    The later whole-chunk write wins: this process's flush drops its stale blocks instead of
    failing for ever or laying them over the other write (whether or not this process still
    holds the freed chunk's descriptor)."""
    expect_logs('overwritten by another process')
    if not still_open:
        monkeypatch.setattr(chunks_module, '_FD_CACHE_SIZE', 1)
    handle = unflushed_blocks_over_a_snapshot(engine, 's1')
    subprocess.run([sys.executable, '-c', textwrap.dedent('''
        import sys, curvefuse
        with curvefuse.open_store(sys.argv[1]) as store:
            store.snapshot('/v', 's2')
            with store.open('/v', 'r+b') as vol:
                vol.pwrite(b'Z' * 2**20, 0)
            store.delete_snapshot('/v', 's2')
        '''), str(data_dir)], check=True, timeout=60)
    if not still_open:
        snapshot = engine.open_snapshot('/v', 's1')
        snapshot.read(0, BLOCK)  # its chunk takes the one cached descriptor
        snapshot.close()
    handle.flush()
    handle.close()
    reader = engine.open_volume('/v')
    assert reader.read(0, MiB) == b'Z' * MiB
    reader.close()
    snapshot_kept_its_bytes_then_clean(engine, 's1')


def test_a_write_after_another_process_zeroed_the_chunk_lands(
        engine: Engine, data_dir: Path, expect_logs) -> None:
    """This process has unflushed blocks in a committed partial chunk; another process zeroes
    the whole chunk (a tombstone over the snapshot's data, the partial chunk freed). The next
    write here starts afresh on the zeros instead of going into the freed chunk and being lost
    at the flush."""
    expect_logs('overwritten by another process')
    handle = unflushed_blocks_over_a_snapshot(engine, 's')
    subprocess.run([sys.executable, '-c', textwrap.dedent('''
        import sys, curvefuse
        with curvefuse.open_store(sys.argv[1]) as store:
            with store.open('/v', 'r+b') as vol:
                vol.pwrite(bytes(2**20), 0)
        '''), str(data_dir)], check=True, timeout=60)
    handle.write(16 * BLOCK, b'c' * BLOCK)
    handle.flush()
    assert handle.read(0, MiB) == bytes(16 * BLOCK) + b'c' * BLOCK + bytes(MiB - 17 * BLOCK)
    handle.close()
    snapshot_kept_its_bytes_then_clean(engine, 's')
