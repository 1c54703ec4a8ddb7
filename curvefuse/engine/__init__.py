"""The storage engine: synchronous, thread-safe, and free of trio, pyfuse3 and Curve's codes."""

from .chunks import WouldBlock
from .meta import KIND_DIRECTORY, KIND_VOLUME, RECYCLE_ID, ROOT_ID, Node
from .store import (BLOCK_SIZE, DEFAULT_CHUNK_SIZE, DEFAULT_ROOT_PASSWORD, MAX_VOLUME_LENGTH,
                    RECYCLE_NAME, ROOT_USER, CloneState, Engine, SnapshotInfo, VolumeHandle,
                    join_path, split_path, split_snapshot_path)

__all__ = ['BLOCK_SIZE', 'DEFAULT_CHUNK_SIZE', 'DEFAULT_ROOT_PASSWORD', 'KIND_DIRECTORY',
           'KIND_VOLUME', 'MAX_VOLUME_LENGTH', 'RECYCLE_ID', 'RECYCLE_NAME', 'ROOT_ID', 'ROOT_USER',
           'CloneState', 'Engine', 'Node', 'SnapshotInfo', 'VolumeHandle', 'WouldBlock',
           'join_path', 'split_path', 'split_snapshot_path']
