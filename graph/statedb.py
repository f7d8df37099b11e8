"""doit's sqlite3 state backend, writing only what changed.

doit rewrites the row of every task it executed, and a boot always executes the goal-state
check: an unchanged row still meant a transaction and four fsyncs of the state database
per boot (milliseconds each on a cloud disk). Rows whose content is unchanged are now
left alone, so a boot with nothing to do commits nothing. The file format is doit's own:
`doit` and the other commands read it with doit's SqliteDB.
"""

from __future__ import annotations

from typing import Any

from doit.dependency import SqliteDB


class AgentStateDB(SqliteDB):
    """SqliteDB that skips rewriting rows equal to what it read."""

    def __init__(self, name: str, codec: Any, **kwargs: Any) -> None:
        # Each task's row as stored, in the codec's encoding, once read.
        self._as_read: dict[str, str] = {}
        super().__init__(name, codec, **kwargs)

    def _get_task_data(self, task_id: str) -> dict[str, Any]:
        data: dict[str, Any] = super()._get_task_data(task_id)
        if data:
            self._as_read[task_id] = self.codec.encode(data)
        return data

    def remove(self, task_id: str) -> None:
        self._as_read.pop(task_id, None)  # the row is gone: whatever is set next is new
        super().remove(task_id)

    def remove_all(self) -> None:
        self._as_read.clear()
        super().remove_all()

    def dump(self) -> None:
        self._dirty: set[str] = {task_id for task_id in self._dirty
                       if self.codec.encode(self._cache[task_id]) != self._as_read.get(task_id)}
        super().dump()
