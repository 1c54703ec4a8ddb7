"""Snapshots and clones through the mount: the `.snapshots` tree read, taken and deleted with
plain tools, clone facts as xattrs, a flatten resumed by the daemon after kill -9, snapshots of a
volume being written through the mount, and ext4 inside a snapshot on a read-only loop device.

The test process opens the store too (the `engine` fixture): a second door, as a script using
the Python API would be, next to the daemon.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from curvefuse.engine import Engine

from .helpers import Cleanup, Daemon, curvefuse
from .test_mount_block import e2fsck_clean, read_sums, write_tree
from .test_mount_tools import (MiB, ROFS, fails, local_file, random_bytes, run, sh_fails, stat,
                               xattrs)

BUSY = 'Device or resource busy'
MIRROR_BASE = 2**62  # documented in curvefuse/fuse/inodes.py


@pytest.fixture
def engine(daemon_factory, data_dir: Path) -> Iterator[Engine]:
    """The store opened in the test process (daemon_factory has made it)."""
    opened = Engine.open(str(data_dir))
    try:
        yield opened
    finally:
        opened.close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_volume(engine: Engine, path: str, data: bytes, length: int | None = None) -> None:
    """A volume holding data, made through the other door."""
    engine.create_volume(path, length or len(data))
    handle = engine.open_volume(path)
    try:
        handle.write(0, data)
    finally:
        handle.close()


# -- reading -----------------------------------------------------------------------------------

def test_a_snapshot_is_a_read_only_file_of_the_volume_then(mounted: Daemon, engine: Engine,
                                                           tmp_path: Path) -> None:
    """ls lists .snapshots and what it holds; a snapshot file has the volume's bytes as they
    were (cmp, cp, sha256sum), mode 0444, the length then, the creation time, its own blocks."""
    mnt = mounted.mountpoint
    run('mkdir', mnt / 'vms')
    then = random_bytes(3 * MiB + 123, 1)
    run('cp', local_file(tmp_path, 'then', then), mnt / 'vms' / 'disk')
    run('touch', mnt / '.snapshots' / 'vms' / 'disk' / 'monday')
    run('dd', f'if={local_file(tmp_path, "now", random_bytes(MiB, 2))}', f'of={mnt}/vms/disk',
        'bs=1M', 'seek=1', 'conv=notrunc', 'status=none')
    run('truncate', '-s', '8M', mnt / 'vms' / 'disk')

    assert '.snapshots' in run('ls', '-a', mnt).split()
    assert run('ls', mnt).split() == ['RecycleBin', 'vms']
    assert run('ls', '-a', mnt / 'vms').split() == ['disk']  # in the root only
    assert run('ls', mnt / '.snapshots').split() == ['RecycleBin', 'vms']
    assert run('ls', mnt / '.snapshots' / 'vms').split() == ['disk']
    assert stat(mnt / '.snapshots' / 'vms' / 'disk', '%F') == 'directory'
    snapshot = mnt / '.snapshots' / 'vms' / 'disk' / 'monday'
    assert run('ls', '-l', snapshot.parent).splitlines()[1].split()[::4] == [
        '-r--r--r--', str(len(then)), 'monday']

    info = engine.get_snapshot('/vms/disk', 'monday')
    assert stat(snapshot, '%F %a %s') == f'regular file 444 {len(then)}'
    assert int(stat(snapshot, '%.9Y').replace('.', '')) == info.created_ns
    allocated = engine.snapshot_allocated_bytes(info.vol_id, info.seq)
    assert allocated >= len(then)
    assert int(stat(snapshot, '%b')) == -(-allocated // 512)
    run('cmp', local_file(tmp_path, 'expected', then), snapshot)
    run('cp', snapshot, tmp_path / 'copy')
    assert (tmp_path / 'copy').read_bytes() == then
    assert run('sha256sum', snapshot).split()[0] == sha256(then)
    assert (mnt / 'vms' / 'disk').read_bytes()[:len(then)] != then  # the volume moved on
    assert xattrs(snapshot)['user.curvefuse.volume'] == '/vms/disk'


def test_inode_numbers_are_distinct_and_survive_a_remount(mounted: Daemon,
                                                          engine: Engine) -> None:
    """Nodes, snapshots and .snapshots directories never share an inode number, and each keeps
    its number across a remount: ls -liR of the whole tree prints the same."""
    mnt = mounted.mountpoint
    run('mkdir', '-p', mnt / 'a' / 'b')
    for volume in ('a/b/v1', 'a/v2', 'v3'):
        run('truncate', '-s', '1M', mnt / volume)
        for name in ('s1', 's2'):
            run('touch', mnt / '.snapshots' / volume / name)
    listing = run('find', mnt, '-printf', '%i %p\n')
    numbers = [line.split()[0] for line in listing.splitlines()]
    assert len(numbers) == len(set(numbers)) == 20  # root, 6 below it, 1 + 6 mirrors, 6 snapshots
    assert stat(mnt / '.snapshots', '%i') == str(MIRROR_BASE)
    assert stat(mnt / '.snapshots' / 'a' / 'v2', '%i') == \
        str(MIRROR_BASE + int(stat(mnt / 'a' / 'v2', '%i')) - 1)
    assert stat(mnt / '.snapshots' / 'v3' / 's2', '%i') == \
        str(engine.get_snapshot('/v3', 's2').id + 1)
    before = run('ls', '-liRan', '--time-style=full-iso', mnt)
    mounted.stop()
    mounted.start()
    assert run('find', mnt, '-printf', '%i %p\n') == listing
    assert run('ls', '-liRan', '--time-style=full-iso', mnt) == before


def test_snapshots_cannot_be_changed(mounted: Daemon, engine: Engine, tmp_path: Path) -> None:
    """Writing, truncating, chmod, renaming, mkdir, rmdir, setfattr in .snapshots: EROFS, and
    nothing changes; touching an existing snapshot succeeds and changes nothing."""
    mnt = mounted.mountpoint
    data = random_bytes(MiB, 3)
    put_volume(engine, '/vol', data)
    run('touch', mnt / '.snapshots' / 'vol' / 'snap')
    snapshot = mnt / '.snapshots' / 'vol' / 'snap'
    before = stat(snapshot, '%a %s %Y %i')
    sh_fails(f'echo x > {snapshot}', mnt, ROFS)
    sh_fails(f'echo x >> {snapshot}', mnt, ROFS)
    fails('dd', 'if=/dev/zero', f'of={snapshot}', 'bs=4k', 'count=1', 'conv=notrunc',
          message=ROFS)
    fails('truncate', '-s', '0', snapshot, message=ROFS)
    fails('chmod', '600', snapshot, message=ROFS)
    fails('touch', '-d', '2001-02-03', snapshot, message=ROFS)
    fails('mv', snapshot, snapshot.parent / 'renamed', message=ROFS)
    fails('mkdir', snapshot.parent / 'dir', message=ROFS)
    fails('rmdir', mnt / '.snapshots' / 'RecycleBin', message=ROFS)
    fails('touch', mnt / '.snapshots' / 'RecycleBin' / 'file', message=ROFS)
    fails('setfattr', '-n', 'user.note', '-v', 'x', snapshot, message=ROFS)
    with pytest.raises(OSError) as raised:
        os.open(snapshot, os.O_RDWR)
    assert raised.value.errno == errno.EROFS
    run('touch', snapshot)
    assert stat(snapshot, '%a %s %Y %i') == before
    run('cmp', local_file(tmp_path, 'expected', data), snapshot)
    assert [snap.name for snap in engine.list_snapshots('/vol')] == ['snap']


# -- taking and deleting -------------------------------------------------------------------------

def test_touch_takes_a_snapshot_and_rm_deletes_it(mounted: Daemon, engine: Engine) -> None:
    """touch (or mknod) in a volume's directory of .snapshots takes a snapshot every door sees;
    one taken through another door shows in ls; rm deletes one, and gives EBUSY while a clone depends
    on it (protected or not); a bad name is EINVAL."""
    mnt = mounted.mountpoint
    run('truncate', '-s', '4M', mnt / 'vol')
    directory = mnt / '.snapshots' / 'vol'
    run('touch', directory / 'by-touch')
    assert [(s.name, s.protected) for s in engine.list_snapshots('/vol')] == [('by-touch', False)]
    engine.create_snapshot('/vol', 'by-api', protect=True)
    os.mknod(directory / 'by-mknod')
    assert run('ls', directory).split() == ['by-api', 'by-mknod', 'by-touch']
    run('rm', directory / 'by-mknod')
    fails('touch', directory / 'a@b', message='Invalid argument')

    engine.clone('/vol', 'by-api', '/clone')
    fails('rm', '-f', directory / 'by-api', message=BUSY)
    run('rm', directory / 'by-touch')
    assert run('ls', directory).split() == ['by-api']
    run('rm', mnt / 'clone')  # into the recycle bin: still a clone of the snapshot
    fails('rm', '-f', directory / 'by-api', message=BUSY)
    run('rm', mnt / 'RecycleBin' / os.listdir(mnt / 'RecycleBin')[0])
    run('rm', directory / 'by-api')  # protected, but rm unprotects it first
    assert run('ls', directory).split() == []
    assert engine.list_snapshots('/vol') == []


def test_read_only_mount_refuses_taking_and_deleting(daemon_factory, engine: Engine,
                                                    tmp_path: Path) -> None:
    data = random_bytes(MiB, 4)
    put_volume(engine, '/vol', data)
    engine.create_snapshot('/vol', 'kept')
    daemon = daemon_factory('ro')
    daemon.start()
    directory = daemon.mountpoint / '.snapshots' / 'vol'
    fails('touch', directory / 'new', message=ROFS)
    fails('rm', '-f', directory / 'kept', message=ROFS)
    run('cmp', local_file(tmp_path, 'expected', data), directory / 'kept')
    assert [snap.name for snap in engine.list_snapshots('/vol')] == ['kept']


# -- clones --------------------------------------------------------------------------------------

def test_clone_facts_and_read_only_clones(mounted: Daemon, engine: Engine,
                                          tmp_path: Path) -> None:
    """A clone's xattrs name its source and say whether it is read-only and how far its
    flatten is; a read-only clone refuses opening for write with EROFS."""
    mnt = mounted.mountpoint
    data = random_bytes(2 * MiB, 5)
    put_volume(engine, '/src', data)
    engine.create_snapshot('/src', 'gold', protect=True)
    engine.clone('/src', 'gold', '/ro', readonly=True)
    engine.clone('/src', 'gold', '/rw')

    facts = xattrs(mnt / 'ro')
    assert {key: facts[f'user.curvefuse.{key}'] for key in
            ('source', 'readonly', 'flattening', 'flatten_progress')} == {
        'source': '/src@gold', 'readonly': 'yes', 'flattening': 'no', 'flatten_progress': '0'}
    assert xattrs(mnt / 'rw')['user.curvefuse.readonly'] == 'no'
    assert xattrs(mnt / 'src')['user.curvefuse.flatten_progress'] == '100'
    assert 'user.curvefuse.source' not in xattrs(mnt / 'src')

    fails('dd', 'if=/dev/zero', f'of={mnt}/ro', 'bs=4k', 'count=1', 'conv=notrunc',
          message=ROFS)
    sh_fails(f'echo x >> {mnt}/ro', mnt, ROFS)
    fails('truncate', '-s', '4M', mnt / 'ro', message=ROFS)
    with pytest.raises(OSError) as raised:
        os.open(mnt / 'ro', os.O_WRONLY)
    assert raised.value.errno == errno.EROFS
    run('cmp', local_file(tmp_path, 'expected', data), mnt / 'ro')
    run('dd', 'if=/dev/zero', f'of={mnt}/rw', 'bs=4k', 'count=1', 'conv=notrunc', 'status=none')

    engine.flatten('/rw', wait=True)
    facts = xattrs(mnt / 'rw')
    assert facts['user.curvefuse.flatten_progress'] == '100'
    assert 'user.curvefuse.source' not in facts


FLATTENER = '''
import sys
from curvefuse.engine import Engine
Engine.open(sys.argv[1]).flatten(sys.argv[2], wait=True)
'''


def test_flatten_progress_shows_and_a_killed_flatten_resumes_when_mounted(
        daemon_factory, engine: Engine, data_dir: Path) -> None:
    """A flatten run by another process shows its progress in the clone's xattrs; killed with
    kill -9 halfway, it is taken up by the next mount and finishes with the right bytes."""
    chunk = engine.chunk_size
    chunks = 128
    engine.create_volume('/src', chunks * chunk)
    handle = engine.open_volume('/src')
    try:
        for index in range(chunks):
            handle.write(index * chunk, struct.pack('>Q', index + 1) * 512)
    finally:
        handle.close()
    engine.create_snapshot('/src', 's', protect=True)
    engine.clone('/src', 's', '/clone')
    daemon = daemon_factory()
    daemon.start()
    clone = daemon.mountpoint / 'clone'

    def fact(name: str) -> str:
        return os.getxattr(clone, f'user.curvefuse.{name}').decode()

    flattener = subprocess.Popen([sys.executable, '-c', FLATTENER, str(data_dir), '/clone'])
    try:
        deadline = time.monotonic() + 60
        while not 0 < int(fact('flatten_progress')) < 50:
            assert flattener.poll() is None and time.monotonic() < deadline, 'too late to kill'
            time.sleep(0.002)
        assert fact('flattening') == 'yes'
    finally:
        flattener.send_signal(signal.SIGKILL)
        flattener.wait()
    stopped_at = int(fact('flatten_progress'))
    assert stopped_at < 100

    daemon.stop()
    # The killed process left what kill -9 leaves: fsck frees it before the next mount.
    assert curvefuse('fsck', '--repair', str(data_dir), check=False).returncode in (0, 3)
    daemon.start()
    deadline = time.monotonic() + 60
    while 'user.curvefuse.source' in xattrs(clone):
        assert time.monotonic() < deadline, f'flatten stuck at {fact("flatten_progress")}'
        time.sleep(0.05)
    assert fact('flatten_progress') == '100'
    assert engine.children('/src', 's') == []
    with open(clone, 'rb') as fh:
        for index in range(chunks):
            fh.seek(index * chunk)
            assert fh.read(4096) == struct.pack('>Q', index + 1) * 512, f'chunk {index}'


# -- snapshots of a volume being written ---------------------------------------------------------

WRITER = '''
import os, struct, sys
volume, progress, stop, slots, size = sys.argv[1:4] + [int(a) for a in sys.argv[4:]]
fd = os.open(volume, os.O_RDWR)
done = os.open(progress, os.O_RDWR)
for index in range(slots):
    if os.path.exists(stop):
        break
    os.pwrite(fd, struct.pack('<Q', index + 1) * (size // 8), index * size)
    os.fsync(fd)
    os.pwrite(done, struct.pack('<Q', index + 1), 0)
'''
RECORD = 4096


def record(index: int) -> bytes:
    return struct.pack('<Q', index + 1) * 512


def records_in(read: Callable[[int, int], bytes], slots: int) -> tuple[int, str]:
    """How many records, from the first, an image holds, and a digest of it. After those
    records there must be only zeros: records are written in order, each after the last one's
    fsync, so no later record can be in without every earlier one."""
    size = slots * RECORD
    image = b''.join(read(offset, min(MiB, size - offset)) for offset in range(0, size, MiB))
    held = 0
    while held < slots and image[held * RECORD:(held + 1) * RECORD] == record(held):
        held += 1
    rest = image[held * RECORD:]
    assert rest.count(0) == len(rest), f'not only zeros after record {held}'
    return held, sha256(image)


def test_snapshots_hold_everything_fsynced_before_them(mounted: Daemon, engine: Engine,
                                                       tmp_path: Path) -> None:
    """A process writes records through the mount, fsyncing each; meanwhile snapshots are
    taken through the Python API (another process) and with touch in .snapshots. Each holds
    every record fsynced before it was asked for, then only whole records in order, then zeros,
    and still holds exactly that once the writer has stopped."""
    mnt = mounted.mountpoint
    slots = 16384  # 64 MiB: more than the writer gets to in the time the test takes
    run('truncate', '-s', str(slots * RECORD), mnt / 'log')
    progress, stop = tmp_path / 'progress', tmp_path / 'stop'
    progress.write_bytes(bytes(8))
    writer = subprocess.Popen([sys.executable, '-c', WRITER, str(mnt / 'log'), str(progress),
                               str(stop), str(slots), str(RECORD)])
    taken: dict[str, tuple[int, str]] = {}  # snapshot -> (records it holds, sha256)
    try:
        for round_ in range(6):
            time.sleep(0.1)
            fsynced = struct.unpack('<Q', progress.read_bytes())[0]
            name = f'snap{round_}'
            if round_ % 2:
                engine.create_snapshot('/log', name)
            else:
                run('touch', mnt / '.snapshots' / 'log' / name)
            with open(mnt / '.snapshots' / 'log' / name, 'rb') as fh:
                taken[name] = records_in(
                    lambda offset, size: os.pread(fh.fileno(), size, offset), slots)
            assert taken[name][0] >= fsynced, f'{name}: {fsynced} fsynced, {taken[name][0]} in it'
        assert writer.poll() is None, 'the writer finished before the last snapshot'
    finally:
        stop.touch()
        assert writer.wait(timeout=60) == 0
    counts = [held for held, _sum in taken.values()]
    assert counts == sorted(counts) and counts[0] < counts[-1], counts  # it was writing
    for name, seen in taken.items():
        snapshot = engine.open_snapshot('/log', name)
        try:
            assert records_in(snapshot.read, slots) == seen, f'{name} changed'
        finally:
            snapshot.close()


def test_ext4_in_a_snapshot_mounts_read_only_as_it_was(mounted: Daemon, cleanup: Cleanup,
                                                       tmp_path: Path) -> None:
    """ext4 on a loop device over a volume: files written, the file system frozen (so its
    journal is flushed) and a snapshot taken with touch, more written. The snapshot file on a
    read-only loop device is a clean ext4 (e2fsck -fn) that mounts with -o ro,noload and holds
    the files as they were."""
    mnt = mounted.mountpoint
    image = mnt / 'disk.img'
    run('truncate', '-s', '256M', image)
    device = cleanup.attach(image)
    run('mkfs.ext4', '-q', device, timeout=300)
    fs = tmp_path / 'fs'
    cleanup.mount(device, fs)
    sums = write_tree(fs)
    run('sync')
    run('fsfreeze', '-f', fs)
    try:
        run('touch', mnt / '.snapshots' / 'disk.img' / 'before')
    finally:
        run('fsfreeze', '-u', fs)
    (fs / 'dir0' / 'file0').write_bytes(b'changed after the snapshot')
    (fs / 'late').write_bytes(os.urandom(MiB))
    run('sync')

    snapshot_device = cleanup.attach(mnt / '.snapshots' / 'disk.img' / 'before', '-r')
    e2fsck_clean(Path(snapshot_device))
    old = tmp_path / 'old'
    cleanup.mount(snapshot_device, old, '-o', 'ro,noload')
    assert read_sums(old, sums) == sums
    assert not (old / 'late').exists()
    assert (fs / 'dir0' / 'file0').read_bytes() == b'changed after the snapshot'
    fails('touch', old / 'new', message=ROFS)
    # The snapshot is in use: deleting it waits until the loop device lets go.
    fails('rm', '-f', mnt / '.snapshots' / 'disk.img' / 'before', message=BUSY)
    cleanup.umount(old)
    cleanup.detach(snapshot_device)
    run('rm', mnt / '.snapshots' / 'disk.img' / 'before')
