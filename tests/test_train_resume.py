"""A training run SIGKILLed mid-epoch resumes from its backup when restarted."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from training import demo_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS_PER_EPOCH = 20
BACKUP_EVERY = 5


def _metadata(model_dir):
    path = os.path.join(model_dir, "backup", "training_metadata.json")
    try:
        with open(path) as file:
            return json.load(file)
    except (OSError, ValueError):  # Not written yet, or being written.
        return None


@pytest.mark.slow
def test_sigkilled_run_resumes_without_repeating_a_finished_epoch(tmp_path):
    data_dir, model_dir = str(tmp_path / "data"), str(tmp_path / "model")
    demo_data.write_demo_data(data_dir)
    command = [
        sys.executable, "-m", "training.train", "--config", "demo",
        "--data_dir", data_dir, "--model_dir", model_dir,
        "--set", "train.epochs=2", "--set", f"train.steps_per_epoch={STEPS_PER_EPOCH}",
        "--set", f"train.backup_every_steps={BACKUP_EVERY}", "--set", "train.validation_freq=2",
    ]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")

    run = subprocess.Popen(command, cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Kill at the first mid-epoch backup of the second epoch (index 1).
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and run.poll() is None:
            metadata = _metadata(model_dir)
            if metadata and metadata["epoch"] == 1 and metadata["batch"] > 0:
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"no mid-epoch backup in epoch 1 (exit status {run.poll()})")
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == -signal.SIGKILL
    killed_at = _metadata(model_dir)
    assert killed_at["epoch"] == 1, "the run finished epoch 1 before the kill; retry"
    steps_at_backup = STEPS_PER_EPOCH + killed_at["batch"] + 1
    with open(os.path.join(model_dir, "train_log.csv")) as file:
        assert [row["epoch"] for row in csv.DictReader(file)] == ["0"]

    resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert (f"Training starts at epoch 2, optimizer step {steps_at_backup} "
            "(resumed from the backup)") in resumed.stdout

    results = json.loads((tmp_path / "model" / "eval_results.json").read_text())
    # The step counter continues from the backup; the interrupted epoch restarts (it
    # is redone in full) and epoch 0 is not repeated.
    assert (results["start_epoch"], results["start_step"]) == (1, steps_at_backup)
    assert results["final_step"] == steps_at_backup + STEPS_PER_EPOCH
    with open(os.path.join(model_dir, "train_log.csv")) as file:
        assert [row["epoch"] for row in csv.DictReader(file)] == ["0", "1"]
    assert results["top1"] > 0.5
