"""Snapshots, clones and rollback meeting concurrent writes, flushes and failures: each
interleaving is forced at the exact point, and the real engine does the rest."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from curvefuse.engine import Engine
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
