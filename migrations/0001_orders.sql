-- The orders view and the log offsets it reflects; written together, in one
-- statement, by the consumer (see src/store/postgres.rs).
CREATE TABLE orders (
    id              uuid        PRIMARY KEY,
    client_order_id text,
    symbol          text        NOT NULL,
    src_currency    text        NOT NULL,
    dst_currency    text        NOT NULL,
    side            text        NOT NULL CHECK (side IN ('buy', 'sell')),
    price           numeric     NOT NULL CHECK (price > 0),
    quantity        numeric     NOT NULL CHECK (quantity > 0),
    channel         smallint    NOT NULL,
    description     text        NOT NULL,
    created_at      timestamptz NOT NULL,
    log_partition   integer     NOT NULL,
    log_offset      bigint      NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now()
);

-- GET /orders?symbol=&after= walks this index.
CREATE INDEX orders_symbol_id ON orders (symbol, id);

CREATE TABLE log_offsets (
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL,
    PRIMARY KEY (topic, partition)
);
