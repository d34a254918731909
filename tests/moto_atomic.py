"""moto_server, with DynamoDB's atomicity.

DynamoDB applies each write (and each transaction) atomically: a conditional
write's check and its change cannot interleave with another request's.
moto's server is threaded and does not lock its tables, so two concurrent
conditional writes can both pass their check (two "winners" of one claim,
rate-limit buckets overdrawn). The tests need the fake to be as strict as
DynamoDB, so this runs moto's own server with every DynamoDB action
serialized by one lock. SQS long polls and the other services stay
concurrent.

It also writes the result of number arithmetic (ADD, SET a = a + b) as
DynamoDB does, in plain notation: moto keeps Python's `0E-7` for a sum
that comes to zero, which its own next ADD cannot parse (a decimal
counter that goes back to zero would then fail every later update).

And it makes a transaction cost what the items it writes cost: moto backs
up every table a transaction touches with a deep copy, for each item (a
two-item transaction on a table of 100,000 items copies 200,000), which
under the lock above stalls every other request. Here the transaction
backs up the items it names instead, and puts them (and the table's
stream) back as they were when it fails, which is all the full copy
restored.

Run as moto_server: python moto_atomic.py -H 127.0.0.1 -p PORT
"""

import copy
import inspect
import sys
import threading
from decimal import Decimal

import moto.dynamodb.models as dynamodb_models
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table
from moto.dynamodb.responses import DynamoHandler
from moto.server import main

_LOCK = threading.RLock()

_ACTIONS = (
    "put_item",
    "update_item",
    "delete_item",
    "get_item",
    "query",
    "scan",
    "batch_get_item",
    "batch_write_item",
    "transact_write_items",
    "transact_get_items",
)


def _atomic(action):
    def locked(self, *args, **kwargs):
        with _LOCK:
            return action(self, *args, **kwargs)

    locked.__name__ = action.__name__
    return locked


for _name in _ACTIONS:
    setattr(DynamoHandler, _name, _atomic(getattr(DynamoHandler, _name)))


def _plain(operation):
    def plain(self, other):
        result = operation(self, other)
        if result.is_number():
            result.value = format(Decimal(result.value).normalize(), "f")
        return result

    plain.__name__ = operation.__name__
    return plain


DynamoType.__add__ = _plain(DynamoType.__add__)
DynamoType.__sub__ = _plain(DynamoType.__sub__)


class _TablesKept:
    """`copy` as moto's transaction sees it: a table is not copied (its
    items are backed up one by one instead); anything else is."""

    @staticmethod
    def deepcopy(value, memo=None):
        if isinstance(value, Table):
            return value
        return copy.deepcopy(value, memo)


def _backup(backend, transact_items):
    """The items a transaction names, as they are, and each table's stream
    length: what to put back if it fails."""
    items, streams = [], {}
    for entry in transact_items:
        _, op = next(iter(entry.items()))
        table = backend.tables.get(op.get("TableName"))
        if table is None:
            continue
        key = op.get("Key") or op.get("Item") or {}
        if table.hash_key_attr not in key:
            continue
        hash_value = DynamoType(key[table.hash_key_attr])
        range_value = None
        if table.range_key_attr is not None:
            if table.range_key_attr not in key:
                continue
            range_value = DynamoType(key[table.range_key_attr])
        items.append((table, hash_value, range_value,
                      copy.deepcopy(table.get_item(hash_value, range_value))))
        if table.stream_shard is not None:
            streams[id(table)] = (table, len(table.stream_shard.items))
    return items, list(streams.values())


def _restore(items, streams):
    for table, hash_value, range_value, item in reversed(items):
        if range_value is None:
            if item is None:
                table.items.pop(hash_value, None)
            else:
                table.items[hash_value] = item
        elif item is None:
            table.items[hash_value].pop(range_value, None)
        else:
            table.items[hash_value][range_value] = item
    for table, length in streams:
        del table.stream_shard.items[length:]


def _item_backups(transact):
    def transact_write_items(self, transact_items):
        items, streams = _backup(self, transact_items)
        dynamodb_models.copy = _TablesKept
        try:
            return transact(self, transact_items)
        except Exception:
            _restore(items, streams)
            raise
        finally:
            dynamodb_models.copy = copy

    transact_write_items.__name__ = transact.__name__
    return transact_write_items


def _copies_tables(transact):
    """Whether moto's transaction is the one this was written for: it backs
    up tables with the module's `copy.deepcopy` and puts them back itself."""
    try:
        source = inspect.getsource(transact)
    except (OSError, TypeError):
        return False
    return (getattr(dynamodb_models, "copy", None) is copy
            and "copy.deepcopy(" in source and "original_table_state" in source)


# Otherwise moto's own: slow, but right.
if _copies_tables(DynamoDBBackend.transact_write_items):
    DynamoDBBackend.transact_write_items = _item_backups(DynamoDBBackend.transact_write_items)

if __name__ == "__main__":
    sys.exit(main())
