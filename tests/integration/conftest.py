"""Fixtures that run the real daemon on a real mount point.

Whatever happens in a test, teardown unmounts every mount it made (file systems on loop devices
first, then curvefuse: `fusermount3 -u`, else `-z -u`), detaches every loop device it attached,
kills only the daemons it started (by pid), and checks the store clean with fsck and the daemon's
log free of warnings the test did not declare.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import HAVE_FUSE, Cleanup, Daemon, curvefuse


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason='needs /dev/fuse and fusermount3')
    for item in items:
        if 'integration' in str(item.fspath):
            item.add_marker(pytest.mark.needs_fuse)
            if not HAVE_FUSE:
                item.add_marker(skip)


@pytest.fixture
def cleanup() -> Iterator[Cleanup]:
    undo = Cleanup()
    try:
        yield undo
    finally:
        undo.undo()


@pytest.fixture
def daemon_factory(tmp_path: Path, data_dir: Path, cleanup: Cleanup) -> Iterator:
    """Make daemons on the test's store; all are stopped (or killed) at the end, and the store
    and the logs are checked."""
    made: list[Daemon] = []
    curvefuse('init', str(data_dir))

    def make(options: str | None = None, mountpoint: Path | None = None) -> Daemon:
        mountpoint = mountpoint or tmp_path / 'mnt'
        mountpoint.mkdir(exist_ok=True)
        daemon = Daemon(data_dir, mountpoint, tmp_path / f'mount{len(made)}.log', options)
        made.append(daemon)
        return daemon

    failed = True
    try:
        yield make
        failed = False
    finally:
        cleanup.undo()  # loop devices and file systems on them sit on top of the mount
        for daemon in made:
            if daemon.proc is not None:
                if failed:
                    daemon.kill()
                else:
                    try:
                        daemon.stop()
                    except BaseException:
                        daemon.kill()
                        raise
    problems = [line for daemon in made for line in daemon.log_problems()]
    assert not problems, f'daemon logged: {problems}'


@pytest.fixture
def mounted(daemon_factory) -> Daemon:
    """A running daemon with the test's store at tmp_path/mnt."""
    daemon = daemon_factory()
    daemon.start()
    return daemon

