"""Wait for a file to be written to, without polling it (Linux inotify).

The SQLite store's probe waits here for the database's write-ahead log to
change: every commit appends to it, so a daemon hears of another process's
commit within a millisecond and costs nothing while nothing is written.
Where inotify is missing (macOS, Windows, a kernel without it)
:func:`watch_file` returns None and the probe reads its marker at a short
interval instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import sys
from typing import Any

__all__ = ["FileWatch", "watch_file"]

# From <sys/inotify.h>.
IN_MODIFY = 0x00000002
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED

_libc: Any = None


def _load_libc() -> Any:
    """The C library's inotify functions, or None where there are none."""
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                libc.inotify_init1.argtypes = [ctypes.c_int]
                libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
                _libc = libc
            except (OSError, AttributeError):
                pass
    return _libc or None


class FileWatch:
    """An inotify descriptor watching one file for writes; close it when done."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a write; True if one came.

        Raises :class:`FileNotFoundError` once the file was deleted or moved
        away (the watch ended: open a new one on the file now at the path).
        """
        readable, _, _ = select.select([self._fd], [], [], max(0.0, timeout))
        if not readable:
            return False
        mask = 0
        data = os.read(self._fd, 65536)
        offset = 0
        while offset + 16 <= len(data):
            # struct inotify_event: int wd; uint32 mask, cookie, len; char name[len].
            mask |= int.from_bytes(data[offset + 4 : offset + 8], sys.byteorder)
            offset += 16 + int.from_bytes(data[offset + 12 : offset + 16], sys.byteorder)
        if mask & _GONE:
            raise FileNotFoundError(errno.ENOENT, "the watched file was deleted or moved")
        # An overflowed queue lost events: one of them may have been a write.
        return bool(mask & (IN_MODIFY | IN_Q_OVERFLOW))

    def close(self) -> None:
        """Stop watching (closes the descriptor)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def watch_file(path: str) -> FileWatch | None:
    """A :class:`FileWatch` on ``path``, or None where inotify is unavailable.

    Raises :class:`OSError` when ``path`` cannot be watched (it does not
    exist, or the process's watches ran out).
    """
    libc = _load_libc()
    if libc is None:
        return None
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"inotify_init1: {os.strerror(code)}")
    if libc.inotify_add_watch(fd, os.fsencode(path), IN_MODIFY | IN_DELETE_SELF | IN_MOVE_SELF) < 0:
        code = ctypes.get_errno()
        os.close(fd)
        raise OSError(code, f"inotify_add_watch {path}: {os.strerror(code)}", path)
    return FileWatch(fd)
