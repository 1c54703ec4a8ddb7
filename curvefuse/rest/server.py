"""Serving the REST app: the listening socket, hypercorn's trio worker, and `curvefuse serve`.

The socket is bound by `bind` before anything else runs, so a bad or busy address is a one-line
error at start (and, inside the mount daemon, before the mount is reported live); hypercorn then
takes it over through ``fd://``. HTTP parsing is hypercorn's (h11), not ours.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from ..engine import Engine
from ..errors import InvalidArgumentError
from . import DEFAULT_LISTEN, DEFAULT_PORT, SERVICE_PATH
from .app import RestApp

log = logging.getLogger(__name__)

READ_TIMEOUT = 30  # seconds a connection may take to send a request before it is dropped
# Request line and headers: room for two 4 KiB paths percent-encoded (12 KiB each) and the
# rest; anything longer is answered 431 by h11 without reaching the app.
MAX_REQUEST_HEAD = 64 * 1024
GRACEFUL_TIMEOUT = 10  # seconds requests in flight get to finish at shutdown


class ListenError(InvalidArgumentError):
    """The address to listen on is malformed, or cannot be bound (in use, not ours)."""


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT, [IPV6]:PORT, or a host alone (port 5555). Port 0 picks a free port."""
    if text.startswith('['):
        host, bracket, rest = text[1:].partition(']')
        port = rest[1:] if rest.startswith(':') else None if bracket and not rest else ''
    elif text.count(':') == 1:
        host, port = text.split(':')
    else:  # a name or IPv4 address alone, or a bare IPv6 address
        host, port = text, None
    port = str(DEFAULT_PORT) if port is None else port
    if not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ListenError(f'cannot listen on {text!r}: use HOST:PORT, e.g. {DEFAULT_LISTEN}')
    return host, int(port)


def bind(listen: str) -> socket.socket:
    """A listening TCP socket on listen (see `parse_listen`)."""
    host, port = parse_listen(listen)
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ListenError(f'cannot listen on {listen}: {reason}') from None


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f'http://[{host}]:{port}' if ':' in host else f'http://{host}:{port}'


async def serve(engine: Engine, sock: socket.socket,
                shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
                *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the REST API on sock (bound by `bind`; this takes it over) until shutdown_trigger
    returns or the surrounding scope is cancelled. Requests in flight get GRACEFUL_TIMEOUT."""
    config = Config()
    url = url_of(sock)
    config.bind = [f'fd://{sock.detach()}']
    config.errorlog = logging.getLogger('curvefuse.rest.http')
    config.accesslog = None  # the app logs every request itself, with its RequestId
    config.read_timeout = READ_TIMEOUT
    config.h11_max_incomplete_size = MAX_REQUEST_HEAD
    config.graceful_timeout = GRACEFUL_TIMEOUT
    config.include_server_header = False
    log.info('REST API for %s listening on %s%s', engine.data_dir, url, SERVICE_PATH)
    await hypercorn_serve(RestApp(engine), config, shutdown_trigger=shutdown_trigger,
                          task_status=task_status)


def run_server(data_dir: str, listen: str = DEFAULT_LISTEN) -> None:
    """`curvefuse serve`: serve the store at data_dir in the foreground until SIGTERM or
    SIGINT, then finish the requests in flight and close the store."""
    sock = bind(listen)
    try:
        engine = Engine.open(data_dir)
    except BaseException:
        sock.close()
        raise
    try:
        engine.resume_flattens()  # flattens whose process died: this server takes them up
        trio.run(_serve_until_signalled, engine, sock)
    finally:
        engine.close()  # a flatten still running stops after its chunk; the next start resumes
    log.info('REST API for %s stopped', data_dir)


async def _serve_until_signalled(engine: Engine, sock: socket.socket) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async def signalled() -> None:
            async for signum in signals:
                log.info('%s: stopping the REST API', signal.Signals(signum).name)
                return

        await serve(engine, sock, signalled)
