"""The interpreter's teardown after a `dae run` (docs/benchmarks.md, section 3): the time
from the last exit handler to the end of the process, with and without the ``gc.freeze``
that the ``dae`` entry point registers. Each mode runs a 1 + 1-epoch experiment in a fresh
child process; the table gives the median of ``--repeats`` children per mode.

    python benchmarks/teardown.py --data-dir ../shared/data [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import atexit, gc, sys, time
from dae_cli.main import main
freeze, stamp = sys.argv[1] == "freeze", sys.argv[2]
if freeze:
    atexit.register(gc.freeze)
# Registered after the freeze, so it runs before it: the stamp marks the end of the handlers.
atexit.register(lambda: open(stamp, "w").write(repr(time.time())))
sys.exit(main(["run", "--data-dir", sys.argv[3], "--no-download", "--set", "pretrain.epochs=1",
               "--set", "classifier.epochs=1", "--work-dir", sys.argv[4]]))
"""


def teardown_seconds(freeze: bool, data_dir: Path, folder: Path) -> float:
    stamp = folder / "stamp"
    subprocess.run([sys.executable, "-c", CHILD, "freeze" if freeze else "none", str(stamp), str(data_dir),
                    str(folder / "work")], check=True, cwd=folder, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env={**os.environ, "PREFECT_HOME": str(folder / "prefect")})
    return time.time() - float(stamp.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="dae-teardown-"))
    teardown_seconds(False, args.data_dir.resolve(), folder)  # fresh stores migrate once, untimed
    results = {False: [], True: []}
    for _ in range(args.repeats):
        for freeze in results:
            results[freeze].append(teardown_seconds(freeze, args.data_dir.resolve(), folder))
    print("| exit | teardown after the last exit handler (median) |\n|---|---|")
    for freeze, seconds in results.items():
        label = "gc.freeze() as the last exit handler (the dae entry point)" if freeze else "plain interpreter exit"
        print(f"| {label} | {statistics.median(seconds):.2f} s |")


if __name__ == "__main__":
    main()
