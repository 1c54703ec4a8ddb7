"""The SnapshotCloneService REST API through a real server and a real HTTP client.

The server is the real one (hypercorn's trio worker on a loopback socket the OS picks), run in a
thread of the test process; requests go over TCP with urllib. Codes are the reference's
(`snapshotclone-rest-api.md`): 0 success (200), -5 bad request (400), and for errors found in
the store -7 invalid user, -8 not exist, -9 status invalid, -19 exists, -21 not supported,
-22 under snapshot, -23 occupied, -24 invalid argument (400: never a 500 for the client's
mistake), and -1 internal (500).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import curvefuse
from curvefuse.client import CBDClient
from curvefuse.rest import actions

from ..rest_helpers import UUID_RE, RestClient, ServerThread, assert_error, namespace
from ..util import user

GiB = 2**30
FILE_INFO_KEYS = {'File', 'User', 'Type', 'Time', 'FileLength', 'StripeUnit', 'StripeCount',
                  'Status', 'Readonly', 'Progress'}


@pytest.fixture
def rest(store: curvefuse.Store, data_dir: Path) -> Iterator[RestClient]:
    """A client of a real server on the test's store (which the `store` fixture created)."""
    with ServerThread(data_dir) as client:
        yield client


def unchanged(store: curvefuse.Store, client: RestClient, code: int, query: str | dict,
              **kwargs: Any) -> dict[str, Any]:
    """Send a request that must fail with code and leave the store exactly as it was."""
    before = namespace(store.engine)
    status, body = client.request(query, **kwargs)
    assert_error(status, body, code)
    assert namespace(store.engine) == before
    return body


# -- CreateFile ---------------------------------------------------------------------------------

def test_create_file_answers_as_the_reference_shows(rest: RestClient,
                                                    store: curvefuse.Store) -> None:
    body = rest.ok('CreateFile', File='/test1', Size=100)
    assert set(body) == {'Code', 'Message', 'RequestId'}
    entry = store.stat('/test1')
    assert (entry.is_dir, entry.length, entry.owner) == (False, 100 * GiB, 'curve')


def test_create_file_is_idempotent_for_the_same_volume_only(rest: RestClient,
                                                            store: curvefuse.Store) -> None:
    rest.ok('CreateFile', File='/v', Size=10)
    rest.ok('CreateFile', File='/v', Size=10)  # a retry: success, as in Curve
    before = namespace(store.engine)
    rest.fails(-19, 'CreateFile', File='/v', Size=11)  # something else is there
    store.mkdir('/d')
    rest.fails(-19, 'CreateFile', File='/d', Size=10, user='root')
    rest.fails(-7, 'CreateFile', File='/v', Size=10, user='bob')  # not bob's to claim
    assert namespace(store.engine) == sorted(before + [('/d', True, 0, 'root', 1)])


def test_create_file_checks_the_owner_of_every_directory(rest: RestClient,
                                                         store: curvefuse.Store) -> None:
    rest.ok('CreateFile', File='/home', Size=1)
    store.as_user('curve').mkdir('/curve')
    rest.ok('CreateFile', File='/curve/v', Size=1)
    rest.fails(-7, 'CreateFile', File='/curve/w', Size=1, user='bob')
    rest.fails(-8, 'CreateFile', File='/nodir/v', Size=1)
    rest.fails(-24, 'CreateFile', File='/home/v', Size=1)  # /home is a volume
    rest.ok('CreateFile', File='/curve/x', Size=1, user='root')  # root passes every check
    assert store.stat('/curve/x').owner == 'root'


@pytest.mark.parametrize('size', ['0', '-1', '+1', ' 1', '1.5', '1e3', '0x10', 'ten', '١',
                                  str(2**20 + 1), str(2**64), '9' * 40])
def test_create_file_refuses_a_bad_size(rest: RestClient, store: curvefuse.Store,
                                        size: str) -> None:
    unchanged(store, rest, -5, {'Action': 'CreateFile', 'Version': '1.5', 'User': 'curve',
                                'File': '/v', 'Size': size})


def test_create_file_takes_the_largest_size_the_store_allows(rest: RestClient,
                                                             store: curvefuse.Store) -> None:
    rest.ok('CreateFile', File='/huge', Size=2**20)  # 1 PiB, thin: nothing is allocated
    assert store.stat('/huge').length == 2**50 and store.allocated('/huge') == 0


def test_create_file_stripes_and_pool_sets(rest: RestClient, store: curvefuse.Store) -> None:
    rest.ok('CreateFile', File='/a', Size=1, StripeUnit=0, StripeCount=0, PoolSet='default')
    for stripe in ({'StripeUnit': 65536, 'StripeCount': 4}, {'StripeUnit': 4096}):
        rest.fails(-21, 'CreateFile', File='/b', Size=1, **stripe)
    rest.fails(-8, 'CreateFile', File='/b', Size=1, PoolSet='ssd')
    unchanged(store, rest, -5, 'Action=CreateFile&Version=1&User=u&File=/b&Size=1&StripeUnit=x')
    assert not store.exists('/b')


# -- DeleteFile ---------------------------------------------------------------------------------

def test_delete_file_recycles_and_is_idempotent(rest: RestClient, store: curvefuse.Store) -> None:
    rest.ok('CreateFile', File='/v', Size=1)
    body = rest.ok('DeleteFile', File='/v')
    assert set(body) == {'Code', 'Message', 'RequestId'}
    assert not store.exists('/v')
    [recycled] = store.listdir('/RecycleBin')
    assert recycled.original_path == '/v'
    rest.ok('DeleteFile', File='/v')  # already gone: success, as in Curve
    rest.ok('DeleteFile', File='/no/such/dir')
    assert [e.name for e in store.listdir('/RecycleBin')] == [recycled.name]


def test_delete_file_refusals(rest: RestClient, store: curvefuse.Store) -> None:
    rest.ok('CreateFile', File='/v', Size=1)
    rest.fails(-7, 'DeleteFile', File='/v', user='bob')
    store.mkdir('/d')
    store.create('/d/inner', 4096)
    rest.fails(-9, 'DeleteFile', File='/d', user='root')  # not empty
    with store.open('/v', 'r+b'):
        rest.fails(-23, 'DeleteFile', File='/v')  # open: occupied
    assert store.exists('/v') and store.exists('/d/inner')
    rest.fails(-24, 'DeleteFile', File='/RecycleBin', user='root')
    rest.ok('DeleteFile', File='/v')


# -- ListFile -----------------------------------------------------------------------------------

def test_list_file_shows_every_field(rest: RestClient, store: curvefuse.Store) -> None:
    rest.ok('CreateFile', File='/test1', Size=100)
    store.mkdir('/clone')
    body = rest.ok('ListFile', Dir='/', Limit=10, Offset=0)
    assert set(body) == {'Code', 'Message', 'RequestId', 'TotalCount', 'FileInfos'}
    assert body['TotalCount'] == 3
    infos = body['FileInfos']
    assert [i['File'] for i in infos] == ['/RecycleBin', '/clone', '/test1']
    assert all(set(info) == FILE_INFO_KEYS for info in infos)
    recycle, directory, volume = infos
    node = store.engine.stat('/test1')
    assert volume == {'File': '/test1', 'User': 'curve', 'Type': 0, 'Time': node.btime_ns // 1000,
                      'FileLength': 100 * GiB, 'StripeUnit': 0, 'StripeCount': 0, 'Status': 0,
                      'Readonly': False, 'Progress': 100}
    assert (directory['Type'], directory['FileLength'], directory['User']) == (1, 0, 'root')
    assert (recycle['Type'], recycle['Status'], recycle['Progress']) == (1, 0, 100)


def test_list_file_pages_with_limit_and_offset(rest: RestClient, store: curvefuse.Store) -> None:
    store.as_user('curve').mkdir('/d')
    names = [f'/d/v{i:02}' for i in range(25)]
    for name in names:
        rest.ok('CreateFile', File=name, Size=1)

    def page(**params: Any) -> list[str]:
        body = rest.ok('ListFile', Dir='/d', **params)
        assert body['TotalCount'] == 25
        return [info['File'] for info in body['FileInfos']]

    assert page() == names[:10]  # Limit defaults to 10
    assert page(Offset=20) == names[20:]
    assert page(Limit=5, Offset=3) == names[3:8]
    assert page(Limit=100) == names
    assert page(Limit=0) == [] and page(Offset=25) == [] and page(Offset=2**64 - 1) == []
    assert page(Limit=2**64 - 1, Offset=24) == names[24:]


def test_list_file_of_one_entry(rest: RestClient, store: curvefuse.Store) -> None:
    rest.ok('CreateFile', File='/v', Size=2)
    body = rest.ok('ListFile', File='/v')
    assert body['TotalCount'] == 1
    assert [(i['File'], i['FileLength']) for i in body['FileInfos']] == [('/v', 2 * GiB)]
    both = rest.ok('ListFile', File='/v', Dir='/')  # File wins, as in Curve
    assert both['FileInfos'] == body['FileInfos']
    rest.fails(-8, 'ListFile', File='/nothing')
    rest.fails(-7, 'ListFile', File='/v', user='bob')


def test_list_file_owner_rules(rest: RestClient, store: curvefuse.Store) -> None:
    store.as_user('bob').mkdir('/bob')
    store.as_user('bob').create('/bob/v', 4096)
    assert rest.ok('ListFile', Dir='/', user='alice')['TotalCount'] == 2  # anyone lists /
    assert rest.ok('ListFile', Dir='/bob', user='bob')['TotalCount'] == 1
    rest.fails(-7, 'ListFile', Dir='/bob', user='alice')
    rest.fails(-7, 'ListFile', Dir='/RecycleBin', user='alice')
    assert rest.ok('ListFile', Dir='/bob', user='root')['TotalCount'] == 1
    rest.fails(-8, 'ListFile', Dir='/nothing')
    rest.fails(-24, 'ListFile', Dir='/bob/v', user='bob')  # a volume is not a directory


# -- bad input ----------------------------------------------------------------------------------

BASE = 'Version=1.5&User=curve'
BAD_REQUESTS = [
    '',
    BASE,
    f'Action=&{BASE}',
    f'Action=Nonsense&{BASE}',
    f'Action=createfile&{BASE}&File=/v&Size=1',  # actions are case-sensitive, as in Curve
    'Action=CreateFile&User=curve&File=/v&Size=1',  # no Version
    'Action=CreateFile&Version=&User=curve&File=/v&Size=1',
    'Action=CreateFile&Version=1.5&File=/v&Size=1',  # no User
    'Action=CreateFile&Version=1.5&User=&File=/v&Size=1',
    'Action=CreateFile&Version=1.5&User=a%00b&File=/v&Size=1',
    f'Action=CreateFile&Version=1.5&User={"u" * 256}&File=/v&Size=1',
    f'Action=CreateFile&{BASE}&Size=1',  # no File
    f'Action=CreateFile&{BASE}&File=/v',  # no Size
    f'Action=CreateFile&{BASE}&File=&Size=1',
    f'Action=CreateFile&{BASE}&File=v&Size=1',  # relative
    f'Action=CreateFile&{BASE}&File=/&Size=1',
    f'Action=CreateFile&{BASE}&File=/v/&Size=1',  # trailing /
    f'Action=CreateFile&{BASE}&File=//v&Size=1',
    f'Action=CreateFile&{BASE}&File=/a/../v&Size=1',
    f'Action=CreateFile&{BASE}&File=/..&Size=1',
    f'Action=CreateFile&{BASE}&File=/./v&Size=1',
    f'Action=CreateFile&{BASE}&File=/v%00x&Size=1',  # NUL
    f'Action=CreateFile&{BASE}&File=/{"n" * 256}&Size=1',
    f'Action=CreateFile&{BASE}&File=/%FF&Size=1',  # not UTF-8
    f'Action=CreateFile&{BASE}&File=/v&File=/w&Size=1',  # twice
    f'Action=CreateFile&Action=DeleteFile&{BASE}&File=/v&Size=1',
    f'Action=CreateFile&{BASE}&File=/v&Size=1&' + '&'.join(f'x{i}=1' for i in range(70)),
    f'Action=DeleteFile&{BASE}',
    f'Action=DeleteFile&{BASE}&File=/RecycleBin/',
    f'Action=ListFile&{BASE}',  # neither Dir nor File
    f'Action=ListFile&{BASE}&Dir=/a/',
    f'Action=ListFile&{BASE}&Dir=/&Limit=-1',
    f'Action=ListFile&{BASE}&Dir=/&Limit=ten',
    f'Action=ListFile&{BASE}&Dir=/&Limit=1e3',
    f'Action=ListFile&{BASE}&Dir=/&Limit={2**64}',
    f'Action=ListFile&{BASE}&Dir=/&Offset=-5',
    f'Action=ListFile&{BASE}&Dir=/&Offset=1.0',
    f'Action=ListFile&{BASE}&Dir=/&Offset={"9" * 30}',
]


@pytest.mark.parametrize('query', BAD_REQUESTS)
def test_bad_requests_get_400_and_change_nothing(rest: RestClient, store: curvefuse.Store,
                                                 query: str) -> None:
    rest.ok('CreateFile', File='/v', Size=1)
    unchanged(store, rest, -5, query)


@pytest.mark.parametrize('path,method', [('/', 'GET'), ('/SnapshotCloneService/x', 'GET'),
                                         ('/snapshotcloneservice', 'GET'),
                                         ('/SnapshotCloneService', 'POST'),
                                         ('/SnapshotCloneService', 'PUT'),
                                         ('/SnapshotCloneService', 'DELETE')])
def test_other_paths_and_methods_are_bad_requests(rest: RestClient, store: curvefuse.Store,
                                                  path: str, method: str) -> None:
    unchanged(store, rest, -5, f'Action=CreateFile&{BASE}&File=/v&Size=1', path=path,
              method=method)


def test_unknown_parameters_are_ignored_as_curve_does(rest: RestClient,
                                                      store: curvefuse.Store) -> None:
    rest.ok('CreateFile', File='/v', Size=1, Color='blue', Version2='x')
    assert store.exists('/v')


def test_version_value_is_not_checked(rest: RestClient) -> None:
    for version in ('1.5', '0.0.6', 'anything'):
        rest.ok('ListFile', Dir='/', version=version)


def test_query_is_percent_decoded(rest: RestClient, store: curvefuse.Store) -> None:
    store.as_user('curve').mkdir('/my dir')
    rest.ok('CreateFile', File='/my dir/vol ü+1', Size=1)
    assert store.stat('/my dir/vol ü+1').length == GiB
    body = rest.ok('ListFile', Dir='/my dir')
    assert body['FileInfos'][0]['File'] == '/my dir/vol ü+1'


# -- logging and unexpected failures --------------------------------------------------------------

def test_every_request_is_logged_with_its_request_id(rest: RestClient,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    ids = [rest.ok('CreateFile', File='/v', Size=1)['RequestId'],
           rest.fails(-5, 'CreateFile', File='/v')['RequestId'],
           rest.fails(-7, 'DeleteFile', File='/v', user='bob')['RequestId']]
    messages = [r.getMessage() for r in caplog.records if r.name == 'curvefuse.rest.app']
    for request_id in ids:
        [line] = [m for m in messages if request_id in m]
        assert 'CreateFile' in line or 'DeleteFile' in line


def test_an_unexpected_error_is_internal_logged_and_survived(
        rest: RestClient, monkeypatch: pytest.MonkeyPatch, expect_logs: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    """A bug in an action (simulated: the only stand-in in these tests) answers -1 with HTTP
    500, logs its traceback once, and the server keeps serving."""
    def broken(engine: Any, req: actions.Request) -> dict:
        raise RuntimeError('a bug')

    monkeypatch.setitem(actions.ACTIONS, 'ListFile', broken)
    expect_logs('failed unexpectedly')
    body = rest.fails(-1, 'ListFile', Dir='/')
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert body['RequestId'] in record.getMessage() and record.exc_info is not None
    monkeypatch.undo()
    rest.ok('ListFile', Dir='/')


# -- other doors at the same time -----------------------------------------------------------------

def test_cbdclient_and_rest_on_one_store(rest: RestClient, cbd: CBDClient) -> None:
    curve = user('curve')
    rest.ok('CreateFile', File='/shared', Size=1)
    fd = cbd.Open('/shared', curve)
    assert fd >= 0
    assert cbd.Write(fd, b'x' * 4096, 0, 4096) == 4096
    rest.fails(-23, 'DeleteFile', File='/shared')  # open through CBDClient: occupied
    assert cbd.Close(fd) == 0
    assert cbd.Create('/made-by-cbd', curve, 3 * GiB) == 0
    files = {i['File']: i for i in rest.ok('ListFile', Dir='/')['FileInfos']}
    assert files['/made-by-cbd']['FileLength'] == 3 * GiB
    assert files['/made-by-cbd']['User'] == 'curve'
    rest.ok('DeleteFile', File='/made-by-cbd')
    info = curvefuse.client.FileInfo_t()
    assert cbd.StatFile('/made-by-cbd', curve, info) == -6
    fd = cbd.Open('/shared', curve)
    assert cbd.Read(fd, None, 0, 4096) == b'x' * 4096
    assert cbd.Close(fd) == 0


# -- snapshots ----------------------------------------------------------------------------------

SNAPSHOT_KEYS = {'UUID', 'User', 'File', 'SeqNum', 'Name', 'Time', 'FileLength', 'Status',
                 'Progress'}


def test_create_snapshot_returns_a_uuid_and_protects(rest: RestClient,
                                                     store: curvefuse.Store) -> None:
    rest.ok('CreateFile', File='/test1', Size=10)
    body = rest.ok('CreateSnapshot', File='/test1', Name='snap1')
    assert set(body) == {'Code', 'Message', 'RequestId', 'UUID'}
    snap = store.engine.get_snapshot('/test1', 'snap1')
    assert body['UUID'] == snap.uuid and UUID_RE.fullmatch(snap.uuid)
    assert snap.protected and snap.owner == 'curve'
    second = rest.ok('CreateSnapshot', File='/test1', Name='snap2')['UUID']
    assert second != body['UUID']


def test_create_snapshot_refusals(rest: RestClient, store: curvefuse.Store) -> None:
    rest.ok('CreateFile', File='/v', Size=1)
    rest.ok('CreateSnapshot', File='/v', Name='s')
    before = namespace(store.engine), store.engine.list_snapshots('/v')
    rest.fails(-19, 'CreateSnapshot', File='/v', Name='s')  # the name is taken
    rest.fails(-8, 'CreateSnapshot', File='/nothing', Name='s')
    rest.fails(-7, 'CreateSnapshot', File='/v', Name='t', user='bob')
    store.mkdir('/d')
    rest.fails(-21, 'CreateSnapshot', File='/d', Name='s', user='root')
    for name in ('a@b', 'a/b', '..', '.', 'x' * 256, 'a%00b'):
        unchanged(store, rest, -5, f'Action=CreateSnapshot&{BASE}&File=/v&Name={name}')
    unchanged(store, rest, -5, f'Action=CreateSnapshot&{BASE}&File=/v')
    unchanged(store, rest, -5, f'Action=CreateSnapshot&{BASE}&File=/v&Name=')
    after = namespace(store.engine), store.engine.list_snapshots('/v')
    assert after == (sorted(before[0] + [('/d', True, 0, 'root', 1)]), before[1])


def test_get_file_snapshot_info_shows_every_field(rest: RestClient,
                                                  store: curvefuse.Store) -> None:
    rest.ok('CreateFile', File='/test1', Size=10)
    uuid = rest.ok('CreateSnapshot', File='/test1', Name='snap1')['UUID']
    body = rest.ok('GetFileSnapshotInfo', File='/test1', Limit=10, Offset=0)
    assert set(body) == {'Code', 'Message', 'RequestId', 'TotalCount', 'Snapshots'}
    snap = store.engine.get_snapshot('/test1', 'snap1')
    assert body['TotalCount'] == 1
    assert body['Snapshots'] == [{
        'UUID': uuid, 'User': 'curve', 'File': '/test1', 'SeqNum': snap.seq, 'Name': 'snap1',
        'Time': snap.created_ns // 1000, 'FileLength': 10 * GiB, 'Status': 0, 'Progress': 100}]
    assert rest.ok('GetFileSnapshotInfo', File='/test1', Name='snap1')['Snapshots'] == \
        body['Snapshots']
    assert rest.ok('GetFileSnapshotInfo', File='/test1', UUID=uuid)['Snapshots'] == \
        body['Snapshots']


def test_get_file_snapshot_info_pages_oldest_first(rest: RestClient) -> None:
    rest.ok('CreateFile', File='/v', Size=1)
    names = [f's{i:02}' for i in range(13)]
    for name in names:
        rest.ok('CreateSnapshot', File='/v', Name=name)

    def page(**params: Any) -> list[str]:
        body = rest.ok('GetFileSnapshotInfo', File='/v', **params)
        assert body['TotalCount'] == 13
        assert all(set(s) == SNAPSHOT_KEYS for s in body['Snapshots'])
        return [s['Name'] for s in body['Snapshots']]

    assert page() == names[:10]
    assert page(Offset=10) == names[10:]
    assert page(Limit=2, Offset=5) == names[5:7]
    seqs = [s['SeqNum'] for s in rest.ok('GetFileSnapshotInfo', File='/v',
                                         Limit=20)['Snapshots']]
    assert seqs == sorted(seqs) and len(set(seqs)) == 13


def test_get_file_snapshot_info_refusals(rest: RestClient, store: curvefuse.Store) -> None:
    rest.ok('CreateFile', File='/v', Size=1)
    uuid = rest.ok('CreateSnapshot', File='/v', Name='s')['UUID']
    rest.fails(-8, 'GetFileSnapshotInfo', File='/v', Name='nothing')
    rest.fails(-8, 'GetFileSnapshotInfo', File='/v', UUID='0' * 8)
    rest.fails(-8, 'GetFileSnapshotInfo', File='/v', Name='s', UUID='0' * 8)
    rest.fails(-8, 'GetFileSnapshotInfo', File='/nothing')
    rest.fails(-7, 'GetFileSnapshotInfo', File='/v', user='bob')
    rest.fails(-7, 'GetFileSnapshotInfo', File='/v', UUID=uuid, user='bob')
    for query in ('&Name=a@b', '&Name=..', '&Limit=x', '&Offset=-1', '&Limit=1.0'):
        unchanged(store, rest, -5, f'Action=GetFileSnapshotInfo&{BASE}&File=/v{query}')
    unchanged(store, rest, -5, f'Action=GetFileSnapshotInfo&{BASE}&Name=s')  # no File


def test_delete_snapshot_by_name_and_by_uuid(rest: RestClient, store: curvefuse.Store) -> None:
    rest.ok('CreateFile', File='/v', Size=1)
    rest.ok('CreateSnapshot', File='/v', Name='a')
    uuid = rest.ok('CreateSnapshot', File='/v', Name='b')['UUID']
    rest.fails(-22, 'DeleteFile', File='/v')  # a volume with snapshots stays
    body = rest.ok('DeleteSnapshot', File='/v', Name='a')
    assert set(body) == {'Code', 'Message', 'RequestId'}
    rest.ok('DeleteSnapshot', File='/v', UUID=uuid)
    assert store.engine.list_snapshots('/v') == []
    assert rest.ok('GetFileSnapshotInfo', File='/v')['TotalCount'] == 0
    rest.ok('DeleteFile', File='/v')


def test_delete_snapshot_refusals(rest: RestClient, store: curvefuse.Store) -> None:
    rest.ok('CreateFile', File='/v', Size=1)
    rest.ok('CreateSnapshot', File='/v', Name='s')
    rest.fails(-8, 'DeleteSnapshot', File='/v', Name='nothing')
    rest.fails(-8, 'DeleteSnapshot', File='/v', UUID='nothing')
    rest.fails(-8, 'DeleteSnapshot', File='/nothing', Name='s')
    rest.fails(-7, 'DeleteSnapshot', File='/v', Name='s', user='bob')
    for query in ('', '&Name=', '&UUID=', '&Name=a/b'):
        unchanged(store, rest, -5, f'Action=DeleteSnapshot&{BASE}&File=/v{query}')
    assert [s.name for s in store.engine.list_snapshots('/v')] == ['s']


# -- clones and flatten ---------------------------------------------------------------------------

def clone_of(rest: RestClient, store: curvefuse.Store, data: bytes = b's' * 4096,
             **params: Any) -> None:
    """/src (1 GiB, data at 0) snapshotted as snap and cloned to /clone."""
    rest.ok('CreateFile', File='/src', Size=1)
    with store.open('/src', 'r+b') as vol:
        vol.write(data)
    rest.ok('CreateSnapshot', File='/src', Name='snap')
    rest.ok('Clone', File='/src', Name='snap', Destination='/clone', **params)


def test_clone_is_listed_unflattened_and_reads_the_snapshot(rest: RestClient,
                                                            store: curvefuse.Store) -> None:
    clone_of(rest, store)
    with store.open('/src', 'r+b') as vol:
        vol.write(b'n' * 4096)  # after the snapshot: not in the clone
    with store.open('/clone', 'rb') as vol:
        assert vol.read(4096) == b's' * 4096
    [info] = rest.ok('ListFile', File='/clone')['FileInfos']
    assert set(info) == FILE_INFO_KEYS
    assert (info['File'], info['User'], info['Type'], info['FileLength']) == \
        ('/clone', 'curve', 0, GiB)
    assert (info['Status'], info['Readonly']) == (2, False)  # 2: unflattened
    assert 0 <= info['Progress'] < 100
    assert store.engine.children('/src', 'snap') == ['/clone']


def test_readonly_clone(rest: RestClient, store: curvefuse.Store, cbd: CBDClient) -> None:
    clone_of(rest, store, Readonly='true')
    [info] = rest.ok('ListFile', File='/clone')['FileInfos']
    assert info['Readonly'] is True
    fd = cbd.Open('/clone', user('curve'))
    assert cbd.Write(fd, b'x' * 4096, 0, 4096) == -32  # READONLY, as release 1.5's client
    assert cbd.Close(fd) == 0
    rest.ok('Clone', File='/src', Name='snap', Destination='/rw', Readonly='False')
    assert rest.ok('ListFile', File='/rw')['FileInfos'][0]['Readonly'] is False


def test_clone_onto_an_existing_path(rest: RestClient, store: curvefuse.Store) -> None:
    clone_of(rest, store)
    rest.ok('Clone', File='/src', Name='snap', Destination='/clone')  # a retry: success
    rest.ok('CreateFile', File='/other', Size=1)
    rest.ok('CreateSnapshot', File='/src', Name='snap2')
    before = namespace(store.engine)
    rest.fails(-19, 'Clone', File='/src', Name='snap', Destination='/other')
    rest.fails(-19, 'Clone', File='/src', Name='snap', Destination='/src')
    rest.fails(-19, 'Clone', File='/src', Name='snap', Destination='/clone', Readonly='true')
    rest.fails(-19, 'Clone', File='/src', Name='snap2', Destination='/clone')
    store.mkdir('/dir')
    rest.fails(-19, 'Clone', File='/src', Name='snap', Destination='/dir', user='root')
    assert namespace(store.engine) == sorted(before + [('/dir', True, 0, 'root', 1)])
    assert store.engine.children('/src', 'snap') == ['/clone']


def test_clone_refusals(rest: RestClient, store: curvefuse.Store) -> None:
    clone_of(rest, store)
    rest.fails(-8, 'Clone', File='/src', Name='nothing', Destination='/c2')
    rest.fails(-8, 'Clone', File='/nothing', Name='snap', Destination='/c2')
    rest.fails(-8, 'Clone', File='/src', Name='snap', Destination='/no/dir/c2')
    rest.fails(-8, 'Clone', File='/src', Name='snap', Destination='/c2', Poolset='ssd')
    rest.fails(-7, 'Clone', File='/src', Name='snap', Destination='/c2', user='bob')
    for query in ('', '&Name=snap', '&Destination=/c2', '&Name=snap&Destination=/c2/',
                  '&Name=snap&Destination=c2', '&Name=a@b&Destination=/c2',
                  '&Name=snap&Destination=/c2&Readonly=yes',
                  '&Name=snap&Destination=/c2&Readonly=2'):
        unchanged(store, rest, -5, f'Action=Clone&{BASE}&File=/src{query}')
    assert not store.exists('/c2')


def test_delete_snapshot_with_clones_is_occupied(rest: RestClient,
                                                 store: curvefuse.Store) -> None:
    clone_of(rest, store)
    before = store.engine.get_snapshot('/src', 'snap')
    rest.fails(-23, 'DeleteSnapshot', File='/src', Name='snap')
    rest.fails(-23, 'DeleteSnapshot', File='/src', UUID=before.uuid)
    assert store.engine.get_snapshot('/src', 'snap') == before  # still there, still protected
    rest.ok('Clone', File='/src', Name='snap', Destination='/clone2')  # so still clonable
    rest.ok('DeleteFile', File='/clone')
    rest.ok('DeleteFile', File='/clone2')
    # In the recycle bin the clones still read the snapshot (they can be recovered) ...
    rest.fails(-23, 'DeleteSnapshot', File='/src', Name='snap')
    for recycled in store.listdir('/RecycleBin'):  # ... until they are destroyed
        rest.ok('DeleteFile', File=f'/RecycleBin/{recycled.name}', user='root')
    rest.ok('DeleteSnapshot', File='/src', Name='snap')
    assert store.engine.list_snapshots('/src') == []


def wait_flattened(rest: RestClient, path: str, timeout: float = 60) -> list[tuple[int, int]]:
    """Poll ListFile until the clone at path is done; the (Status, Progress) pairs seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        [info] = rest.ok('ListFile', File=path)['FileInfos']
        seen.append((info['Status'], info['Progress']))
        if info['Status'] == 0:
            return seen
        time.sleep(0.005)
    raise AssertionError(f'{path} still not flattened: {seen[-5:]}')


def test_flatten_shows_progress_and_cuts_the_link(data_dir: Path) -> None:
    """With 1 MiB chunks a 1 GiB clone flattens in 1024 committed steps (half a second here),
    so ListFile right after Flatten sees it flattening (Status 1) with Progress growing."""
    data = bytes(range(256)) * 32 * 1024  # 8 MiB
    with curvefuse.open_store(str(data_dir), create=True, chunk_size=2**20) as store, \
            ServerThread(data_dir) as rest:
        clone_of(rest, store, data=data)
        body = rest.ok('Flatten', File='/clone')
        assert set(body) == {'Code', 'Message', 'RequestId'}
        [info] = rest.ok('ListFile', File='/clone')['FileInfos']
        assert info['Status'] == 1 and 0 <= info['Progress'] < 100
        rest.fails(-23, 'DeleteFile', File='/clone')  # being flattened: occupied
        rest.ok('Flatten', File='/clone')  # already flattening: success, as in Curve
        seen = wait_flattened(rest, '/clone')
        assert seen[-1] == (0, 100)
        assert {status for status, _ in seen[:-1]} <= {1}
        progress = [p for _, p in seen]
        assert progress == sorted(progress) and len(set(progress)) > 2
        assert store.engine.children('/src', 'snap') == []
        rest.ok('DeleteSnapshot', File='/src', Name='snap')  # the clone no longer needs it
        with store.open('/clone', 'rb') as vol:
            assert vol.read(len(data)) == data
        rest.ok('Flatten', File='/clone')  # not a clone any more: a no-op, as in Curve
        rest.ok('Flatten', File='/src')


def test_flatten_refusals(rest: RestClient, store: curvefuse.Store) -> None:
    clone_of(rest, store)
    rest.fails(-7, 'Flatten', File='/clone', user='bob')
    rest.fails(-8, 'Flatten', File='/nothing')
    for query in ('', '&File=', '&File=/clone/', '&UUID=abc'):
        unchanged(store, rest, -5, f'Action=Flatten&{BASE}{query}')
    [info] = rest.ok('ListFile', File='/clone')['FileInfos']
    assert info['Status'] == 2


def test_snapshots_taken_by_other_doors(rest: RestClient, store: curvefuse.Store) -> None:
    """A snapshot taken unprotected through the engine cannot be cloned (-9, the engine's
    NotProtectedError); REST's DeleteSnapshot deletes it as well as protected ones."""
    rest.ok('CreateFile', File='/v', Size=1)
    store.engine.create_snapshot('/v', 'plain', user='curve')
    [info] = rest.ok('GetFileSnapshotInfo', File='/v')['Snapshots']
    assert info['Name'] == 'plain' and info['User'] == 'curve'
    rest.fails(-9, 'Clone', File='/v', Name='plain', Destination='/c')
    assert not store.exists('/c')
    store.engine.protect_snapshot('/v', 'plain')
    rest.ok('Clone', File='/v', Name='plain', Destination='/c')
    rest.ok('DeleteFile', File='/c')
    rest.ok('DeleteFile', File=f'/RecycleBin/{store.listdir("/RecycleBin")[0].name}',
            user='root')
    rest.ok('DeleteSnapshot', File='/v', Name='plain')


def test_delete_snapshot_by_name_and_uuid_that_disagree(rest: RestClient,
                                                        store: curvefuse.Store) -> None:
    rest.ok('CreateFile', File='/v', Size=1)
    uuid_a = rest.ok('CreateSnapshot', File='/v', Name='a')['UUID']
    uuid_b = rest.ok('CreateSnapshot', File='/v', Name='b')['UUID']
    rest.fails(-8, 'DeleteSnapshot', File='/v', Name='a', UUID=uuid_b)
    assert [s.name for s in store.engine.list_snapshots('/v')] == ['a', 'b']
    rest.ok('DeleteSnapshot', File='/v', Name='a', UUID=uuid_a)
    assert [s.uuid for s in store.engine.list_snapshots('/v')] == [uuid_b]
