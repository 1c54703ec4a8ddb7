"""systemd: the unit files are valid, and the mount daemon speaks the notify protocol
(Type=notify)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import Daemon

UNITS = Path(__file__).resolve().parents[2] / 'systemd'


@pytest.mark.skipif(shutil.which('systemd-analyze') is None, reason='needs systemd-analyze')
@pytest.mark.parametrize('template, instance, kind', [
    ('curvefuse@.service', 'mnt-test', 'Type=notify'),
    ('curvefuse-rest@.service', 'var-lib-curvefuse', 'Type=simple'),
])
def test_unit_file_verifies(tmp_path: Path, template: str, instance: str, kind: str) -> None:
    """systemd-analyze verify finds nothing wrong (with the command where this checkout has it)."""
    curvefuse = Path(sys.executable).with_name('curvefuse')
    unit = tmp_path / template.replace('@', '@' + instance)
    unit.write_text((UNITS / template).read_text().replace('/usr/local/bin/curvefuse',
                                                           str(curvefuse)))
    result = subprocess.run(['systemd-analyze', 'verify', '--man=no', str(unit)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ''
    assert kind in unit.read_text()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_once_mounted_and_stopping_on_sigterm(daemon_factory, tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / 'notify'))
        sock.settimeout(30)
        daemon: Daemon = daemon_factory()
        daemon.start(env={'NOTIFY_SOCKET': str(tmp_path / 'notify')})
        ready = receive(sock)
        assert 'READY=1' in ready.splitlines()
        assert f'MAINPID={daemon.proc.pid}' in ready.splitlines()
        assert os.path.ismount(daemon.mountpoint)
        daemon.proc.send_signal(signal.SIGTERM)
        assert 'STOPPING=1' in receive(sock).splitlines()
        assert daemon.proc.wait(timeout=60) == 0
        daemon.proc = None
        assert not os.path.ismount(daemon.mountpoint)


def test_abstract_notify_socket(daemon_factory, tmp_path: Path) -> None:
    """systemd may name an abstract socket ('@...')."""
    name = f'curvefuse-test-{os.getpid()}'
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind('\0' + name)
        sock.settimeout(30)
        daemon: Daemon = daemon_factory()
        daemon.start(env={'NOTIFY_SOCKET': '@' + name})
        assert 'READY=1' in receive(sock).splitlines()
        daemon.stop()  # while we still listen for its STOPPING=1
        assert 'STOPPING=1' in receive(sock).splitlines()
