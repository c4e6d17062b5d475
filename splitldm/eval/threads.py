"""How many CPU threads torch uses: one rule, applied once at a command's entry (never at import).

torch's default (one intra-op thread per core) is right on an idle machine and badly wrong on a busy
one: the OpenMP threads of one operator wait for each other at every barrier, so when another process
holds one of the cores the whole operator waits for the descheduled thread. On 2 cores with one other
busy process the demo took 74 s with the default against 19 s with one thread (issue 11).

The rule (`default_threads`): the CPUs this process may run on (``os.sched_getaffinity``, which
respects taskset / cgroup cpusets; ``os.cpu_count()`` where unavailable) minus one left for the rest
of the machine, at least 1 and at most `MAX_THREADS`. The models run here are small (64 px images,
4x8x8 latents), so more threads buy little, while one spare core absorbs one other busy process
without oversubscription. The first of these wins (`resolve_threads`):

1. an explicit count (``--threads N`` of ``splitldm demo`` / ``evaluate`` / ``quality-table``);
2. ``$SPLITLDM_THREADS``;
3. ``$OMP_NUM_THREADS`` (what OpenMP itself would use);
4. the rule above (or a caller's ``fallback``, e.g. the recipes' 1).

Floating-point sums are split differently for different thread counts, so results agree closely but
not to the bit across thread counts (images through a lossy link: 9.1e-6 max abs between 1 and 2 threads,
tested against 1e-4; docs/guides/determinism.md): the demo records the count it ran with, and rerunning
with the same ``--threads`` reproduces its numbers bit for bit.
"""

from __future__ import annotations

import logging
import os

__all__ = ["MAX_THREADS", "available_cpus", "default_threads", "resolve_threads", "set_threads"]

logger = logging.getLogger(__name__)

#: Upper bound of the default thread count (the tiny models stop scaling well before this).
MAX_THREADS = 8


def available_cpus() -> int:
    """CPUs this process may run on (``os.sched_getaffinity``; ``os.cpu_count()`` where unavailable)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def default_threads(cpus: int | None = None) -> int:
    """The rule: ``clamp(cpus - 1, 1, MAX_THREADS)`` with ``cpus`` = `available_cpus()` by default."""
    n = available_cpus() if cpus is None else cpus
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"cpus: expected an int >= 1, got {n!r}")
    return max(1, min(MAX_THREADS, n - 1))


def _check(name: str, value) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a whole number of threads >= 1, got {value!r}") from None
    if isinstance(value, bool) or n < 1 or (isinstance(value, float) and value != n):
        raise ValueError(f"{name}: expected a whole number of threads >= 1, got {value!r}")
    return n


def resolve_threads(threads: int | None = None, fallback: int | None = None) -> int:
    """The thread count: ``threads`` if given, else ``$SPLITLDM_THREADS``, else ``$OMP_NUM_THREADS``,
    else ``fallback`` if given, else `default_threads()`.

    Raises:
        ValueError: a count (argument or environment variable, named in the message) is not an int >= 1.
    """
    if threads is not None:
        return _check("threads", threads)
    for var in ("SPLITLDM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value:
            return _check(f"${var}", value)
    if fallback is not None:
        return _check("fallback", fallback)
    return default_threads()


def set_threads(threads: int | None = None, fallback: int | None = None) -> int:
    """Resolve the thread count (`resolve_threads`), give it to ``torch.set_num_threads`` and return it.

    Call it once, at a command's entry point; library code never changes the thread count itself.
    """
    import torch

    n = resolve_threads(threads, fallback)
    torch.set_num_threads(n)
    logger.debug("torch intra-op threads: %d (available CPUs: %d)", n, available_cpus())
    return n
