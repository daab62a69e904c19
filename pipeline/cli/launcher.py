"""How one process of a launched job (torchrun, TorchX, the elastic launcher) reports a failure.

* The process that fails writes torchelastic's error file (``TORCHELASTIC_ERROR_FILE``, set by the
  launcher): the bad-input paragraph for an :class:`~crossrank.features.errors.InputError`, the traceback for
  anything else (``torch.distributed.elastic.multiprocessing.errors.record``). torchrun copies the first
  failure's file for the scheduler, so ``torchx run`` / ``torchx status`` show it as the job's error.
* A process whose collective fails because another process went away (gloo "Connection closed by peer",
  ``DistBackendError``...) is not a root cause: it records nothing, prints one short line instead of the
  collective's traceback, and waits a few seconds for the launcher to stop it, so that torchrun names the
  process that failed first. If nobody stops it, it records its line and exits 1.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import ErrorHandler, record

from crossrank.features.errors import InputError

# What a collective raises when the process at the other end has gone (gloo, NCCL, the c10d store).
_PEER_GONE = re.compile(
    r"Connection closed by peer|Connection reset by peer|Broken pipe|remote worker crash|"
    r"NCCL communicator was aborted|Socket Timeout|Connection refused"
)

#: Seconds a process whose collective failed waits for the launcher to stop it (torchrun polls every 0.1 s).
PEER_GRACE_S = 5.0


def in_job() -> bool:
    """True in a job of several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def peer_failure(e: BaseException) -> bool:
    """True when ``e`` (or what it was raised from) is a collective failing because another process of the
    job went away: a ``torch.distributed.DistError``, or a RuntimeError naming a lost connection."""
    if not in_job():
        return False
    dist = sys.modules.get("torch.distributed")
    seen: set[int] = set()
    err: BaseException | None = e
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, InputError):
            return False
        if dist is not None and isinstance(err, dist.DistError):
            return True
        if isinstance(err, RuntimeError) and _PEER_GONE.search(str(err)):
            return True
        err = err.__cause__ or err.__context__
    return False


def write_error_file(message: str) -> None:
    """Write torchelastic's error file, when the launcher asked for one, with ``message`` as the error and
    as its "traceback" (what torchrun's summary prints)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    extra = {"py_callstack": message, "timestamp": str(int(time.time()))}
    try:
        with open(path, "w") as f:
            json.dump({"message": {"message": message, "extraInfo": extra}}, f)
    except OSError as e:  # the error itself (already printed) matters more than its copy
        print(f"crossrank: cannot write the error file {path}: {e.strerror}", file=sys.stderr)


class _ErrorFile(ErrorHandler):
    """torchelastic's handler: bad input recorded as its paragraph, a peer's failure not at all."""

    def record_exception(self, e: BaseException) -> None:
        if isinstance(e, InputError):
            write_error_file(str(e))
        elif not peer_failure(e):
            super().record_exception(e)


def recorded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` wrapped with torchelastic's ``record``: an exception it raises is written to the error file
    (see the module docstring), then raised on."""
    return record(fn, error_handler=_ErrorFile())


def stopped_by_peer(e: BaseException, print_line: Callable[[str], None]) -> int:
    """Report ``e`` (a :func:`peer_failure`) in one line, wait for the launcher to stop this process, and
    return exit status 1 if it did not."""
    text = str(e).strip()
    first = text.splitlines()[0][:200] if text else ""
    line = (
        f"crossrank: rank {os.environ.get('RANK', '?')} stopped: a collective failed because another process "
        f"of the job went away ({type(e).__name__}: {first}); that process's error is the job's error."
    )
    print_line(line)
    time.sleep(PEER_GRACE_S)
    write_error_file(line)  # not stopped: no other failure was recorded, so this is the job's error
    return 1
