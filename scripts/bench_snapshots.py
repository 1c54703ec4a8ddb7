"""curvefuse snapshot benchmark: snapshots, copy-on-write, clone and flatten, with peers in one run.

Volumes, made once on a fresh store (sizes from --small and --large):
- "written": --small bytes fully written (1 MiB writes), with a protected snapshot "base";
- "wide": --large bytes with every chunk mapped, but only 4 KiB written in each: its metadata
  (one chunk-map entry per chunk) is that of a fully written volume of that size, without the
  time and disk that writing it all would take;
- "ordinary": --small bytes fully written, never snapshotted (the peer for plain writes);
- a plain file with the same bytes as "written" (the peer for flatten).
Each round, with peers in rotating order and the disk synced before every timed phase:
- snapshot: five snapshots each of "written" and "wide" (ratio near 1: snapshots are O(1));
- writes: one write per chunk at a random block, chunks in random order, through
  Volume.pwrite with a flush every --flush-every writes, on "ordinary" and on "written" just after
  a snapshot (so each is the first write to its chunk since the snapshot); 4 KiB aligned writes,
  then 512-byte writes inside a block (which first copy the rest of that block from below);
  microseconds per write: the median latency of one pwrite (over every write of every round),
  and the whole pass's time per write with its flushes (median over the rounds);
- clone: Store.clone of the protected "base" snapshots of "written" and "wide";
- flatten: Store.flatten of the clone of "written", against `cp --sparse=never` of the plain
  file followed by an fsync. The data of both is in the page cache (it was just written).
Other figures are medians over the rounds; ratios are taken between figures of the same run.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import curvefuse
from bench import destroy, timed
from curvefuse.engine import DEFAULT_CHUNK_SIZE

log = logging.getLogger('bench_snapshots')
MiB, GiB = 2**20, 2**30
SNAPSHOTS_PER_ROUND = 5


def fill(store: curvefuse.Store, path: str, size: int, pattern: bytes) -> None:
    store.create(path, size)
    with store.open(path, 'r+b') as vol:
        for offset in range(0, size, len(pattern)):
            vol.pwrite(pattern, offset)


def fill_plain(path: str, size: int, pattern: bytes) -> None:
    with open(path, 'wb') as fh:
        for _ in range(0, size, len(pattern)):
            fh.write(pattern)
        fh.flush()
        os.fsync(fh.fileno())


def map_every_chunk(store: curvefuse.Store, path: str, size: int, rng: random.Random) -> None:
    """A volume whose every chunk holds 4 KiB at a random block: all of it is mapped."""
    store.create(path, size)
    block = os.urandom(4096)
    with store.open(path, 'r+b') as vol:
        for offset in one_write_per_chunk(rng, size, store.chunk_size, 4096):
            vol.pwrite(block, offset)


def one_write_per_chunk(rng: random.Random, size: int, chunk_size: int,
                        length: int) -> list[int]:
    """An offset in every chunk, chunks in random order: 4 KiB-aligned for a 4 KiB write, else
    inside one block (not at its start), so the write covers that block only partly."""
    blocks = chunk_size // 4096
    chunks = list(range(size // chunk_size))
    rng.shuffle(chunks)
    offsets = []
    for chunk in chunks:
        offset = chunk * chunk_size + rng.randrange(blocks) * 4096
        if length < 4096:
            offset += rng.randrange(1, 4096 // length) * length
        offsets.append(offset)
    return offsets


def write_pass(vol: curvefuse.Volume, offsets: Sequence[int], data: bytes,
               flush_every: int) -> tuple[list[float], float]:
    """Seconds of each pwrite, and seconds per write of the whole pass (the pwrites and a flush
    every flush_every writes)."""
    os.sync()
    latencies = []
    began = time.perf_counter()
    for start in range(0, len(offsets), flush_every):
        for offset in offsets[start:start + flush_every]:
            before = time.perf_counter()
            vol.pwrite(data, offset)
            latencies.append(time.perf_counter() - before)
        vol.flush()
    return latencies, (time.perf_counter() - began) / len(offsets)


def in_turn(round_no: int, actions: Sequence[Callable[[], None]]) -> None:
    """Run the peers of one phase, starting with a different one each round."""
    for k in range(len(actions)):
        actions[(round_no + k) % len(actions)]()


class Rounds:
    """The volumes under test and the seconds each test took, round after round."""

    def __init__(self, store: curvefuse.Store, work: str, small: int, flush_every: int):
        self.store, self.small, self.flush_every = store, small, flush_every
        self.plain_source, self.copy = f'{work}/plain.img', f'{work}/copy.img'
        self.rng = random.Random(1)
        self.samples: dict[str, list[float]] = {}

    def setup(self, large: int) -> None:
        pattern = os.urandom(MiB)
        log.info('writing the volumes (%s twice and a plain file, %s sparsely)...',
                 human(self.small), human(large))
        fill(self.store, '/written', self.small, pattern)
        fill(self.store, '/ordinary', self.small, pattern)
        fill_plain(self.plain_source, self.small, pattern)
        map_every_chunk(self.store, '/wide', large, self.rng)
        for path in ('/written', '/wide'):
            self.store.snapshot(path, 'base', protect=True)
        self.written = self.store.open('/written', 'r+b')
        self.ordinary = self.store.open('/ordinary', 'r+b')

    def close(self) -> None:
        self.written.close()
        self.ordinary.close()

    def sample(self, test: str, *seconds: float) -> None:
        self.samples.setdefault(test, []).extend(seconds)

    def run(self, round_no: int) -> None:
        in_turn(round_no, [partial(self.snapshots, '/written', 'snap small', round_no),
                           partial(self.snapshots, '/wide', 'snap large', round_no)])
        for length in (4096, 512):
            offsets = one_write_per_chunk(self.rng, self.small, self.store.chunk_size, length)
            data = os.urandom(length)
            in_turn(round_no, [partial(self.ordinary_writes, offsets, data),
                               partial(self.writes_after_snapshot, offsets, data, round_no)])
        clone = f'/clone{round_no}'
        in_turn(round_no, [partial(self.clone, '/written', clone, 'clone small'),
                           partial(self.clone, '/wide', f'{clone}-wide', 'clone large')])
        destroy(self.store, f'{clone}-wide')
        in_turn(round_no, [partial(self.flatten, clone), self.plain_copy])
        destroy(self.store, clone)
        os.unlink(self.copy)

    def snapshots(self, path: str, test: str, round_no: int) -> None:
        for k in range(SNAPSHOTS_PER_ROUND):
            self.sample(test, timed(partial(self.store.snapshot, path, f'round{round_no}-{k}')))

    def ordinary_writes(self, offsets: list[int], data: bytes) -> None:
        latencies, flushed = write_pass(self.ordinary, offsets, data, self.flush_every)
        self.sample(f'plain {len(data)}', *latencies)
        self.sample(f'plain {len(data)} flushed', flushed)

    def writes_after_snapshot(self, offsets: list[int], data: bytes, round_no: int) -> None:
        self.store.snapshot('/written', f'round{round_no}-cow{len(data)}')
        latencies, flushed = write_pass(self.written, offsets, data, self.flush_every)
        self.sample(f'cow {len(data)}', *latencies)
        self.sample(f'cow {len(data)} flushed', flushed)

    def clone(self, source: str, dest: str, test: str) -> None:
        self.sample(test, timed(partial(self.store.clone, source, 'base', dest)))

    def flatten(self, clone: str) -> None:
        self.sample('flatten', timed(partial(self.store.flatten, clone, wait=True)))

    def plain_copy(self) -> None:
        def copy() -> None:
            subprocess.run(['cp', '--reflink=never', '--sparse=never', self.plain_source,
                            self.copy], check=True)
            fd = os.open(self.copy, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        self.sample('plain copy', timed(copy))


@dataclass
class Row:
    test: str
    value: float
    unit: str
    ratio: float | None = None
    ratio_of: str = ''


def report(rows: list[Row]) -> None:
    width = max(len(row.test) for row in rows)
    print(f'\n{"test":{width}} {"figure":>16}   ratio')
    for row in rows:
        ratio = '' if row.ratio is None else f'{row.ratio:6.2f}x {row.ratio_of}'
        print(f'{row.test:{width}} {row.value:10.1f} {row.unit:5}   {ratio}'.rstrip())


def table(med: dict[str, float], small: int, large: int, chunk_size: int,
          flush_every: int) -> list[Row]:
    """The figures and ratios from the median seconds of each test."""
    chunks_small, chunks_large = small // chunk_size, large // chunk_size
    rows = [
        Row(f'snapshot, {human(small)} written ({chunks_small} full chunks)',
            med['snap small'] * 1e3, 'ms'),
        Row(f'snapshot, {human(large)} mapped ({chunks_large} chunks, 4 KiB in each)',
            med['snap large'] * 1e3, 'ms', med['snap large'] / med['snap small'],
            f'the {human(small)} one'),
    ]
    for length, what in ((4096, '4 KiB write'), (512, '512 B write in a block')):
        for suffix, how in (('', 'pwrite'), (' flushed', f'with a flush per {flush_every}')):
            plain, cow = med[f'plain {length}{suffix}'], med[f'cow {length}{suffix}']
            rows += [Row(f'{what}, ordinary ({how})', plain * 1e6, 'µs'),
                     Row(f'{what}, first after a snapshot ({how})', cow * 1e6, 'µs',
                         cow / plain, 'ordinary')]
    flatten, copy = small / MiB / med['flatten'], small / MiB / med['plain copy']
    rows += [
        Row(f'clone of a snapshot of {human(small)} written', med['clone small'] * 1e3, 'ms'),
        Row(f'clone of a snapshot of {human(large)} mapped', med['clone large'] * 1e3, 'ms',
            med['clone large'] / med['clone small'], f'the {human(small)} one'),
        Row('plain copy (cp --sparse=never + fsync)', copy, 'MiB/s'),
        Row(f'flatten of a clone of {human(small)} written', flatten, 'MiB/s', flatten / copy,
            'plain copy'),
    ]
    return rows


def human(size: int) -> str:
    return f'{size // GiB} GiB' if size % GiB == 0 else f'{size // MiB} MiB'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dir', default='/var/tmp',
                        help='where to put the store, on a real disk (default /var/tmp)')
    parser.add_argument('--small', default='1G',
                        help='bytes written in the volumes snapshotted, written and flattened')
    parser.add_argument('--large', default='16G',
                        help='size of the volume with every chunk mapped (default 16G)')
    parser.add_argument('--rounds', type=int, default=5, help='rounds; the median counts')
    parser.add_argument('--flush-every', type=int, default=16, help='writes between flushes')
    parser.add_argument('--chunk-size', default=str(DEFAULT_CHUNK_SIZE),
                        help='chunk size of the store under test')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    log.setLevel(logging.INFO)
    small, large = curvefuse.parse_size(args.small), curvefuse.parse_size(args.large)
    chunk_size = curvefuse.parse_size(args.chunk_size)
    if small % chunk_size or large % chunk_size or args.rounds < 1 or args.flush_every < 1:
        raise SystemExit('--small and --large must be multiples of the chunk size; '
                         '--rounds and --flush-every at least 1')
    work = tempfile.mkdtemp(prefix='curvefuse-bench-snap-', dir=args.dir)
    try:
        store = curvefuse.open_store(f'{work}/store', create=True, chunk_size=chunk_size)
        rounds = Rounds(store, work, small, args.flush_every)
        rounds.setup(large)
        for round_no in range(args.rounds):
            rounds.run(round_no)
        rounds.close()
        store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f'chunk size {chunk_size // MiB} MiB, medians of {args.rounds} rounds '
          f'({SNAPSHOTS_PER_ROUND} snapshots per volume per round; pwrite: the median of all '
          f'{args.rounds * small // chunk_size} writes); data in the page cache, disk synced '
          'before each phase.\n'
          f'The {human(large)} volume has every chunk mapped (the metadata of {human(large)} '
          'written) but only 4 KiB written in each chunk.')
    report(table({test: statistics.median(values) for test, values in rounds.samples.items()},
                 small, large, chunk_size, args.flush_every))
    return 0


if __name__ == '__main__':
    sys.exit(main())
