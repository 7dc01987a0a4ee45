"""The process' file descriptors: the open-file limit raised at start, a share reserved for the server's
own files, the rest for client connections.

An attacker holding idle connections must never exhaust the descriptors the server needs for its log,
checkpoints, parquet parts, Redis and writer pipes: gRPC's core aborts the process when it cannot create
an eventfd (seen at a checkpoint's fork with 21,000 idle connections). So the gRPC port gets a connection
cap of ``limit - reserved`` and a fork happens only while descriptors are to spare.

>>> connection_cap(limit=20_000, reserved=1024, wanted=0)
18976
>>> connection_cap(limit=20_000, reserved=1024, wanted=500)
500
>>> connection_cap(limit=20_000, reserved=1024, wanted=50_000)
18976
>>> connection_cap(limit=1024, reserved=1024, wanted=0)  # a tiny limit: half for connections
512
"""

from __future__ import annotations

import logging
import os
import resource

log = logging.getLogger(__name__)

#: Descriptors that must be free before a checkpoint forks (gRPC's fork handlers open a few eventfds).
FORK_HEADROOM = 64


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20) if soft != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return int(hard if soft == resource.RLIM_INFINITY else soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        log.warning("could not raise the open-file limit from %d to %d", soft, hard)
        return int(soft)
    return int(hard)


def connection_cap(limit: int, reserved: int, wanted: int) -> int:
    """Concurrent connections allowed: ``wanted`` (0 = as many as fit), never more than ``limit - reserved``;
    where the limit leaves less than half for connections, half of it."""
    fit = limit - reserved
    if fit < limit // 2:
        fit = limit // 2
    return fit if wanted <= 0 else min(wanted, fit)


def open_fds() -> int:
    """Descriptors this process has open now."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc: assume plenty
        return 0


def free_fds() -> int:
    """Descriptors this process may still open under its soft limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return int(soft) - open_fds()
