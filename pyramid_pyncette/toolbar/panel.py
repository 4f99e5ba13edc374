"""The debug toolbar's "Jobs" panel: the jobs a request added, replaced or cancelled."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyramid_debugtoolbar.panels import DebugPanel

from .recording import RecordedWrite, start_recording, write_row

if TYPE_CHECKING:
    from pyramid.request import Request


class JobsPanel(DebugPanel):
    """Lists each job write the request asked for and whether its transaction committed it.

    Built by the toolbar for every request it watches, before the view
    runs: it starts that request's record (see
    :mod:`pyramid_pyncette.toolbar.recording`).
    """

    name = "pyncette_jobs"
    title = "Jobs"
    nav_title = "Jobs"
    template = "pyramid_pyncette.toolbar:templates/jobs.jinja2"
    has_content = True

    def __init__(self, request: Request) -> None:
        self.writes: list[RecordedWrite] = start_recording(request)

    @property
    def nav_subtitle(self) -> str:
        """How many writes the request made (shown under the tab's title)."""
        return str(len(self.writes)) if self.writes else ""

    def render_vars(self, request: Request) -> dict[str, Any]:
        """The rows of the panel's table, one per write, in the order they were made."""
        return {"writes": [write_row(write) for write in self.writes]}
