"""The `curvefuse` command.

`curvefuse SOURCE MOUNTPOINT -o OPTIONS` (no command word) means `curvefuse mount`: that is how
mount(8), through Debian's mount.fuse3, runs a "fuse.curvefuse" mount or fstab line.

Exit codes: 0 success; 1 a user error (one line on stderr, no traceback) or an fsck that could
not run; 2 usage errors (argparse) and, for fsck, corruption found; 3 fsck found leaks only
(the codes of ``qemu-img check``).
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys

from . import DEFAULT_DATA_DIR, __version__
from .api import open_store, parse_size
from .engine import DEFAULT_CHUNK_SIZE, DEFAULT_ROOT_PASSWORD
from .errors import EngineError
from .fuse.mount import MountError

log = logging.getLogger('curvefuse')

EXIT_USER_ERROR = 1
COMMANDS = ('init', 'fsck', 'mount', 'umount')


def _init(args: argparse.Namespace) -> int:
    with open_store(args.data_dir, create=True, chunk_size=parse_size(args.chunk_size),
                    root_password=args.root_password) as store:
        print(f'store {args.data_dir}: cluster id {store.cluster_id}, '
              f'chunk size {store.chunk_size} bytes')
    return 0


def _fsck(args: argparse.Namespace) -> int:
    with open_store(args.data_dir) as store:
        report = store.fsck(repair=args.repair)
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
    if args.log:
        handler = logging.FileHandler(args.log)
        handler.setFormatter(logging.Formatter('%(asctime)s %(process)d %(levelname)s '
                                               '%(name)s: %(message)s'))
        logging.getLogger().handlers[:] = [handler]
        # kill -USR1 <daemon> writes every thread's stack to the log: for hangs.
        faulthandler.register(signal.SIGUSR1, file=handler.stream, all_threads=True)
    else:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    run_foreground(args.data_dir, args.mountpoint, options, args.ready_fd)
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
    return parser


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
    try:
        return options.func(options)
    except (EngineError, MountError) as exc:
        print(f'curvefuse {options.command}: {exc}', file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == '__main__':
    sys.exit(main())
