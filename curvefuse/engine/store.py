"""Engine: one store, opened once per process, with Curve's namespace rules.

Every public method is synchronous and thread-safe. Paths are Curve paths: absolute, ``/``-separated,
no trailing ``/``, no empty, ``.`` or ``..`` component, no NUL, components of at most 255 bytes.

`user` is who asks. ``None`` means a trusted local caller (the mount, the CLI) and skips owner checks;
``"root"`` is Curve's superuser (the door has already checked the root password with
`authenticate`); any other name may touch only its own entries, as Curve's MDS checks them:
every directory on the way (``/`` excepted) and the target must be owned by that user.
Ownership is a convention enforced at the doors, not a security boundary: whoever can read
DATA_DIR can read every volume.
"""

from __future__ import annotations

import atexit
import hmac
import logging
import os
import threading
import time
import json
import uuid
from dataclasses import dataclass, replace
from typing import Any

import lmdb

from ..errors import (AccessError, BadHandleError, BadLengthError, BusyError, ExistsError,
                      ExtentUnitError, FormatError, HasSnapshotsError, InvalidArgumentError,
                      IsDirectoryError, NameTooLongError, NotDirectoryError, NotEmptyError,
                      NotFoundError, NotProtectedError, NotSupportedError, ProtectedError,
                      ReadOnlyError, ShrinkError, StorageError)
from .chunks import ChunkStore, data_runs
from .meta import (FIRST_USER_ID, FORMAT_VERSION, KIND_DIRECTORY, KIND_VOLUME, RECYCLE_ID,
                   ROOT_ID, U64, MetaStore, Node, decode_name, encode_name, map_key)
from .opens import OpenRegistry
from .volumes import DataPath, Resolution, process_alive

log = logging.getLogger(__name__)

ROOT_USER = 'root'
DEFAULT_ROOT_PASSWORD = 'root_password'  # Curve's mds.conf default
RECYCLE_NAME = 'RecycleBin'
DEFAULT_CHUNK_SIZE = 16 * 2**20  # Curve's; fewer fsyncs per flush than 4 MiB (scripts/bench)
BLOCK_SIZE = 4096
MAX_VOLUME_LENGTH = 2**50  # 1 PiB
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
MAX_XATTR_VALUE = 65536  # Linux's XATTR_SIZE_MAX
STATUS_CREATED = 0
_COPY_PIECE = 2**20  # flatten reads its source this much at a time
_NO_WORKER = (0, 0)  # the worker of a flatten nobody runs: pid 0 is never a process


def encoded(text: str, what: str) -> bytes:
    """text as stored (UTF-8; bytes that are not UTF-8 ride through surrogateescape); a string
    that cannot be encoded at all (a lone surrogate) is bad input, not a crash."""
    try:
        return text.encode('utf-8', 'surrogateescape')
    except UnicodeEncodeError:
        raise InvalidArgumentError(f'{what} is not valid text: {text!r}') from None


def split_path(path: object) -> list[str]:
    """The components of a valid Curve path; InvalidArgumentError for anything else."""
    if not isinstance(path, str):
        raise InvalidArgumentError(f'path must be a string, not {type(path).__name__}')
    if not path.startswith('/'):
        raise InvalidArgumentError(f'path must be absolute: {path!r}')
    if '\0' in path:
        raise InvalidArgumentError('path contains a NUL byte')
    if len(encoded(path, 'path')) > MAX_PATH_BYTES:
        raise NameTooLongError(f'path longer than {MAX_PATH_BYTES} bytes')
    if path == '/':
        return []
    parts = path[1:].split('/')
    for part in parts:
        check_name(part, path)
    return parts


def join_path(directory: str, name: str) -> str:
    """The path of `name` inside directory ("/" included)."""
    return directory.rstrip('/') + '/' + name


def check_name(name: str, context: str | None = None) -> None:
    where = f' in {context!r}' if context else ''
    if name in ('', '.', '..'):
        raise InvalidArgumentError(f'empty, "." or ".." component{where}')
    if '/' in name or '\0' in name:
        raise InvalidArgumentError(f'name {name!r} contains "/" or NUL')
    if len(encoded(name, 'name')) > MAX_NAME_BYTES:
        raise NameTooLongError(f'name longer than {MAX_NAME_BYTES} bytes{where}')


def check_snapshot_name(name: object) -> None:
    """A snapshot name is a path component without "@" (Curve splits "file@snap" at the last
    "@")."""
    if not isinstance(name, str):
        raise InvalidArgumentError(f'snapshot name must be a string, not {type(name).__name__}')
    check_name(name)
    if '@' in name:
        raise InvalidArgumentError(f'snapshot name {name!r} contains "@"')


def split_snapshot_path(path: str) -> tuple[str, str | None]:
    """Curve's "/vol@snap" convention: (volume path, snapshot name), or (path, None) when the
    last component has no "@"."""
    if not isinstance(path, str):
        return path, None
    head, _slash, last = path.rpartition('/')
    if '@' not in last:
        return path, None
    volume, _at, name = path.rpartition('@')
    return volume, name


def check_user(user: object) -> None:
    if user is None:
        return
    if not isinstance(user, str):
        raise InvalidArgumentError(f'user must be a string, not {type(user).__name__}')
    if not user:
        raise AccessError('empty user name')
    if '\0' in user or len(encoded(user, 'user name')) > MAX_NAME_BYTES:
        raise InvalidArgumentError('user name contains NUL or is longer than 255 bytes')


def check_length(length: object, aligned: bool = True) -> int:
    """A valid volume length: an int in [0, 1 PiB]; with aligned, a positive multiple of 4 KiB."""
    if not isinstance(length, int) or isinstance(length, bool):
        raise InvalidArgumentError(f'length must be an integer, not {type(length).__name__}')
    if length < 0 or length > MAX_VOLUME_LENGTH:
        raise BadLengthError(f'length {length} outside [0, {MAX_VOLUME_LENGTH}]')
    if aligned and (length == 0 or length % BLOCK_SIZE):
        raise BadLengthError(f'length {length} is not a positive multiple of {BLOCK_SIZE}')
    return length


def _privileged(user: str | None) -> bool:
    return user is None or user == ROOT_USER


def _new_owner(owner: str | None, user: str | None) -> str:
    """Who owns a new entry: the given owner, else the user asking, else root."""
    owner = owner if owner is not None else (user or ROOT_USER)
    check_user(owner)
    return owner


def _check_owner(node: Node, user: str | None) -> None:
    if _privileged(user):
        return
    if node.id == ROOT_ID or node.owner != user:
        raise AccessError(f'{node.name or "/"} is not owned by {user}')


def _xattr_key(node_id: int, name: str) -> bytes:
    return U64.pack(node_id) + name.encode('utf-8', 'surrogateescape')


def _snapshot_key(vol: int, name: str) -> bytes:
    return U64.pack(vol) + encode_name(name)


def _read_only_clone(node: Node) -> bool:
    return bool(node.extra.get('clone', {}).get('readonly'))


@dataclass(frozen=True)
class SnapshotInfo:
    """A named snapshot: the volume's content as of sequence `seq`."""

    id: int  # from the node id counter, so the mount can give it an inode of its own
    uuid: str
    vol_id: int
    name: str
    seq: int
    length: int
    created_ns: int
    protected: bool
    children: tuple[int, ...]  # clones made from it
    owner: str

    def encode(self) -> bytes:
        return json.dumps({'id': self.id, 'uuid': self.uuid, 'seq': self.seq,
                           'length': self.length, 'created_ns': self.created_ns,
                           'protected': self.protected, 'children': list(self.children)},
                          separators=(',', ':')).encode()

    @classmethod
    def decode(cls, node: Node, name: str, raw: bytes) -> 'SnapshotInfo':
        fields = json.loads(bytes(raw))
        return cls(fields['id'], fields['uuid'], node.id, name, fields['seq'], fields['length'],
                   fields['created_ns'], fields['protected'], tuple(fields['children']),
                   node.owner)


@dataclass(frozen=True)
class CloneState:
    """A clone that still reads from its source."""

    source_path: str
    snapshot: str
    readonly: bool
    flattening: bool  # a flatten was started and has not finished
    progress: int  # 0-100


@dataclass(frozen=True)
class _Resolved:
    parent: Node
    name: str
    node: Node | None


class Engine:
    """The facade every door uses. Get one with `Engine.open`; `close` when done."""

    _registry: dict[tuple[int, str], 'Engine'] = {}
    _registry_lock = threading.Lock()
    _atexit_registered = False

    def __init__(self, data_dir: str, create: bool, chunk_size: int, root_password: str):
        self.data_dir = data_dir
        meta_dir = os.path.join(data_dir, 'meta')
        chunk_dir = os.path.join(data_dir, 'chunks')
        if create:
            os.makedirs(meta_dir, exist_ok=True)
            ChunkStore.create_layout(chunk_dir)
        elif not os.path.isdir(meta_dir):
            raise FormatError(f'{data_dir} is not a curvefuse store')
        self.meta = MetaStore(meta_dir, create=create)
        try:
            if create:
                config = self.meta.write(
                    lambda txn: self._initialize(txn, chunk_size, root_password))
            else:
                with self.meta.read() as txn:
                    config = self._read_config(txn)
        except Exception:
            self.meta.close()
            raise
        self.chunk_size = int(config['chunk_size'])
        self.cluster_id = config['cluster_id']
        self._root_password = config['root_password']
        self.chunks = ChunkStore(chunk_dir)
        self.opens = OpenRegistry(os.path.join(data_dir, 'opens.lock'))
        self.data = DataPath(self.meta, self.chunks, self.chunk_size)
        self._users = 0
        self._flatten_lock = threading.Lock()
        self._flatteners: dict[int, tuple[threading.Thread, threading.Event]] = {}

    # -- lifecycle ------------------------------------------------------------------------

    @classmethod
    def open(cls, data_dir: str, create: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE,
             root_password: str = DEFAULT_ROOT_PASSWORD) -> 'Engine':
        """The process's engine for data_dir (LMDB allows one environment per process).

        With create, a missing store is made with the given chunk size and root password; an
        existing store keeps its own settings.
        """
        if chunk_size <= 0 or chunk_size % BLOCK_SIZE or chunk_size & (chunk_size - 1):
            raise InvalidArgumentError('chunk size must be a power of two, at least 4 KiB')
        real = os.path.realpath(data_dir)
        key = (os.getpid(), real)
        with cls._registry_lock:
            engine = cls._registry.get(key)
            if engine is None:
                engine = cls(real, create, chunk_size, root_password)
                if not cls._atexit_registered:
                    atexit.register(cls._close_all_at_exit)
                    cls._atexit_registered = True
                cls._registry[key] = engine
            engine._users += 1
            return engine

    @classmethod
    def _close_all_at_exit(cls) -> None:
        """A script that never closed its store still gets its writes flushed (Curve's writes
        are durable when Write returns; scripts rely on that) and its reservations dropped."""
        for (pid, _path), engine in list(cls._registry.items()):
            if pid == os.getpid():
                engine._users = 1
                try:
                    engine.close()
                except Exception:
                    log.exception('closing %s at exit failed', engine.data_dir)

    def close(self) -> None:
        """Give back this reference; the last one flushes everything and closes the store."""
        with self._registry_lock:
            self._users -= 1
            if self._users > 0:
                return
            self._registry.pop((os.getpid(), self.data_dir), None)
        try:
            self._stop_flatteners()
            self.data.flush_all()
            self.data.drop_reservations()
        finally:
            self.chunks.close()
            self.meta.close()

    def _initialize(self, txn: lmdb.Transaction, chunk_size: int,
                    root_password: str) -> dict[str, str]:
        if self.meta.get_config(txn, 'format') is not None:
            return self._read_config(txn)
        now = time.time_ns()
        for node_id, name, parent in ((ROOT_ID, '', ROOT_ID), (RECYCLE_ID, RECYCLE_NAME, ROOT_ID)):
            self.meta.put_node(txn, Node(node_id, KIND_DIRECTORY, STATUS_CREATED, parent, 0, 1,
                                         now, now, now, name=name, owner=ROOT_USER))
        self.meta.link(txn, ROOT_ID, RECYCLE_NAME, RECYCLE_ID)
        counters = self.meta.db['counters']
        txn.put(b'node', U64.pack(FIRST_USER_ID), db=counters)
        txn.put(b'chunk', U64.pack(1), db=counters)  # 0 is never a chunk id
        for key, value in (('chunk_size', str(chunk_size)), ('cluster_id', str(uuid.uuid4())),
                           ('root_password', root_password), ('format', str(FORMAT_VERSION))):
            self.meta.put_config(txn, key, value)
        log.info('created store %s (chunk size %d)', self.data_dir, chunk_size)
        return self._read_config(txn)

    def _read_config(self, txn: lmdb.Transaction) -> dict[str, str]:
        found = self.meta.get_config(txn, 'format')
        if found is None:
            raise FormatError(f'{self.data_dir} is not a curvefuse store (no format version)')
        if found != str(FORMAT_VERSION):
            raise FormatError(f'{self.data_dir} has store format {found}; this curvefuse '
                              f'reads format {FORMAT_VERSION}')
        return {key: self.meta.get_config(txn, key)
                for key in ('chunk_size', 'cluster_id', 'root_password')}

    def authenticate(self, owner: object, password: object) -> None:
        """Curve's rule: root must give the store's root password; others' passwords are unused."""
        check_user(owner)
        if owner is None:
            raise AccessError('no user given')
        if owner == ROOT_USER:
            given = password if isinstance(password, str) else ''
            try:
                right = hmac.compare_digest(given.encode(), self._root_password.encode())
            except UnicodeEncodeError:
                right = False
            if not right:
                raise AccessError('wrong root password')

    # -- resolution -----------------------------------------------------------------------

    def _node(self, txn: lmdb.Transaction, node_id: int) -> Node:
        node = self.meta.get_node(txn, node_id)
        if node is None:
            raise NotFoundError(f'node {node_id} does not exist')
        return node

    def _resolve(self, txn: lmdb.Transaction, path: object, user: str | None) -> _Resolved:
        """Walk to path's parent, checking each directory on the way as Curve does."""
        check_user(user)
        parts = split_path(path)
        root = self._node(txn, ROOT_ID)
        if not parts:
            return _Resolved(root, '', root)
        current = root
        for name in parts[:-1]:
            child_id = self.meta.lookup(txn, current.id, name)
            if child_id is None:
                raise NotFoundError(f'{path}: no such directory {name!r}')
            current = self._node(txn, child_id)
            if not current.is_dir:
                raise NotDirectoryError(f'{path}: {name!r} is not a directory')
            _check_owner(current, user)
        child_id = self.meta.lookup(txn, current.id, parts[-1])
        return _Resolved(current, parts[-1],
                         None if child_id is None else self._node(txn, child_id))

    def _existing(self, txn: lmdb.Transaction, path: object, user: str | None) -> Node:
        found = self._resolve(txn, path, user)
        if found.node is None:
            raise NotFoundError(f'{path}: no such file or directory')
        _check_owner(found.node, user)
        return found.node

    def _touch(self, txn: lmdb.Transaction, node: Node, now: int) -> None:
        node.mtime_ns = node.ctime_ns = now
        self.meta.put_node(txn, node)

    def path_of(self, node_id: int) -> str:
        """The current path of a node (for messages and FileInfo)."""
        with self.meta.read() as txn:
            parts = []
            node = self._node(txn, node_id)
            while node.id != ROOT_ID:
                parts.append(node.name)
                node = self._node(txn, node.parent)
        return '/' + '/'.join(reversed(parts))

    # -- reading the namespace ----------------------------------------------------------

    def _visible(self, node: Node) -> Node:
        """The node as this process sees it: grown by its unflushed writes."""
        if not node.is_dir:
            node.length = max(node.length, self.data.pending_length(node.id))
        return node

    def stat(self, path: str, user: str | None = None) -> Node:
        with self.meta.read() as txn:
            return self._visible(self._existing(txn, path, user))

    def listdir(self, path: str, user: str | None = None) -> list[Node]:
        with self.meta.read() as txn:
            node = self._existing(txn, path, user)
            if not node.is_dir:
                raise NotDirectoryError(f'{path} is a volume, not a directory')
            return [self._visible(self._node(txn, child))
                    for _name, child in self.meta.entries(txn, node.id)]

    def node(self, node_id: int) -> Node:
        """A node by id (the mount's inode numbers are ids), with no owner checks."""
        with self.meta.read() as txn:
            return self._visible(self._node(txn, node_id))

    def child(self, parent_id: int, name: str) -> Node:
        check_name(name)
        with self.meta.read() as txn:
            child_id = self.meta.lookup(txn, parent_id, name)
            if child_id is None:
                raise NotFoundError(f'no entry {name!r} in directory {parent_id}')
            return self._visible(self._node(txn, child_id))

    def dir_entries(self, dir_id: int) -> list[Node]:
        """What a directory holds, by id (the mount's readdir); not `children`, which lists the
        clones of a volume's snapshots."""
        with self.meta.read() as txn:
            if not self._node(txn, dir_id).is_dir:
                raise NotDirectoryError(f'node {dir_id} is not a directory')
            return [self._visible(self._node(txn, child))
                    for _name, child in self.meta.entries(txn, dir_id)]

    # -- extended attributes (stored for the mount's user.* names) -------------------------

    def get_xattr(self, node_id: int, name: str) -> bytes | None:
        with self.meta.read() as txn:
            return txn.get(_xattr_key(node_id, name), db=self.meta.db['xattrs'])

    def list_xattrs(self, node_id: int) -> list[str]:
        prefix = U64.pack(node_id)
        with self.meta.read() as txn:
            cur = txn.cursor(db=self.meta.db['xattrs'])
            names = []
            if cur.set_range(prefix):
                for key in cur.iternext(values=False):
                    if not key.startswith(prefix):
                        break
                    names.append(key[len(prefix):].decode('utf-8', 'surrogateescape'))
            return names

    def set_xattr(self, node_id: int, name: str, value: bytes) -> None:
        if len(encoded(name, 'attribute name')) > MAX_NAME_BYTES:
            raise NameTooLongError('attribute name longer than 255 bytes')
        if len(value) > MAX_XATTR_VALUE:
            raise InvalidArgumentError(f'attribute value larger than {MAX_XATTR_VALUE} bytes')

        def put(txn: lmdb.Transaction) -> None:
            node = self._node(txn, node_id)
            txn.put(_xattr_key(node_id, name), bytes(value), db=self.meta.db['xattrs'])
            node.ctime_ns = time.time_ns()
            self.meta.put_node(txn, node)

        self.meta.write(put)

    def remove_xattr(self, node_id: int, name: str) -> bool:
        """Whether there was such an attribute."""
        def delete(txn: lmdb.Transaction) -> bool:
            self._node(txn, node_id)
            return txn.delete(_xattr_key(node_id, name), db=self.meta.db['xattrs'])

        return self.meta.write(delete)

    # -- changing the namespace -----------------------------------------------------------

    def _new_entry(self, path: str, user: str | None, kind: int, length: int,
                   owner: str | None, posix: dict[str, int] | None = None) -> Node:
        owner = _new_owner(owner, user)
        return self.meta.write(
            lambda txn: self._add_node(txn, path, user, kind, length, owner, dict(posix or {})))

    def _add_node(self, txn: lmdb.Transaction, path: str, user: str | None, kind: int,
                  length: int, owner: str, extra: dict[str, Any]) -> Node:
        """Make and link a new node at path, which must be free (inside a write)."""
        found = self._resolve(txn, path, user)
        if found.node is not None:
            raise ExistsError(f'{path} exists')
        if found.parent.id == RECYCLE_ID:
            raise NotSupportedError('nothing can be created inside /RecycleBin')
        now = time.time_ns()
        node = Node(self.meta.next_id(txn, 'node'), kind, STATUS_CREATED, found.parent.id,
                    length, 1, now, now, now, name=found.name, owner=owner, extra=extra)
        self.meta.put_node(txn, node)
        self.meta.link(txn, found.parent.id, found.name, node.id)
        self._touch(txn, found.parent, now)
        return node

    def mkdir(self, path: str, user: str | None = None, owner: str | None = None,
              posix: dict[str, int] | None = None) -> Node:
        """A new directory; `posix` may hold the mount's mode, uid and gid for it."""
        return self._new_entry(path, user, KIND_DIRECTORY, 0, owner, posix)

    def create_volume(self, path: str, length: int, user: str | None = None,
                      owner: str | None = None, aligned: bool = True,
                      posix: dict[str, int] | None = None) -> Node:
        """A new thin volume. `aligned` asks for the client doors' rule (see `check_length`)."""
        return self._new_entry(path, user, KIND_VOLUME, check_length(length, aligned), owner,
                               posix)

    def set_attributes(self, node_id: int, posix: dict[str, int] | None = None,
                       mtime_ns: int | None = None) -> Node:
        """Change the mount's mode/uid/gid of a node, or its modification time."""
        def change(txn: lmdb.Transaction) -> Node:
            node = self._node(txn, node_id)
            node.extra.update(posix or {})
            node.ctime_ns = time.time_ns()
            if mtime_ns is not None:
                node.mtime_ns = mtime_ns
            self.meta.put_node(txn, node)
            return node

        if mtime_ns is not None:
            # cp -p sets the time after writing: the next flush must not put "now" back.
            self.data.forget_write_time(node_id)
        return self._visible(self.meta.write(change))

    def _ensure_can_change(self, node: Node) -> None:
        """Curve's CheckFileCanChange for a volume: refused while any door has it open or a
        live process flattens it."""
        if node.is_dir:
            return
        if self.opens.is_open(node.id):
            raise BusyError(f'{node.name} is open')
        progress = node.extra.get('clone', {}).get('flatten')
        if progress is not None and process_alive(*progress['worker']):
            raise BusyError(f'{node.name} is being flattened')

    def _ensure_no_snapshots(self, txn: lmdb.Transaction, node: Node) -> None:
        """Curve refuses to delete, rename or re-own a volume that has snapshots."""
        if not node.is_dir:
            names = [snap.name for snap in self._snapshots_of(txn, node)]
            if names:
                raise HasSnapshotsError(f'{node.name} has snapshots: {", ".join(names)}')

    def _recycle(self, txn: lmdb.Transaction, node: Node, original_path: str, now: int) -> None:
        """Move a volume into /RecycleBin as "<name>-<id>", remembering where it was."""
        suffix = f'-{node.id}'
        base = node.name
        while len(encoded(base, 'name')) > MAX_NAME_BYTES - len(suffix):
            base = base[:-1]  # whole characters (or escaped bytes), never half of one
        self.meta.unlink(txn, node.parent, node.name)
        node.parent, node.name = RECYCLE_ID, base + suffix
        node.extra.update(original_path=original_path, deleted_ns=now)
        node.ctime_ns = now
        self.meta.link(txn, RECYCLE_ID, node.name, node.id)
        self.meta.put_node(txn, node)

    def remove(self, path: str, user: str | None = None, check_open: bool = True) -> None:
        """Curve's Unlink (and Rmdir): an empty directory goes at once, a volume into the
        recycle bin; a volume already in the recycle bin is destroyed.

        check_open=False lets an open volume go to the recycle bin (POSIX unlink, for the
        mount); destroying one stays refused while it is open.
        """
        def remove(txn: lmdb.Transaction) -> tuple[int, list[int]] | None:
            node = self._existing(txn, path, user)
            now = time.time_ns()
            if node.id in (ROOT_ID, RECYCLE_ID):
                raise InvalidArgumentError(f'{path} cannot be removed')
            parent = self._node(txn, node.parent)
            if node.is_dir:
                if self.meta.has_entries(txn, node.id):
                    raise NotEmptyError(f'{path} is not empty')
                self._forget_node(txn, node)
                self._touch(txn, parent, now)
                return None
            self._ensure_no_snapshots(txn, node)
            if check_open or node.parent == RECYCLE_ID:
                self._ensure_can_change(node)
            if node.parent == RECYCLE_ID:
                return self._destroy_meta(txn, node)
            self._recycle(txn, node, path, now)
            self._touch(txn, parent, now)
            return None

        destroyed = self.meta.write(remove)
        if destroyed is not None:
            self._destroy_chunks(destroyed)

    def delete_force(self, path: str, user: str | None = None) -> None:
        """Destroy a volume in the recycle bin and free its space (Curve's DeleteForce)."""
        def delete(txn: lmdb.Transaction) -> tuple[int, list[int]]:
            node = self._existing(txn, path, user)
            if node.parent != RECYCLE_ID or node.is_dir:
                raise NotSupportedError(f'{path}: only volumes in /RecycleBin can be force-deleted')
            self._ensure_can_change(node)
            return self._destroy_meta(txn, node)

        self._destroy_chunks(self.meta.write(delete))

    def _destroy_meta(self, txn: lmdb.Transaction, node: Node) -> tuple[int, list[int]]:
        """Drop a volume's node, name and chunk mappings in one transaction, so a crash leaves at
        most unreferenced chunk files (leaks fsck frees); returns the volume id and the chunk ids
        whose files go after the commit."""
        chunk_ids = [chunk_id for _idx, _seq, chunk_id, _bits
                     in self.meta.volume_chunks(txn, node.id) if chunk_id]
        self.meta.delete_prefix(txn, 'chunkmap', U64.pack(node.id))
        if 'clone' in node.extra:
            self._forget_child(txn, node.extra['clone'], node.id)
        self._forget_node(txn, node)
        self._touch(txn, self._node(txn, node.parent), time.time_ns())
        return node.id, chunk_ids

    def _forget_node(self, txn: lmdb.Transaction, node: Node) -> None:
        self.meta.unlink(txn, node.parent, node.name)
        txn.delete(U64.pack(node.id), db=self.meta.db['nodes'])
        self.meta.delete_prefix(txn, 'xattrs', U64.pack(node.id))

    def _destroy_chunks(self, destroyed: tuple[int, list[int]]) -> None:
        vol, chunk_ids = destroyed
        with self.data.flush_lock:
            chunk_ids = chunk_ids + self.data.forget_volume(vol)
        self.data.discard_chunks(chunk_ids)
        log.info('destroyed volume %d (%d chunks freed)', vol, len(chunk_ids))

    def purge_recycle_bin(self, user: str | None = None,
                          deleted_before_ns: int | None = None) -> int:
        """Destroy recycled volumes (all, or those deleted before a time); how many went."""
        count = 0
        for node in self.listdir('/' + RECYCLE_NAME, user):
            if deleted_before_ns is None or node.extra.get('deleted_ns', 0) < deleted_before_ns:
                self.delete_force(f'/{RECYCLE_NAME}/{node.name}', user)
                count += 1
        return count

    def recover(self, path: str, user: str | None = None, file_id: int = 0) -> Node:
        """Curve's Recover: the recycled volume with file_id, else the newest one deleted from
        path, back at path."""
        if not isinstance(file_id, int) or isinstance(file_id, bool) or file_id < 0:
            raise InvalidArgumentError('file id must be a non-negative integer')

        def recover(txn: lmdb.Transaction) -> Node:
            target = self._resolve(txn, path, user)
            recycled = [self._node(txn, child) for _n, child in self.meta.entries(txn, RECYCLE_ID)]
            chosen = next((n for n in recycled if file_id and n.id == file_id), None)
            if chosen is None:
                matching = [n for n in recycled if n.extra.get('original_path') == path]
                if not matching:
                    raise NotFoundError(f'nothing deleted from {path} is in the recycle bin')
                chosen = max(matching, key=lambda n: n.extra.get('deleted_ns', 0))
            _check_owner(chosen, user)
            if target.node is not None:
                raise ExistsError(f'{path} exists')
            if target.parent.id == RECYCLE_ID:
                raise NotSupportedError('cannot recover into /RecycleBin')
            self._move(txn, chosen, target.parent, target.name)
            return chosen

        return self.meta.write(recover)

    def _move(self, txn: lmdb.Transaction, node: Node, parent: Node, name: str) -> None:
        now = time.time_ns()
        old_parent = self._node(txn, node.parent)
        self.meta.unlink(txn, node.parent, node.name)
        self._touch(txn, old_parent, now)
        if parent.id == old_parent.id:
            parent = old_parent
        node.parent, node.name, node.ctime_ns = parent.id, name, now
        for key in ('original_path', 'deleted_ns'):
            node.extra.pop(key, None)
        self.meta.link(txn, parent.id, name, node.id)
        self.meta.put_node(txn, node)
        self._touch(txn, parent, now)

    def rename(self, old: str, new: str, user: str | None = None, check_open: bool = True,
               replace: bool = True, posix: bool = False) -> None:
        """Curve's Rename: across directories; over an existing volume, which goes to the
        recycle bin. Directories may be renamed too (Curve refuses; see the README).
        check_open=False allows renaming open volumes; replace=False refuses an existing
        target (RENAME_NOREPLACE); posix=True follows rename(2) for directory targets (an empty
        one is replaced, ENOTEMPTY, EISDIR, ENOTDIR) where Curve answers EXISTS."""
        old_parts, new_parts = split_path(old), split_path(new)
        if not old_parts or not new_parts:
            raise InvalidArgumentError('/ cannot be renamed')
        shorter = min(len(old_parts), len(new_parts))
        if old_parts != new_parts and old_parts[:shorter] == new_parts[:shorter]:
            raise InvalidArgumentError(f'{old} and {new}: one contains the other')
        if old_parts == new_parts:
            raise ExistsError(f'{old} and {new} are the same')

        def rename(txn: lmdb.Transaction) -> None:
            node = self._existing(txn, old, user)
            if node.id == RECYCLE_ID:
                raise InvalidArgumentError('/RecycleBin cannot be renamed')
            self._ensure_no_snapshots(txn, node)
            if check_open:
                self._ensure_can_change(node)
            target = self._resolve(txn, new, user)
            if target.parent.id == RECYCLE_ID:
                raise NotSupportedError('remove a volume to put it in /RecycleBin')
            if target.node is not None:
                if not replace or not posix and (target.node.is_dir or node.is_dir):
                    raise ExistsError(f'{new} exists')
                _check_owner(target.node, user)
                if target.node.is_dir:
                    self._replace_directory(txn, node, target.node, new)
                elif node.is_dir:
                    raise NotDirectoryError(f'{new} is a volume, {old} a directory')
                else:
                    self._ensure_no_snapshots(txn, target.node)
                    if check_open:
                        self._ensure_can_change(target.node)
                    self._recycle(txn, target.node, new, time.time_ns())
            self._move(txn, node, target.parent, target.name)

        self.meta.write(rename)

    def _replace_directory(self, txn: lmdb.Transaction, node: Node, target: Node,
                           path: str) -> None:
        """rename(2) onto a directory: only a directory onto an empty one."""
        if not node.is_dir:
            raise IsDirectoryError(f'{path} is a directory')
        if self.meta.has_entries(txn, target.id):
            raise NotEmptyError(f'{path} is not empty')
        self._forget_node(txn, target)

    def resize(self, path: str, length: int, user: str | None = None, aligned: bool = True,
               allow_shrink: bool = False) -> Node:
        """Grow a volume (Curve's Extend); shrink only with allow_shrink (the data past the new
        end is gone for good)."""
        check_length(length, aligned=False)
        node = self.stat(path, user)
        if node.is_dir:
            raise IsDirectoryError(f'{path} is a directory')
        if _read_only_clone(node):
            raise ReadOnlyError(f'{path} is a read-only clone')
        if length < node.length:
            if not allow_shrink:
                raise ShrinkError(f'{path}: {length} is smaller than {node.length}')
            return self._shrink(node, length)
        if aligned and (length - node.length) % BLOCK_SIZE:
            raise ExtentUnitError(f'growth by {length - node.length} is not a multiple '
                                  f'of {BLOCK_SIZE}')

        def grow(txn: lmdb.Transaction) -> Node:
            current = self._node(txn, node.id)
            if length > current.length:
                current.length = length
                self._touch(txn, current, time.time_ns())
            return current

        return self._visible(self.meta.write(grow))

    def _shrink(self, node: Node, length: int) -> Node:
        """With no snapshot only the live version reads the chunk map, so every entry past the
        new end goes. The tail of the last chunk is zeroed first (growing again must not bring
        old bytes back): truncated where the chunk is the live version's own, else written with
        zeros (copy-on-write where an older chunk shows through)."""
        vol, size = node.id, self.chunk_size
        if 'clone' in node.extra:
            raise NotSupportedError(f'{node.name} is a clone; flatten it before shrinking')
        with self.meta.read() as txn:
            self._ensure_no_snapshots(txn, node)
        keep = -(-length // size)  # chunks that still hold data
        with self.data.flush_lock:
            self.data.flush(vol)
            tail = length % size
            if tail:
                with self.meta.read() as txn:
                    head = self._node(txn, vol)
                    own = txn.get(map_key(vol, length // size, head.seq),
                                  db=self.meta.db['chunkmap'])
                if own is not None and len(own) == U64.size and U64.unpack(own)[0]:
                    self.chunks.truncate(U64.unpack(own)[0], tail)
                else:
                    self.data.write(vol, length, bytes(min(size, head.length - length + tail)
                                                       - tail))
                    self.data.flush(vol)

            def shrink(txn: lmdb.Transaction) -> tuple[Node, list[int]]:
                current = self._node(txn, vol)
                self._ensure_no_snapshots(txn, current)
                gone = [(idx, seq, chunk_id) for idx, seq, chunk_id, _bits
                        in self.meta.volume_chunks(txn, vol) if idx >= keep]
                for idx, seq, _chunk_id in gone:
                    txn.delete(map_key(vol, idx, seq), db=self.meta.db['chunkmap'])
                current.length = length
                self._touch(txn, current, time.time_ns())
                return current, [chunk_id for *_key, chunk_id in gone if chunk_id]

            shrunk, freed = self.meta.write(shrink)
            self.data.discard_chunks(freed)
        return shrunk

    def chown(self, path: str, new_owner: str, user: str | None = None) -> None:
        """Curve's ChangeOwner: root only; an open volume or a non-empty directory refuses."""
        if not _privileged(user):
            check_user(user)
            raise AccessError('only root may change owners')
        check_user(new_owner)
        if new_owner is None:
            raise InvalidArgumentError('no new owner given')

        def chown(txn: lmdb.Transaction) -> None:
            node = self._existing(txn, path, user)
            if node.owner == new_owner:
                return
            if node.id in (ROOT_ID, RECYCLE_ID):
                raise InvalidArgumentError(f'{path} always belongs to root')
            if node.is_dir and self.meta.has_entries(txn, node.id):
                raise NotEmptyError(f'{path} is not empty')
            self._ensure_no_snapshots(txn, node)
            self._ensure_can_change(node)
            node.owner = new_owner
            self._touch(txn, node, time.time_ns())

        self.meta.write(chown)

    # -- snapshots --------------------------------------------------------------------------

    def _volume(self, txn: lmdb.Transaction, path: str, user: str | None) -> Node:
        node = self._existing(txn, path, user)
        if node.is_dir:
            raise IsDirectoryError(f'{path} is a directory')
        return node

    def _snapshot_record(self, txn: lmdb.Transaction, node: Node, name: str,
                         path: str) -> SnapshotInfo:
        raw = txn.get(_snapshot_key(node.id, name), db=self.meta.db['snapshots'])
        if raw is None:
            raise NotFoundError(f'{path} has no snapshot {name!r}')
        return SnapshotInfo.decode(node, name, raw)

    def _put_snapshot(self, txn: lmdb.Transaction, snap: SnapshotInfo) -> None:
        txn.put(_snapshot_key(snap.vol_id, snap.name), snap.encode(), db=self.meta.db['snapshots'])

    def _snapshots_of(self, txn: lmdb.Transaction, node: Node) -> list[SnapshotInfo]:
        prefix = U64.pack(node.id)
        cur = txn.cursor(db=self.meta.db['snapshots'])
        found = []
        if cur.set_range(prefix):
            for key, value in cur:
                if not key.startswith(prefix):
                    break
                found.append(SnapshotInfo.decode(node, decode_name(key[len(prefix):]), value))
        return sorted(found, key=lambda snap: snap.seq)

    def create_snapshot(self, path: str, name: str, user: str | None = None,
                        protect: bool = False) -> SnapshotInfo:
        """Freeze the volume's current content as `name`: O(1), no data is copied.

        This process's unflushed writes are flushed first and its writes to the volume wait
        for the commit; other processes' writes are crash-consistent (see volumes.py).
        """
        check_snapshot_name(name)
        node = self.stat(path, user)
        if node.is_dir:
            raise IsDirectoryError(f'{path} is a directory')
        with self.data.flush_lock, self.data.frozen(node.id):
            self.data.flush(node.id)

            def snapshot(txn: lmdb.Transaction) -> SnapshotInfo:
                current = self._volume(txn, path, user)
                if current.id != node.id:
                    raise NotFoundError(f'{path} was replaced meanwhile')
                if current.parent == RECYCLE_ID:
                    raise NotSupportedError('volumes in /RecycleBin cannot be snapshotted')
                if txn.get(_snapshot_key(current.id, name), db=self.meta.db['snapshots']):
                    raise ExistsError(f'{path} already has a snapshot {name!r}')
                now = time.time_ns()
                snap = SnapshotInfo(self.meta.next_id(txn, 'node'), str(uuid.uuid4()), current.id,
                                    name, current.seq, current.length, now, protect, (),
                                    current.owner)
                self._put_snapshot(txn, snap)
                current.seq += 1
                current.ctime_ns = now
                self.meta.put_node(txn, current)
                return snap

            snap = self.meta.write(snapshot)
        log.info('snapshot %s@%s taken (seq %d)', path, name, snap.seq)
        return snap

    def list_snapshots(self, path: str, user: str | None = None) -> list[SnapshotInfo]:
        """A volume's snapshots, oldest first."""
        with self.meta.read() as txn:
            return self._snapshots_of(txn, self._volume(txn, path, user))

    def get_snapshot(self, path: str, name: str, user: str | None = None) -> SnapshotInfo:
        check_snapshot_name(name)
        with self.meta.read() as txn:
            return self._snapshot_record(txn, self._volume(txn, path, user), name, path)

    def snapshot_by_id(self, vol_id: int, name: str) -> SnapshotInfo:
        """A snapshot by volume id and name, with no owner checks (the mount)."""
        with self.meta.read() as txn:
            return self._snapshot_record(txn, self._node(txn, vol_id), name, f'volume {vol_id}')

    def snapshots_by_id(self, vol_id: int) -> list[SnapshotInfo]:
        with self.meta.read() as txn:
            return self._snapshots_of(txn, self._node(txn, vol_id))

    def _set_protection(self, path: str, name: str, user: str | None, protect: bool) -> None:
        check_snapshot_name(name)

        def change(txn: lmdb.Transaction) -> None:
            snap = self._snapshot_record(txn, self._volume(txn, path, user), name, path)
            if not protect and snap.children:
                raise BusyError(f'{path}@{name} has clones: {self._paths(txn, snap.children)}')
            if snap.protected != protect:
                self._put_snapshot(txn, replace(snap, protected=protect))

        self.meta.write(change)

    def protect_snapshot(self, path: str, name: str, user: str | None = None) -> None:
        """Allow clones of the snapshot and forbid deleting it (idempotent)."""
        self._set_protection(path, name, user, True)

    def unprotect_snapshot(self, path: str, name: str, user: str | None = None) -> None:
        """Undo protect; refused while clones depend on the snapshot (idempotent)."""
        self._set_protection(path, name, user, False)

    def _paths(self, txn: lmdb.Transaction, node_ids: tuple[int, ...]) -> str:
        names = []
        for node_id in node_ids:
            node = self.meta.get_node(txn, node_id)
            names.append(f'node {node_id}' if node is None else self._path_in(txn, node))
        return ', '.join(names)

    def _path_in(self, txn: lmdb.Transaction, node: Node) -> str:
        parts = []
        while node.id != ROOT_ID:
            parts.append(node.name)
            node = self._node(txn, node.parent)
        return '/' + '/'.join(reversed(parts))

    def delete_snapshot(self, path: str, name: str, user: str | None = None,
                        unprotect: bool = False) -> None:
        """Delete a snapshot and free the chunks no other version reads. A protected snapshot
        is refused unless `unprotect` (as Curve's REST server does), and with clones always."""
        check_snapshot_name(name)

        def delete(txn: lmdb.Transaction) -> list[int]:
            node = self._volume(txn, path, user)
            snap = self._snapshot_record(txn, node, name, path)
            if snap.children:
                raise BusyError(f'{path}@{name} has clones: {self._paths(txn, snap.children)}')
            if snap.protected and not unprotect:
                raise ProtectedError(f'{path}@{name} is protected; unprotect it first')
            if self.opens.is_open(snap.id):
                raise BusyError(f'{path}@{name} is open')
            txn.delete(_snapshot_key(node.id, name), db=self.meta.db['snapshots'])
            versions = [other.seq for other in self._snapshots_of(txn, node)] + [node.seq]
            return self._collect_garbage(txn, node, versions)

        with self.data.flush_lock:
            freed = self.meta.write(delete)
            self.data.discard_chunks(freed)
        log.info('snapshot %s@%s deleted, %d chunks freed', path, name, len(freed))

    def _collect_garbage(self, txn: lmdb.Transaction, node: Node, versions: list[int]) -> list[int]:
        """Drop the entries no remaining version reads (every version at or above an entry has
        newer entries covering its blocks); returns their chunk ids."""
        full = self.data.full_bits
        entries: dict[int, list[tuple[int, int, int]]] = {}
        for idx, seq, chunk_id, bits in self.meta.volume_chunks(txn, node.id):
            entries.setdefault(idx, []).append((seq, chunk_id, full if bits is None else bits))
        freed = []
        chunkmap = self.meta.db['chunkmap']
        for idx, chain in entries.items():  # newest first
            for position, (seq, chunk_id, bits) in enumerate(chain):
                readers = [v for v in versions if v >= seq]
                if any(bits & ~self._covering(chain[:position], v) for v in readers):
                    continue
                txn.delete(map_key(node.id, idx, seq), db=chunkmap)
                if chunk_id:
                    freed.append(chunk_id)
        return freed

    @staticmethod
    def _covering(newer: list[tuple[int, int, int]], version: int) -> int:
        covered = 0
        for seq, _chunk_id, bits in newer:
            if seq <= version:
                covered |= bits
        return covered

    def rollback(self, path: str, name: str, user: str | None = None) -> Node:
        """Make the volume's content the snapshot's again (its length too). Refused while the
        volume is open or newer snapshots exist (delete those first, as `zfs rollback` without
        -r asks)."""
        check_snapshot_name(name)
        node = self.stat(path, user)
        if node.is_dir:
            raise IsDirectoryError(f'{path} is a directory')

        def rollback(txn: lmdb.Transaction) -> tuple[Node, list[int]]:
            current = self._volume(txn, path, user)
            snap = self._snapshot_record(txn, current, name, path)
            newer = [other.name for other in self._snapshots_of(txn, current)
                     if other.seq > snap.seq]
            if newer:
                raise HasSnapshotsError(f'{path} has snapshots newer than {name!r}: '
                                        f'{", ".join(newer)}; delete them first')
            self._ensure_can_change(current)
            freed = []
            for idx, seq, chunk_id, _bits in list(self.meta.volume_chunks(txn, current.id)):
                if seq > snap.seq:
                    txn.delete(map_key(current.id, idx, seq), db=self.meta.db['chunkmap'])
                    freed.append(chunk_id)
            current.length = snap.length
            self._touch(txn, current, time.time_ns())
            return current, [chunk_id for chunk_id in freed if chunk_id]

        with self.data.flush_lock:
            rolled, freed = self.meta.write(rollback)
            # Only once the rollback is committed: a refused one must not lose unflushed writes.
            self.data.discard_chunks(freed + self.data.forget_volume(node.id))
        log.info('%s rolled back to %s', path, name)
        return rolled

    def open_snapshot(self, path: str, name: str, user: str | None = None) -> VolumeHandle:
        """A read-only handle on the volume as of the snapshot."""
        snap = self.get_snapshot(path, name, user)
        return VolumeHandle(self, snap.vol_id, False, snap)

    def snapshot_allocated_bytes(self, vol_id: int, seq: int) -> int:
        """Disk used by the chunk files of the volume that the version `seq` reads."""
        return self.data.allocated_bytes(vol_id, seq)

    def changed_chunks(self, path: str, since: str, until: str | None = None,
                       user: str | None = None) -> list[int]:
        """Indexes of the chunks written after snapshot `since` and up to snapshot `until` (or
        to the volume's committed present): every chunk whose content differs between the two
        is among them (rewriting the same bytes counts too). For incremental backups."""
        check_snapshot_name(since)
        if until is not None:
            check_snapshot_name(until)
        with self.meta.read() as txn:
            node = self._volume(txn, path, user)
            after = self._snapshot_record(txn, node, since, path).seq
            upto = (node.seq if until is None
                    else self._snapshot_record(txn, node, until, path).seq)
            return sorted({idx for idx, seq, _chunk_id, _bits
                           in self.meta.volume_chunks(txn, node.id) if after < seq <= upto})

    def children(self, path: str, name: str | None = None, user: str | None = None) -> list[str]:
        """Paths of the clones made from one snapshot of the volume, or from any of them."""
        if name is not None:
            check_snapshot_name(name)
        with self.meta.read() as txn:
            node = self._volume(txn, path, user)
            snaps = ([self._snapshot_record(txn, node, name, path)] if name is not None
                     else self._snapshots_of(txn, node))
            return [self._path_in(txn, self._node(txn, child))
                    for snap in snaps for child in snap.children]

    # -- clones -----------------------------------------------------------------------------

    def clone(self, path: str, name: str, dest: str, user: str | None = None,
              readonly: bool = False, owner: str | None = None,
              posix: dict[str, int] | None = None) -> Node:
        """A new volume at dest with the snapshot's content, at once: it reads its source for
        every block it has not written (until `flatten`). The snapshot must be protected."""
        check_snapshot_name(name)
        owner = _new_owner(owner, user)

        def clone(txn: lmdb.Transaction) -> Node:
            source = self._volume(txn, path, user)
            snap = self._snapshot_record(txn, source, name, path)
            if not snap.protected:
                raise NotProtectedError(f'{path}@{name} is not protected; protect it to clone')
            extra: dict[str, Any] = dict(posix or {})
            extra['clone'] = {'vol': source.id, 'seq': snap.seq, 'length': snap.length,
                              'snapshot': name, 'readonly': bool(readonly)}
            node = self._add_node(txn, dest, user, KIND_VOLUME, snap.length, owner, extra)
            self._put_snapshot(txn, replace(snap, children=snap.children + (node.id,)))
            return node

        node = self.meta.write(clone)
        log.info('cloned %s@%s to %s', path, name, dest)
        return node

    def clone_state(self, node_id: int) -> CloneState | None:
        """How a clone stands (None: not a clone, or flattened)."""
        with self.meta.read() as txn:
            node = self._node(txn, node_id)
            clone = node.extra.get('clone')
            if clone is None:
                return None
            source = self.meta.get_node(txn, clone['vol'])
            source_path = '?' if source is None else self._path_in(txn, source)
        return CloneState(source_path, clone['snapshot'], clone['readonly'],
                          'flatten' in clone, self._progress(clone))

    def _progress(self, clone: dict[str, Any]) -> int:
        total = -(-clone['length'] // self.chunk_size)
        done = clone.get('flatten', {}).get('next', 0)
        return 100 if total == 0 else min(100, done * 100 // total)

    def flatten_progress(self, path: str, user: str | None = None) -> int:
        """0-100; 100 for a volume that is not (or no longer) a clone."""
        node = self.stat(path, user)
        if node.is_dir:
            raise IsDirectoryError(f'{path} is a directory')
        clone = node.extra.get('clone')
        return 100 if clone is None else self._progress(clone)

    def flatten(self, path: str, user: str | None = None, wait: bool = False) -> None:
        """Copy what the clone still reads from its source into its own chunks, in a background
        thread of this process; with wait, until done. Progress is kept in the store after each
        chunk, so a flatten interrupted by a crash resumes where it was (the next `flatten`
        call, or a starting mount or REST server, takes it up). A volume that is not a clone is
        already flat."""
        node = self.stat(path, user)
        if node.is_dir:
            raise IsDirectoryError(f'{path} is a directory')
        self._start_flatten(node.id)
        if wait:
            self._wait_for_flatten(node.id)

    def _start_flatten(self, vol: int) -> None:
        with self._flatten_lock:
            running = self._flatteners.get(vol)
            if running is not None and running[0].is_alive():
                return

            def claim(txn: lmdb.Transaction) -> bool:
                node = self._node(txn, vol)
                clone = node.extra.get('clone')
                if clone is None:
                    return False
                progress = clone.get('flatten')
                if progress is not None and process_alive(*progress['worker']) and \
                        tuple(progress['worker']) != self.data.identity:
                    return False  # another live process is at it
                clone['flatten'] = {'next': progress['next'] if progress else 0,
                                    'worker': list(self.data.identity)}
                self.meta.put_node(txn, node)
                return True

            if not self.meta.write(claim):
                return
            stop = threading.Event()
            thread = threading.Thread(target=self._flatten_worker, args=(vol, stop),
                                      name=f'flatten-{vol}', daemon=True)
            self._flatteners[vol] = (thread, stop)
            thread.start()

    def _wait_for_flatten(self, vol: int) -> None:
        while True:
            with self._flatten_lock:
                running = self._flatteners.get(vol)
            if running is not None and running[0].is_alive():
                running[0].join(0.2)
                continue
            node = self.node(vol)
            clone = node.extra.get('clone')
            if clone is None:
                return
            if running is not None and 'flatten' in clone and \
                    tuple(clone['flatten']['worker']) == self.data.identity:
                raise StorageError(f'flattening volume {vol} stopped; see the log')
            self._start_flatten(vol)
            time.sleep(0.2)

    def _flatten_worker(self, vol: int, stop: threading.Event) -> None:
        try:
            while not stop.is_set() and self._flatten_step(vol):
                pass
        except Exception:
            log.exception('flattening volume %d failed; a later flatten resumes it', vol)

    def _flatten_step(self, vol: int) -> bool:
        """Copy one chunk of the source into the clone's base (seq 0); False when done."""
        with self.meta.read() as txn:
            node = self.meta.get_node(txn, vol)
            clone = None if node is None else node.extra.get('clone')
            if clone is None or 'flatten' not in clone:
                return False
            idx = clone['flatten']['next']
            own = next(self.meta.versions(txn, vol, idx, 1), None)
        size = self.chunk_size
        if idx * size >= clone['length']:
            self.meta.write(lambda txn: self._finish_flatten(txn, vol))
            log.info('volume %d flattened', vol)
            return False
        chunk_id = None
        if own is None or own[2] is not None:  # unless the clone's oldest version hides it
            source = self.data.resolve(clone['vol'], idx, clone['seq'])
            chunk_id = self._copy_chunk(source, min(size, clone['length'] - idx * size))

        def advance(txn: lmdb.Transaction) -> bool:
            current = self.meta.get_node(txn, vol)
            state = None if current is None else current.extra.get('clone', {}).get('flatten')
            if state is None or state['next'] != idx:
                return False
            if chunk_id is not None:
                txn.put(map_key(vol, idx, 0), U64.pack(chunk_id), db=self.meta.db['chunkmap'])
            state['next'] = idx + 1
            self.meta.put_node(txn, current)
            return True

        if not self.meta.write(advance) and chunk_id is not None:
            self.data.discard_chunks([chunk_id])
            return False
        return True

    def _copy_chunk(self, source: Resolution, length: int) -> int | None:
        """A new chunk file holding `length` bytes of a chunk version (sparse where zero),
        durable; None if all of it is zeros."""
        if source is None:
            return None
        chunk_id, entry = self.data.new_chunk()
        wrote = False
        try:
            for at in range(0, length, _COPY_PIECE):
                data = self.data.read_resolved(source, at, min(_COPY_PIECE, length - at))
                if data.count(0) != len(data):
                    for start, end in data_runs(data, BLOCK_SIZE):  # holes stay holes
                        self.chunks.pwrite(entry, data[start:end], at + start)
                    wrote = True
        finally:
            self.chunks.release(entry)
        if not wrote:
            self.chunks.remove(chunk_id)
            return None
        self.chunks.fsync(chunk_id)
        self.chunks.fsync_dirs_of({chunk_id})
        return chunk_id

    def _finish_flatten(self, txn: lmdb.Transaction, vol: int) -> None:
        node = self.meta.get_node(txn, vol)
        if node is None or 'clone' not in node.extra:
            return
        clone = node.extra.pop('clone')
        self.meta.put_node(txn, node)
        self._forget_child(txn, clone, vol)

    def _forget_child(self, txn: lmdb.Transaction, clone: dict[str, Any], vol: int) -> None:
        source = self.meta.get_node(txn, clone['vol'])
        if source is None:
            return
        raw = txn.get(_snapshot_key(source.id, clone['snapshot']), db=self.meta.db['snapshots'])
        if raw is not None:
            snap = SnapshotInfo.decode(source, clone['snapshot'], raw)
            self._put_snapshot(txn, replace(snap, children=tuple(c for c in snap.children
                                                                 if c != vol)))

    def resume_flattens(self) -> int:
        """Take up flattens whose process died (the mount and the REST server call this as
        they start); how many."""
        with self.meta.read() as txn:
            waiting = []
            for key, value in self.meta.iter_db(txn, 'nodes'):
                node = Node.decode(U64.unpack(key)[0], value)
                progress = node.extra.get('clone', {}).get('flatten')
                if progress is not None and not process_alive(*progress['worker']):
                    waiting.append(node.id)
        for vol in waiting:
            log.info('resuming the flatten of volume %d', vol)
            self._start_flatten(vol)
        return len(waiting)

    def _stop_flatteners(self) -> None:
        """Stop this process's flatten threads and give their flattens up (the worker becomes
        `_NO_WORKER`), so the clones are not busy while this process lives on and any process's
        next `flatten` takes them up."""
        with self._flatten_lock:
            running = dict(self._flatteners)
            self._flatteners.clear()
        for _thread, stop in running.values():
            stop.set()
        for thread, _stop in running.values():
            thread.join()
        if running:
            self.meta.write(lambda txn: self._give_up_flattens(txn, list(running)))

    def _give_up_flattens(self, txn: lmdb.Transaction, vols: list[int]) -> None:
        for vol in vols:
            node = self.meta.get_node(txn, vol)
            progress = None if node is None else node.extra.get('clone', {}).get('flatten')
            if progress is not None and tuple(progress['worker']) == self.data.identity:
                progress['worker'] = list(_NO_WORKER)
                self.meta.put_node(txn, node)

    # -- volumes ----------------------------------------------------------------------------

    def open_volume(self, path: str, user: str | None = None,
                    writable: bool = True) -> 'VolumeHandle':
        with self.meta.read() as txn:
            node = self._existing(txn, path, user)
        return self._handle(node, writable)

    def open_node(self, node_id: int, writable: bool = True) -> 'VolumeHandle':
        """A handle on a volume by id, with no owner checks (the mount)."""
        return self._handle(self.node(node_id), writable)

    def _handle(self, node: Node, writable: bool) -> 'VolumeHandle':
        """A read-only clone opens, but its handle refuses writes (Curve's READONLY)."""
        if node.is_dir:
            raise IsDirectoryError(f'{node.name} is a directory')
        return VolumeHandle(self, node.id, writable and not _read_only_clone(node))

    def allocated_bytes(self, path: str, user: str | None = None) -> int:
        return self.data.allocated_bytes(self.stat(path, user).id)


class VolumeHandle:
    """An open volume, or an open snapshot of one (read-only, `snapshot` set): byte-addressed IO
    with no alignment rule (the doors add theirs)."""

    def __init__(self, engine: Engine, vol_id: int, writable: bool,
                 snapshot: SnapshotInfo | None = None):
        self.engine = engine
        self.vol_id = vol_id
        self.writable = writable and snapshot is None
        self.snapshot = snapshot
        self._seq = None if snapshot is None else snapshot.seq
        self._lock_fd: int | None = engine.opens.hold(vol_id if snapshot is None else snapshot.id)

    @property
    def closed(self) -> bool:
        return self._lock_fd is None

    def _check_open(self) -> None:
        if self._lock_fd is None:
            raise BadHandleError('the volume handle is closed')

    def length(self) -> int:
        self._check_open()
        if self.snapshot is not None:
            return self.snapshot.length
        return self.engine.node(self.vol_id).length

    def read(self, offset: int, length: int, clamp: bool = False, nowait: bool = False,
             readahead: int = 0) -> bytes:
        """Bytes at offset; past the end is an error, or with clamp a short read. nowait and
        readahead: see `DataPath.read`."""
        self._check_open()
        _check_io_args(offset, length)
        if self._seq is None:
            return self.engine.data.read(self.vol_id, offset, length, clamp, nowait, readahead)
        return self.engine.data.read(self.vol_id, offset, length, clamp, nowait, readahead,
                                     self._seq, self.snapshot.length)

    def write(self, offset: int, data: bytes | bytearray | memoryview, grow: bool = False,
              nowait: bool = False) -> int:
        """Write all of data; past the end is an error, or with grow the volume grows.
        nowait: see `DataPath.write`."""
        self._check_open()
        if not self.writable:
            raise ReadOnlyError('a snapshot is read-only' if self.snapshot is not None else
                                'the volume was opened read-only or is a read-only clone')
        _check_io_args(offset, len(data))
        return self.engine.data.write(self.vol_id, offset, data, grow, nowait)

    def flush(self) -> None:
        """Durable and visible to other processes when this returns."""
        self._check_open()
        if self.snapshot is None:
            self.engine.data.flush(self.vol_id)

    def close(self) -> None:
        if self._lock_fd is None:
            return
        try:
            if self.snapshot is None:
                self.engine.data.flush(self.vol_id)
        finally:
            self.engine.opens.release(self._lock_fd)
            self._lock_fd = None


def _check_io_args(offset: object, length: object) -> None:
    # type() is not int also refuses bool; this runs on every IO, so keep it to one test.
    if type(offset) is not int or type(length) is not int or offset < 0 or length < 0:
        raise InvalidArgumentError(f'offset and length must be non-negative integers, not '
                                   f'{offset!r} and {length!r}')
