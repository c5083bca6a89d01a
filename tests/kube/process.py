"""The harness's components as child processes: started in their own process group, logged
to a file, stopped with SIGTERM then SIGKILL, and never outliving the test process."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from support import free_port

from .rest import poll

__all__ = ["Service", "StartupError", "free_port", "wait_http_ok"]

STOP_TIMEOUT = 15.0


class StartupError(RuntimeError):
    """A component did not come up; the message carries the tail of its log."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # PR_SET_PDEATHSIG: if the test process is killed outright (timeout, SIGKILL), the
    # kernel sends SIGTERM to the component, so no stray server outlives the session.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class Service:
    """One child process in its own process group, logging to a file."""

    def __init__(
        self, name: str, argv: list[str], log_file: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_file = log_file
        self.env = env
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with open(self.log_file, "ab") as log:
            self._process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has exited by itself (None while it runs)."""
        return self._process.poll() if self._process is not None else None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def check(self) -> None:
        """Raise `StartupError` if the process has exited."""
        if self._process is not None and self._process.poll() is not None:
            raise StartupError(
                f"{self.name} exited with code {self._process.returncode}; "
                f"log {self.log_file}:\n{self.tail()}"
            )

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_http_ok(service: Service, url: str, timeout: float, context: Any = None) -> None:
    def ready() -> bool:
        service.check()
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310
                return bool(response.status == 200)
        except OSError:
            return False

    try:
        poll(ready, timeout=timeout, what=f"{service.name} at {url}", interval=0.2)
    except TimeoutError as error:
        raise StartupError(f"{error}; log {service.log_file}:\n{service.tail()}") from None
