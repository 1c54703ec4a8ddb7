"""curvefuse benchmark: IO through the Pythonic API and CBDClient against a plain sparse file.

Each peer does the same work in the same run, on the same disk:
- sequential: 1 MiB writes over SIZE bytes, then one fsync/flush; then 1 MiB reads of it all;
- random: 4 KiB writes at random aligned offsets (queue depth 1) over SIZE bytes, then one
  fsync/flush; then 4 KiB reads at other random offsets.
Reads come from the page cache for every peer alike (the data was just written), unless --cold
drops the caches first (root only). Before every timed phase the disk is synced, so no peer pays
for another's writeback; peers run in rotating order for --rounds rounds and the median counts.
Figures: MiB/s, IOPS, and the ratio to the plain file.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import curvefuse
from curvefuse.client import CBDClient, UserInfo_t
from curvefuse.engine import DEFAULT_CHUNK_SIZE

log = logging.getLogger('bench')
MiB = 2**20


@dataclass
class Peer:
    """Positional IO plus a sync, the shape every peer is measured through."""

    name: str
    pwrite: Callable[[bytes, int], object]
    pread: Callable[[int, int], bytes]
    sync: Callable[[], object]
    close: Callable[[], object]


def plain_file(path: str, size: int) -> Peer:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.ftruncate(fd, size)

    def close() -> None:
        os.close(fd)
        os.unlink(path)

    return Peer('plain file (os.pwrite/os.pread)', lambda data, off: os.pwrite(fd, data, off),
                lambda n, off: os.pread(fd, n, off), lambda: os.fsync(fd), close)


def destroy(store: curvefuse.Store, path: str) -> None:
    """Remove a benchmark volume for good, so rounds do not add up on disk."""
    store.remove(path)
    for entry in store.listdir('/RecycleBin'):
        store.delete_forever(f'/RecycleBin/{entry.name}')


def pythonic(store: curvefuse.Store, path: str, size: int) -> Peer:
    store.create(path, size)
    vol = store.open(path, 'r+b')

    def close() -> None:
        vol.close()
        destroy(store, path)

    return Peer('curvefuse Volume (Pythonic API)', vol.pwrite, vol.pread, vol.flush, close)


def cbd_client(conf: str, store: curvefuse.Store, path: str, size: int) -> Peer:
    client = CBDClient()
    if client.Init(conf) != 0:
        raise SystemExit('CBDClient.Init failed')
    user = UserInfo_t('bench')
    if client.Create(path, user, size) != 0:
        raise SystemExit('CBDClient.Create failed')
    fd = client.Open(path, user)

    def close() -> None:
        client.Close(fd)
        client.UnInit()
        destroy(store, path)

    def reopen() -> None:  # Curve's client has no flush: Close is where data is committed
        nonlocal fd
        client.Close(fd)
        fd = client.Open(path, user)

    return Peer('curvefuse CBDClient (Curve API)',
                lambda data, off: client.Write(fd, data, off, len(data)),
                lambda n, off: client.Read(fd, None, off, n), reopen, close)


def drop_caches() -> None:
    os.sync()
    with open('/proc/sys/vm/drop_caches', 'w') as fh:
        fh.write('3\n')


def timed(action: Callable[[], object], sync: Callable[[], object] | None = None) -> float:
    """Seconds for action (and the peer's sync), starting from a quiet disk."""
    os.sync()
    start = time.perf_counter()
    action()
    if sync:
        sync()
    return time.perf_counter() - start


def measure(peer: Peer, size: int, random_ops: int, cold: bool, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    blocks = size // 4096
    big, small = os.urandom(MiB), os.urandom(4096)
    write_offsets = [rng.randrange(blocks) * 4096 for _ in range(random_ops)]
    read_offsets = [rng.randrange(blocks) * 4096 for _ in range(random_ops)]

    def maybe_drop() -> None:
        if cold:
            drop_caches()

    def each(op: Callable[[int], object], offsets: Iterable[int]) -> Callable[[], None]:
        def run() -> None:
            for off in offsets:
                op(off)
        return run

    seq = range(0, size, MiB)
    results = {'seq write': timed(each(lambda off: peer.pwrite(big, off), seq), peer.sync)}
    maybe_drop()
    results['seq read'] = timed(each(lambda off: peer.pread(MiB, off), seq))
    results['rand write'] = timed(each(lambda off: peer.pwrite(small, off), write_offsets),
                                  peer.sync)
    maybe_drop()
    results['rand read'] = timed(each(lambda off: peer.pread(4096, off), read_offsets))
    return results


def report(rows: list[tuple[str, dict[str, float]]], size: int, random_ops: int) -> None:
    base = rows[0][1]
    print(f'\n{"peer":34} {"test":11} {"MiB/s":>9} {"IOPS":>9} {"vs plain":>9}')
    for name, results in rows:
        for test, seconds in results.items():
            ops = size // MiB if test.startswith('seq') else random_ops
            nbytes = size if test.startswith('seq') else random_ops * 4096
            ratio = base[test] / seconds
            print(f'{name:34} {test:11} {nbytes / MiB / seconds:9.1f} {ops / seconds:9.0f} '
                  f'{ratio:8.2f}x')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dir', default='/var/tmp',
                        help='where to put the files, on a real disk (default /var/tmp)')
    parser.add_argument('--size', default='512M', help='bytes per test file (default 512M)')
    parser.add_argument('--random-ops', type=int, default=20000, help='4 KiB ops per random test')
    parser.add_argument('--rounds', type=int, default=3, help='rounds; the median counts')
    parser.add_argument('--cold', action='store_true', help='drop the page cache before reads')
    parser.add_argument('--chunk-size', default=str(DEFAULT_CHUNK_SIZE),
                        help='chunk size of the store under test')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    size = curvefuse.parse_size(args.size)
    chunk_size = curvefuse.parse_size(args.chunk_size)
    work = tempfile.mkdtemp(prefix='curvefuse-bench-', dir=args.dir)
    try:
        conf = os.path.join(work, 'client.conf')
        with open(conf, 'w') as fh:
            fh.write(f'curvefuse.data_dir={work}/store\ncurvefuse.chunk_size={chunk_size}\n')
        store = curvefuse.open_store(f'{work}/store', create=True, chunk_size=chunk_size)
        makers: list[Callable[[], Peer]] = [
            lambda: plain_file(f'{work}/plain.img', size),
            lambda: pythonic(store, '/bench-api', size),
            lambda: cbd_client(conf, store, '/bench-cbd', size)]
        runs: dict[str, list[dict[str, float]]] = {}
        for round_no in range(args.rounds):
            for k in range(len(makers)):
                peer = makers[(round_no + k) % len(makers)]()
                try:
                    runs.setdefault(peer.name, []).append(
                        measure(peer, size, args.random_ops, args.cold, seed=round_no))
                finally:
                    peer.close()
        store.close()
        rows = [(name, {test: statistics.median(r[test] for r in results)
                        for test in results[0]}) for name, results in runs.items()]
        rows.sort(key=lambda row: not row[0].startswith('plain'))
        print(f'size {size // MiB} MiB, {args.random_ops} random ops, chunk size '
              f'{chunk_size // MiB} MiB, median of {args.rounds} rounds, reads '
              f'{"cold" if args.cold else "from the page cache"}')
        report(rows, size, args.random_ops)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
