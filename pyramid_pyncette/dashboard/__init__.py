"""The operator dashboard: ``config.include('pyramid_pyncette.dashboard')``.

Server-rendered pages under ``pyncette.dashboard.path`` (default
``/pyncette``) to see and steer the stored jobs, their run history and their
queues, through the scheduler API (:meth:`~pyramid_pyncette.Scheduler.get_jobs`,
``get_runs``, ``get_queues``, ``pause_job``, ``resume_job``, ``retry_job``,
``cancel_job``, ``pause_queue``, ``resume_queue``). Every page and action
requires ``pyncette.dashboard.permission``; every action is a POST checked
against Pyramid's CSRF token.

The pages are Jinja2 templates rendered by pyramid_jinja2 through a renderer
of their own (:data:`RENDERER`, auto-escaping, strict about undefined names),
so the application's own ``jinja2.*`` settings never change them.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

import jinja2
from pyramid.csrf import LegacySessionCSRFStoragePolicy, SessionCSRFStoragePolicy
from pyramid.exceptions import ConfigurationError
from pyramid.interfaces import (
    PHASE1_CONFIG,
    ICSRFStoragePolicy,
    ISecurityPolicy,
    ISessionFactory,
)
from pyramid.security import NO_PERMISSION_REQUIRED
from pyramid_jinja2 import add_jinja2_renderer, get_jinja2_environment

from ..settings import PyncetteSettings, parse_settings

if TYPE_CHECKING:
    from pyramid.config import Configurator

__all__ = ["NO_PERMISSION_SETTING", "RENDERER", "ROUTE_PREFIX", "includeme", "view_permission"]

#: The file extension of the dashboard's templates: a pyramid_jinja2 renderer
#: the dashboard owns, configured by this module whatever the ``jinja2.*``
#: settings of the application are.
RENDERER = ".pyncette-jinja2"

#: The ``pyncette.dashboard.permission`` value that opens the dashboard to everyone.
NO_PERMISSION_SETTING = "NO_PERMISSION_REQUIRED"

#: The names of the dashboard's routes start with this.
ROUTE_PREFIX = "pyncette_dashboard."

# After pyramid_jinja2 creates the renderer's environment (its order 0) and
# before the first page is rendered.
_ENVIRONMENT_ORDER = 1

# Once the security policy and CSRF storage (phase 2 and 3 actions) are known.
_CHECK_ORDER = 10

_SECURITY_HELP = (
    "pyramid_pyncette.dashboard: no security policy is configured, so nobody could be "
    "checked for the permission {permission!r} that every dashboard page requires. Set "
    "one with config.set_security_policy(...) (see Pyramid's 'Security' chapter: its "
    "permits() must allow {permission!r} to your operators), or, only where everyone who "
    "can reach the application may steer its jobs (a local demo), set "
    "pyncette.dashboard.permission = NO_PERMISSION_REQUIRED"
)

_CSRF_HELP = (
    "pyramid_pyncette.dashboard: the dashboard's actions are forms checked against "
    "Pyramid's CSRF token, which is kept in the session by default, and no session "
    "factory is configured. Set one (config.set_session_factory(...)), or keep the token "
    "in a cookie: config.set_csrf_storage_policy(pyramid.csrf.CookieCSRFStoragePolicy())"
)


_METRICS_HELP = (
    "pyncette.dashboard.metrics_public = true serves the store's gauges at "
    "<pyncette.dashboard.path>/metrics, which needs prometheus_client: "
    "pip install 'pyramid_pyncette[metrics]' (or leave the setting out)"
)


def metrics_available() -> bool:
    """Whether prometheus_client can be imported (the ``metrics`` extra)."""
    return importlib.util.find_spec("prometheus_client") is not None


def metrics_permission(settings: PyncetteSettings) -> str:
    """The permission ``<path>/metrics`` requires: the pages' own, or none when
    ``pyncette.dashboard.metrics_public`` is true."""
    if settings.dashboard_metrics_public:
        return NO_PERMISSION_REQUIRED
    return view_permission(settings)


def view_permission(settings: PyncetteSettings) -> str:
    """The permission the dashboard's views require, from ``pyncette.dashboard.permission``.

    The setting's text ``NO_PERMISSION_REQUIRED`` stands for
    :data:`pyramid.security.NO_PERMISSION_REQUIRED`.
    """
    permission = settings.dashboard_permission
    return NO_PERMISSION_REQUIRED if permission == NO_PERMISSION_SETTING else permission


def finalize(value: Any) -> Any:
    """How a template shows ``{{ value }}``: ``None`` as nothing (then auto-escaped)."""
    return "" if value is None else value


def _settings(config: Configurator) -> PyncetteSettings:
    """The settings ``pyramid_pyncette`` read at commit (its action runs before ours)."""
    settings = getattr(config.registry, "pyncette_settings", None)
    return settings if settings is not None else parse_settings(config.get_settings())


def includeme(config: Configurator) -> None:
    """Mount the dashboard at ``pyncette.dashboard.path``.

    Includes ``pyramid_pyncette`` when the application has not; the pages'
    pyramid_jinja2 renderer is the dashboard's own (the application's
    ``.jinja2`` renderer, if any, is left alone). Reads these settings (see
    Settings): ``pyncette.dashboard.path`` (default ``/pyncette``),
    ``pyncette.dashboard.permission`` (default ``pyncette.admin``;
    ``NO_PERMISSION_REQUIRED`` opens the pages to everyone) and
    ``pyncette.dashboard.metrics_public`` (``<path>/metrics``, the store's
    Prometheus gauges, without the permission; needs the ``metrics`` extra).

    Like ``pyramid_pyncette`` itself, it reads them when the configuration is
    committed. The commit then raises :class:`~pyramid.exceptions.ConfigurationError`
    when no security policy is set (unless the permission is
    ``NO_PERMISSION_REQUIRED``), or when the CSRF token has nowhere to live
    (Pyramid's default keeps it in the session, and no session factory is set),
    or when ``pyncette.dashboard.metrics_public`` is true and prometheus_client
    is not installed.
    """
    config.include("pyramid_pyncette")
    # pyramid_jinja2's directives called as functions: the application's own
    # ``.jinja2`` renderer (if any) is neither added nor changed.
    add_jinja2_renderer(config, RENDERER, settings_prefix="pyramid_pyncette.dashboard.jinja2.")

    def set_up_environment() -> None:
        environment = get_jinja2_environment(config, RENDERER)
        environment.autoescape = True
        environment.finalize = finalize
        environment.undefined = jinja2.StrictUndefined

    def register() -> None:
        from .views import add_views

        add_views(config, _settings(config))

    def check() -> None:
        registry = config.registry
        permission = view_permission(_settings(config))
        if permission != NO_PERMISSION_REQUIRED and registry.queryUtility(ISecurityPolicy) is None:
            raise ConfigurationError(_SECURITY_HELP.format(permission=permission))
        storage = registry.queryUtility(ICSRFStoragePolicy)
        if (
            isinstance(storage, (LegacySessionCSRFStoragePolicy, SessionCSRFStoragePolicy))
            and registry.queryUtility(ISessionFactory) is None
        ):
            raise ConfigurationError(_CSRF_HELP)
        if _settings(config).dashboard_metrics_public and not metrics_available():
            raise ConfigurationError(_METRICS_HELP)

    config.action(None, set_up_environment, order=_ENVIRONMENT_ORDER)
    # Deferred (after pyramid_pyncette has read its settings, in the same
    # phase), so settings added after the include count; the routes and views
    # it adds run in their own, later phases.
    config.action(("pyramid_pyncette.dashboard", "views"), register, order=PHASE1_CONFIG)
    config.action(("pyramid_pyncette.dashboard", "check"), check, order=_CHECK_ORDER)
