"""Wait for a file to be written to, without polling it (Linux inotify).

The SQLite store's probe waits here for the database's write-ahead log to
change: every commit appends to it, so a daemon hears of another process's
commit within a millisecond and costs nothing while nothing is written.
The watch itself is inotify_simple's (a dependency on Linux). Where
inotify is missing (macOS, Windows, a kernel or container without it)
:func:`watch_file` returns None and the probe reads its marker at a short
interval instead.
"""

from __future__ import annotations

import errno
import sys
from typing import Any

__all__ = ["FileWatch", "watch_file"]


def _inotify() -> Any:
    """The inotify_simple module, or None where there is none (not Linux, not installed)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import inotify_simple
    except ImportError:
        return None
    return inotify_simple


class FileWatch:
    """An inotify instance watching one file for writes; close it when done."""

    def __init__(self, notify: Any, flags: Any) -> None:
        self._notify = notify
        self._flags = flags

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a write; True if one came.

        Raises :class:`FileNotFoundError` once the file was deleted or moved
        away (the watch ended: open a new one on the file now at the path).
        """
        flags = self._flags
        mask = 0
        for event in self._notify.read(timeout=max(0, round(timeout * 1000))):
            mask |= event.mask
        if mask & (flags.DELETE_SELF | flags.MOVE_SELF | flags.IGNORED):
            raise FileNotFoundError(errno.ENOENT, "the watched file was deleted or moved")
        # An overflowed queue lost events: one of them may have been a write.
        return bool(mask & (flags.MODIFY | flags.Q_OVERFLOW))

    def close(self) -> None:
        """Stop watching (closes the inotify descriptor)."""
        if not self._notify.closed:
            self._notify.close()


def watch_file(path: str) -> FileWatch | None:
    """A :class:`FileWatch` on ``path``, or None where inotify is unavailable.

    Raises :class:`OSError` when ``path`` cannot be watched (it does not
    exist, or the process's watches ran out).
    """
    inotify = _inotify()
    if inotify is None:
        return None
    flags = inotify.flags
    notify = inotify.INotify()
    try:
        notify.add_watch(path, flags.MODIFY | flags.DELETE_SELF | flags.MOVE_SELF)
    except OSError as exc:
        notify.close()
        # Named, and of the errno's own class (FileNotFoundError for a missing file).
        raise OSError(exc.errno, f"cannot watch {path}: {exc.strerror}", path) from None
    return FileWatch(notify, flags)
