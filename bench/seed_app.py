"""The seed's design, for comparison: FastAPI + Redis, one uvicorn worker.

Rebuilt from the seed's README and the facts DESIGN.md records about its app/main.py and
app/cache.py (GET /items/{key} -> Redis GET, else sleep ORIGIN_LATENCY_MS and SET with a 60 s
TTL; the three Prometheus metrics). Run: uvicorn seed_app:app --port N (REDIS_PORT set).
"""
import asyncio
import os
import time

import redis.asyncio as aioredis
from fastapi import FastAPI
from prometheus_client import Counter, Histogram

REDIS = aioredis.Redis(
    host=os.getenv("REDIS_HOST", "localhost"),
    port=int(os.getenv("REDIS_PORT", "6379")),
    db=int(os.getenv("REDIS_DB", "0")),
)
TTL = int(os.getenv("REDIS_TTL", "60"))
LATENCY = int(os.getenv("ORIGIN_LATENCY_MS", "200")) / 1000
HITS = Counter("cache_hits_total", "Cache hits")
MISSES = Counter("cache_misses_total", "Cache misses")
LAT = Histogram("request_latency_seconds", "Request latency")

app = FastAPI()


@app.get("/items/{key}")
async def get_item(key: str):
    start = time.perf_counter()
    value = await REDIS.get(key)
    if value is not None:
        HITS.inc()
        result = {"key": key, "value": value.decode(), "source": "cache"}
    else:
        MISSES.inc()
        await asyncio.sleep(LATENCY)
        value = f"value_for_{key}"
        await REDIS.set(key, value, ex=TTL)
        result = {"key": key, "value": value, "source": "origin"}
    LAT.observe(time.perf_counter() - start)
    return result
