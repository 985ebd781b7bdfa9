"""Resumable-state folders: one live process per folder, freed when its process dies."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from adapters.state_folders import held_state_folder, holder_pid

HOLDER = """
import sys, time
from pathlib import Path
from adapters.state_folders import held_state_folder
with held_state_folder(Path(sys.argv[1])) as folder:
    (folder / "pretrain.state.pt").write_text("epoch 3")
    print(folder, flush=True)
    time.sleep(600)
"""


def _holder(first: Path) -> tuple[subprocess.Popen, Path]:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(first)], stdout=subprocess.PIPE, text=True)
    return process, Path(process.stdout.readline().strip())


def test_a_live_holder_keeps_its_folder_and_a_second_run_gets_its_own(tmp_path):
    first = tmp_path / "state" / "abc"
    process, held = _holder(first)
    try:
        assert held == first and holder_pid(first) == process.pid
        with held_state_folder(first) as mine:
            assert mine == first.with_name("abc-2")
            with held_state_folder(first) as third:
                assert third == first.with_name("abc-3")
        assert (first / "pretrain.state.pt").read_text() == "epoch 3", "the live run's state is untouched"
    finally:
        process.kill()
        process.wait()


def test_a_killed_holders_folder_is_free_again_and_preferred_for_its_state(tmp_path):
    first = tmp_path / "state" / "abc"
    live, _ = _holder(first)
    killed, killed_folder = _holder(first)
    try:
        assert killed_folder == first.with_name("abc-2")
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        # `abc` is still held; `abc-2` is free and holds the killed run's state: resume it.
        with held_state_folder(first) as resumed:
            assert resumed == killed_folder
            assert (resumed / "pretrain.state.pt").read_text() == "epoch 3"
            assert holder_pid(resumed) is not None and holder_pid(resumed) != killed.pid
    finally:
        live.kill()
        live.wait()
