"""CBDClient: Curve's `curvefs` Python API, call for call, on a local store.

Every method returns what Curve's returns: 0 or a byte count or a value on success, the negated
Curve code on failure (see `curvefuse.errors.CurveCode`); none raises, except `Listdir`, which
raises RuntimeError("ListDir failed") as Curve's does. Where this differs from Curve on purpose,
the README's compatibility table says so.

Snapshots and clones follow Curve release1.5's local snapshots (its `curve bs` tool commands;
Curve's Python binding has none), a snapshot being named as Curve names it, ``/vol@snap``:

- ``CreateSnapshot(snappath, user)``: 0; the snapshot starts unprotected, as the MDS makes it.
- ``ListSnapshot(filename, user)``: the snapshot names (str), oldest first.
- ``DeleteSnapshot(snappath, user)``: 0; a protected one gives -100, one with clones -15.
- ``ProtectSnapshot`` / ``UnprotectSnapshot(snappath, user)``: 0, idempotent; unprotecting one
  with clones gives -15.
- ``Clone(snappath, dstpath, user, readonly=False)``: 0; the snapshot must be protected (-100).
- ``Flatten(filename, user)``: 0 at once; the copy runs in a background thread.
- ``QueryFlattenStatus(filename, user)``: progress 0-100 (100 for a volume that is no clone).
- ``Children(path, user)``: clone paths (str) of ``/vol@snap``, or of all of ``/vol``'s snapshots.
- ``Rollback(snappath, user)``: 0; the volume must be closed (-15) and have no newer snapshot (-7).

``Open("/vol@snap", user)`` gives a read-only fd (Write answers -32 READONLY, as for a read-only
clone), ``StatFile("/vol@snap", ...)`` the snapshot's FileInfo_t (filetype
INODE_SNAPSHOT_PAGEFILE 4). A clone states filetype INODE_CLONE_PAGEFILE 5 until flattened, and
fileStatus FLATTENING 6 while a flatten is under way. Curve splits at the last "@"; where a volume
of the literal name ``/vol@snap`` exists, Open and StatFile mean that volume (it was there first).

client.conf keys read by `Init` (``key=value`` lines, ``#`` comments, unknown keys ignored, so a
real Curve client.conf with one line added works):

``curvefuse.data_dir``       the store directory; created if missing (default: ``DEFAULT_DATA_DIR``)
``curvefuse.chunk_size``     chunk size in bytes for a store Init creates (default 16 MiB)
``curvefuse.root_password``  root password for a store Init creates (default Curve's)
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from . import DEFAULT_DATA_DIR
from .api import Store, Volume, open_store, snapshot_spec
from .engine import BLOCK_SIZE, DEFAULT_CHUNK_SIZE, DEFAULT_ROOT_PASSWORD
from .engine.store import encoded
from .errors import (AccessError, BadHandleError, CurveCode, EngineError, InvalidArgumentError,
                     NotAlignedError, codes_for)

log = logging.getLogger(__name__)
T = TypeVar('T')

# Curve's CURVE_FILE_* status values and filetypes (curve_type.h); the snapshot and clone
# filetypes and FLATTENING are the proto's (INODE_SNAPSHOT_PAGEFILE, release1.5's
# INODE_CLONE_PAGEFILE and kFileFlattening).
CURVE_FILE_CREATED = 0
CURVE_FILE_DELETING = 1
CURVE_FILE_CLONING = 2
CURVE_FILE_CLONEMETAINSTALLED = 3
CURVE_FILE_CLONED = 4
CURVE_FILE_BEINGCLONED = 5
CURVE_FILE_FLATTENING = 6
CURVE_INODE_DIRECTORY = 0
CURVE_INODE_PAGEFILE = 1
CURVE_INODE_SNAPSHOT_PAGEFILE = 4
CURVE_INODE_CLONE_PAGEFILE = 5


class UserInfo_t:  # noqa: N801 (Curve's name)
    """Who calls: `owner`, and `password` (checked only for root)."""

    def __init__(self, owner: str = '', password: str = ''):
        self.owner = owner
        self.password = password

    def __repr__(self) -> str:
        return f'UserInfo_t(owner={self.owner!r})'


class FileInfo_t:  # noqa: N801 (Curve's name)
    """Filled by `CBDClient.StatFile`. ctime is microseconds since the epoch, as in Curve."""

    def __init__(self) -> None:
        self.id = 0
        self.parentid = 0
        self.filetype = 0
        self.length = 0
        self.ctime = 0
        self.filename = ''
        self.owner = ''
        self.fileStatus = 0
        self.stripeUnit = 0
        self.stripeCount = 0

    def __repr__(self) -> str:
        return f'FileInfo_t(id={self.id}, filename={self.filename!r}, length={self.length})'


def _failure(exc: BaseException) -> int:
    if not isinstance(exc, EngineError):
        log.exception('unexpected error in CBDClient', exc_info=exc)
    return -int(codes_for(exc).curve)


def _returns_code(method: Callable[..., T]) -> Callable[..., T | int]:
    """Run a CBDClient method; any error becomes its negated Curve code, never an exception."""

    @functools.wraps(method)
    def wrapper(self: 'CBDClient', *args: Any, **kwargs: Any) -> T | int:
        if self._store is None:
            return -int(CurveCode.FAILED)  # Curve: no MDS client before Init
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # the contract: never raise out of CBDClient
            return _failure(exc)

    return wrapper


def read_client_conf(path: str | bytes) -> dict[str, str]:
    """Curve's client.conf format: key=value lines, # comments, blank lines."""
    conf: dict[str, str] = {}
    with open(path, encoding='utf-8') as fh:
        for line in fh:
            line = line.split('#', 1)[0].strip()
            if '=' in line:
                key, value = line.split('=', 1)
                conf[key.strip()] = value.strip()
    return conf


class CBDClient:
    """Curve's client object. `Init` first; every other call answers FAILED (-2) before."""

    def __init__(self) -> None:
        self._store: Store | None = None
        self._fds: dict[int, Volume] = {}
        self._next_fd = 0  # Curve's fds start at 0 per client
        self._lock = threading.Lock()

    # -- life cycle -------------------------------------------------------------------------

    def Init(self, confpath: str) -> int:  # noqa: N802
        """Open the store named by confpath's curvefuse.data_dir; 0, or -2 on failure."""
        if self._store is not None:
            return 0
        if not isinstance(confpath, (str, bytes)):
            log.error('CBDClient.Init: the conf path must be a string, not %r', confpath)
            return -int(CurveCode.FAILED)
        try:
            conf = read_client_conf(confpath)
            self._store = open_store(
                conf.get('curvefuse.data_dir', DEFAULT_DATA_DIR), create=True,
                chunk_size=int(conf.get('curvefuse.chunk_size', DEFAULT_CHUNK_SIZE)),
                root_password=conf.get('curvefuse.root_password', DEFAULT_ROOT_PASSWORD))
        except (OSError, ValueError, EngineError) as exc:
            log.error('CBDClient.Init(%r) failed: %s', confpath, exc)
            return -int(CurveCode.FAILED)
        return 0

    def UnInit(self) -> None:  # noqa: N802
        """Close every open fd (flushing it) and the store."""
        if self._store is None:
            return
        with self._lock:
            volumes, self._fds = list(self._fds.values()), {}
        for volume in volumes:
            try:
                volume.close()
            except EngineError as exc:
                log.error('closing %s at UnInit failed: %s', volume.name, exc)
        self._store.close()
        self._store = None

    def _as(self, user: object) -> Store:
        """The store as the given UserInfo_t, checked as Curve's MDS checks it."""
        owner = getattr(user, 'owner', None)
        if not isinstance(owner, str):
            raise InvalidArgumentError('user must be a UserInfo_t with a string owner')
        if not owner:
            raise AccessError('empty owner')
        password = getattr(user, 'password', '')
        return self._store.as_user(owner, password if isinstance(password, str) else '')

    # -- namespace --------------------------------------------------------------------------

    @_returns_code
    def Create(self, filename: str, user: UserInfo_t, size: int) -> int:  # noqa: N802
        self._as(user).create(filename, _int_arg(size, 'size'))
        return 0

    @_returns_code
    def Mkdir(self, dirpath: str, user: UserInfo_t) -> int:  # noqa: N802
        self._as(user).mkdir(dirpath)
        return 0

    @_returns_code
    def StatFile(self, filename: str, user: UserInfo_t, finfo: FileInfo_t) -> int:  # noqa: N802
        if not isinstance(finfo, FileInfo_t):
            raise InvalidArgumentError('finfo must be a FileInfo_t')
        store = self._as(user)
        snapshot = store.snapshot_of(filename)
        if snapshot is not None:
            snap = store.get_snapshot(*snapshot)
            finfo.id, finfo.parentid, finfo.length = snap.id, snap.volume_id, snap.length
            finfo.filetype, finfo.fileStatus = CURVE_INODE_SNAPSHOT_PAGEFILE, CURVE_FILE_CREATED
            finfo.ctime = _microseconds(snap.created)
            finfo.filename, finfo.owner = snap.name, snap.owner
        else:
            entry = store.stat(filename)
            clone = None if entry.is_dir else store.clone_state(filename)
            finfo.id, finfo.parentid, finfo.length = entry.id, entry.parent_id, entry.length
            finfo.filetype = (CURVE_INODE_DIRECTORY if entry.is_dir else
                              CURVE_INODE_PAGEFILE if clone is None else CURVE_INODE_CLONE_PAGEFILE)
            finfo.fileStatus = (CURVE_FILE_FLATTENING if clone is not None and clone.flattening
                                else entry.status)
            finfo.ctime = _microseconds(entry.created)
            finfo.filename, finfo.owner = entry.name, entry.owner
        finfo.stripeUnit = finfo.stripeCount = 0
        return 0

    @_returns_code
    def Extend(self, filename: str, user: UserInfo_t, newsize: int) -> int:  # noqa: N802
        self._as(user).resize(filename, _int_arg(newsize, 'size'))
        return 0

    @_returns_code
    def Unlink(self, filename: str, user: UserInfo_t) -> int:  # noqa: N802
        self._as(user).remove(filename)
        return 0

    @_returns_code
    def Rmdir(self, dirpath: str, user: UserInfo_t) -> int:  # noqa: N802
        # Curve's Rmdir is the same delete as Unlink (a volume goes to the recycle bin).
        self._as(user).remove(dirpath)
        return 0

    @_returns_code
    def DeleteForce(self, filename: str, user: UserInfo_t) -> int:  # noqa: N802
        self._as(user).delete_forever(filename)
        return 0

    @_returns_code
    def Recover(self, filename: str, user: UserInfo_t, fileId: int = 0) -> int:  # noqa: N802,N803
        self._as(user).recover(filename, fileId)
        return 0

    @_returns_code
    def Rename(self, user: UserInfo_t, oldpath: str, newpath: str) -> int:  # noqa: N802
        self._as(user).rename(oldpath, newpath)
        return 0

    @_returns_code
    def ChangeOwner(self, filename: str, newOwner: str, user: UserInfo_t) -> int:  # noqa: N802,N803
        self._as(user).chown(filename, newOwner)
        return 0

    def Listdir(self, dirpath: str, user: UserInfo_t) -> list[bytes]:  # noqa: N802
        """Base names as bytes; raises RuntimeError("ListDir failed") as Curve's does. The
        exception's `code` attribute holds the Curve code."""
        code = self._listdir(dirpath, user)
        if isinstance(code, int):
            error = RuntimeError('ListDir failed')
            error.code = code  # type: ignore[attr-defined]
            raise error
        return code

    @_returns_code
    def _listdir(self, dirpath: str, user: UserInfo_t) -> list[bytes]:
        return [entry.name.encode('utf-8', 'surrogateescape')
                for entry in self._as(user).listdir(dirpath)]

    def GetClusterId(self) -> str:  # noqa: N802
        return '' if self._store is None else self._store.cluster_id

    # -- IO ---------------------------------------------------------------------------------

    def Open(self, filename: str, user: UserInfo_t) -> int:  # noqa: N802
        """An fd >= 0, or a negative code. An empty owner gives -1, as in Curve."""
        if self._store is not None and getattr(user, 'owner', None) == '':
            return -int(CurveCode.EXISTS)
        return self._open(filename, user)

    @_returns_code
    def _open(self, filename: str, user: UserInfo_t) -> int:
        store = self._as(user)
        volume = store.open(filename, 'r+b' if store.snapshot_of(filename) is None else 'rb')
        with self._lock:
            fd, self._next_fd = self._next_fd, self._next_fd + 1
            self._fds[fd] = volume
        return fd

    @_returns_code
    def Close(self, fd: int) -> int:  # noqa: N802
        with self._lock:
            volume = self._fds.pop(fd, None) if _is_int(fd) else None
        if volume is None:
            return -int(CurveCode.FAILED)  # Curve answers an unknown fd here with FAILED
        volume.close()
        return 0

    def _volume(self, fd: object, offset: object, length: object) -> Volume:
        """The open volume behind fd, after Curve's IO checks (an unknown fd also before Init)."""
        # On every Read and Write: type() is not int also refuses bool, in one test each.
        if type(offset) is not int or type(length) is not int or offset < 0 or length < 0:
            raise InvalidArgumentError('offset and length must be non-negative integers')
        volume = self._fds.get(fd) if type(fd) is int else None
        if volume is None:
            raise BadHandleError(f'fd {fd!r} is not open')
        if (offset | length) % BLOCK_SIZE:
            raise NotAlignedError(f'offset {offset} and length {length} must be multiples '
                                  f'of {BLOCK_SIZE}')
        return volume

    def Read(self, fd: int, buf: object, offset: int, length: int) -> bytes | int:  # noqa: N802
        """bytes of exactly length, or a negative code; buf is ignored, as in Curve.

        The error handling of `_returns_code` is written out here: this is the hottest call.
        """
        try:
            return self._volume(fd, offset, length).handle.read(offset, length)
        except Exception as exc:  # the contract: never raise out of CBDClient
            return _failure(exc) if self._store is not None else -int(CurveCode.FAILED)

    @_returns_code
    def Write(self, fd: int, buf: bytes | str, offset: int, length: int) -> int:  # noqa: N802
        """length on success. A str buf is written as UTF-8 (Curve's Python 3 binding would
        raise TypeError); length may not exceed the buffer (Curve would read past it)."""
        volume = self._volume(fd, offset, length)
        data = encoded(buf, 'buf') if isinstance(buf, str) else buf
        try:
            view = memoryview(data).cast('B')
        except TypeError:
            raise InvalidArgumentError('buf must be bytes-like or str') from None
        if length > len(view):
            raise InvalidArgumentError(f'length {length} is more than the {len(view)} bytes '
                                       'of buf')
        return volume.handle.write(offset, view[:length])

    # -- snapshots and clones ---------------------------------------------------------------

    @_returns_code
    def CreateSnapshot(self, snappath: str, user: UserInfo_t) -> int:  # noqa: N802
        self._as(user).snapshot(*snapshot_spec(snappath))
        return 0

    @_returns_code
    def ListSnapshot(self, filename: str, user: UserInfo_t) -> list[str]:  # noqa: N802
        """The volume's snapshot names, oldest first (StatFile("/vol@name") tells more)."""
        return [snap.name for snap in self._as(user).snapshots(filename)]

    @_returns_code
    def DeleteSnapshot(self, snappath: str, user: UserInfo_t) -> int:  # noqa: N802
        self._as(user).delete_snapshot(*snapshot_spec(snappath))
        return 0

    @_returns_code
    def ProtectSnapshot(self, snappath: str, user: UserInfo_t) -> int:  # noqa: N802
        self._as(user).protect(*snapshot_spec(snappath))
        return 0

    @_returns_code
    def UnprotectSnapshot(self, snappath: str, user: UserInfo_t) -> int:  # noqa: N802
        self._as(user).unprotect(*snapshot_spec(snappath))
        return 0

    @_returns_code
    def Clone(self, snappath: str, dstpath: str, user: UserInfo_t,  # noqa: N802
              readonly: bool = False) -> int:
        if type(readonly) is not bool:
            raise InvalidArgumentError('readonly must be True or False')
        volume, name = snapshot_spec(snappath)
        self._as(user).clone(volume, name, dstpath, readonly=readonly)
        return 0

    @_returns_code
    def Flatten(self, filename: str, user: UserInfo_t) -> int:  # noqa: N802
        """Starts the flatten and returns 0 at once, as Curve's; see QueryFlattenStatus."""
        self._as(user).flatten(filename, wait=False)
        return 0

    @_returns_code
    def QueryFlattenStatus(self, filename: str, user: UserInfo_t) -> int:  # noqa: N802
        """Flatten progress 0-100 (100 for a volume that is not, or no longer, a clone)."""
        return self._as(user).flatten_progress(filename)

    @_returns_code
    def Children(self, path: str, user: UserInfo_t) -> list[str]:  # noqa: N802
        """Clone paths of the snapshot "/vol@snap", or of every snapshot of the volume path."""
        store = self._as(user)
        snapshot = store.snapshot_of(path)
        return store.children(path) if snapshot is None else store.children(*snapshot)

    @_returns_code
    def Rollback(self, snappath: str, user: UserInfo_t) -> int:  # noqa: N802
        """The volume gets the snapshot's content and length back (not in Curve)."""
        self._as(user).rollback(*snapshot_spec(snappath))
        return 0


def _microseconds(when: datetime) -> int:
    """Curve's FileInfo_t.ctime unit."""
    return int(when.timestamp() * 1e6)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_arg(value: object, what: str) -> int:
    """Curve's sizes are integers; the Pythonic layer's "10G" strings are not for this door."""
    if not isinstance(value, int):
        raise InvalidArgumentError(f'{what} must be an integer')
    return value


__all__ = ['CBDClient', 'FileInfo_t', 'UserInfo_t', 'read_client_conf']
