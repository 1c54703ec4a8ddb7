"""What each SnapshotCloneService action does to the store.

An action is a synchronous function ``(engine, request) -> fields`` that runs in a worker thread
(the engine blocks). It returns the fields its successful answer adds to Code, Message and
RequestId, and raises an `EngineError` for anything else; the app turns that into a code through
`curvefuse.errors`. Every action reads and checks all its parameters *before* it touches the
store, so a malformed request (`BadRequestError`, -5) never changes anything.

Where Curve's server is looser than a single-machine store can afford, we are stricter, and the
README's REST section says so: CreateFile onto an existing entry and Clone onto an existing path
succeed only when what is there is what the request would have made (a retry), not for any entry.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..engine import MAX_VOLUME_LENGTH, Engine, Node, split_path
from ..engine.store import check_name, check_user
from ..errors import (BadRequestError, ExistsError, InvalidArgumentError, NotFoundError,
                      NotSupportedError)

log = logging.getLogger(__name__)

GiB = 2**30
MAX_UINT64 = 2**64 - 1
DEFAULT_LIMIT = 10  # Curve's default page size for ListFile and GetFileSnapshotInfo
DEFAULT_POOLSET = 'default'  # Curve's name for the default pool set; this store has only it

# FileInfo.Type and FileInfo.Status, as Curve's FileInfoType / FileInfoStatus number them.
TYPE_FILE, TYPE_DIRECTORY = 0, 1
STATUS_DONE, STATUS_FLATTENING, STATUS_UNFLATTENED = 0, 1, 2

_DIGITS = re.compile(r'[0-9]{1,20}')  # ASCII only: str.isdigit() also accepts '²' and '٣'
_BOOLS = {'true': True, '1': True, 'false': False, '0': False}

Fields = dict[str, Any]
Action = Callable[[Engine, 'Request'], Fields]


@dataclass(frozen=True)
class Request:
    """One request's query parameters (each given at most once) and its id, with typed readers
    that raise `BadRequestError` for anything missing or malformed."""

    action: str
    params: dict[str, str]
    request_id: str

    def text(self, name: str, required: bool = True) -> str | None:
        """A parameter's value; as in Curve, an empty value counts as missing."""
        value = self.params.get(name)
        if not value:
            if required:
                raise BadRequestError(f'parameter {name} is missing')
            return None
        return value

    @property
    def user(self) -> str:
        """`User`: whom the owner checks compare with ("root" passes them all, as in Curve)."""
        user = self.text('User')
        try:
            check_user(user)
        except InvalidArgumentError as exc:
            raise BadRequestError(f'User: {exc}') from None
        return user

    def path(self, name: str, required: bool = True, volume: bool = True) -> str | None:
        """A well-formed Curve path (absolute, no trailing '/', no '.', '..', '//' or NUL);
        with volume, one that can name a volume (not '/')."""
        value = self.text(name, required)
        if value is None:
            return None
        try:
            parts = split_path(value)
        except InvalidArgumentError as exc:
            raise BadRequestError(f'{name}: {exc}') from None
        if volume and not parts:
            raise BadRequestError(f'{name}: / is not a volume')
        return value

    def snapshot_name(self, name: str = 'Name', required: bool = True) -> str | None:
        """A snapshot name: a valid path component without '@' (Curve's "file@snap" split)."""
        value = self.text(name, required)
        if value is None:
            return None
        try:
            check_name(value)
        except InvalidArgumentError as exc:
            raise BadRequestError(f'{name}: {exc}') from None
        if '@' in value:
            raise BadRequestError(f'{name}: a snapshot name may not contain "@"')
        return value

    def uint(self, name: str, default: int | None = None, maximum: int = MAX_UINT64) -> int:
        """A decimal unsigned integer no larger than maximum (Curve parses uint64)."""
        value = self.text(name, required=default is None)
        if value is None:
            return default
        if not _DIGITS.fullmatch(value) or int(value) > maximum:
            raise BadRequestError(f'{name} must be an integer from 0 to {maximum}, not {value!r}')
        return int(value)

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self.text(name, required=False)
        if value is None:
            return default
        try:
            return _BOOLS[value.lower()]
        except KeyError:
            raise BadRequestError(f'{name} must be true or false, not {value!r}') from None

    def page(self) -> slice:
        """Limit (default 10) and Offset (default 0) as a slice of the full listing."""
        limit = self.uint('Limit', DEFAULT_LIMIT)
        offset = self.uint('Offset', 0)
        return slice(offset, offset + limit)

    def check_poolset(self, name: str) -> None:
        """This store has one pool set; naming another is Curve's kPoolsetNotExist."""
        poolset = self.text(name, required=False)
        if poolset not in (None, DEFAULT_POOLSET):
            raise NotFoundError(f'no pool set {poolset!r}; this store has only '
                                f'{DEFAULT_POOLSET!r}')


ACTIONS: dict[str, Action] = {}


def action(name: str) -> Callable[[Action], Action]:
    """Register an action under the `Action` value that selects it."""
    def register(fn: Action) -> Action:
        ACTIONS[name] = fn
        return fn
    return register


def file_info(engine: Engine, path: str, node: Node) -> Fields:
    """One entry of ListFile's FileInfos, every field of the reference."""
    return {
        'File': path,
        'User': node.owner,
        'Type': TYPE_DIRECTORY if node.is_dir else TYPE_FILE,
        'Time': node.btime_ns // 1000,  # µs, as Curve's ctime
        'FileLength': 0 if node.is_dir else node.length,
        'StripeUnit': 0,
        'StripeCount': 0,
        'Status': STATUS_DONE,
        'Readonly': False,
        'Progress': 100,
    }


def _join(directory: str, name: str) -> str:
    return directory.rstrip('/') + '/' + name


@action('CreateFile')
def create_file(engine: Engine, req: Request) -> Fields:
    """A new volume of Size GiB. Idempotent, as in Curve: a volume of that size already there
    (and the user's) is success; anything else at that path is -19."""
    path, user = req.path('File'), req.user
    size = req.uint('Size', maximum=MAX_VOLUME_LENGTH // GiB)
    if size == 0:
        raise BadRequestError('Size must be at least 1 (GiB)')
    if req.uint('StripeUnit', 0) or req.uint('StripeCount', 0):
        raise NotSupportedError('this store does not stripe volumes')
    req.check_poolset('PoolSet')
    try:
        engine.create_volume(path, size * GiB, user=user)
    except ExistsError:
        there = engine.stat(path, user)  # AccessError (-7) if it is someone else's
        if there.is_dir or there.length != size * GiB:
            raise
        log.info('request %s: %s already exists as asked', req.request_id, path)
    return {}


@action('DeleteFile')
def delete_file(engine: Engine, req: Request) -> Fields:
    """Move a volume to /RecycleBin (or remove an empty directory). Idempotent, as in Curve:
    a path that does not exist is success."""
    path, user = req.path('File'), req.user
    try:
        engine.remove(path, user)
    except NotFoundError:
        log.info('request %s: %s does not exist; nothing to delete', req.request_id, path)
    return {}


@action('ListFile')
def list_file(engine: Engine, req: Request) -> Fields:
    """One entry (File) or a directory's entries (Dir), a page of Limit from Offset.

    Anyone may list '/' (the reference's example lists it as a plain user); any other directory
    or entry must be the user's, as Curve's owner checks have it."""
    user = req.user
    file = req.path('File', required=False, volume=False)
    directory = None if file is not None else req.path('Dir', volume=False)
    page = req.page()
    if file is not None:
        infos = [file_info(engine, file, engine.stat(file, user))]
    else:
        nodes = engine.listdir(directory, None if directory == '/' else user)
        infos = [file_info(engine, _join(directory, node.name), node) for node in nodes]
    return {'TotalCount': len(infos), 'FileInfos': infos[page]}
