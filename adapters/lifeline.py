"""Helper processes that end with the process that started them, however it ends.

A SIGKILLed ``dae run`` used to leave its temporary Prefect server (a uvicorn process)
running under init for as long as the machine was up, holding its port and a few hundred
MB. Linux's parent-death signal cannot help here: it fires when the *thread* that started
the child ends, and the server is started by a boot thread that ends at once. A pipe can:
the parent holds its write end open for as long as it lives and never writes; the child
watches the read end, and reads end-of-file the moment the parent is gone, whatever
ended it (the kernel closes a dead process's files).

    python -m adapters.lifeline FD MODULE ARGS...   runs ``python -m MODULE ARGS...``,
                                                    ending it (SIGTERM, then exit) at EOF on FD
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time

# After SIGTERM, how long the child may take to shut down cleanly before it is ended.
GRACE_S = 5.0


class Lifeline:
    """The parent's end: pass ``fd`` to one child (``pass_fds``), then ``handed_over()``."""

    def __init__(self) -> None:
        self.fd, self._writer = os.pipe()  # both non-inheritable: no other child holds them

    def command(self, module: str, *arguments: str) -> list[str]:
        """``python -m MODULE ARGUMENTS`` as a child that ends when this process does."""
        return [sys.executable, "-m", __name__, str(self.fd), module, *arguments]

    def handed_over(self) -> None:
        """The child holds its end now: this process keeps only the write end."""
        os.close(self.fd)

    def cut(self) -> None:
        """End the child as this process's death would (idempotent)."""
        if self._writer >= 0:
            os.close(self._writer)
            self._writer = -1


def _watch(fd: int) -> None:
    while os.read(fd, 1):  # nothing is ever written: returns only at end-of-file
        pass
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_S)
    os._exit(1)


def main() -> None:
    fd, module, *arguments = sys.argv[1:]
    threading.Thread(target=_watch, args=(int(fd),), name="lifeline", daemon=True).start()
    sys.argv = [module, *arguments]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
