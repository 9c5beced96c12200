"""Tests of ``asyncpool.asyncpg`` against a real PostgreSQL server (and PgBouncer)."""
