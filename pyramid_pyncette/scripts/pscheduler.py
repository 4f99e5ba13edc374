"""``pscheduler``: run the job daemon of a Pyramid application.

Shaped like ``pserve``::

    pscheduler [-n NAME] [--once] [--list] [-v | -q] config_uri [name=value ...]

The first SIGINT or SIGTERM stops claiming, lets running jobs finish and
exits 0; a second one exits at once with status 1 (leases of jobs still
running then expire and the jobs run again elsewhere).

At start every mode checks the store. A misconfiguration no retry can fix
(wrong credentials, an unknown database, a missing table or driver) exits
with status 2 and one line naming the problem and the fix. A store that
cannot be reached (refused, timed out, unknown host) fails ``--list`` and
``--once`` with status 3; the daemon waits it out, and once running it
treats every store error as an outage. Passwords in URLs and connection
strings are hidden (``***``) in everything it prints and logs.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import textwrap
from types import FrameType
from typing import TYPE_CHECKING, Any

from pyramid.exceptions import ConfigurationExecutionError
from pyramid.paster import bootstrap, setup_logging
from pyramid.scripts.common import parse_vars

from ..redaction import install_log_redaction, redact_text
from ..schedules import ScheduleError, schedule_from_json

if TYPE_CHECKING:
    from pyramid.registry import Registry

    from ..worker import Worker

log = logging.getLogger("pyramid_pyncette")

EXIT_OK = 0
EXIT_FORCED = 1
#: Bad usage or configuration, including a store misconfigured beyond any retry.
EXIT_USAGE = 2
#: The store cannot be reached (``--list`` and ``--once`` only).
EXIT_STORE = 3


def _format_time(value: Any) -> str:
    if value is None:
        return "-"
    try:
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    except Exception:
        return repr(value)


def _describe_schedule(data: Any) -> str:
    try:
        return schedule_from_json(data).describe()
    except ScheduleError:
        return f"unreadable {data!r}"
    except Exception:
        return "unreadable"


class PSchedulerCommand:
    """The ``pscheduler`` command (``run()`` returns the exit code)."""

    description = """\
    Run the scheduler daemon of the Pyramid application described in
    'config_uri' (e.g. 'production.ini'): claim due jobs from the store and
    run each as a request with its own transaction. Any number of daemons
    can share one store.
    """

    bootstrap = staticmethod(bootstrap)  # for testing
    setup_logging = staticmethod(setup_logging)  # for testing

    def __init__(self, argv: list[str], quiet: bool = False) -> None:
        self.quiet = quiet
        self.parser = self._make_parser()
        self.args = self.parser.parse_args(argv[1:])
        if quiet:
            self.args.verbose = 0
        self.signals_seen = 0
        self.worker: Worker | None = None

    def _make_parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(
            prog="pscheduler",
            description=textwrap.dedent(self.description),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument(
            "-n",
            "--app-name",
            dest="app_name",
            metavar="NAME",
            help="Load the named application (default: main)",
        )
        parser.add_argument(
            "--once",
            action="store_true",
            help="Run until no job is due, then exit (for tests and system cron)",
        )
        parser.add_argument(
            "--list", action="store_true", help="Print the stored jobs as a table and exit"
        )
        parser.add_argument(
            "-v", "--verbose", default=1, action="count", help="Print more (repeatable)"
        )
        parser.add_argument(
            "-q", "--quiet", action="store_const", const=0, dest="verbose", help="Print less"
        )
        parser.add_argument("config_uri", help="The URI of the configuration file")
        parser.add_argument(
            "config_vars",
            nargs="*",
            default=(),
            help="Variables for the configuration file, as name=value",
        )
        return parser

    def out(self, message: str) -> None:
        if not self.quiet:
            print(message)

    def err(self, message: str) -> None:
        print(f"pscheduler: {redact_text(message)}", file=sys.stderr)

    def _store_error(self, registry: Registry, what: str, exc: BaseException) -> int:
        """Report a store error at start: status 2 if no retry can fix it, else 3."""
        scheduler = registry.scheduler
        store = scheduler.settings.redacted_url()
        problem = scheduler.describe_setup_error(exc)
        if problem is not None:
            self.err(f"store {store}: {problem}")
            return EXIT_USAGE
        lines = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {lines[0] if lines else ''}"
        self.err(f"{what} ({store}): {detail}")
        return EXIT_STORE

    def check_store(self, registry: Registry) -> int | None:
        """Connect to the store and read its table; an exit status if that must stop us.

        A misconfiguration stops every mode (status 2). An outage stops
        ``--list`` and ``--once`` (status 3); the daemon starts anyway and
        waits for the store.
        """
        scheduler = registry.scheduler
        try:
            # Connects, sets the store up and reads the job table (a missing
            # table with pyncette.skip_table_create shows here).
            scheduler.repository.next_due()
        except Exception as exc:
            if scheduler.describe_setup_error(exc) is None and not (
                self.args.once or self.args.list
            ):
                return None  # the worker waits the outage out and logs it
            what = (
                "cannot list the jobs of the store" if self.args.list else "cannot reach the store"
            )
            return self._store_error(registry, what, exc)
        return None

    def run(self) -> int:
        try:
            config_vars = parse_vars(self.args.config_vars)
        except ValueError as exc:
            self.err(str(exc))
            return EXIT_USAGE
        config_uri = self.args.config_uri
        config_vars.setdefault("__script__", "pscheduler")
        try:
            self.setup_logging(config_uri, global_conf=config_vars)
            self._set_verbosity()
            install_log_redaction()
            uri = config_uri if not self.args.app_name else f"{config_uri}#{self.args.app_name}"
            env = self.bootstrap(uri, options=config_vars)
        except Exception as exc:
            if isinstance(exc, ConfigurationExecutionError):
                # An error raised by a deferred configuration action (a bad
                # pyncette.* setting): show it, not the action's source lines.
                exc = exc.evalue
            self.err(f"cannot load {config_uri!r}: {type(exc).__name__}: {exc}")
            return EXIT_USAGE
        try:
            registry = env["registry"]
            if getattr(registry, "scheduler", None) is None:
                self.err(
                    f"{config_uri!r} does not include pyramid_pyncette; add "
                    "'pyramid.includes = pyramid_pyncette' to its [app:main] section or "
                    "config.include('pyramid_pyncette') to the app factory"
                )
                return EXIT_USAGE
            install_log_redaction()  # handlers the app itself added
            status = self.check_store(registry)
            if status is not None:
                return status
            if self.args.list:
                return self.list_jobs(registry)
            return self.serve(registry)
        finally:
            env["closer"]()

    def _set_verbosity(self) -> None:
        if self.args.verbose >= 2:
            logging.getLogger("pyramid_pyncette").setLevel(logging.DEBUG)
        if not logging.getLogger().handlers:
            logging.basicConfig(
                level=logging.INFO if self.args.verbose else logging.WARNING,
                format="%(asctime)s %(levelname)-5s [%(name)s] %(message)s",
            )

    def list_jobs(self, registry: Registry) -> int:
        scheduler = registry.scheduler
        rows = [("ID", "TASK", "SCHEDULE", "NEXT RUN", "STATE", "LAST")]
        try:
            for job in scheduler.iter_jobs():
                last = job.last_status or "-"
                if job.attempts:
                    last = f"{last} (attempt {job.attempts})"
                rows.append(
                    (
                        job.id,
                        job.task,
                        _describe_schedule(job.schedule),
                        # A retrying job's next run is its retry, not its scheduled time.
                        _format_time(job.next_attempt_at),
                        job.state,
                        last,
                    )
                )
        except Exception as exc:
            return self._store_error(registry, "cannot list the jobs of the store", exc)
        if len(rows) == 1:
            self.out("no jobs")
            return EXIT_OK
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.out("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        return EXIT_OK

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals_seen += 1
        if self.signals_seen == 1 and self.worker is not None:
            log.info(
                "%s received: finishing running jobs (send it again to exit now)",
                signal.Signals(signum).name,
            )
            self.worker.stop()
            return
        log.warning("%s received again: exiting now", signal.Signals(signum).name)
        logging.shutdown()
        os._exit(EXIT_FORCED)

    def serve(self, registry: Registry) -> int:
        from ..worker import Worker

        worker = self.worker = Worker(registry)
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            worker.run(until_idle=self.args.once)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return EXIT_OK


def main(argv: list[str] | None = None, quiet: bool = False) -> int:
    """Console script entry point."""
    argv = sys.argv if argv is None else argv
    command = PSchedulerCommand(argv, quiet=quiet)
    return command.run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main() or 0)
