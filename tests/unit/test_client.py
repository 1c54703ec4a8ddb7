"""CBDClient, Curve's `curvefs` Python API, as its users see it.

Return values and codes follow Curve's client (see curve-behaviour.md §1-3) except where curvefuse
deliberately differs: 4 KiB volume granularity, renamable directories, str accepted by Write.
Codes are written negated, as the API returns them: -1 EXISTS, -2 FAILED, -4 AUTHFAIL,
-6 NOTEXIST, -11 NOT_SUPPORT, -12 NOT_EMPTY, -13 NO_SHRINK_BIGGER_FILE, -15 FILE_OCCUPIED,
-16 PARAM_ERROR, -17 INTERNAL_ERROR, -22 NOT_ALIGNED, -23 BAD_FD, -24 LENGTH_NOT_SUPPORT,
-100 UNKNOWN.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest

import curvefuse
import curvefuse.client
from curvefuse.client import CBDClient, FileInfo_t, UserInfo_t

from ..util import assert_store_clean, user

BLOCK = 4096
MiB = 2**20
GiB = 2**30
VOL_LEN = 4 * BLOCK
MAX_LEN = 2**50

ROOT = user('root', 'root_password')
ALICE = user('alice')
BOB = user('bob')

OK, EXISTS, FAILED, AUTHFAIL, NOTEXIST = 0, -1, -2, -4, -6
NOT_SUPPORT, NOT_EMPTY, NO_SHRINK, OCCUPIED, PARAM = -11, -12, -13, -15, -16
INTERNAL, NOT_ALIGNED, BAD_FD, LENGTH, UNKNOWN = -17, -22, -23, -24, -100


# -- helpers ------------------------------------------------------------------------------------

def stat(cbd: CBDClient, path: str, who: UserInfo_t = ROOT) -> FileInfo_t:
    finfo = FileInfo_t()
    assert cbd.StatFile(path, who, finfo) == OK, path
    return finfo


def listdir_code(cbd: CBDClient, path: Any, who: Any) -> int:
    """Listdir's failure code; fails the test unless it raised RuntimeError('ListDir failed')."""
    with pytest.raises(RuntimeError) as info:
        cbd.Listdir(path, who)
    assert type(info.value) is RuntimeError and str(info.value) == 'ListDir failed'
    return info.value.code


def ls(cbd: CBDClient, path: str, who: UserInfo_t = ROOT) -> list[bytes]:
    return sorted(cbd.Listdir(path, who))


def recycled(cbd: CBDClient) -> list[bytes]:
    return ls(cbd, '/RecycleBin')


def write_block(cbd: CBDClient, path: str, who: UserInfo_t, data: bytes, offset: int = 0) -> None:
    fd = cbd.Open(path, who)
    assert fd >= 0
    assert cbd.Write(fd, data, offset, len(data)) == len(data)
    assert cbd.Close(fd) == 0


def read_all(cbd: CBDClient, path: str, who: UserInfo_t = ROOT, length: int | None = None) -> bytes:
    fd = cbd.Open(path, who)
    assert fd >= 0
    data = cbd.Read(fd, '', 0, stat(cbd, path).length if length is None else length)
    assert cbd.Close(fd) == 0
    return data


def tree(data_dir: Path) -> dict[str, tuple]:
    """Everything a user could observe: every entry's id, kind, length, owner, original path,
    and the bytes of every small volume. Read through the Pythonic API, as the trusted owner."""
    found: dict[str, tuple] = {}
    with curvefuse.open_store(str(data_dir)) as store:
        def walk(path: str) -> None:
            for entry in store.listdir(path):
                child = path.rstrip('/') + '/' + entry.name
                data = None
                if not entry.is_dir and entry.length <= MiB:
                    with store.open(child) as vol:
                        data = vol.read()
                found[child] = (entry.id, entry.is_dir, entry.length, entry.owner,
                                entry.original_path, data)
                if entry.is_dir:
                    walk(child)
        walk('/')
    return found


def curve_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.get_records('call')
            if r.levelname in ('WARNING', 'ERROR', 'CRITICAL') and r.name.startswith('curvefuse')]


@pytest.fixture
def world(cbd: CBDClient) -> SimpleNamespace:
    """A small namespace: alice's tree, bob's, one of root's, and one recycled volume of alice's.

    /alice (dir)          /alice/vol (16 KiB, first block b'A')    /alice/sub/inner (16 KiB)
    /alice/empty (dir)    /bob (dir)  /bob/vol (bob)               /rootvol (root)
    /RecycleBin/gone-<id> (alice's, deleted from /alice/gone, holds b'G')
    """
    assert cbd.Mkdir('/alice', ALICE) == OK
    assert cbd.Create('/alice/vol', ALICE, VOL_LEN) == OK
    write_block(cbd, '/alice/vol', ALICE, b'A' * BLOCK)
    assert cbd.Mkdir('/alice/sub', ALICE) == OK
    assert cbd.Create('/alice/sub/inner', ALICE, VOL_LEN) == OK
    assert cbd.Mkdir('/alice/empty', ALICE) == OK
    assert cbd.Mkdir('/bob', BOB) == OK
    assert cbd.Create('/bob/vol', BOB, VOL_LEN) == OK
    assert cbd.Create('/rootvol', ROOT, VOL_LEN) == OK
    assert cbd.Create('/alice/gone', ALICE, VOL_LEN) == OK
    write_block(cbd, '/alice/gone', ALICE, b'G' * BLOCK)
    gone_id = stat(cbd, '/alice/gone').id
    assert cbd.Unlink('/alice/gone', ALICE) == OK
    return SimpleNamespace(gone=f'/RecycleBin/gone-{gone_id}', gone_id=gone_id)


# -- life cycle ---------------------------------------------------------------------------------

BEFORE_INIT = {
    'Create': lambda c: c.Create('/v', ALICE, BLOCK),
    'Mkdir': lambda c: c.Mkdir('/d', ALICE),
    'StatFile': lambda c: c.StatFile('/', ROOT, FileInfo_t()),
    'Extend': lambda c: c.Extend('/v', ALICE, 2 * BLOCK),
    'Unlink': lambda c: c.Unlink('/v', ALICE),
    'Rmdir': lambda c: c.Rmdir('/d', ALICE),
    'DeleteForce': lambda c: c.DeleteForce('/RecycleBin/v-3', ROOT),
    'Recover': lambda c: c.Recover('/v', ALICE, 0),
    'Rename': lambda c: c.Rename(ALICE, '/v', '/w'),
    'ChangeOwner': lambda c: c.ChangeOwner('/v', 'bob', ROOT),
    'Open': lambda c: c.Open('/v', ALICE),
    'Open-empty-owner': lambda c: c.Open('/v', user('')),
    'Close': lambda c: c.Close(0),
    'Read': lambda c: c.Read(0, '', 0, BLOCK),
    'Write': lambda c: c.Write(0, b'x' * BLOCK, 0, BLOCK),
}


@pytest.mark.parametrize('call', BEFORE_INIT.values(), ids=BEFORE_INIT.keys())
def test_every_call_before_init_fails(call: Callable[[CBDClient], int]) -> None:
    """Without Init there is no store: every call answers FAILED (-2), as Curve without an MDS."""
    assert call(CBDClient()) == FAILED


def test_listdir_getclusterid_uninit_before_init() -> None:
    """Before Init: Listdir raises RuntimeError (code -2), GetClusterId is '', UnInit is a no-op."""
    client = CBDClient()
    assert listdir_code(client, '/', ROOT) == FAILED
    assert client.GetClusterId() == ''
    assert client.UnInit() is None


def test_init_uninit_reinit(cbd: CBDClient, client_conf: Path) -> None:
    """Init returns 0 (again 0 when repeated); UnInit returns None, after which calls fail with -2
    until the next Init, which sees the same store."""
    assert cbd.Init(str(client_conf)) == 0
    assert cbd.Create('/v', ALICE, BLOCK) == OK
    assert cbd.UnInit() is None
    assert cbd.Create('/w', ALICE, BLOCK) == FAILED
    assert cbd.UnInit() is None
    assert cbd.Init(str(client_conf)) == 0
    assert ls(cbd, '/') == [b'RecycleBin', b'v']


def test_second_init_keeps_the_first_store(cbd: CBDClient, tmp_path: Path) -> None:
    """As in Curve, Init on an initialised client returns 0 and changes nothing."""
    other = tmp_path / 'other.conf'
    other.write_text(f'curvefuse.data_dir={tmp_path / "other-store"}\n')
    cluster = cbd.GetClusterId()
    assert cbd.Init(str(other)) == 0
    assert cbd.GetClusterId() == cluster
    assert not (tmp_path / 'other-store').exists()


def test_uninit_closes_open_fds(cbd: CBDClient, client_conf: Path) -> None:
    """UnInit closes every fd (the volume is no longer occupied, the data is kept)."""
    assert cbd.Create('/v', ALICE, VOL_LEN) == OK
    fd = cbd.Open('/v', ALICE)
    assert cbd.Write(fd, b'k' * BLOCK, 0, BLOCK) == BLOCK
    cbd.UnInit()
    assert cbd.Init(str(client_conf)) == 0
    assert cbd.Read(fd, '', 0, BLOCK) == BAD_FD
    assert read_all(cbd, '/v', ALICE, BLOCK) == b'k' * BLOCK
    assert cbd.Unlink('/v', ALICE) == OK


@pytest.mark.parametrize('conf_text', [
    pytest.param(None, id='missing-file'),
    pytest.param('curvefuse.data_dir={tmp}/a-file\n', id='data-dir-is-a-file'),
    pytest.param('curvefuse.data_dir={tmp}/s\ncurvefuse.chunk_size=lots\n',
                 id='chunk-size-not-int'),
    pytest.param('curvefuse.data_dir={tmp}/s\ncurvefuse.chunk_size=5000\n',
                 id='chunk-size-not-pow2'),
])
def test_init_failure_returns_minus_2(tmp_path: Path, conf_text: str | None, expect_logs) -> None:
    """A conf that cannot be read, or names an unusable store, makes Init return -2 (logged)."""
    expect_logs('Init')
    (tmp_path / 'a-file').write_text('not a store')
    conf = tmp_path / 'client.conf'
    if conf_text is not None:
        conf.write_text(conf_text.format(tmp=tmp_path))
    client = CBDClient()
    assert client.Init(str(conf)) == FAILED
    assert client.GetClusterId() == ''
    assert client.Create('/v', ALICE, BLOCK) == FAILED


@pytest.mark.parametrize('confpath', [
    pytest.param(None, id='None'),
    pytest.param(['/etc/curve/client.conf'], id='list'),
    pytest.param(b'/nonexistent/client.conf', id='bytes-missing'),
    pytest.param('', id='empty-string'),
])
def test_init_bad_confpath_returns_minus_2(confpath: Any, expect_logs) -> None:
    """Init never raises: a conf path that is not a readable file's name gives -2."""
    expect_logs('Init')
    client = CBDClient()
    assert client.Init(confpath) == FAILED
    assert client.GetClusterId() == ''


def test_conf_root_password_and_comments(tmp_path: Path, data_dir: Path) -> None:
    """client.conf may carry comments and Curve's own keys; curvefuse.root_password sets the
    password of a store Init creates, and root must then give that one."""
    conf = tmp_path / 'client.conf'
    conf.write_text('# Curve client config\n\nmds.listen.addr=127.0.0.1:6666  # trailing comment\n'
                    f'curvefuse.data_dir = {data_dir}\ncurvefuse.root_password=s3cret\n')
    client = CBDClient()
    assert client.Init(str(conf)) == 0
    try:
        assert client.Create('/v', ROOT, BLOCK) == AUTHFAIL
        assert client.Create('/v', user('root', 's3cret'), BLOCK) == OK
        assert stat(client, '/v', user('root', 's3cret')).owner == 'root'
    finally:
        client.UnInit()


def test_conf_chunk_size_store_works_across_chunks(tmp_path: Path, data_dir: Path) -> None:
    """curvefuse.chunk_size (a small one here) does not change what reads and writes return."""
    conf = tmp_path / 'client.conf'
    conf.write_text(f'curvefuse.data_dir={data_dir}\ncurvefuse.chunk_size=8192\n')
    client = CBDClient()
    assert client.Init(str(conf)) == 0
    try:
        assert client.Create('/v', ALICE, 8 * BLOCK) == OK
        fd = client.Open('/v', ALICE)
        data = bytes(range(256)) * 16 * 3
        assert client.Write(fd, data, BLOCK, 3 * BLOCK) == 3 * BLOCK
        assert client.Read(fd, '', 0, 8 * BLOCK) == bytes(BLOCK) + data + bytes(4 * BLOCK)
        assert client.Close(fd) == 0
    finally:
        client.UnInit()


def test_conf_without_data_dir_uses_the_default(tmp_path: Path, monkeypatch) -> None:
    """A plain Curve client.conf (no curvefuse.data_dir) opens the default store."""
    default = tmp_path / 'default-store'
    monkeypatch.setattr(curvefuse.client, 'DEFAULT_DATA_DIR', str(default))
    conf = tmp_path / 'client.conf'
    conf.write_text('mds.listen.addr=127.0.0.1:6666\n')
    client = CBDClient()
    assert client.Init(str(conf)) == 0
    assert client.Create('/v', ALICE, BLOCK) == OK
    client.UnInit()
    with curvefuse.open_store(str(default)) as store:
        assert [e.name for e in store.listdir('/')] == ['RecycleBin', 'v']
    assert_store_clean(default)


def test_cluster_id_is_a_stable_uuid(cbd: CBDClient, client_conf: Path) -> None:
    """GetClusterId: a UUID string, the same from a second client and across UnInit/Init,
    '' when not initialised."""
    cluster = cbd.GetClusterId()
    assert isinstance(cluster, str) and str(uuid.UUID(cluster)) == cluster
    other = CBDClient()
    assert other.GetClusterId() == ''
    assert other.Init(str(client_conf)) == 0
    assert other.GetClusterId() == cluster
    other.UnInit()
    assert other.GetClusterId() == ''
    cbd.UnInit()
    assert cbd.GetClusterId() == ''
    assert cbd.Init(str(client_conf)) == 0
    assert cbd.GetClusterId() == cluster


def test_two_clients_share_one_store(cbd: CBDClient, client_conf: Path) -> None:
    """Two CBDClients on one store see each other's changes; each numbers its fds from 0; an
    fd held by one makes the volume occupied for the other; one UnInit leaves the other working."""
    other = CBDClient()
    assert other.Init(str(client_conf)) == 0
    assert cbd.Create('/v', ALICE, VOL_LEN) == OK
    assert ls(other, '/') == [b'RecycleBin', b'v']
    assert cbd.Open('/v', ALICE) == 0
    fd = other.Open('/v', ALICE)
    assert fd == 0
    assert other.Write(fd, b'o' * BLOCK, 0, BLOCK) == BLOCK
    assert cbd.Read(0, '', 0, BLOCK) == b'o' * BLOCK
    assert cbd.Close(0) == 0
    assert cbd.Unlink('/v', ALICE) == OCCUPIED
    other.UnInit()
    assert cbd.Unlink('/v', ALICE) == OK
    assert len(recycled(cbd)) == 1


# -- namespace: success paths -------------------------------------------------------------------

def test_create_and_statfile_fields(cbd: CBDClient) -> None:
    """StatFile fills id, parentid, filetype 1, length, ctime (µs since the epoch), base name,
    owner and fileStatus 0 (CREATED); ids of user entries start at 3."""
    before_us = time.time_ns() // 1000
    assert cbd.Create('/v', ALICE, 10 * GiB) == OK
    after_us = time.time_ns() // 1000
    finfo = FileInfo_t()
    assert cbd.StatFile('/v', ALICE, finfo) == OK
    assert finfo.id >= 3 and finfo.parentid == 0
    assert finfo.filetype == 1 and finfo.length == 10 * GiB
    assert isinstance(finfo.ctime, int) and before_us <= finfo.ctime <= after_us
    assert (finfo.filename, finfo.owner, finfo.fileStatus) == ('v', 'alice', 0)
    assert (finfo.stripeUnit, finfo.stripeCount) == (0, 0)


def test_curvefs_module_names_and_constants() -> None:
    """`import curvefs` gives Curve's class names and curve_type.h's constants."""
    import curvefs
    assert curvefs.CBDClient is CBDClient
    assert (curvefs.UserInfo_t, curvefs.FileInfo_t) == (UserInfo_t, FileInfo_t)
    assert (curvefs.CURVE_INODE_DIRECTORY, curvefs.CURVE_INODE_PAGEFILE) == (0, 1)
    assert [curvefs.CURVE_FILE_CREATED, curvefs.CURVE_FILE_DELETING, curvefs.CURVE_FILE_CLONING,
            curvefs.CURVE_FILE_CLONEMETAINSTALLED, curvefs.CURVE_FILE_CLONED,
            curvefs.CURVE_FILE_BEINGCLONED] == [0, 1, 2, 3, 4, 5]
    info = curvefs.UserInfo_t()
    assert (info.owner, info.password) == ('', '')


def test_statfile_of_directories(cbd: CBDClient) -> None:
    """Directories have filetype 0 and length 0; nested entries name their parent and carry only
    their base name; '/' is id 0 owned by root (root only)."""
    assert cbd.Mkdir('/d', ALICE) == OK
    assert cbd.Mkdir('/d/e', ALICE) == OK
    assert cbd.Create('/d/e/v', ALICE, BLOCK) == OK
    d, e, v = stat(cbd, '/d', ALICE), stat(cbd, '/d/e', ALICE), stat(cbd, '/d/e/v', ALICE)
    assert (d.filetype, d.length, d.parentid, d.filename) == (0, 0, 0, 'd')
    assert (e.filetype, e.parentid, e.filename, e.owner) == (0, d.id, 'e', 'alice')
    assert (v.filetype, v.parentid, v.filename) == (1, e.id, 'v')
    assert len({d.id, e.id, v.id}) == 3
    root = stat(cbd, '/')
    assert (root.id, root.filetype, root.owner) == (0, 0, 'root')
    bin_ = stat(cbd, '/RecycleBin')
    assert (bin_.id, bin_.filetype, bin_.owner, bin_.parentid) == (1, 0, 'root', 0)


@pytest.mark.parametrize('length', [BLOCK, 3 * BLOCK, 10 * GiB, MAX_LEN])
def test_create_accepts_block_multiples_up_to_1_pib(cbd: CBDClient, length: int) -> None:
    """Any positive multiple of 4 KiB up to 2**50 is a valid length (Curve: 10 GiB..20 TiB)."""
    assert cbd.Create('/v', ALICE, length) == OK
    assert stat(cbd, '/v').length == length


def test_anyone_creates_top_level_entries_password_ignored(cbd: CBDClient) -> None:
    """Non-root users may create at the top level; their password is not checked."""
    assert cbd.Create('/b', user('bob', 'anything'), BLOCK) == OK
    assert cbd.Mkdir('/bd', user('bob', 'other')) == OK
    assert stat(cbd, '/b', BOB).owner == 'bob'
    assert cbd.Create('/bd/x', BOB, BLOCK) == OK


def test_names_may_be_unicode_up_to_255_bytes(cbd: CBDClient) -> None:
    """Names are UTF-8; 255 bytes is the longest name; Listdir gives the UTF-8 bytes."""
    longest = 'é' * 127 + 'x'
    assert len(longest.encode()) == 255
    assert cbd.Create('/' + longest, ALICE, BLOCK) == OK
    assert cbd.Mkdir('/ünï', ALICE) == OK
    assert ls(cbd, '/') == sorted([b'RecycleBin', longest.encode(), 'ünï'.encode()])
    assert stat(cbd, '/' + longest).filename == longest


def test_extend_grows_and_keeps_data(cbd: CBDClient) -> None:
    """Extend to a larger multiple of 4 KiB (or the same size) returns 0; old data stays, the
    new range reads as zeros; ctime (creation time) does not change."""
    assert cbd.Create('/v', ALICE, BLOCK) == OK
    write_block(cbd, '/v', ALICE, b'x' * BLOCK)
    ctime = stat(cbd, '/v').ctime
    assert cbd.Extend('/v', ALICE, BLOCK) == OK
    assert cbd.Extend('/v', ALICE, 3 * BLOCK) == OK
    assert stat(cbd, '/v').length == 3 * BLOCK
    assert read_all(cbd, '/v') == b'x' * BLOCK + bytes(2 * BLOCK)
    assert cbd.Extend('/v', ALICE, MAX_LEN) == OK
    assert stat(cbd, '/v').length == MAX_LEN
    assert stat(cbd, '/v').ctime == ctime


def test_extend_while_open_is_seen_by_the_open_fd(cbd: CBDClient) -> None:
    """Extend is not blocked by an open fd (as in Curve), and that fd can use the new range."""
    assert cbd.Create('/v', ALICE, BLOCK) == OK
    fd = cbd.Open('/v', ALICE)
    assert cbd.Extend('/v', ALICE, 2 * BLOCK) == OK
    assert cbd.Write(fd, b'n' * BLOCK, BLOCK, BLOCK) == BLOCK
    assert cbd.Read(fd, '', 0, 2 * BLOCK) == bytes(BLOCK) + b'n' * BLOCK
    assert cbd.Close(fd) == 0


def test_mkdir_rmdir_and_listdir(cbd: CBDClient) -> None:
    """Mkdir/Rmdir return 0; Listdir lists files and sub-directories as bytes base names
    ([] for an empty directory); root's listing of '/' shows RecycleBin."""
    assert cbd.Mkdir('/d', ALICE) == OK
    assert cbd.Listdir('/d', ALICE) == []
    assert cbd.Mkdir('/d/sub', ALICE) == OK
    assert cbd.Create('/d/vol', ALICE, BLOCK) == OK
    names = cbd.Listdir('/d', ALICE)
    assert isinstance(names, list) and all(type(n) is bytes for n in names)
    assert sorted(names) == [b'sub', b'vol']
    assert ls(cbd, '/') == [b'RecycleBin', b'd']
    assert cbd.Listdir('/RecycleBin', ROOT) == []
    assert cbd.Rmdir('/d/sub', ALICE) == OK
    assert ls(cbd, '/d', ALICE) == [b'vol']
    assert recycled(cbd) == []


def test_unlink_of_empty_directory_removes_it_at_once(cbd: CBDClient) -> None:
    """Curve's quirk: Unlink on an empty directory removes it (nothing is recycled)."""
    assert cbd.Mkdir('/d', ALICE) == OK
    assert cbd.Unlink('/d', ALICE) == OK
    assert ls(cbd, '/') == [b'RecycleBin']
    assert recycled(cbd) == []


def test_unlink_moves_volume_to_recycle_bin(cbd: CBDClient) -> None:
    """Unlink moves a volume to /RecycleBin as '<name>-<id>' with its id, length, owner, ctime
    and data; the name is free again at once."""
    assert cbd.Mkdir('/d', ALICE) == OK
    assert cbd.Create('/d/v', ALICE, VOL_LEN) == OK
    write_block(cbd, '/d/v', ALICE, b'd' * BLOCK)
    before = stat(cbd, '/d/v')
    assert cbd.Unlink('/d/v', ALICE) == OK
    assert ls(cbd, '/d', ALICE) == []
    name = f'v-{before.id}'
    assert recycled(cbd) == [name.encode()]
    after = stat(cbd, f'/RecycleBin/{name}')
    assert (after.id, after.parentid, after.length, after.owner, after.ctime, after.filename) == \
        (before.id, 1, VOL_LEN, 'alice', before.ctime, name)
    assert read_all(cbd, f'/RecycleBin/{name}', ROOT, BLOCK) == b'd' * BLOCK
    assert cbd.Create('/d/v', ALICE, BLOCK) == OK
    assert stat(cbd, '/d/v').id != before.id


def test_rmdir_on_a_volume_recycles_it(cbd: CBDClient) -> None:
    """Curve's quirk: Rmdir on a volume is the same delete as Unlink."""
    assert cbd.Create('/v', ALICE, BLOCK) == OK
    vid = stat(cbd, '/v').id
    assert cbd.Rmdir('/v', ALICE) == OK
    assert recycled(cbd) == [f'v-{vid}'.encode()]


def test_long_name_survives_the_recycle_bin(cbd: CBDClient) -> None:
    """A 255-byte name still fits in the recycle bin (shortened there) and is restored whole."""
    longest = '/' + 'é' * 127 + 'x'
    assert cbd.Create(longest, ALICE, BLOCK) == OK
    vid = stat(cbd, longest).id
    assert cbd.Unlink(longest, ALICE) == OK
    [name] = recycled(cbd)
    assert len(name) <= 255 and name.endswith(f'-{vid}'.encode())
    assert cbd.Recover(longest, ALICE) == OK
    assert stat(cbd, longest).id == vid


def test_unlink_inside_recycle_bin_destroys(cbd: CBDClient, world: SimpleNamespace) -> None:
    """Unlink (as root) of an entry already in /RecycleBin destroys it: it cannot be recovered."""
    assert cbd.Unlink(world.gone, ROOT) == OK
    assert recycled(cbd) == []
    assert cbd.Recover('/alice/gone', ALICE, 0) == NOTEXIST


def test_deleteforce_destroys_a_recycled_volume(cbd: CBDClient, world: SimpleNamespace) -> None:
    """DeleteForce by root of a /RecycleBin entry returns 0 and the volume is gone for good."""
    assert cbd.DeleteForce(world.gone, ROOT) == OK
    assert recycled(cbd) == []
    assert cbd.Recover('/alice/gone', ALICE, world.gone_id) == NOTEXIST
    assert cbd.StatFile(world.gone, ROOT, FileInfo_t()) == NOTEXIST


def test_recover_newest_and_by_id(cbd: CBDClient) -> None:
    """Recover(path, user, 0) restores the newest deleted copy of path; with an id it restores
    that copy, to the path given; ids, ctime and data come back; fileId defaults to 0."""
    assert cbd.Mkdir('/d', ALICE) == OK
    ids = []
    for content in (b'1', b'2', b'3'):
        assert cbd.Create('/d/v', ALICE, VOL_LEN) == OK
        write_block(cbd, '/d/v', ALICE, content * BLOCK)
        ids.append(stat(cbd, '/d/v').id)
        assert cbd.Unlink('/d/v', ALICE) == OK
    ctime = stat(cbd, f'/RecycleBin/v-{ids[2]}').ctime
    assert cbd.Recover('/d/v', ALICE, 0) == OK
    assert stat(cbd, '/d/v').id == ids[2] and stat(cbd, '/d/v').ctime == ctime
    assert read_all(cbd, '/d/v', ALICE, BLOCK) == b'3' * BLOCK
    assert cbd.Recover('/d/first', ALICE, ids[0]) == OK
    assert read_all(cbd, '/d/first', ALICE, BLOCK) == b'1' * BLOCK
    assert cbd.Unlink('/d/v', ALICE) == OK
    assert cbd.Recover('/d/v', ALICE) == OK  # newest again: the one just deleted
    assert stat(cbd, '/d/v').id == ids[2]
    assert recycled(cbd) == [f'v-{ids[1]}'.encode()]
    assert ls(cbd, '/d', ALICE) == [b'first', b'v']


def test_recover_with_unknown_id_falls_back_to_the_path(cbd: CBDClient,
                                                          world: SimpleNamespace) -> None:
    """As in Curve, an id not in the recycle bin falls through to the newest copy of the path."""
    assert cbd.Recover('/alice/gone', ALICE, 999999) == OK
    assert stat(cbd, '/alice/gone').id == world.gone_id


def test_rename_in_same_directory(cbd: CBDClient) -> None:
    """Rename(user, old, new) moves the name, keeping id, ctime, owner and data."""
    assert cbd.Create('/v', ALICE, VOL_LEN) == OK
    write_block(cbd, '/v', ALICE, b'r' * BLOCK)
    before = stat(cbd, '/v')
    assert cbd.Rename(ALICE, '/v', '/w') == OK
    after = stat(cbd, '/w')
    assert (after.id, after.ctime, after.owner, after.filename) == \
        (before.id, before.ctime, 'alice', 'w')
    assert ls(cbd, '/') == [b'RecycleBin', b'w']
    assert read_all(cbd, '/w', ALICE, BLOCK) == b'r' * BLOCK


def test_rename_across_directories(cbd: CBDClient) -> None:
    """A volume can be renamed into another directory; its parentid follows."""
    assert cbd.Mkdir('/a', ALICE) == OK
    assert cbd.Mkdir('/b', ALICE) == OK
    assert cbd.Create('/a/v', ALICE, BLOCK) == OK
    vid = stat(cbd, '/a/v').id
    assert cbd.Rename(ALICE, '/a/v', '/b/w') == OK
    assert ls(cbd, '/a', ALICE) == [] and ls(cbd, '/b', ALICE) == [b'w']
    moved = stat(cbd, '/b/w')
    assert (moved.id, moved.parentid) == (vid, stat(cbd, '/b').id)


def test_rename_over_an_existing_volume_recycles_the_old_one(cbd: CBDClient) -> None:
    """Renaming onto an existing volume replaces it; the old one goes to /RecycleBin as
    '<name>-<id>' and can be recovered."""
    assert cbd.Create('/src', ALICE, VOL_LEN) == OK
    assert cbd.Create('/dst', ALICE, VOL_LEN) == OK
    write_block(cbd, '/src', ALICE, b's' * BLOCK)
    write_block(cbd, '/dst', ALICE, b'o' * BLOCK)
    src_id, dst_id = stat(cbd, '/src').id, stat(cbd, '/dst').id
    assert cbd.Rename(ALICE, '/src', '/dst') == OK
    assert ls(cbd, '/') == [b'RecycleBin', b'dst']
    assert stat(cbd, '/dst').id == src_id
    assert read_all(cbd, '/dst', ALICE, BLOCK) == b's' * BLOCK
    assert recycled(cbd) == [f'dst-{dst_id}'.encode()]
    assert cbd.Recover('/dst', ALICE, 0) == EXISTS
    assert cbd.Recover('/old-dst', ALICE, dst_id) == OK
    assert read_all(cbd, '/old-dst', ALICE, BLOCK) == b'o' * BLOCK


def test_directories_can_be_renamed(cbd: CBDClient) -> None:
    """Deliberate difference from Curve: a directory can be renamed, within or across
    directories, and keeps its id and contents."""
    assert cbd.Mkdir('/d', ALICE) == OK
    assert cbd.Mkdir('/e', ALICE) == OK
    assert cbd.Create('/d/v', ALICE, BLOCK) == OK
    did = stat(cbd, '/d').id
    assert cbd.Rename(ALICE, '/d', '/d2') == OK
    assert cbd.Rename(ALICE, '/d2', '/e/d3') == OK
    assert stat(cbd, '/e/d3').id == did
    assert ls(cbd, '/e/d3', ALICE) == [b'v']
    assert ls(cbd, '/') == [b'RecycleBin', b'e']


def test_root_may_act_on_anyones_entries(cbd: CBDClient, world: SimpleNamespace) -> None:
    """Root (with its password) skips the owner checks; the owner stays who it was."""
    assert cbd.Create('/alice/by-root', ROOT, BLOCK) == OK
    assert stat(cbd, '/alice/by-root').owner == 'root'
    assert cbd.Extend('/bob/vol', ROOT, 2 * VOL_LEN) == OK
    assert stat(cbd, '/bob/vol').owner == 'bob'
    assert cbd.Rename(ROOT, '/bob/vol', '/alice/from-bob') == OK
    assert ls(cbd, '/alice', ALICE) == [b'by-root', b'empty', b'from-bob', b'sub', b'vol']
    assert cbd.Recover('/alice/gone', ROOT, 0) == OK


def test_changeowner(cbd: CBDClient, world: SimpleNamespace) -> None:
    """ChangeOwner(path, newOwner, root-with-password): the new owner may use the entry, the old
    one gets -4; giving it to its current owner returns 0; empty directories can change hands."""
    assert cbd.ChangeOwner('/alice/vol', 'bob', ROOT) == OK
    assert cbd.ChangeOwner('/alice/vol', 'bob', ROOT) == OK
    assert stat(cbd, '/alice/vol').owner == 'bob'
    assert cbd.StatFile('/alice/vol', ALICE, FileInfo_t()) == AUTHFAIL
    assert cbd.Open('/alice/vol', ALICE) == AUTHFAIL
    assert cbd.ChangeOwner('/rootvol', 'bob', ROOT) == OK
    fd = cbd.Open('/rootvol', BOB)
    assert fd >= 0 and cbd.Close(fd) == 0
    assert cbd.ChangeOwner('/alice/empty', 'bob', ROOT) == OK
    assert stat(cbd, '/alice/empty').owner == 'bob'


# -- namespace: error codes ---------------------------------------------------------------------

NAMESPACE_ERRORS = [
    # Create
    ('Create-exists', lambda c, w: c.Create('/alice/vol', ALICE, BLOCK), EXISTS),
    ('Create-over-directory', lambda c, w: c.Create('/alice/sub', ALICE, BLOCK), EXISTS),
    ('Create-root-path', lambda c, w: c.Create('/', ROOT, BLOCK), EXISTS),
    ('Create-no-parent', lambda c, w: c.Create('/alice/nodir/v', ALICE, BLOCK), NOTEXIST),
    ('Create-parent-is-volume', lambda c, w: c.Create('/alice/vol/x', ALICE, BLOCK), UNKNOWN),
    ('Create-parent-is-volume-root', lambda c, w: c.Create('/alice/vol/x', ROOT, BLOCK), UNKNOWN),
    ('Create-in-others-dir', lambda c, w: c.Create('/bob/x', ALICE, BLOCK), AUTHFAIL),
    ('Create-in-recyclebin-root', lambda c, w: c.Create('/RecycleBin/x', ROOT, BLOCK), NOT_SUPPORT),
    ('Create-in-recyclebin-user', lambda c, w: c.Create('/RecycleBin/x', ALICE, BLOCK), AUTHFAIL),
    ('Create-length-0', lambda c, w: c.Create('/alice/x', ALICE, 0), LENGTH),
    ('Create-length-4095', lambda c, w: c.Create('/alice/x', ALICE, BLOCK - 1), LENGTH),
    ('Create-length-unaligned', lambda c, w: c.Create('/alice/x', ALICE, 10 * GiB + 512), LENGTH),
    ('Create-length-over-max', lambda c, w: c.Create('/alice/x', ALICE, MAX_LEN + BLOCK), LENGTH),
    ('Create-length-negative', lambda c, w: c.Create('/alice/x', ALICE, -BLOCK), LENGTH),
    ('Create-root-no-password', lambda c, w: c.Create('/x', user('root'), BLOCK), AUTHFAIL),
    ('Create-root-wrong-password', lambda c, w: c.Create('/x', user('root', 'root'), BLOCK),
     AUTHFAIL),
    # Mkdir
    ('Mkdir-exists', lambda c, w: c.Mkdir('/alice/sub', ALICE), EXISTS),
    ('Mkdir-over-volume', lambda c, w: c.Mkdir('/alice/vol', ALICE), EXISTS),
    ('Mkdir-root-path', lambda c, w: c.Mkdir('/', ROOT), EXISTS),
    ('Mkdir-recyclebin', lambda c, w: c.Mkdir('/RecycleBin', ROOT), EXISTS),
    ('Mkdir-no-parent', lambda c, w: c.Mkdir('/alice/nodir/d', ALICE), NOTEXIST),
    ('Mkdir-parent-is-volume', lambda c, w: c.Mkdir('/alice/vol/d', ALICE), UNKNOWN),
    ('Mkdir-parent-is-volume-root', lambda c, w: c.Mkdir('/alice/vol/d', ROOT), UNKNOWN),
    ('Mkdir-in-others-dir', lambda c, w: c.Mkdir('/bob/d', ALICE), AUTHFAIL),
    ('Mkdir-in-recyclebin', lambda c, w: c.Mkdir('/RecycleBin/d', ROOT), NOT_SUPPORT),
    # StatFile
    ('StatFile-missing', lambda c, w: c.StatFile('/alice/nope', ALICE, FileInfo_t()), NOTEXIST),
    ('StatFile-others', lambda c, w: c.StatFile('/bob/vol', ALICE, FileInfo_t()), AUTHFAIL),
    ('StatFile-others-dir', lambda c, w: c.StatFile('/alice/sub', BOB, FileInfo_t()), AUTHFAIL),
    ('StatFile-roots', lambda c, w: c.StatFile('/rootvol', ALICE, FileInfo_t()), AUTHFAIL),
    ('StatFile-slash-non-root', lambda c, w: c.StatFile('/', ALICE, FileInfo_t()), AUTHFAIL),
    ('StatFile-recyclebin-non-root', lambda c, w: c.StatFile(w.gone, ALICE, FileInfo_t()),
     AUTHFAIL),
    ('StatFile-through-volume', lambda c, w: c.StatFile('/alice/vol/x', ALICE, FileInfo_t()),
     UNKNOWN),
    # Curve gives root -6 here; curvefuse keeps one rule (README compatibility table).
    ('StatFile-through-volume-root', lambda c, w: c.StatFile('/alice/vol/x', ROOT, FileInfo_t()),
     UNKNOWN),
    ('StatFile-root-wrong-password', lambda c, w: c.StatFile('/', user('root', 'x'), FileInfo_t()),
     AUTHFAIL),
    # Extend
    ('Extend-shrink', lambda c, w: c.Extend('/alice/vol', ALICE, VOL_LEN - BLOCK), NO_SHRINK),
    ('Extend-shrink-to-0', lambda c, w: c.Extend('/alice/vol', ALICE, 0), NO_SHRINK),
    ('Extend-unaligned-growth', lambda c, w: c.Extend('/alice/vol', ALICE, VOL_LEN + 512), UNKNOWN),
    ('Extend-over-max', lambda c, w: c.Extend('/alice/vol', ALICE, MAX_LEN + BLOCK), LENGTH),
    ('Extend-directory', lambda c, w: c.Extend('/alice/sub', ALICE, VOL_LEN), NOT_SUPPORT),
    ('Extend-missing', lambda c, w: c.Extend('/alice/nope', ALICE, VOL_LEN), NOTEXIST),
    ('Extend-others', lambda c, w: c.Extend('/bob/vol', ALICE, 2 * VOL_LEN), AUTHFAIL),
    # Unlink / Rmdir
    ('Unlink-missing', lambda c, w: c.Unlink('/alice/nope', ALICE), NOTEXIST),
    ('Unlink-not-empty', lambda c, w: c.Unlink('/alice/sub', ALICE), NOT_EMPTY),
    ('Unlink-others', lambda c, w: c.Unlink('/bob/vol', ALICE), AUTHFAIL),
    ('Unlink-others-dir', lambda c, w: c.Unlink('/bob', ALICE), AUTHFAIL),
    ('Unlink-slash', lambda c, w: c.Unlink('/', ROOT), PARAM),
    ('Unlink-recyclebin', lambda c, w: c.Unlink('/RecycleBin', ROOT), PARAM),
    ('Unlink-recycled-non-root', lambda c, w: c.Unlink(w.gone, ALICE), AUTHFAIL),
    ('Rmdir-missing', lambda c, w: c.Rmdir('/alice/nope', ALICE), NOTEXIST),
    ('Rmdir-not-empty', lambda c, w: c.Rmdir('/alice', ALICE), NOT_EMPTY),
    ('Rmdir-others', lambda c, w: c.Rmdir('/bob', ALICE), AUTHFAIL),
    ('Rmdir-slash', lambda c, w: c.Rmdir('/', ROOT), PARAM),
    # DeleteForce
    ('DeleteForce-outside-bin', lambda c, w: c.DeleteForce('/rootvol', ROOT), NOT_SUPPORT),
    ('DeleteForce-own-outside-bin', lambda c, w: c.DeleteForce('/alice/vol', ALICE), NOT_SUPPORT),
    ('DeleteForce-directory', lambda c, w: c.DeleteForce('/alice/empty', ROOT), NOT_SUPPORT),
    ('DeleteForce-the-bin', lambda c, w: c.DeleteForce('/RecycleBin', ROOT), NOT_SUPPORT),
    ('DeleteForce-non-root', lambda c, w: c.DeleteForce(w.gone, ALICE), AUTHFAIL),
    ('DeleteForce-missing', lambda c, w: c.DeleteForce('/RecycleBin/nope-99', ROOT), NOTEXIST),
    ('DeleteForce-root-no-password', lambda c, w: c.DeleteForce(w.gone, user('root')), AUTHFAIL),
    # Recover
    ('Recover-nothing-deleted', lambda c, w: c.Recover('/alice/vol2', ALICE, 0), NOTEXIST),
    ('Recover-target-exists', lambda c, w: c.Recover('/alice/vol', ALICE, w.gone_id), EXISTS),
    ('Recover-target-is-dir', lambda c, w: c.Recover('/alice/sub', ALICE, w.gone_id), EXISTS),
    ('Recover-target-no-parent', lambda c, w: c.Recover('/nodir/gone', ALICE, w.gone_id),
     NOTEXIST),
    ('Recover-others-volume', lambda c, w: c.Recover('/alice/gone', BOB, w.gone_id), AUTHFAIL),
    ('Recover-into-others-dir', lambda c, w: c.Recover('/bob/gone', ALICE, w.gone_id), AUTHFAIL),
    ('Recover-into-bin', lambda c, w: c.Recover('/RecycleBin/x', ROOT, w.gone_id), NOT_SUPPORT),
    ('Recover-bad-id-no-path', lambda c, w: c.Recover('/alice/other', ALICE, 999999), NOTEXIST),
    # Rename
    ('Rename-missing', lambda c, w: c.Rename(ALICE, '/alice/nope', '/alice/x'), NOTEXIST),
    ('Rename-others', lambda c, w: c.Rename(ALICE, '/bob/vol', '/alice/x'), AUTHFAIL),
    ('Rename-into-others-dir', lambda c, w: c.Rename(ALICE, '/alice/vol', '/bob/x'), AUTHFAIL),
    ('Rename-over-others', lambda c, w: c.Rename(ALICE, '/alice/vol', '/bob/vol'), AUTHFAIL),
    ('Rename-over-roots', lambda c, w: c.Rename(ALICE, '/alice/vol', '/rootvol'), AUTHFAIL),
    ('Rename-same-name', lambda c, w: c.Rename(ALICE, '/alice/vol', '/alice/vol'), EXISTS),
    ('Rename-onto-directory', lambda c, w: c.Rename(ALICE, '/alice/vol', '/alice/empty'), EXISTS),
    ('Rename-dir-onto-volume', lambda c, w: c.Rename(ALICE, '/alice/empty', '/alice/vol'), EXISTS),
    ('Rename-into-itself', lambda c, w: c.Rename(ALICE, '/alice/sub', '/alice/sub/x'), PARAM),
    ('Rename-onto-ancestor', lambda c, w: c.Rename(ALICE, '/alice/sub/inner', '/alice/sub'), PARAM),
    ('Rename-slash', lambda c, w: c.Rename(ROOT, '/', '/x'), PARAM),
    ('Rename-to-slash', lambda c, w: c.Rename(ROOT, '/rootvol', '/'), PARAM),
    ('Rename-the-bin', lambda c, w: c.Rename(ROOT, '/RecycleBin', '/bin'), PARAM),
    ('Rename-into-bin', lambda c, w: c.Rename(ROOT, '/rootvol', '/RecycleBin/x'), NOT_SUPPORT),
    ('Rename-no-dest-parent', lambda c, w: c.Rename(ALICE, '/alice/vol', '/nodir/x'), NOTEXIST),
    # ChangeOwner
    ('ChangeOwner-non-root', lambda c, w: c.ChangeOwner('/alice/vol', 'bob', ALICE), AUTHFAIL),
    ('ChangeOwner-root-no-password', lambda c, w: c.ChangeOwner('/alice/vol', 'bob', user('root')),
     AUTHFAIL),
    ('ChangeOwner-root-wrong-password',
     lambda c, w: c.ChangeOwner('/alice/vol', 'bob', user('root', 'nope')), AUTHFAIL),
    ('ChangeOwner-missing', lambda c, w: c.ChangeOwner('/alice/nope', 'bob', ROOT), NOTEXIST),
    ('ChangeOwner-not-empty', lambda c, w: c.ChangeOwner('/alice/sub', 'bob', ROOT), NOT_EMPTY),
    ('ChangeOwner-slash', lambda c, w: c.ChangeOwner('/', 'bob', ROOT), PARAM),
    ('ChangeOwner-the-bin', lambda c, w: c.ChangeOwner('/RecycleBin', 'bob', ROOT), PARAM),
]


def _params(table: list) -> list:
    return [pytest.param(*row[1:], id=row[0]) if type(row) is tuple else row
            for row in table]


@pytest.mark.parametrize('call, expected', _params(NAMESPACE_ERRORS))
def test_namespace_error_codes(cbd: CBDClient, world: SimpleNamespace, data_dir: Path,
                               call: Callable, expected: int) -> None:
    """Each documented failure returns Curve's code and changes nothing."""
    before = tree(data_dir)
    assert call(cbd, world) == expected
    assert tree(data_dir) == before


LISTDIR_ERRORS = [
    ('missing', '/alice/nope', ALICE, NOTEXIST),
    ('missing-root', '/nope', ROOT, NOTEXIST),
    ('a-volume', '/alice/vol', ALICE, UNKNOWN),
    ('a-volume-root', '/rootvol', ROOT, UNKNOWN),
    ('slash-non-root', '/', ALICE, AUTHFAIL),
    ('others-dir', '/bob', ALICE, AUTHFAIL),
    ('recyclebin-non-root', '/RecycleBin', ALICE, AUTHFAIL),
    ('root-wrong-password', '/', user('root', 'x'), AUTHFAIL),
    ('through-volume', '/alice/vol/x', ALICE, UNKNOWN),
]


@pytest.mark.parametrize('path, who, expected', _params(LISTDIR_ERRORS))
def test_listdir_errors_raise_runtimeerror(cbd: CBDClient, world: SimpleNamespace, path: str,
                                           who: UserInfo_t, expected: int) -> None:
    """Listdir raises RuntimeError('ListDir failed') on any failure; `.code` says which."""
    assert listdir_code(cbd, path, who) == expected


# -- busy volumes -------------------------------------------------------------------------------

BUSY = {
    'Unlink': lambda c: c.Unlink('/alice/vol', ALICE),
    'Rmdir': lambda c: c.Rmdir('/alice/vol', ALICE),
    'Rename-source': lambda c: c.Rename(ALICE, '/alice/vol', '/alice/x'),
    'Rename-target': lambda c: c.Rename(ALICE, '/alice/sub/inner', '/alice/vol'),
    'ChangeOwner': lambda c: c.ChangeOwner('/alice/vol', 'bob', ROOT),
}


@pytest.mark.parametrize('call', BUSY.values(), ids=BUSY.keys())
def test_open_volume_is_occupied(cbd: CBDClient, world: SimpleNamespace, data_dir: Path,
                                 call: Callable) -> None:
    """While a volume is open, Unlink/Rmdir/Rename (of or over it)/ChangeOwner give -15 and
    change nothing; after Close the same call succeeds."""
    fd = cbd.Open('/alice/vol', ALICE)
    before = tree(data_dir)
    assert call(cbd) == OCCUPIED
    assert tree(data_dir) == before
    assert cbd.Close(fd) == 0
    assert call(cbd) == OK


def test_volume_stays_occupied_until_its_last_fd_closes(cbd: CBDClient,
                                                         world: SimpleNamespace) -> None:
    """Opened twice, a volume is still occupied after one Close, and free after the second."""
    first, second = cbd.Open('/alice/vol', ALICE), cbd.Open('/alice/vol', ALICE)
    assert cbd.Close(first) == 0
    assert cbd.Unlink('/alice/vol', ALICE) == OCCUPIED
    assert cbd.Close(second) == 0
    assert cbd.Unlink('/alice/vol', ALICE) == OK


def test_volume_open_in_another_process_is_occupied_until_it_dies(cbd: CBDClient,
                                                                   client_conf: Path,
                                                                   tmp_path: Path) -> None:
    """A volume another process has open gives -15; once that process is killed (no Close, no
    UnInit) the volume is free at once (Curve would wait for the session to expire)."""
    assert cbd.Create('/v', ALICE, BLOCK) == OK
    holder = subprocess.Popen([sys.executable, '-c', textwrap.dedent(f'''
        import sys, time, curvefs
        cbd = curvefs.CBDClient()
        assert cbd.Init({str(client_conf)!r}) == 0
        user = curvefs.UserInfo_t()
        user.owner = "alice"
        assert cbd.Open("/v", user) == 0
        print("open", flush=True)
        time.sleep(120)
    ''')], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == 'open\n'
        assert cbd.Unlink('/v', ALICE) == OCCUPIED
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert cbd.Unlink('/v', ALICE) == OK


def test_open_recycled_volume_cannot_be_destroyed(cbd: CBDClient, world: SimpleNamespace) -> None:
    """A recycled volume root has open cannot be DeleteForce'd or Unlinked (-15) until closed."""
    fd = cbd.Open(world.gone, ROOT)
    assert fd >= 0
    assert cbd.DeleteForce(world.gone, ROOT) == OCCUPIED
    assert cbd.Unlink(world.gone, ROOT) == OCCUPIED
    assert cbd.Close(fd) == 0
    assert cbd.DeleteForce(world.gone, ROOT) == OK


# -- bad paths ----------------------------------------------------------------------------------

BAD_PATHS = {
    'empty': '',
    'noslash': 'alice',
    'relative': 'alice/vol',
    'trailing-slash': '/alice/',
    'trailing-slash-vol': '/alice/vol/',
    'double-slash': '/alice//vol',
    'leading-double-slash': '//alice',
    'only-slashes': '//',
    'dotdot': '/alice/../alice/vol',
    'dot': '/alice/./vol',
    'slash-dot': '/.',
    'slash-dotdot': '/..',
    'trailing-dot': '/alice/.',
    'nul': '/alice\0',
    'nul-inside': '/alice/v\0l',
    'name-256-bytes': '/' + 'x' * 256,
    'name-256-utf8-bytes': '/alice/' + 'é' * 128,
    'path-over-4096-bytes': '/d' * 2049,
}

PATH_CALLS = {
    'Create': lambda c, p: c.Create(p, ROOT, BLOCK),
    'Mkdir': lambda c, p: c.Mkdir(p, ROOT),
    'StatFile': lambda c, p: c.StatFile(p, ROOT, FileInfo_t()),
    'Extend': lambda c, p: c.Extend(p, ROOT, 2 * VOL_LEN),
    'Unlink': lambda c, p: c.Unlink(p, ROOT),
    'Rmdir': lambda c, p: c.Rmdir(p, ROOT),
    'DeleteForce': lambda c, p: c.DeleteForce(p, ROOT),
    'Recover': lambda c, p: c.Recover(p, ROOT, 0),
    'Rename-old': lambda c, p: c.Rename(ROOT, p, '/alice/renamed'),
    'Rename-new': lambda c, p: c.Rename(ROOT, '/alice/vol', p),
    'ChangeOwner': lambda c, p: c.ChangeOwner(p, 'bob', ROOT),
    'Open': lambda c, p: c.Open(p, ROOT),
    'Listdir': lambda c, p: listdir_code(c, p, ROOT),
}


@pytest.mark.parametrize('path', BAD_PATHS.values(), ids=BAD_PATHS.keys())
@pytest.mark.parametrize('call', PATH_CALLS.values(), ids=PATH_CALLS.keys())
def test_bad_paths_are_param_errors(cbd: CBDClient, world: SimpleNamespace, data_dir: Path,
                                    call: Callable, path: str) -> None:
    """A path that is not absolute and canonical, holds NUL, or has a name over 255 bytes is
    refused with -16 by every call (even when it would name an existing entry)."""
    before = tree(data_dir)
    assert call(cbd, path) == PARAM
    assert tree(data_dir) == before


# -- IO -----------------------------------------------------------------------------------------

def test_fds_start_at_0_and_a_volume_may_be_opened_twice(cbd: CBDClient) -> None:
    """Open returns fds 0, 1, ... per client; opening one volume twice is allowed (Curve allows
    it) and both fds see the same data."""
    assert cbd.Create('/v', ALICE, VOL_LEN) == OK
    assert cbd.Open('/v', ALICE) == 0
    assert cbd.Open('/v', ALICE) == 1
    assert cbd.Write(0, b'z' * BLOCK, BLOCK, BLOCK) == BLOCK
    assert cbd.Read(1, '', BLOCK, BLOCK) == b'z' * BLOCK
    assert cbd.Close(0) == 0 and cbd.Close(1) == 0


def test_write_read_round_trip(cbd: CBDClient) -> None:
    """Write returns the length written; Read returns exactly `length` bytes (type bytes);
    never-written blocks read as zeros; buf of Read is ignored."""
    assert cbd.Create('/v', ALICE, 8 * BLOCK) == OK
    fd = cbd.Open('/v', ALICE)
    data = bytes(range(256)) * 32
    assert cbd.Write(fd, data, 2 * BLOCK, 2 * BLOCK) == 2 * BLOCK
    got = cbd.Read(fd, '', 0, 8 * BLOCK)
    assert type(got) is bytes
    assert got == bytes(2 * BLOCK) + data + bytes(4 * BLOCK)
    assert cbd.Read(fd, None, 3 * BLOCK, BLOCK) == data[BLOCK:]
    assert cbd.Read(fd, b'ignored', 2 * BLOCK, BLOCK) == data[:BLOCK]
    assert cbd.Read(fd, '', 7 * BLOCK, BLOCK) == bytes(BLOCK)
    assert cbd.Close(fd) == 0


def test_write_accepts_str_bytearray_memoryview(cbd: CBDClient) -> None:
    """Write takes bytes-like buffers and, unlike Curve's Python 3 binding, str (as UTF-8)."""
    assert cbd.Create('/v', ALICE, 4 * BLOCK) == OK
    fd = cbd.Open('/v', ALICE)
    assert cbd.Write(fd, 'aaaaaaaa' * 512, 0, BLOCK) == BLOCK
    assert cbd.Write(fd, 'é' * 2048, BLOCK, BLOCK) == BLOCK
    assert cbd.Write(fd, bytearray(b'b' * BLOCK), 2 * BLOCK, BLOCK) == BLOCK
    assert cbd.Write(fd, memoryview(b'c' * BLOCK), 3 * BLOCK, BLOCK) == BLOCK
    assert cbd.Read(fd, '', 0, 4 * BLOCK) == \
        b'a' * BLOCK + 'é'.encode() * 2048 + b'b' * BLOCK + b'c' * BLOCK
    assert cbd.Close(fd) == 0


def test_write_uses_only_length_bytes_of_buf(cbd: CBDClient) -> None:
    """A buffer longer than `length` is cut to `length`; the next block is untouched."""
    assert cbd.Create('/v', ALICE, 2 * BLOCK) == OK
    fd = cbd.Open('/v', ALICE)
    assert cbd.Write(fd, b'L' * 2 * BLOCK, 0, BLOCK) == BLOCK
    assert cbd.Read(fd, '', 0, 2 * BLOCK) == b'L' * BLOCK + bytes(BLOCK)
    assert cbd.Close(fd) == 0


def test_zero_length_io(cbd: CBDClient) -> None:
    """Read of length 0 returns b''; Write of length 0 returns 0 (Curve's behaviour)."""
    assert cbd.Create('/v', ALICE, BLOCK) == OK
    fd = cbd.Open('/v', ALICE)
    assert cbd.Read(fd, '', 0, 0) == b''
    assert cbd.Read(fd, '', BLOCK, 0) == b''
    assert cbd.Write(fd, b'', 0, 0) == 0
    assert cbd.Close(fd) == 0


def test_io_across_chunks_and_at_the_end_of_a_huge_volume(cbd: CBDClient) -> None:
    """A thin 1 PiB volume: IO across a chunk boundary and in its last block works; everything
    else reads as zeros."""
    assert cbd.Create('/big', ALICE, MAX_LEN) == OK
    fd = cbd.Open('/big', ALICE)
    data = b'x' * BLOCK + b'y' * BLOCK
    assert cbd.Write(fd, data, 4 * MiB - BLOCK, 2 * BLOCK) == 2 * BLOCK
    assert cbd.Read(fd, '', 4 * MiB - 2 * BLOCK, 4 * BLOCK) == bytes(BLOCK) + data + bytes(BLOCK)
    assert cbd.Write(fd, b'e' * BLOCK, MAX_LEN - BLOCK, BLOCK) == BLOCK
    assert cbd.Read(fd, '', MAX_LEN - 2 * BLOCK, 2 * BLOCK) == bytes(BLOCK) + b'e' * BLOCK
    assert cbd.Read(fd, '', MAX_LEN // 2, BLOCK) == bytes(BLOCK)
    assert cbd.Close(fd) == 0


def test_data_persists_across_close_and_uninit(cbd: CBDClient, client_conf: Path) -> None:
    """Written data is there after Close/Open and after UnInit/Init."""
    assert cbd.Create('/v', ALICE, 2 * BLOCK) == OK
    write_block(cbd, '/v', ALICE, b'p' * BLOCK, BLOCK)
    assert read_all(cbd, '/v', ALICE) == bytes(BLOCK) + b'p' * BLOCK
    cbd.UnInit()
    assert cbd.Init(str(client_conf)) == 0
    assert read_all(cbd, '/v', ALICE) == bytes(BLOCK) + b'p' * BLOCK


def test_recycle_bin_round_trip(cbd: CBDClient) -> None:
    """Delete, reuse the name, delete again, recover the newest and then the older by id, delete
    and destroy: data follows each volume all the way."""
    assert cbd.Mkdir('/home', ALICE) == OK
    assert cbd.Create('/home/disk', ALICE, VOL_LEN) == OK
    write_block(cbd, '/home/disk', ALICE, b'1' * BLOCK)
    first = stat(cbd, '/home/disk').id
    assert cbd.Unlink('/home/disk', ALICE) == OK
    assert cbd.Create('/home/disk', ALICE, 2 * VOL_LEN) == OK
    write_block(cbd, '/home/disk', ALICE, b'2' * BLOCK)
    second = stat(cbd, '/home/disk').id
    assert cbd.Unlink('/home/disk', ALICE) == OK
    assert recycled(cbd) == sorted([f'disk-{first}'.encode(), f'disk-{second}'.encode()])
    assert ls(cbd, '/home', ALICE) == []

    assert cbd.Recover('/home/disk', ALICE, 0) == OK
    assert (stat(cbd, '/home/disk').id, stat(cbd, '/home/disk').length) == (second, 2 * VOL_LEN)
    assert cbd.Recover('/home/disk', ALICE, first) == EXISTS
    assert cbd.Recover('/home/disk-old', ALICE, first) == OK
    assert recycled(cbd) == []
    assert read_all(cbd, '/home/disk', ALICE, BLOCK) == b'2' * BLOCK
    assert read_all(cbd, '/home/disk-old', ALICE, BLOCK) == b'1' * BLOCK

    assert cbd.Unlink('/home/disk-old', ALICE) == OK
    assert cbd.DeleteForce(f'/RecycleBin/disk-old-{first}', ROOT) == OK
    assert cbd.Recover('/home/disk-old', ALICE, first) == NOTEXIST
    assert recycled(cbd) == []
    assert ls(cbd, '/home', ALICE) == [b'disk']


IO_ERRORS = [
    ('Read-unaligned-offset', lambda c, fd: c.Read(fd, '', 512, BLOCK), NOT_ALIGNED),
    ('Read-unaligned-length', lambda c, fd: c.Read(fd, '', 0, 100), NOT_ALIGNED),
    ('Read-unaligned-both', lambda c, fd: c.Read(fd, '', 1, 1), NOT_ALIGNED),
    ('Write-unaligned-offset', lambda c, fd: c.Write(fd, b'w' * BLOCK, 512, BLOCK), NOT_ALIGNED),
    ('Write-unaligned-length', lambda c, fd: c.Write(fd, b'w' * BLOCK, 0, 512), NOT_ALIGNED),
    ('Read-unknown-fd', lambda c, fd: c.Read(fd + 100, '', 0, BLOCK), BAD_FD),
    ('Write-unknown-fd', lambda c, fd: c.Write(fd + 100, b'w' * BLOCK, 0, BLOCK), BAD_FD),
    ('Read-negative-fd', lambda c, fd: c.Read(-1, '', 0, BLOCK), BAD_FD),
    ('Read-past-end', lambda c, fd: c.Read(fd, '', VOL_LEN, BLOCK), FAILED),
    ('Read-straddling-end', lambda c, fd: c.Read(fd, '', VOL_LEN - BLOCK, 2 * BLOCK), FAILED),
    ('Read-far-past-end', lambda c, fd: c.Read(fd, '', 2**60, BLOCK), FAILED),
    ('Write-past-end', lambda c, fd: c.Write(fd, b'w' * BLOCK, VOL_LEN, BLOCK), FAILED),
    ('Write-straddling-end',
     lambda c, fd: c.Write(fd, b'w' * 2 * BLOCK, VOL_LEN - BLOCK, 2 * BLOCK), FAILED),
    ('Write-length-over-buf', lambda c, fd: c.Write(fd, b'w' * BLOCK, 0, 2 * BLOCK), PARAM),
    ('Write-empty-buf', lambda c, fd: c.Write(fd, b'', 0, BLOCK), PARAM),
    ('Close-unknown-fd', lambda c, fd: c.Close(fd + 100), FAILED),
    ('Close-negative-fd', lambda c, fd: c.Close(-1), FAILED),
]


@pytest.mark.parametrize('call, expected', _params(IO_ERRORS))
def test_io_error_codes(cbd: CBDClient, world: SimpleNamespace, data_dir: Path,
                        call: Callable, expected: int) -> None:
    """Unaligned IO -22, unknown fd -23 (Close: -2), IO past the end -2, a length longer than
    the buffer -16; nothing is written and the fd stays usable."""
    fd = cbd.Open('/alice/vol', ALICE)
    before = tree(data_dir)
    assert call(cbd, fd) == expected
    assert tree(data_dir) == before
    assert cbd.Read(fd, '', 0, BLOCK) == b'A' * BLOCK
    assert cbd.Close(fd) == 0


def test_closed_fd(cbd: CBDClient) -> None:
    """After Close, Read/Write on the fd give -23 and a second Close gives -2."""
    assert cbd.Create('/v', ALICE, BLOCK) == OK
    fd = cbd.Open('/v', ALICE)
    assert cbd.Close(fd) == 0
    assert cbd.Read(fd, '', 0, BLOCK) == BAD_FD
    assert cbd.Write(fd, b'x' * BLOCK, 0, BLOCK) == BAD_FD
    assert cbd.Close(fd) == FAILED
    assert read_all(cbd, '/v', ALICE) == bytes(BLOCK)


OPEN_ERRORS = [
    ('empty-owner', '/alice/vol', user(''), EXISTS),
    ('missing', '/alice/nope', ALICE, NOTEXIST),
    ('others', '/bob/vol', ALICE, AUTHFAIL),
    ('in-others-dir', '/alice/sub/inner', BOB, AUTHFAIL),
    ('directory', '/alice/sub', ALICE, NOT_SUPPORT),
    ('root-no-password', '/rootvol', user('root'), AUTHFAIL),
    ('root-wrong-password', '/rootvol', user('root', 'x'), AUTHFAIL),
    ('recycled-non-root', None, ALICE, AUTHFAIL),
]


@pytest.mark.parametrize('path, who, expected', _params(OPEN_ERRORS))
def test_open_errors(cbd: CBDClient, world: SimpleNamespace, path: str | None, who: UserInfo_t,
                     expected: int) -> None:
    """Open: empty owner -1 (as Curve), missing -6, not the owner's -4, a directory -11."""
    first = cbd.Open('/alice/vol', ALICE)
    assert cbd.Open(world.gone if path is None else path, who) == expected
    assert cbd.Open('/alice/vol', ALICE) == first + 1  # the failed Open used up no fd


# -- bad-input matrix ---------------------------------------------------------------------------

def _good_args(w: SimpleNamespace, fd: int) -> dict[str, dict[str, Any]]:
    """For every method, arguments that succeed in `world` (the control test checks this)."""
    return {
        'Create': {'filename': '/alice/new', 'user': ALICE, 'size': BLOCK},
        'Mkdir': {'dirpath': '/alice/newdir', 'user': ALICE},
        'StatFile': {'filename': '/alice/vol', 'user': ALICE, 'finfo': FileInfo_t()},
        'Extend': {'filename': '/alice/vol', 'user': ALICE, 'newsize': 2 * VOL_LEN},
        'Unlink': {'filename': '/alice/vol', 'user': ALICE},
        'Rmdir': {'dirpath': '/alice/empty', 'user': ALICE},
        'DeleteForce': {'filename': w.gone, 'user': ROOT},
        'Recover': {'filename': '/alice/gone', 'user': ALICE, 'fileId': 0},
        'Rename': {'user': ALICE, 'oldpath': '/alice/vol', 'newpath': '/alice/renamed'},
        'ChangeOwner': {'filename': '/alice/vol', 'newOwner': 'bob', 'user': ROOT},
        'Open': {'filename': '/alice/vol', 'user': ALICE},
        'Close': {'fd': fd},
        'Read': {'fd': fd, 'buf': '', 'offset': 0, 'length': BLOCK},
        'Write': {'fd': fd, 'buf': b'W' * BLOCK, 'offset': 0, 'length': BLOCK},
        'Listdir': {'dirpath': '/alice', 'user': ALICE},
    }


METHODS = list(_good_args(SimpleNamespace(gone=''), 0))
IO_VOLUME = '/alice/sub/inner'  # the matrix's open fd, away from the entries the calls touch


def _call(cbd: CBDClient, method: str, args: dict[str, Any]) -> Any:
    if method == 'Listdir':
        return listdir_code(cbd, *args.values())
    return getattr(cbd, method)(*args.values())


@pytest.mark.parametrize('method', METHODS)
def test_matrix_control_good_arguments_succeed(cbd: CBDClient, world: SimpleNamespace,
                                               method: str) -> None:
    """The matrix's baseline: each method succeeds with its good arguments, so a failure in the
    matrix is due to the one bad argument."""
    fd = cbd.Open(IO_VOLUME, ALICE)
    args = _good_args(world, fd)[method]
    if method == 'Listdir':
        assert sorted(cbd.Listdir(*args.values())) == [b'empty', b'sub', b'vol']
        return
    result = _call(cbd, method, args)
    expected = {'Open': fd + 1, 'Read': bytes(BLOCK), 'Write': BLOCK}.get(method, OK)
    assert result == expected


def _user_without_owner() -> object:
    class NoOwner:
        password = ''
    return NoOwner()


# kind of argument -> (id, bad value from the good one, xfail reason or None)
BAD_VALUES: dict[str, list[tuple[str, Callable[[Any], Any], str | None]]] = {
    'path': [
        ('None', lambda g: None, None),
        ('int', lambda g: 0, None),
        ('float', lambda g: 1.5, None),
        ('bytes', lambda g: g.encode(), None),
        ('list', lambda g: [g], None),
        ('surrogate', lambda g: g + '\ud800', None),
    ],
    'user': [
        ('None', lambda g: None, None),
        ('str', lambda g: g.owner, None),
        ('dict', lambda g: {'owner': g.owner, 'password': g.password}, None),
        ('no-owner-attr', lambda g: _user_without_owner(), None),
        ('owner-None', lambda g: user(None), None),
        ('owner-int', lambda g: user(0), None),
        ('owner-bytes', lambda g: user(g.owner.encode()), None),
        ('owner-list', lambda g: user([g.owner]), None),
        ('owner-empty', lambda g: user(''), None),
        ('owner-256-bytes', lambda g: user('u' * 256), None),
        ('owner-nul', lambda g: user(g.owner + '\0'), None),
        ('owner-surrogate', lambda g: user('\ud800'), None),
        ('root-password-None', lambda g: user('root', None), None),
        ('root-password-int', lambda g: user('root', 0), None),
        ('root-password-surrogate', lambda g: user('root', '\ud800'), None),
    ],
    'size': [
        ('None', lambda g: None, None),
        ('str', lambda g: str(g), None),
        ('str-unit', lambda g: '10G', None),
        ('float', lambda g: float(g), None),
        ('True', lambda g: True, None),
        ('False', lambda g: False, None),
        ('negative', lambda g: -g, None),
        ('minus-1', lambda g: -1, None),
        ('list', lambda g: [g], None),
        ('2**64', lambda g: 2**64, None),
    ],
    'io-int': [
        ('None', lambda g: None, None),
        ('str', lambda g: str(g), None),
        ('float', lambda g: float(g), None),
        ('True', lambda g: True, None),
        ('False', lambda g: False, None),
        ('negative', lambda g: -BLOCK, None),
        ('list', lambda g: [g], None),
    ],
    'fd': [
        ('None', lambda g: None, None),
        ('str', lambda g: str(g), None),
        ('float', lambda g: float(g), None),
        ('bool', lambda g: bool(g), None),
        ('list', lambda g: [g], None),
        ('negative', lambda g: -1, None),
        ('2**64', lambda g: 2**64, None),
    ],
    'buf': [
        ('None', lambda g: None, None),
        ('int', lambda g: len(g), None),
        ('list-of-ints', lambda g: list(g), None),
        ('dict', lambda g: {'a': 1}, None),
        ('object', lambda g: object(), None),
        ('surrogate-str', lambda g: '\ud800' * len(g), None),
    ],
    'finfo': [
        ('None', lambda g: None, None),
        ('int', lambda g: 42, None),
        ('str', lambda g: 'finfo', None),
        ('dict', lambda g: {}, None),
    ],
    'fileId': [
        ('None', lambda g: None, None),
        ('str', lambda g: '0', None),
        ('float', lambda g: 0.0, None),
        ('True', lambda g: True, None),
        ('negative', lambda g: -1, None),
        ('list', lambda g: [0], None),
    ],
    'newOwner': [
        ('None', lambda g: None, None),
        ('int', lambda g: 0, None),
        ('bytes', lambda g: g.encode(), None),
        ('list', lambda g: [g], None),
        ('empty', lambda g: '', None),
        ('256-bytes', lambda g: 'o' * 256, None),
        ('nul', lambda g: g + '\0', None),
        ('surrogate', lambda g: '\ud800', None),
    ],
}

KIND_OF = {'filename': 'path', 'dirpath': 'path', 'oldpath': 'path', 'newpath': 'path',
           'user': 'user', 'size': 'size', 'newsize': 'size', 'offset': 'io-int',
           'length': 'io-int', 'fd': 'fd', 'buf': 'buf', 'finfo': 'finfo', 'fileId': 'fileId',
           'newOwner': 'newOwner'}


def _matrix() -> list:
    params = []
    for method, args in _good_args(SimpleNamespace(gone='/RecycleBin/x'), 0).items():
        for arg in args:
            if method == 'Read' and arg == 'buf':
                continue  # ignored, as in Curve
            for bad_id, make_bad, bug in BAD_VALUES[KIND_OF[arg]]:
                marks = [pytest.mark.xfail(reason=bug, strict=True)] if bug else []
                params.append(pytest.param(method, arg, make_bad, marks=marks,
                                           id=f'{method}-{arg}-{bad_id}'))
    return params


@pytest.mark.parametrize('method, arg, make_bad', _matrix())
def test_bad_input_returns_negative_and_changes_nothing(
        cbd: CBDClient, world: SimpleNamespace, data_dir: Path, caplog, expect_logs,
        method: str, arg: str, make_bad: Callable) -> None:
    """Wrong types, missing or malformed users, empty/over-long names, negative or bool sizes:
    every call returns a negative int (Listdir raises only RuntimeError), never INTERNAL_ERROR,
    logs nothing, and changes nothing (namespace, data, open fds)."""
    expect_logs('unexpected error in CBDClient')  # asserted below instead, so xfail can see it
    fd = cbd.Open(IO_VOLUME, ALICE)
    assert cbd.Write(fd, b'I' * BLOCK, 0, BLOCK) == BLOCK
    args = _good_args(world, fd)[method]
    args[arg] = make_bad(args[arg])
    before = tree(data_dir)
    result = _call(cbd, method, args)
    assert type(result) is int and result < 0
    assert result != INTERNAL
    assert curve_errors(caplog) == []
    assert tree(data_dir) == before
    assert cbd.Read(fd, '', 0, BLOCK) == b'I' * BLOCK  # the fd still works
    assert cbd.Close(fd) == 0


USER_METHODS = [m for m, a in _good_args(SimpleNamespace(gone=''), 0).items() if 'user' in a]


@pytest.mark.parametrize('who', [user('root'), user('root', 'wrong'),
                                 user('root', 'Root_password')],
                         ids=['no-password', 'wrong', 'wrong-case'])
@pytest.mark.parametrize('method', USER_METHODS)
def test_root_without_its_password_gets_authfail(cbd: CBDClient, world: SimpleNamespace,
                                                 data_dir: Path, method: str,
                                                 who: UserInfo_t) -> None:
    """'root' with a missing or wrong password is refused (-4) by every call taking a user."""
    args = _good_args(world, 0)[method]
    args['user'] = who
    before = tree(data_dir)
    assert _call(cbd, method, args) == AUTHFAIL
    assert tree(data_dir) == before


@pytest.mark.parametrize('method', USER_METHODS)
def test_other_users_entries_are_off_limits(cbd: CBDClient, world: SimpleNamespace,
                                            data_dir: Path, method: str) -> None:
    """Bob gets -4 from every call on alice's entries (and from root-only calls)."""
    args = _good_args(world, 0)[method]
    args['user'] = BOB
    before = tree(data_dir)
    assert _call(cbd, method, args) == AUTHFAIL
    assert tree(data_dir) == before


# -- scripts ------------------------------------------------------------------------------------

# The example of curve-python-api.txt, in order, as written: only `print x` became `print(x)`,
# the loop body is indented, and the C struct definitions between the snippets are left out.
REFERENCE_SCRIPT = '''
import curvefs
# Get a CBDClient object that interacts with the back-end cluster. Different CBDClient objects can establish connections with different clusters
cbd1 = curvefs.CBDClient()
cbd2 = curvefs.CBDClient()
import curvefs
cbd = curvefs.CBDClient()
# parameter: full path of curve-client configuration file
# return: return 0 if initialized successfully, -1 means failed
cbd.Init("/etc/curve/client.conf")
import curvefs
cbd = curvefs.CBDClient()
cbd.Init("/etc/curve/client.conf") # subsequent examples omit the initialization process
# First initialize user information (the control plane interfaces of curvefs have user information verification, and user information needs to be passed in)
user = curvefs.UserInfo_t()
user.owner = "curve"
user.password = "" # when the password is empty, it can be omitted
# Create a file with Create interface
cbd.Create("/curve", user, 10*1024*1024*1024)
# Construct user information
user = curvefs.UserInfo_t()
user.owner = "curve"
# Construct file information
finfo = curvefs.FileInfo_t()
# Get file information
cbd.StatFile("/curve", user, finfo)
print(finfo.filetype)
print(finfo.length)
print(finfo.ctime)
# Construct user information
user = curvefs.UserInfo_t()
user.owner = "curve"
# Extend
cbd.Extend("/curve", user, 20*1024*1024*1024)
# Get file information after extension
finfo = curvefs.FileInfo_t()
cbd.StatFile("/curve", user, finfo)
print(finfo.length)
# Construct user information
user = curvefs.UserInfo_t()
user.owner = "user1"
# Open file,return fd
fd = cbd.Open("/tmp1", user)
# Close file
cbd.Close(fd)
# Construct user information
user = curvefs.UserInfo_t()
user.owner = "user1"
# Open file,return fd
fd = cbd.Open("/tmp1", user)
# Write files (Currently, 4k alignment is required for reading and writing)
cbd.Write(fd, "aaaaaaaa"*512, 0, 4096)
cbd.Write(fd, "bbbbbbbb"*512, 4096, 4096)
# The read content is returned by the return value, buf is not needed, you can pass in an empty string
cbd.Read(fd,"", 0, 4096)
# Close file
cbd.Close(fd)
# Construct user information
user = curvefs.UserInfo_t()
user.owner = "curve"
# Delete file
cbd.Unlink("/curve", user)
# Construct user information
user = curvefs.UserInfo_t()
user.owner = "curve"
# Recover file
cbd.Recover("/curve", user, 0)
# Construct user information
user = curvefs.UserInfo_t()
user.owner = "curve"
# Rename
cbd.Rename(user, "/curve", "/curve-new")
# Construct user information
user = curvefs.UserInfo_t()
user.owner = "curve"
# Create directory
cbd.Mkdir("/curvedir", user)
# Construct user information
user = curvefs.UserInfo_t()
user.owner = "curve"
# Delete directory
cbd.Rmdir("/curvedir", user)
# return: files in the directory (only filename)
files = cbd.Listdir("/test", user)
for f in files:
    print(f)
clusterId = cbd.GetClusterId()
print(clusterId)
# c355675a-f4d2-4729-b80a-5a7bcc749d1c
cbd.UnInit()
'''


def _run_script(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)


def test_reference_example_script(cbd: CBDClient, client_conf: Path, tmp_path: Path) -> None:
    """The reference example runs unchanged against a conf file (given /tmp1 of user1 and /test
    of curve, which it assumes), prints what Curve's would, and leaves the expected namespace."""
    assert cbd.Create('/tmp1', user('user1'), 2 * BLOCK) == OK
    assert cbd.Mkdir('/test', user('curve')) == OK
    assert cbd.Create('/test/vol1', user('curve'), BLOCK) == OK
    script = REFERENCE_SCRIPT.replace('"/etc/curve/client.conf"', repr(str(client_conf)))
    before_us = time.time_ns() // 1000
    done = _run_script(script, tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ['1', str(10 * GiB)]
    assert before_us <= int(lines[2]) <= time.time_ns() // 1000
    assert lines[3:] == [str(20 * GiB), "b'vol1'", cbd.GetClusterId()]
    assert ls(cbd, '/') == [b'RecycleBin', b'curve-new', b'test', b'tmp1']
    new = stat(cbd, '/curve-new')
    assert (new.length, new.owner, new.filetype) == (20 * GiB, 'curve', 1)
    assert recycled(cbd) == []
    assert read_all(cbd, '/tmp1') == b'a' * BLOCK + b'b' * BLOCK


def test_script_exiting_without_close_or_uninit_keeps_its_writes(cbd: CBDClient,
                                                                 client_conf: Path,
                                                                 tmp_path: Path) -> None:
    """Curve's writes are durable when Write returns: a script that never calls Close or UnInit
    still leaves its data (and a store that checks clean)."""
    assert cbd.Create('/v', ALICE, 2 * BLOCK) == OK
    done = _run_script(textwrap.dedent(f'''
        import curvefs
        cbd = curvefs.CBDClient()
        assert cbd.Init({str(client_conf)!r}) == 0
        user = curvefs.UserInfo_t()
        user.owner = "alice"
        fd = cbd.Open("/v", user)
        assert cbd.Write(fd, b"s" * 4096, 4096, 4096) == 4096
    '''), tmp_path)
    assert done.returncode == 0, done.stderr
    assert read_all(cbd, '/v', ALICE) == bytes(BLOCK) + b's' * BLOCK
