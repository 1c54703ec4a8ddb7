"""The mount daemon: lock the store, check it if the last daemon died, mount, serve, clean up.

Under systemd (Type=notify) it sends READY=1 once the mount is live and STOPPING=1 when it starts
to unmount; see systemd/curvefuse@.service.

`curvefuse mount` without --foreground starts this same code in a new session and returns once
the child reports the mount live (or prints the child's error). Files in DATA_DIR:

``mount.lock``   flock()ed by the daemon for its lifetime; holds "pid mountpoint". A second daemon
                 on the same store is refused, and `curvefuse umount` learns the pid to wait for.
``mount.dirty``  exists while a daemon runs; found at start, it means the last one died, so the
                 store is checked (and leaks freed) before mounting again.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

import pyfuse3
import trio

from ..engine import Engine
from ..engine.fsck import fsck
from ..engine.volumes import proc_stat
from ..errors import BusyError, CorruptionError, InvalidArgumentError
from .operations import CurveOperations

log = logging.getLogger(__name__)

LOCK_NAME = 'mount.lock'
DIRTY_NAME = 'mount.dirty'
PR_SET_IO_FLUSHER = 57


@dataclass
class MountOptions:
    """What -o accepts. Unknown options are an error, not silently dropped."""

    read_only: bool = False
    allow_other: bool = False
    allow_shrink: bool = False
    rest: str | None = None  # where the daemon also serves the REST API (HOST:PORT)
    extra: set[str] = field(default_factory=set)

    @classmethod
    def parse(cls, text: str | None) -> 'MountOptions':
        options = cls()
        for item in filter(None, (text or '').split(',')):
            if item == 'ro':
                options.read_only = True
            elif item == 'rw':
                options.read_only = False
            elif item == 'allow_other':
                options.allow_other = True
            elif item == 'allow_shrink':
                options.allow_shrink = True
            elif item == 'rest' or item.startswith('rest='):
                from ..rest import DEFAULT_LISTEN
                from ..rest.server import parse_listen

                options.rest = item[len('rest='):] or DEFAULT_LISTEN
                parse_listen(options.rest)  # a typo fails here, before daemonizing
            elif item in ('default_permissions', 'noatime', 'nodev', 'nosuid', 'dev', 'suid',
                          'exec', 'noexec', 'auto', 'noauto', 'nofail', '_netdev', 'user',
                          'nouser', 'defaults', 'atime', 'relatime'):
                options.extra.add(item)  # handled by mount(8) or harmless to pass
            elif not item.startswith('x-'):  # x-systemd.* and friends belong to others
                raise InvalidArgumentError(f'unknown mount option {item!r}')
        if options.read_only and options.rest:
            raise InvalidArgumentError('a read-only mount cannot serve the REST API, whose '
                                       'actions change the store; run "curvefuse serve" apart')
        return options

    def fuse_options(self, data_dir: str) -> set[str]:
        opts = set(pyfuse3.default_options) | {f'fsname={data_dir}', 'subtype=curvefuse'}
        opts |= {o for o in self.extra if o in ('noatime', 'nodev', 'nosuid', 'noexec')}
        if self.read_only:
            opts.add('ro')
        if self.allow_other:
            opts.add('allow_other')
        return opts


class _LateReplyFilter(logging.Filter):
    """pyfuse3 logs an ERROR when a reply finds the kernel no longer waiting (ENOENT): a
    RELEASE answered just after the unmount, or an interrupted request. Nothing was lost (the
    close had flushed), so it is worth a line at INFO, not an alarm."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and \
                'failed with No such file or directory' in record.getMessage():
            record.levelno, record.levelname = logging.INFO, 'INFO'
        return True


def _lock_store(data_dir: str, mountpoint: str, stack: ExitStack) -> None:
    path = os.path.join(data_dir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    stack.callback(os.close, fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors='replace').split(maxsplit=1)
        who = f' by pid {holder[0]} at {holder[1]}' if len(holder) == 2 else ''
        raise BusyError(f'{data_dir} is already mounted{who}') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'{os.getpid()} {mountpoint}'.encode(), 0)


def mount_holder(data_dir: str) -> int | None:
    """The pid of the daemon serving data_dir, if one is running."""
    path = os.path.join(data_dir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            content = os.pread(fd, 4096, 0).split()
            return int(content[0]) if content else None
        return None
    finally:
        os.close(fd)


def _check_after_unclean_stop(engine: Engine) -> None:
    report = fsck(engine, repair=True)
    log.warning('the previous mount of %s did not stop cleanly; fsck: %s', engine.data_dir,
                report.summary())
    if report.corruption:
        raise CorruptionError(f'{engine.data_dir} is corrupt ({len(report.corruption)} '
                              'problems): run "curvefuse fsck" and repair it before mounting')


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) how we are doing, if it is listening: the datagram protocol
    of sd_notify(3), to the socket named by $NOTIFY_SOCKET ('@' means the abstract namespace)."""
    address = os.environ.get('NOTIFY_SOCKET')
    if not address:
        return
    if address.startswith('@'):
        address = '\0' + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as exc:
            log.warning('could not notify systemd at %s: %s', address, exc)


def _become_io_flusher() -> None:
    """A loop device on top of this mount must not deadlock us under memory pressure."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0:
        log.warning('could not mark the daemon an I/O flusher: %s',
                    os.strerror(ctypes.get_errno()))


async def _serve(ops: CurveOperations, rest_sock: socket.socket | None = None) -> None:
    async with trio.open_nursery() as nursery:
        if rest_sock is not None:
            from ..rest.server import serve as serve_rest

            await nursery.start(serve_rest, ops.engine, rest_sock)
        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info('%s: unmounting', signal.Signals(signum).name)
                    pyfuse3.terminate()
                    return

        nursery.start_soon(stop_on_signal)
        await pyfuse3.main(min_tasks=2)
        nursery.cancel_scope.cancel()


def run_foreground(data_dir: str, mountpoint: str, options: MountOptions,
                   ready_fd: int | None = None) -> None:
    """Mount and serve until unmounted or signalled; flush everything before returning."""
    data_dir = os.path.realpath(data_dir)
    mountpoint = os.path.realpath(mountpoint)
    try:
        mode = os.stat(mountpoint).st_mode
    except OSError as exc:  # ENOTCONN: a crashed FUSE mount is still there
        hint = f' (a crashed mount? run "fusermount3 -u {mountpoint}")' if exc.errno == \
            errno.ENOTCONN else ''
        raise InvalidArgumentError(f'mount point {mountpoint}: {exc.strerror}{hint}') from None
    if not stat.S_ISDIR(mode):
        raise InvalidArgumentError(f'mount point {mountpoint} is not a directory')
    late_replies = _LateReplyFilter()
    logging.getLogger('pyfuse3').addFilter(late_replies)
    with ExitStack() as stack:
        stack.callback(logging.getLogger('pyfuse3').removeFilter, late_replies)
        engine = Engine.open(data_dir)
        stack.callback(engine.close)
        _lock_store(data_dir, mountpoint, stack)
        dirty = os.path.join(data_dir, DIRTY_NAME)
        if os.path.exists(dirty):
            _check_after_unclean_stop(engine)
        rest_sock = _bind_rest(options.rest, stack) if options.rest else None
        ops = CurveOperations(engine, read_only=options.read_only,
                              allow_shrink=options.allow_shrink)
        pyfuse3.init(ops, mountpoint, options.fuse_options(data_dir))
        unmounted = False
        try:
            with open(dirty, 'w') as fh:
                fh.write(f'{os.getpid()}\n')
            _become_io_flusher()
            log.info('mounted %s at %s', data_dir, mountpoint)
            if not options.read_only:  # a read-only mount writes nothing, flattens included
                engine.resume_flattens()
            if ready_fd is not None:
                os.write(ready_fd, b'ok\n')
                os.close(ready_fd)
                _detach_stdio()
            sd_notify(f'READY=1\nMAINPID={os.getpid()}\nSTATUS=Serving {data_dir} at {mountpoint}')
            trio.run(_serve, ops, rest_sock)
            sd_notify('STOPPING=1\nSTATUS=Flushing and unmounting')
            # Not os.path.ismount: a stat of our own mount would wait forever for ourselves.
            unmounted = not any(dst == mountpoint for _src, dst, _kind in _mounts())
        finally:
            ops.close_all()
            pyfuse3.close(unmount=not unmounted)
        os.unlink(dirty)
        log.info('unmounted %s cleanly', mountpoint)


def _bind_rest(listen: str, stack: ExitStack) -> socket.socket:
    """The REST API's socket, bound before the mount is reported live (a busy port is the
    mount's error); its requests are logged at INFO, each with its RequestId."""
    from ..rest.server import bind

    sock = bind(listen)
    stack.callback(sock.close)  # a no-op once the server has taken it over
    rest_log = logging.getLogger('curvefuse.rest')
    if rest_log.getEffectiveLevel() > logging.INFO:
        rest_log.setLevel(logging.INFO)
    return sock


def _detach_stdio() -> None:
    """The starter stops listening once the mount is live: nothing may write to its pipe."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def start_daemon(argv: list[str], timeout: float = 60) -> None:
    """Run `curvefuse mount --foreground` detached; return once it reports the mount live."""
    read_fd, write_fd = os.pipe()
    with open(os.devnull, 'r+b') as null:
        proc = subprocess.Popen([sys.executable, '-m', 'curvefuse.cli', *argv, '--foreground',
                                 '--ready-fd', str(write_fd)],
                                stdin=null, stdout=null, stderr=subprocess.PIPE,
                                pass_fds=(write_fd,), start_new_session=True)
    os.close(write_fd)
    with os.fdopen(read_fd, 'rb') as ready:
        answer = ready.readline()
    if answer == b'ok\n':
        proc.stderr.close()  # the daemon logs to its log file from now on
        return
    proc.wait(timeout)
    lines = proc.stderr.read().decode(errors='replace').strip().splitlines()
    if not lines:
        raise MountError(f'the daemon exited with {proc.returncode}')
    prefix = 'curvefuse mount: '  # the daemon's own one-line error; ours says it again
    raise MountError(lines[-1][len(prefix):] if lines[-1].startswith(prefix) else lines[-1])


class MountError(Exception):
    """The daemon could not mount; its one-line reason."""


def unmount(mountpoint: str, timeout: float = 120) -> None:
    """Unmount a curvefuse mount and wait until its daemon has flushed and exited."""
    mountpoint = os.path.realpath(mountpoint)
    data_dir = next((src for src, dst, kind in _mounts()
                     if dst == mountpoint and kind == 'fuse.curvefuse'), None)
    if data_dir is None:
        raise InvalidArgumentError(f'{mountpoint} is not a curvefuse mount')
    pid = mount_holder(data_dir)
    result = subprocess.run(['fusermount3', '-u', mountpoint], capture_output=True, text=True)
    if result.returncode != 0:
        raise BusyError(result.stderr.strip() or f'fusermount3 -u {mountpoint} failed')
    deadline = time.monotonic() + timeout
    while pid is not None and process_running(pid):
        if time.monotonic() > deadline:
            raise BusyError(f'daemon {pid} still running {timeout:.0f} s after the unmount')
        time.sleep(0.05)


def process_running(pid: int) -> bool:
    """Alive and not a zombie: an exited daemon waiting to be reaped has finished its work."""
    fields = proc_stat(pid)
    return fields is not None and fields[0] != b'Z'


def _mounts() -> list[tuple[str, str, str]]:
    def unescape(field: str) -> str:
        return field.encode().decode('unicode_escape')

    with open('/proc/mounts') as fh:
        return [(unescape(parts[0]), unescape(parts[1]), parts[2])
                for parts in (line.split() for line in fh) if len(parts) >= 3]


__all__ = ['MountError', 'MountOptions', 'mount_holder', 'process_running', 'run_foreground',
           'start_daemon', 'unmount']
