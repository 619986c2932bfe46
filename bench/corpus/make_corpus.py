#!/usr/bin/env python3
"""Writes the fixed JSON corpus of the compression benchmark (bench/compression.py): values of
the shapes a cache in front of an API or a warehouse serves, from 300 bytes (under the compression threshold, a control) to 214 KiB. Seeded, so
the files are the same on every run; they are committed, and this script documents them.

    python3 bench/corpus/make_corpus.py     # rewrites bench/corpus/*.json
"""
import json
import os
import random

OUT = os.path.dirname(os.path.abspath(__file__))
rng = random.Random(16)
WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
         "sigma tau upsilon phi chi psi omega red green blue small large fresh stale north south "
         "east west order invoice customer product region warehouse").split()


def words(n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def product(i):
    return {"id": f"sku-{i:06d}", "name": words(3).title(), "price": round(rng.uniform(1, 500), 2),
            "currency": "EUR", "in_stock": rng.random() > 0.2, "tags": rng.sample(WORDS, 4),
            "rating": round(rng.uniform(1, 5), 1), "description": words(25)}


def user(i):
    return {"user_id": 100000 + i, "email": f"user{i}@example.com", "country": rng.choice(["DE", "FR", "US", "JP", "BR"]),
            "created_at": f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00Z",
            "segments": rng.sample(WORDS, 3), "score": rng.random()}


def timeseries(n):
    t0 = 1_790_000_000
    return {"metric": "orders_per_minute", "unit": "1/min",
            "points": [[t0 + 60 * k, round(100 + 20 * rng.random(), 3)] for k in range(n)]}


def report(rows):
    cols = ["region", "warehouse", "product", "units", "revenue", "returns"]
    return {"columns": cols, "rows": [[rng.choice(WORDS), f"wh-{rng.randint(1, 40)}", f"sku-{rng.randint(1, 9999):06d}",
                                      rng.randint(0, 1000), round(rng.uniform(0, 1e5), 2), rng.randint(0, 30)]
                                     for _ in range(rows)]}


CORPUS = {
    "product-300b": product(1),
    "users-3k": [user(i) for i in range(20)],
    "catalog-13k": [product(i) for i in range(45)],
    "timeseries-23k": timeseries(1100),
    "report-49k": report(1100),
    "catalog-214k": [product(i) for i in range(720)],
}

for name, value in CORPUS.items():
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(value, f, separators=(",", ":"))
    print(name, os.path.getsize(os.path.join(OUT, f"{name}.json")))
