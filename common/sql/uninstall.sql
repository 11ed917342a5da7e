DROP VIEW IF EXISTS advisory_locks;
DROP FUNCTION IF EXISTS advisory_key(text);
