"""The mount through the tools a user runs on it: ls, stat, find, touch, mkdir, mv, rm, cp,
truncate, dd, du, df, getfattr/setfattr, and what each of them shows or refuses.

Every check runs the real command on the real mount (through `run`/`fails`/`sh` below) and
asserts what its user would see: its output, its error message, the bytes `cmp` compares.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path


from .helpers import Daemon, curvefuse

MiB = 2**20
GiB = 2**30
ROFS = 'Read-only file system'


# -- running tools ---------------------------------------------------------------------------

ENV = {**os.environ, 'LC_ALL': 'C', 'TZ': 'UTC'}  # English messages, times printed in UTC


def _run(args: tuple, cwd: Path | None, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([os.fspath(a) for a in args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, errors='surrogateescape', timeout=timeout)


def run(*args: object, cwd: Path | None = None, timeout: float = 120) -> str:
    """Run a command that must succeed; its stdout."""
    result = _run(args, cwd, timeout)
    assert result.returncode == 0, f'{args} exited {result.returncode}: {result.stderr}'
    return result.stdout


def fails(*args: object, cwd: Path | None = None, message: str | None = None) -> str:
    """Run a command that must fail (with `message` in its stderr, if given); its stderr."""
    result = _run(args, cwd, 120)
    assert result.returncode != 0, f'{args} succeeded: {result.stdout}'
    if message is not None:
        assert message in result.stderr, f'{args}: {result.stderr!r} lacks {message!r}'
    return result.stderr


def sh(script: str, cwd: Path) -> str:
    """A shell line (for redirections such as `echo > file`) that must succeed."""
    return run('bash', '-c', script, cwd=cwd)


def sh_fails(script: str, cwd: Path, message: str) -> str:
    return fails('bash', '-c', script, cwd=cwd, message=message)


def stat(path: Path, fmt: str) -> str:
    return run('stat', '-c', fmt, path).strip()


def size_of(path: Path) -> int:
    return int(stat(path, '%s'))


def xattrs(path: Path) -> dict[str, str]:
    """`getfattr -d` of path as a dict (values without their quotes)."""
    out = run('getfattr', '-d', '--absolute-names', path)
    return dict(re.match(r'^([^=]+)="(.*)"$', line).groups()
                for line in out.splitlines() if line and not line.startswith('#'))


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def local_file(tmp_path: Path, name: str, data: bytes) -> Path:
    """A file outside the mount (a source for cp/dd, or what cmp compares against)."""
    path = tmp_path / 'local' / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


def put(tmp_path: Path, target: Path, data: bytes) -> None:
    """Make a new volume target holding data, as a user would: cp of an image. (cp onto an
    existing volume truncates it first, a shrink the mount refuses without allow_shrink.)"""
    run('cp', local_file(tmp_path, f'src-{target.name}', data), target)


def assert_content(tmp_path: Path, path: Path, expected: bytes) -> None:
    """cmp agrees path holds exactly expected (size included)."""
    run('cmp', local_file(tmp_path, f'expected-{path.name}', expected), path)


def recycled(mnt: Path) -> list[str]:
    return sorted(os.listdir(mnt / 'RecycleBin'))


def snapshot(mnt: Path) -> str:
    """Everything a user can see of the tree: listing, inodes, sizes, times, attributes, data."""
    return (run('ls', '-liRn', '--time-style=full-iso', mnt)
            + run('getfattr', '-R', '-d', '--absolute-names', mnt)
            + run('find', mnt, '-type', 'f', '-exec', 'sha256sum', '{}', '+'))


# -- 1. ls, stat, find -----------------------------------------------------------------------

def test_ls_and_stat_show_volume_lengths(mounted: Daemon) -> None:
    """ls -l and stat report a volume's length as its size, directories as directories."""
    mnt = mounted.mountpoint
    run('mkdir', mnt / 'vms')
    run('truncate', '-s', '10M', mnt / 'vms' / 'disk1')
    run('truncate', '-s', '12345', mnt / 'vms' / 'odd')
    lines = run('ls', '-ln', mnt / 'vms').splitlines()[1:]
    assert [(line.split()[0][0], line.split()[4], line.split()[-1]) for line in lines] == [
        ('-', str(10 * MiB), 'disk1'), ('-', '12345', 'odd')]
    assert stat(mnt / 'vms' / 'disk1', '%F %s') == f'regular file {10 * MiB}'
    assert stat(mnt / 'vms', '%F') == 'directory'
    top = run('ls', '-l', mnt).splitlines()[1:]
    assert sorted(line.split()[-1] for line in top) == ['RecycleBin', 'vms']
    assert all(line.startswith('d') for line in top)


def test_inodes_and_times_survive_a_remount(mounted: Daemon) -> None:
    """Inode numbers, sizes, modes and mtimes are the same after unmounting and mounting
    again: ls -liR --full-time prints the very same thing."""
    mnt = mounted.mountpoint
    run('mkdir', '-p', mnt / 'a' / 'b')
    run('truncate', '-s', '1M', mnt / 'a' / 'b' / 'vol')
    run('touch', mnt / 'top')
    run('touch', '-d', '2001-02-03 04:05:06.789', mnt / 'a' / 'b' / 'vol')
    run('touch', '-d', '1999-12-31 23:59:59', mnt / 'a')
    before = run('ls', '-liRn', '--time-style=full-iso', mnt)
    inode = stat(mnt / 'a' / 'b' / 'vol', '%i')
    mounted.stop()
    mounted.start()
    assert run('ls', '-liRn', '--time-style=full-iso', mnt) == before
    assert stat(mnt / 'a' / 'b' / 'vol', '%i %s %y') == (
        f'{inode} {MiB} 2001-02-03 04:05:06.789000000 +0000')
    assert stat(mnt / 'a', '%y') == '1999-12-31 23:59:59.000000000 +0000'


def test_find_walks_the_tree(mounted: Daemon) -> None:
    """find sees every level of nested directories (directories report 2 links, which must
    not make find skip subdirectories) and filters by type and size."""
    mnt = mounted.mountpoint
    run('mkdir', '-p', mnt / 'x' / 'y' / 'z')
    run('truncate', '-s', '3M', mnt / 'x' / 'y' / 'z' / 'deep')
    run('touch', mnt / 'x' / 'shallow')

    def found(*args: str) -> list[str]:  # as the README says: leave out .snapshots
        return sorted(run('find', '.', '-path', './.snapshots', '-prune', '-o', *args, '-print',
                          cwd=mnt).split())

    assert found() == ['.', './RecycleBin', './x', './x/shallow', './x/y', './x/y/z',
                       './x/y/z/deep']
    assert sorted(run('find', '.snapshots', cwd=mnt).split()) == [
        '.snapshots', '.snapshots/RecycleBin', '.snapshots/x', '.snapshots/x/shallow',
        '.snapshots/x/y', '.snapshots/x/y/z', '.snapshots/x/y/z/deep']  # no snapshot yet
    assert found('-type', 'f') == ['./x/shallow', './x/y/z/deep']
    assert found('-type', 'd', '-name', 'z') == ['./x/y/z']
    assert found('-size', '+2M') == ['./x/y/z/deep']
    assert found('-empty', '-type', 'f') == ['./x/shallow']


# -- 2. touch, mkdir, rmdir ------------------------------------------------------------------

def test_touch_creates_an_empty_volume_and_updates_mtime(mounted: Daemon) -> None:
    """touch makes an empty volume; touching it again moves its mtime to now."""
    mnt = mounted.mountpoint
    run('touch', mnt / 'new')
    assert stat(mnt / 'new', '%F %s') == 'regular empty file 0'
    assert xattrs(mnt / 'new')['user.curvefuse.type'] == 'volume'
    run('touch', '-d', '@1000000000', mnt / 'new')
    assert stat(mnt / 'new', '%Y') == '1000000000'
    before = int(time.time())
    run('touch', mnt / 'new')
    assert before <= int(stat(mnt / 'new', '%Y')) <= time.time() + 1
    assert size_of(mnt / 'new') == 0


def test_mkdir_and_rmdir(mounted: Daemon) -> None:
    """mkdir makes a directory; rmdir refuses a non-empty one with "Directory not empty" and
    leaves it alone, and removes an empty one."""
    mnt = mounted.mountpoint
    run('mkdir', mnt / 'd')
    run('mkdir', '-p', mnt / 'd' / 'sub' / 'leaf')
    assert stat(mnt / 'd' / 'sub' / 'leaf', '%F') == 'directory'
    assert xattrs(mnt / 'd')['user.curvefuse.type'] == 'directory'
    fails('mkdir', mnt / 'd', message='File exists')
    run('touch', mnt / 'd' / 'vol')
    fails('rmdir', mnt / 'd', message='Directory not empty')
    fails('rmdir', mnt / 'd' / 'sub', message='Directory not empty')
    assert sorted(os.listdir(mnt / 'd')) == ['sub', 'vol']
    run('rmdir', mnt / 'd' / 'sub' / 'leaf', mnt / 'd' / 'sub')
    assert os.listdir(mnt / 'd') == ['vol']
    fails('rmdir', mnt / 'd' / 'vol', message='Not a directory')
    run('rm', mnt / 'd' / 'vol')
    run('rmdir', mnt / 'd')
    assert os.listdir(mnt) == ['.snapshots', 'RecycleBin']


# -- 3. mv -----------------------------------------------------------------------------------

def test_mv_renames_in_place_and_across_directories(mounted: Daemon, tmp_path: Path) -> None:
    """mv renames a volume in its directory and moves it to another one: same inode, same data,
    the old name gone."""
    mnt = mounted.mountpoint
    data = random_bytes(100_000, 1)
    run('mkdir', mnt / 'src', mnt / 'dst')
    put(tmp_path, mnt / 'src' / 'a', data)
    inode = stat(mnt / 'src' / 'a', '%i')
    run('mv', mnt / 'src' / 'a', mnt / 'src' / 'b')
    assert os.listdir(mnt / 'src') == ['b']
    assert stat(mnt / 'src' / 'b', '%i') == inode
    run('mv', mnt / 'src' / 'b', mnt / 'dst')
    assert os.listdir(mnt / 'src') == []
    assert os.listdir(mnt / 'dst') == ['b']
    assert stat(mnt / 'dst' / 'b', '%i') == inode
    assert_content(tmp_path, mnt / 'dst' / 'b', data)
    fails('stat', mnt / 'src' / 'a', message='No such file or directory')
    assert recycled(mnt) == []


def test_mv_moves_a_directory_with_its_contents(mounted: Daemon, tmp_path: Path) -> None:
    """mv of a directory renames it and carries its whole subtree; a directory cannot move into
    itself."""
    mnt = mounted.mountpoint
    data = random_bytes(5000, 2)
    run('mkdir', '-p', mnt / 'proj' / 'sub', mnt / 'archive')
    put(tmp_path, mnt / 'proj' / 'sub' / 'disk', data)
    run('mv', mnt / 'proj', mnt / 'proj2')
    run('mv', mnt / 'proj2', mnt / 'archive')
    assert sorted(os.listdir(mnt)) == ['.snapshots', 'RecycleBin', 'archive']
    assert_content(tmp_path, mnt / 'archive' / 'proj2' / 'sub' / 'disk', data)
    fails('mv', mnt / 'archive', mnt / 'archive' / 'proj2', message='subdirectory of itself')
    assert os.listdir(mnt / 'archive') == ['proj2']



def test_mv_onto_an_empty_directory_replaces_it(mounted: Daemon) -> None:
    """mv -T (rename(2)) of a directory onto an existing empty directory replaces it, as on any
    POSIX file system; onto a non-empty one it is refused."""
    mnt = mounted.mountpoint
    run('mkdir', '-p', mnt / 'new' / 'sub', mnt / 'full' / 'x', mnt / 'empty')
    fails('mv', '-T', mnt / 'new', mnt / 'full')
    run('mv', '-T', mnt / 'new', mnt / 'empty')
    assert sorted(os.listdir(mnt)) == ['.snapshots', 'RecycleBin', 'empty', 'full']
    assert os.listdir(mnt / 'empty') == ['sub']

def test_mv_over_an_existing_volume_keeps_the_replaced_one_in_the_recycle_bin(
        mounted: Daemon, tmp_path: Path) -> None:
    """mv onto an existing volume replaces it; the replaced volume is not lost but recycled."""
    mnt = mounted.mountpoint
    old, new = random_bytes(9000, 3), random_bytes(7000, 4)
    put(tmp_path, mnt / 'target', old)
    put(tmp_path, mnt / 'incoming', new)
    old_id = xattrs(mnt / 'target')['user.curvefuse.id']
    run('mv', mnt / 'incoming', mnt / 'target')
    assert_content(tmp_path, mnt / 'target', new)
    assert recycled(mnt) == [f'target-{old_id}']
    assert_content(tmp_path, mnt / 'RecycleBin' / f'target-{old_id}', old)


# -- 4. rm and the recycle bin ---------------------------------------------------------------

def test_rm_recycles_and_mv_recovers(mounted: Daemon, tmp_path: Path) -> None:
    """rm puts a volume in /RecycleBin as <name>-<id> with its data and its original path;
    mv out of /RecycleBin brings it back intact."""
    mnt = mounted.mountpoint
    data = random_bytes(3 * MiB + 17, 5)
    run('mkdir', mnt / 'vms')
    put(tmp_path, mnt / 'vms' / 'disk', data)
    vol_id = xattrs(mnt / 'vms' / 'disk')['user.curvefuse.id']
    run('rm', mnt / 'vms' / 'disk')
    assert os.listdir(mnt / 'vms') == []
    entry = mnt / 'RecycleBin' / f'disk-{vol_id}'
    assert recycled(mnt) == [entry.name]
    assert size_of(entry) == len(data)
    assert xattrs(entry)['user.curvefuse.original_path'] == '/vms/disk'
    assert_content(tmp_path, entry, data)
    run('mv', entry, mnt / 'vms' / 'disk')
    assert recycled(mnt) == []
    assert_content(tmp_path, mnt / 'vms' / 'disk', data)
    assert xattrs(mnt / 'vms' / 'disk')['user.curvefuse.id'] == vol_id
    assert 'user.curvefuse.original_path' not in xattrs(mnt / 'vms' / 'disk')


def test_rm_in_the_recycle_bin_destroys_for_good(mounted: Daemon, tmp_path: Path) -> None:
    """rm of a /RecycleBin entry destroys the volume: gone from every listing, nothing left to
    recover, and its space given back (du of the store's chunks shrinks by its data)."""
    mnt = mounted.mountpoint
    data = random_bytes(4 * MiB, 6)
    put(tmp_path, mnt / 'doomed', data)
    chunks = mounted.data_dir / 'chunks'
    used_before = int(run('du', '-s', '-B1', chunks).split()[0])
    run('rm', mnt / 'doomed')
    (entry,) = recycled(mnt)
    run('rm', mnt / 'RecycleBin' / entry)
    assert recycled(mnt) == []
    assert os.listdir(mnt) == ['.snapshots', 'RecycleBin']
    fails('mv', mnt / 'RecycleBin' / entry, mnt / 'doomed', message='No such file')
    used_after = int(run('du', '-s', '-B1', chunks).split()[0])
    assert used_before - used_after >= len(data)


def test_rm_of_a_volume_open_elsewhere_in_the_recycle_bin_is_refused(mounted: Daemon) -> None:
    """Destroying a recycled volume that a process still has open fails with "Device or
    resource busy" and keeps it; once closed, rm destroys it."""
    mnt = mounted.mountpoint
    run('truncate', '-s', '64K', mnt / 'held')
    run('rm', mnt / 'held')
    (entry,) = recycled(mnt)
    with open(mnt / 'RecycleBin' / entry, 'rb'):
        fails('rm', mnt / 'RecycleBin' / entry, message='Device or resource busy')
        assert recycled(mnt) == [entry]
    run('rm', mnt / 'RecycleBin' / entry)
    assert recycled(mnt) == []


# -- 5. cp -----------------------------------------------------------------------------------

def test_cp_of_an_image_makes_a_volume_of_its_exact_size(mounted: Daemon,
                                                         tmp_path: Path) -> None:
    """cp of a few MiB of random data (not a multiple of 4096) into the mount gives a volume of
    exactly that size; cmp and sha256sum agree with the source, and copying it back out too."""
    mnt = mounted.mountpoint
    data = random_bytes(5 * MiB + 1234, 7)
    source = local_file(tmp_path, 'image.raw', data)
    run('cp', source, mnt / 'image.raw')
    assert size_of(mnt / 'image.raw') == len(data)
    assert run('ls', '-l', mnt / 'image.raw').split()[4] == str(len(data))
    run('cmp', source, mnt / 'image.raw')
    ours = run('sha256sum', mnt / 'image.raw').split()[0]
    assert ours == run('sha256sum', source).split()[0]
    run('cp', mnt / 'image.raw', tmp_path / 'back.raw')
    run('cmp', source, tmp_path / 'back.raw')



def test_cp_p_and_tar_x_keep_the_source_mtime(mounted: Daemon, tmp_path: Path) -> None:
    """cp -p and tar x set the mtime of the file they wrote (futimens before close); the mount
    must keep it, as any file system does, or backups and rsync see every image as changed."""
    mnt = mounted.mountpoint
    source = local_file(tmp_path, 'image.raw', random_bytes(100_000, 18))
    run('touch', '-d', '2001-02-03 04:05:06', source)
    run('cp', '-p', source, mnt / 'copy.raw')
    assert stat(mnt / 'copy.raw', '%y %s') == '2001-02-03 04:05:06.000000000 +0000 100000'
    run('tar', 'cf', tmp_path / 'images.tar', '-C', source.parent, source.name)
    run('mkdir', mnt / 'restored')
    run('tar', 'xf', tmp_path / 'images.tar', '-C', mnt / 'restored')
    assert stat(mnt / 'restored' / source.name, '%y') == '2001-02-03 04:05:06.000000000 +0000'


# -- 6. truncate -----------------------------------------------------------------------------

def test_truncate_grows_with_zeros(mounted: Daemon, tmp_path: Path) -> None:
    """truncate -s to a bigger size grows the volume; the old bytes stay, the new ones read as
    zeros."""
    mnt = mounted.mountpoint
    data = random_bytes(10_000, 8)
    put(tmp_path, mnt / 'vol', data)
    run('truncate', '-s', '50000', mnt / 'vol')
    assert size_of(mnt / 'vol') == 50_000
    assert_content(tmp_path, mnt / 'vol', data + bytes(40_000))
    run('truncate', '-s', '+20M', mnt / 'vol')  # into a second chunk
    assert_content(tmp_path, mnt / 'vol', data + bytes(40_000 + 20 * MiB))


def test_truncate_refuses_to_shrink(mounted: Daemon, tmp_path: Path) -> None:
    """Shrinking a volume fails with "Invalid argument" and changes nothing."""
    mnt = mounted.mountpoint
    data = random_bytes(10_000, 9)
    put(tmp_path, mnt / 'vol', data)
    fails('truncate', '-s', '5000', mnt / 'vol', message='Invalid argument')
    fails('truncate', '-s', '0', mnt / 'vol', message='Invalid argument')
    assert size_of(mnt / 'vol') == len(data)
    assert_content(tmp_path, mnt / 'vol', data)


def test_allow_shrink_shrinks_and_the_cut_data_stays_gone(daemon_factory,
                                                          tmp_path: Path) -> None:
    """With -o allow_shrink, truncate shrinks (within a chunk and dropping whole chunks), and
    growing again reads zeros past the cut, never the old bytes; `>` empties a volume."""
    daemon = daemon_factory('allow_shrink')
    daemon.start()
    mnt = daemon.mountpoint
    data = random_bytes(20 * MiB + 3000, 10)  # a 16 MiB chunk and part of a second
    put(tmp_path, mnt / 'vol', data)
    run('truncate', '-s', '18M', mnt / 'vol')
    assert size_of(mnt / 'vol') == 18 * MiB
    run('truncate', '-s', '5000', mnt / 'vol')
    assert_content(tmp_path, mnt / 'vol', data[:5000])
    run('truncate', '-s', str(len(data)), mnt / 'vol')
    assert_content(tmp_path, mnt / 'vol', data[:5000] + bytes(len(data) - 5000))
    sh('echo hello > vol', cwd=mnt)
    assert_content(tmp_path, mnt / 'vol', b'hello\n')


# -- 7. dd -----------------------------------------------------------------------------------

def test_dd_overwrites_in_place(mounted: Daemon, tmp_path: Path) -> None:
    """dd seek=N conv=notrunc replaces exactly those blocks; seeking past the end grows the
    volume and the gap reads as zeros."""
    mnt = mounted.mountpoint
    original = random_bytes(64 * 1024, 11)
    patch = local_file(tmp_path, 'patch', random_bytes(8192, 12))
    put(tmp_path, mnt / 'vol', original)
    run('dd', f'if={patch}', f'of={mnt / "vol"}', 'bs=4k', 'seek=5', 'conv=notrunc',
        'status=none')
    expected = original[:5 * 4096] + patch.read_bytes() + original[7 * 4096:]
    assert_content(tmp_path, mnt / 'vol', expected)
    run('dd', f'if={patch}', f'of={mnt / "vol"}', 'bs=4k', 'seek=20', 'conv=notrunc',
        'status=none')
    expected += bytes(4 * 4096) + patch.read_bytes()
    assert size_of(mnt / 'vol') == 22 * 4096
    assert_content(tmp_path, mnt / 'vol', expected)


# -- 8. du -----------------------------------------------------------------------------------

def test_du_counts_only_written_space(mounted: Daemon, tmp_path: Path) -> None:
    """A 1 GiB thin volume uses nothing; after 1 MiB is written du shows about 1 MiB, while
    du --apparent-size shows 1 GiB."""
    mnt = mounted.mountpoint
    run('truncate', '-s', '1G', mnt / 'thin')
    assert run('du', '-k', mnt / 'thin').split()[0] == '0'
    source = local_file(tmp_path, 'one-mib', random_bytes(MiB, 13))
    run('dd', f'if={source}', f'of={mnt / "thin"}', 'bs=1M', 'seek=100', 'conv=notrunc',
        'status=none')
    used_kib = int(run('du', '-k', mnt / 'thin').split()[0])
    assert 1024 <= used_kib <= 1024 + 256
    assert run('du', '-b', mnt / 'thin').split()[0] == str(GiB)
    assert run('du', '--apparent-size', '-k', mnt / 'thin').split()[0] == str(GiB // 1024)
    assert size_of(mnt / 'thin') == GiB


# -- 9. extended attributes ------------------------------------------------------------------

def test_getfattr_shows_the_engine_facts(mounted: Daemon, tmp_path: Path) -> None:
    """getfattr -d lists user.curvefuse.id/owner/status/type/allocated of a volume."""
    mnt = mounted.mountpoint
    run('truncate', '-s', '1M', mnt / 'vol')
    facts = xattrs(mnt / 'vol')
    assert {k: facts[k] for k in ('user.curvefuse.owner', 'user.curvefuse.status',
                                  'user.curvefuse.type', 'user.curvefuse.allocated')} == {
        'user.curvefuse.owner': 'root', 'user.curvefuse.status': '0',
        'user.curvefuse.type': 'volume', 'user.curvefuse.allocated': '0'}
    assert int(facts['user.curvefuse.id']) == int(stat(mnt / 'vol', '%i')) - 1
    source = local_file(tmp_path, 'two-blocks', random_bytes(8192, 14))
    run('dd', f'if={source}', f'of={mnt / "vol"}', 'conv=notrunc', 'status=none')
    assert xattrs(mnt / 'vol')['user.curvefuse.allocated'] == '8192'
    assert run('getfattr', '--only-values', '-n', 'user.curvefuse.type', mnt / 'vol') == 'volume'


def test_user_xattrs_are_kept_and_removed(mounted: Daemon) -> None:
    """setfattr user.color is listed by getfattr -d and survives a remount; setfattr -x
    removes it for good (also across a remount)."""
    mnt = mounted.mountpoint
    run('touch', mnt / 'vol')
    run('mkdir', mnt / 'dir')
    run('setfattr', '-n', 'user.color', '-v', 'blue', mnt / 'vol')
    run('setfattr', '-n', 'user.color', '-v', 'green', mnt / 'dir')
    assert xattrs(mnt / 'vol')['user.color'] == 'blue'
    mounted.stop()
    mounted.start()
    assert xattrs(mnt / 'vol')['user.color'] == 'blue'
    assert xattrs(mnt / 'dir')['user.color'] == 'green'
    run('setfattr', '-x', 'user.color', mnt / 'vol')
    assert 'user.color' not in xattrs(mnt / 'vol')
    fails('getfattr', '-n', 'user.color', mnt / 'vol', message='No such attribute')
    fails('setfattr', '-x', 'user.color', mnt / 'vol', message='No such attribute')
    mounted.stop()
    mounted.start()
    assert 'user.color' not in xattrs(mnt / 'vol')
    assert xattrs(mnt / 'dir')['user.color'] == 'green'


def test_engine_facts_cannot_be_changed(mounted: Daemon) -> None:
    """Setting or removing a user.curvefuse.* attribute fails with "Operation not permitted"
    and the fact keeps its value."""
    mnt = mounted.mountpoint
    run('touch', mnt / 'vol')
    facts = xattrs(mnt / 'vol')
    fails('setfattr', '-n', 'user.curvefuse.id', '-v', '99', mnt / 'vol',
          message='Operation not permitted')
    fails('setfattr', '-x', 'user.curvefuse.type', mnt / 'vol',
          message='Operation not permitted')
    assert xattrs(mnt / 'vol') == facts


# -- 10. bad input ---------------------------------------------------------------------------

def test_names_longer_than_255_bytes_are_refused(mounted: Daemon, tmp_path: Path) -> None:
    """Every way to make a 256-byte name fails with "File name too long" and makes nothing;
    255 bytes work, also through the recycle bin (whose <name>-<id> is cut to fit)."""
    mnt = mounted.mountpoint
    too_long, longest = 'a' * 256, 'é' * 127 + 'b'  # 256 and 255 bytes
    run('touch', mnt / 'vol')
    source = local_file(tmp_path, 'src', b'data')
    for args in (('touch', too_long), ('mkdir', too_long), ('mv', 'vol', too_long),
                 ('cp', source, too_long), ('truncate', '-s', '1M', too_long)):
        fails(*args, cwd=mnt, message='File name too long')
    sh_fails(f'echo hi > {too_long}', cwd=mnt, message='File name too long')
    assert sorted(os.listdir(mnt)) == ['.snapshots', 'RecycleBin', 'vol']
    run('mv', 'vol', longest, cwd=mnt)
    assert sorted(os.listdir(mnt)) == ['.snapshots', 'RecycleBin', longest]
    vol_id = xattrs(mnt / longest)['user.curvefuse.id']
    run('rm', longest, cwd=mnt)
    (entry,) = recycled(mnt)
    assert len(entry.encode()) <= 255 and entry.endswith(f'-{vol_id}')
    assert entry.startswith('é' * 100)
    run('mv', mnt / 'RecycleBin' / entry, mnt / longest)
    assert sorted(os.listdir(mnt)) == ['.snapshots', 'RecycleBin', longest]


def test_rm_keeps_a_non_utf8_name_in_the_recycle_bin(mounted: Daemon) -> None:
    """A name that is not valid UTF-8 (Linux allows any bytes) keeps its bytes as <name>-<id>
    in /RecycleBin."""
    mnt = mounted.mountpoint
    name = os.fsdecode(b'disk\xff\xfe')
    run('touch', mnt / name)
    assert os.listdir(os.fsencode(mnt)) == [b'.snapshots', b'RecycleBin', b'disk\xff\xfe']
    vol_id = xattrs(mnt / name)['user.curvefuse.id']
    run('rm', mnt / name)
    assert os.listdir(os.fsencode(mnt / 'RecycleBin')) == [b'disk\xff\xfe-' + vol_id.encode()]


def test_read_only_mount_refuses_every_change(daemon_factory, tmp_path: Path) -> None:
    """With -o ro every change (touch, mkdir, echo >, rm, mv, setfattr, truncate, dd, cp ...)
    fails with "Read-only file system" and the tree stays exactly as it was; reading works."""
    data = random_bytes(20_000, 15)
    writer = daemon_factory()
    writer.start()
    mnt = writer.mountpoint
    run('mkdir', '-p', mnt / 'd' / 'empty')
    put(tmp_path, mnt / 'd' / 'v', data)
    run('setfattr', '-n', 'user.color', '-v', 'blue', mnt / 'd' / 'v')
    run('rm', mnt / 'd' / 'v')
    run('mv', mnt / 'RecycleBin' / os.listdir(mnt / 'RecycleBin')[0], mnt / 'd' / 'v')
    run('cp', mnt / 'd' / 'v', mnt / 'd' / 'w')
    run('rm', mnt / 'd' / 'w')
    writer.stop()

    reader = daemon_factory('ro')
    reader.start()
    before = snapshot(mnt)
    source = local_file(tmp_path, 'src', b'new data')
    attempts = [
        ('touch', 'new'), ('touch', 'd/v'), ('mkdir', 'newdir'), ('rm', 'd/v'),
        ('rmdir', 'd/empty'), ('mv', 'd/v', 'd/moved'), ('mv', 'd', 'e'),
        ('mv', f'RecycleBin/{recycled(mnt)[0]}', 'back'),
        ('rm', f'RecycleBin/{recycled(mnt)[0]}'),
        ('setfattr', '-n', 'user.x', '-v', '1', 'd/v'), ('setfattr', '-x', 'user.color', 'd/v'),
        ('truncate', '-s', '1M', 'd/v'), ('truncate', '-s', '1M', 'new'),
        ('dd', f'if={source}', 'of=d/v', 'conv=notrunc', 'status=none'),
        ('cp', source, 'copy'), ('chmod', '600', 'd/v'),
    ]
    for args in attempts:
        fails(*args, cwd=mnt, message=ROFS)
    for script in ('echo hi > new', 'echo hi > d/v', 'echo hi >> d/v'):
        sh_fails(script, cwd=mnt, message=ROFS)
    assert snapshot(mnt) == before
    assert_content(tmp_path, mnt / 'd' / 'v', data)
    assert xattrs(mnt / 'd' / 'v')['user.color'] == 'blue'


# -- 11. df ----------------------------------------------------------------------------------

def test_df_reports_the_backing_disk(mounted: Daemon) -> None:
    """df on the mount shows the size of the disk holding the store, as fuse.curvefuse."""
    out = run('df', '-B1', '--output=fstype,size,target', mounted.mountpoint).splitlines()
    fstype, size, target = out[1].split()
    disk = os.statvfs(mounted.data_dir)
    assert (fstype, int(size), target) == ('fuse.curvefuse', disk.f_blocks * disk.f_frsize,
                                           str(mounted.mountpoint))
    source = run('df', '--output=source', mounted.mountpoint).splitlines()[1]
    assert source == os.path.realpath(mounted.data_dir)


# -- 12. unlink while open -------------------------------------------------------------------

def test_unlink_while_open_keeps_the_data(mounted: Daemon, tmp_path: Path) -> None:
    """A volume rm'ed from the shell while a process has it open stays usable through the
    open fd (write, read, grow); after close, its /RecycleBin entry holds everything."""
    mnt = mounted.mountpoint
    first, second = random_bytes(8192, 16), random_bytes(12288, 17)
    fd = os.open(mnt / 'scratch', os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert os.pwrite(fd, first, 0) == len(first)
        run('rm', mnt / 'scratch')
        assert os.listdir(mnt) == ['.snapshots', 'RecycleBin']
        (entry,) = recycled(mnt)
        assert os.pwrite(fd, second, 4096) == len(second)
        assert os.pread(fd, 20_000, 0) == first[:4096] + second
        assert os.fstat(fd).st_size == 4096 + len(second)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert_content(tmp_path, mnt / 'RecycleBin' / entry, first[:4096] + second)
    run('rm', mnt / 'RecycleBin' / entry)
    assert recycled(mnt) == []


# -- 13. a writer killed mid-write -----------------------------------------------------------

def _written_bytes(pid: int) -> int:
    with open(f'/proc/{pid}/io') as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith('wchar:'))


def test_dd_killed_mid_write_leaves_old_or_new_data(mounted: Daemon) -> None:
    """SIGKILL to a dd in the middle of writing 4 GiB over a volume: every block reads back
    without error as either the new data (a prefix at least as long as what dd had written)
    or the old one, the volume grew only as far as dd got, and fsck finds the store clean
    while still mounted."""
    mnt = mounted.mountpoint
    vol = mnt / 'vol'
    old_len = 32 * MiB
    old, new = b'0123456\n' * 512, b'ABCDEFG\n' * 512  # one 4 KiB block of each
    sh(f'yes 0123456 | dd of=vol bs=1M count={old_len // MiB} iflag=fullblock status=none',
       cwd=mnt)
    assert size_of(vol) == old_len

    threshold = 96 * MiB  # beyond the old end: dd is allocating new chunks when killed
    source = subprocess.Popen(['yes', 'ABCDEFG'], stdout=subprocess.PIPE)
    try:
        dd = subprocess.Popen(['dd', f'of={vol}', 'bs=4M', 'count=1024', 'iflag=fullblock',
                               'conv=notrunc', 'status=none'], stdin=source.stdout)
        source.stdout.close()
        try:
            deadline = time.monotonic() + 60
            while dd.poll() is None and _written_bytes(dd.pid) < threshold:
                assert time.monotonic() < deadline, 'dd wrote too slowly'
                time.sleep(0.001)
            dd.send_signal(signal.SIGKILL)
            assert dd.wait(timeout=60) == -signal.SIGKILL, 'dd finished before the kill'
        finally:
            if dd.poll() is None:
                dd.kill()
                dd.wait()
    finally:
        source.kill()
        source.wait()

    length = size_of(vol)
    assert length % 4096 == 0
    new_prefix = None
    with open(vol, 'rb') as fh:
        for offset in range(0, length, 4096):
            block = fh.read(4096)
            if new_prefix is None and block != new:
                new_prefix = offset
            if new_prefix is not None:
                assert block == old, f'block at {offset} is neither old nor new data'
        assert fh.read() == b''
    new_prefix = length if new_prefix is None else new_prefix
    assert new_prefix >= threshold
    assert length == max(old_len, new_prefix)  # grown exactly as far as dd had written
    result = curvefuse('fsck', str(mounted.data_dir), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
