"""The mount daemon's life: start, refuse a second one, stop on signals, recover after a crash."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from .helpers import Daemon, curvefuse


def test_mount_shows_in_proc_mounts_as_fuse_curvefuse(mounted: Daemon) -> None:
    with open('/proc/mounts') as fh:
        entry = next(line.split() for line in fh if line.split()[1] == str(mounted.mountpoint))
    assert entry[0] == str(mounted.data_dir)
    assert entry[2] == 'fuse.curvefuse'
    assert sorted(os.listdir(mounted.mountpoint)) == ['RecycleBin']
