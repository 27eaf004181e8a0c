"""Starting training runs in subprocesses: killing one at a chosen point of an epoch, free ports."""

import json
import os
import signal
import socket
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def backup_metadata(model_dir: str) -> dict | None:
    """BackupAndRestore's {"epoch", "batch"} of model_dir/backup (None before the first backup)."""
    try:
        with open(os.path.join(model_dir, "backup", "training_metadata.json")) as file:
            return json.load(file)
    except (OSError, ValueError):  # not written yet, or being written
        return None


def kill_at_mid_epoch_backup(command: list[str], env: dict, model_dir: str, epoch: int = 1,
                             timeout: float = 300) -> dict:
    """Runs `command` and SIGKILLs it at its first mid-epoch backup of `epoch` (0-based).

    Returns:
      The backup metadata at the kill.
    """
    run = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and run.poll() is None:
            metadata = backup_metadata(model_dir)
            if metadata and metadata["epoch"] == epoch and metadata["batch"] > 0:
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"no mid-epoch backup in epoch {epoch} (exit status {run.poll()})")
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == -signal.SIGKILL
    killed_at = backup_metadata(model_dir)
    assert killed_at["epoch"] == epoch, f"the run finished epoch {epoch} before the kill; retry"
    return killed_at


def free_ports(count: int) -> list[int]:
    """`count` TCP ports of localhost that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports
