"""curvefuse: CurveBS-style volumes, snapshots and clones on one machine, mounted as files."""

import os

from .api import Entry, Snapshot, Store, Volume, open_store, parse_size
from .errors import (AccessError, BusyError, EngineError, ExistsError, HasSnapshotsError,
                     InvalidArgumentError, NotEmptyError, NotFoundError, NotProtectedError,
                     OutOfRangeError, ProtectedError, ReadOnlyError)

__version__ = '0.1.0'

#: Where the CLI, the mount helper and CBDClient look when no store is named.
DEFAULT_DATA_DIR = os.environ.get('CURVEFUSE_DATA_DIR', '/var/lib/curvefuse')

__all__ = ['AccessError', 'BusyError', 'DEFAULT_DATA_DIR', 'EngineError', 'Entry', 'ExistsError',
           'HasSnapshotsError', 'InvalidArgumentError', 'NotEmptyError', 'NotFoundError',
           'NotProtectedError', 'OutOfRangeError', 'ProtectedError', 'ReadOnlyError', 'Snapshot',
           'Store', 'Volume', 'open_store', 'parse_size']
