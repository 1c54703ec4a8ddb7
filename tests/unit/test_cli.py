"""The `curvefuse` volume commands, run through the real entry point as an operator would."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MiB = 2**20
GiB = 2**30


@pytest.fixture
def cli(data_dir: Path):
    """Run `curvefuse -d DATA_DIR ...` in a new process; returns the CompletedProcess."""
    subprocess.run([sys.executable, '-m', 'curvefuse.cli', 'init', str(data_dir)], check=True,
                   capture_output=True)

    def run(*args: str, input: bytes | None = None, check: bool = True,
            text: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, '-m', 'curvefuse.cli', '-d', str(data_dir),
                                 *args], capture_output=True, input=input, timeout=300,
                                text=text and input is None)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    return run


def test_create_ls_info_du(cli) -> None:
    cli('mkdir', '/vms')
    cli('create', '/vms/disk', '--size', '1G')
    assert cli('ls', '/vms').stdout.split() == ['disk']
    assert cli('ls').stdout.split() == ['RecycleBin/', 'vms/']
    long = cli('ls', '-l', '/vms').stdout.split()
    assert long[:5] == ['volume', '1.0', 'GiB', '0', 'B']
    [row] = json.loads(cli('ls', '/vms', '--format', 'json').stdout)
    assert (row['length'], row['allocated'], row['owner'], row['type']) == \
        (GiB, 0, 'root', 'volume')
    info = json.loads(cli('info', '/vms/disk', '--format', 'json').stdout)
    assert info['id'] == row['id'] and info['path'] == '/vms/disk'
    assert 'length: 1.0 GiB' in cli('info', '/vms/disk').stdout
    du = json.loads(cli('du', '--format', 'json').stdout)
    assert du == [{'path': '/vms/disk', 'length': GiB, 'allocated': 0}]
    assert cli('du').stdout.splitlines()[-1].split() == ['0', 'B', '1.0', 'GiB', 'total']


def test_resize_mv_rm_rmdir(cli) -> None:
    cli('mkdir', '/a')
    cli('mkdir', '/b')
    cli('create', '/a/v', '-s', '8M')
    cli('resize', '/a/v', '-s', '16M')
    shrink = cli('resize', '/a/v', '-s', '4M', check=False)
    assert shrink.returncode == 1 and 'smaller' in shrink.stderr
    cli('resize', '/a/v', '-s', '4M', '--allow-shrink')
    assert json.loads(cli('info', '/a/v', '--format', 'json').stdout)['length'] == 4 * MiB
    cli('mv', '/a/v', '/b/v')
    assert cli('ls', '/a').stdout == '' and cli('ls', '/b').stdout.split() == ['v']
    refused = cli('rmdir', '/b/v', check=False)
    assert refused.returncode == 1 and 'use rm' in refused.stderr
    assert cli('rmdir', '/b', check=False).returncode == 1  # not empty
    cli('rm', '/b/v')
    cli('rmdir', '/b')
    assert cli('ls').stdout.split() == ['RecycleBin/', 'a/']


def test_trash_ls_restore_purge(cli) -> None:
    for name in ('old', 'new'):
        cli('create', f'/{name}', '-s', '1M')
        cli('rm', f'/{name}')
    rows = json.loads(cli('trash', 'ls', '--format', 'json').stdout)
    assert sorted(r['original_path'] for r in rows) == ['/new', '/old']
    old = next(r for r in rows if r['original_path'] == '/old')
    cli('trash', 'restore', str(old['id']))  # by id, back where it was
    new = next(r for r in rows if r['original_path'] == '/new')
    cli('trash', 'restore', new['name'], '--to', '/renewed')  # by name, elsewhere
    assert cli('ls').stdout.split() == ['RecycleBin/', 'old', 'renewed']
    cli('rm', '/old')
    assert cli('trash', 'purge', '--expired-before', '1d').stdout.strip() == 'purged 0 volumes'
    assert cli('trash', 'purge', '--expired-before', '2099-01-01').stdout.strip() == \
        'purged 1 volume'
    assert json.loads(cli('trash', 'ls', '--format', 'json').stdout) == []
    missing = cli('trash', 'restore', 'nothing', check=False)
    assert missing.returncode == 1 and 'nothing named' in missing.stderr
    bad = cli('trash', 'purge', '--expired-before', 'yesterday', check=False)
    assert bad.returncode == 1 and 'not an age' in bad.stderr


def sha256(path: Path) -> str:
    with open(path, 'rb') as fh:
        return hashlib.file_digest(fh, 'sha256').hexdigest()


def sparse_image(path: Path) -> str:
    """1 GiB with a few scattered MiB of data; returns its sha256."""
    with open(path, 'wb') as fh:
        fh.truncate(GiB)
        for i in range(5):
            fh.seek(i * 200 * MiB + 12345 * 4096)
            fh.write(os.urandom(MiB))
    return sha256(path)


def test_export_import_round_trip_of_a_sparse_gibibyte(cli, tmp_path: Path) -> None:
    """import and export keep the bytes, and keep holes holes: on disk, in the store and in
    the exported file."""
    image = tmp_path / 'image.raw'
    digest = sparse_image(image)
    cli('import', str(image), '/vol')
    vol = json.loads(cli('info', '/vol', '--format', 'json').stdout)
    assert vol['length'] == GiB
    assert vol['allocated'] == 5 * MiB  # just the data, in 4 KiB blocks
    out = tmp_path / 'out.raw'
    cli('export', '/vol', str(out))
    assert out.stat().st_size == GiB
    assert out.stat().st_blocks * 512 <= 6 * MiB
    assert sha256(out) == digest


def test_import_from_stdin_and_export_to_stdout(cli) -> None:
    data = os.urandom(3 * MiB) + bytes(MiB) + b'tail'
    refused = cli('import', '-', '/piped', input=data, check=False)
    assert refused.returncode == 1 and b'needs --size' in refused.stderr
    cli('import', '-', '/piped', '--size', str(len(data)), input=data)
    exported = cli('export', '/piped', '-', text=False).stdout
    assert exported == data + bytes(4096 - 4)  # rounded up to a multiple of 4 KiB


@pytest.mark.parametrize('args, message', [
    (['create', '/x', '--size', '10X'], 'not a size'),
    (['create', 'relative', '--size', '1M'], 'must be absolute'),
    (['info', '/missing'], 'no such file or directory'),
    (['mkdir', '/a/b/c'], 'no such directory'),
    (['export', '/missing', '-'], 'no such file or directory'),
])
def test_user_errors_are_one_line(cli, args: list[str], message: str) -> None:
    result = cli(*args, check=False)
    assert result.returncode == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert 'Traceback' not in result.stderr
