"""``pscheduler``: run the job daemon of a Pyramid application.

Shaped like ``pserve``::

    pscheduler [-n NAME] [-v | -q] [ACTION] [OPTIONS] config_uri [name=value ...]

With no action it runs the daemon (``--queue NAME``, repeatable, names the
queues it serves instead of ``pyncette.queues``). ``--list`` (filtered by
``--state``, ``--task`` and ``--queue``) and ``--show`` print jobs,
``--runs`` the run history (filtered by ``--task``, ``--queue`` and
``--failed``) and ``--queues`` the queues, as JSON with ``--json``;
``--pause``, ``--resume``, ``--retry`` and ``--cancel`` act on one job,
``--pause-queue`` and ``--resume-queue`` on one queue. They are faces of the
scheduler API (``get_jobs``, ``get_job``, ``get_runs``, ``get_queues``,
``pause_job``, ``resume_job``, ``retry_job``, ``cancel_job``,
``pause_queue``, ``resume_queue``); the formatting lives in
:mod:`pyramid_pyncette.operate`. ``--check`` loads the app, reaches the
store and prints one line: exit 0, 2 or 3 as below, for deploy scripts and
container probes.

With ``pyncette.metrics_port`` set, the daemon (and ``--once``) serves
``/metrics`` and ``/healthz`` there (:mod:`pyramid_pyncette.metrics`); a
missing ``prometheus_client`` or a port in use stops it at start with
status 2.

The first SIGINT or SIGTERM stops claiming, lets running jobs finish and
exits 0; a second one exits at once with status 1 (leases of jobs still
running then expire and the jobs run again elsewhere).

At start every mode checks the store. A misconfiguration no retry can fix
(wrong credentials, an unknown database, a missing table or driver) exits
with status 2 and one line naming the problem and the fix. A store that
cannot be reached (refused, timed out, unknown host) fails ``--once`` and
every action that shows or changes jobs with status 3; the daemon waits it
out, and once running it treats every store error as an outage. Passwords in URLs and connection
strings are hidden (``***``) in everything it prints and logs. Bad usage
(conflicting flags, an unknown job id or state, a bad queue name) exits 2
with one line, before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import textwrap
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from pyramid.exceptions import ConfigurationError, ConfigurationExecutionError
from pyramid.paster import bootstrap, setup_logging
from pyramid.scripts.common import parse_vars

from .. import operate
from ..exceptions import InvalidJobError, UnknownTaskError
from ..jobs import RUN_FAILED, RUN_LEASE_LOST, queue_name_problem
from ..redaction import install_log_redaction, redact_text

if TYPE_CHECKING:
    from pyramid.registry import Registry

    from ..worker import Worker

log = logging.getLogger("pyramid_pyncette")

EXIT_OK = 0
EXIT_FORCED = 1
#: Bad usage or configuration, including a store misconfigured beyond any retry.
EXIT_USAGE = 2
#: The store cannot be reached (``--once`` and the actions on jobs only).
EXIT_STORE = 3

#: The flags that show or change jobs instead of running the daemon.
JOB_ACTIONS = (
    "check",
    "list",
    "show",
    "runs",
    "queues",
    "pause",
    "resume",
    "retry",
    "cancel",
    "pause_queue",
    "resume_queue",
)

#: The outcomes ``--runs --failed`` keeps.
FAILED_OUTCOMES = (RUN_FAILED, RUN_LEASE_LOST)

#: How many runs ``--runs`` prints without ``--limit``, and ``--show`` always.
DEFAULT_RUNS_LIMIT = 100
SHOW_RUNS = 10

#: Runs fetched per call of ``get_runs`` while ``--runs`` collects ``--limit`` of them.
_RUNS_PAGE = 500


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number (e.g. 20)")
    return value


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one ``pscheduler:`` line (status 2)."""

    def error(self, message: str) -> NoReturn:
        print(
            f"pscheduler: {operate.terminal_text(message)} (see pscheduler --help)",
            file=sys.stderr,
        )
        sys.exit(EXIT_USAGE)


class PSchedulerCommand:
    """The ``pscheduler`` command (``run()`` returns the exit code)."""

    description = """\
    Run the scheduler daemon of the Pyramid application described in
    'config_uri' (e.g. 'production.ini'): claim due jobs from the store and
    run each as a request with its own transaction. Any number of daemons
    can share one store. The actions below show and steer the stored jobs
    instead.
    """

    epilog = """\
    exit status: 0 done; 1 stopped by a second signal; 2 bad usage or
    configuration, an unknown job id, a bad queue name, or a change the
    scheduler refused (nothing is written);
    3 the store cannot be reached (--once, --check and the actions only: the
    daemon waits for it).
    """

    bootstrap = staticmethod(bootstrap)  # for testing
    setup_logging = staticmethod(setup_logging)  # for testing

    def __init__(self, argv: list[str], quiet: bool = False) -> None:
        self.quiet = quiet
        self.parser = self._make_parser()
        self.args = self.parser.parse_args(argv[1:])
        self._check_combinations()
        if quiet:
            self.args.verbose = 0
        self.signals_seen = 0
        self.worker: Worker | None = None

    def _make_parser(self) -> argparse.ArgumentParser:
        parser = _Parser(
            prog="pscheduler",
            usage="pscheduler [-h] [-n NAME] [-v | -q] [ACTION] [OPTIONS] config_uri "
            "[name=value ...]",
            description=textwrap.dedent(self.description),
            epilog=textwrap.dedent(self.epilog),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument(
            "-n",
            "--app-name",
            dest="app_name",
            metavar="NAME",
            help="Load the named application (default: main)",
        )
        actions = parser.add_argument_group(
            "actions", "At most one; without any, pscheduler runs the daemon until stopped."
        )
        action = actions.add_mutually_exclusive_group()
        action.add_argument(
            "--once",
            action="store_true",
            help="Run the daemon until no job is due, then exit (for tests and system cron)",
        )
        action.add_argument(
            "--check",
            action="store_true",
            help="Load the app, reach the store and read its job table, print one line and "
            "exit: 0 ready, 2 bad configuration, 3 store unreachable (for deploy scripts and "
            "container probes)",
        )
        action.add_argument(
            "--list",
            action="store_true",
            help="Print the stored jobs as a table (id, task, queue, schedule, next run, "
            "state, last status, the line naming the last error) and exit",
        )
        action.add_argument(
            "--show",
            metavar="ID",
            help="Print everything about the job ID (its queue, whether it is paused, its "
            f"last error in full, its last {SHOW_RUNS} runs) and exit",
        )
        action.add_argument(
            "--runs",
            nargs="?",
            const=True,
            metavar="ID",
            help="Print the recent runs, newest first (when, job, task, queue, attempt, "
            "outcome, duration, daemon, the line naming the error), of every job or of the "
            "job ID (given before config_uri), and exit",
        )
        action.add_argument(
            "--queues",
            action="store_true",
            help="Print the queues (name, paused, due jobs, running jobs) and exit",
        )
        action.add_argument(
            "--pause",
            metavar="ID",
            help="Pause the job ID: no daemon claims it until --resume (a run in progress "
            "finishes); it keeps its schedule and arguments",
        )
        action.add_argument(
            "--resume",
            metavar="ID",
            help="Resume the paused job ID: a recurring job runs next at its first scheduled "
            "time from now, a one-off job whose time has passed runs now",
        )
        action.add_argument(
            "--retry",
            metavar="ID",
            help="Run the job ID now, as a fresh run (a failed job runs again; a recurring "
            "one gets one extra run and keeps its schedule; a paused one must be resumed "
            "first)",
        )
        action.add_argument(
            "--cancel",
            metavar="ID",
            help="Delete the job ID (a run in progress finishes but is not repeated)",
        )
        action.add_argument(
            "--pause-queue",
            metavar="NAME",
            help="Pause the queue NAME: every daemon stops claiming its jobs within one poll "
            "(runs in progress finish)",
        )
        action.add_argument(
            "--resume-queue",
            metavar="NAME",
            help="Resume the paused queue NAME: daemons serving it claim its jobs again",
        )
        listing = parser.add_argument_group("options of the actions and the daemon")
        listing.add_argument(
            "--state",
            choices=operate.JOB_STATES,
            metavar="STATE",
            help=f"With --list: only the jobs in STATE ({', '.join(operate.JOB_STATES)})",
        )
        listing.add_argument(
            "--task",
            metavar="NAME",
            help="With --list or --runs: only the jobs (runs) of the task NAME",
        )
        listing.add_argument(
            "--queue",
            action="append",
            metavar="NAME",
            help="Repeatable. With --list or --runs: only the jobs (runs) of these queues. "
            "Running the daemon (or --once): serve these queues instead of those of "
            "pyncette.queues (default: every queue)",
        )
        listing.add_argument(
            "--failed",
            action="store_true",
            help="With --runs: only the runs that failed or lost their lease",
        )
        listing.add_argument(
            "--limit",
            type=_positive_int,
            metavar="N",
            help=f"With --list or --runs: print at most N jobs (runs); --runs prints "
            f"{DEFAULT_RUNS_LIMIT} without it",
        )
        listing.add_argument(
            "--json",
            action="store_true",
            help="Print --list, --show, --runs or --queues as one JSON document (times in "
            "ISO 8601 UTC)",
        )
        parser.add_argument(
            "-v", "--verbose", default=1, action="count", help="Print more (repeatable)"
        )
        parser.add_argument(
            "-q", "--quiet", action="store_const", const=0, dest="verbose", help="Print less"
        )
        # Optional for argparse only: "--runs production.ini" would otherwise
        # take the file for a job id (see _take_back_config_uri).
        parser.add_argument("config_uri", nargs="?", help="The URI of the configuration file")
        parser.add_argument(
            "config_vars",
            nargs="*",
            default=(),
            help="Variables for the configuration file, as name=value",
        )
        return parser

    def _take_back_config_uri(self) -> None:
        """``--runs`` takes an optional ID, so argparse gives it the config file of
        ``pscheduler --runs production.ini``: take it back.

        The value of ``--runs`` is the config URI when no other positional
        argument is left, or when the one left looks like a ``name=value``
        variable.
        """
        args = self.args
        if not isinstance(args.runs, str):
            return
        if args.config_uri is None:
            args.config_uri, args.runs = args.runs, True
        elif "=" in args.config_uri:
            args.config_vars = [args.config_uri, *args.config_vars]
            args.config_uri, args.runs = args.runs, True

    def _check_combinations(self) -> None:
        """Refuse options that the chosen action ignores (argparse groups cannot say it),
        and bad queue names, before anything touches the store."""
        args = self.args
        self._take_back_config_uri()
        if args.config_uri is None:
            self.parser.error("the following arguments are required: config_uri")
        listing = args.list or args.runs is not None
        if args.state is not None and not args.list:
            self.parser.error("--state only filters --list")
        if args.task is not None and not listing:
            self.parser.error("--task only filters --list and --runs")
        if args.failed and args.runs is None:
            self.parser.error("--failed only filters --runs")
        if args.limit is not None and not listing:
            self.parser.error("--limit only applies to --list and --runs")
        if args.json and not (listing or args.queues or args.show is not None):
            self.parser.error("--json only applies to --list, --show, --runs and --queues")
        queues = args.queue or []
        if queues and self.action is not None and not listing:
            self.parser.error(
                "--queue only filters --list and --runs, or names the queues the daemon serves"
            )
        for flag, names in (
            ("--queue", queues),
            ("--pause-queue", [args.pause_queue]),
            ("--resume-queue", [args.resume_queue]),
        ):
            for name in names:
                problem = None if name is None else queue_name_problem(name)
                if problem is not None:
                    self.parser.error(f"argument {flag}: {problem}")

    @property
    def action(self) -> str | None:
        """The flag that shows or changes jobs (``'list'``, ``'show'``...), or None."""
        for name in JOB_ACTIONS:
            value = getattr(self.args, name)
            if value is not None and value is not False:
                return name
        return None

    def out(self, message: str) -> None:
        if not self.quiet:
            print(message)

    def err(self, message: str) -> None:
        """Print ``message`` as one ``pscheduler:`` line on stderr, credentials hidden."""
        print(f"pscheduler: {operate.terminal_text(redact_text(message))}", file=sys.stderr)

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
        ``--once`` and the actions on jobs (status 3); the daemon starts
        anyway and waits for the store.
        """
        scheduler = registry.scheduler
        try:
            # Connects, sets the store up and reads the job table (a missing
            # table with pyncette.skip_table_create shows here).
            scheduler.repository.next_due()
        except Exception as exc:
            if scheduler.describe_setup_error(exc) is None and not (self.args.once or self.action):
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
            args = self.args
            if args.check:
                return self.check(registry)
            if args.list:
                return self.list_jobs(registry)
            if args.show is not None:
                return self.show_job(registry, args.show)
            if args.runs is not None:
                return self.list_runs(registry)
            if args.queues:
                return self.list_queues(registry)
            if args.pause is not None:
                return self.pause_job(registry, args.pause, pause=True)
            if args.resume is not None:
                return self.pause_job(registry, args.resume, pause=False)
            if args.retry is not None:
                return self.retry_job(registry, args.retry)
            if args.cancel is not None:
                return self.cancel_job(registry, args.cancel)
            if args.pause_queue is not None:
                return self.pause_queue(registry, args.pause_queue, pause=True)
            if args.resume_queue is not None:
                return self.pause_queue(registry, args.resume_queue, pause=False)
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

    def _job_error(self, registry: Registry, what: str, exc: Exception) -> int:
        """Report an error of the scheduler API: refused input is 2, the store 2 or 3."""
        if isinstance(exc, InvalidJobError):
            self.err(str(exc))
            return EXIT_USAGE
        return self._store_error(registry, what, exc)

    def _unknown_job(self, job_id: str) -> int:
        self.err(
            f"no job has the id {job_id!r}; it may have finished, been cancelled, or never "
            "existed (see pscheduler --list)"
        )
        return EXIT_USAGE

    def check(self, registry: Registry) -> int:
        """``--check``: the app loaded and the store answered (see :meth:`check_store`);
        with ``pyncette.metrics_port`` set, ``prometheus_client`` must be installed too."""
        settings = registry.scheduler.settings
        if settings.metrics_port is not None:
            from ..metrics import MetricsUnavailable, require_prometheus

            try:
                require_prometheus()
            except MetricsUnavailable as exc:
                self.err(str(exc))
                return EXIT_USAGE
        self.out(f"ok: store {settings.redacted_url()} reachable, its job table readable")
        return EXIT_OK

    def list_jobs(self, registry: Registry) -> int:
        """``--list``: the stored jobs, filtered by ``--state`` and ``--task``."""
        scheduler = registry.scheduler
        state, task = self.args.state, self.args.task
        try:
            try:
                jobs = list(scheduler.iter_jobs(task=task))
            except UnknownTaskError:
                # Jobs of a task this app no longer registers are still
                # stored (parked when claimed): they are worth finding.
                jobs = [job for job in scheduler.iter_jobs() if job.task == task]
                if not jobs:
                    raise
        except Exception as exc:
            return self._job_error(registry, "cannot list the jobs of the store", exc)
        if state is not None:
            jobs = [job for job in jobs if job.state == state]
        if self.args.queue:
            queues = set(self.args.queue)
            jobs = [job for job in jobs if job.queue in queues]
        if self.args.limit is not None:
            jobs = jobs[: self.args.limit]
        if self.args.json:
            self.out(operate.dump_json(operate.jobs_document(jobs)))
        else:
            for line in operate.jobs_table(jobs):
                self.out(line)
        return EXIT_OK

    def show_job(self, registry: Registry, job_id: str) -> int:
        """``--show ID``: everything about one job."""
        try:
            job = registry.scheduler.get_job(job_id)
        except Exception as exc:
            return self._job_error(registry, "cannot read the job from the store", exc)
        if job is None:
            return self._unknown_job(job_id)
        try:
            runs = registry.scheduler.get_runs(job_id=job_id, limit=SHOW_RUNS).runs
            # The paused set, not get_queues(): that counts every queue's
            # jobs, a scan of the whole table in SQL.
            queue_paused = job.queue in registry.scheduler.get_paused_queues()
        except Exception as exc:
            return self._job_error(registry, "cannot read the job's runs from the store", exc)
        if self.args.json:
            document = {
                "job": operate.job_document(job),
                "queue_paused": queue_paused,
                "runs": operate.runs_document(runs)["runs"],
            }
            self.out(operate.dump_json(document))
        else:
            for line in operate.job_details(job, runs=runs, queue_paused=queue_paused):
                self.out(line)
        return EXIT_OK

    def _fetch_runs(
        self, registry: Registry, limit: int, queues: Sequence[str], **filters: Any
    ) -> list[Any]:
        """Up to ``limit`` runs matching ``filters`` and of one of ``queues`` (any queue
        when empty), newest first, page by page."""
        if len(queues) == 1:
            filters["queue"] = queues[0]  # the store filters one queue itself
        wanted = set(queues) if len(queues) > 1 else None
        try:
            return self._collect_runs(registry, limit, filters, queues=wanted)
        except UnknownTaskError:
            # The history of a task this app no longer registers is still
            # stored: read it without the task filter and keep that task's runs.
            runs = self._collect_runs(
                registry, limit, {**filters, "task": None}, filters["task"], wanted
            )
            if not runs:
                raise
            return runs

    def _collect_runs(
        self,
        registry: Registry,
        limit: int,
        filters: dict[str, Any],
        task: str | None = None,
        queues: set[str] | None = None,
    ) -> list[Any]:
        runs: list[Any] = []
        cursor = None
        sifted = task is not None or queues is not None  # pages may hold runs we drop
        while len(runs) < limit:
            size = _RUNS_PAGE if sifted else min(limit - len(runs), _RUNS_PAGE)
            page = registry.scheduler.get_runs(limit=size, cursor=cursor, **filters)
            runs.extend(
                run
                for run in page.runs
                if (task is None or run.task == task) and (queues is None or run.queue in queues)
            )
            cursor = page.next_cursor
            if cursor is None:
                break
        return runs[:limit]

    def list_runs(self, registry: Registry) -> int:
        """``--runs [ID]``: the recent runs, newest first, filtered by ``--task``,
        ``--queue`` and ``--failed``."""
        args = self.args
        filters: dict[str, Any] = {
            "job_id": args.runs if isinstance(args.runs, str) else None,
            "task": args.task,
            "outcome": FAILED_OUTCOMES if args.failed else None,
        }
        limit = DEFAULT_RUNS_LIMIT if args.limit is None else args.limit
        try:
            runs = self._fetch_runs(registry, limit, args.queue or [], **filters)
        except Exception as exc:
            return self._job_error(registry, "cannot read the run history of the store", exc)
        if args.json:
            self.out(operate.dump_json(operate.runs_document(runs)))
        else:
            for line in operate.runs_table(runs):
                self.out(line)
        return EXIT_OK

    def list_queues(self, registry: Registry) -> int:
        """``--queues``: every queue with its paused flag, backlog and running jobs."""
        try:
            queues = registry.scheduler.get_queues()
        except Exception as exc:
            return self._job_error(registry, "cannot list the queues of the store", exc)
        if self.args.json:
            self.out(operate.dump_json(operate.queues_document(queues)))
        else:
            for line in operate.queues_table(queues):
                self.out(line)
        return EXIT_OK

    def pause_job(self, registry: Registry, job_id: str, pause: bool) -> int:
        """``--pause ID`` / ``--resume ID``: print the job's new state and next run."""
        verb = "pause" if pause else "resume"
        scheduler = registry.scheduler
        try:
            job = scheduler.pause_job(job_id) if pause else scheduler.resume_job(job_id)
        except Exception as exc:
            if isinstance(exc, LookupError):
                return self._unknown_job(job_id)
            return self._job_error(registry, f"cannot {verb} the job", exc)
        self.out(operate.job_change(job, f"{verb}d"))
        return EXIT_OK

    def pause_queue(self, registry: Registry, name: str, pause: bool) -> int:
        """``--pause-queue NAME`` / ``--resume-queue NAME``."""
        scheduler = registry.scheduler
        try:
            changed = scheduler.pause_queue(name) if pause else scheduler.resume_queue(name)
        except Exception as exc:
            verb = "pause" if pause else "resume"
            return self._job_error(registry, f"cannot {verb} the queue", exc)
        shown = operate.terminal_text(repr(name))
        if not changed:
            self.out(f"queue {shown} {'was already paused' if pause else 'was not paused'}")
        elif pause:
            self.out(
                f"queue {shown} paused: no daemon claims its jobs until "
                f"pscheduler --resume-queue {operate.terminal_text(name)}"
            )
        else:
            self.out(f"queue {shown} resumed: the daemons serving it claim its jobs again")
        return EXIT_OK

    def retry_job(self, registry: Registry, job_id: str) -> int:
        """``--retry ID``: queue the job to run now."""
        try:
            registry.scheduler.retry_job(job_id)
        except Exception as exc:
            if isinstance(exc, LookupError):
                return self._unknown_job(job_id)
            return self._job_error(registry, "cannot retry the job", exc)
        self.out(f"job {operate.terminal_text(repr(job_id))} queued to run now")
        return EXIT_OK

    def cancel_job(self, registry: Registry, job_id: str) -> int:
        """``--cancel ID``: delete the job."""
        try:
            existed = registry.scheduler.cancel_job(job_id)
        except Exception as exc:
            return self._job_error(registry, "cannot cancel the job", exc)
        if not existed:
            return self._unknown_job(job_id)
        self.out(f"job {operate.terminal_text(repr(job_id))} cancelled")
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

    def serve_queues(self, registry: Registry) -> None:
        """Make ``--queue`` (when given) the daemon's queues, and log which it serves.

        The settings are replaced before the worker is built: it reads
        ``settings.queues`` from the scheduler.
        """
        scheduler = registry.scheduler
        source = "pyncette.queues"
        if self.args.queue:
            settings = dataclasses.replace(scheduler.settings, queues=frozenset(self.args.queue))
            scheduler.settings = settings
            registry.pyncette_settings = settings
            source = "--queue"
        queues = scheduler.settings.queues
        if queues is None:
            log.info("serving every queue (set pyncette.queues or --queue to choose)")
        else:
            log.info("serving the queues %s (%s)", ", ".join(sorted(queues)), source)

    def serve(self, registry: Registry) -> int:
        from ..worker import Worker

        self.serve_queues(registry)
        worker = self.worker = Worker(registry)
        server = None
        settings = registry.scheduler.settings
        if settings.metrics_port is not None:
            # Only now: without a metrics port, prometheus_client is never imported.
            from ..metrics import start_daemon_metrics

            try:
                server = start_daemon_metrics(worker, settings.metrics_host, settings.metrics_port)
            except ConfigurationError as exc:
                self.err(str(exc))
                return EXIT_USAGE
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            worker.run(until_idle=self.args.once)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if server is not None:
                server.stop()
        return EXIT_OK


def main(argv: list[str] | None = None, quiet: bool = False) -> int:
    """Console script entry point."""
    argv = sys.argv if argv is None else argv
    command = PSchedulerCommand(argv, quiet=quiet)
    return command.run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main() or 0)
