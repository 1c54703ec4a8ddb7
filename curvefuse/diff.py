"""Incremental backups, as `rbd export-diff` / `import-diff` do them: a stream of what changed in a
volume between two of its snapshots (or everything, from nothing), and its application to another
volume, checked with SHA-256.

The stream, version 1 (integers big-endian, each record at most `MAX_RECORD` bytes, records in
increasing offset order and not overlapping):

    header   b'CFSDIFF\\n' (8 bytes), version u16 = 1, the to-snapshot's length u64,
             from-snapshot name (u16 byte count + UTF-8; count 0: a full diff, from nothing),
             to-snapshot name (the same way), CRC-32 u32 of the header's bytes before it
    records  b'D', offset u64, length u64, then `length` bytes: the data there
             b'Z', offset u64, length u64: that range reads as zeros
    end      b'E', the SHA-256 of the to-snapshot's whole content (length bytes), then the
             SHA-256 of every byte of the stream before it (which catches a damaged stream)

Applying a diff needs the target volume to be where the diff starts from: a full diff makes a new
volume; an incremental one needs the volume to have the from-snapshot (as rbd requires) as its
newest snapshot, and no write or resize since. A damaged stream, a result whose digest is not the
to-snapshot's, or any error half-way undoes everything (the new volume is destroyed, or the
volume is rolled back to the from-snapshot), so a failed import changes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import BinaryIO

from .api import Snapshot, Store, Volume, snapshot_spec
from .engine import BLOCK_SIZE
from .engine.store import check_snapshot_name
from .errors import BadDiffError, EngineError, ExistsError, InvalidArgumentError, NotFoundError

log = logging.getLogger(__name__)

MAGIC = b'CFSDIFF\n'
VERSION = 1
MAX_RECORD = 2**20  # also how much of each snapshot is read at a time
_HEAD = struct.Struct('>8sHQ')
_NAME_LENGTH = struct.Struct('>H')
_CRC = struct.Struct('>I')
_RECORD = struct.Struct('>cQQ')
DATA, ZEROS, END = b'D', b'Z', b'E'
_ZERO_BLOCK = bytes(BLOCK_SIZE)
_DIGEST_SIZE = hashlib.sha256().digest_size

#: progress(done, total): bytes of the volume covered so far, of its length
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class DiffHeader:
    length: int
    from_snapshot: str | None
    to_snapshot: str


def _find(snapshots: list[Snapshot], volume: str, name: str) -> int:
    for position, snap in enumerate(snapshots):
        if snap.name == name:
            return position
    raise NotFoundError(f'{volume} has no snapshot {name!r}')


def _changes(before: bytes, after: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(DATA or ZEROS, start, end) of the runs of 4 KiB blocks where after differs from before."""
    run: tuple[bytes, int] | None = None
    for pos in range(0, len(after), BLOCK_SIZE):
        block = after[pos:pos + BLOCK_SIZE]
        tag = None if block == before[pos:pos + BLOCK_SIZE] else \
            ZEROS if block == _ZERO_BLOCK[:len(block)] else DATA
        if run is not None and run[0] != tag:
            yield run[0], run[1], pos
            run = None
        if run is None and tag is not None:
            run = (tag, pos)
    if run is not None:
        yield run[0], run[1], len(after)


class _HashingWriter:
    def __init__(self, out: BinaryIO):
        self.out = out
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.sha.update(data)
        self.out.write(data)


def _encode_name(name: str | None) -> bytes:
    raw = b'' if name is None else name.encode()
    return _NAME_LENGTH.pack(len(raw)) + raw


def _encode_header(length: int, from_snapshot: str | None, to_snapshot: str | None) -> bytes:
    """The header without its CRC."""
    return (_HEAD.pack(MAGIC, VERSION, length) + _encode_name(from_snapshot) +
            _encode_name(to_snapshot))


def export_diff(store: Store, spec: str, out: BinaryIO, since: str | None = None,
                progress: Progress | None = None) -> None:
    """Write to `out` how snapshot `spec` ("/vol@snap") differs from the volume's older snapshot
    `since`, or all of it when since is None. Only the chunks written in between are compared
    (`Store.changed_since`); the whole to-snapshot is read for its digest."""
    volume, name = snapshot_spec(spec)
    snapshots = store.snapshots(volume)
    newer = _find(snapshots, volume, name)
    target = snapshots[newer]
    suspects: set[int] | None = None  # the pieces to compare (None: all)
    old_length = target.length  # past it (a grown volume), every piece is compared with zeros
    if since is not None:
        check_snapshot_name(since)
        older = _find(snapshots, volume, since)
        base = snapshots[older]
        if older >= newer:
            raise InvalidArgumentError(f'{since!r} is not older than {name!r}')
        if base.length > target.length:
            raise InvalidArgumentError(f'{volume}@{since} is longer than {spec}')
        old_length = base.length
        suspects = {piece for start, length in store.changed_since(volume, since, name)
                    for piece in range(start // MAX_RECORD,
                                       (start + length - 1) // MAX_RECORD + 1)}
    writer = _HashingWriter(out)
    head = _encode_header(target.length, since, name)
    writer.write(head + _CRC.pack(zlib.crc32(head)))
    content = hashlib.sha256()
    with store.open(spec) as new, \
            (store.open(f'{volume}@{since}') if since else nullcontext()) as old:
        for offset in range(0, target.length, MAX_RECORD):
            after = new.pread(MAX_RECORD, offset)
            content.update(after)
            if suspects is None or offset // MAX_RECORD in suspects or \
                    offset + len(after) > old_length:
                before = old.pread(len(after), offset) if old is not None else b''
                before += bytes(len(after) - len(before))
                for tag, start, end in _changes(before, after):
                    writer.write(_RECORD.pack(tag, offset + start, end - start))
                    if tag == DATA:
                        writer.write(after[start:end])
            if progress is not None:
                progress(offset + len(after), target.length)
    writer.write(END + content.digest())
    out.write(writer.sha.digest())


class _HashingReader:
    def __init__(self, source: BinaryIO):
        self.source = source
        self.sha = hashlib.sha256()

    def read(self, size: int, hashed: bool = True) -> bytes:
        """Exactly size bytes (hashed: counted in the stream's digest)."""
        pieces, missing = [], size
        while missing:
            piece = self.source.read(missing)
            if not piece:
                raise BadDiffError('the diff is truncated')
            pieces.append(piece)
            missing -= len(piece)
        data = b''.join(pieces)
        if hashed:
            self.sha.update(data)
        return data

    def name(self) -> str | None:
        (count,) = _NAME_LENGTH.unpack(self.read(_NAME_LENGTH.size))
        if count == 0:
            return None
        try:
            return self.read(count).decode()
        except UnicodeDecodeError:
            raise BadDiffError('the diff is damaged (a snapshot name is not UTF-8)') from None


def read_header(reader: _HashingReader) -> DiffHeader:
    try:
        magic, version, length = _HEAD.unpack(reader.read(_HEAD.size))
    except BadDiffError:
        raise BadDiffError('not a curvefuse diff (too short)') from None
    if magic != MAGIC:
        raise BadDiffError('not a curvefuse diff (bad magic)')
    if version != VERSION:
        raise BadDiffError(f'a curvefuse diff of version {version}; this one reads {VERSION}')
    from_snapshot = reader.name()
    to_snapshot = reader.name()
    (crc,) = _CRC.unpack(reader.read(_CRC.size))
    if crc != zlib.crc32(_encode_header(length, from_snapshot, to_snapshot)) or \
            to_snapshot is None:
        raise BadDiffError('the diff is damaged (its header)')
    return DiffHeader(length, from_snapshot, to_snapshot)


def import_diff(store: Store, source: BinaryIO, path: str,
                progress: Progress | None = None) -> DiffHeader:
    """Apply a diff stream to the volume at path (made by a full diff), then take the
    to-snapshot there. On any failure the volume is left as it was (see the module doc)."""
    reader = _HashingReader(source)
    header = read_header(reader)
    if header.from_snapshot is None:
        store.create(path, header.length)
        undo = _destroyer(store, path)
    else:
        _check_base(store, path, header)
        undo = partial(store.rollback, path, header.from_snapshot)
    try:
        if store.stat(path).length != header.length:
            store.resize(path, header.length)
        with store.open(path, 'r+b') as vol:
            content_digest = _apply(reader, vol, header.length, progress)
        if _digest(store, path) != content_digest:
            raise BadDiffError(f'{path} does not match the diff\'s {header.to_snapshot!r} after '
                               'applying it: the volume was not what the diff starts from')
        store.snapshot(path, header.to_snapshot)
    except BaseException:
        log.info('import-diff into %s failed; undoing it', path)
        try:
            undo()
        except EngineError as undo_error:  # e.g. the volume is open elsewhere
            log.error('could not undo the import-diff into %s: %s', path, undo_error)
        raise
    return header


def _check_base(store: Store, path: str, header: DiffHeader) -> None:
    """The volume must be exactly the diff's from-snapshot, and may not have the to-snapshot."""
    snapshots = store.snapshots(path)
    base = snapshots[_find(snapshots, path, header.from_snapshot)]
    if base is not snapshots[-1]:
        raise BadDiffError(f'{path}@{header.from_snapshot} is not the newest snapshot of {path}')
    if any(snap.name == header.to_snapshot for snap in snapshots):
        raise ExistsError(f'{path} already has a snapshot {header.to_snapshot!r}')
    if store.stat(path).length != base.length or store.changed_since(path, base.name):
        raise BadDiffError(f'{path} was changed since {base.name!r}; roll it back first')


def _destroyer(store: Store, path: str) -> Callable[[], None]:
    created = store.stat(path).id

    def destroy() -> None:
        store.remove(path)
        for entry in store.listdir('/RecycleBin'):
            if entry.id == created:
                store.delete_forever(f'/RecycleBin/{entry.name}')
    return destroy


def _apply(reader: _HashingReader, vol: Volume, length: int,
           progress: Progress | None) -> bytes:
    """Write the records; returns the to-snapshot's digest once the stream's own checks out."""
    covered = 0
    while True:
        tag = reader.read(1)
        if tag == END:
            content_digest = reader.read(_DIGEST_SIZE)
            if reader.read(_DIGEST_SIZE, hashed=False) != reader.sha.digest():
                raise BadDiffError('the diff is damaged (its SHA-256 does not match)')
            if reader.source.read(1):
                raise BadDiffError('the diff is damaged (bytes after its end)')
            break
        _tag, offset, size = _RECORD.unpack(tag + reader.read(_RECORD.size - 1))
        if tag not in (DATA, ZEROS) or size > MAX_RECORD or offset < covered or \
                offset + size > length:
            raise BadDiffError(f'the diff is damaged (a bad record at offset {offset})')
        vol.pwrite(reader.read(size) if tag == DATA else bytes(size), offset)
        covered = offset + size
        if progress is not None:
            progress(covered, length)
    if progress is not None:
        progress(length, length)
    return content_digest


def _digest(store: Store, path: str) -> bytes:
    sha = hashlib.sha256()
    with store.open(path) as vol:
        for offset in range(0, vol.size, MAX_RECORD):
            sha.update(vol.pread(MAX_RECORD, offset))
    return sha.digest()
