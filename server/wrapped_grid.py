"""``WrappedGrid``: a Flower ``Grid`` that passes every call to the grid it wraps.

The ServerApp's grid is wrapped twice (``server/audit.py`` logs and counts what is received,
``server/pacing.py`` paces a simulation's messages); each wrapper overrides what it changes and
inherits the rest from here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid


class WrappedGrid(Grid):
    """Every ``Grid`` method, and anything a concrete grid adds, answered by ``grid``."""

    def __init__(self, grid: Grid):
        self._grid = grid

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def set_run(self, run: Any) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Any:
        return self._grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:
        return self._grid.get_nodes()

    def __getattr__(self, name: str) -> Any:  # anything a concrete grid adds (pull_interval, ...)
        if name == "_grid":
            raise AttributeError(name)
        return getattr(self._grid, name)
