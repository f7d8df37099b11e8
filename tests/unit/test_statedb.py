"""The state backend writes only rows whose content changed (graph/doit_private.py)."""

from __future__ import annotations

from pathlib import Path

from doit.dependency import JSONCodec, SqliteDB

from graph.doit_private import AgentStateDB


def _open(path: Path) -> AgentStateDB:
    return AgentStateDB(str(path), JSONCodec())


def _stamp(path: Path) -> tuple[int, bytes]:
    return path.stat().st_mtime_ns, path.read_bytes()


def test_unchanged_rows_are_not_written_changed_and_new_ones_are(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    db = _open(path)
    db.set("gather:goalstate", "_values_:", {"incarnation": "1"})
    db.set("gather:goalstate", "deps:", ())
    db.dump()
    before = _stamp(path)

    db = _open(path)  # a boot that sets exactly what is stored
    assert db.get("gather:goalstate", "_values_:") == {"incarnation": "1"}
    db.set("gather:goalstate", "_values_:", {"incarnation": "1"})
    db.set("gather:goalstate", "deps:", ())  # a tuple, stored as a JSON list
    db.dump()
    assert _stamp(path) == before, "an unchanged row was written"

    db = _open(path)
    db.get("gather:goalstate", "_values_:")
    db.set("gather:goalstate", "_values_:", {"incarnation": "2"})
    db.set("user:account", "_values_:", {"user": "azureuser"})  # never stored before
    db.dump()
    plain = SqliteDB(str(path), JSONCodec())  # doit's own backend reads the same file
    assert plain.get("gather:goalstate", "_values_:") == {"incarnation": "2"}
    assert plain.get("user:account", "_values_:") == {"user": "azureuser"}


def test_a_row_set_without_being_read_first_is_written(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    db = _open(path)
    db.set("disk:mount", "_values_:", {"mounted": True})
    db.dump()
    db = _open(path)
    db.set("disk:mount", "_values_:", {"mounted": False})  # doit may set before it gets
    db.dump()
    assert SqliteDB(str(path), JSONCodec()).get("disk:mount", "_values_:") == {"mounted": False}


def test_a_removed_row_set_again_to_the_same_content_is_written(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    db = _open(path)
    db.set("ssh:keys", "_values_:", {"keys": 1})
    db.dump()
    db = _open(path)
    db.get("ssh:keys", "_values_:")
    db.remove("ssh:keys")  # doit's remove_success deletes the row at once
    db.set("ssh:keys", "_values_:", {"keys": 1})
    db.dump()
    assert SqliteDB(str(path), JSONCodec()).get("ssh:keys", "_values_:") == {"keys": 1}


def test_rows_are_read_in_one_query(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    db = _open(path)
    for name in ("gather:vm", "user:account", "ssh:config"):
        db.set(name, "_values_:", {"name": name})
    db.dump()
    db = _open(path)
    queries: list[str] = []
    db._conn.set_trace_callback(queries.append)
    assert [db.get(name, "_values_:") for name in ("gather:vm", "user:account", "disk:mount")] \
        == [{"name": "gather:vm"}, {"name": "user:account"}, None]
    assert db.in_("ssh:config") and not db.in_("disk:swapfile")
    assert queries == []
