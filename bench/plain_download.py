"""The baseline: the same download with no engine, as a plain script would do it.

Fetches every page of each table (json_link paging), parses it and upserts the records
into a store, N tables at a time. No Temporal, no checkpoints, no heartbeats, no locks:
the limit the engine is compared with. Prints one JSON line: records, seconds.

    python bench/plain_download.py --base-url URL --tables t1,t2 --db sqlite:///x.db
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sqlite3
import threading
import time
from typing import Any

import aiohttp
import orjson

UPSERT = (
    "INSERT INTO records (table_id, remote_id, fields) VALUES ({p}, {p}, {p}) "
    "ON CONFLICT (table_id, remote_id) DO UPDATE SET fields = excluded.fields"
)
# Fields as the engine's stores keep them: JSON text in SQLite, JSONB in PostgreSQL.
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS records (table_id TEXT NOT NULL, remote_id TEXT NOT NULL, "
    "fields {json} NOT NULL, PRIMARY KEY (table_id, remote_id))"
)


class Sink:
    """One connection per thread, writes serialized (like the engine's stores)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.local = threading.local()
        self.lock = threading.Lock()
        self.postgres = url.startswith("postgres")
        self.sql = UPSERT.format(p="%s" if self.postgres else "?")
        with self.lock:
            conn = self.conn()
            conn.execute(SCHEMA.format(json="JSONB" if self.postgres else "TEXT"))
            conn.commit()

    def conn(self) -> Any:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            if self.postgres:
                import psycopg

                conn = psycopg.connect(self.url)
            else:
                conn = sqlite3.connect(self.url.removeprefix("sqlite:///"))
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            self.local.conn = conn
        return conn

    def write(self, rows: list[tuple[str, str, str]]) -> None:
        conn = self.conn()
        if self.postgres:
            # COPY into a temp table, then one merge: the fastest bulk upsert PostgreSQL has.
            with conn.cursor() as cur:
                cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS page (table_id TEXT, remote_id TEXT, "
                    "fields TEXT) ON COMMIT DELETE ROWS"
                )
                with cur.copy("COPY page (table_id, remote_id, fields) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                cur.execute(
                    "INSERT INTO records SELECT table_id, remote_id, fields::jsonb FROM page "
                    "ON CONFLICT (table_id, remote_id) DO UPDATE SET fields = excluded.fields"
                )
            conn.commit()
        else:
            with self.lock:
                conn.executemany(self.sql, rows)
                conn.commit()


async def download(client: aiohttp.ClientSession, sink: Sink, url: str, table: str) -> int:
    count = 0
    next_url: str | None = url
    while next_url:
        async with client.get(next_url, raise_for_status=True) as response:
            body = orjson.loads(await response.read())
        rows = [(table, str(r["id"]), orjson.dumps(r).decode()) for r in body["data"]]
        await asyncio.to_thread(sink.write, rows)
        count += len(rows)
        next_url = body["links"].get("next")
    return count


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--tables", required=True, help="comma-separated table names")
    parser.add_argument("--db", required=True, help="sqlite:///path or postgresql://...")
    parser.add_argument("--parallelism", type=int, default=4)
    parser.add_argument("--report-rss", action="store_true", help="add the peak RSS (MB)")
    args = parser.parse_args()
    sink = Sink(args.db)
    gate = asyncio.Semaphore(args.parallelism)

    async def one(client: aiohttp.ClientSession, name: str) -> int:
        async with gate:
            return await download(client, sink, f"{args.base_url}/tables/{name}", name)

    began = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client:
        counts = await asyncio.gather(*(one(client, t) for t in args.tables.split(",")))
    seconds = time.perf_counter() - began
    report: dict[str, float] = {"records": sum(counts), "seconds": seconds}
    if args.report_rss:
        report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main())
