"""Pieces of the INI files that tests write for real ``pscheduler``/``pserve`` processes."""

from __future__ import annotations

import textwrap

DEFAULT_FORMAT = "%(asctime)s %(levelname)-5.5s [%(name)s] %(message)s"


def logging_sections(log_format: str = DEFAULT_FORMAT, level: str = "INFO") -> str:
    """The logging sections of an INI file: everything from ``level`` up, to stderr.

    ``log_format`` is read raw by :func:`logging.config.fileConfig`, so it
    takes single ``%`` signs.
    """
    return textwrap.dedent(
        f"""\
        [loggers]
        keys = root

        [handlers]
        keys = console

        [formatters]
        keys = generic

        [logger_root]
        level = {level}
        handlers = console

        [handler_console]
        class = StreamHandler
        args = (sys.stderr,)
        level = NOTSET
        formatter = generic

        [formatter_generic]
        format = {log_format}
        """
    )
