"""``pscheduler``: run the job daemon of a Pyramid application.

Shaped like ``pserve``::

    pscheduler [-n NAME] [--once] [--list] [-v | -q] config_uri [name=value ...]

The first SIGINT or SIGTERM stops claiming, lets running jobs finish and
exits 0; a second one exits at once with status 1 (leases of jobs still
running then expire and the jobs run again elsewhere). A store that cannot
be reached fails ``--list`` and ``--once`` with status 3; the daemon waits
it out. Credentials of the store URL never appear in its output: they are
scrubbed from every message and log line.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import textwrap
from typing import Any
from urllib.parse import unquote, urlsplit

from pyramid.paster import bootstrap, get_appsettings, setup_logging
from pyramid.scripts.common import parse_vars

from ..schedules import ScheduleError, schedule_from_json

log = logging.getLogger("pyramid_pyncette")

EXIT_OK = 0
EXIT_FORCED = 1
EXIT_USAGE = 2
EXIT_STORE = 3

_PASSWORD_PARAM = re.compile(r"(?:^|&)(?:password|passwd|pass|pwd)=([^&]*)", re.IGNORECASE)


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


def secrets_of(url: Any) -> list[str]:
    """The password-like parts of a store URL (raw and percent-decoded), longest first.

    A lone user part (``redis://secret@host``) counts: Redis URLs often carry
    the password there.
    """
    if not isinstance(url, str):
        return []
    found: list[str] = []
    try:
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
        query = parts.query
    except ValueError:
        match = re.search(r"://([^/?#]*)@", url)
        userinfo = match.group(1) if match else ""
        query = url.partition("?")[2]
    if userinfo:
        user, colon, password = userinfo.partition(":")
        found.append(password if colon else user)
    found.extend(_PASSWORD_PARAM.findall(query))
    found += [unquote(secret) for secret in found]
    return sorted({secret for secret in found if secret}, key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every secret replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class SecretFilter(logging.Filter):
    """Replace store credentials in log records (message, arguments and traceback) by ``***``."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:
            return True
        clean = scrub(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, self.secrets)
        return True


def _install_secret_filter(secrets: list[str]) -> None:
    """Scrub ``secrets`` from everything the process logs."""
    if not secrets:
        return
    loggers = [logging.getLogger(), logging.getLogger("pyramid_pyncette")]
    loggers += [
        item
        for item in logging.Logger.manager.loggerDict.values()
        if isinstance(item, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, SecretFilter) for f in handler.filters):
                handler.addFilter(SecretFilter(secrets))


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
        self.worker = None
        #: Credentials of the store URL, scrubbed from everything printed or logged.
        self.secrets: list[str] = []

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
        print(f"pscheduler: {scrub(message, self.secrets)}", file=sys.stderr)

    def _read_secrets(self, config_uri: str, config_vars: dict[str, str]) -> None:
        """Learn the store URL's credentials before anything can print them."""
        try:
            settings = get_appsettings(config_uri, name=self.args.app_name, options=config_vars)
            self.secrets = secrets_of(settings.get("pyncette.url"))
        except Exception:
            self.secrets = []
        _install_secret_filter(self.secrets)

    def _store_error(self, registry: Any, what: str, exc: BaseException) -> int:
        settings = registry.scheduler.settings
        self.secrets = sorted({*self.secrets, *secrets_of(settings.url)}, key=len, reverse=True)
        lines = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {lines[0] if lines else ''}"
        self.err(f"{what} ({settings.redacted_url()}): {detail}")
        return EXIT_STORE

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
            self._read_secrets(config_uri, config_vars)
            uri = config_uri if not self.args.app_name else f"{config_uri}#{self.args.app_name}"
            env = self.bootstrap(uri, options=config_vars)
        except Exception as exc:
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
            self.secrets = sorted(
                {*self.secrets, *secrets_of(registry.scheduler.settings.url)},
                key=len,
                reverse=True,
            )
            _install_secret_filter(self.secrets)
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

    def list_jobs(self, registry: Any) -> int:
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
                        _format_time(job.next_run_at),
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

    def _on_signal(self, signum: int, frame: Any) -> None:
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

    def serve(self, registry: Any) -> int:
        from ..worker import Worker

        if self.args.once:
            # A daemon waits out a store outage; a one-shot run reports it and fails.
            try:
                registry.scheduler.repository.setup()
            except Exception as exc:
                return self._store_error(registry, "cannot reach the store", exc)
        self.worker = Worker(registry)
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self.worker.run(until_idle=self.args.once)
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
