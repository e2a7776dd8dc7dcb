"""Keep start-up's objects out of the cyclic garbage collector's full collections.

A full (generation 2) collection walks every tracked object. Most of a service's objects are made
at start-up (modules, settings, the app, pools) and live as long as the process; held streams add
a few hundred each. Measured on the gateway holding 2,000 slow streams: ~400,000 tracked objects,
9 full collections in 30 s and pauses of up to 1 s on this loaded 2-core machine, every open
stream's next chunk waiting behind them. `gc.freeze()` moves what exists once the services have
started into a permanent generation that no collection walks, after one last collection so that
start-up's own garbage is not kept with it. Objects made later are collected as before.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> int:
    """Collect once, then freeze every object alive now; returns how many were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
