-- Matching (src/matching.rs): each order's fill and the trades, written in
-- the same statement as the orders and the offsets (src/store/postgres.rs).

-- An order without a row here is open with nothing filled.
CREATE TABLE order_fills (
    id              uuid    PRIMARY KEY,
    status          text    NOT NULL
        CHECK (status IN ('open', 'partially_filled', 'filled', 'cancelled')),
    filled_quantity numeric NOT NULL CHECK (filled_quantity >= 0),
    -- The partition whose books hold the order (a book is rebuilt from it).
    book_partition  integer NOT NULL
);

-- Rebuilding a partition's books reads only the orders still resting.
CREATE INDEX order_fills_resting ON order_fills (book_partition)
    WHERE status IN ('open', 'partially_filled');

CREATE TABLE trades (
    id            uuid        PRIMARY KEY,
    symbol        text        NOT NULL,
    price         numeric     NOT NULL CHECK (price > 0),
    quantity      numeric     NOT NULL CHECK (quantity > 0),
    buy_order_id  uuid        NOT NULL,
    sell_order_id uuid        NOT NULL,
    taker_side    text        NOT NULL CHECK (taker_side IN ('buy', 'sell')),
    executed_at   timestamptz NOT NULL,
    log_partition integer     NOT NULL,
    log_offset    bigint      NOT NULL
);

-- GET /trades?symbol=&after= walks this index.
CREATE INDEX trades_symbol_id ON trades (symbol, id);
