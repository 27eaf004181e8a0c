"""The run boundary: data that cannot feed a run are refused before anything is written.

`training.preflight.problems` decides from record counts, batch sizes, replicas, hosts
and labels; the property test compares it with an independent oracle that simulates
the pipeline's batching on lists. The end-to-end cases run the CLI (`train.main`, in this
process: the refusal comes before any training) and check its exit status, the one line on
stderr and the untouched model_dir. `_padded_to_whole_batches` (the
validation padding for several replicas) is checked the same way on small datasets.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambda_keras.data import manifest, records
from training import config as config_lib
from training import experiment, input_pipeline, preflight, train


def _full_steps(records: int, per_replica_batch: int, replicas_per_host: int) -> int:
    """Steps a host's one pass gives when its records are cut into per-replica batches
    (last partial batch dropped) and each step takes one batch per local replica."""
    batches = [list(range(records))[start:start + per_replica_batch]
               for start in range(0, records, per_replica_batch)]
    full = [batch for batch in batches if len(batch) == per_replica_batch]
    return len(full) // replicas_per_host


def _oracle_accepts(plan: preflight.DataPlan) -> bool:
    if plan.global_batch_size % plan.replicas or plan.eval_global_batch_size % plan.replicas:
        return False
    replicas_per_host = plan.replicas // plan.hosts
    if plan.train_records is not None and any(
        _full_steps(count, plan.global_batch_size // plan.replicas, replicas_per_host) < 1
        for count in plan.train_records
    ):
        return False
    if plan.validation_records is not None:
        if not all(plan.validation_records):
            return False
        if plan.eval_drop_remainder and any(
            _full_steps(count, plan.eval_global_batch_size // plan.replicas, replicas_per_host) < 1
            for count in plan.validation_records
        ):
            return False
    if plan.label_range is not None:
        first, last = plan.label_range
        return set(range(first, last + 1)) <= set(range(plan.num_classes))
    return True


@st.composite
def data_plans(draw):
    hosts = draw(st.integers(1, 4))
    replicas = hosts * draw(st.integers(1, 4))
    counts = st.lists(st.integers(0, 300), min_size=hosts, max_size=hosts).map(tuple)
    first = draw(st.integers(-3, 5))
    return preflight.DataPlan(
        train_records=draw(st.none() | counts),
        validation_records=draw(st.none() | counts),
        global_batch_size=draw(st.integers(1, 256)),
        eval_global_batch_size=draw(st.integers(1, 256)),
        replicas=replicas,
        hosts=hosts,
        eval_drop_remainder=draw(st.booleans()),
        num_classes=draw(st.integers(1, 20)),
        label_range=draw(st.none() | st.integers(1, 20).map(lambda classes: (first, first + classes - 1))),
    )


@settings(max_examples=500, deadline=None)
@given(data_plans())
def test_preflight_decision_equals_the_oracle(plan):
    found = preflight.problems(plan)
    assert (not found) == _oracle_accepts(plan), found
    assert all("\n" not in problem for problem in found)


@pytest.fixture()
def run_cli(tmp_path, capfd):
    """Runs `python -m training.train` as `train.main` with the demo config and `overrides`
    on a data folder; returns (exit status, stderr, model_dir). capfd takes what is written
    to the stderr file descriptor too (TensorFlow's C++ logs), as a subprocess's stderr would."""
    model_dir = tmp_path / "model"

    def run(data_dir, *overrides):
        argv = ["--config", "demo", "--data_dir", str(data_dir), "--model_dir", str(model_dir),
                "--set", "model.lambda_blocks=[[], [], [], []]", "--set", "train.epochs=1",
                "--set", "train.warmup_epochs=0"]
        for override in overrides:
            argv += ["--set", override]
        status = train.main(argv)
        return status, capfd.readouterr().err, model_dir

    return run


def _error_line(status, stderr) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("python -m training.train: error: ")]
    assert status == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("override, expected", [
    ("input.global_batch_size=2048", "the train split has 1500 records, fewer than one training step needs"),
    ("input.num_classes=5", "outside [0, 5) (input.num_classes)"),
    ("input.eval_global_batch_size=512", "with input.eval_drop_remainder=true"),
])
def test_data_that_cannot_feed_the_run_are_refused_before_model_dir_exists(digits_dir, run_cli, override,
                                                                            expected):
    extra = ["input.eval_drop_remainder=true"] if "eval_global" in override else []
    status, stderr, model_dir = run_cli(digits_dir, override, *extra)
    assert expected in _error_line(status, stderr)
    assert not model_dir.exists()


def _relabelled_copy(digits_dir, target, image_key):
    """The digits' shards with their image under another key, and a valid manifest."""
    target.mkdir()
    paths = {}
    for split in ("train", "validation"):
        paths[split] = []
        for source in sorted(tf.io.gfile.glob(os.path.join(digits_dir, f"{split}-*"))):
            rewritten = []
            for serialized in tf.data.TFRecordDataset(source).as_numpy_iterator():
                example = tf.train.Example.FromString(serialized)
                feature = example.features.feature
                feature[image_key].CopyFrom(feature.pop(records.IMAGE_KEY))
                rewritten.append(example.SerializeToString())
            path = str(target / os.path.basename(source))
            records.write_records_atomically(path, rewritten)
            paths[split].append(path)
    labels = manifest.read_manifest(digits_dir)
    manifest.write_manifest(str(target), manifest.Manifest(
        {split: tuple(manifest.describe_shards(split_paths)) for split, split_paths in paths.items()},
        classes=labels.classes, first_label=labels.first_label))
    return target


def test_records_without_our_feature_keys_are_refused_from_their_first_record(digits_dir, tmp_path, run_cli):
    data_dir = _relabelled_copy(digits_dir, tmp_path / "data", "image/jpeg")
    status, stderr, model_dir = run_cli(data_dir)
    assert "its first record has no image bytes under input.image_key='image/encoded'" in _error_line(status, stderr)
    assert not model_dir.exists()


def test_a_model_dir_whose_run_failed_before_its_first_backup_takes_the_corrected_config(digits_dir, tmp_path):
    refused = config_lib.load_config("demo", ["train.epochs=3"], **{"input.data_dir": digits_dir,
                                                                     "model_dir": str(tmp_path)})
    (tmp_path / "config.yaml").write_text(refused.to_yaml())
    (tmp_path / "backup").mkdir()  # created empty at the start of training, before any backup
    corrected = config_lib.load_config("demo", ["train.epochs=4"], **{"input.data_dir": digits_dir,
                                                                       "model_dir": str(tmp_path)})
    experiment.check_same_run(corrected)  # nothing to resume: not locked to the first config
    (tmp_path / "backup" / "training_metadata.json").write_text('{"epoch": 1}')
    with pytest.raises(config_lib.ConfigError, match="holds a run with another config"):
        experiment.check_same_run(corrected)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records_on_host=st.integers(1, 40), batch_size=st.integers(1, 7), replicas_per_host=st.integers(1, 3),
       extra_on_other_host=st.none() | st.integers(0, 20))
def test_padded_validation_batches_are_full_and_weigh_each_example_once(records_on_host, batch_size,
                                                                        replicas_per_host, extra_on_other_host):
    examples = tf.data.Dataset.range(records_on_host).map(
        lambda index: (tf.fill([2, 2, 3], tf.cast(index + 1, tf.float32)), tf.cast(index, tf.int32)))
    host_batch = batch_size * replicas_per_host
    most = None if extra_on_other_host is None else records_on_host + extra_on_other_host
    batches = list(input_pipeline._padded_to_whole_batches(examples, batch_size, host_batch, most))
    steps = -(-(most or records_on_host) // host_batch)
    assert len(batches) == steps * replicas_per_host  # every local replica gets a batch at every step
    assert all(images.shape[0] == batch_size for images, _, _ in batches)
    labels = np.concatenate([labels for _, labels, _ in batches])
    weights = np.concatenate([weights for _, _, weights in batches])
    np.testing.assert_array_equal(weights, np.arange(len(weights)) < records_on_host)
    np.testing.assert_array_equal(labels[:records_on_host], np.arange(records_on_host))
