"""The driver's own log: timestamped progress lines, also kept in the run dir."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import TextIO


class DriverLog:
    """Timestamped lines to the progress stream and to ``driver.log`` in the run dir."""

    def __init__(self, path: Path, stream: TextIO | None) -> None:
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._file = path.open("a")
        self._stream = stream if stream is not None else sys.stderr

    def __call__(self, message: str) -> None:
        line = f"[{time.monotonic() - self.started:7.1f}s] {message}"
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()
            with contextlib.suppress(ValueError, OSError):  # a closed capture stream
                print(line, file=self._stream, flush=True)

    def close(self) -> None:
        with self._lock:
            self._file.close()
