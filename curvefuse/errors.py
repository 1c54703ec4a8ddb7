"""The engine's error types and the one table that turns them into codes.

The engine raises the typed errors below and knows nothing else of codes. Each front door asks
`codes_for(exc)` for what to tell its user: an errno (the mount), a Curve client code (CBDClient,
returned negated) and a SnapshotCloneService code (REST). No other module decides a code.
"""

from __future__ import annotations

import errno as _errno
import enum
from dataclasses import dataclass


class CurveCode(enum.IntEnum):
    """Curve's LIBCURVE_ERROR values; CBDClient returns them negated."""

    OK = 0
    EXISTS = 1
    FAILED = 2
    DISABLEIO = 3
    AUTHFAIL = 4
    DELETING = 5
    NOTEXIST = 6
    UNDER_SNAPSHOT = 7
    NOT_UNDERSNAPSHOT = 8
    DELETE_ERROR = 9
    NOT_ALLOCATE = 10
    NOT_SUPPORT = 11
    NOT_EMPTY = 12
    NO_SHRINK_BIGGER_FILE = 13
    SESSION_NOTEXISTS = 14
    FILE_OCCUPIED = 15
    PARAM_ERROR = 16
    INTERNAL_ERROR = 17
    CRC_ERROR = 18
    INVALID_REQUEST = 19
    DISK_FAIL = 20
    NO_SPACE = 21
    NOT_ALIGNED = 22
    BAD_FD = 23
    LENGTH_NOT_SUPPORT = 24
    SESSION_NOT_EXIST = 25
    STATUS_NOT_MATCH = 26
    DELETE_BEING_CLONED = 27
    CLIENT_NOT_SUPPORT_SNAPSHOT = 28
    SNAPSTHO_FROZEN = 29  # sic, as Curve spells it
    RETRY_UNTIL_SUCCESS = 30
    EPOCH_TOO_OLD = 31
    READONLY = 32
    UNKNOWN = 100


class RestCode(enum.IntEnum):
    """SnapshotCloneService codes (sent as strings in the JSON `Code` field)."""

    SUCCESS = 0
    INTERNAL = -1
    SERVER_INIT_FAIL = -2
    SERVER_START_FAIL = -3
    SERVICE_IS_STOP = -4
    BAD_REQUEST = -5
    TASK_EXIST = -6
    INVALID_USER = -7
    FILE_NOT_EXIST = -8
    FILE_STATUS_INVALID = -9
    CHUNK_SIZE_NOT_ALIGNED = -10
    FILE_NAME_NOT_MATCH = -11
    CANNOT_DELETE_UNFINISHED = -12
    CANNOT_CREATE_WHEN_ERROR = -13
    CANNOT_CANCEL_FINISHED = -14
    INVALID_SNAPSHOT = -15
    DELETE_WHEN_USING = -16
    CANNOT_CLEAN_UNFINISHED = -17
    SNAPSHOT_COUNT_LIMIT = -18
    FILE_EXIST = -19
    TASK_IS_FULL = -20
    NOT_SUPPORT = -21
    UNDER_SNAPSHOT = -22
    FILE_OCCUPIED = -23
    INVALID_ARGUMENT = -24

    @property
    def message(self) -> str:
        """The `Message` text Curve's snapshotcloneserver sends with this code."""
        return _REST_MESSAGES[self]

    @property
    def http_status(self) -> int:
        """200 for success, 500 for the server's own failures, 400 for everything the request
        caused. Curve's table answers 500 for all but -5; curvefuse keeps 500 for faults of its
        own, as HTTP means it (clients and proxies retry a 500), and the codes are Curve's."""
        if self is RestCode.SUCCESS:
            return 200
        return 500 if self in _SERVER_FAULTS else 400


_SERVER_FAULTS = frozenset({RestCode.INTERNAL, RestCode.SERVER_INIT_FAIL,
                            RestCode.SERVER_START_FAIL, RestCode.SERVICE_IS_STOP,
                            RestCode.TASK_IS_FULL})

#: Curve's `code2Msg` (src/common/snapshotclone/snapshotclone_define.cpp), spelling included:
#: clients may compare these strings.
_REST_MESSAGES = {
    RestCode.SUCCESS: 'Exec success.',
    RestCode.INTERNAL: 'Internal error.',
    RestCode.SERVER_INIT_FAIL: 'Server init fail.',
    RestCode.SERVER_START_FAIL: 'Server start fail.',
    RestCode.SERVICE_IS_STOP: 'Sevice is stop.',
    RestCode.BAD_REQUEST: 'BadRequest:"Invalid request."',
    RestCode.TASK_EXIST: 'Task already exist.',
    RestCode.INVALID_USER: 'Invalid user.',
    RestCode.FILE_NOT_EXIST: 'File not exist.',
    RestCode.FILE_STATUS_INVALID: 'File status invalid.',
    RestCode.CHUNK_SIZE_NOT_ALIGNED: 'Chunk size not aligned.',
    RestCode.FILE_NAME_NOT_MATCH: 'FileName not match.',
    RestCode.CANNOT_DELETE_UNFINISHED: 'Cannot delete unfinished.',
    RestCode.CANNOT_CREATE_WHEN_ERROR: 'Cannot create when has error.',
    RestCode.CANNOT_CANCEL_FINISHED: 'Cannot cancel finished.',
    RestCode.INVALID_SNAPSHOT: 'Invalid snapshot.',
    RestCode.DELETE_WHEN_USING: 'Cannot delete when using.',
    RestCode.CANNOT_CLEAN_UNFINISHED: 'Cannot clean task unfinished.',
    RestCode.SNAPSHOT_COUNT_LIMIT: 'Snapshot count reach the limit.',
    RestCode.FILE_EXIST: 'File exist.',
    RestCode.TASK_IS_FULL: 'Task is full.',
    RestCode.NOT_SUPPORT: 'Not support.',
    RestCode.UNDER_SNAPSHOT: 'File is under snapshot.',
    RestCode.FILE_OCCUPIED: 'File is occupied.',
    RestCode.INVALID_ARGUMENT: 'Invalid argument.',
}


class EngineError(Exception):
    """Base of every error the engine raises on purpose; the message is for humans."""

    @property
    def code(self) -> int:
        """What Curve's client would return for this error (a negative int)."""
        return -int(codes_for(self).curve)

    @property
    def errno(self) -> int:
        """What the mount answers for this error."""
        return codes_for(self).errno


class NotFoundError(EngineError):
    """A path, component, id or snapshot does not exist."""


class ExistsError(EngineError):
    """The target name is taken."""


class NotDirectoryError(EngineError):
    """A path component that must be a directory is a volume."""


class IsDirectoryError(EngineError):
    """A volume operation was asked of a directory."""


class NotEmptyError(EngineError):
    """A directory still has entries."""


class AccessError(EngineError):
    """The user does not own the entry, or the root password is wrong."""


class BusyError(EngineError):
    """The entry is in use (open, or being flattened) and cannot change now."""


class HasSnapshotsError(EngineError):
    """The volume has snapshots, so it cannot be deleted, renamed or re-owned."""


class ProtectedError(EngineError):
    """The snapshot is protected; unprotect it before deleting it."""


class NotProtectedError(EngineError):
    """Clones are made only from protected snapshots (Curve's rule)."""


class InvalidArgumentError(EngineError):
    """A malformed path, name, offset, size or type."""


class NameTooLongError(InvalidArgumentError):
    """A path component is longer than 255 bytes."""


class BadDiffError(InvalidArgumentError):
    """An incremental-backup stream (import-diff) that is not one, is damaged, or does not fit
    the volume it is applied to."""


class BadLengthError(EngineError):
    """A volume length outside the store's rule (alignment or maximum)."""


class ExtentUnitError(BadLengthError):
    """A growth that is not a whole number of blocks (Curve: kExtentUnitError)."""


class ShrinkError(EngineError):
    """A volume may not be made smaller through this door."""


class NotAlignedError(EngineError):
    """Offset or length of a client IO is not a multiple of the block size."""


class OutOfRangeError(EngineError):
    """IO reaches past the end of the volume."""


class NoSpaceError(EngineError):
    """The disk under the store is full."""


class ReadOnlyError(EngineError):
    """The store or the entry does not accept writes."""


class BadHandleError(EngineError):
    """A closed or unknown volume handle."""


class CorruptionError(EngineError):
    """Metadata or data contradicts itself; the store refuses writes until repaired."""


class StorageError(EngineError):
    """An OS error from the disk under the store."""

    def __init__(self, message: str, os_errno: int | None = None):
        super().__init__(message)
        self.os_errno = os_errno


class NotSupportedError(EngineError):
    """A valid request this store does not do."""


class FormatError(EngineError):
    """DATA_DIR is not a store, or a store of a format version this code does not know."""


class BadRequestError(InvalidArgumentError):
    """A REST request the server cannot even read: a parameter missing, unparsable or out of
    its type's range. Found before the store is touched, so the store never changes."""


@dataclass(frozen=True)
class ErrorCodes:
    errno: int
    curve: CurveCode
    rest: RestCode


_C, _R, _E = CurveCode, RestCode, _errno

#: The one mapping. Looked up along the exception's MRO, so a subclass without a row of its own
#: answers as its parent.
ERROR_TABLE: dict[type[BaseException], ErrorCodes] = {
    NotFoundError: ErrorCodes(_E.ENOENT, _C.NOTEXIST, _R.FILE_NOT_EXIST),
    ExistsError: ErrorCodes(_E.EEXIST, _C.EXISTS, _R.FILE_EXIST),
    NotDirectoryError: ErrorCodes(_E.ENOTDIR, _C.UNKNOWN, _R.INVALID_ARGUMENT),
    IsDirectoryError: ErrorCodes(_E.EISDIR, _C.NOT_SUPPORT, _R.NOT_SUPPORT),
    NotEmptyError: ErrorCodes(_E.ENOTEMPTY, _C.NOT_EMPTY, _R.FILE_STATUS_INVALID),
    AccessError: ErrorCodes(_E.EACCES, _C.AUTHFAIL, _R.INVALID_USER),
    BusyError: ErrorCodes(_E.EBUSY, _C.FILE_OCCUPIED, _R.FILE_OCCUPIED),
    HasSnapshotsError: ErrorCodes(_E.EBUSY, _C.UNDER_SNAPSHOT, _R.UNDER_SNAPSHOT),
    # Curve's MDS codes kSnapshotFileProtected / kSnapshotFileNotProtected reach its client
    # as UNKNOWN.
    ProtectedError: ErrorCodes(_E.EBUSY, _C.UNKNOWN, _R.FILE_STATUS_INVALID),
    NotProtectedError: ErrorCodes(_E.EINVAL, _C.UNKNOWN, _R.FILE_STATUS_INVALID),
    InvalidArgumentError: ErrorCodes(_E.EINVAL, _C.PARAM_ERROR, _R.INVALID_ARGUMENT),
    NameTooLongError: ErrorCodes(_E.ENAMETOOLONG, _C.PARAM_ERROR, _R.INVALID_ARGUMENT),
    BadLengthError: ErrorCodes(_E.EINVAL, _C.LENGTH_NOT_SUPPORT, _R.NOT_SUPPORT),
    ExtentUnitError: ErrorCodes(_E.EINVAL, _C.UNKNOWN, _R.NOT_SUPPORT),
    ShrinkError: ErrorCodes(_E.EINVAL, _C.NO_SHRINK_BIGGER_FILE, _R.NOT_SUPPORT),
    NotAlignedError: ErrorCodes(_E.EINVAL, _C.NOT_ALIGNED, _R.INVALID_ARGUMENT),
    # Curve answers IO past the end with FAILED; a block device answers ENOSPC.
    OutOfRangeError: ErrorCodes(_E.ENOSPC, _C.FAILED, _R.INVALID_ARGUMENT),
    NoSpaceError: ErrorCodes(_E.ENOSPC, _C.NO_SPACE, _R.INTERNAL),
    # Curve's release1.5 answers a write to a read-only clone with READONLY.
    ReadOnlyError: ErrorCodes(_E.EROFS, _C.READONLY, _R.NOT_SUPPORT),
    BadHandleError: ErrorCodes(_E.EBADF, _C.BAD_FD, _R.INVALID_ARGUMENT),
    CorruptionError: ErrorCodes(_E.EIO, _C.CRC_ERROR, _R.INTERNAL),
    StorageError: ErrorCodes(_E.EIO, _C.DISK_FAIL, _R.INTERNAL),
    NotSupportedError: ErrorCodes(_E.EOPNOTSUPP, _C.NOT_SUPPORT, _R.NOT_SUPPORT),
    FormatError: ErrorCodes(_E.EIO, _C.INTERNAL_ERROR, _R.INTERNAL),
    BadRequestError: ErrorCodes(_E.EINVAL, _C.PARAM_ERROR, _R.BAD_REQUEST),
}

#: What an unexpected exception (a bug) is answered with.
UNEXPECTED = ErrorCodes(_E.EIO, _C.INTERNAL_ERROR, _R.INTERNAL)


def codes_for(exc: BaseException) -> ErrorCodes:
    """The codes each door reports for `exc`."""
    for cls in type(exc).__mro__:
        row = ERROR_TABLE.get(cls)
        if row is not None:
            if isinstance(exc, StorageError) and exc.os_errno:
                return ErrorCodes(exc.os_errno, row.curve, row.rest)
            return row
    return UNEXPECTED
