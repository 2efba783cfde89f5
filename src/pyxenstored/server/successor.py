"""The successor's check: ``<program> --check-state`` before a live update's exec.

Safer than C: when the new program is pyxenstored (:func:`is_pyxenstored`),
the old daemon does not exec it blind.  The rules:

* the check run ``<program> --check-state -`` starts when the session opens
  (``live-update -f``), so that its interpreter start-up and imports are
  not part of the blackout; it waits on its standard input;
* the dump is fed to it through a pipe while it is written
  (:class:`SuccessorCheck`, a :class:`~pyxenstored.migrate.lu_records.StreamFeed`),
  and it restores it into a scratch store (``migrate/check.py``);
* its verdict is its first output line (``CHECK_OK`` / ``CHECK_FAILED:
  why``) and its exit status: only a clean restore leads to the exec;
  anything else (a refusal, a crash, no answer within :data:`CHECK_TIMEOUT`)
  answers ``-s`` with the reason and the old daemon serves on;
* when no check run could be started at ``-f``, :func:`run_check` runs
  ``<program> --check-state <state file>`` once the dump is written;
* a session that ends without an exec kills its check run
  (:meth:`SuccessorCheck.cancel`).

Another program (the C daemon) gets no check: it cannot run one.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING

from pyxenstored.migrate.check import CHECK_FAILED, CHECK_OK

if TYPE_CHECKING:
    # Only the old daemon's side of a switch uses these (imported there): a
    # new daemon's start-up, part of the blackout, does without them.
    import queue

#: Seconds the check run of the new program may take.
CHECK_TIMEOUT = 120.0
#: Pipe size asked for the check run's standard input (Linux allows 1 MiB unprivileged).
CHECK_PIPE_SIZE = 1 << 20


def is_pyxenstored(path: str) -> bool:
    """Whether ``path`` looks like pyxenstored: a script that names it, or is named so.

    Compiled programs (the C daemon) never are.  A wrong guess towards
    pyxenstored is caught by its check run, which then refuses the update.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    if not head.startswith(b"#!"):
        return False
    return b"pyxenstored" in head or os.path.basename(path).startswith("pyxenstored")


class SuccessorCheck:
    """``<program> --check-state -``: the successor restores the dump read from a pipe.

    Started when the session opens; :meth:`feed` gives it the stream as it is
    written, :meth:`result` waits for its verdict.  A thread writes to the
    pipe, so that the dump never waits for the check run to read: both work
    at the same time (a pipe holds only 64 KiB, and writing into it directly
    made the two processes take turns).
    """

    def __init__(self, program: str) -> None:
        import fcntl
        import queue
        import subprocess
        import tempfile
        import threading

        self.program = program
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - closed by result()/cancel()
        self.proc = subprocess.Popen(
            [program, "--check-state", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
        )
        self.broken = False
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._closed = False
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError, AttributeError):
                # Fewer wake-ups of both sides; a smaller pipe works too.
                fcntl.fcntl(self.proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, CHECK_PIPE_SIZE)
        self._feeder = threading.Thread(target=self._feed_pipe, name="check-feeder", daemon=True)
        self._feeder.start()

    def _feed_pipe(self) -> None:
        """The feeder thread: queued chunks into the pipe, then close it."""
        stdin = self.proc.stdin
        while (data := self._queue.get()) is not None:
            if self.broken or stdin is None:
                continue
            try:
                stdin.write(data)
            except (BrokenPipeError, ValueError, OSError):
                self.broken = True  # it stopped reading: its verdict says why
        if stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                stdin.close()

    def feed(self, data: bytes) -> None:
        if not self._closed:
            self._queue.put(data)

    def done(self) -> None:
        """No more data: the pipe is closed once everything queued is written."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)

    def result(self, timeout: float = CHECK_TIMEOUT) -> str | None:
        """None when the successor restored the state cleanly, else why not.

        Its verdict is read as soon as it comes: the check run prints it and
        exits, closing its output.  (``Popen.wait`` with a timeout polls,
        sleeping up to 50 ms at a time: that much added to every blackout.)
        """
        import select
        import subprocess

        self.done()
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        # Its exit counts too (something it started may keep the pipe open).
        pidfd = -1
        with contextlib.suppress(OSError, AttributeError):
            pidfd = os.pidfd_open(self.proc.pid)
        chunks = []
        # poll, not select: a daemon with many connections has descriptors
        # above select's limit of 1024.
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if pidfd >= 0:
            poller.register(pidfd, select.POLLIN)
        try:
            while True:
                left = deadline - time.monotonic()
                ready = [r for r, _ in poller.poll(max(left, 0) * 1000)] if left > 0 else []
                if not ready:
                    raise subprocess.TimeoutExpired(self.program, timeout)
                if fd not in ready:
                    # It exited: what it wrote is in the pipe already.
                    os.set_blocking(fd, False)
                    with contextlib.suppress(BlockingIOError):
                        while chunk := os.read(fd, 1 << 16):
                            chunks.append(chunk)
                    break
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
            self.proc.wait(max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            self.cancel()
            return f"{self.program} --check-state did not finish within {timeout:.0f} s"
        finally:
            if pidfd >= 0:
                os.close(pidfd)
        self._feeder.join()
        out = b"".join(chunks).decode("utf-8", "replace")
        self.proc.stdout.close()
        self._err.seek(0)
        err = self._err.read().decode("utf-8", "replace")
        self._err.close()
        return _verdict(self.program, self.proc.returncode, out, err)

    def cancel(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.done()
        self.proc.wait()
        # The process is gone: the feeder's writes fail at once and it ends.
        self._feeder.join()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._err.close()


def run_check(program: str, path: str) -> str | None:
    """Run ``program --check-state path``; None when it restored cleanly, else why not."""
    import subprocess

    try:
        done = subprocess.run(
            [program, "--check-state", path],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=CHECK_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"{program} --check-state did not finish within {CHECK_TIMEOUT:.0f} s"
    except OSError as exc:
        return f"{program} cannot start: {exc.strerror}"
    return _verdict(
        program,
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )


def _verdict(program: str, status: int, out: str, err: str) -> str | None:
    if status == 0 and out.startswith(CHECK_OK):
        return None
    for line in out.splitlines():
        if line.startswith(CHECK_FAILED):
            return line[len(CHECK_FAILED) :].lstrip(": ")
    lines = err.strip().splitlines()
    detail = lines[-1] if lines else "no answer"
    return f"{program} --check-state exited with status {status}: {detail}"
