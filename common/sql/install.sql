-- Shipped to users. Apply with `diesel migration run`, sqlx-cli, or psql.

-- advisory_key(name): the same key as advisory_common::Key::name(name) in Rust:
-- SHA-256 of the UTF-8 bytes, first 8 bytes read big-endian as a signed bigint.
-- Lets SQL code (triggers, psql sessions, other languages) take the lock a Rust service takes:
--   SELECT pg_advisory_lock(advisory_key('orders:42'));
CREATE OR REPLACE FUNCTION advisory_key(name text) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT ('x' || left(encode(sha256(convert_to(name, 'UTF8')), 'hex'), 16))::bit(64)::bigint $$;

-- advisory_locks: every advisory lock in the current database, held or awaited, decoded back into
-- the key the application used (key_bigint for the bigint space, key1/key2 for the int pair space),
-- with who holds it. The same decoding as advisory_common::LockInfo.
CREATE OR REPLACE VIEW advisory_locks AS
SELECT
    CASE WHEN l.objsubid = 1 THEN (l.classid::int8 << 32) | l.objid::int8 END AS key_bigint,
    CASE WHEN l.objsubid = 2 THEN (l.classid::int8 - CASE WHEN l.classid::int8 >= 2147483648 THEN 4294967296 ELSE 0 END)::int4 END AS key1,
    CASE WHEN l.objsubid = 2 THEN (l.objid::int8 - CASE WHEN l.objid::int8 >= 2147483648 THEN 4294967296 ELSE 0 END)::int4 END AS key2,
    CASE WHEN l.mode = 'ShareLock' THEN 'shared' ELSE 'exclusive' END AS mode,
    l.granted,
    l.pid,
    a.application_name,
    a.usename AS username,
    a.state,
    l.waitstart AS wait_start,
    a.xact_start,
    a.query
FROM pg_catalog.pg_locks l
LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory'
  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database());
