"""A pytest plugin: moto's DynamoDB emulation in server mode, for the DynamoDB store.

The session fixture :func:`dynamodb_server` starts ``moto_server`` (from
``pip install "moto[server]"``) on 127.0.0.1 and a free port on first use
and stops it, by its process id, when the session ends. Without moto's
server the tests that need it are skipped, or fail under
``--require-backends`` (see :mod:`tests.servers`).

The store under test finds dummy credentials and a region in the
environment, as boto3 finds real ones: moto accepts any.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.servers import HOST, backends_required, free_port, handle_unavailable

#: The region the tests' tables live in (moto accepts any).
REGION = "us-east-1"

#: Seconds moto's server may take to answer after being launched.
START_TIMEOUT = 60.0

#: What boto3 reads in place of real credentials while the tests run.
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


#: ``moto_server``, one request at a time, with two of moto's hot spots made
#: faster without changing what they answer.
#:
#: DynamoDB applies a conditional write atomically; moto's backend checks the
#: condition, then writes, with nothing in between to stop another request of
#: its threaded server. Taking requests one at a time gives the emulation
#: DynamoDB's guarantee, without which two claims could both take a job (as
#: they cannot on DynamoDB).
#:
#: moto sorts every item of a table for each Query (by keys it compares
#: through a generic value conversion), then keeps the items of the queried
#: key and sorts those again; so a Query costs O(n log n) in the table's size
#: where DynamoDB's costs O(results). Here a Query of the table reads only the
#: items of its partition key, and a Query of an index skips the first sort
#: (its second sort orders by every key: same answer); a Scan keeps moto's
#: sort, with the conversion's shortcut for text and numbers. Enough for
#: several daemons to drain thousands of jobs. A TransactWriteItems copies, to
#: undo a cancelled transaction, the items it names instead of whole tables.
SERIALISED_SERVER = """
import signal, sys, threading
from decimal import Decimal
from werkzeug.serving import run_simple
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

generic_cast = DynamoType.cast_value.fget

def cast_value(self):
    if self.type == "S":
        return self.value
    if self.type == "N":
        return Decimal(self.value)
    return generic_cast(self)

def all_items(self):
    items = []
    for hash_set in self.items.values():
        if self.range_key_attr:
            items.extend(hash_set.values())
        else:
            items.append(hash_set)
    return sorted(
        items,
        key=lambda x: (
            (x.hash_key.cast_value, x.range_key.cast_value) if x.range_key
            else x.hash_key.cast_value
        ),
    )

generic_query = Table.query

def query(self, hash_key, comparison, values, limit, start, forward, projection, index_name=None,
          *args, **kwargs):
    if index_name is None and self.range_key_attr and hash_key is not None:
        # The only items the generic query keeps; it sorts them itself.
        self.all_items = lambda: list(self.items.get(hash_key, {}).values())
    else:
        # Its results are sorted by the index's keys and the table's: any order will do,
        # and an item whose index key is other text is dropped by it too.
        items = lambda: [
            item for hash_set in self.items.values() for item in hash_set.values()
        ] if self.range_key_attr else list(self.items.values())
        keys = [k["AttributeName"] for k in self.get_index(index_name).schema
                if k["KeyType"] == "HASH"] if index_name else []
        if len(keys) == 1 and getattr(hash_key, "type", None) == "S":
            name, text = keys[0], hash_key.value
            def matching():
                found = []
                for item in items():
                    value = item.attrs.get(name)
                    if value is not None and value.type == "S" and value.value == text:
                        found.append(item)
                return found
            self.all_items = matching
        else:
            self.all_items = items
    try:
        return generic_query(
            self, hash_key, comparison, values, limit, start, forward, projection, index_name,
            *args, **kwargs
        )
    finally:
        del self.all_items  # requests are taken one at a time: no other query sees it

# TransactWriteItems: moto copies every table a transaction names, whole, once
# per item, to undo a cancelled transaction; copying the items it names (all
# it can change) undoes it the same.
import copy, types
import moto.dynamodb.models as backend_module

real_deepcopy = copy.deepcopy
backend_module.copy = types.SimpleNamespace(
    deepcopy=lambda value, *a: value if isinstance(value, Table) else real_deepcopy(value, *a)
)
generic_transact = backend_module.DynamoDBBackend.transact_write_items

def transact_write_items(self, transact_items):
    saved = []
    for entry in transact_items:
        op = next(iter(entry.values()), {})
        table = self.tables.get(op.get("TableName")) if isinstance(op, dict) else None
        attrs = (op.get("Key") or op.get("Item") or {}) if table is not None else {}
        if table is None or table.hash_key_attr not in attrs:
            continue
        hash_value = DynamoType(attrs[table.hash_key_attr])
        if table.range_key_attr is not None:
            if table.range_key_attr not in attrs:
                continue
            range_value = DynamoType(attrs[table.range_key_attr])
            current = table.items.get(hash_value, {}).get(range_value)
        else:
            range_value = None
            current = table.items.get(hash_value)
        saved.append((table, hash_value, range_value, real_deepcopy(current)))
    try:
        return generic_transact(self, transact_items)
    except BaseException:
        for table, hash_value, range_value, item in reversed(saved):
            if range_value is None:
                if item is None:
                    table.items.pop(hash_value, None)
                else:
                    table.items[hash_value] = item
            elif item is None:
                table.items.get(hash_value, {}).pop(range_value, None)
            else:
                table.items[hash_value][range_value] = item
        raise

backend_module.DynamoDBBackend.transact_write_items = transact_write_items
DynamoType.cast_value = property(cast_value)
Table.all_items = all_items
Table.query = query

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()

def one_at_a_time(environ, start_response):
    with lock:
        return list(app(environ, start_response))

run_simple(sys.argv[1], int(sys.argv[2]), one_at_a_time, threaded=True)
"""


class MotoServer:
    """A ``moto_server`` process of this session on 127.0.0.1."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        """Where boto3 reaches the emulation."""
        return f"http://{HOST}:{self.port}"

    def url(self, table: str) -> str:
        """The ``pyncette.url`` of the DynamoDB table ``table`` in this server."""
        return f"dynamodb://{REGION}/{table}?endpoint_url={self.endpoint_url}"

    @staticmethod
    def command() -> list[str] | None:
        """How to start moto's server here, or None when it is not installed.

        moto's own server application (what ``moto_server`` serves), run by
        this interpreter (so it is the moto of the tests' environment) behind
        :data:`SERIALISED_SERVER`.
        """
        if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
            return None
        return [sys.executable, "-c", SERIALISED_SERVER]

    def start(self) -> None:
        """Launch the server and wait until it answers."""
        command = self.command()
        assert command is not None
        self.process = subprocess.Popen(
            [*command, HOST, str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited at start (code {self.process.returncode})")
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.endpoint_url}")

    def stop(self) -> None:
        """End the server this object started (by its pid)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


MISSING = (
    'BACKEND NOT INSTALLED: DynamoDB tests need moto\'s server mode; pip install "moto[server]" '
    '(or pip install -e ".[testing]"). Pass --require-backends or set '
    "PYNCETTE_REQUIRE_BACKENDS=1 to make this a failure instead of a skip."
)


@pytest.fixture(scope="session")
def dynamodb_server(request: pytest.FixtureRequest) -> Iterator[MotoServer]:
    """moto's DynamoDB emulation, shared by the whole session (started on first use).

    While it runs, the environment holds dummy AWS credentials and a region
    (:data:`DUMMY_AWS_ENV`), replacing any real ones, so no test (nor any
    pscheduler process a test starts) ever talks to AWS.
    """
    required = backends_required(request.config.getoption("require_backends", default=False))
    if MotoServer.command() is None:
        handle_unavailable(MISSING, required=required)
    saved = {name: os.environ.get(name) for name in DUMMY_AWS_ENV}
    os.environ.update(DUMMY_AWS_ENV)
    server = MotoServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
