"""moto_server, with DynamoDB's atomicity.

DynamoDB applies each write (and each transaction) atomically: a conditional
write's check and its change cannot interleave with another request's.
moto's server is threaded and does not lock its tables, so two concurrent
conditional writes can both pass their check (two "winners" of one claim,
rate-limit buckets overdrawn). The tests need the fake to be as strict as
DynamoDB, so this runs moto's own server with every DynamoDB action
serialized by one lock. SQS long polls and the other services stay
concurrent.

Run as moto_server: python moto_atomic.py -H 127.0.0.1 -p PORT
"""

import sys
import threading

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

if __name__ == "__main__":
    sys.exit(main())
