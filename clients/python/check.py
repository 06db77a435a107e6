"""Exercises the generated Python client (openapi-python-client) against a
live oms: create an order, read it back, receive a typed validation error,
cancel an order, read a symbol's trades and its book, and see a market
order with nothing to take expire.

Usage: python3 clients/python/check.py GENERATED_DIR BASE_URL API_KEY
(`just clients` generates the client; `just test` runs this.)
"""

import sys
import time
import uuid

sys.path.insert(0, sys.argv[1])

from oms_client import AuthenticatedClient, Client  # noqa: E402
from oms_client.api.orders import cancel_order, create_order, get_order  # noqa: E402
from oms_client.api.trading import get_order_book, list_trades  # noqa: E402
from oms_client.models import (  # noqa: E402
    Channel, MarketType, NewLimitOrder, NewMarketOrder, Order, OrderAccepted, OrderBook, Problem,
    Reason, Side, Status, TradePage,
)

# The generated client sends the key as `Authorization: Bearer …`.
client = AuthenticatedClient(base_url=sys.argv[2], token=sys.argv[3], raise_on_unexpected_status=True)

# Without a key every order operation answers a typed 401 Problem.
anonymous = Client(base_url=sys.argv[2], raise_on_unexpected_status=True)
refused = get_order.sync(client=anonymous, id=uuid.uuid4())
assert isinstance(refused, Problem) and refused.status == 401, f"expected a 401 Problem, got {refused!r}"

new = NewLimitOrder(
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
    body=NewLimitOrder(src_currency="usd", dst_currency="EUR", side=Side.SELL, price="-1", quantity="1", channel=Channel.VALUE_1),
)
assert isinstance(bad, Problem) and bad.status == 422, f"expected a typed 422 Problem, got {bad!r}"
fields = sorted(e.field for e in bad.errors)
assert fields == ["price", "src_currency"], fields

# Trading: a buy far below any sell rests, is cancelled, and its book empties.
resting = create_order.sync(client=client, body=NewLimitOrder(
    src_currency="PYA", dst_currency="CLT", side=Side.BUY, price="0.0001", quantity="3",
    channel=Channel.VALUE_11, client_order_id=f"py-{uuid.uuid4()}"))
assert isinstance(resting, OrderAccepted), resting
opened = get_order.sync(client=client, id=resting.id)
assert isinstance(opened, Order) and opened.status == Status.OPEN and opened.remaining_quantity == "3", opened
book = get_order_book.sync(client=client, symbol=resting.symbol)
assert isinstance(book, OrderBook) and book.bids[0].price == "0.0001", book
cancelled = cancel_order.sync(client=client, id=resting.id)
assert isinstance(cancelled, OrderAccepted), f"expected 202 on DELETE, got {cancelled!r}"
for _ in range(100):
    now = get_order.sync(client=client, id=resting.id)
    if isinstance(now, Order) and now.status == Status.CANCELLED:
        break
    time.sleep(0.05)
assert isinstance(now, Order) and now.status == Status.CANCELLED, now
again = cancel_order.sync(client=client, id=resting.id)
assert isinstance(again, Problem) and again.status == 409, f"expected a typed 409, got {again!r}"
trades = list_trades.sync(client=client, symbol=resting.symbol)
assert isinstance(trades, TradePage) and trades.trades == [], trades

# A market order (its own model: no price) on a symbol with no book:
# nothing to take, so it expires, and says why.
market = create_order.sync(client=client, body=NewMarketOrder(
    src_currency="PYM", dst_currency="CLT", side=Side.SELL, quantity="2",
    channel=Channel.VALUE_11, type_=MarketType.MARKET))
assert isinstance(market, OrderAccepted), market
for _ in range(100):
    ended = get_order.sync(client=client, id=market.id)
    if isinstance(ended, Order) and ended.status == Status.EXPIRED:
        break
    time.sleep(0.05)
assert isinstance(ended, Order) and ended.status == Status.EXPIRED, ended
assert ended.reason == Reason.MARKET_REMAINDER and ended.filled_quantity == "0", ended

print(f"python client: created {accepted.id}, read it back, typed 422 naming {fields}; "
      f"cancelled {resting.id} (then a typed 409), read {resting.symbol}'s book and trades; "
      f"market order {market.id} expired ({ended.reason.value})")
