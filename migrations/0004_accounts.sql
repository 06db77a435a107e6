-- Accounts own orders: the account of the API key that submitted an order.
-- Orders stored before accounts existed keep NULL ("no account"): no key
-- owns them, so no caller lists, reads or cancels them.
ALTER TABLE orders ADD COLUMN account text;

-- GET /orders lists the caller's own orders of a symbol, in id order.
CREATE INDEX orders_account_symbol_id ON orders (account, symbol, id);
