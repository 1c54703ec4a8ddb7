"""The snapshot, clone and backup commands on a store that a running daemon has mounted."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .helpers import Daemon, curvefuse

MiB = 2**20


def test_snapshots_clones_and_backups_while_mounted(mounted: Daemon, tmp_path: Path) -> None:
    store = ['-d', str(mounted.data_dir)]
    volume = mounted.mountpoint / 'vol'
    curvefuse(*store, 'create', '/vol', '-s', '32M')
    first = os.urandom(2 * MiB)
    with open(volume, 'r+b') as fh:  # closing flushes: the CLI sees it
        fh.write(first)
    curvefuse(*store, 'snap', 'create', '/vol@s1', '--protect')
    with open(volume, 'r+b') as fh:
        fh.seek(MiB)
        fh.write(b'second' * 1000)
    curvefuse(*store, 'snap', 'create', '/vol@s2')
    now = volume.read_bytes()
    assert now[:MiB] == first[:MiB] and now[MiB:MiB + 6000] == b'second' * 1000

    curvefuse(*store, 'clone', '/vol@s1', '/clone')
    assert (mounted.mountpoint / 'clone').read_bytes()[:2 * MiB] == first
    curvefuse(*store, 'flatten', '/clone')
    assert json.loads(curvefuse(*store, 'info', '/clone', '--format', 'json').stdout)[
        'status'] == 'ok'
    du = json.loads(curvefuse(*store, 'du', '--format', 'json').stdout)
    assert [row['path'] for row in du] == ['/clone', '/vol', '/vol@s1', '/vol@s2']

    full, increment = tmp_path / 's1.diff', tmp_path / 's1-s2.diff'
    curvefuse(*store, 'export-diff', '/vol@s1', str(full))
    curvefuse(*store, 'export-diff', '/vol@s2', '--from-snap', 's1', str(increment))
    backup = ['-d', str(tmp_path / 'backup')]
    curvefuse('init', str(tmp_path / 'backup'))
    curvefuse(*backup, 'import-diff', str(full), '/vol')
    curvefuse(*backup, 'import-diff', str(increment), '/vol')
    curvefuse(*backup, 'export', '/vol', str(tmp_path / 'restored.raw'))
    assert hashlib.sha256((tmp_path / 'restored.raw').read_bytes()).digest() == \
        hashlib.sha256(now).digest()
    assert curvefuse('fsck', str(tmp_path / 'backup')).returncode == 0
