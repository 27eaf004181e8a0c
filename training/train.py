"""Train and evaluate a LambdaResNet with `model.fit` on TPU, GPU, CPU or many workers.

Usage:
  python -m training.train --config NAME_OR_YAML [--set key=value ...]
      [--strategy auto|tpu|gpu|multiworker|cpu] [--tpu NAME|local]
      [--data_dir DIR] [--model_dir DIR] [--export_dir DIR]

  python -m training.train --config demo --model_dir /tmp/lambda_demo
  python -m training.train --config lambda_resnet50_vanilla_90ep --strategy tpu \
      --tpu local --data_dir gs://BUCKET/imagenet --model_dir gs://BUCKET/runs/lr50

The config (a recipe under training/configs/ or a YAML file; see training/config.py) is
validated, printed in full and saved as model_dir/config.yaml. model_dir then holds:

  backup/            BackupAndRestore state (weights, optimizer and EMA, epoch): rerun
                     the same command after a crash or preemption to resume
  checkpoints/last.keras, checkpoints/best.keras
                     the model with EMA weights after every epoch / at the best
                     validation top-1 (written to a temporary file, then renamed)
  tensorboard/       loss, top-1, top-5, learning rate, images/s, skipped records
  train_log.csv      the same per epoch
  eval_results.json  final validation top-1 / top-5 (EMA weights) and run facts

Exit status 2 with a one-line message for a bad config, a missing TPU/GPU/TF_CONFIG, a
global batch not divisible by the replicas, or --export_dir without the export module.

TF_ENABLE_ONEDNN_OPTS: TensorFlow reads it once, at import, so it is chosen here, before
the import: oneDNN on (1) unless the caller set it. TensorFlow defaults to it only on
CPUs with AVX-512-class features, and it trains these models faster (LambdaResNet50 at
64x64: 224 vs 409 ms a step, benchmarks/results/model_speed_backends.csv); on GPU/TPU
hosts it only affects host-side ops. Set TF_ENABLE_ONEDNN_OPTS=0 for bit-reproducible CPU runs.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import sys
import time
from typing import Any, Sequence

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from lambda_keras import models  # noqa: E402
from training import callbacks as callbacks_lib  # noqa: E402
from training import config as config_lib  # noqa: E402
from training import input_pipeline, optimization, strategies  # noqa: E402
from training.config import ConfigError, ExperimentConfig  # noqa: E402
from training.strategies import StrategyError  # noqa: E402

# Under TPUStrategy several steps per tf.function call hide the host round trip; 100
# is tf-models' usual value, capped by the steps of an epoch.
TPU_STEPS_PER_EXECUTION = 100
BEST_METRIC = "val_top1"


class ExportUnavailableError(RuntimeError):
    """--export_dir was given but the export's serving dependency is not installed."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train and evaluate a LambdaResNet (see the module docstring).",
    )
    parser.add_argument("--config", required=True,
                        help=f"Recipe name ({', '.join(config_lib.available_configs())}) "
                             "or a YAML file.")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="Override a config key, e.g. --set train.epochs=10 "
                             "(repeatable; values are YAML).")
    parser.add_argument("--strategy", choices=config_lib.STRATEGIES,
                        help="Overrides runtime.strategy.")
    parser.add_argument("--tpu", help='TPU name, or "local" on a TPU VM (runtime.tpu).')
    parser.add_argument("--data_dir", help="Overrides input.data_dir.")
    parser.add_argument("--model_dir", help="Overrides model_dir.")
    parser.add_argument("--export_dir",
                        help="After training, export the model for TF Serving here.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = config_lib.load_config(
            args.config,
            args.set,
            **{"runtime.strategy": args.strategy, "runtime.tpu": args.tpu,
               "input.data_dir": args.data_dir, "model_dir": args.model_dir},
        )
        if not config.model_dir:
            raise ConfigError("model_dir is empty: pass --model_dir DIR or set model_dir.")
        # Checked before training so that a long run cannot end in this error.
        export_model = _export_function() if args.export_dir else None
        strategy = strategies.create_strategy(config.runtime.strategy, config.runtime.tpu)
        model, results = run_experiment(config, strategy)
    except (ConfigError, StrategyError, ExportUnavailableError) as error:
        print(f"python -m training.train: error: {error}", file=sys.stderr)
        return 2
    if export_model is not None:
        version_dir = export_model(model=model, export_dir=args.export_dir, image_size=config.input.image_size,
                                   crop_padding=config.input.eval_crop_padding)
        print(f"Exported the model for serving to {version_dir}")
    print(f"Validation top-1 {results['top1']:.4f}, top-5 {results['top5']:.4f} "
          f"(EMA weights: {config.train.use_ema}); everything is in {config.model_dir}")
    return 0


def run_experiment(
    config: ExperimentConfig, strategy: tf.distribute.Strategy
) -> tuple[keras.Model, dict[str, Any]]:
    """Trains (resuming from model_dir/backup if present) and evaluates.

    Returns:
      The model, holding the EMA weights (when train.ema_decay is set), and the
      results written to model_dir/eval_results.json: validation "top1", "top5",
      "loss", and "start_epoch", "start_step" (not 0 after a resume), "final_step",
      "train_seconds", "skipped_train_records", "skipped_eval_records".
    """
    replicas = strategy.num_replicas_in_sync
    check_batch_sizes(config, replicas)
    steps_per_execution = resolve_steps_per_execution(config, strategy)
    precision = resolve_precision(config, strategy)
    chief = strategies.is_chief(strategy)
    print(config.to_yaml(), flush=True)
    print(f"TensorFlow {tf.__version__}, Keras {keras.version()}, TF_ENABLE_ONEDNN_OPTS="
          f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS')}, {type(strategy).__name__} with "
          f"{replicas} replica(s), {precision}, steps_per_execution "
          f"{steps_per_execution}, {config.steps_per_epoch} steps per epoch, peak "
          f"learning rate {optimization.peak_learning_rate(config):g}", flush=True)
    if chief:
        tf.io.gfile.makedirs(config.model_dir)
        with tf.io.gfile.GFile(os.path.join(config.model_dir, "config.yaml"), "w") as file:
            file.write(config.to_yaml())
    if config.demo_data:
        _write_demo_data_if_missing(config)
    if config.train.seed is not None:
        keras.utils.set_random_seed(config.train.seed)
    keras.config.set_dtype_policy(precision)

    train_data, eval_data, skipped_train, skipped_eval = build_datasets(config, strategy)
    model = build_and_compile(config, strategy, steps_per_execution)
    stats = callbacks_lib.TrainingStats(config.input.global_batch_size, skipped_train)
    callbacks = build_callbacks(config, strategy, stats)

    start = time.perf_counter()
    model.fit(
        train_data,
        epochs=config.train.epochs,
        steps_per_epoch=config.steps_per_epoch,
        validation_data=eval_data,
        validation_freq=config.train.validation_freq,
        callbacks=callbacks,
        verbose="auto" if chief else 2,
    )
    train_seconds = time.perf_counter() - start
    # fit() ends by copying the EMA into the weights, so this evaluates the EMA model.
    metrics = model.evaluate(eval_data, return_dict=True, verbose="auto" if chief else 0)
    results = {
        "top1": float(metrics["top1"]),
        "top5": float(metrics["top5"]),
        "loss": float(metrics["loss"]),
        "epochs": config.train.epochs,
        "start_epoch": stats.start_epoch if stats.start_epoch is not None else config.train.epochs,
        "start_step": stats.start_step,
        "final_step": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
        "train_seconds": train_seconds,
        "skipped_train_records": skipped_train.count,
        "skipped_eval_records": skipped_eval.count,
    }
    if chief:
        path = os.path.join(config.model_dir, "eval_results.json")
        with tf.io.gfile.GFile(path, "w") as file:
            json.dump(results, file, indent=2)
    return model, results


def check_batch_sizes(config: ExperimentConfig, replicas: int) -> None:
    """Raises ConfigError unless both global batches divide evenly among the replicas."""
    batches = {"input.global_batch_size": config.input.global_batch_size}
    if config.input.eval_global_batch_size is not None:
        batches["input.eval_global_batch_size"] = config.input.eval_global_batch_size
    for key, batch in batches.items():
        if batch % replicas:
            raise ConfigError(
                f"Invalid config {key}={batch}: not divisible by the {replicas} replicas "
                f"in sync; use a multiple of {replicas}."
            )


def resolve_steps_per_execution(config: ExperimentConfig, strategy: tf.distribute.Strategy) -> int:
    """train.steps_per_execution, or its default; rejects values Keras cannot run."""
    tpu = strategies.is_tpu_strategy(strategy)
    requested = config.train.steps_per_execution
    if requested is None:
        return min(TPU_STEPS_PER_EXECUTION, config.steps_per_epoch) if tpu else 1
    if requested > 1 and strategy.num_replicas_in_sync > 1 and not tpu:
        raise ConfigError(
            f"Invalid config train.steps_per_execution={requested}: Keras fit under "
            f"{type(strategy).__name__} fails with more than 1 step per execution "
            "(keras-team/keras#19246); use 1 or null."
        )
    return requested


def resolve_precision(config: ExperimentConfig, strategy: tf.distribute.Strategy) -> str:
    """runtime.mixed_precision, with "auto": bfloat16 on TPU, float16 on GPU, else float32."""
    if config.runtime.mixed_precision != "auto":
        return config.runtime.mixed_precision
    if strategies.is_tpu_strategy(strategy):
        return "mixed_bfloat16"
    if tf.config.list_logical_devices("GPU"):
        # Keras wraps the optimizer in a LossScaleOptimizer (dynamic loss scaling).
        return "mixed_float16"
    return "float32"


def build_datasets(config: ExperimentConfig, strategy: tf.distribute.Strategy):
    """The distributed training and validation datasets.

    Each replica gets [global_batch / replicas, image_size, image_size, 3] images and
    int32 [global_batch / replicas] labels; each host reads its share of the files
    (`distribute_datasets_from_function`). Under TPUStrategy the last partial
    validation batch is dropped (static shapes).

    Returns:
      (train, validation, skipped-train counter, skipped-validation counter).
    """
    input_config = config.input
    if strategies.is_tpu_strategy(strategy) and not input_config.eval_drop_remainder:
        print("TPU: dropping the last partial validation batch (static shapes).")
        input_config = input_config.replace(eval_drop_remainder=True)
    # The counters are host variables, created outside the strategy scope.
    skipped_train = input_pipeline.SkippedRecordCounter("skipped_train_records")
    skipped_eval = input_pipeline.SkippedRecordCounter("skipped_eval_records")
    train = strategy.distribute_datasets_from_function(
        lambda context: input_pipeline.build_dataset(input_config, "train", context, skipped_train)
    )
    validation = strategy.distribute_datasets_from_function(
        lambda context: input_pipeline.build_dataset(
            input_config, "validation", context, skipped_eval
        )
    )
    return train, validation, skipped_train, skipped_eval


def build_model(config: ExperimentConfig, synchronized_batch_norm: bool = False) -> keras.Model:
    """The configured network, [batch, size, size, 3] -> [batch, classes] probabilities.

    The classifier runs in float32 under mixed precision (Keras' mixed-precision
    advice: softmax and loss in float32). With `synchronized_batch_norm`, every batch
    norm (the lambda layers' included) computes its statistics over the global batch.
    """
    kwargs = config.model.constructor_kwargs()
    args = ()
    if config.model.architecture == "LambdaResNet":
        args = (kwargs.pop("blocks_per_stage"), kwargs.pop("lambda_blocks"))
    size = config.input.image_size
    model = getattr(models, config.model.architecture)(
        *args,
        input_shape=(size, size, 3),
        classes=config.input.num_classes,
        classifier_activation="softmax",
        **kwargs,
    )
    model.get_layer("predictions").dtype_policy = keras.DTypePolicy("float32")
    if synchronized_batch_norm:
        # The constructors take no such option; the flag is read at call time, so
        # setting it on the built layers is enough. _flatten_layers reaches the batch
        # norms inside the lambda layers too.
        for layer in model._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
    return model


def build_and_compile(
    config: ExperimentConfig, strategy: tf.distribute.Strategy, steps_per_execution: int = 1
) -> keras.Model:
    """Model, optimizer, loss and metrics, created inside `strategy.scope()`."""
    jit_compile = config.runtime.jit_compile
    if jit_compile is True and strategy.num_replicas_in_sync > 1 and not (
        strategies.is_tpu_strategy(strategy)
    ):
        raise ConfigError(
            f"Invalid config runtime.jit_compile=true: Keras cannot compile "
            f"{type(strategy).__name__} steps with XLA; use auto."
        )
    with strategy.scope():
        model = build_model(config, synchronized_batch_norm=strategy.num_replicas_in_sync > 1)
        optimization.apply_coupled_weight_decay(model, config.train.weight_decay)
        model.compile(
            optimizer=optimization.build_optimizer(config),
            loss=optimization.SmoothedCrossEntropy(
                config.input.num_classes, config.train.label_smoothing
            ),
            metrics=[optimization.TopKAccuracy(1), optimization.TopKAccuracy(5)],
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile,
        )
    return model


def build_callbacks(
    config: ExperimentConfig,
    strategy: tf.distribute.Strategy,
    stats: callbacks_lib.TrainingStats,
) -> list[keras.callbacks.Callback]:
    """The callbacks, in the order they must run at an epoch's end.

    1. BackupAndRestore, first, so that it saves the raw weights before SwapEMAWeights
       swaps the EMA in (a backup of swapped weights would resume from the EMA).
       Every worker keeps its own backup (the chief's in model_dir/backup).
    2. TrainingStats adds learning rate, images/s and skipped records to the logs.
    3. SwapEMAWeights puts the EMA weights in for validation and, at the epoch's end,
       for the checkpoints that follow; it swaps back at the next epoch's start.
    4. TerminateOnNaN.
    5. Chief only: last and best .keras checkpoints, TensorBoard, CSV log.
    """
    model_dir = config.model_dir
    chief = strategies.is_chief(strategy)
    backup_dir = os.path.join(model_dir, "backup")
    if not chief:
        backup_dir = os.path.join(backup_dir, f"worker_{strategies.worker_index(strategy)}")
    # Created here, idempotently: BackupAndRestore checks for its directory and then
    # calls os.makedirs, which fails when another worker creating backup/worker_<i>
    # made backup/ in between (seen in a two-worker CI run).
    tf.io.gfile.makedirs(backup_dir)
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.BackupAndRestore(
            backup_dir,
            save_freq=config.train.backup_every_steps or "epoch",
            double_checkpoint=True,
            delete_checkpoint=not config.train.keep_backup,
        ),
        stats,
    ]
    if config.train.use_ema:
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    callbacks.append(keras.callbacks.TerminateOnNaN())
    if chief:
        csv_path = os.path.join(model_dir, "train_log.csv")
        callbacks += [
            callbacks_lib.AtomicCheckpoint(os.path.join(model_dir, "checkpoints", "last.keras")),
            callbacks_lib.AtomicCheckpoint(
                os.path.join(model_dir, "checkpoints", "best.keras"),
                monitor=BEST_METRIC,
                initial_best=_best_logged_value(csv_path, BEST_METRIC),
            ),
            keras.callbacks.TensorBoard(
                os.path.join(model_dir, "tensorboard"),
                update_freq=config.train.tensorboard_update_freq,
                write_graph=False,
                profile_batch=0,
            ),
            keras.callbacks.CSVLogger(csv_path, append=True),
        ]
    return callbacks


def _best_logged_value(csv_path: str, key: str) -> float | None:
    """The highest `key` in an earlier run's CSV log (None without one)."""
    if not tf.io.gfile.exists(csv_path):
        return None
    values = []
    with tf.io.gfile.GFile(csv_path) as file:
        for row in csv.DictReader(file):
            try:
                values.append(float(row.get(key) or "nan"))
            except ValueError:  # CSVLogger writes "NA" for epochs without validation.
                continue
    return max((value for value in values if value == value), default=None)


def _write_demo_data_if_missing(config: ExperimentConfig) -> None:
    pattern = os.path.join(config.input.data_dir, config.input.train_file_pattern)
    if tf.io.gfile.glob(pattern):
        return
    # Imported here: it needs scikit-learn, which only the demo uses.
    from training import demo_data  # pylint: disable=import-outside-toplevel

    written = demo_data.write_demo_data(config.input.data_dir, image_size=config.input.image_size)
    print(f"Wrote the digits demo data ({written}) to {config.input.data_dir}", flush=True)


def _export_function():
    # The export writes TF Serving warm-up requests with tensorflow-serving-api (the
    # `serve` extra); without it a long run would fail only after training.
    if importlib.util.find_spec("tensorflow_serving") is None:
        raise ExportUnavailableError(
            "--export_dir needs tensorflow-serving-api (pip install 'lambda-keras[serve]') "
            "to write the TF Serving warm-up requests; install it or run without --export_dir."
        )
    from export import saved_model  # pylint: disable=import-outside-toplevel

    return saved_model.export_model


if __name__ == "__main__":
    sys.exit(main())
