"""Exercises the generated Python client (openapi-python-client) against a
live oms: create an order, read it back, receive a typed validation error.

Usage: python3 clients/python/check.py GENERATED_DIR BASE_URL
(`just clients` generates the client; `just test` runs this.)
"""

import sys
import uuid

sys.path.insert(0, sys.argv[1])

from oms_client import Client  # noqa: E402
from oms_client.api.orders import create_order, get_order  # noqa: E402
from oms_client.models import Channel, NewOrder, Order, OrderAccepted, Problem, Side  # noqa: E402

client = Client(base_url=sys.argv[2], raise_on_unexpected_status=True)

new = NewOrder(
    src_currency="USD",
    dst_currency="EUR",
    side=Side.BUY,
    price="1.0850",
    quantity="2500",
    channel=Channel.VALUE_11,
    description="from the generated Python client",
    client_order_id=f"py-{uuid.uuid4()}",
)
accepted = create_order.sync(client=client, body=new)
assert isinstance(accepted, OrderAccepted), f"expected 202 OrderAccepted, got {accepted!r}"

# Read-your-writes: the read right after the 202 finds the order (the server
# waits for its consumer instead of answering 404).
stored = get_order.sync(client=client, id=accepted.id)
assert isinstance(stored, Order), f"read right after the 202: {stored!r}"
assert stored.id == accepted.id and stored.price == "1.0850" and stored.side == Side.BUY, stored

bad = create_order.sync(
    client=client,
    body=NewOrder(src_currency="usd", dst_currency="EUR", side=Side.SELL, price="-1", quantity="1", channel=Channel.VALUE_1),
)
assert isinstance(bad, Problem) and bad.status == 422, f"expected a typed 422 Problem, got {bad!r}"
fields = sorted(e.field for e in bad.errors)
assert fields == ["price", "src_currency"], fields

print(f"python client: created {accepted.id}, read it back, typed 422 naming {fields}")
