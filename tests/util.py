"""Helpers the tests share."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import curvefuse
from curvefuse.client import UserInfo_t


def assert_store_clean(data_dir: str | Path) -> None:
    """fsck the store (after every other user let go of it) and fail on any finding."""
    with curvefuse.open_store(str(data_dir)) as store:
        report = store.fsck()
    assert report.clean, f'fsck: {report.corruption + report.leaks}'


def user(owner: str, password: str = '') -> UserInfo_t:
    info = UserInfo_t()
    info.owner, info.password = owner, password
    return info


def log_problems(log: Path, expected: Sequence[str] = ()) -> list[str]:
    """WARNING/ERROR lines and tracebacks in a daemon's log file, but for the expected ones."""
    if not log.exists():
        return []
    return [line for line in log.read_text().splitlines()
            if re.search(r' (WARNING|ERROR|CRITICAL) |Traceback', line)
            and not any(w in line for w in expected)]
