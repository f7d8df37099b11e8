"""doit's sqlite3 state backend, reading all rows at once and writing only what changed.

doit rewrites the row of every task it executed, and a boot always executes the goal-state
check: an unchanged row still meant a transaction and four fsyncs of the state database
per boot (milliseconds each on a cloud disk). Rows whose content is unchanged are now
left alone, so a boot with nothing to do commits nothing, and a DB that does not exist
is created by the first write, so commands that only look create none. The file format
is doit's own: `doit` and the other commands read it with doit's SqliteDB.
"""

from __future__ import annotations

import os
from typing import Any

from doit.dependency import SqliteDB

IN_MEMORY = ":memory:"


class AgentStateDB(SqliteDB):
    """SqliteDB that reads every row in one query and skips rewriting rows equal to what
    it read (doit would run one query per task: ~25 on every boot)."""

    _conn: Any  # doit's sqlite3 connection (to memory until the first write, see dump)

    def __init__(self, name: str, codec: Any, **kwargs: Any) -> None:
        # A DB that does not exist yet is created by the first write, not by opening it:
        # the commands that only look (list, info, graph, a cancelled run) create nothing.
        self._create_on_write = name != IN_MEMORY and not os.path.exists(name)
        super().__init__(name, codec, **kwargs)
        # Each task's row as stored, in the codec's encoding; decoded when doit asks.
        # (An expression has no declared type, so sqlite3 hands over the text undecoded.)
        rows = self._conn.execute(
            "select task_id, cast(task_data as text) as stored from doit").fetchall()
        self._as_read: dict[str, str] = {row["task_id"]: row["stored"] for row in rows}

    def _sqlite3(self, name: str) -> Any:
        return super()._sqlite3(IN_MEMORY if self._create_on_write else name)

    def _get_task_data(self, task_id: str) -> dict[str, Any]:
        stored = self._as_read.get(task_id)
        return {} if stored is None else dict(self.codec.decode(stored))

    def in_(self, task_id: str) -> bool:
        return task_id in self._cache or task_id in self._as_read

    def remove(self, task_id: str) -> None:
        self._as_read.pop(task_id, None)  # the row is gone: whatever is set next is new
        super().remove(task_id)

    def remove_all(self) -> None:
        self._as_read.clear()
        super().remove_all()

    def dump(self) -> None:
        encode = self.codec.encode
        self._dirty: set[str] = {task_id for task_id in self._dirty
                                 if encode(self._cache[task_id]) != self._as_read.get(task_id)}
        if self._create_on_write and self._dirty:
            # The first rows: now the file is made (and Lib.Dir, private, if need be).
            os.makedirs(os.path.dirname(os.path.abspath(self.name)), mode=0o700,
                        exist_ok=True)
            self._conn.close()
            self._create_on_write = False
            self._conn = self._sqlite3(self.name)
        super().dump()
