"""fio through the curvefuse mount, against a plain sparse file and qemu-storage-daemon's FUSE export.

Every peer gets the same fio jobs on one file of --size bytes, in this order:
- seq write: 1 MiB writes over the whole file, ending with fsync (end_fsync=1);
- seq read:  1 MiB reads of it, after dropping the page cache (every peer reads from disk);
- rand write: 4 KiB writes at random offsets, queue depth 1, for --runtime seconds, ending with
  fsync;
- rand read: 4 KiB reads at random offsets, queue depth 1, after dropping the page cache.
The plain file is the ceiling (the kernel's page cache, no FUSE); qemu-storage-daemon exporting a
qcow2 image over FUSE is the C peer doing the same job as curvefuse. Peers run in rotating order
for --rounds rounds on fresh files and the median counts, since a VM's disk answers fsyncs with
very different speeds from one minute to the next. Needs root (drop_caches).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

JOBS = {
    'seq write': ['--rw=write', '--bs=1M', '--end_fsync=1'],
    'seq read': ['--rw=read', '--bs=1M'],
    'rand write': ['--rw=randwrite', '--bs=4k', '--end_fsync=1', '--time_based'],
    'rand read': ['--rw=randread', '--bs=4k', '--time_based'],
}


def drop_caches() -> None:
    os.sync()
    Path('/proc/sys/vm/drop_caches').write_text('3\n')


def fio(target: Path, job: str, size: str, runtime: int) -> tuple[float, float]:
    """(MiB/s, IOPS) of one fio job on target."""
    if 'read' in job:
        drop_caches()
    else:
        os.sync()
    args = ['fio', '--name=bench', f'--filename={target}', f'--size={size}', '--ioengine=psync',
            '--iodepth=1', '--randrepeat=1', '--output-format=json', f'--runtime={runtime}',
            *JOBS[job]]
    result = subprocess.run(args, capture_output=True, text=True, check=True,
                            cwd=target.parent.parent)
    side = json.loads(result.stdout)['jobs'][0]['write' if 'write' in job else 'read']
    return side['bw_bytes'] / 2**20, side['iops']


def wait_for_mount(path: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not any(line.split()[1] == str(path) for line in open('/proc/mounts')):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f'{path} did not get mounted')
        time.sleep(0.05)


@contextmanager
def plain(work: Path, size: str) -> Iterator[Path]:
    target = work / 'plain' / 'file.img'
    target.parent.mkdir()
    subprocess.run(['truncate', '-s', size, str(target)], check=True)
    yield target


@contextmanager
def curvefuse_mount(work: Path, size: str) -> Iterator[Path]:
    cli = [sys.executable, '-m', 'curvefuse.cli']
    store, mnt = work / 'store', work / 'mnt'
    mnt.mkdir()
    subprocess.run([*cli, 'init', str(store)], check=True, capture_output=True)
    subprocess.run([*cli, 'mount', str(store), str(mnt)], check=True)
    try:
        target = mnt / 'volume.img'
        subprocess.run(['truncate', '-s', size, str(target)], check=True)
        yield target
    finally:
        subprocess.run([*cli, 'umount', str(mnt)], check=True)


@contextmanager
def qemu_export(work: Path, size: str) -> Iterator[Path]:
    image, export = work / 'qemu' / 'disk.qcow2', work / 'qemu' / 'export.img'
    image.parent.mkdir()
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', str(image), size], check=True)
    export.touch()
    proc = subprocess.Popen([
        'qemu-storage-daemon',
        '--blockdev', f'node-name=file,driver=file,filename={image}',
        '--blockdev', 'node-name=disk,driver=qcow2,file=file',
        '--export', f'type=fuse,id=export,node-name=disk,mountpoint={export},writable=on'])
    try:
        wait_for_mount(export, proc)
        yield export
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if any(line.split()[1] == str(export) for line in open('/proc/mounts')):
            subprocess.run(['fusermount3', '-z', '-u', str(export)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dir', default='/var/tmp', help='where to work, on a real disk')
    parser.add_argument('--size', default='512M', help='file size (default 512M)')
    parser.add_argument('--runtime', type=int, default=5, help='seconds per random job')
    parser.add_argument('--rounds', type=int, default=3, help='rounds; the median counts')
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit('bench_mount needs root (it drops the page cache)')
    peers = {'plain file': plain, 'curvefuse mount': curvefuse_mount}
    if shutil.which('qemu-storage-daemon'):
        peers['qemu-storage-daemon FUSE'] = qemu_export
    else:
        print('qemu-storage-daemon not found (apt-get install qemu-system-common qemu-utils): '
              'no C peer this run')
    work = Path(tempfile.mkdtemp(prefix='curvefuse-fio-', dir=args.dir))
    runs: dict[str, list[dict[str, tuple[float, float]]]] = {name: [] for name in peers}
    names = list(peers)
    try:
        for round_no in range(args.rounds):
            for k in range(len(names)):
                name = names[(round_no + k) % len(names)]
                round_dir = work / f'{round_no}-{k}'
                round_dir.mkdir()
                with peers[name](round_dir, args.size) as target:
                    runs[name].append({job: fio(target, job, args.size, args.runtime)
                                       for job in JOBS})
                shutil.rmtree(round_dir, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {name: {job: (statistics.median(r[job][0] for r in rs),
                            statistics.median(r[job][1] for r in rs)) for job in JOBS}
               for name, rs in runs.items()}
    print(f'\nfio, psync, queue depth 1, {args.size} file, {args.runtime} s per random job, '
          'reads after dropping the page cache, writes ending with fsync, '
          f'median of {args.rounds} rounds')
    header = f'{"peer":26} {"job":11} {"MiB/s":>9} {"IOPS":>9} {"vs plain":>9}'
    peer_name = 'qemu-storage-daemon FUSE'
    print(header + (f' {"vs qemu":>9}' if peer_name in results else ''))
    for name, jobs in results.items():
        for job, (mib, iops) in jobs.items():
            line = f'{name:26} {job:11} {mib:9.1f} {iops:9.0f} ' \
                   f'{mib / results["plain file"][job][0]:8.2f}x'
            if peer_name in results:
                line += f' {mib / results[peer_name][job][0]:8.2f}x'
            print(line)
    return 0


if __name__ == '__main__':
    sys.exit(main())
