DROP TABLE IF EXISTS advisory_test_counters;
