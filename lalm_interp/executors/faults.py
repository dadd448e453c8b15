"""Fault injection for the resume tests: :data:`FAULT_ENV` makes one shard fail once, after it
finished a given number of items, so a test can check that the retry (or a rerun) skips the items
already written and computes nothing twice. Every pipeline's shard function calls
:func:`maybe_fail`; a no-op unless the variable is set. See ``docs/usage/scale-out.md``."""

from __future__ import annotations

import os
from pathlib import Path

FAULT_ENV = "LALM_INTERP_FAULT"
"""Test hook: ``shard=1,after=1,mode=raise|exit,marker=/tmp/x`` makes the worker running shard 1
fail once (``raise`` an error or ``exit`` the worker process, i.e. a killed/pre-empted worker) after
it completed ``after`` items of that shard. The marker file records that the failure happened, so
the retry succeeds. Read on the driver when payloads are built (:func:`fault_spec`) and shipped
inside them."""


class InjectedFailure(RuntimeError):
    """Raised by the :data:`FAULT_ENV` test hook."""


def fault_spec() -> str | None:
    """The :data:`FAULT_ENV` value on the driver (``None`` when unset), to put in every payload."""
    return os.environ.get(FAULT_ENV) or None


def maybe_fail(fault: str | None, shard: int, done_in_shard: int) -> None:
    """The :data:`FAULT_ENV` hook (a no-op unless a fault spec is given)."""
    if not fault:
        return
    f = dict(kv.split("=", 1) for kv in fault.split(",") if "=" in kv)
    if int(f.get("shard", -1)) != shard or int(f.get("after", 0)) != done_in_shard:
        return
    marker = Path(f.get("marker", "/tmp/lalm_interp_fault"))
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # first attempt only
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    if f.get("mode", "raise") == "exit":
        os._exit(1)  # a killed / pre-empted worker: no cleanup, no exception
    raise InjectedFailure(f"injected failure in shard {shard} after {done_in_shard} item(s)")
