"""What `pip install .` ships: every package of the source tree, and Curve's `curvefs` name."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / 'pyproject.toml').read_text())['tool']['setuptools']
    listed = set(config['packages'])
    on_disk = {'.'.join(init.parent.relative_to(ROOT).parts)
               for init in (ROOT / 'curvefuse').rglob('__init__.py')
               if 'compat' not in init.parts}
    assert on_disk <= listed
    assert config['package-dir']['curvefs'] == 'curvefuse/compat/curvefs'


def test_curvefs_is_curves_module_name_for_cbdclient() -> None:
    import curvefs
    from curvefuse.client import CBDClient, FileInfo_t, UserInfo_t

    assert (curvefs.CBDClient, curvefs.UserInfo_t, curvefs.FileInfo_t) == \
        (CBDClient, UserInfo_t, FileInfo_t)
