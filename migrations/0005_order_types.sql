-- Order types (src/domain/order.rs, `Terms`): limit or market, a time in
-- force, post-only. A market order has no price. Orders stored before
-- order types are limit orders that rest (`gtc`), as the defaults say.
ALTER TABLE orders ALTER COLUMN price DROP NOT NULL;
ALTER TABLE orders ADD COLUMN order_type text NOT NULL DEFAULT 'limit'
    CHECK (order_type IN ('limit', 'market'));
ALTER TABLE orders ADD COLUMN time_in_force text NOT NULL DEFAULT 'gtc'
    CHECK (time_in_force IN ('gtc', 'ioc', 'fok'));
ALTER TABLE orders ADD COLUMN post_only boolean NOT NULL DEFAULT false;
ALTER TABLE orders ADD CONSTRAINT orders_price_by_type
    CHECK ((order_type = 'market') = (price IS NULL));

-- What did not fill at once ends `expired`; a post-only order that would
-- trade, `rejected`; each with the reason the book decided it for.
ALTER TABLE order_fills DROP CONSTRAINT order_fills_status_check;
ALTER TABLE order_fills ADD CONSTRAINT order_fills_status_check
    CHECK (status IN ('open', 'partially_filled', 'filled', 'cancelled', 'expired', 'rejected'));
ALTER TABLE order_fills ADD COLUMN reason text
    CHECK (reason IN ('ioc_remainder', 'market_remainder', 'fok_not_fillable', 'post_only_would_trade', 'self_trade'));
