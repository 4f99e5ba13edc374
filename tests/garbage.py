"""Writing garbage into a store: rows and documents no valid job would leave behind.

A hand-edited row, a bad migration or another version of the app can put
anything in a shared store; these helpers put it there on purpose, bypassing
the repository's checks, so tests can show the worker and the listings cope.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from pyramid_pyncette.repository.rows import UnreadableJSON, decode_job_fields, load_json
from pyramid_pyncette.schedules import DateSchedule

#: The time of :data:`GOOD_VALUES` (its run is due then).
GOOD_VALUES_TIME = datetime(2030, 1, 1, tzinfo=timezone.utc)

#: The columns of one well-formed job row, in the jobs table's order: tests
#: change one or two values to anything and read the row back.
GOOD_VALUES = {
    "id": "j",
    "task": "record",
    "schedule": {"kind": "date", "run_at": GOOD_VALUES_TIME.isoformat()},
    "args": [1],
    "kwargs": {"a": 1},
    "options": {"max_retries": 2},
    "due_at": GOOD_VALUES_TIME,
    "next_run_at": None,
    "locked_by": None,
    "attempts": 0,
    "last_run_at": None,
    "last_status": None,
    "last_error": None,
    "created_at": GOOD_VALUES_TIME,
    "partition": 0,
    "queue": "emails",
}


def _micros_text(value: datetime | None) -> str | None:
    """``value`` as a document keeps it: the digits of its microseconds since the epoch."""
    if value is None:
        return None
    return str((value - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1))


def good_document(**changes: Any) -> dict[str, Any]:
    """The job of :data:`GOOD_VALUES` as a document (the Redis and DynamoDB layout): the
    run state at the top level, times as text of microseconds since the epoch, the
    definition as JSON text under ``job``; ``changes`` replace top-level values."""
    definition = {
        "id": GOOD_VALUES["id"],
        "schedule": GOOD_VALUES["schedule"],
        "args": GOOD_VALUES["args"],
        "kwargs": GOOD_VALUES["kwargs"],
        "options": GOOD_VALUES["options"],
        "created_at": _micros_text(GOOD_VALUES["created_at"]),
        "partition": GOOD_VALUES["partition"],
    }
    document = {
        "task": GOOD_VALUES["task"],
        "due_at": _micros_text(GOOD_VALUES["due_at"]),
        "next_run_at": _micros_text(GOOD_VALUES["next_run_at"]),
        "locked_by": GOOD_VALUES["locked_by"],
        "attempts": GOOD_VALUES["attempts"],
        "last_run_at": _micros_text(GOOD_VALUES["last_run_at"]),
        "last_status": GOOD_VALUES["last_status"],
        "last_error": GOOD_VALUES["last_error"],
        "job": json.dumps(definition),
        "queue": GOOD_VALUES["queue"],
    }
    document.update(changes)
    return document


def _redis_document(repository: Any, job_id: str) -> dict[str, Any]:
    """The stored Redis document of ``job_id``, decoded."""
    return json.loads(repository.client.hget(repository.job_keys(job_id).jobs, job_id))


def _store_redis_document(repository: Any, job_id: str, doc: dict[str, Any]) -> None:
    """Overwrite the stored Redis document of ``job_id`` with ``doc``, unchecked."""
    repository.client.hset(repository.job_keys(job_id).jobs, job_id, json.dumps(doc))


def _dynamodb_item(repository: Any, job_id: str) -> dict[str, Any]:
    """The stored DynamoDB item of ``job_id``, its attributes as Python values."""
    from boto3.dynamodb.types import TypeDeserializer

    item = repository.boto_client.get_item(
        TableName=repository.table, Key=repository.job_key(job_id), ConsistentRead=True
    )["Item"]
    return {name: TypeDeserializer().deserialize(value) for name, value in item.items()}


def _store_dynamodb_item(repository: Any, item: dict[str, Any]) -> None:
    """Overwrite a stored DynamoDB item with ``item`` (Python values), unchecked."""
    from boto3.dynamodb.types import TypeSerializer

    encoded = {name: TypeSerializer().serialize(value) for name, value in item.items()}
    repository.boto_client.put_item(TableName=repository.table, Item=encoded)


def store_kind(app: Any) -> str:
    """The kind of ``app``'s store: memory, sqlite, postgresql, mariadb, redis or dynamodb."""
    url = app.scheduler.settings.url
    for kind in ("memory", "sqlite", "postgresql", "mysql", "redis", "dynamodb"):
        if url.startswith(kind):
            return "mariadb" if kind == "mysql" else kind
    raise AssertionError(url)


def write_garbage(app: Any, job_id: str, **columns: Any) -> None:
    """Write a due job ``job_id`` whose stored columns hold ``columns`` verbatim.

    Values are the stored text of the JSON columns (``schedule``, ``args``,
    ``options``) or of the Redis document's ``job`` definition (key
    ``definition``); the Redis store also accepts definition keys
    (``schedule``, ``args``, ``kwargs``, ``options``) as Python values to
    encode. On the memory store the values are what a store's decoder would
    make of such text.
    """
    good = app.scheduler.build_job("record", DateSchedule(app.clock()), job_id=job_id)
    kind = store_kind(app)
    repository = app.repository
    if kind == "memory":
        fields = {
            "id": job_id,
            "task": good.task,
            "schedule": good.schedule,
            "args": {"args": [], "kwargs": {}},
            "options": {},
            "due_at": good.due_at,
            "next_run_at": good.next_run_at,
            "created_at": good.created_at,
        }
        fields.update({k: load_json(v) for k, v in columns.items() if k != "definition"})
        repository.add([decode_job_fields(fields)])
        return
    repository.add([good])
    if kind == "dynamodb":  # the item's job definition is JSON text, as in a Redis document
        item = _dynamodb_item(repository, job_id)
        item["job"] = _garbage_definition(item["job"], columns)
        _store_dynamodb_item(repository, item)
        return
    if kind == "redis":
        doc = _redis_document(repository, job_id)
        if "definition" in columns:
            doc["job"] = columns["definition"]
        else:
            definition = json.loads(doc["job"])
            for key, value in columns.items():
                definition[key] = load_json(value)
                if isinstance(definition[key], UnreadableJSON):
                    doc["job"] = json.dumps(definition)[:-1] + f', "{key}": {value}}}'
                    break
            else:
                doc["job"] = json.dumps(definition)
        _store_redis_document(repository, job_id, doc)
        return
    table = repository.table
    raw = sa.table(table.name, *(sa.column(name, sa.Text) for name in columns), sa.column("id"))
    with repository.engine.begin() as conn:
        conn.execute(sa.update(raw).where(raw.c.id == job_id).values(**columns))


def _garbage_definition(text: str, columns: dict[str, Any]) -> str:
    """The JSON text of a job definition with ``columns`` written into it verbatim."""
    if "definition" in columns:
        return columns["definition"]
    definition = json.loads(text)
    for key, value in columns.items():
        definition[key] = load_json(value)
        if isinstance(definition[key], UnreadableJSON):
            del definition[key]
            return json.dumps(definition)[:-1] + f', "{key}": {value}}}'
    return json.dumps(definition)


#: Keys of a Redis document's job definition (the others are the document's own).
DEFINITION_KEYS = ("created_at", "partition")


def write_column_garbage(app: Any, job_id: str, column: str, value: Any) -> None:
    """Write a due job ``job_id`` whose stored ``column`` holds ``value`` (see TIME_GARBAGE)."""
    kind = store_kind(app)
    good = app.scheduler.build_job("record", DateSchedule(app.clock()), job_id=job_id)
    repository = app.repository
    if kind == "memory":
        fields = {name: getattr(good, name) for name in ("id", "task", "schedule", "due_at")}
        fields.update(args={"args": [], "kwargs": {}}, options={}, next_run_at=good.next_run_at)
        fields[column] = value
        repository.add([decode_job_fields(fields)])
        return
    repository.add([good])
    if kind == "dynamodb":
        item = _dynamodb_item(repository, job_id)
        if column in DEFINITION_KEYS:
            definition = json.loads(item["job"])
            definition[column] = value
            item["job"] = json.dumps(definition)
        else:
            item[column] = value
        _store_dynamodb_item(repository, item)
        return
    if kind == "redis":
        doc = _redis_document(repository, job_id)
        if column in DEFINITION_KEYS:
            definition = json.loads(doc["job"])
            definition[column] = value
            doc["job"] = json.dumps(definition)
        else:
            doc[column] = value
        _store_redis_document(repository, job_id, doc)
        return
    table = repository.engine.dialect.identifier_preparer.format_table(repository.table)
    assignments = f"{column} = {value}"
    if column == "due_at":
        assignments += ", next_run_at = NULL"  # so the claim keeps the due time as the run's
    with repository.engine.begin() as conn:
        if kind == "mariadb":
            # Zero and impossible dates are what a lax server or an old dump leaves behind.
            conn.exec_driver_sql("SET SESSION sql_mode = 'ALLOW_INVALID_DATES'")
        conn.execute(sa.text(f"UPDATE {table} SET {assignments} WHERE id = :id"), {"id": job_id})
