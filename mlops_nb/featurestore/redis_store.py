"""The online store in Redis (``features.online = redis``), for several service replicas: the same values
as the embedded store, published the same way (whole, or not at all).

Layout, under ``PREFIX`` (one store a Redis database: pick the database in ``features.redis_url``):
- ``<prefix>:current``: the generation being served;
- ``<prefix>:<generation>:views``: a hash, view -> JSON {as_of, digest, materialized_at, keys};
- ``<prefix>:<generation>:<view>:<key>``: a hash a key (the entity values as a JSON list), feature -> the
  value's shortest round-trip text (``repr``: the same bits back), ``nan`` for a missing value.
Materializing writes a new generation, switches ``current`` to it (one SET: atomic), then deletes every
other generation. A reader reads ``current`` and the hashes in one MULTI/EXEC, so what it reads is one
generation whole; it keeps a generation's ``views`` until ``current`` changes.
"""
from __future__ import annotations

import json
import os
import time
from datetime import datetime

from ..errors import FeatureStoreError
from .definitions import Definitions
from .online import Materialized, Part, utc_now

PREFIX = "mlops-nb:features"
BATCH = 1000  # commands a pipeline round trip when writing


class RedisStore:
    def __init__(self, url: str, defs: Definitions | None = None, prefix: str = PREFIX, timeout: float = 10.0):
        import redis

        self.url = url
        self.defs = defs
        self.prefix = prefix
        self.pointer = f"{prefix}:current"
        try:
            self.client = redis.Redis.from_url(url, socket_timeout=timeout,
                                               socket_connect_timeout=min(timeout, 5.0))
        except ValueError as e:
            raise FeatureStoreError(f"The 'features.redis_url' setting must be a Redis URL such as "
                                    f"redis://127.0.0.1:6379/0; got {url!r} instead ({e}).") from None
        self._served = (None, {})   # (generation, its views): one tuple, swapped whole (threads read it)

    def _call(self, what, *args, **kwargs):
        import redis

        try:
            return what(*args, **kwargs)
        except redis.RedisError as e:
            raise FeatureStoreError(f"The online store's Redis at {self.url} did not answer ({e}): start it, or "
                                    "set features.online = embedded.") from None

    def _key(self, generation, view: str, key: tuple) -> str:
        return f"{self.prefix}:{generation}:{view}:{json.dumps(list(key), separators=(',', ':'))}"

    def _views(self, generation) -> dict[str, tuple[datetime, str]]:
        if generation is None:
            return {}
        raw = self._call(self.client.hgetall, f"{self.prefix}:{generation}:views")
        out = {}
        for view, text in raw.items():
            meta = json.loads(text)
            out[view.decode()] = (datetime.fromisoformat(meta["as_of"]), meta["digest"])
        return out

    # -- writer

    def published(self) -> dict[str, tuple[datetime, str]]:
        generation = self._call(self.client.get, self.pointer)
        return self._views(generation.decode() if generation else None)

    def publish(self, con, parts: list[Part], until: datetime) -> list[Materialized]:
        generation = f"{int(time.time() * 1000):x}-{os.getpid()}"
        done, meta = [], {}
        pipe = self.client.pipeline(transaction=False)
        for part in parts:
            started = time.perf_counter()
            k = len(part.view.entities)
            names = [f.name for f in part.view.features]
            keys = 0
            for row in con.execute(part.sql).fetchall():
                pipe.hset(self._key(generation, part.view.name, tuple(str(x) for x in row[:k])),
                          mapping={n: repr(float("nan") if x is None else float(x)) for n, x in zip(names, row[k:])})
                keys += 1
                if len(pipe) >= BATCH:
                    self._call(pipe.execute)
            self._call(pipe.execute)
            meta[part.view.name] = json.dumps({"as_of": until.isoformat(), "digest": part.digest,
                                               "materialized_at": utc_now().isoformat(), "keys": keys})
            done.append(Materialized(part.view.name, keys, until, time.perf_counter() - started))
        if meta:
            self._call(self.client.hset, f"{self.prefix}:{generation}:views", mapping=meta)
        self._call(self.client.set, self.pointer, generation)
        self._drop_other_generations(generation)
        return done

    def _drop_other_generations(self, keep: str) -> None:
        """Delete every generation but ``keep`` (the previous one, and any a killed materialize left)."""
        mine = f"{self.prefix}:{keep}:"
        batch = []
        for key in self.client.scan_iter(match=f"{self.prefix}:*", count=BATCH):
            name = key.decode()
            if name != self.pointer and not name.startswith(mine):
                batch.append(key)
                if len(batch) >= BATCH:
                    self._call(self.client.unlink, *batch)
                    batch = []
        if batch:
            self._call(self.client.unlink, *batch)

    # -- reader

    def read(self, requests) -> tuple[dict, list]:
        """(view -> (as_of, digest), [values or None for each (view, names, key)]): the pointer and the
        hashes read in one transaction; when the pointer moved since the last read, read again."""
        for _ in range(5):
            generation, meta = self._served
            pipe = self.client.pipeline(transaction=True)
            pipe.get(self.pointer)
            for view, names, key in requests:
                pipe.hmget(self._key(generation, view, key), names)
            answers = self._call(pipe.execute)
            current = answers[0].decode() if answers[0] else None
            if current == generation:
                return meta, [None if all(x is None for x in got) else
                                    tuple(float("nan") if x is None else float(x) for x in got)
                                    for got in answers[1:]]
            self._served = (current, self._views(current))
        raise FeatureStoreError(f"The online store's Redis at {self.url} changed generation on every read: "
                                "is a materialize running in a loop?")

    def reload(self) -> None:
        """Nothing is cached beyond what each read checks."""
