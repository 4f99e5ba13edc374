"""``pshell`` support: the scheduler in the shell's namespace.

Point pshell at it from the INI file::

    [pshell]
    setup = pyramid_pyncette.pshell.setup

or call it from your own pshell setup. The namespace then has ``tm`` (the
request's transaction manager, already begun), ``scheduler`` (bound to it:
jobs are written by ``tm.commit()``) and ``immediate_scheduler`` (writes at
once). Whatever is not committed when the shell exits is discarded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import transaction

from .transaction import active_transaction


def setup(env: dict[str, Any]) -> Iterator[None]:
    """Add ``tm``, ``scheduler`` and ``immediate_scheduler`` to the pshell namespace."""
    request = env["request"]
    registry = env["registry"]
    tm = getattr(request, "tm", None)
    if tm is None:  # the app does not include pyramid_tm
        tm = request.tm = transaction.TransactionManager(explicit=True)
    tm.begin()
    scheduler = registry.scheduler.bind(tm)
    immediate = registry.scheduler
    # pshell's help prints each new name's __doc__ on one line: keep it to one.
    for value, doc in (
        (tm, "Transaction manager, begun: tm.commit() writes, tm.abort() discards."),
        (scheduler, "Scheduler bound to tm: jobs are written by tm.commit()."),
        (immediate, "Scheduler that writes at once (registry.scheduler)."),
    ):
        _set_help(value, doc)
    env["tm"] = tm
    env["scheduler"] = scheduler
    env["immediate_scheduler"] = immediate
    try:
        yield
    finally:
        if active_transaction(tm) is not None:
            tm.abort()


def _set_help(value: Any, doc: str) -> None:
    """Give ``value`` the one-line ``__doc__`` pshell shows as its help."""
    with contextlib.suppress(AttributeError, TypeError):  # no instance dict: no help
        value.__doc__ = doc
