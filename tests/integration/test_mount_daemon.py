"""The mount daemon's life: start, refuse a second one, stop on signals, recover after a crash."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from curvefuse.fuse.mount import process_running

from .helpers import (Daemon, curvefuse, detached_mount, have_cap_sys_resource, mount_options,
                      wait_for_exit)


def test_mount_shows_in_proc_mounts_as_fuse_curvefuse(mounted: Daemon) -> None:
    with open('/proc/mounts') as fh:
        entry = next(line.split() for line in fh if line.split()[1] == str(mounted.mountpoint))
    assert entry[0] == str(mounted.data_dir)
    assert entry[2] == 'fuse.curvefuse'
    assert sorted(os.listdir(mounted.mountpoint)) == ['.snapshots', 'RecycleBin']


def test_second_daemon_on_the_same_store_is_refused(mounted: Daemon, tmp_path: Path) -> None:
    other = tmp_path / 'other'
    other.mkdir()
    result = curvefuse('mount', '--foreground', str(mounted.data_dir), str(other), check=False)
    assert result.returncode == 1
    assert f'already mounted by pid {mounted.proc.pid} at {mounted.mountpoint}' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert not os.path.ismount(other)


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_signals_flush_unmount_and_exit_0(daemon_factory, signum: int) -> None:
    daemon = daemon_factory()
    daemon.start()
    payload = os.urandom(3 * 2**20 + 5)
    (daemon.mountpoint / 'vol').write_bytes(payload)
    daemon.proc.send_signal(signum)
    assert daemon.proc.wait(timeout=60) == 0
    daemon.proc = None
    assert not os.path.ismount(daemon.mountpoint)
    daemon.start()
    assert (daemon.mountpoint / 'vol').read_bytes() == payload


def test_daemonized_mount_and_waiting_umount(daemon_factory, data_dir: Path) -> None:
    """`curvefuse mount` returns once the mount is live; `curvefuse umount` returns once the
    daemon has flushed everything and exited."""
    daemon = daemon_factory()  # only for its mount point and log checks
    start = [sys.executable, '-m', 'curvefuse.cli', 'mount', str(data_dir),
             str(daemon.mountpoint), '--log', str(daemon.log)]
    with detached_mount(data_dir, daemon.mountpoint, start) as pid:
        assert os.path.ismount(daemon.mountpoint)
        (daemon.mountpoint / 'vol').write_bytes(b'x' * 10000)
        result = curvefuse('umount', str(daemon.mountpoint))
        assert result.returncode == 0, result.stderr
        assert not os.path.ismount(daemon.mountpoint)
        assert not process_running(pid)  # umount returned only after the daemon finished
    assert not (data_dir / 'mount.dirty').exists()


def test_mount_after_a_crash_checks_the_store_first(daemon_factory, data_dir: Path) -> None:
    daemon = daemon_factory()
    daemon.start()
    (daemon.mountpoint / 'vol').write_bytes(b'y' * 100000)
    daemon.proc.kill()
    daemon.proc.wait()
    daemon.kill()  # the dead mount point needs a lazy unmount
    assert (data_dir / 'mount.dirty').exists()
    daemon.expected_warnings.append('did not stop cleanly')
    daemon.start()
    assert 'did not stop cleanly' in daemon.log.read_text()
    assert (daemon.mountpoint / 'vol').read_bytes() == b'y' * 100000


def test_io_flusher_is_set_where_the_kernel_allows(mounted: Daemon) -> None:
    """PR_SET_IO_FLUSHER needs CAP_SYS_RESOURCE; without it the daemon says so and goes on."""
    warned = 'could not mark the daemon an I/O flusher' in mounted.log.read_text()
    assert warned != have_cap_sys_resource()


@pytest.mark.parametrize('args, message', [
    (['-o', 'bogus'], "unknown mount option 'bogus'"),
    (['--foreground'], 'is not a curvefuse store'),
])
def test_bad_mounts_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    target = tmp_path / 'mnt'
    target.mkdir()
    result = curvefuse('mount', str(tmp_path / 'nostore'), str(target), *args, check=False)
    assert result.returncode == 1
    assert message in result.stderr
    assert 'Traceback' not in result.stderr
    assert not os.path.ismount(target)


def test_umount_of_something_else_is_refused(tmp_path: Path) -> None:
    result = curvefuse('umount', str(tmp_path), check=False)
    assert result.returncode == 1
    assert 'is not a curvefuse mount' in result.stderr


CORRUPT = '''
import sys, lmdb, struct
env = lmdb.open(sys.argv[1] + '/meta', max_dbs=16)
db = env.open_db(b'nodes')
key = struct.pack('>Q', int(sys.argv[2]))
with env.begin(write=True, db=db) as txn:
    if len(sys.argv) > 3:
        txn.put(key, bytes.fromhex(sys.argv[3]))
    else:
        sys.stdout.write(txn.get(key).hex())
        txn.put(key, txn.get(key)[:50] + b'{not json')
'''


def test_an_unexpected_error_is_eio_and_the_mount_lives_on(mounted: Daemon) -> None:
    """A node record damaged behind the daemon's back: that file answers EIO (and fsck calls it
    corruption), every other file works, the daemon keeps running."""
    mnt = mounted.mountpoint
    (mnt / 'damaged').write_bytes(b'a' * 4096)
    (mnt / 'healthy').write_bytes(b'b' * 4096)
    node_id = int(subprocess.run(['getfattr', '--only-values', '-n', 'user.curvefuse.id',
                                  str(mnt / 'damaged')], capture_output=True, text=True,
                                 check=True).stdout)
    original = subprocess.run([sys.executable, '-c', CORRUPT, str(mounted.data_dir),
                               str(node_id)], capture_output=True, text=True, check=True).stdout
    mounted.expected_warnings += ['unexpected error in', 'Traceback (most recent call last)']
    try:
        with pytest.raises(OSError) as info:
            os.stat(mnt / 'damaged')
        assert info.value.errno == errno.EIO
        assert (mnt / 'healthy').read_bytes() == b'b' * 4096
        result = curvefuse('fsck', str(mounted.data_dir), check=False)
        assert result.returncode == 2
        assert f'node {node_id} is unreadable' in result.stdout
        assert 'Traceback' not in result.stderr
    finally:
        subprocess.run([sys.executable, '-c', CORRUPT, str(mounted.data_dir), str(node_id),
                        original], check=True)
    assert (mnt / 'damaged').read_bytes() == b'a' * 4096
    assert mounted.proc.poll() is None


def test_debug_and_allow_other_reach_the_daemon(daemon_factory, data_dir: Path) -> None:
    """`curvefuse mount ... --debug -o allow_other`, daemonized: the kernel mount carries
    allow_other and the daemon's log has debug lines."""
    daemon = daemon_factory()
    start = [sys.executable, '-m', 'curvefuse.cli', 'mount', str(data_dir),
             str(daemon.mountpoint), '--debug', '-o', 'allow_other', '--log', str(daemon.log)]
    with detached_mount(data_dir, daemon.mountpoint, start) as pid:
        assert 'allow_other' in mount_options(daemon.mountpoint)
        os.listdir(daemon.mountpoint)
        assert ' DEBUG ' in daemon.log.read_text()
        assert curvefuse('umount', str(daemon.mountpoint)).returncode == 0
        assert not process_running(pid)


def test_mount_8_and_fstab(daemon_factory, data_dir: Path, tmp_path: Path) -> None:
    """`mount -t fuse.curvefuse DATA_DIR MOUNTPOINT -o ...` and an fstab line work through the
    system's mount.fuse3 helper, which runs `curvefuse` from PATH; umount(8) stops the daemon."""
    daemon = daemon_factory()
    path = {'PATH': f'{Path(sys.executable).parent}:{os.environ["PATH"]}'}
    fstab = tmp_path / 'fstab'
    fstab.write_text(f'{data_dir} {daemon.mountpoint} fuse.curvefuse '
                     'defaults,allow_other,ro,noauto,_netdev,x-systemd.automount 0 0\n')
    for start in (['mount', '-t', 'fuse.curvefuse', str(data_dir), str(daemon.mountpoint),
                   '-o', 'allow_other,ro'],
                  ['mount', '-T', str(fstab), str(daemon.mountpoint)]):
        with detached_mount(data_dir, daemon.mountpoint, start, env=path) as pid:
            assert {'ro', 'allow_other'} <= set(mount_options(daemon.mountpoint))
            with pytest.raises(OSError):
                (daemon.mountpoint / 'x').touch()
            subprocess.run(['umount', str(daemon.mountpoint)], check=True)
            assert wait_for_exit(pid)
        assert not (data_dir / 'mount.dirty').exists()  # a clean stop
