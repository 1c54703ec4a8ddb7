"""The Pythonic API: a volume behaves as a binary file, errors carry Curve's codes."""

from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path

import pytest

import curvefuse
from curvefuse import parse_size
from curvefuse.errors import (AccessError, BadHandleError, ExistsError, InvalidArgumentError,
                              NotFoundError, OutOfRangeError, ReadOnlyError)

MiB = 2**20


def test_volume_is_a_binary_file(store: curvefuse.Store) -> None:
    store.create('/disk', '1M')
    with store.open('/disk', 'r+b') as vol:
        assert isinstance(vol, io.RawIOBase)
        assert (vol.readable(), vol.writable(), vol.seekable()) == (True, True, True)
        assert vol.write(b'hello world') == 11
        assert vol.tell() == 11
        assert vol.seek(6) == 6
        assert vol.read(5) == b'world'
        buf = bytearray(5)
        vol.seek(0)
        assert vol.readinto(buf) == 5 and buf == b'hello'
        assert vol.seek(-5, io.SEEK_END) == MiB - 5
        assert vol.read() == bytes(5)
        assert vol.read(10) == b''  # at the end, as a file
        assert len(vol) == vol.size == MiB
    assert vol.closed
    with pytest.raises(ValueError):
        vol.read(1)


def test_copyfileobj_in_and_out(store: curvefuse.Store, tmp_path: Path) -> None:
    image = tmp_path / 'image.raw'
    image.write_bytes(os.urandom(3 * MiB + 4096))
    store.create('/disk', '4M')
    with open(image, 'rb') as src, store.open('/disk', 'r+b') as vol:
        shutil.copyfileobj(src, vol)
    out = tmp_path / 'out.raw'
    with store.open('/disk') as vol, open(out, 'wb') as dst:
        shutil.copyfileobj(vol, dst)
    assert out.read_bytes()[:image.stat().st_size] == image.read_bytes()
    assert out.stat().st_size == 4 * MiB


def test_buffered_wrapper_works(store: curvefuse.Store) -> None:
    store.create('/disk', '1M')
    with io.BufferedRandom(store.open('/disk', 'r+b')) as vol:
        vol.write(b'a' * 100)
        vol.seek(50)
        assert vol.read(60) == b'a' * 50 + bytes(10)


def test_read_only_volume_refuses_writes(store: curvefuse.Store) -> None:
    store.create('/disk', '1M')
    with store.open('/disk') as vol:
        assert not vol.writable()
        with pytest.raises(ReadOnlyError):
            vol.write(b'x')


def test_write_past_the_end_raises_and_writes_nothing(store: curvefuse.Store) -> None:
    store.create('/disk', '8K')
    with store.open('/disk', 'r+b') as vol:
        vol.seek(8190)
        with pytest.raises(OutOfRangeError) as info:
            vol.write(b'abc')
        assert info.value.errno == errno.ENOSPC
        assert vol.pread(8192, 0) == bytes(8192)


def test_flush_makes_writes_visible_to_a_new_handle(store: curvefuse.Store) -> None:
    store.create('/disk', '8M')
    writer = store.open('/disk', 'r+b')
    writer.pwrite(b'z' * 4096, 4 * MiB)
    writer.flush()
    with store.open('/disk') as reader:
        assert reader.pread(4096, 4 * MiB) == b'z' * 4096
    writer.close()
    with pytest.raises(BadHandleError):
        writer.handle.read(0, 1)


@pytest.mark.parametrize('mode', ['w', 'wb', 'a', 'r', 'x'])
def test_unknown_modes_are_refused(store: curvefuse.Store, mode: str) -> None:
    store.create('/disk', '1M')
    with pytest.raises(InvalidArgumentError):
        store.open('/disk', mode)


def test_errors_carry_curve_codes_and_errnos(store: curvefuse.Store) -> None:
    with pytest.raises(NotFoundError) as info:
        store.stat('/nope')
    assert (info.value.code, info.value.errno) == (-6, errno.ENOENT)
    store.create('/v', '1M')
    with pytest.raises(ExistsError) as info:
        store.create('/v', '1M')
    assert (info.value.code, info.value.errno) == (-1, errno.EEXIST)
    assert store.create('/v', '1M', exist_ok=True).length == MiB


def test_users_see_only_their_own(store: curvefuse.Store) -> None:
    alice = store.as_user('alice')
    alice.mkdir('/alice')
    alice.create('/alice/disk', '1M')
    bob = store.as_user('bob')
    with pytest.raises(AccessError):
        bob.stat('/alice/disk')
    with pytest.raises(AccessError):
        store.as_user('root', 'wrong')
    assert store.as_user('root', 'root_password').stat('/alice/disk').owner == 'alice'


@pytest.mark.parametrize('text, expected', [
    ('4096', 4096), ('10G', 10 * 2**30), ('512MiB', 512 * MiB), ('1t', 2**40), (' 2 k ', 2048),
    (7, 7)])
def test_sizes_read_as_people_write_them(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize('text', ['', 'G', '1.5G', '-1', '10X', None, True, []])
def test_bad_sizes_are_refused(text: object) -> None:
    with pytest.raises(InvalidArgumentError):
        parse_size(text)
