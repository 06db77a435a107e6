-- Group mode (src/store/lease.rs): the members sharing a topic's
-- partitions and the lease of each partition. Times are the server's
-- (`now()`), never a member's clock.
CREATE TABLE consumer_members (
    topic      text        NOT NULL,
    member     text        NOT NULL,
    instance   text        NOT NULL,
    state      text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (topic, member)
);

-- A batch is written only while its writer holds the lease of each of its
-- partitions at the epoch it took it with (checked with the offsets, in
-- the batch's transaction); the epoch moves on whenever the partition
-- changes hands.
CREATE TABLE partition_leases (
    topic      text        NOT NULL,
    partition  integer     NOT NULL,
    epoch      bigint      NOT NULL,
    owner      text,
    instance   text        NOT NULL DEFAULT '',
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (topic, partition)
);
