"""Subprocess writer for the kill/resume and concurrency tests.

usage: python writer_script.py ROOT EXPERIMENT FIRST LAST STEP [SLEEP_BEFORE_PUBLISH_S]
Writes shards FIRST, FIRST+STEP, ... < LAST, skipping complete ones; prints each index it wrote.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import lalm_interp.cache.shards as shards  # noqa: E402
from cache_helpers import make_batch, provenance  # noqa: E402
from lalm_interp.cache import Store  # noqa: E402

root, experiment, first, last, step = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
delay = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
if delay:
    real_publish = shards.publish

    def slow_publish(tmp, final, **kw):  # the temp file is complete; a kill here orphans it
        print(f"publishing {final.name}", flush=True)
        time.sleep(delay)
        return real_publish(tmp, final, **kw)

    shards.publish = slow_publish

w = Store(root).writer(experiment, provenance=provenance())
for i in range(first, last, step):
    if w.is_complete(i):
        continue
    w.write(i, make_batch(i))
    print(f"wrote {i}", flush=True)
