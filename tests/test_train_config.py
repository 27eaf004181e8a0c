"""Fast tests of the training configs, optimization pieces and CLI failures (no training)."""

import inspect
import math
import re
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

import lambda_keras
from lambda_keras import recipe
import lambda_keras.models
from lambda_keras.models import builder, variants
from keras.src.backend.tensorflow import trainer as tf_trainer

from training import compat, config as config_lib, experiment, optimization, train
from training.config import ConfigError

TABLE_20 = [  # depth, image size, RandAugment magnitude, dropout, stochastic depth
    (50, 128, 10, 0.2, 0.0), (50, 160, 10, 0.2, 0.0), (101, 160, 10, 0.3, 0.0),
    (101, 192, 15, 0.2, 0.0), (152, 192, 15, 0.3, 0.0), (152, 224, 15, 0.3, 0.1),
    (152, 256, 15, 0.3, 0.1), (152, 288, 15, 0.3, 0.1), (270, 256, 15, 0.3, 0.1),
    (350, 256, 15, 0.3, 0.2), (350, 288, 15, 0.3, 0.2), (350, 320, 15, 0.3, 0.2),
    (420, 320, 15, 0.3, 0.2),
]


def _load(name, *overrides, **flags):
    flags.setdefault("input.data_dir", "/data/imagenet")
    return config_lib.load_config(name, overrides, **flags)


def test_every_architecture_has_one_constructor():
    constructors = {
        name for name, value in vars(lambda_keras.models).items()
        if inspect.isfunction(value) and name[0].isupper()
    }
    assert set(variants.ARCHITECTURES) == constructors == set(lambda_keras.models.CONSTRUCTORS)
    assert set(variants.ARCHITECTURES) <= set(lambda_keras.__all__)


def test_table_12_options_reach_the_lambda_layers():
    config = _load("lambda_resnet50_vanilla_90ep", "model.lambda_layer.key_normalization=l2",
                   "model.lambda_layer.query_softmax=true", "model.lambda_layer.use_batch_norm=false")
    constructor, _, kwargs = builder.constructor_arguments(config.model.to_dict())
    assert constructor is lambda_keras.models.HybridResNet50
    layer = kwargs["lambda_layer"]
    assert (layer.key_normalization, layer.query_softmax, layer.use_batch_norm) == ("l2", True, False)
    with pytest.raises(ConfigError, match="model.lambda_layer: `key_normalization` must be one of"):
        _load("lambda_resnet50_vanilla_90ep", "model.lambda_layer.key_normalization=l1")
    with pytest.raises(ConfigError, match=r"Unknown lambda_layer argument\(s\) \['filters'\]"):
        _load("lambda_resnet50_vanilla_90ep", "model.lambda_layer.filters=64")


@pytest.mark.parametrize("name", config_lib.available_configs())
def test_every_recipe_loads_and_round_trips(name):
    config = _load(name)
    assert config_lib.from_dict(yaml.safe_load(config.to_yaml())) == config


@pytest.mark.parametrize("depth,size,magnitude,dropout,depth_rate", TABLE_20)
def test_350_epoch_recipes_follow_table_20(depth, size, magnitude, dropout, depth_rate):
    for name, architecture in ((f"lambda_resnet{depth}_i{size}_350ep", f"LambdaResNet{depth}"),
                               (f"resnet_rs{depth}_i{size}_350ep", f"ResNetRS{depth}")):
        config = _load(name)
        assert config.model.architecture == architecture
        assert (config.input.image_size, config.input.randaugment_magnitude) == (size, magnitude)
        assert (config.model.dropout_rate, config.model.stochastic_depth_rate) == (
            dropout, depth_rate)
        assert config.input.use_randaugment and config.input.randaugment_num_layers == 2
        assert (config.train.epochs, config.train.weight_decay) == (350, 4e-5)
        assert config.input.global_batch_size == 4096
        assert (config.train.ema_decay, config.train.label_smoothing) == (0.9999, 0.1)


def test_vanilla_90_epoch_recipe_is_table_3():
    config = _load("lambda_resnet50_vanilla_90ep")
    assert (config.model.architecture, config.model.placement) == ("HybridResNet50", "LLLL")
    assert (config.train.epochs, config.train.warmup_epochs) == (90, 5)
    assert (config.train.momentum, config.train.weight_decay) == (0.9, 1e-4)
    assert (config.train.ema_decay, config.train.label_smoothing) == (0.9999, 0.1)
    assert config.input.image_size == 224 and config.input.random_flip
    assert not config.input.use_randaugment
    assert optimization.peak_learning_rate(config) == pytest.approx(1.6)  # 0.1 x 4096/256
    assert config.steps_per_epoch == 1_281_167 // 4096


def test_set_overrides_are_parsed_as_yaml_and_validated():
    config = _load("demo", "train.epochs=3", "input.crop_area_range=[0.5, 1]",
                   "train.ema_decay=null", **{"model_dir": "/tmp/x"})
    assert config.train.epochs == 3
    assert config.input.crop_area_range == (0.5, 1.0)
    assert config.train.ema_decay is None and not config.train.use_ema
    assert config.model_dir == "/tmp/x"


@pytest.mark.parametrize("override,message", [
    ("train.epoch=3", "train.epoch"),
    ("trian.epochs=3", "trian"),
    ("train.epochs=three", "train.epochs='three'"),
    ("train.epochs=0", "train.epochs=0"),
    ("train.warmup_epochs=20", "train.warmup_epochs=20"),
    ("train.momentum=1.5", "train.momentum=1.5"),
    ("model.architecture=LambdaResNet51", "model: `architecture` must be one of"),
    ("model.lambda_layer.scope_size=8", "model.lambda_layer: `scope_size` must be odd"),
    ("model.placement=LLLL", "model: `placement` applies only to HybridResNet50, not LambdaResNet"),
    ("model.dropout_rate=1", "model: `dropout_rate` must be in [0, 1)"),
    ("input.global_batch_size=0", "global_batch_size=0"),
    ("input.image_sise=32", "input.image_sise"),
    ("runtime.strategy=tpuu", "runtime.strategy='tpuu'"),
    ("train.tensorboard_update_freq=batch", "train.tensorboard_update_freq='batch'"),
    ("train.nesterov=1", "train.nesterov=1"),
])
def test_bad_configs_fail_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _load("demo", override)


def test_unknown_recipe_and_base_inheritance(tmp_path):
    with pytest.raises(ConfigError, match="recipes: .*demo"):
        _load("no_such_recipe")
    child = tmp_path / "child.yaml"
    child.write_text("base: demo\ntrain:\n  epochs: 2\n")
    config = _load(str(child))
    assert config.train.epochs == 2
    assert config.model.blocks_per_stage == (1, 1, 1, 1)  # Inherited.
    assert config.model.lambda_blocks == ((), (), (1,), (1,))


def test_warmup_cosine_schedule():
    schedule = recipe.WarmupCosineDecay(1.6, warmup_steps=10, total_steps=110)
    lr = lambda step: float(schedule(step))  # noqa: E731
    assert lr(0) == 0.0
    assert lr(5) == pytest.approx(0.8)
    assert lr(10) == pytest.approx(1.6)
    assert lr(60) == pytest.approx(0.8, rel=1e-5)  # Half-way through the cosine.
    assert lr(60 + 25) == pytest.approx(0.8 * (1 + math.cos(math.pi * 0.75)), rel=1e-5)
    assert lr(110) == pytest.approx(0.0, abs=1e-7)
    assert lr(150) == pytest.approx(0.0, abs=1e-7)
    restored = recipe.WarmupCosineDecay.from_config(schedule.get_config())
    assert float(restored(37)) == lr(37)


def test_coupled_weight_decay_gradient_is_wd_times_kernel():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(5, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(2)(x)
    model = keras.Model(inputs, outputs)
    assert optimization.apply_coupled_weight_decay(model, 1e-2) == 2  # Conv + dense kernels.
    with tf.GradientTape() as tape:
        penalty = tf.add_n(model.losses)
    weights = model.trainable_weights
    gradients = tape.gradient(penalty, [w.value for w in weights])
    for weight, gradient in zip(weights, gradients):
        if len(weight.shape) >= 2:
            np.testing.assert_allclose(gradient, 1e-2 * weight.numpy(), rtol=1e-6)
        else:  # BN gamma/beta and the dense bias are not decayed.
            assert gradient is None


def test_smoothed_cross_entropy_and_top_k():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], np.float32)
    labels = np.array([0, 1])
    loss = recipe.SmoothedCrossEntropy(3, label_smoothing=0.3)
    targets = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]])
    expected = -np.mean(np.sum(targets * np.log(probabilities), axis=1))
    assert float(loss(labels, probabilities)) == pytest.approx(expected, rel=1e-5)
    soft = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], np.float32)  # Mixup labels.
    expected_soft = -np.mean(np.sum(soft * np.log(probabilities), axis=1))
    assert float(loss(soft, probabilities)) == pytest.approx(expected_soft, rel=1e-5)
    top1, top2 = recipe.TopKAccuracy(1), recipe.TopKAccuracy(2)
    top1.update_state(labels, probabilities)
    top2.update_state(labels, probabilities)
    assert (float(top1.result()), float(top2.result())) == (0.5, 1.0)
    assert top1.name == "top1"


def test_batch_not_divisible_by_replicas_fails_naming_the_key():
    config = _load("demo", "input.global_batch_size=63")
    with pytest.raises(ConfigError, match=r"input.global_batch_size=63: not divisible by the 2"):
        experiment.check_batch_sizes(config, 2)
    config = _load("demo", "input.eval_global_batch_size=75")
    with pytest.raises(ConfigError, match=r"input.eval_global_batch_size=75"):
        experiment.check_batch_sizes(config, 2)
    experiment.check_batch_sizes(_load("demo"), 2)  # 64 is fine.


def test_multi_replica_steps_per_execution_and_xla_are_rejected():
    strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
    config = _load("demo", "train.steps_per_execution=4")
    with pytest.raises(ConfigError, match="train.steps_per_execution=4"):
        experiment.resolve_steps_per_execution(config, strategy)
    assert experiment.resolve_steps_per_execution(config, tf.distribute.get_strategy()) == 4
    assert experiment.resolve_steps_per_execution(_load("demo"), strategy) == 1
    with pytest.raises(ConfigError, match="runtime.jit_compile=true"):
        experiment.build_and_compile(_load("demo", "runtime.jit_compile=true"), strategy)


def test_cli_fails_fast_and_clearly(tmp_path, capsys, monkeypatch):
    common = ["--config", "demo", "--data_dir", str(tmp_path / "data"),
              "--model_dir", str(tmp_path / "model")]
    start = time.perf_counter()
    assert train.main(common + ["--strategy", "tpu"]) == 2
    assert time.perf_counter() - start < 10
    assert "--strategy tpu: no TPU found" in capsys.readouterr().err

    assert train.main(common + ["--set", "train.epochs=-1"]) == 2
    assert "Invalid config train.epochs=-1" in capsys.readouterr().err

    # An install without the serving extra fails before training, not after.
    monkeypatch.setattr(train.importlib.util, "find_spec", lambda name: None)
    assert train.main(common + ["--export_dir", str(tmp_path / "export")]) == 2
    assert "tensorflow-serving-api" in capsys.readouterr().err
    monkeypatch.undo()

    assert train.main(["--config", "lambda_resnet50_vanilla_90ep",
                       "--model_dir", str(tmp_path)]) == 2
    assert "data_dir=''" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()  # Nothing was started.


def test_multi_worker_patch_is_version_guarded_and_transparent_elsewhere():
    assert compat.needs_multi_worker_patch((3, 15))
    assert not compat.needs_multi_worker_patch((3, 16))
    assert not compat.needs_multi_worker_patch((2, 15))
    assert compat.patch_keras_for_multi_worker() and compat.is_patched()
    # Outside MWMS the patched reduction is Keras' own.
    strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
    values = strategy.run(lambda: tf.cast(
        tf.distribute.get_replica_context().replica_id_in_sync_group, tf.float32) + 1.0)
    assert float(tf_trainer.reduce_per_replica(values, strategy, "auto")) == 1.5
    assert float(tf_trainer.reduce_per_replica(values, strategy, "sum")) == 3.0
