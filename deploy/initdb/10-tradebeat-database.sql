-- Run once by the postgres image when its volume is new: the candle store gets a database of its own
-- beside Dagster's (POSTGRES_DB, "dagster"); the store refuses a database holding other tables.
CREATE DATABASE tradebeat;
