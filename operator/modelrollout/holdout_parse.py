"""Parsing a tenant's hold-out in a spawned child process under a memory cap, both sides of the pipe.

A file of a few hundred KiB can expand to gigabytes, and the operator's own container has a
hard limit, so the operator never parses one itself. The child imports this module and
holdout.py (pandas, pyarrow) only, never the operator's HTTP stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

from modelrollout.core.figures import Task
from modelrollout.core.quality import DataError
from modelrollout.core.text import cap
from modelrollout.holdout import Bounds, DataChanged, DataTooLarge, Holdout, OutOfMemory, prepare, read_table

MIB = 2**20
MESSAGE_LIMIT = 400
Reason = Literal["HoldoutNotFound", "HoldoutInvalid", "HoldoutRefused", "HoldoutTooLarge", "HoldoutChanged"]


class HoldoutError(DataError):
    """A hold-out that cannot be used, with the condition reason for status; the message is capped."""

    def __init__(self, message: str, reason: Reason) -> None:
        super().__init__(cap(message, MESSAGE_LIMIT))
        self.reason: Reason = reason


@dataclass(frozen=True)
class ParseJob:
    """What a parsing child needs, as plain values."""

    name: str
    fmt: str | None
    task: Task
    label_column: str
    feature_columns: list[str] | None
    slice_columns: list[str]
    max_rows: int | None
    seed: int
    echo_columns: bool
    bounds: Bounds
    budget: int  # bytes the parse may allocate beyond the libraries already loaded
    sha256: str | None = None  # spec.holdout.sha256: the digest the bytes must have


def cap_memory(budget: int) -> int:
    """Cap this process's data segment (RLIMIT_DATA) at what it holds now plus `budget`; returns the cap.

    RLIMIT_DATA counts heap and private writable mappings, where pandas, numpy and pyarrow
    allocate; RLIMIT_AS also counts address space reserved and never used (about 400 MiB once
    pandas and pyarrow are imported), so it fails real files early. What the process holds now
    is mostly virtual too: OpenBLAS reserves some 40 MiB per core at import, so the cap is
    relative, or it would leave nothing on a large node.
    """
    import resource

    held = 0
    with contextlib.suppress(OSError, ValueError, IndexError, StopIteration):
        held = next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmData:"))
    soft, hard = held + budget, resource.getrlimit(resource.RLIMIT_DATA)[1]
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (soft, soft if hard == resource.RLIM_INFINITY else hard))
    return soft


def parse_bounded(conn: Connection, job: ParseJob) -> None:
    """A child process's entry: cap memory, take the bytes, parse and check, send back the Holdout
    or ("memory",), ("too-large" | "changed" | "invalid", message)."""
    cap_memory(job.budget)
    try:
        data = conn.recv_bytes()
        df = read_table(data, job.name, job.fmt, bounds=job.bounds, sha256=job.sha256)
        del data
        if not job.label_column:  # a drift reference: features only
            from modelrollout.holdout_reference import reference_table

            conn.send(("ok", reference_table(df, job.feature_columns or [], max_rows=job.max_rows, seed=job.seed,
                                             name=job.name)))
            return
        hold = prepare(df, task=job.task, label_column=job.label_column, feature_columns=job.feature_columns,
                       slice_columns=job.slice_columns, max_rows=job.max_rows, seed=job.seed, name=job.name,
                       echo_columns=job.echo_columns, bounds=job.bounds)
        del df
        conn.send(("ok", hold))
    except (MemoryError, OutOfMemory):
        conn.send(("memory",))
    except DataTooLarge as e:
        conn.send(("too-large", str(e)))
    except DataChanged as e:
        conn.send(("changed", str(e)))
    except DataError as e:
        conn.send(("invalid", str(e)))
    except Exception as e:  # a bug or a reader's surprise: its type only, its text may quote data
        conn.send(("invalid", f"{job.name}: cannot parse ({type(e).__name__})"))
    finally:
        conn.close()


# One parse at a time, whatever the event loop; waiting parses hold no thread of the default executor.
_ONE_PARSE = ThreadPoolExecutor(max_workers=1, thread_name_prefix="holdout-parse")
_REASONS: dict[str, Reason] = {"too-large": "HoldoutTooLarge", "changed": "HoldoutChanged"}


async def parse(data: bytes, job: ParseJob, timeout: float) -> Holdout:
    """The parsed hold-out, from a child process; one parse at a time."""
    return await asyncio.get_running_loop().run_in_executor(_ONE_PARSE, _parse_in_child, data, job, timeout)


def _parse_in_child(data: bytes, job: ParseJob, timeout: float) -> Holdout:
    over = HoldoutError(f"{job.name}: parsing needs more than the operator's hold-out memory budget of "
                        f"{job.budget // MIB} MiB (MODELROLLOUT_HOLDOUT_MEMORY_MIB); make the file smaller",
                        "HoldoutTooLarge")
    ctx = mp.get_context("spawn")  # never fork the operator: it runs threads and an event loop
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=parse_bounded, args=(theirs, job), daemon=True, name="holdout-parse")
    proc.start()
    theirs.close()
    # a thread feeds the pipe, so a child that never reads cannot hold this one past the timeout
    sender = threading.Thread(target=_send, args=(ours, data), daemon=True, name="holdout-send")
    sender.start()
    try:
        if not ours.poll(timeout):
            proc.kill()
            raise HoldoutError(f"{job.name}: parsing took more than {timeout:g}s", "HoldoutTooLarge")
        answer: tuple[Any, ...] = ours.recv()
    except (EOFError, OSError):  # the child died without answering: the kernel's OOM killer, a crash
        raise over from None
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
        sender.join()  # done: the child read it all, or died and the pipe broke
        ours.close()
    if answer[0] == "ok":
        result: Holdout = answer[1]
        return result
    if answer[0] == "memory":
        raise over
    raise HoldoutError(answer[1], _REASONS.get(answer[0], "HoldoutInvalid"))


def _send(conn: Connection, data: bytes) -> None:
    with contextlib.suppress(OSError):
        conn.send_bytes(data)
