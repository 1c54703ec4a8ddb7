"""Shared fixtures. Every store a test touches is checked clean by fsck when the test ends, and a
test fails if anything logged a warning or error it did not declare with `expect_logs`."""

from __future__ import annotations

import faulthandler
import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import curvefuse
from curvefuse.client import CBDClient

from .rest_helpers import ServeProcess
from .util import assert_store_clean, log_problems

faulthandler.enable()
faulthandler.register(signal.SIGUSR1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption('--logdebug', action='store_true', help='show curvefuse debug logs')


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption('--logdebug'):
        logging.getLogger('curvefuse').setLevel(logging.DEBUG)


class ExpectedLogs:
    """What a test declares it will log at WARNING or above (substrings of the messages)."""

    def __init__(self) -> None:
        self.patterns: list[str] = []

    def __call__(self, *patterns: str) -> None:
        self.patterns.extend(patterns)


@pytest.fixture
def expect_logs() -> ExpectedLogs:
    return ExpectedLogs()


@pytest.fixture(autouse=True)
def check_logs(expect_logs: ExpectedLogs, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.INFO, logger='curvefuse')
    yield
    unexpected = [r.getMessage() for r in caplog.get_records('call')
                  if r.levelno >= logging.WARNING and r.name.startswith('curvefuse')
                  and not any(p in r.getMessage() for p in expect_logs.patterns)]
    assert not unexpected, f'unexpected log messages: {unexpected}'


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A path for a store; whatever store is there at the end must fsck clean."""
    path = tmp_path / 'store'
    yield path
    if (path / 'meta').exists():
        assert_store_clean(path)


@pytest.fixture
def store(data_dir: Path) -> Iterator[curvefuse.Store]:
    """A fresh store, opened as its trusted owner."""
    with curvefuse.open_store(str(data_dir), create=True) as opened:
        yield opened


@pytest.fixture
def client_conf(tmp_path: Path, data_dir: Path) -> Path:
    conf = tmp_path / 'client.conf'
    conf.write_text('# a Curve client.conf with one line added\n'
                    'mds.listen.addr=127.0.0.1:6666\n'
                    f'curvefuse.data_dir={data_dir}\n')
    return conf


@pytest.fixture
def cbd(client_conf: Path) -> Iterator[CBDClient]:
    """An initialised CBDClient on a fresh store."""
    client = CBDClient()
    assert client.Init(str(client_conf)) == 0
    yield client
    client.UnInit()


@pytest.fixture
def served(tmp_path: Path, data_dir: Path) -> Iterator[ServeProcess]:
    """A `curvefuse serve` process (not yet started) on the test's store, made if missing. At
    the end it is killed if still running (by its pid), and its log must hold no warning,
    error or traceback."""
    curvefuse.open_store(str(data_dir), create=True).close()
    server = ServeProcess(data_dir, tmp_path / 'serve.log')
    try:
        yield server
    finally:
        server.kill()
    assert not log_problems(server.log)
