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

Run as moto_server: python moto_atomic.py -H 127.0.0.1 -p PORT
"""

import sys
import threading
from decimal import Decimal

from moto.dynamodb.models.dynamo_type import DynamoType
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

if __name__ == "__main__":
    sys.exit(main())
