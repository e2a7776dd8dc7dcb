"""The cyclic garbage collector tuned for a service that holds many long-lived objects.

A full (generation 2) collection walks every tracked object, and the event loop waits for it:
every open stream's next chunk waits behind it. Two measures keep full collections rare and short:

- `freeze_startup_objects`: most of a service's objects are made at start-up (modules, settings,
  the app, pools) and live as long as the process. `gc.freeze()` moves what exists once the
  services have started into a permanent generation that no collection walks, after one last
  collection so that start-up's own garbage is not kept with it. Objects made later are collected
  as before. Measured on the gateway holding 2,000 slow streams: ~400,000 tracked objects, 9 full
  collections in 30 s and pauses of up to 1 s on this loaded 2-core machine, 242 ms with it.

- `collect_old_objects_rarely`: what is left is the held streams' own objects (~160 tracked
  objects each), and CPython runs a full collection every 10 generation-1 collections (about
  70,000 net allocations) once the objects promoted since the last one reach a quarter of those
  it kept then. Opening 2,000 streams grows the old generation by ~325,000 objects: the default
  ran 8 full collections in the 20 s of `bench.gateway_bench hold`, up to ~290 ms of CPU each
  (~900 ns per object) and 1.1 s in all, a sixth of the gateway's CPU; each stalled every stream
  at once, and one 200 ms stall at 2,000 chunks a second delays 400 of them, more than 1 % of a
  run's chunks. They found nothing to free: a stream that completes leaves no reference cycle;
  one the client drops mid-answer leaves ~20 objects (~4 KiB, aiohttp's handler of that
  connection), which only a full collection frees. Hence a full collection at most every
  FULL_COLLECTION_EVERY generation-1 collections: none in that run (bench/loop_stalls_bench.py,
  bench/RESULTS.md), about one every one to two minutes while 2,000 streams are held, and up to
  10 times as much of that garbage waiting (a process making nothing but cycles: ~700,000 objects
  instead of ~70,000 before a full collection). Young collections are unchanged.
"""

from __future__ import annotations

import gc

# Generation-1 collections between two automatic full collections (CPython's default is 10).
FULL_COLLECTION_EVERY = 100


def freeze_startup_objects() -> int:
    """Collect once, then freeze every object alive now; returns how many were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def collect_old_objects_rarely() -> None:
    """Run automatic full collections at most once per FULL_COLLECTION_EVERY generation-1 ones."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
