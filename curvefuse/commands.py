"""The rbd-like subcommands of `curvefuse` (create, ls, info, resize, rm, mv, mkdir, rmdir, du,
trash, import, export), on the Pythonic API. Each takes the parsed arguments and an open store,
prints its result and returns the exit code; errors are raised as engine errors and reported by
`cli.main` in one line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, BinaryIO

from tqdm import tqdm

from .api import Entry, Store, parse_size
from .engine import BLOCK_SIZE, RECYCLE_NAME
from .errors import InvalidArgumentError, NotFoundError

COPY_BLOCK = 2**20  # bytes per read/write in import and export


def human(size: int) -> str:
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if size < 1024 or unit == 'TiB':
            return f'{size:.0f} {unit}' if unit == 'B' else f'{size:.1f} {unit}'
        size /= 1024
    raise AssertionError('unreachable')


def _join(parent: str, name: str) -> str:
    return parent.rstrip('/') + '/' + name


def describe(store: Store, entry: Entry, path: str) -> dict[str, Any]:
    """What ls -l, info and --format json show of an entry."""
    info: dict[str, Any] = {
        'path': path, 'name': entry.name, 'id': entry.id,
        'type': 'directory' if entry.is_dir else 'volume', 'owner': entry.owner,
        'status': entry.status, 'created': entry.created.isoformat(),
        'modified': entry.modified.isoformat()}
    if not entry.is_dir:
        info['length'] = entry.length
        info['allocated'] = store.allocated(path)
    if entry.original_path is not None:
        info['original_path'] = entry.original_path
    return info


def _print(args: argparse.Namespace, rows: list[dict[str, Any]], columns: list[str]) -> None:
    if args.format == 'json':
        json.dump(rows, sys.stdout, indent=2)
        print()
        return
    for row in rows:
        cells = [human(row[c]) if c in ('length', 'allocated') and c in row else
                 str(row.get(c, '-')) for c in columns]
        print('  '.join(cells))


def create(args: argparse.Namespace, store: Store) -> int:
    store.create(args.path, parse_size(args.size))
    return 0


def ls(args: argparse.Namespace, store: Store) -> int:
    path = args.path
    if not store.stat(path).is_dir:
        rows = [describe(store, store.stat(path), path)]
    else:
        rows = [describe(store, entry, _join(path, entry.name)) for entry in store.listdir(path)]
    if args.format == 'json' or args.long:
        _print(args, rows, ['type', 'length', 'allocated', 'owner', 'status', 'modified',
                            'name'])
    else:
        for row in rows:
            print(row['name'] + ('/' if row['type'] == 'directory' else ''))
    return 0


def info(args: argparse.Namespace, store: Store) -> int:
    row = describe(store, store.stat(args.path), args.path)
    if args.format == 'json':
        json.dump(row, sys.stdout, indent=2)
        print()
    else:
        for key, value in row.items():
            print(f'{key}: {human(value) if key in ("length", "allocated") else value}')
    return 0


def resize(args: argparse.Namespace, store: Store) -> int:
    store.resize(args.path, parse_size(args.size), allow_shrink=args.allow_shrink)
    return 0


def rm(args: argparse.Namespace, store: Store) -> int:
    store.remove(args.path)
    return 0


def mv(args: argparse.Namespace, store: Store) -> int:
    store.rename(args.old, args.new)
    return 0


def mkdir(args: argparse.Namespace, store: Store) -> int:
    store.mkdir(args.path)
    return 0


def rmdir(args: argparse.Namespace, store: Store) -> int:
    if not store.stat(args.path).is_dir:
        raise InvalidArgumentError(f'{args.path} is a volume; use rm')
    store.remove(args.path)
    return 0


def _walk_volumes(store: Store, path: str) -> Iterator[str]:
    entry = store.stat(path)
    if not entry.is_dir:
        yield path
        return
    for child in store.listdir(path):
        yield from _walk_volumes(store, _join(path, child.name))


def du(args: argparse.Namespace, store: Store) -> int:
    rows = [{'path': path, 'length': store.stat(path).length, 'allocated': store.allocated(path)}
            for path in _walk_volumes(store, args.path)]
    if args.format != 'json':
        rows.append({'path': 'total', 'length': sum(r['length'] for r in rows),
                     'allocated': sum(r['allocated'] for r in rows)})
    _print(args, rows, ['allocated', 'length', 'path'])
    return 0


def _recycled(store: Store, which: str) -> Entry:
    for entry in store.listdir('/' + RECYCLE_NAME):
        if which in (entry.name, str(entry.id)):
            return entry
    raise NotFoundError(f'nothing named or numbered {which!r} in the recycle bin')


def trash_ls(args: argparse.Namespace, store: Store) -> int:
    rows = [describe(store, entry, f'/{RECYCLE_NAME}/{entry.name}')
            for entry in store.listdir('/' + RECYCLE_NAME)]
    _print(args, rows, ['id', 'length', 'allocated', 'modified', 'name', 'original_path'])
    return 0


def trash_restore(args: argparse.Namespace, store: Store) -> int:
    entry = _recycled(store, args.entry)
    target = args.to or entry.original_path
    if target is None:
        raise InvalidArgumentError(f'{entry.name} has no original path; give --to')
    store.recover(target, entry.id)
    return 0


_AGE = re.compile(r'^(\d+)([smhdw])$')
_AGE_UNITS = {'s': 'seconds', 'm': 'minutes', 'h': 'hours', 'd': 'days', 'w': 'weeks'}


def parse_cutoff(text: str) -> datetime:
    """'7d', '12h', '30m' ago, or an ISO date/time (UTC unless it says otherwise)."""
    match = _AGE.match(text.strip())
    if match:
        return datetime.now(timezone.utc) - timedelta(
            **{_AGE_UNITS[match.group(2)]: int(match.group(1))})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgumentError(f'not an age (7d, 12h, 30m) or a date: {text!r}') from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def trash_purge(args: argparse.Namespace, store: Store) -> int:
    cutoff = parse_cutoff(args.expired_before) if args.expired_before else None
    count = store.empty_recycle_bin(cutoff)
    print(f'purged {count} volume{"s" if count != 1 else ""}')
    return 0


def data_runs(data: bytes) -> Iterator[tuple[int, int]]:
    """[start, end) of the runs of 4 KiB blocks in data that are not all zeros: what a sparse
    copy must write."""
    view = memoryview(data)
    start = None
    for pos in range(0, len(data), BLOCK_SIZE):
        block = view[pos:pos + BLOCK_SIZE]
        if block.tobytes().count(0) == len(block):
            if start is not None:
                yield start, pos
                start = None
        elif start is None:
            start = pos
    if start is not None:
        yield start, len(data)


def _progress(args: argparse.Namespace, total: int, what: str) -> tqdm:
    return tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024, desc=what,
                disable=args.no_progress or not sys.stderr.isatty(), file=sys.stderr)


def export(args: argparse.Namespace, store: Store) -> int:
    """A raw image of the volume; into a file, the volume's holes stay holes."""
    with store.open(args.path) as vol:
        size = vol.size
        to_stdout = args.dest == '-'
        out: BinaryIO = sys.stdout.buffer if to_stdout else open(args.dest, 'wb')
        try:
            with _progress(args, size, 'export') as bar:
                for offset in range(0, size, COPY_BLOCK):
                    data = vol.pread(COPY_BLOCK, offset)
                    if to_stdout:
                        out.write(data)
                    elif data.count(0) != len(data):
                        for start, end in data_runs(data):
                            out.seek(offset + start)
                            out.write(data[start:end])
                    bar.update(len(data))
            if not to_stdout:
                out.truncate(size)
        finally:
            if to_stdout:
                out.flush()
            else:
                out.close()
    return 0


def import_(args: argparse.Namespace, store: Store) -> int:
    """A raw image into a new volume; zero blocks are not written, so they stay unallocated.
    The length is the image's, rounded up to a multiple of 4 KiB."""
    from_stdin = args.source == '-'
    if from_stdin and not args.size:
        raise InvalidArgumentError('importing from stdin needs --size')
    src: BinaryIO = sys.stdin.buffer if from_stdin else open(args.source, 'rb')
    try:
        size = parse_size(args.size) if args.size else os.fstat(src.fileno()).st_size
        length = max(BLOCK_SIZE, -(-size // BLOCK_SIZE) * BLOCK_SIZE)
        store.create(args.path, length)
        with store.open(args.path, 'r+b') as vol, _progress(args, size, 'import') as bar:
            offset = 0
            while offset < size:
                data = src.read(min(COPY_BLOCK, size - offset))
                if not data:
                    break
                if data.count(0) != len(data):
                    for start, end in data_runs(data):
                        vol.pwrite(data[start:end], offset + start)
                offset += len(data)
                bar.update(len(data))
    finally:
        if not from_stdin:
            src.close()
    return 0
