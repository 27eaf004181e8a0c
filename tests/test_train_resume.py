"""A training run SIGKILLed mid-epoch resumes from its backup when restarted."""

import csv
import json
import os
import subprocess
import sys

import pytest
from run_control import REPO, kill_at_mid_epoch_backup

from training import demo_data

STEPS_PER_EPOCH = 20
BACKUP_EVERY = 5


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

    killed_at = kill_at_mid_epoch_backup(command, env, model_dir, epoch=1, timeout=240)
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
