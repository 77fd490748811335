"""``Held``: what a hold of the algorithm lock yields (store/lock.py): Oríon's locked state,
plus the backlog of batched observation and the versioned state's token, mode and deltas."""

from __future__ import annotations

from orion.storage.base import LockedAlgorithmState

_UNREAD = object()


class Held(LockedAlgorithmState):
    """Oríon's locked state plus the backlog of batched observation and the versioned state.

    ``backlog`` holds the trials waiting to be observed (read on first use, during the hold:
    the storage's ``acquire_algorithm_lock`` keeps Oríon's exact signature), ``observed`` how
    many of them (from the first) the new state has observed. ``token`` names the stored
    state; ``mode`` says what was read of it: "snap" (``state`` is the whole state), "log"
    (``deltas``: what the caller's resident algorithm lacks) or "current" (nothing: the
    resident algorithm is it). In the last two, ``state`` reads the whole state on first use.
    The holder may set ``delta`` (statedelta.diff) with the new state; ``written`` is the
    token of the state the release left (None: nothing written, the hold was lost)."""

    def __init__(
        self,
        configuration,
        token: str = "",
        mode: str = "snap",
        sizes: tuple[int, int] = (0, 0),
        read_backlog=None,
        read_state=None,
    ):
        super().__init__(_UNREAD, configuration, True)
        self.token, self.mode, self.sizes = token, mode, sizes
        self.deltas: list[dict] = []
        self.delta: dict | None = None
        self.written: str | None = None
        self._read_backlog = read_backlog
        self._read_state = read_state
        self._backlog: list | None = None
        self.observed = 0

    def set_original(self, state) -> None:
        self._original_state = self._state = state

    @property
    def unread(self) -> bool:
        return self._state is _UNREAD

    @property
    def state(self):
        if self._state is _UNREAD:
            self.set_original(self._read_state() if self._read_state else None)
        return self._state

    @property
    def backlog(self) -> list:
        if self._backlog is None:
            self._backlog = self._read_backlog() if self._read_backlog else []
        return self._backlog

    @backlog.setter
    def backlog(self, trials: list) -> None:
        self._backlog = trials
