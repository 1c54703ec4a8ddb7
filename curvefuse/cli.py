"""The `curvefuse` command.

Exit codes: 0 success; 1 a user error (one line on stderr, no traceback) or an fsck that could
not run; 2 usage errors (argparse) and, for fsck, corruption found; 3 fsck found leaks only
(the codes of ``qemu-img check``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import DEFAULT_DATA_DIR, __version__
from .api import open_store, parse_size
from .engine import DEFAULT_CHUNK_SIZE, DEFAULT_ROOT_PASSWORD
from .errors import EngineError

log = logging.getLogger('curvefuse')

EXIT_USER_ERROR = 1


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
    return parser


def main(args: list[str] | None = None) -> int:
    options = build_parser().parse_args(args)
    logging.basicConfig(level=logging.DEBUG if options.debug else logging.WARNING,
                        format='%(levelname)s %(name)s: %(message)s')
    try:
        return options.func(options)
    except EngineError as exc:
        print(f'curvefuse {options.command}: {exc}', file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == '__main__':
    sys.exit(main())
