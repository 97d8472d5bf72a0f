import asyncio

from agent.inventory_cache import InventoryCache


def counter():
    calls = []

    def collect():
        calls.append(1)
        return {"calls": len(calls)}

    return collect, calls


async def test_cached_until_stale_refresh_or_too_old(monkeypatch):
    collect, _calls = counter()
    cache = InventoryCache(collect, max_age=300)
    assert (await cache.get())["calls"] == 1
    assert (await cache.get())["calls"] == 1
    cache.invalidate()  # what a udev block/net event does
    assert (await cache.get())["calls"] == 2
    assert (await cache.get(refresh=True))["calls"] == 3
    cache.max_age = 0.01
    await asyncio.sleep(0.02)
    assert (await cache.get())["calls"] == 4


async def test_concurrent_callers_share_one_collection():
    collect, calls = counter()
    cache = InventoryCache(collect, max_age=300)
    results = await asyncio.gather(*(cache.get() for _ in range(5)))
    assert len(calls) == 1 and all(r["calls"] == 1 for r in results)


async def test_no_udev_daemon_means_age_based_refresh_only(monkeypatch):
    import os

    real_exists = os.path.exists
    monkeypatch.setattr(
        os.path, "exists", lambda p: False if p == "/run/udev/control" else real_exists(p)
    )
    cache = InventoryCache(dict, max_age=1)
    assert cache.watch_udev() is False
    assert cache.monitor is None


async def test_json_text_is_encoded_once_per_collection():
    collect, _calls = counter()
    cache = InventoryCache(collect, max_age=300)
    first = await cache.get()
    text = cache.json_text(first)
    assert text == '{"calls": 1}'
    assert cache.json_text(first) is text  # not encoded again
    assert cache.json_text({"calls": 1}) is None  # an equal dict is not the cached one
    assert cache.json_text(None) is None
    second = await cache.get(refresh=True)
    assert cache.json_text(second) == '{"calls": 2}'
    assert cache.json_text(first) is None  # an older collection is not the cached one
