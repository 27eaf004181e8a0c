"""Train and evaluate a LambdaResNet with `model.fit` on TPU, GPU, CPU or many workers.

Usage:
  python -m training.train --config NAME_OR_YAML [--set key=value ...]
      [--backend tensorflow|jax] [--strategy auto|tpu|gpu|multiworker|cpu]
      [--tpu NAME|local] [--data_dir DIR] [--model_dir DIR] [--export_dir DIR]

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

--backend (default: $KERAS_BACKEND, else tensorflow) is the Keras backend the model
trains under, chosen before Keras is imported. Under "tensorflow" the strategies are
tf.distribute's (TPUStrategy, MirroredStrategy, MultiWorkerMirroredStrategy); under
"jax" the same recipes train with `keras.distribution.DataParallel` over every local
device of the chosen platform (TPU, GPU or CPU), on several hosts after
`keras.distribution.initialize()` (--strategy multiworker). tf.data feeds both, on the
host CPU: a TPU VM training under JAX needs `tensorflow-cpu`, since only one framework
can hold the TPU. The outputs in model_dir are the same, and so is the export.

Exit status 2 with a one-line message for a bad config, a missing TPU/GPU/TF_CONFIG, a
global batch not divisible by the replicas, shards that do not match their
manifest.json or cannot feed the run (training.preflight: too few records for one
step, labels outside input.num_classes, records without the configured features), a
split that yields no usable record, a run that diverges (a non-finite loss or weight:
the backup and checkpoints keep the last finite state), a model whose weights,
gradients and optimizer state alone exceed the machine's memory (counted with shapes
only, before anything is written), running out of memory while training (the message
names the allocation, the batch and the image size), or an --export_dir that the export
could not write. Nothing is written into model_dir before the config and the
data are checked, and config.yaml is written only then.

Under --backend jax, --export_dir exports the last checkpoint in a TensorFlow-backend
subprocess (`python -m export.saved_model`): the SavedModel is TensorFlow's.

TF_ENABLE_ONEDNN_OPTS: TensorFlow reads it once, at import, so it is chosen here, before
the import: oneDNN on (1) unless the caller set it. TensorFlow defaults to it only on
CPUs with AVX-512-class features, and it trains these models faster
(benchmarks/results/model_speed_backends.csv); on GPU/TPU hosts it only affects
host-side ops. Set TF_ENABLE_ONEDNN_OPTS=0 for bit-reproducible CPU runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from typing import Sequence

BACKENDS = ("tensorflow", "jax")

if __name__ == "__main__":
    # Keras and TensorFlow read KERAS_BACKEND and TF_ENABLE_ONEDNN_OPTS once, when first
    # imported, and the imports below import them: --backend is applied first.
    _early_parser = argparse.ArgumentParser(add_help=False)
    _early_parser.add_argument("--backend")
    _early_backend = _early_parser.parse_known_args()[0].backend
    if _early_backend in BACKENDS:  # anything else is refused by parse_args
        os.environ["KERAS_BACKEND"] = _early_backend
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from lambda_keras import cli  # noqa: E402
from lambda_keras.cli import UserError  # noqa: E402
from training import config as config_lib  # noqa: E402
from training.errors import ConfigError  # noqa: E402

PROG = "python -m training.train"


class ExportUnavailableError(UserError, RuntimeError):
    """--export_dir was given but the export's serving dependency is not installed."""


class BackendError(UserError, RuntimeError):
    """The requested Keras backend cannot be used in this process."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(
        prog=PROG,
        description="Train and evaluate a LambdaResNet (see the module docstring).",
    )
    parser.add_argument("--config", required=True,
                        help=f"Recipe name ({', '.join(config_lib.available_configs())}) "
                             "or a YAML file.")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="Override a config key, e.g. --set train.epochs=10 "
                             "(repeatable; values are YAML).")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="Keras backend (default: $KERAS_BACKEND, else tensorflow).")
    parser.add_argument("--strategy", choices=config_lib.STRATEGIES,
                        help="Overrides runtime.strategy.")
    parser.add_argument("--tpu", help='TPU name, or "local" on a TPU VM (runtime.tpu).')
    parser.add_argument("--data_dir", help="Overrides input.data_dir.")
    parser.add_argument("--model_dir", help="Overrides model_dir.")
    parser.add_argument("--export_dir",
                        help="After training, export the model for TF Serving here.")
    return parser.parse_args(argv)


def select_backend(requested: str | None) -> str:
    """Sets KERAS_BACKEND (and oneDNN, see the module doc) before Keras is imported.

    Raises:
      BackendError: Keras was already imported in this process with another backend.
    """
    backend = requested or os.environ.get("KERAS_BACKEND") or "tensorflow"
    if backend not in BACKENDS:
        raise BackendError(f"KERAS_BACKEND={backend!r}: training runs under {' or '.join(BACKENDS)}.")
    if "keras" in sys.modules:
        import keras  # pylint: disable=import-outside-toplevel

        if keras.backend.backend() != backend:
            raise BackendError(
                f"--backend {backend}: Keras was already imported with the {keras.backend.backend()} backend "
                "in this process; run python -m training.train in a fresh process."
            )
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    return backend


@cli.entry_point(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    select_backend(args.backend)
    # Imported once the backend is chosen: these import Keras.
    from training import experiment, model_memory, strategies  # pylint: disable=import-outside-toplevel

    config = config_lib.load_config(
        args.config,
        args.set,
        **{"runtime.strategy": args.strategy, "runtime.tpu": args.tpu,
           "input.data_dir": args.data_dir, "model_dir": args.model_dir},
    )
    if not config.model_dir:
        raise ConfigError("model_dir is empty: pass --model_dir DIR or set model_dir.")
    model_memory.check_training_state_fits(config)
    # Checked before training so that a long run cannot end in these errors.
    export_model = _export_function(args.export_dir) if args.export_dir else None
    if config.demo_data:
        # Imported here: it needs scikit-learn, which only the demo uses.
        from training import demo_data  # pylint: disable=import-outside-toplevel

        written = demo_data.ensure_demo_data(config.input.data_dir, config.input.image_size)
        if written:
            print(f"Wrote the digits demo data ({written}) to {config.input.data_dir}", flush=True)
    strategy = strategies.create_strategy(
        config.runtime.strategy, config.runtime.tpu, config.runtime.worker_start_timeout_seconds
    )
    with model_memory.out_of_memory_in_one_line(config):
        model, results = experiment.run_experiment(config, strategy)
    if export_model is not None and strategies.is_chief(strategy):
        if strategies.is_jax(strategy):
            version_dir = _export_under_tensorflow(config.model_dir, args.export_dir)
        else:
            version_dir = export_model(model=model, export_dir=args.export_dir,
                                       eval_transform=config.input.eval_transform)
        print(f"Exported the model for serving to {version_dir}")
    print(f"Validation top-1 {results['top1']:.4f}, top-5 {results['top5']:.4f} "
          f"(EMA weights: {config.train.use_ema}); everything is in {config.model_dir}")
    return 0


class ExportFailedError(UserError, RuntimeError):
    """The export after training failed; the checkpoints are intact and export separately."""


def _export_under_tensorflow(model_dir: str, export_dir: str) -> str:
    """Exports model_dir's checkpoints/last.keras (the EMA weights of the last epoch,
    which `fit` also leaves in the model) with `python -m export.saved_model` in a
    TensorFlow-backend process on the CPU, and returns the version folder.

    A SavedModel is TensorFlow's: under the JAX backend Keras would export through
    jax2tf, which cannot take the serving signature's string (JPEG bytes) input. The
    child process leaves this process's accelerator alone.
    """
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(filter(None, [repository, os.environ.get("PYTHONPATH")])))
    export = subprocess.run(
        [sys.executable, "-m", "export.saved_model", "--model", model_dir, "--output", export_dir],
        env=env, capture_output=True, text=True, check=False,
    )
    if export.returncode:
        lines = export.stderr.strip().splitlines() or ["(no message)"]
        raise ExportFailedError(
            f"the export after training failed ({lines[-1]}); the checkpoints in {model_dir} are intact: "
            f"export them with python -m export.saved_model --model {model_dir} --output {export_dir}"
        )
    return export.stdout.strip().splitlines()[-1].removeprefix("Exported ")


def _export_function(export_dir: str):
    """The export, once it is known to be able to run after training."""
    # The export writes TF Serving warm-up requests with tensorflow-serving-api (the
    # `serve` extra).
    if importlib.util.find_spec("tensorflow_serving") is None:
        raise ExportUnavailableError(
            "--export_dir needs tensorflow-serving-api (pip install 'lambda-keras[serve]') "
            "to write the TF Serving warm-up requests; install it or run without --export_dir."
        )
    if "://" not in export_dir:
        try:
            os.makedirs(export_dir, exist_ok=True)
            tempfile.TemporaryFile(dir=export_dir).close()
        except OSError as error:
            raise ExportUnavailableError(
                f"--export_dir {export_dir} is not a writable folder ({error.strerror}); the export after "
                "training would fail. Choose another folder."
            ) from None
    from export import saved_model  # pylint: disable=import-outside-toplevel

    return saved_model.export_model


if __name__ == "__main__":
    sys.exit(main())
