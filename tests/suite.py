"""The whole suite (`make test`, CI) in the least wall time on a 2-core machine.

The compose test spends its 15-20 minutes building images and waiting on containers, so it
runs beside the rest; the timing guards compare seconds side by side, so they run alone,
after both. Every part runs; the exit status is non-zero when any part failed. Ctrl-C
reaches both pytest processes (one process group), so the compose test still takes its
stack and Docker Engine down."""

from __future__ import annotations

import subprocess
import sys
import tempfile

PYTEST = [sys.executable, "-m", "pytest", "-q", "--hypothesis-profile=full"]


def main() -> int:
    with tempfile.NamedTemporaryFile("w+", prefix="dae-compose-test-", suffix=".log") as compose_log:
        # Its own temporary folder and no cache writes: two pytest sessions share neither.
        compose = subprocess.Popen([*PYTEST, "-p", "no:cacheprovider", f"--basetemp={tempfile.mkdtemp()}",
                                    "-m", "compose", "--durations=10"], stdout=compose_log, stderr=subprocess.STDOUT)
        rest = subprocess.Popen([*PYTEST, "-m", "not compose and not timing", "--durations=25"])
        try:
            rest.wait()
            print(f"--- waiting for the compose test, which ran beside the rest ({compose_log.name})", flush=True)
        finally:  # after Ctrl-C too: each pytest's own teardown stops what it started
            rest.wait()
            compose.wait()
        compose_log.seek(0)
        print(compose_log.read(), flush=True)
    print("--- the timing guards, alone", flush=True)
    timed = subprocess.run([*PYTEST, "-m", "timing"]).returncode
    print(f"--- exit statuses: the rest {rest.returncode}, the compose test {compose.returncode}, "
          f"the timing guards {timed}")
    return max(rest.returncode, compose.returncode, timed)


if __name__ == "__main__":
    sys.exit(main())
