"""End to end: `python -m training.train --config demo` learns the digits."""

import csv
import json

import keras
import pytest

from export import predict
from training import train


@pytest.mark.slow
def test_demo_trains_to_95_percent_top1_with_every_output(tmp_path, capsys):
    """The README's main job: train the demo, evaluate, export, classify with the export."""
    model_dir = tmp_path / "model"
    status = train.main(["--config", "demo", "--data_dir", str(tmp_path / "data"),
                         "--model_dir", str(model_dir), "--export_dir", str(tmp_path / "export")])
    assert status == 0, capsys.readouterr().err

    results = json.loads((model_dir / "eval_results.json").read_text())
    assert results["top1"] >= 0.95, results
    assert results["top5"] >= results["top1"]
    assert results["skipped_train_records"] == 0
    assert (results["start_epoch"], results["start_step"]) == (0, 0)
    assert results["final_step"] == 8 * (1500 // 64)  # epochs x steps per epoch

    with open(model_dir / "train_log.csv") as file:
        rows = list(csv.DictReader(file))
    assert [int(row["epoch"]) for row in rows] == list(range(8))
    for key in ("loss", "top1", "top5", "val_top1", "val_top5", "learning_rate",
                "images_per_second", "skipped_records"):
        assert key in rows[0], key
    assert float(rows[-1]["images_per_second"]) > 0
    # After the one warm-up epoch the learning rate is at its peak, 0.2 x 64 / 256.
    assert float(rows[0]["learning_rate"]) == pytest.approx(0.05)
    # The training loss includes the L2 penalty; it must have dropped.
    assert float(rows[-1]["loss"]) < 0.8 * float(rows[0]["loss"])

    assert any((model_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert "demo_data: true" in (model_dir / "config.yaml").read_text()
    # Only the two checkpoints: no temporary file is left behind.
    assert {p.name for p in (model_dir / "checkpoints").iterdir()} == {"best.keras", "last.keras"}
    # The last checkpoint holds the EMA weights that were evaluated.
    last = keras.saving.load_model(model_dir / "checkpoints" / "last.keras", compile=False)
    assert last.output_shape == (None, 10)
    printed = capsys.readouterr().out
    assert "TF_ENABLE_ONEDNN_OPTS=" in printed and "architecture: LambdaResNet" in printed
    assert f"Exported the model for serving to {tmp_path / 'export' / '1'}" in printed

    # One validation sample per digit, classified by the export's serving_default.
    samples = [tmp_path / "data" / "samples" / f"digit_{digit}.jpg" for digit in range(10)]
    top_k = predict.classify(tmp_path / "export", samples)
    correct = sum(labels[0][0] == f"class_{digit}" for digit, labels in enumerate(top_k))
    assert correct >= 8, top_k  # 97% validation top-1: two misses in ten would be rare
    assert predict.main([str(tmp_path / "export"), str(samples[3])]) == 0
    assert "digit_3.jpg: class_" in capsys.readouterr().out
    assert predict.main([str(tmp_path / "export"), str(tmp_path / "missing.jpg")]) == 2
    assert "no such image file" in capsys.readouterr().err
