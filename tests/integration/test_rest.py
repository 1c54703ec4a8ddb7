"""The REST API beside a real mount and CBDClient, all on one store at once: served by the mount
daemon itself (`-o rest=...`) and by a separate `curvefuse serve` process."""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path

import pytest

from curvefuse.client import CBDClient

from ..rest_helpers import LISTENING_RE, RestClient, ServeProcess, wait_for_line
from ..util import user
from .helpers import Daemon

MiB = 2**20
GiB = 2**30
CURVE = user('curve')



def write_through_mount(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        assert os.pwrite(fd, data, offset) == len(data)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_mount_daemon_serves_rest(daemon_factory, cbd: CBDClient) -> None:
    daemon: Daemon = daemon_factory('rest=127.0.0.1:0')
    daemon.start()
    client = RestClient(wait_for_line(daemon.log, LISTENING_RE).group(1))
    mnt = daemon.mountpoint

    client.ok('CreateFile', File='/vol', Size=1)
    assert (mnt / 'vol').stat().st_size == GiB  # the mount sees it at once
    write_through_mount(mnt / 'vol', 5 * MiB, b'm' * 4096)
    fd = cbd.Open('/vol', CURVE)
    assert cbd.Read(fd, None, 5 * MiB, 4096) == b'm' * 4096
    assert cbd.Close(fd) == 0

    with open(mnt / 'vol', 'rb'):
        client.fails(-23, 'DeleteFile', File='/vol')  # open through the mount: occupied
    client.ok('DeleteFile', File='/vol')
    assert not (mnt / 'vol').exists()
    [recycled] = client.ok('ListFile', Dir='/RecycleBin', user='root')['FileInfos']
    assert recycled['File'].startswith('/RecycleBin/vol-')

    (mnt / 'made-in-mount').mkdir()
    (mnt / 'made-in-mount' / 'disk').write_bytes(b'd' * 8192)
    body = client.ok('ListFile', Dir='/made-in-mount', user='root')
    assert [(i['File'], i['FileLength'], i['Type']) for i in body['FileInfos']] == \
        [('/made-in-mount/disk', 8192, 0)]

    host, port = client.base_url[len('http://'):].split(':')
    daemon.stop()  # the fixture checks the log for warnings and the store with fsck
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=5).close()
    request_lines = [line for line in daemon.log.read_text().splitlines() if ' -> ' in line]
    assert len(request_lines) == 5


def test_mount_refuses_a_busy_rest_port(daemon_factory) -> None:
    with socket.create_server(('127.0.0.1', 0)) as taken:
        daemon = daemon_factory(f'rest=127.0.0.1:{taken.getsockname()[1]}')
        with pytest.raises(RuntimeError, match='Address already in use'):
            daemon.start()


def test_serve_beside_the_mount_and_cbdclient(mounted: Daemon, served: ServeProcess,
                                              cbd: CBDClient) -> None:
    """Three doors, three processes (the mount daemon, `curvefuse serve`, this test with
    CBDClient), one store: each sees the others' changes at once."""
    client = served.start()
    mnt = mounted.mountpoint

    (mnt / 'disk').write_bytes(b'')
    os.truncate(mnt / 'disk', 2 * GiB)
    write_through_mount(mnt / 'disk', 0, b'w' * MiB)
    [info] = client.ok('ListFile', File='/disk', user='root')['FileInfos']
    assert (info['FileLength'], info['Type'], info['Status'], info['Progress']) == \
        (2 * GiB, 0, 0, 100)

    client.ok('CreateFile', File='/from-rest', Size=3)
    assert (mnt / 'from-rest').stat().st_size == 3 * GiB
    fd = cbd.Open('/from-rest', CURVE)
    assert cbd.Write(fd, b'c' * 4096, GiB, 4096) == 4096
    assert cbd.Close(fd) == 0
    with open(mnt / 'from-rest', 'rb') as fh:
        fh.seek(GiB)
        assert fh.read(4096) == b'c' * 4096

    assert cbd.Create('/from-cbd', CURVE, GiB) == 0
    names = {i['File'] for i in client.ok('ListFile', Dir='/')['FileInfos']}
    assert names == {'/RecycleBin', '/disk', '/from-rest', '/from-cbd'}
    client.ok('DeleteFile', File='/from-cbd')
    assert not (mnt / 'from-cbd').exists()
    served.stop()


def test_snapshot_and_clone_of_a_volume_written_through_the_mount(
        mounted: Daemon, served: ServeProcess, cbd: CBDClient) -> None:
    """What was fsynced through the mount is in a snapshot `curvefuse serve` takes; later
    writes are not; the mount's .snapshots and the API show the same snapshots; a clone reads
    the snapshot through the mount and CBDClient alike, and ListFile follows it through
    Flatten."""
    client = served.start()
    mnt = mounted.mountpoint
    client.ok('CreateFile', File='/vm', Size=1)
    write_through_mount(mnt / 'vm', 3 * MiB, b'1' * MiB)  # fsynced
    client.ok('CreateSnapshot', File='/vm', Name='before')
    write_through_mount(mnt / 'vm', 3 * MiB, b'2' * MiB)
    with open(mnt / '.snapshots' / 'vm' / 'before', 'rb') as fh:  # the mount shows it
        fh.seek(3 * MiB)
        assert fh.read(MiB) == b'1' * MiB
    (mnt / '.snapshots' / 'vm' / 'after').touch()  # a snapshot taken in the mount ...
    names = [s['Name'] for s in client.ok('GetFileSnapshotInfo', File='/vm')['Snapshots']]
    assert names == ['before', 'after']  # ... is one for the API too
    client.ok('DeleteSnapshot', File='/vm', Name='after')
    assert not (mnt / '.snapshots' / 'vm' / 'after').exists()
    client.ok('Clone', File='/vm', Name='before', Destination='/vm-clone', Readonly='true')

    with open(mnt / 'vm-clone', 'rb') as fh:
        fh.seek(3 * MiB)
        assert fh.read(MiB) == b'1' * MiB
    with pytest.raises(OSError) as refused:
        open(mnt / 'vm-clone', 'r+b').close()
    assert refused.value.errno == errno.EROFS  # Readonly=true holds in the mount ...
    fd = cbd.Open('/vm-clone', CURVE)
    assert cbd.Read(fd, None, 3 * MiB, 4096) == b'1' * 4096
    assert cbd.Write(fd, b'x' * 4096, 0, 4096) == -32  # ... and for CBDClient (READONLY)
    assert cbd.Close(fd) == 0
    with open(mnt / 'vm', 'rb') as fh:
        fh.seek(3 * MiB)
        assert fh.read(MiB) == b'2' * MiB

    [info] = client.ok('ListFile', File='/vm-clone')['FileInfos']
    assert (info['Status'], info['Readonly']) == (2, True)
    client.fails(-23, 'DeleteSnapshot', File='/vm', Name='before')
    client.ok('Flatten', File='/vm-clone')
    deadline = time.monotonic() + 60
    while client.ok('ListFile', File='/vm-clone')['FileInfos'][0]['Status'] != 0:
        assert time.monotonic() < deadline, 'the flatten did not finish'
        time.sleep(0.05)
    client.ok('DeleteSnapshot', File='/vm', Name='before')
    with open(mnt / 'vm-clone', 'rb') as fh:
        fh.seek(3 * MiB)
        assert fh.read(MiB) == b'1' * MiB
    assert client.ok('GetFileSnapshotInfo', File='/vm')['TotalCount'] == 0
    served.stop()
