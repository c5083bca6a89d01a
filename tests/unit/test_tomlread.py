"""The KubeRay payload carries tomli-w (and tomli for Python 3.10) inside ray_pixi, so that
only `ray_pixi` is on a Ray container's sys.path: ray_pixi uses the vendored copy when the
regular package is missing, and nothing else can import it by its name from the path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from ray_pixi.tomlread import vendored

SRC = Path(__file__).resolve().parents[2] / "src" / "ray_pixi"


def payload_python(tmp_path: Path) -> Path:
    """ray_pixi as the image's payload has it: tomli_w under ray_pixi/_vendor."""
    python = tmp_path / "python"
    shutil.copytree(SRC, python / "ray_pixi", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(Path(tomli_w.__file__).parent, python / "ray_pixi" / "_vendor" / "tomli_w",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return python


def test_without_tomli_w_the_manifest_is_written_with_the_vendored_copy(tmp_path: Path) -> None:
    python = payload_python(tmp_path)
    code = (
        "import sys, json\n"
        "sys.modules['tomli_w'] = None  # not installed where Ray runs\n"
        f"sys.path.insert(0, {str(python)!r})\n"
        "from ray_pixi.manifest import tomli_w\n"
        "print(json.dumps([tomli_w.__file__, tomli_w.dumps({'a': [1, 'b']})]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    where, text = json.loads(out.stdout)
    assert Path(where).is_relative_to(python / "ray_pixi" / "_vendor" / "tomli_w")
    assert text == 'a = [\n    1,\n    "b",\n]\n'


def test_the_vendored_copy_is_not_on_the_path(tmp_path: Path) -> None:
    python = payload_python(tmp_path)
    code = (
        "import sys\n"
        "sys.modules['tomli_w'] = None\n"
        f"sys.path.insert(0, {str(python)!r})\n"
        "import ray_pixi\n"
        "try:\n    import tomli_w\nexcept ImportError:\n    print('absent')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "absent", out.stderr
    assert sorted(p.name for p in python.iterdir()) == ["ray_pixi"]


def test_a_package_that_is_not_vendored_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ImportError, match="no copy of it vendored in .*install nope-pkg"):
        vendored("nope_pkg", vendor_dir=tmp_path)
