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

from ..engine import (MAX_VOLUME_LENGTH, Engine, Node, SnapshotInfo, join_path,
                      split_path)
from ..engine.store import check_snapshot_name, check_user
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
            check_snapshot_name(value)
        except InvalidArgumentError as exc:
            raise BadRequestError(f'{name}: {exc}') from None
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
    """One entry of ListFile's FileInfos, every field of the reference; a clone shows whether
    it is being flattened, and how far."""
    status, progress, readonly = STATUS_DONE, 100, False
    state = None if node.is_dir else engine.clone_state(node.id)
    if state is not None:
        status = STATUS_FLATTENING if state.flattening else STATUS_UNFLATTENED
        progress, readonly = state.progress, state.readonly
    return {
        'File': path,
        'User': node.owner,
        'Type': TYPE_DIRECTORY if node.is_dir else TYPE_FILE,
        'Time': node.btime_ns // 1000,  # µs, as Curve's ctime
        'FileLength': 0 if node.is_dir else node.length,
        'StripeUnit': 0,
        'StripeCount': 0,
        'Status': status,
        'Readonly': readonly,
        'Progress': progress,
    }



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
        entries = [(file, engine.stat(file, user))]
    else:
        nodes = engine.listdir(directory, None if directory == '/' else user)
        entries = [(join_path(directory, node.name), node) for node in nodes]
    return {'TotalCount': len(entries),
            'FileInfos': [file_info(engine, path, node) for path, node in entries[page]]}


# -- snapshots and clones -------------------------------------------------------------------------

SNAPSHOT_DONE = 0  # Snapshot.Status: 0 done (2 deleting and 5 error never occur here)


def snapshot_info(path: str, snap: SnapshotInfo) -> Fields:
    """One entry of GetFileSnapshotInfo's Snapshots, every field of the reference. Taking and
    deleting a snapshot are immediate here, so Status is always done and Progress 100."""
    return {
        'UUID': snap.uuid,
        'User': snap.owner,
        'File': path,
        'SeqNum': snap.seq,
        'Name': snap.name,
        'Time': snap.created_ns // 1000,
        'FileLength': snap.length,
        'Status': SNAPSHOT_DONE,
        'Progress': 100,
    }


def _chosen_snapshot(engine: Engine, path: str, user: str, name: str | None,
                     uuid: str | None) -> SnapshotInfo:
    """The snapshot of path named by name, by uuid, or by both (which must then agree)."""
    if name is not None:
        snap = engine.get_snapshot(path, name, user)
        if uuid is None or snap.uuid == uuid:
            return snap
    else:
        for snap in engine.list_snapshots(path, user):
            if snap.uuid == uuid:
                return snap
    raise NotFoundError(f'{path} has no snapshot with UUID {uuid}'
                        + (f' named {name!r}' if name is not None else ''))


@action('CreateSnapshot')
def create_snapshot(engine: Engine, req: Request) -> Fields:
    """Snapshot File as Name, protected at once so it can be cloned (as Curve does); the UUID
    names it from then on."""
    path, name, user = req.path('File'), req.snapshot_name(), req.user
    snap = engine.create_snapshot(path, name, user=user, protect=True)
    return {'UUID': snap.uuid}


@action('DeleteSnapshot')
def delete_snapshot(engine: Engine, req: Request) -> Fields:
    """Delete File's snapshot Name (or UUID, or both, which must agree): unprotected first, so
    clones still reading from it make this -23, and then it stays as it was."""
    path, user = req.path('File'), req.user
    name, uuid = req.snapshot_name(required=False), req.text('UUID', required=False)
    if name is None and uuid is None:
        raise BadRequestError('parameter Name or UUID is missing')
    snap = _chosen_snapshot(engine, path, user, name, uuid)
    # By name: the engine has no delete by UUID. A snapshot deleted and taken again under the
    # same name between the two calls would go instead; both need this user's rights anyway.
    engine.delete_snapshot(path, snap.name, user=user, unprotect=True)
    return {}


@action('GetFileSnapshotInfo')
def get_file_snapshot_info(engine: Engine, req: Request) -> Fields:
    """File's snapshots, oldest first (or the one named by Name and/or UUID), a page of Limit."""
    path, user = req.path('File'), req.user
    name, uuid = req.snapshot_name(required=False), req.text('UUID', required=False)
    page = req.page()
    if name is None and uuid is None:
        snaps = engine.list_snapshots(path, user)
    else:
        snaps = [_chosen_snapshot(engine, path, user, name, uuid)]
    return {'TotalCount': len(snaps),
            'Snapshots': [snapshot_info(path, snap) for snap in snaps[page]]}


@action('Clone')
def clone(engine: Engine, req: Request) -> Fields:
    """A lazy clone of File@Name at Destination, optionally read-only. A retry (Destination is
    already that very clone) is success; anything else there is -19."""
    path, name, dest, user = req.path('File'), req.snapshot_name(), req.path('Destination'), \
        req.user
    readonly = req.boolean('Readonly')
    req.check_poolset('Poolset')
    try:
        engine.clone(path, name, dest, user=user, readonly=readonly)
    except ExistsError:
        there = engine.stat(dest, user)  # AccessError (-7) if it is someone else's
        state = None if there.is_dir else engine.clone_state(there.id)
        if state is None or (state.source_path, state.snapshot, state.readonly) != \
                (path, name, readonly):
            raise
        log.info('request %s: %s is already a clone of %s@%s', req.request_id, dest, path, name)
    return {}


@action('Flatten')
def flatten(engine: Engine, req: Request) -> Fields:
    """Start copying what clone File still reads from its snapshot, in the background; ListFile
    shows Status 1 (flattening) and Progress until it is done. A volume that is not a clone,
    or a flatten already running, is success."""
    path, user = req.path('File'), req.user
    engine.flatten(path, user=user)
    return {}
