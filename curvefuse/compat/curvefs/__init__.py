"""Curve's `curvefs` module name, so `import curvefs` scripts run unchanged on curvefuse."""

from curvefuse.client import (CBDClient, CURVE_FILE_BEINGCLONED, CURVE_FILE_CLONED,
                              CURVE_FILE_CLONEMETAINSTALLED, CURVE_FILE_CLONING,
                              CURVE_FILE_CREATED, CURVE_FILE_DELETING, CURVE_FILE_FLATTENING,
                              CURVE_INODE_CLONE_PAGEFILE, CURVE_INODE_DIRECTORY,
                              CURVE_INODE_PAGEFILE, CURVE_INODE_SNAPSHOT_PAGEFILE, FileInfo_t,
                              UserInfo_t)

__all__ = ['CBDClient', 'CURVE_FILE_BEINGCLONED', 'CURVE_FILE_CLONED',
           'CURVE_FILE_CLONEMETAINSTALLED', 'CURVE_FILE_CLONING', 'CURVE_FILE_CREATED',
           'CURVE_FILE_DELETING', 'CURVE_FILE_FLATTENING', 'CURVE_INODE_CLONE_PAGEFILE',
           'CURVE_INODE_DIRECTORY', 'CURVE_INODE_PAGEFILE', 'CURVE_INODE_SNAPSHOT_PAGEFILE',
           'FileInfo_t', 'UserInfo_t']
