"""Several doors on one store: while the mount runs, another process uses `import curvefs`
(CBDClient) on the same store, and each door sees the other's changes at once (no stale
listing, size or data on the mount, nothing unflushed on the client's side after Close).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any


from .helpers import Daemon

MiB = 2**20
PRELUDE = textwrap.dedent("""\
    import curvefs, json, sys
    cbd = curvefs.CBDClient()
    assert cbd.Init(sys.argv[1]) == 0
    root = curvefs.UserInfo_t()
    root.owner, root.password = 'root', 'root_password'
    curve = curvefs.UserInfo_t()
    curve.owner = 'curve'
    out = {}
""")


def door(client_conf: Path, body: str) -> dict[str, Any]:
    """Run body in another Python process with an initialised CBDClient `cbd` and the users
    `root` and `curve`; it fills the dict `out`, which comes back (after UnInit)."""
    script = PRELUDE + textwrap.dedent(body) + 'cbd.UnInit()\nprint(json.dumps(out))\n'
    result = subprocess.run([sys.executable, '-c', script, str(client_conf)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def block(seed: int, size: int = 4096) -> bytes:
    return random.Random(seed).randbytes(size)


def test_volume_written_by_cbdclient_appears_at_once(mounted: Daemon,
                                                     client_conf: Path) -> None:
    """A volume created, written (4 KiB aligned) and closed by CBDClient in another process is
    listed by ls at once, with its length, its owner and the new data."""
    mnt = mounted.mountpoint
    assert os.listdir(mnt) == ['.snapshots', 'RecycleBin']  # the mount looked: nothing yet
    data = block(1)
    out = door(client_conf, f"""
        out['create'] = cbd.Create('/fromcbd', curve, {MiB})
        fd = cbd.Open('/fromcbd', curve)
        out['write'] = cbd.Write(fd, {data!r}, 8192, 4096)
        out['close'] = cbd.Close(fd)
    """)
    assert out == {'create': 0, 'write': 4096, 'close': 0}
    assert sorted(os.listdir(mnt)) == ['.snapshots', 'RecycleBin', 'fromcbd']
    assert os.stat(mnt / 'fromcbd').st_size == MiB
    assert os.getxattr(mnt / 'fromcbd', 'user.curvefuse.owner') == b'curve'
    with open(mnt / 'fromcbd', 'rb') as fh:
        content = fh.read()
    assert content == bytes(8192) + data + bytes(MiB - 8192 - 4096)


def test_file_written_through_the_mount_reads_back_through_cbdclient(
        mounted: Daemon, client_conf: Path) -> None:
    """What cp/echo wrote and closed on the mount, CBDClient in another process reads back:
    same length, same bytes."""
    mnt = mounted.mountpoint
    data = block(2, 3 * 4096)
    (mnt / 'dir').mkdir()
    with open(mnt / 'dir' / 'fromfuse', 'wb') as fh:
        fh.write(data)
    out = door(client_conf, """
        info = curvefs.FileInfo_t()
        out['stat'] = cbd.StatFile('/dir/fromfuse', root, info)
        out['length'] = info.length
        fd = cbd.Open('/dir/fromfuse', root)
        out['data'] = cbd.Read(fd, '', 0, info.length).hex()
        out['close'] = cbd.Close(fd)
        out['listing'] = sorted(name.decode() for name in cbd.Listdir('/dir', root))
    """)
    assert out == {'stat': 0, 'length': len(data), 'data': data.hex(), 'close': 0,
                   'listing': ['fromfuse']}


def test_data_rewritten_by_cbdclient_is_not_read_stale(mounted: Daemon,
                                                       client_conf: Path) -> None:
    """A volume the mount has read (so the kernel has cached its pages), rewritten and closed by
    CBDClient, reads back new on the next open; Extend shows at once as the new size."""
    mnt = mounted.mountpoint
    old, new = block(3, 8192), block(4, 4096)
    with open(mnt / 'vol', 'wb') as fh:
        fh.write(old)
    with open(mnt / 'vol', 'rb') as fh:
        assert fh.read() == old
    out = door(client_conf, f"""
        fd = cbd.Open('/vol', root)
        out['write'] = cbd.Write(fd, {new!r}, 4096, 4096)
        out['close'] = cbd.Close(fd)
        out['extend'] = cbd.Extend('/vol', root, 16384)
    """)
    assert out == {'write': 4096, 'close': 0, 'extend': 0}
    assert os.stat(mnt / 'vol').st_size == 16384
    with open(mnt / 'vol', 'rb') as fh:
        assert fh.read() == old[:4096] + new + bytes(8192)


def test_rename_and_unlink_by_cbdclient_show_at_once(mounted: Daemon,
                                                     client_conf: Path) -> None:
    """Rename and Unlink through CBDClient are seen by the mount at once: the old name is gone
    (ls and stat), the new one is there with its inode and size; an unlinked volume shows in
    /RecycleBin; a new volume under a reused name shows its own size, not the old one's."""
    mnt = mounted.mountpoint
    (mnt / 'a').mkdir()
    subprocess.run(['truncate', '-s', '64K', mnt / 'a' / 'one'], check=True)
    inode = os.stat(mnt / 'a' / 'one').st_ino
    assert os.listdir(mnt / 'a') == ['one']
    out = door(client_conf, """
        out['mkdir'] = cbd.Mkdir('/b', root)
        out['rename'] = cbd.Rename(root, '/a/one', '/b/two')
    """)
    assert out == {'mkdir': 0, 'rename': 0}
    assert os.listdir(mnt / 'a') == []
    assert not (mnt / 'a' / 'one').exists()
    assert os.listdir(mnt / 'b') == ['two']
    assert os.stat(mnt / 'b' / 'two').st_ino == inode
    assert os.stat(mnt / 'b' / 'two').st_size == 64 * 1024

    out = door(client_conf, """
        out['unlink'] = cbd.Unlink('/b/two', root)
        out['create'] = cbd.Create('/b/two', root, 3 * 4096)
    """)
    assert out == {'unlink': 0, 'create': 0}
    assert os.listdir(mnt / 'b') == ['two']
    assert os.stat(mnt / 'b' / 'two').st_size == 3 * 4096
    assert os.stat(mnt / 'b' / 'two').st_ino != inode
    assert os.listdir(mnt / 'RecycleBin') == [f'two-{inode - 1}']

    out = door(client_conf, "out['unlink'] = cbd.Unlink('/b/two', root)\n")
    assert out == {'unlink': 0}
    assert os.listdir(mnt / 'b') == []
    assert not (mnt / 'b' / 'two').exists()
    assert len(os.listdir(mnt / 'RecycleBin')) == 2


def test_rm_on_the_mount_then_recover_through_cbdclient(mounted: Daemon,
                                                       client_conf: Path) -> None:
    """A volume rm'ed on the mount is in CBDClient's /RecycleBin listing as <name>-<id>;
    Recover through CBDClient puts it back, and the mount shows it at once with its data."""
    mnt = mounted.mountpoint
    data = block(5, 3 * 4096)
    (mnt / 'vms').mkdir()
    with open(mnt / 'vms' / 'disk', 'wb') as fh:
        fh.write(data)
    vol_id = os.stat(mnt / 'vms' / 'disk').st_ino - 1
    subprocess.run(['rm', mnt / 'vms' / 'disk'], check=True)
    out = door(client_conf, """
        out['bin'] = sorted(name.decode() for name in cbd.Listdir('/RecycleBin', root))
        out['recover'] = cbd.Recover('/vms/disk', root, 0)
    """)
    assert out == {'bin': [f'disk-{vol_id}'], 'recover': 0}
    assert os.listdir(mnt / 'RecycleBin') == []
    assert os.listdir(mnt / 'vms') == ['disk']
    with open(mnt / 'vms' / 'disk', 'rb') as fh:
        assert fh.read() == data
