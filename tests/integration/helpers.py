"""The real daemon, loop devices and mounts, for the integration tests (see conftest.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from curvefuse.fuse.mount import process_running

from ..util import log_problems

HAVE_FUSE = os.path.exists('/dev/fuse') and shutil.which('fusermount3') is not None
def mount_options(path: Path) -> list[str] | None:
    """The options of the mount at path in /proc/mounts (not a stat: a dead FUSE mount hangs or
    answers ENOTCONN), or None if nothing is mounted there."""
    with open('/proc/mounts') as fh:
        for line in fh:
            fields = line.split()
            if fields[1] == str(path):
                return fields[3].split(',')
    return None


def in_proc_mounts(path: Path) -> bool:
    return mount_options(path) is not None


@contextmanager
def detached_mount(data_dir: Path, mountpoint: Path, start: list[str],
                   env: dict[str, str] | None = None) -> Iterator[int]:
    """A mount whose daemon another program starts and detaches (`curvefuse mount`, mount(8)).
    Yields the daemon's pid. However the test ends, the mount is lazily unmounted and that pid,
    and no other process, is killed if it is still running."""
    result = subprocess.run(start, capture_output=True, text=True, timeout=60,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    pid = int((data_dir / 'mount.lock').read_text().split()[0])
    try:
        yield pid
    finally:
        if in_proc_mounts(mountpoint):
            subprocess.run(['fusermount3', '-z', '-u', str(mountpoint)], capture_output=True)
        deadline = time.monotonic() + 10
        while process_running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if process_running(pid):
            os.kill(pid, signal.SIGKILL)


def wait_for_exit(pid: int, timeout: float = 30) -> bool:
    """Whether the process has finished (or is a zombie) within timeout."""
    deadline = time.monotonic() + timeout
    while process_running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def have_cap_sys_resource() -> bool:
    with open('/proc/self/status') as fh:
        caps = next(line for line in fh if line.startswith('CapEff:')).split()[1]
    return bool(int(caps, 16) & (1 << 24))


def curvefuse(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real `curvefuse` entry point."""
    return subprocess.run([sys.executable, '-m', 'curvefuse.cli', *args], capture_output=True,
                          text=True, timeout=timeout, check=check)


class Daemon:
    """One `curvefuse mount --foreground` process serving data_dir at mountpoint."""

    def __init__(self, data_dir: Path, mountpoint: Path, log: Path, options: str | None = None):
        self.data_dir, self.mountpoint, self.log = data_dir, mountpoint, log
        self.options = options
        self.proc: subprocess.Popen | None = None
        self.expected_warnings: list[str] = []
        if not have_cap_sys_resource():
            self.expected_warnings.append('could not mark the daemon an I/O flusher')

    def start(self, timeout: float = 30, env: dict[str, str] | None = None) -> None:
        args = ['mount', '--foreground', '--log', str(self.log), str(self.data_dir),
                str(self.mountpoint)]
        if self.options:
            args += ['-o', self.options]
        self.proc = subprocess.Popen([sys.executable, '-m', 'curvefuse.cli', *args],
                                     stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None:
                proc, self.proc = self.proc, None  # nothing left to stop at teardown
                raise RuntimeError(f'daemon exited {proc.returncode}: {proc.stderr.read()}')
            if time.monotonic() > deadline:
                raise RuntimeError('mount did not appear')
            time.sleep(0.02)

    def stop(self) -> None:
        """Unmount as a user would and require the daemon to exit cleanly."""
        assert self.proc is not None
        result = subprocess.run(['fusermount3', '-u', str(self.mountpoint)], capture_output=True,
                                text=True)
        assert result.returncode == 0, result.stderr
        assert self.proc.wait(timeout=60) == 0, self.proc.stderr.read()
        self.proc = None

    def kill(self) -> None:
        """Emergency teardown: lazy unmount, then terminate and kill our own daemon only."""
        if in_proc_mounts(self.mountpoint):  # not ismount: a dead mount answers ENOTCONN
            subprocess.run(['fusermount3', '-z', '-u', str(self.mountpoint)],
                           capture_output=True)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_problems(self) -> list[str]:
        """WARNING/ERROR lines and tracebacks in the daemon's log nobody declared."""
        return log_problems(self.log, self.expected_warnings)


class Cleanup:
    """Loop devices and mounts a test made, undone in reverse order even when it fails."""

    def __init__(self) -> None:
        self.loops: list[str] = []
        self.mounts: list[Path] = []

    def attach(self, path: Path, *options: str) -> str:
        device = subprocess.run(['losetup', '-f', '--show', *options, str(path)], check=True,
                                capture_output=True, text=True).stdout.strip()
        self.loops.append(device)
        return device

    def detach(self, device: str) -> None:
        subprocess.run(['losetup', '-d', device], check=True)
        self.loops.remove(device)

    def mount(self, device: str, target: Path, *options: str) -> None:
        target.mkdir(exist_ok=True)
        subprocess.run(['mount', *options, device, str(target)], check=True)
        self.mounts.append(target)

    def umount(self, target: Path) -> None:
        subprocess.run(['umount', str(target)], check=True)
        self.mounts.remove(target)

    def undo(self) -> None:
        for target in reversed(self.mounts):
            if subprocess.run(['umount', str(target)]).returncode != 0:
                subprocess.run(['umount', '-l', str(target)])
        for device in reversed(self.loops):
            subprocess.run(['losetup', '-d', device])
        self.mounts.clear()
        self.loops.clear()
