"""The rbd-like subcommands of `curvefuse` (create, ls, info, resize, rm, mv, mkdir, rmdir, du,
trash, import, export, snap, clone, flatten, children, export-diff, import-diff), on the Pythonic
API. Each takes the parsed arguments and an open store,
prints its result and returns the exit code; errors are raised as engine errors and reported by
`cli.main` in one line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, BinaryIO

from tqdm import tqdm

from . import diff
from .api import Entry, Store, parse_size, snapshot_spec
from .engine import BLOCK_SIZE, RECYCLE_NAME, CloneState, join_path
from .engine.chunks import data_runs
from .engine.store import split_snapshot_path
from .errors import EngineError, InvalidArgumentError, NotFoundError, ProtectedError

COPY_BLOCK = 2**20  # bytes per read/write in import and export


def human(size: int) -> str:
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if size < 1024 or unit == 'TiB':
            return f'{size:.0f} {unit}' if unit == 'B' else f'{size:.1f} {unit}'
        size /= 1024
    raise AssertionError('unreachable')



def describe(store: Store, entry: Entry, path: str) -> dict[str, Any]:
    """What ls -l, info and --format json show of an entry."""
    clone = None if entry.is_dir else store.clone_state(path)
    info: dict[str, Any] = {
        'path': path, 'name': entry.name, 'id': entry.id,
        'type': 'directory' if entry.is_dir else 'volume', 'owner': entry.owner,
        'status': _status(clone), 'created': entry.created.isoformat(),
        'modified': entry.modified.isoformat()}
    if not entry.is_dir:
        info['length'] = entry.length
        info['allocated'] = store.allocated(path)
    if clone is not None:
        info.update(parent=f'{clone.source_path}@{clone.snapshot}', readonly=clone.readonly,
                    progress=clone.progress)
    if entry.original_path is not None:
        info['original_path'] = entry.original_path
    return info


def _status(clone: CloneState | None) -> str:
    """ok, clone (it reads through to its source snapshot) or flattening."""
    if clone is None:
        return 'ok'
    return 'flattening' if clone.flattening else 'clone'


def _cell(row: dict[str, Any], column: str) -> str:
    value = row.get(column, '-')
    if column in ('length', 'allocated') and column in row:
        return human(value)
    if column == 'status' and 'parent' in row:  # a clone: ro, and how far its flatten is
        return value + ('-ro' if row['readonly'] else '') + \
            (f'({row["progress"]}%)' if value == 'flattening' else '')
    if isinstance(value, bool):
        return 'yes' if value else 'no'
    return str(value)


def _print(args: argparse.Namespace, rows: list[dict[str, Any]], columns: list[str]) -> None:
    if args.format == 'json':
        json.dump(rows, sys.stdout, indent=2)
        print()
        return
    for row in rows:
        print('  '.join(_cell(row, column) for column in columns))


def create(args: argparse.Namespace, store: Store) -> int:
    store.create(args.path, parse_size(args.size))
    return 0


def ls(args: argparse.Namespace, store: Store) -> int:
    path = args.path
    if not store.stat(path).is_dir:
        rows = [describe(store, store.stat(path), path)]
    else:
        rows = [describe(store, entry, join_path(path, entry.name))
                for entry in store.listdir(path)]
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
        yield from _walk_volumes(store, join_path(path, child.name))


def du(args: argparse.Namespace, store: Store) -> int:
    """A row per volume (allocated: what it and its snapshots use) and, after it, a row per
    snapshot (allocated: what that snapshot reads); the total counts the volumes."""
    rows = []
    total = {'path': 'total', 'length': 0, 'allocated': 0}
    for path in _walk_volumes(store, args.path):
        row = {'path': path, 'length': store.stat(path).length,
               'allocated': store.allocated(path)}
        rows.append(row)
        total['length'] += row['length']
        total['allocated'] += row['allocated']
        rows += [{'path': snap.path, 'length': snap.length,
                  'allocated': store.snapshot_allocated(path, snap.name)}
                 for snap in store.snapshots(path)]
    if args.format != 'json':
        rows.append(total)
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


def progress_bar(args: argparse.Namespace, total: int | None, what: str,
                 unit: str = 'B') -> tqdm:
    """A bar on stderr; none with --no-progress or when stderr is not a terminal."""
    percent = {'bar_format': '{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]'}
    return tqdm(total=total, unit=unit, unit_scale=unit == 'B', unit_divisor=1024, desc=what,
                disable=args.no_progress or not sys.stderr.isatty(), file=sys.stderr,
                **(percent if unit == '%' else {}))


def follow(bar: tqdm) -> Callable[[int, int], None]:
    """A progress(done, total) callback that moves the bar."""
    def moved(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)
    return moved


@contextmanager
def _output(dest: str) -> Iterator[BinaryIO]:
    """The file dest ('-': stdout), removed again if the command fails half-way."""
    if dest == '-':
        try:
            yield sys.stdout.buffer
        finally:
            sys.stdout.buffer.flush()
        return
    out = open(dest, 'wb')
    try:
        with out:
            yield out
    except BaseException:
        os.unlink(dest)
        raise


@contextmanager
def _input(source: str) -> Iterator[BinaryIO]:
    """The file source ('-': stdin)."""
    if source == '-':
        yield sys.stdin.buffer
    else:
        with open(source, 'rb') as src:
            yield src


def export(args: argparse.Namespace, store: Store) -> int:
    """A raw image of the volume; into a file, the volume's holes stay holes."""
    to_stdout = args.dest == '-'
    with store.open(args.path) as vol, _output(args.dest) as out:
        size = vol.size
        with progress_bar(args, size, 'export') as bar:
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
    return 0


def import_(args: argparse.Namespace, store: Store) -> int:
    """A raw image into a new volume; zero blocks are not written, so they stay unallocated.
    The length is the image's, rounded up to a multiple of 4 KiB."""
    if args.source == '-' and not args.size:
        raise InvalidArgumentError('importing from stdin needs --size')
    with _input(args.source) as src:
        size = parse_size(args.size) if args.size else os.fstat(src.fileno()).st_size
        length = max(BLOCK_SIZE, -(-size // BLOCK_SIZE) * BLOCK_SIZE)
        store.create(args.path, length)
        with store.open(args.path, 'r+b') as vol, progress_bar(args, size, 'import') as bar:
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
    return 0


# -- snapshots and clones ---------------------------------------------------------------------

def snap_create(args: argparse.Namespace, store: Store) -> int:
    store.snapshot(*snapshot_spec(args.snapshot), protect=args.protect)
    return 0


def snap_ls(args: argparse.Namespace, store: Store) -> int:
    rows = [{'name': snap.name, 'uuid': snap.uuid, 'length': snap.length,
             'allocated': store.snapshot_allocated(args.path, snap.name),
             'protected': snap.protected, 'clones': snap.clones,
             'created': snap.created.isoformat()} for snap in store.snapshots(args.path)]
    _print(args, rows, ['name', 'length', 'allocated', 'protected', 'clones', 'created'])
    return 0


def snap_rm(args: argparse.Namespace, store: Store) -> int:
    """A protected snapshot needs --force (which unprotects it); one with clones is refused."""
    volume, name = snapshot_spec(args.snapshot)
    try:
        store.delete_snapshot(volume, name, unprotect=args.force)
    except ProtectedError:
        raise ProtectedError(f'{args.snapshot} is protected; unprotect it first, or use '
                             '--force') from None
    return 0


def snap_protect(args: argparse.Namespace, store: Store) -> int:
    store.protect(*snapshot_spec(args.snapshot))
    return 0


def snap_unprotect(args: argparse.Namespace, store: Store) -> int:
    store.unprotect(*snapshot_spec(args.snapshot))
    return 0


def snap_rollback(args: argparse.Namespace, store: Store) -> int:
    store.rollback(*snapshot_spec(args.snapshot))
    return 0


def clone(args: argparse.Namespace, store: Store) -> int:
    volume, name = snapshot_spec(args.snapshot)
    store.clone(volume, name, args.dest, readonly=args.readonly)
    return 0


def flatten(args: argparse.Namespace, store: Store) -> int:
    """Flatten in the foreground (the engine copies in a background thread; a bar follows
    Store.flatten_progress). Interrupted, it resumes at the next flatten or mount."""
    with progress_bar(args, 100, 'flatten', unit='%') as bar:
        done = threading.Event()

        def show_progress() -> None:
            try:
                while not done.wait(0.2):
                    bar.update(store.flatten_progress(args.path) - bar.n)
            except EngineError:  # the clone went away meanwhile: flatten says why
                pass

        watcher = threading.Thread(target=show_progress, name='flatten-progress', daemon=True)
        if not bar.disable:
            watcher.start()
        try:
            store.flatten(args.path, wait=True)
        finally:
            done.set()
            if watcher.is_alive():
                watcher.join()
        bar.update(100 - bar.n)
    return 0


def children(args: argparse.Namespace, store: Store) -> int:
    volume, name = split_snapshot_path(args.path)
    names = [snap.name for snap in store.snapshots(volume)] if name is None else [name]
    rows = [{'path': path, 'parent': f'{volume}@{snap}'}
            for snap in names for path in store.children(volume, snap)]
    _print(args, rows, ['path', 'parent'])
    return 0


# -- incremental backups ----------------------------------------------------------------------

def export_diff(args: argparse.Namespace, store: Store) -> int:
    with _output(args.dest) as out, progress_bar(args, None, 'export-diff') as bar:
        diff.export_diff(store, args.snapshot, out, args.from_snap, follow(bar))
    return 0


def import_diff(args: argparse.Namespace, store: Store) -> int:
    with _input(args.source) as src, progress_bar(args, None, 'import-diff') as bar:
        diff.import_diff(store, src, args.path, follow(bar))
    return 0
