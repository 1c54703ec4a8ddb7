"""The `curvefuse` volume commands, run through the real entry point as an operator would."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

import curvefuse

from ..util import assert_store_clean

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
    (['import', '/no/such/image', '/v'], '/no/such/image: No such file or directory'),
    (['import-diff', '/no/such/diff', '/v'], '/no/such/diff: No such file or directory'),
    (['import-diff', os.devnull, '/v'], 'not a curvefuse diff'),
    (['export-diff', '/missing@s', '-'], 'no such file or directory'),
    (['export-diff', '/missing@s', '/no/such/dir/x'], '/no/such/dir/x: No such file'),
    (['snap', 'ls', '/missing'], 'curvefuse snap ls: /missing: no such file or directory'),
    (['snap', 'protect', '/missing@s'], 'no such file or directory'),
    (['snap', 'rm', '/missing'], 'curvefuse snap rm: \'/missing\' names no snapshot'),
    (['clone', '/missing', '/c'], 'use VOLUME@SNAPSHOT'),
    (['clone', '/missing@s', '/c'], 'no such file or directory'),
    (['children', '/missing'], 'no such file or directory'),
    (['flatten', '/'], 'is a directory'),
])
def test_user_errors_are_one_line(cli, args: list[str], message: str) -> None:
    result = cli(*args, check=False)
    assert result.returncode == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert 'Traceback' not in result.stderr


def one_line_error(result: subprocess.CompletedProcess, message: str) -> None:
    """A user error: exit 1 and one line on stderr naming the problem, no traceback."""
    stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
    assert result.returncode == 1, stderr
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


def write(data_dir: Path, path: str, data: bytes, offset: int = 0) -> None:
    """Write into a volume as another program would (through the Python API, then closed)."""
    with curvefuse.open_store(str(data_dir)) as store, store.open(path, 'r+b') as vol:
        vol.pwrite(data, offset)


def test_snap_create_ls_protect_rm_rollback(cli, data_dir: Path) -> None:
    cli('create', '/v', '-s', '8K')
    write(data_dir, '/v', b'first')
    cli('snap', 'create', '/v@s1')
    cli('snap', 'create', '/v@s2', '--protect')
    one_line_error(cli('snap', 'create', '/v@s1', check=False), "already has a snapshot 's1'")
    one_line_error(cli('snap', 'create', '/v', check=False), 'use VOLUME@SNAPSHOT')
    rows = json.loads(cli('snap', 'ls', '/v', '--format', 'json').stdout)
    assert [(r['name'], r['protected'], r['clones'], r['length'], r['allocated'])
            for r in rows] == [('s1', False, 0, 8192, 4096), ('s2', True, 0, 8192, 4096)]
    assert [line.split()[:6] for line in cli('snap', 'ls', '/v').stdout.splitlines()] == \
        [['s1', '8.0', 'KiB', '4.0', 'KiB', 'no'], ['s2', '8.0', 'KiB', '4.0', 'KiB', 'yes']]
    one_line_error(cli('snap', 'rm', '/v@s2', check=False),
                   'curvefuse snap rm: /v@s2 is protected; unprotect it first, or use --force')
    cli('snap', 'unprotect', '/v@s2')
    cli('snap', 'protect', '/v@s2')
    cli('snap', 'rm', '/v@s2', '--force')
    write(data_dir, '/v', b'second')
    one_line_error(cli('snap', 'rollback', '/v@nothing', check=False), "no snapshot 'nothing'")
    cli('snap', 'rollback', '/v@s1')
    assert cli('export', '/v', '-', text=False).stdout == b'first'.ljust(8192, b'\0')
    cli('snap', 'rm', '/v@s1')
    assert json.loads(cli('snap', 'ls', '/v', '--format', 'json').stdout) == []


def test_clone_children_flatten_and_their_status(cli, data_dir: Path) -> None:
    cli('create', '/v', '-s', '64M')
    write(data_dir, '/v', b'gold' * 1024, 20 * MiB)
    cli('snap', 'create', '/v@s1')
    one_line_error(cli('clone', '/v@s1', '/c', check=False), 'not protected')
    cli('snap', 'protect', '/v@s1')
    cli('clone', '/v@s1', '/c')
    cli('clone', '/v@s1', '/ro', '--readonly')
    one_line_error(cli('clone', '/v@s1', '/c', check=False), '/c exists')
    statuses = {line.split()[-1]: line.split()[-3] for line in cli('ls', '-l').stdout.splitlines()}
    assert statuses == {'RecycleBin': 'ok', 'c': 'clone', 'ro': 'clone-ro', 'v': 'ok'}
    info = json.loads(cli('info', '/c', '--format', 'json').stdout)
    assert (info['status'], info['parent'], info['readonly'], info['progress']) == \
        ('clone', '/v@s1', False, 0)
    assert cli('children', '/v').stdout.split() == ['/c', '/v@s1', '/ro', '/v@s1']
    assert json.loads(cli('children', '/v@s1', '--format', 'json').stdout) == \
        [{'path': '/c', 'parent': '/v@s1'}, {'path': '/ro', 'parent': '/v@s1'}]
    one_line_error(cli('snap', 'unprotect', '/v@s1', check=False), 'has clones: /c, /ro')
    du = json.loads(cli('du', '--format', 'json').stdout)
    assert [(row['path'], row['allocated']) for row in du] == \
        [('/c', 0), ('/ro', 0), ('/v', 4096), ('/v@s1', 4096)]
    flattened = cli('flatten', '/c')  # not a terminal: no progress bar
    assert flattened.stdout == flattened.stderr == ''
    info = json.loads(cli('info', '/c', '--format', 'json').stdout)
    assert info['status'] == 'ok' and info['allocated'] == 4096 and 'parent' not in info
    assert cli('export', '/c', '-', text=False).stdout[20 * MiB:20 * MiB + 4096] == b'gold' * 1024
    assert cli('children', '/v').stdout.split() == ['/ro', '/v@s1']
    one_line_error(cli('flatten', '/missing', check=False), 'no such file')
    cli('rm', '/ro')
    cli('trash', 'purge')
    assert cli('children', '/v', '--format', 'json').stdout.strip() == '[]'


def volume_sha256(cli, spec: str, *options: str) -> str:
    return hashlib.sha256(cli(*options, 'export', spec, '-', text=False).stdout).hexdigest()


@pytest.fixture
def backup_chain(cli, data_dir: Path, tmp_path: Path) -> tuple[list[Path], dict[str, str]]:
    """A volume with snapshots s1, s2, s3 (data written, overwritten, zeroed, and a grow in
    between), exported as a full diff of s1 and diffs s1->s2 and s2->s3; returns the diff
    files and each snapshot's sha256."""
    cli('create', '/vol', '-s', '48M')
    write(data_dir, '/vol', os.urandom(3 * MiB), 5 * MiB)
    write(data_dir, '/vol', b'end', 48 * MiB - 3)
    cli('snap', 'create', '/vol@s1')
    write(data_dir, '/vol', os.urandom(5000), 6 * MiB + 1)
    write(data_dir, '/vol', bytes(MiB), 7 * MiB)
    cli('snap', 'create', '/vol@s2')
    cli('resize', '/vol', '-s', '64M')
    write(data_dir, '/vol', b'grown', 60 * MiB)
    write(data_dir, '/vol', os.urandom(4096), 0)
    cli('snap', 'create', '/vol@s3')
    diffs = [tmp_path / 'full-s1.diff', tmp_path / 's1-s2.diff', tmp_path / 's2-s3.diff']
    cli('export-diff', '/vol@s1', str(diffs[0]))
    cli('export-diff', '/vol@s2', '--from-snap', 's1', str(diffs[1]))
    diffs[2].write_bytes(cli('export-diff', '/vol@s3', '--from-snap', 's2', '-',
                             text=False).stdout)
    digests = {name: volume_sha256(cli, f'/vol@{name}') for name in ('s1', 's2', 's3')}
    return diffs, digests


def test_incremental_backup_chain_restores_the_right_bytes(cli, backup_chain,
                                                           tmp_path: Path) -> None:
    diffs, digests = backup_chain
    assert diffs[1].stat().st_size < 2 * MiB  # just what changed, not the whole volume
    cli('init', str(tmp_path / 'restored'))
    restore = ['-d', str(tmp_path / 'restored')]
    cli(*restore, 'import-diff', str(diffs[0]), '/copy')
    cli(*restore, 'import-diff', str(diffs[1]), '/copy')
    cli(*restore, 'import-diff', '-', '/copy', input=diffs[2].read_bytes())
    assert {name: volume_sha256(cli, f'/copy@{name}', *restore)
            for name in ('s1', 's2', 's3')} == digests
    assert volume_sha256(cli, '/copy', *restore) == digests['s3']
    assert json.loads(cli(*restore, 'info', '/copy', '--format', 'json').stdout)['length'] == \
        64 * MiB
    assert_store_clean(tmp_path / 'restored')


def test_a_damaged_or_misplaced_diff_is_refused_and_changes_nothing(
        cli, backup_chain, data_dir: Path, tmp_path: Path) -> None:
    diffs, digests = backup_chain
    cli('import-diff', str(diffs[0]), '/copy')
    good = diffs[1].read_bytes()
    for at, message in [(20, 'damaged (its header)'), (len(good) // 2, 'damaged'),
                        (len(good) - 40, 'its SHA-256 does not match')]:
        bad = bytearray(good)
        bad[at] ^= 0x40
        (tmp_path / 'bad.diff').write_bytes(bad)
        one_line_error(cli('import-diff', str(tmp_path / 'bad.diff'), '/copy', check=False),
                       message)
        assert volume_sha256(cli, '/copy') == digests['s1'], at
        assert [r['name'] for r in json.loads(cli('snap', 'ls', '/copy', '--format',
                                                  'json').stdout)] == ['s1']
    one_line_error(cli('import-diff', '-', '/copy', input=good[:-100], check=False),
                   'truncated')
    one_line_error(cli('import-diff', str(diffs[0]), '/copy', check=False), '/copy exists')
    one_line_error(cli('import-diff', str(diffs[2]), '/copy', check=False), "no snapshot 's2'")
    write(data_dir, '/copy', b'meddled')
    one_line_error(cli('import-diff', str(diffs[1]), '/copy', check=False),
                   "changed since 's1'; roll it back first")
    cli('snap', 'rollback', '/copy@s1')
    cli('import-diff', str(diffs[1]), '/copy')
    assert volume_sha256(cli, '/copy') == digests['s2']
    one_line_error(cli('export-diff', '/vol@s1', '--from-snap', 's2', '-', check=False),
                   "'s2' is not older than 's1'")
    one_line_error(cli('export-diff', '/vol', str(tmp_path / 'x.diff'), check=False),
                   'use VOLUME@SNAPSHOT')
    assert not (tmp_path / 'x.diff').exists()


def on_a_terminal(data_dir: Path, *args: str) -> str:
    """Run `curvefuse -d DATA_DIR ARGS` with stderr on a pseudo-terminal (100 columns); returns
    what it wrote there."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 100, 0, 0))
    try:
        proc = subprocess.Popen([sys.executable, '-m', 'curvefuse.cli', '-d', str(data_dir),
                                 *args], stdout=subprocess.DEVNULL, stderr=terminal)
    finally:
        os.close(terminal)
    shown = b''
    try:
        while chunk := os.read(controller, 4096):
            shown += chunk
    except OSError:  # EIO: the process closed the terminal
        pass
    finally:
        os.close(controller)
    assert proc.wait(timeout=60) in (0, 1), shown
    return shown.decode()


def test_progress_bars_on_a_terminal_only(cli, data_dir: Path) -> None:
    cli('create', '/v', '-s', '16M')
    write(data_dir, '/v', b'x' * 4096)
    cli('snap', 'create', '/v@s', '--protect')
    cli('clone', '/v@s', '/c1')
    cli('clone', '/v@s', '/c2')
    assert re.search(r'flatten: 100%\|█+\|', on_a_terminal(data_dir, 'flatten', '/c1'))
    assert on_a_terminal(data_dir, 'flatten', '/c2', '--no-progress') == ''
    assert re.search(r'fsck: 100%\|█+\| 3/3', on_a_terminal(data_dir, 'fsck', str(data_dir)))
    assert on_a_terminal(data_dir, 'fsck', str(data_dir), '--no-progress') == ''
    assert cli('fsck', str(data_dir)).stderr == ''  # not a terminal
    assert 'export-diff: 100%' in on_a_terminal(data_dir, 'export-diff', '/v@s', os.devnull)
