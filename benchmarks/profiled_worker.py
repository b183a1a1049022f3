"""``python -m worker`` under cProfile, every Python thread of it, for benchmarks/worker_cpu.py.

``python -m benchmarks.profiled_worker OUT.prof``: the worker as ``python -m worker`` runs it, with
one cProfile per Python thread (the event loop's, where the activities run, and the workflow task
threads the SDK starts, where the sandboxed workflow code runs), timed by each thread's own CPU
clock (``time.thread_time``), so a thread's waiting is not counted. The worker's modules are
imported before profiling starts; at exit (SIGTERM, as the worker stops) the threads' profiles are
merged into OUT.prof (``pstats.Stats(OUT.prof)`` reads it). Temporal's core runs in native threads
that cProfile cannot see: their CPU is in /proc, not here.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import threading
import time

_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()


def _profiled_run(original):
    def run(self):
        profile = cProfile.Profile(time.thread_time)
        with _lock:
            _profiles.append(profile)
        profile.runcall(original, self)

    return run


def main(argv: list[str] | None = None) -> None:
    out = (argv if argv is not None else sys.argv[1:])[0]
    import worker.main as worker_main  # imported here, so its import is not profiled

    threading.Thread.run = _profiled_run(threading.Thread.run)  # type: ignore[method-assign]
    own = cProfile.Profile(time.thread_time)
    _profiles.append(own)
    own.enable()
    try:
        worker_main.main()
    finally:
        own.disable()
        with _lock:
            profiles = list(_profiles)
        stats = pstats.Stats(profiles[0])
        for other in profiles[1:]:
            try:
                stats.add(other)
            except TypeError:  # a thread's profile with nothing in it
                continue
        stats.dump_stats(out)


if __name__ == "__main__":
    main()
