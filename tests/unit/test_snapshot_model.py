"""Snapshots, clones, flatten and rollback against an in-memory model (a Hypothesis state machine).

Random sequences of writes (aligned, unaligned, whole chunks, zeros), snapshots, clones, flattens,
rollbacks, deletions, flushes and reopenings of the store; after every step the bytes of every
volume and snapshot must equal the model's at many offsets, and fsck must find the store clean at
the end of each sequence. Chunks are 64 KiB (16 copy-on-write blocks) so a few KiB of writes reach
every case: partial chunks over older versions, clones of clones, tombstones, migrations.
"""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, consumes, invariant, multiple,
                                 precondition, rule)

from curvefuse.engine import Engine
from curvefuse.engine.fsck import fsck
from curvefuse.errors import BusyError, HasSnapshotsError

CHUNK = 64 * 1024
LENGTH = 4 * CHUNK
BLOCK = 4096

offsets = st.one_of(st.integers(0, LENGTH - 1),
                    st.integers(0, LENGTH // BLOCK - 1).map(lambda b: b * BLOCK),
                    st.integers(0, 3).map(lambda c: c * CHUNK))
sizes = st.one_of(st.integers(1, 3 * BLOCK), st.just(BLOCK), st.just(CHUNK),
                  st.integers(1, 2 * CHUNK))


class SnapshotModel(RuleBasedStateMachine):
    volumes = Bundle('volumes')
    snapshots = Bundle('snapshots')

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix='curvefuse-model-')
        self.engine = Engine.open(self.dir, create=True, chunk_size=CHUNK)
        self.content: dict[str, bytearray] = {}  # volume path -> bytes
        self.frozen: dict[tuple[str, str], bytes] = {}  # (volume, snapshot) -> bytes
        self.order: dict[str, list[str]] = {}  # volume -> its snapshots, oldest first
        self.children: dict[tuple[str, str], set[str]] = {}
        self.clone_of: dict[str, tuple[str, str]] = {}  # clone -> its source snapshot
        self.handles: dict[str, object] = {}
        self.counter = 0

    def _name(self, prefix: str) -> str:
        self.counter += 1
        return f'{prefix}{self.counter}'

    def _handle(self, path: str):
        handle = self.handles.get(path)
        if handle is None:
            handle = self.handles[path] = self.engine.open_volume(path)
        return handle

    def _close_handles(self) -> None:
        for handle in self.handles.values():
            handle.close()
        self.handles.clear()

    @rule(target=volumes)
    def create(self):
        path = '/' + self._name('v')
        self.engine.create_volume(path, LENGTH)
        self.content[path] = bytearray(LENGTH)
        self.order[path] = []
        return path

    @rule(path=volumes, offset=offsets, size=sizes, fill=st.sampled_from([0, 1, 2, 255]))
    def write(self, path, offset, size, fill):
        size = min(size, LENGTH - offset)
        data = bytes(size) if fill == 0 else bytes((fill + i) % 256 for i in range(size))
        self._handle(path).write(offset, data)
        self.content[path][offset:offset + size] = data

    @rule(path=volumes)
    def flush(self, path):
        self._handle(path).flush()

    @rule(target=snapshots, path=volumes)
    def snapshot(self, path):
        name = self._name('s')
        self.engine.create_snapshot(path, name)
        self.frozen[(path, name)] = bytes(self.content[path])
        self.order[path].append(name)
        self.children[(path, name)] = set()
        return (path, name)

    @rule(target=volumes, snap=snapshots, readonly=st.booleans())
    def clone(self, snap, readonly):
        path, name = snap
        dest = '/' + self._name('c')
        self.engine.protect_snapshot(path, name)
        self.engine.clone(path, name, dest, readonly=False)
        self.content[dest] = bytearray(self.frozen[snap])
        self.order[dest] = []
        self.children[snap].add(dest)
        self.clone_of[dest] = snap
        return dest

    @rule(path=volumes)
    def flatten(self, path):
        handle = self.handles.pop(path, None)
        if handle is not None:
            handle.close()
        self.engine.flatten(path, wait=True)
        assert self.engine.flatten_progress(path) == 100
        source = self.clone_of.pop(path, None)
        if source is not None:
            self.children[source].discard(path)

    @rule(snap=snapshots)
    def rollback(self, snap):
        path, name = snap
        handle = self.handles.pop(path, None)
        if handle is not None:
            handle.close()
        newer = self.order[path][self.order[path].index(name) + 1:]
        try:
            self.engine.rollback(path, name)
        except HasSnapshotsError:
            assert newer
            return
        assert not newer
        self.content[path] = bytearray(self.frozen[snap])

    @rule(target=snapshots, snap=consumes(snapshots))
    def delete_snapshot(self, snap):
        path, name = snap
        try:
            self.engine.delete_snapshot(path, name, unprotect=True)
        except BusyError:
            assert self.children[snap]
            return multiple(snap)  # still there
        assert not self.children[snap]
        del self.frozen[snap]
        self.order[path].remove(name)
        return multiple()

    @rule(target=volumes, path=consumes(volumes))
    def delete_volume(self, path):
        handle = self.handles.pop(path, None)
        if handle is not None:
            handle.close()
        try:
            self.engine.remove(path)
        except HasSnapshotsError:
            assert self.order[path]
            return multiple(path)
        assert not self.order[path]
        [recycled] = [node for node in self.engine.listdir('/RecycleBin')
                      if node.extra.get('original_path') == path]
        if path in self.clone_of:
            # A clone in the recycle bin still holds its snapshot; destroy it to free it.
            self.engine.delete_force(f'/RecycleBin/{recycled.name}')
            self.children[self.clone_of.pop(path)].discard(path)
        del self.content[path]
        return multiple()

    @rule(snap=snapshots)
    def changed_chunks_cover_differences(self, snap):
        """What incremental backups rely on: every chunk whose bytes differ between a snapshot
        and a newer version (snapshot or flushed volume) is among the changed chunks."""
        path, name = snap
        self._handle(path).flush()
        newer = self.order[path][self.order[path].index(name) + 1:]
        versions = [(other, self.frozen[(path, other)]) for other in newer]
        for until, content in versions + [(None, bytes(self.content[path]))]:
            changed = set(self.engine.changed_chunks(path, name, until))
            differing = {idx for idx in range(LENGTH // CHUNK)
                         if self.frozen[snap][idx * CHUNK:(idx + 1) * CHUNK] !=
                         content[idx * CHUNK:(idx + 1) * CHUNK]}
            assert differing <= changed, (path, name, until)

    @rule()
    def reopen(self):
        self._close_handles()
        self.engine.close()
        self.engine = Engine.open(self.dir)

    @precondition(lambda self: self.content)
    @invariant()
    def bytes_match(self):
        probes = list(range(0, LENGTH, 7919)) + [CHUNK - 1, CHUNK, LENGTH - BLOCK]
        for path, content in self.content.items():
            handle = self._handle(path)
            for at in probes:
                assert handle.read(at, 97, clamp=True) == bytes(content[at:at + 97]), (path, at)
        for (path, name), frozen in self.frozen.items():
            snap = self.engine.open_snapshot(path, name)
            try:
                for at in probes:
                    assert snap.read(at, 97, clamp=True) == frozen[at:at + 97], (path, name, at)
            finally:
                snap.close()

    def teardown(self):
        try:
            for path, content in self.content.items():
                assert self._handle(path).read(0, LENGTH) == bytes(content), path
            self._close_handles()
            report = fsck(self.engine)
            assert report.clean, report.corruption + report.leaks
        finally:
            self.engine.close()
            shutil.rmtree(self.dir, ignore_errors=True)


SnapshotModel.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_snapshot_model = SnapshotModel.TestCase
