"""Tasks registered by decorators."""

from pyramid_pyncette import periodic_task, task


@task()
def send_mail(request, to, subject=""):
    return f"mail to {to}: {subject}"


@task(name="mail.cleanup", failure_mode="unlock")
def cleanup(request):
    return "cleaned"


@periodic_task(schedule="*/5 * * * *")
def every_five_minutes(request):
    return None


@periodic_task(interval="30s", name="heartbeat", execution_mode="at_most_once")
def heartbeat(request):
    return None


def undecorated_helper(request):
    return None
