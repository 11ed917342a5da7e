-- Test schema only (used by this project's tests and examples). Do not copy into an application.
CREATE TABLE IF NOT EXISTS advisory_test_counters (
    id    text PRIMARY KEY,
    value bigint NOT NULL,
    -- writers keep a = b; readers check it (readers-writer tests)
    a     bigint NOT NULL DEFAULT 0,
    b     bigint NOT NULL DEFAULT 0
);
