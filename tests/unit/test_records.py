"""The ready record reads back what it wrote, reads what earlier plugin versions wrote, and
an unreadable one leaves its environment not ready."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_pixi.activation import Activation
from ray_pixi.install import load_installed
from ray_pixi.key import STORE_LAYOUT
from ray_pixi.records import ReadyRecord
from ray_pixi.store import Store

KEY = "r" * 32
INSTALLED = ReadyRecord(
    key=KEY, layout=STORE_LAYOUT,
    activation=Activation("/s/envs/k/.pixi/envs/default/bin/python",
                          {"PATH": "/s/envs/k/.pixi/envs/default/bin:${PATH}"}),
    prefix="/s/envs/k/.pixi/envs/default", size_bytes=123_456_789, python="3.11.7",
    ray="2.55.0", pixi_version="0.77.0", mode="inline", environment="default", manifest=None,
    installed_at=1_765_000_000.5, seconds={"pixi_install": 12.5, "bytecode": 3.25,
                                           "total": 17.0},
    log="/s/logs/install-k-20261207T000000-1.log")
# What install.py wrote before the record was typed (layout 2), and what the first plugin
# version wrote (layout 1: no prefix, one install_seconds).
UNTYPED_LAYOUT_2 = {
    "layout": 2, "activation": {"python": "/e/bin/python", "env_vars": {"A": "1"}},
    "prefix": "/e", "size_bytes": 1000, "python": "3.11.7", "ray": None,
    "pixi_version": "0.77.0", "mode": "manifest", "environment": "cuda",
    "manifest": "sub/pixi.toml", "installed_at": 1765000000.25,
    "seconds": {"pixi_install": 1.0, "bytecode": 0.5, "total": 2.0}, "log": "/l.log",
    "key": KEY,
}
LAYOUT_1 = {
    "layout": 1, "activation": {"python": "/e/bin/python", "env_vars": {}}, "size_bytes": 5,
    "python": "3.10.14", "ray": "2.40.0", "pixi_version": "0.40.0", "mode": "inline",
    "environment": "default", "manifest": None, "installed_at": 1700000000.0,
    "install_seconds": 42.0, "log": "/l.log", "key": KEY,
}


def test_a_record_reads_back_what_it_wrote() -> None:
    assert ReadyRecord.from_json(json.loads(json.dumps(INSTALLED.to_json()))) == INSTALLED


def test_a_record_writes_every_field_earlier_readers_look_up() -> None:
    """Nodes sharing a store upgrade one at a time: an older agent reads this record."""
    assert set(INSTALLED.to_json()) == set(UNTYPED_LAYOUT_2)
    assert set(SOLVED.to_json()) >= set(UNTYPED_LAYOUT_2)


SOLVED = ReadyRecord(key=KEY, layout=STORE_LAYOUT, lock_sha256="a" * 64, solution="s" * 32,
                     solution_source="shared")


def test_a_record_names_the_lock_it_was_built_from() -> None:
    written = json.loads(json.dumps(SOLVED.to_json()))
    assert (written["lock_sha256"], written["solution"], written["solution_source"]) == \
        ("a" * 64, "s" * 32, "shared")
    assert ReadyRecord.from_json(written) == SOLVED
    with pytest.raises(ValueError):
        ReadyRecord.from_json({**written, "lock_sha256": 5})


def test_the_records_install_wrote_before_typing_are_read_whole() -> None:
    record = ReadyRecord.from_json(UNTYPED_LAYOUT_2)
    assert record.to_json() == UNTYPED_LAYOUT_2
    assert record.activation == Activation("/e/bin/python", {"A": "1"})


def test_a_first_version_record_is_read_with_its_total_time() -> None:
    record = ReadyRecord.from_json(LAYOUT_1)
    assert (record.layout, record.prefix, record.size_bytes) == (1, None, 5)
    assert record.seconds == {"total": 42.0} and record.environment == "default"


def test_a_record_with_only_a_key_is_read_with_defaults() -> None:
    assert ReadyRecord.from_json({"key": KEY, "unknown": [1]}) == ReadyRecord(KEY)


@pytest.mark.parametrize("data", [
    [KEY], "ready", {"size_bytes": 1}, {"key": 5}, {"key": KEY, "size_bytes": "many"},
    {"key": KEY, "activation": "python"}, {"key": KEY, "activation": {"python": "p"}},
    {"key": KEY, "python": 3.11}, {"key": KEY, "layout": True}, {"key": KEY, "seconds": [1]},
])
def test_what_is_not_a_record_is_refused(data: object) -> None:
    with pytest.raises(ValueError):
        ReadyRecord.from_json(data)


def marked(tmp_path: Path, text: str) -> Store:
    store = Store(tmp_path)
    store.ensure()
    store.workspace(KEY).mkdir()
    (store.envs / f"{KEY}.json").write_text(text)
    return store


@pytest.mark.parametrize("text", [
    "{not json", json.dumps({**UNTYPED_LAYOUT_2, "key": "other"}),
    json.dumps({**UNTYPED_LAYOUT_2, "size_bytes": "many"}),
])
def test_an_unreadable_record_leaves_its_environment_not_ready(tmp_path: Path,
                                                               text: str) -> None:
    store = marked(tmp_path, text)
    assert store.read_ready(KEY) is None and load_installed(store, KEY) is None
    assert store.sweep() == [KEY]  # its workspace is an interrupted install's


def test_only_a_record_of_this_layout_starts_workers(tmp_path: Path) -> None:
    store = marked(tmp_path, json.dumps({**UNTYPED_LAYOUT_2, "layout": STORE_LAYOUT}))
    installed = load_installed(store, KEY)
    assert installed is not None and installed.size_bytes == 1000
    assert installed.activation.python == "/e/bin/python" and installed.ray_version is None
    old = marked(tmp_path / "old", json.dumps(LAYOUT_1))
    assert old.read_ready(KEY) is not None  # listed and counted against the cap...
    assert load_installed(old, KEY) is None  # ...but reinstalled under this layout
