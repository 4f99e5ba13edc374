"""An async task in a nested module."""

from pyramid_pyncette import task


@task()
async def build_report(request, day):
    return f"report for {day}"
