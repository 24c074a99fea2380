"""Queries through Warden's PostgreSQL proxy with asyncpg, which asks for binary
results for every type it knows, and prints what came back as JSON lines: one per
query, {"sql": ..., "value": <repr or null>}. Used by the gateway's tests.

Environment: WARDEN_PG_PORT, WARDEN_TOKEN, WARDEN_DB.
"""

import asyncio
import json
import os

import asyncpg

QUERIES = [
    "SELECT ARRAY['bob@example.com']",
    "SELECT array_agg(x) FROM (VALUES ('bob@example.com'), ('carol@example.com')) v(x)",
    "SELECT jsonb_build_object('e', 'bob@example.com')",
    "SELECT to_jsonb('4111 1111 1111 1111'::text)",
    "SELECT 4111111111111111::int8",
    "SELECT 4111111111111111::numeric",
    "SELECT '4111111111111111'::float8",
    "SELECT 'bob@example.com'::bytea",
    "SELECT row('bob@example.com'::text, 1)",
    "SELECT 42::int8",
]


async def main():
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=int(os.environ["WARDEN_PG_PORT"]),
        user="someone",
        password=os.environ["WARDEN_TOKEN"],
        database=os.environ["WARDEN_DB"],
        ssl=False,
    )
    try:
        for sql in QUERIES:
            value = await conn.fetchval(sql)
            print(json.dumps({"sql": sql, "value": None if value is None else repr(value)}))
    finally:
        await conn.close()


asyncio.run(main())
