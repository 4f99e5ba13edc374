"""The debug toolbar's "Jobs" panel: what each request did to jobs.

Enable it by adding ``pyramid_pyncette.toolbar`` to ``debugtoolbar.includes``
(with ``pyramid_debugtoolbar`` in ``pyramid.includes``)::

    pyramid.includes = pyramid_tm pyramid_pyncette pyramid_debugtoolbar
    debugtoolbar.includes = pyramid_pyncette.toolbar

For each request the toolbar watches, the panel lists the jobs its views
added, replaced, cancelled, paused, resumed or retried, with their task,
arguments, schedule, queue and next run time, and whether the request's
transaction committed them (``request.scheduler``) or they were written at
once (``registry.scheduler``). Nothing is recorded without this include.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyramid.exceptions import ConfigurationError

from .recording import record_write

if TYPE_CHECKING:
    from pyramid.config import Configurator

NOT_A_TOOLBAR_INCLUDE = (
    "pyramid_pyncette.toolbar is a debug toolbar include: list it in debugtoolbar.includes "
    "(debugtoolbar.includes = pyramid_pyncette.toolbar, with pyramid_debugtoolbar in "
    "pyramid.includes), not in pyramid.includes or config.include()"
)

NO_SCHEDULER = (
    "pyramid_pyncette.toolbar shows the jobs of pyramid_pyncette, which this application does "
    "not include; add config.include('pyramid_pyncette') (or pyramid_pyncette in "
    "pyramid.includes), or remove pyramid_pyncette.toolbar from debugtoolbar.includes"
)


def includeme(config: Configurator) -> None:
    """Add the "Jobs" panel to the debug toolbar (a ``debugtoolbar.includes`` entry).

    Runs in the toolbar's own configuration: it registers the panel and its
    template engine (pyramid_jinja2, auto-escaping) there, and has the
    application's scheduler record job writes (see
    :attr:`~pyramid_pyncette.scheduler.Scheduler.write_recorder`) once the
    application is made.
    """
    if getattr(config.registry, "parent_registry", None) is None:
        raise ConfigurationError(NOT_A_TOOLBAR_INCLUDE)
    from .panel import JobsPanel

    config.include("pyramid_jinja2")
    config.add_debugtoolbar_panel(JobsPanel)
    config.inject_parent_action(record_scheduler_writes)


def record_scheduler_writes(config: Configurator) -> None:
    """Have the application's scheduler record job writes (a toolbar parent action)."""
    scheduler = getattr(config.registry, "scheduler", None)
    if scheduler is None:
        raise ConfigurationError(NO_SCHEDULER)
    scheduler.write_recorder = record_write
