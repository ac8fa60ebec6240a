"""How checkpoints fail, and how a failure is told in one line."""

from __future__ import annotations

import errno
import os
import re

# errno values of failures that say nothing about the checkpoint's contents (retrying may succeed).
TRANSIENT_ERRNOS = {errno.EIO, errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT, errno.ENOMEM, errno.EACCES, errno.EPERM,
                    errno.ESTALE, errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENETUNREACH}


class UnreadableCheckpoint(RuntimeError):
    """No checkpoint of the run can be used: its newest one was moved aside on a multi-process run
    (rerun to resume from the next older one), or every one is damaged (never restart silently)."""


class CheckpointRestoreFailed(RuntimeError):
    """A checkpoint whose files are intact could not be restored; it was left in place."""


class CheckpointSaveFailed(RuntimeError):
    """A checkpoint could not be written (disk full, I/O error); earlier checkpoints are intact."""


def one_line(err: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message`, cut to `limit` characters (orbax and TensorStore errors
    carry whole specs and tracebacks in their messages)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def os_reason(err: BaseException) -> str | None:
    """The operating-system error behind `err` ("No space left on device (errno 28)"), found in its
    chain or in the `[os_error_code=N]` TensorStore puts in its messages; None if there is none."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return f"{os.strerror(seen.errno)} (errno {seen.errno})"
        code = re.search(r"os_error_code='?(\d+)", str(seen))
        if code:
            return f"{os.strerror(int(code.group(1)))} (errno {code.group(1)})"
        seen = seen.__cause__ or seen.__context__
    return None


def is_transient(err: BaseException) -> bool:
    """An error that says nothing about the checkpoint's bytes: an OS error of `TRANSIENT_ERRNOS`
    anywhere in its chain, or running out of memory."""
    seen = err
    while seen is not None:
        if isinstance(seen, MemoryError) or (isinstance(seen, OSError) and seen.errno in TRANSIENT_ERRNOS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
