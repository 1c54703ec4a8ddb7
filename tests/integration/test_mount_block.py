"""A volume file as a block device: loop devices, ext4 on top, fio with verification."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .helpers import Cleanup, Daemon


def write_tree(root: Path) -> dict[str, str]:
    """A tree of files of many sizes; returns relative path -> sha256."""
    sums = {}
    for i in range(40):
        sub = root / f'dir{i % 5}'
        sub.mkdir(exist_ok=True)
        data = os.urandom((i * 7919) % 300_000 + i)
        (sub / f'file{i}').write_bytes(data)
        sums[f'dir{i % 5}/file{i}'] = hashlib.sha256(data).hexdigest()
    return sums


def read_sums(root: Path, names: dict[str, str]) -> dict[str, str]:
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in names}


def e2fsck_clean(image: Path) -> None:
    result = subprocess.run(['e2fsck', '-fn', str(image)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize('loop_options', [(), ('--direct-io=on',)], ids=['buffered', 'direct-io'])
def test_ext4_on_a_loop_device_survives_a_remount(mounted: Daemon, cleanup: Cleanup,
                                                  tmp_path: Path, loop_options: tuple) -> None:
    """mkfs.ext4 on a loop device over a volume file, a tree of files written, everything
    unmounted (curvefuse too), then mounted again: every checksum matches, e2fsck is clean."""
    image = mounted.mountpoint / 'disk.img'
    subprocess.run(['truncate', '-s', '512M', str(image)], check=True)
    device = cleanup.attach(image, *loop_options)
    subprocess.run(['mkfs.ext4', '-q', device], check=True, timeout=300)
    fs = tmp_path / 'fs'
    cleanup.mount(device, fs)
    sums = write_tree(fs)
    cleanup.umount(fs)
    cleanup.detach(device)

    mounted.stop()
    mounted.start()
    e2fsck_clean(image)
    device = cleanup.attach(image, *loop_options)
    cleanup.mount(device, fs)
    assert read_sums(fs, sums) == sums
    cleanup.umount(fs)
    cleanup.detach(device)
    allocated = int(subprocess.run(['getfattr', '--only-values', '-n', 'user.curvefuse.allocated',
                                    str(image)], capture_output=True, text=True,
                                   check=True).stdout)
    assert allocated < 128 * 2**20  # thin: ext4's metadata and the files, not 512 MiB


def test_read_only_loop_device_mounts_read_only(mounted: Daemon, cleanup: Cleanup,
                                                   tmp_path: Path) -> None:
    """losetup -r of a volume file and mount -o ro work, for inspecting a disk image."""
    image = mounted.mountpoint / 'disk.img'
    subprocess.run(['truncate', '-s', '64M', str(image)], check=True)
    device = cleanup.attach(image)
    subprocess.run(['mkfs.ext4', '-q', device], check=True, timeout=120)
    fs = tmp_path / 'fs'
    cleanup.mount(device, fs)
    (fs / 'hello').write_text('hello from ext4\n')
    cleanup.umount(fs)
    cleanup.detach(device)
    device = cleanup.attach(image, '-r')
    cleanup.mount(device, fs, '-o', 'ro')
    assert (fs / 'hello').read_text() == 'hello from ext4\n'


@pytest.mark.skipif(shutil.which('fio') is None, reason='needs fio')
def test_fio_random_writes_verify(mounted: Daemon) -> None:
    """fio random 4 KiB writes with crc32c verification through the mount: zero errors."""
    target = mounted.mountpoint / 'fio.img'
    subprocess.run(['truncate', '-s', '64M', str(target)], check=True)
    result = subprocess.run(
        ['fio', '--name=verify', f'--filename={target}', '--rw=randwrite', '--bs=4k',
         '--size=64M', '--io_size=32M', '--ioengine=psync', '--verify=crc32c',
         '--verify_fatal=1', '--do_verify=1', '--verify_state_save=0',
         '--output-format=terse', '--terse-version=3'],
        capture_output=True, text=True, timeout=600, cwd=mounted.mountpoint.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    fields = result.stdout.strip().splitlines()[-1].split(';')
    assert fields[4] == '0', f'fio reported errors: {result.stdout}'  # terse field 5: error


@pytest.mark.skipif(shutil.which('fio') is None, reason='needs fio')
def test_fio_concurrent_jobs_verify(mounted: Daemon) -> None:
    """Four fio jobs at once on disjoint regions, mixed random reads and writes with crc32c
    verification, caches dropped first so reads miss: many requests in flight in the daemon
    (inline, polling and in worker threads), and every byte checks."""
    target = mounted.mountpoint / 'shared.img'
    subprocess.run(['truncate', '-s', '128M', str(target)], check=True)
    os.sync()
    Path('/proc/sys/vm/drop_caches').write_text('3\n')
    result = subprocess.run(
        ['fio', '--name=concurrent', f'--filename={target}', '--rw=randrw', '--bs=4k',
         '--numjobs=4', '--size=32M', '--offset_increment=32M', '--io_size=8M',
         '--ioengine=psync', '--verify=crc32c', '--verify_fatal=1', '--do_verify=1',
         '--verify_state_save=0', '--group_reporting', '--output-format=terse',
         '--terse-version=3'],
        capture_output=True, text=True, timeout=600, cwd=mounted.mountpoint.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].split(';')[4] == '0'
