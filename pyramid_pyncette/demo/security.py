"""The demo's security policy: everyone may use the dashboard.

NOT for a real application. The demo runs on localhost for one person, so
its policy grants the dashboard's permission (``pyncette.dashboard.permission``,
default ``pyncette.admin``) to every visitor, logged in or not. A real
application's policy grants it to its operators only (see Pyramid's
"Security" chapter).
"""

from __future__ import annotations

from typing import Any

from pyramid.request import Request
from pyramid.security import Allowed, Denied


class EveryoneOperatesTheDemo:
    """A Pyramid security policy with no users that grants the dashboard's permission to all."""

    def identity(self, request: Request) -> None:
        """Nobody is logged in."""
        return None

    def authenticated_userid(self, request: Request) -> None:
        """Nobody is logged in."""
        return None

    def permits(self, request: Request, context: Any, permission: str) -> Allowed | Denied:
        """Allow the dashboard's permission to anyone; deny every other permission."""
        if permission == request.registry.pyncette_settings.dashboard_permission:
            return Allowed("the demo lets everyone use its dashboard")
        return Denied(f"the demo grants no permission but the dashboard's, not {permission!r}")

    def remember(self, request: Request, userid: Any, **kw: Any) -> list[Any]:
        """No login: no headers."""
        return []

    def forget(self, request: Request, **kw: Any) -> list[Any]:
        """No logout: no headers."""
        return []
