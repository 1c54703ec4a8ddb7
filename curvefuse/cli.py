"""The `curvefuse` command: store administration (init, fsck), the mount (mount, umount) and
rbd-like volume commands (see `curvefuse.commands`).

`curvefuse SOURCE MOUNTPOINT -o OPTIONS` (no command word) means `curvefuse mount`: that is how
mount(8), through Debian's mount.fuse3, runs a "fuse.curvefuse" mount or fstab line.

Exit codes: 0 success; 1 a user error (one line on stderr, no traceback) or an fsck that could
not run; 2 usage errors (argparse) and, for fsck, corruption found; 3 fsck found leaks only
(the codes of ``qemu-img check``). Volume commands act on the store named by -d/--data-dir
(default $CURVEFUSE_DATA_DIR or /var/lib/curvefuse), with or without a mount running.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys

from . import DEFAULT_DATA_DIR, __version__, commands
from .api import open_store, parse_size
from .engine import DEFAULT_CHUNK_SIZE, DEFAULT_ROOT_PASSWORD
from .errors import EngineError
from .fuse.mount import MountError
from .rest import DEFAULT_LISTEN

log = logging.getLogger('curvefuse')

EXIT_USER_ERROR = 1
COMMANDS = ('init', 'fsck', 'mount', 'umount', 'serve', 'create', 'ls', 'info', 'resize', 'rm',
            'mv', 'mkdir', 'rmdir', 'du', 'trash', 'import', 'export', 'snap', 'clone', 'flatten',
            'children', 'export-diff', 'import-diff')


def _init(args: argparse.Namespace) -> int:
    with open_store(args.data_dir, create=True, chunk_size=parse_size(args.chunk_size),
                    root_password=args.root_password) as store:
        print(f'store {args.data_dir}: cluster id {store.cluster_id}, '
              f'chunk size {store.chunk_size} bytes')
    return 0


def _fsck(args: argparse.Namespace) -> int:
    with open_store(args.data_dir) as store, \
            commands.progress_bar(args, None, 'fsck', unit=' mappings') as bar:
        report = store.fsck(repair=args.repair, progress=commands.follow(bar))
    for line in report.corruption:
        print(f'corruption: {line}')
    for line in report.leaks:
        print(f'leak: {line}')
    for line in report.repaired:
        print(f'repaired: {line}')
    print(report.summary())
    return report.exit_code


def _mount(args: argparse.Namespace) -> int:
    from .fuse.mount import MountOptions, run_foreground, start_daemon

    options = MountOptions.parse(args.o)  # refuse bad options before daemonizing
    if not args.foreground:
        argv = ['mount', args.data_dir, args.mountpoint, '--log',
                args.log or os.path.join(os.path.realpath(args.data_dir), 'mount.log')]
        argv += ['-o', args.o] if args.o else []
        argv += ['--debug'] if args.debug else []
        start_daemon(argv)
        return 0
    _log_to(args.log)
    run_foreground(args.data_dir, args.mountpoint, options, args.ready_fd)
    return 0


def _log_to(path: str | None) -> None:
    """A long-running process logs to path (with times and pids) if given, else to stderr;
    kill -USR1 <pid> writes every thread's stack there too: for hangs."""
    if path:
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter('%(asctime)s %(process)d %(levelname)s '
                                               '%(name)s: %(message)s'))
        logging.getLogger().handlers[:] = [handler]
        faulthandler.register(signal.SIGUSR1, file=handler.stream, all_threads=True)
    else:
        faulthandler.register(signal.SIGUSR1, all_threads=True)


def _serve(args: argparse.Namespace) -> int:
    from .rest.server import run_server

    _log_to(args.log)
    if not args.debug:
        logging.getLogger('curvefuse').setLevel(logging.INFO)  # every request, with its id
    run_server(args.data_dir, args.listen)
    return 0


def _umount(args: argparse.Namespace) -> int:
    from .fuse.mount import unmount

    unmount(args.mountpoint)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='curvefuse', description='CurveBS-style block volumes on one machine.')
    parser.add_argument('--version', action='version', version=f'curvefuse {__version__}')
    parser.add_argument('--debug', action='store_true', help='log debug messages to stderr')
    parser.add_argument('-d', '--data-dir', dest='store', default=DEFAULT_DATA_DIR,
                        metavar='DATA_DIR', help='the store for volume commands '
                        f'(default {DEFAULT_DATA_DIR})')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    init = sub.add_parser('init', help='create a store (a no-op for an existing one)')
    init.add_argument('data_dir', nargs='?', default=DEFAULT_DATA_DIR, metavar='DATA_DIR')
    init.add_argument('--chunk-size', default=str(DEFAULT_CHUNK_SIZE),
                      help='bytes per chunk file, a power of two (default 16M)')
    init.add_argument('--root-password', default=DEFAULT_ROOT_PASSWORD,
                      help="Curve's root password for this store (default Curve's)")
    init.set_defaults(func=_init)

    check = sub.add_parser('fsck', help='check a store; exit 0 clean, 2 corrupt, 3 leaks only')
    check.add_argument('data_dir', nargs='?', default=DEFAULT_DATA_DIR, metavar='DATA_DIR')
    check.add_argument('--repair', action='store_true', help='free leaked space')
    check.add_argument('--no-progress', action='store_true', help='no progress bar')
    check.set_defaults(func=_fsck)

    mount = sub.add_parser('mount', help='mount a store as a file tree (returns once live)')
    mount.add_argument('data_dir', metavar='DATA_DIR')
    mount.add_argument('mountpoint', metavar='MOUNTPOINT')
    mount.add_argument('-o', metavar='OPTIONS',
                       help='comma-separated: ro, allow_other, allow_shrink (see README)')
    mount.add_argument('-f', '--foreground', action='store_true',
                       help='stay attached; log to stderr')
    mount.add_argument('--debug', action='store_true', default=argparse.SUPPRESS,
                       help='log debug messages')
    mount.add_argument('--log', help='log file of the daemon (default DATA_DIR/mount.log)')
    mount.add_argument('--ready-fd', type=int, help=argparse.SUPPRESS)
    mount.set_defaults(func=_mount)

    umount = sub.add_parser('umount', help='unmount and wait until the daemon has flushed')
    umount.add_argument('mountpoint', metavar='MOUNTPOINT')
    umount.set_defaults(func=_umount)

    serve = sub.add_parser('serve', help="serve Curve's SnapshotCloneService REST API "
                           '(in the foreground)')
    serve.add_argument('data_dir', nargs='?', default=DEFAULT_DATA_DIR, metavar='DATA_DIR')
    serve.add_argument('--listen', default=DEFAULT_LISTEN, metavar='HOST:PORT',
                       help=f'address to listen on (default {DEFAULT_LISTEN}, loopback only; '
                       'port 0 picks a free one)')
    serve.add_argument('--debug', action='store_true', default=argparse.SUPPRESS,
                       help='log debug messages')
    serve.add_argument('--log', help='log file (default: stderr)')
    serve.set_defaults(func=_serve)
    _add_volume_commands(sub)
    return parser


def _add_volume_commands(sub: argparse._SubParsersAction) -> None:
    def command(name: str, func, help_text: str, parent=sub) -> argparse.ArgumentParser:
        parser = parent.add_parser(name, help=help_text)
        parser.set_defaults(func=_on_store(func))
        return parser

    def listing(parser: argparse.ArgumentParser) -> None:
        parser.add_argument('--format', choices=('plain', 'json'), default='plain')

    def progress(parser: argparse.ArgumentParser) -> None:
        parser.add_argument('--no-progress', action='store_true', help='no progress bar')

    p = command('create', commands.create, 'create a thin volume')
    p.add_argument('path')
    p.add_argument('-s', '--size', required=True, help='e.g. 10G, 512M (a multiple of 4 KiB)')
    p = command('ls', commands.ls, 'list a directory')
    p.add_argument('path', nargs='?', default='/')
    p.add_argument('-l', '--long', action='store_true',
                   help='type, length, allocated, owner, status, modified, name')
    listing(p)
    p = command('info', commands.info, 'show everything about one entry')
    p.add_argument('path')
    listing(p)
    p = command('resize', commands.resize, 'grow a volume (shrink with --allow-shrink)')
    p.add_argument('path')
    p.add_argument('-s', '--size', required=True)
    p.add_argument('--allow-shrink', action='store_true', help='cut the volume; data is lost')
    p = command('rm', commands.rm, 'move a volume to the recycle bin')
    p.add_argument('path')
    p = command('mv', commands.mv, 'rename or move')
    p.add_argument('old')
    p.add_argument('new')
    p = command('mkdir', commands.mkdir, 'create a directory')
    p.add_argument('path')
    p = command('rmdir', commands.rmdir, 'remove an empty directory')
    p.add_argument('path')
    p = command('du', commands.du, 'allocated and provisioned bytes of volumes')
    p.add_argument('path', nargs='?', default='/')
    listing(p)
    trash = sub.add_parser('trash', help='the recycle bin: ls, restore, purge')
    trash_sub = trash.add_subparsers(dest='trash_command', required=True, metavar='ACTION')
    p = command('ls', commands.trash_ls, 'list the recycle bin', trash_sub)
    listing(p)
    p = command('restore', commands.trash_restore, 'bring a volume back', trash_sub)
    p.add_argument('entry', help='its name in the recycle bin, or its id')
    p.add_argument('--to', help='where to (default: where it was)')
    p = command('purge', commands.trash_purge, 'destroy recycled volumes, freeing space',
                trash_sub)
    p.add_argument('--expired-before', metavar='AGE_OR_DATE',
                   help='only those deleted before: 7d, 12h, 30m ago or an ISO date')
    p = command('import', commands.import_, 'a raw image (file or -) into a new volume')
    p.add_argument('source')
    p.add_argument('path')
    p.add_argument('-s', '--size', help='bytes to read (required from stdin)')
    progress(p)
    p = command('export', commands.export, 'a volume as a raw image (file or -)')
    p.add_argument('path')
    p.add_argument('dest')
    progress(p)
    _add_snapshot_commands(sub, command, listing, progress)


def _add_snapshot_commands(sub: argparse._SubParsersAction, command, listing, progress) -> None:
    snap = sub.add_parser('snap', help='snapshots: create, ls, rm, protect, unprotect, rollback')
    snap_sub = snap.add_subparsers(dest='snap_command', required=True, metavar='ACTION')
    spec = {'metavar': 'VOLUME@SNAPSHOT'}
    p = command('create', commands.snap_create, 'freeze a volume (instant)', snap_sub)
    p.add_argument('snapshot', **spec)
    p.add_argument('--protect', action='store_true', help='protect it at once (for clones)')
    p = command('ls', commands.snap_ls, "a volume's snapshots, oldest first", snap_sub)
    p.add_argument('path', metavar='VOLUME')
    listing(p)
    p = command('rm', commands.snap_rm, 'delete a snapshot, freeing what only it used',
                snap_sub)
    p.add_argument('snapshot', **spec)
    p.add_argument('--force', action='store_true', help='unprotect it first')
    p = command('protect', commands.snap_protect, 'allow clones; forbid deletion', snap_sub)
    p.add_argument('snapshot', **spec)
    p = command('unprotect', commands.snap_unprotect, 'undo protect (not while it has clones)',
                snap_sub)
    p.add_argument('snapshot', **spec)
    p = command('rollback', commands.snap_rollback,
                'give the volume the snapshot\'s content again (not while open)', snap_sub)
    p.add_argument('snapshot', **spec)
    p = command('clone', commands.clone, 'a new volume from a protected snapshot (instant)')
    p.add_argument('snapshot', **spec)
    p.add_argument('dest', metavar='DEST')
    p.add_argument('--readonly', action='store_true', help='the clone refuses writes')
    p = command('flatten', commands.flatten, 'copy what a clone still reads from its source')
    p.add_argument('path', metavar='CLONE')
    progress(p)
    p = command('children', commands.children, 'the clones of a volume\'s snapshots')
    p.add_argument('path', metavar='VOLUME[@SNAPSHOT]')
    listing(p)
    p = command('export-diff', commands.export_diff,
                'what changed between two snapshots, for incremental backups (file or -)')
    p.add_argument('snapshot', **spec)
    p.add_argument('dest', metavar='FILE')
    p.add_argument('--from-snap', metavar='SNAPSHOT',
                   help='the older snapshot (default: everything, from nothing)')
    progress(p)
    p = command('import-diff', commands.import_diff,
                'apply an export-diff (file or -) to a volume and take its snapshot there')
    p.add_argument('source', metavar='FILE')
    p.add_argument('path', metavar='VOLUME')
    progress(p)


def _on_store(func):
    """Run a volume command on the store named by --data-dir."""
    def run(args: argparse.Namespace) -> int:
        with open_store(args.store) as store:
            return func(args, store)
    return run


def main(args: list[str] | None = None) -> int:
    args = sys.argv[1:] if args is None else args
    parser = build_parser()
    if args and args[0] not in COMMANDS and not args[0].startswith('-'):
        # mount(8) via mount.fuse3 runs "curvefuse SOURCE MOUNTPOINT -o OPTIONS" for
        # "-t fuse.curvefuse" and fstab lines: that is `curvefuse mount`.
        args = ['mount', *args]
    options = parser.parse_args(args)
    logging.basicConfig(level=logging.DEBUG if options.debug else logging.WARNING,
                        format='%(levelname)s %(name)s: %(message)s')
    action = getattr(options, 'snap_command', None) or getattr(options, 'trash_command', None)
    name = f'curvefuse {options.command}{" " + action if action else ""}'
    try:
        return options.func(options)
    except (EngineError, MountError) as exc:
        print(f'{name}: {exc}', file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:  # a file named on the command line (the engine raises its own)
        print(f'{name}: {exc.filename or "stdio"}: {exc.strerror or exc}', file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == '__main__':
    sys.exit(main())
