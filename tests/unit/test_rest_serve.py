"""`curvefuse serve` as an operator runs it: a real process on a loopback port, real HTTP, signals,
one-line errors, and a bounded flood of concurrent requests it must survive."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import curvefuse
from curvefuse.cli import build_parser

from ..rest_helpers import RestClient, ServeProcess, UUID_RE
from ..util import log_problems

GiB = 2**30



def curvefuse_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'curvefuse.cli', *args], capture_output=True,
                          text=True, timeout=20)


def test_serve_answers_logs_and_stops_on_sigterm(served: ServeProcess) -> None:
    client = served.start()
    assert client.base_url.startswith('http://127.0.0.1:')
    ids = [client.ok('CreateFile', File='/v', Size=1)['RequestId'],
           client.fails(-5, 'ListFile')['RequestId']]
    assert client.ok('ListFile', File='/v')['FileInfos'][0]['FileLength'] == GiB
    served.stop()
    log = served.log.read_text()
    assert all(log.count(request_id) == 1 for request_id in ids)
    assert 'SIGTERM: stopping the REST API' in log
    with curvefuse.open_store(str(served.data_dir)) as store:
        assert store.stat('/v').owner == 'curve'


def test_serve_stops_on_sigint(served: ServeProcess) -> None:
    served.start().ok('ListFile', Dir='/')
    served.stop(signal.SIGINT)


def test_serve_listens_on_loopback_port_5555_by_default() -> None:
    options = build_parser().parse_args(['serve', '/some/store'])
    assert (options.data_dir, options.listen) == ('/some/store', '127.0.0.1:5555')


def test_serve_refuses_a_busy_port_in_one_line(served: ServeProcess) -> None:
    with socket.create_server(('127.0.0.1', 0)) as taken:
        port = taken.getsockname()[1]
        result = curvefuse_cli('serve', str(served.data_dir), '--listen', f'127.0.0.1:{port}')
    assert result.returncode == 1
    assert result.stderr == (f'curvefuse serve: cannot listen on 127.0.0.1:{port}: '
                             'Address already in use\n')


@pytest.mark.parametrize('listen', ['127.0.0.1:x', '127.0.0.1:70000', ':5555', '[::1',
                                    'no.such.host.invalid:5555'])
def test_serve_refuses_a_bad_address_in_one_line(served: ServeProcess, listen: str) -> None:
    result = curvefuse_cli('serve', str(served.data_dir), '--listen', listen)
    assert result.returncode == 1
    assert result.stderr.startswith('curvefuse serve: cannot listen on ')
    assert len(result.stderr.splitlines()) == 1


def test_serve_refuses_a_directory_that_is_not_a_store(tmp_path: Path) -> None:
    result = curvefuse_cli('serve', str(tmp_path), '--listen', '127.0.0.1:0')
    assert result.returncode == 1
    assert result.stderr == f'curvefuse serve: {tmp_path} is not a curvefuse store\n'


def test_serve_survives_a_bounded_flood(served: ServeProcess) -> None:
    """300 idle connections held open plus 40 clients sending 25 requests each at once: every
    request is answered correctly, and afterwards the server answers at once."""
    client = served.start()
    client.ok('CreateFile', File='/v', Size=1)
    host, port = client.base_url[len('http://'):].split(':')
    idle = [socket.create_connection((host, int(port))) for _ in range(300)]
    for sock in idle[::2]:
        sock.sendall(b'GET /SnapshotCloneService?Action=ListFile')  # never finished
    errors: list[str] = []

    def flood(worker: int) -> None:
        for i in range(25):
            try:
                if i % 3 == 0:
                    client.fails(-5, 'ListFile', Dir='/', Limit='many')
                elif i % 3 == 1:
                    client.ok('CreateFile', File=f'/w{worker}', Size=1)
                else:
                    assert client.ok('ListFile', File='/v')['TotalCount'] == 1
            except Exception as exc:  # collected: a thread cannot fail the test itself
                errors.append(f'{worker}/{i}: {exc!r}')

    threads = [threading.Thread(target=flood, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors[:5]
    started = time.monotonic()
    body = client.ok('ListFile', Dir='/', Limit=100)
    assert time.monotonic() - started < 2
    assert body['TotalCount'] == 1 + 1 + 40  # RecycleBin, /v, /w0../w39
    for sock in idle:
        sock.close()
    assert UUID_RE.fullmatch(RestClient(client.base_url).ok('ListFile', Dir='/')['RequestId'])
    served.stop()
    assert served.log.read_text().count(' -> ') == 1 + 40 * 25 + 2  # the idle ones never asked


# -- inside the mount daemon (the mount itself is tested in tests/integration/test_rest.py) ------

def test_mount_option_rest_names_where_the_daemon_serves() -> None:
    from curvefuse.fuse.mount import MountOptions

    assert MountOptions.parse('allow_other').rest is None
    assert MountOptions.parse('rest').rest == '127.0.0.1:5555'
    options = MountOptions.parse('allow_other,rest=[::1]:6000')
    assert options.rest == '[::1]:6000'
    assert not any('rest' in opt or '6000' in opt for opt in options.fuse_options('/store'))


@pytest.mark.parametrize('options,message', [
    ('rest=127.0.0.1:x', "cannot listen on '127.0.0.1:x'"),
    ('ro,rest', 'a read-only mount cannot serve the REST API'),
])
def test_mount_refuses_bad_rest_options_before_starting(tmp_path: Path, options: str,
                                                        message: str) -> None:
    result = curvefuse_cli('mount', str(tmp_path / 'store'), str(tmp_path), '-o', options)
    assert result.returncode == 1
    assert result.stderr.startswith(f'curvefuse mount: {message}')
    assert len(result.stderr.splitlines()) == 1


def raw_exchange(client: RestClient, request: bytes) -> bytes:
    """Send bytes as they are (not necessarily HTTP) and read the whole answer."""
    host, port = client.base_url[len('http://'):].split(':')
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        answer = b''
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_what_is_not_http_is_refused_by_the_http_stack(served: ServeProcess) -> None:
    """Garbage, a non-UTF-8 request line, an oversized head: h11 answers 400 or 431 with no
    body (the app never sees them), logs no error, and the server goes on."""
    client = served.start()
    long_path = '/' + '/'.join(['ü' * 127] * 16)  # 4080 bytes, 12 KiB percent-encoded
    client.ok('ListFile', Dir='/')
    assert raw_exchange(client, b'GARBAGE\r\n\r\n').startswith(b'HTTP/1.1 400 ')
    assert raw_exchange(client, b'GET /SnapshotCloneService?Dir=/\xff HTTP/1.1\r\n'
                        b'Host: x\r\n\r\n').startswith(b'HTTP/1.1 400 ')
    head = b'GET /SnapshotCloneService?x=' + b'a' * 200000 + b' HTTP/1.1\r\nHost: x\r\n\r\n'
    assert raw_exchange(client, head).startswith(b'HTTP/1.1 431 ')
    # a real request with two paths near the limit still fits
    client.fails(-8, 'ListFile', File=long_path, Dir=long_path)
    answer = raw_exchange(client, b'GET /SnapshotCloneService?Action=ListFile&Version=1&User=u'
                          b'&Dir=/ HTTP/1.0\r\n\r\n')
    assert answer.startswith(b'HTTP/1.1 200 ') and b'"Code": "0"' in answer
    served.stop()


def test_a_flatten_stopped_with_its_server_resumes_with_the_next(tmp_path: Path,
                                                                 data_dir: Path) -> None:
    """A 64 GiB clone in 1 MiB chunks takes tens of seconds to flatten: the server is stopped
    halfway, and the next server on the store takes the flatten up where it was."""
    with curvefuse.open_store(str(data_dir), create=True, chunk_size=2**20):
        pass
    servers = [ServeProcess(data_dir, tmp_path / f'serve{n}.log') for n in range(2)]
    try:
        client = servers[0].start()
        client.ok('CreateFile', File='/src', Size=64)
        client.ok('CreateSnapshot', File='/src', Name='s')
        client.ok('Clone', File='/src', Name='s', Destination='/c')
        client.ok('Flatten', File='/c')
        before = progress_of(client, '/c', above=0)
        servers[0].stop()

        client = servers[1].start()
        assert 'resuming the flatten of volume' in servers[1].log.read_text()
        [info] = client.ok('ListFile', File='/c')['FileInfos']
        assert info['Status'] == 1 and info['Progress'] >= before[1]  # not from the start
        assert progress_of(client, '/c', above=info['Progress'])[0] == 1
        servers[1].stop()
    finally:
        for server in servers:
            server.kill()
    assert not any(log_problems(server.log) for server in servers)


def progress_of(client: RestClient, path: str, above: int) -> tuple[int, int]:
    """(Status, Progress) of the clone at path once its progress is above `above`."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        [info] = client.ok('ListFile', File=path)['FileInfos']
        if info['Progress'] > above:
            return info['Status'], info['Progress']
        time.sleep(0.05)
    raise AssertionError(f'{path}: progress stuck at {info["Progress"]}')
