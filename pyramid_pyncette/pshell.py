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
    env["tm"] = tm
    env["scheduler"] = registry.scheduler.bind(tm)
    env["immediate_scheduler"] = registry.scheduler
    try:
        yield
    finally:
        if active_transaction(tm) is not None:
            tm.abort()
