"""Tests of the tf.data input pipeline (training/input_pipeline.py, lambda_keras/data/preprocessing.py).

The data are written here: the scikit-learn digits through `training.demo_data`
(real pixels) and generated RGB images with known content, as JPEG TFRecords in the
imagenet_to_gcs layout.
"""

import io
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from lambda_keras.data import preprocessing, records
from training import augmentation
from training.demo_data import VALIDATION_SIZE, demo_input_config, digit_images
from training.input_config import InputConfig
from training.input_pipeline import SkippedRecordCounter, build_dataset
from training.shard_set import list_files

MEAN = np.array(preprocessing.MEAN_RGB, np.float32)
STDDEV = np.array(preprocessing.STDDEV_RGB, np.float32)


# ---------------------------------------------------------------- data helpers


def jpeg_bytes(image: np.ndarray) -> bytes:
    """4:4:4 JPEG, so that cropped decoding equals cropping the full decode."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95, subsampling=0)
    return buffer.getvalue()


def generated_image(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth, left-right asymmetric RGB image: gradients plus a little noise."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack(
        [255 * cols / width, 255 * rows / height, 128 + 60 * np.sin(cols / 5.0)], -1
    ) + rng.normal(0, 4, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_records(path: str, examples) -> None:
    with tf.io.TFRecordWriter(path) as writer:
        for example in examples:
            writer.write(example.SerializeToString())


def labelled_example(encoded: bytes, label: int, name: str) -> tf.train.Example:
    return records.image_example(encoded, label, "synset", 0, 0, name)


def pil_decode(encoded: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))


def fast_idct_decode(encoded: bytes) -> np.ndarray:
    """TensorFlow's default (fast IDCT) decode, which training uses for speed."""
    return tf.io.decode_jpeg(encoded, channels=3).numpy()


def bilinear_resize(image: np.ndarray, size: int) -> np.ndarray:
    """NumPy bilinear resize with half-pixel centres (tf.image.resize's convention)."""
    image = image.astype(np.float64)

    def weights(in_size):
        scale = in_size / size
        position = (np.arange(size) + 0.5) * scale - 0.5
        floor = np.floor(position)
        lower = np.maximum(floor, 0).astype(int)
        upper = np.minimum(np.ceil(position), in_size - 1).astype(int)
        return lower, upper, position - floor

    top, bottom, y_lerp = weights(image.shape[0])
    left, right, x_lerp = weights(image.shape[1])
    x_lerp = x_lerp[None, :, None]
    upper_row = image[top][:, left] * (1 - x_lerp) + image[top][:, right] * x_lerp
    lower_row = image[bottom][:, left] * (1 - x_lerp) + image[bottom][:, right] * x_lerp
    return upper_row + (lower_row - upper_row) * y_lerp[:, None, None]


def reference_eval(image: np.ndarray, size: int, padding: int) -> np.ndarray:
    """The evaluation transform written out in NumPy."""
    height, width = image.shape[:2]
    crop = int(size / (size + padding) * min(height, width))
    top, left = (height - crop + 1) // 2, (width - crop + 1) // 2
    cropped = image[top : top + crop, left : left + crop]
    return ((bilinear_resize(cropped, size) - MEAN) / STDDEV).astype(np.float32)


def collect(dataset):
    images, labels = [], []
    for batch_images, batch_labels in dataset:
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(images), np.concatenate(labels)


# ---------------------------------------------------------------- fixtures

GENERATED_SIZES = [(48, 64), (64, 40), (50, 50), (61, 75), (80, 33), (40, 40)]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Two shards of generated images; labels 1..6 stored, 0..5 after the offset."""
    path = str(tmp_path_factory.mktemp("generated"))
    encoded = [jpeg_bytes(generated_image(h, w, i)) for i, (h, w) in enumerate(GENERATED_SIZES)]
    examples = [labelled_example(e, i + 1, f"img{i}") for i, e in enumerate(encoded)]
    write_records(os.path.join(path, "validation-00000-of-00002"), examples[:3])
    write_records(os.path.join(path, "validation-00001-of-00002"), examples[3:])
    return path, encoded


def generated_config(path: str, **overrides) -> InputConfig:
    values = dict(
        data_dir=path, num_classes=6, image_size=24, eval_crop_padding=8,
        global_batch_size=3, interleave_cycle_length=1,
    )
    values.update(overrides)
    return InputConfig(**values)


# ---------------------------------------------------------------- evaluation


def test_eval_labels_are_exact_digits(digits_dir):
    config = demo_input_config(digits_dir, interleave_cycle_length=1)
    images, labels = collect(build_dataset(config, "validation"))
    _, digits = digit_images()
    order = np.random.default_rng(0).permutation(len(digits))
    # One file at a time, in name order: the validation digits in written order.
    np.testing.assert_array_equal(labels, digits[order[-VALIDATION_SIZE:]])
    assert labels.dtype == np.int32
    assert images.shape == (VALIDATION_SIZE, 32, 32, 3)


def test_eval_pixels_match_numpy_reference(generated):
    path, encoded = generated
    config = generated_config(path)
    images, labels = collect(build_dataset(config, "validation"))
    np.testing.assert_array_equal(labels, np.arange(6))
    for image, jpeg in zip(images, encoded):
        expected = reference_eval(pil_decode(jpeg), 24, 8)
        np.testing.assert_allclose(image, expected, atol=2e-4)


def test_eval_on_decoded_image_equals_eval_on_jpeg(generated):
    _, encoded = generated
    for jpeg in encoded:
        from_bytes = preprocessing.preprocess_for_eval(tf.constant(jpeg), 24, 8)
        from_pixels = preprocessing.preprocess_decoded_for_eval(pil_decode(jpeg), 24, 8)
        np.testing.assert_allclose(from_bytes.numpy(), from_pixels.numpy(), atol=1e-5)


def test_output_dtype_follows_keras_policy(generated):
    path, encoded = generated
    keras.config.set_dtype_policy("mixed_bfloat16")
    dataset = build_dataset(generated_config(path), "validation")
    images, _ = next(iter(dataset))
    assert images.dtype == tf.bfloat16
    expected = reference_eval(pil_decode(encoded[0]), 24, 8)
    np.testing.assert_allclose(
        images[0].numpy().astype(np.float32), expected, atol=0.02, rtol=0.01
    )


# ---------------------------------------------------------------- training


def test_inception_crop_windows_inside_configured_ranges():
    height, width = 120, 160
    area_range, aspect_range = (0.08, 1.0), (3 / 4, 4 / 3)
    windows = next(iter(tf.data.Dataset.range(300).map(
        lambda _: preprocessing.inception_crop_window(
            tf.constant([height, width, 3]), area_range, aspect_range, 10, 32, 4
        )).batch(300))).numpy()
    top, left, crop_h, crop_w = windows.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + crop_h <= height).all() and (left + crop_w <= width).all()
    # Rounding to whole pixels moves area and aspect by at most one pixel per side.
    area = crop_h * crop_w / (height * width)
    assert (area >= area_range[0] - (crop_h + crop_w) / (height * width)).all()
    assert ((crop_w + 1) / np.maximum(crop_h - 1, 1) >= aspect_range[0]).all()
    assert ((crop_w - 1) / (crop_h + 1) <= aspect_range[1]).all()
    # Random: many different windows, small and large.
    assert len({tuple(w) for w in windows}) > 250
    assert area.min() < 0.2 and area.max() > 0.8


def test_inception_crop_falls_back_to_center_crop():
    # No window with width/height >= 3 covers 90% of a square image.
    window = preprocessing.inception_crop_window(
        tf.constant([60, 60, 3]), (0.9, 1.0), (3.0, 4.0), 10, 32, 4
    )
    crop = int(32 / 36 * 60)
    np.testing.assert_array_equal(window.numpy(), [(60 - crop + 1) // 2] * 2 + [crop] * 2)


def test_train_image_is_the_sampled_crop_resized(generated, monkeypatch):
    _, encoded = generated
    window = [5, 9, 30, 40]  # offset_y, offset_x, height, width inside 48x64
    monkeypatch.setattr(
        preprocessing, "inception_crop_window", lambda *args: tf.constant(window)
    )
    image = preprocessing.preprocess_for_train(tf.constant(encoded[0]), 24, random_flip=False)
    decoded = fast_idct_decode(encoded[0])[5:35, 9:49]
    expected = (bilinear_resize(decoded, 24) - MEAN) / STDDEV
    np.testing.assert_allclose(image.numpy(), expected, atol=2e-4)


def test_random_flip_gives_both_orientations(generated, monkeypatch):
    _, encoded = generated
    monkeypatch.setattr(
        preprocessing, "inception_crop_window", lambda *args: tf.constant([0, 0, 48, 64])
    )
    expected = (bilinear_resize(fast_idct_decode(encoded[0]), 24) - MEAN) / STDDEV
    flip = tf.function(lambda x: preprocessing.preprocess_for_train(x, 24, random_flip=True))
    flipped = []
    for _ in range(30):
        image = flip(tf.constant(encoded[0])).numpy()
        is_flipped = np.allclose(image, expected[:, ::-1], atol=2e-4)
        assert is_flipped or np.allclose(image, expected, atol=2e-4)
        flipped.append(is_flipped)
    assert 0 < sum(flipped) < 30


def test_train_batches_static_per_replica_shape(digits_dir):
    config = demo_input_config(digits_dir, global_batch_size=64)
    context = tf.distribute.InputContext(1, 0, num_replicas_in_sync=4)
    dataset = build_dataset(config, "train", context)
    assert dataset.element_spec[0].shape == (16, 32, 32, 3)
    assert dataset.element_spec[1].shape == (16,)
    for images, labels in dataset.take(30):  # 480 > 1500 / ... crosses shard ends
        assert images.shape == (16, 32, 32, 3)
        assert labels.numpy().min() >= 0 and labels.numpy().max() <= 9


def test_batch_not_divisible_by_replicas_names_both():
    config = InputConfig(data_dir="unused", global_batch_size=30)
    context = tf.distribute.InputContext(1, 0, num_replicas_in_sync=4)
    with pytest.raises(ValueError, match="30 is not divisible by the 4 replicas"):
        build_dataset(config, "train", context)


def test_randaugment_wiring(generated, monkeypatch):
    path, _ = generated
    config = generated_config(path, use_randaugment=True, randaugment_magnitude=7.0)
    distort = augmentation.build_randaugment(config)
    assert distort.__self__.num_layers == 2 and distort.__self__.magnitude == 7.0
    assert augmentation.build_randaugment(generated_config(path)) is None

    calls = []

    def recording_distort(image):
        calls.append(image)
        return tf.zeros_like(image)  # A black image: easy to recognise downstream.

    monkeypatch.setattr(augmentation, "build_randaugment", lambda cfg: recording_distort)
    config = generated_config(path, use_randaugment=True, train_file_pattern="validation-*")
    images, _ = next(iter(build_dataset(config, "train")))
    assert calls and calls[0].dtype == tf.float32 and calls[0].shape == (24, 24, 3)
    black = np.broadcast_to(-MEAN / STDDEV, images.shape)
    np.testing.assert_allclose(images.numpy(), black, atol=1e-5)


def test_randaugment_changes_images(generated, monkeypatch):
    _, encoded = generated
    monkeypatch.setattr(
        preprocessing, "inception_crop_window", lambda *args: tf.constant([0, 0, 48, 64])
    )
    config = InputConfig(data_dir="unused", use_randaugment=True, randaugment_magnitude=10.0)
    augment_fn = augmentation.build_randaugment(config)
    outputs = tf.data.Dataset.from_tensors(encoded[0]).repeat(24).map(
        lambda x: preprocessing.preprocess_for_train(
            x, 24, random_flip=False, augment_fn=augment_fn)).batch(24)
    outputs = next(iter(outputs)).numpy()
    plain = preprocessing.preprocess_for_train(tf.constant(encoded[0]), 24, random_flip=False)
    changed = [not np.allclose(out, plain.numpy(), atol=1e-3) for out in outputs]
    # Each of the 2 layers is the identity or skipped about half the time, so about
    # 3 in 4 images change; 8 of 24 fails with probability ~1e-5.
    assert sum(changed) >= 8
    for out in outputs:  # Still inside the normalised [0, 255] range.
        assert (out >= (-MEAN / STDDEV).min() - 1e-4).all()
        assert (out <= ((255 - MEAN) / STDDEV).max() + 1e-4).all()


def test_mixup_cutmix_gives_soft_labels(digits_dir):
    config = demo_input_config(digits_dir, mixup_alpha=0.8, cutmix_alpha=1.0, global_batch_size=16)
    images, labels = next(iter(build_dataset(config, "train")))
    assert images.dtype == tf.float32 and labels.shape == (16, 10)
    np.testing.assert_allclose(labels.numpy().sum(axis=1), 1.0, rtol=1e-5)
    assert (labels.numpy().max(axis=1) < 1.0).any()


# ---------------------------------------------------------------- sharding and splits


def test_two_input_pipelines_read_every_file_once(digits_dir):
    config = demo_input_config(digits_dir)
    contexts = [tf.distribute.InputContext(2, i, num_replicas_in_sync=2) for i in range(2)]
    per_host = [list_files(config, "train", context) for context in contexts]
    all_files = list_files(config, "train")
    assert len(all_files) == 8
    assert sorted(per_host[0] + per_host[1]) == all_files
    assert not set(per_host[0]) & set(per_host[1])

    labels = [collect(build_dataset(config, "validation", c))[1] for c in contexts]
    _, digits = digit_images()
    expected = np.sort(digits[np.random.default_rng(0).permutation(len(digits))[-VALIDATION_SIZE:]])
    np.testing.assert_array_equal(np.sort(np.concatenate(labels)), expected)
    assert all(len(host_labels) > 100 for host_labels in labels)


def test_more_hosts_than_files_is_an_error(generated):
    path, _ = generated
    context = tf.distribute.InputContext(3, 0, num_replicas_in_sync=3)
    with pytest.raises(ValueError, match="2 files .* cannot be shared between 3"):
        list_files(generated_config(path), "validation", context)


def test_minival_holds_out_last_training_shards(digits_dir):
    config = demo_input_config(digits_dir, minival_num_shards=2)
    train, minival = list_files(config, "train"), list_files(config, "minival")
    assert [os.path.basename(f) for f in minival] == [
        "train-00006-of-00008", "train-00007-of-00008"]
    assert len(train) == 6 and not set(train) & set(minival)
    _, labels = collect(build_dataset(config, "minival"))
    assert len(labels) == 2 * 187  # 1500 digits in 8 shards: 4 of 188, then 4 of 187
    with pytest.raises(ValueError, match="minival_num_shards"):
        list_files(demo_input_config(digits_dir), "minival")


def test_empty_glob_and_missing_directory_name_the_pattern(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        list_files(InputConfig(data_dir=str(tmp_path / "does-not-exist")), "train")
    with pytest.raises(FileNotFoundError, match=r"No TFRecord files match .*train-\*"):
        build_dataset(InputConfig(data_dir=str(tmp_path)), "train")


# ---------------------------------------------------------------- bad records


@pytest.fixture(scope="module")
def corrupt_dir(tmp_path_factory):
    """6 good images, 4 unusable records: truncated, not JPEG, PNG, no image key."""
    path = str(tmp_path_factory.mktemp("corrupt"))
    good = [jpeg_bytes(generated_image(40, 40, i)) for i in range(6)]
    png = io.BytesIO()
    Image.fromarray(generated_image(40, 40, 9)).save(png, format="PNG")
    no_image = tf.train.Example(features=tf.train.Features(feature={
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[3])),
    }))
    examples = [
        labelled_example(good[0], 1, "good0"),
        labelled_example(good[1][: len(good[1]) // 2], 2, "truncated"),
        labelled_example(good[1], 2, "good1"),
        labelled_example(b"this is not an image", 3, "text"),
        labelled_example(good[2], 3, "good2"),
        labelled_example(png.getvalue(), 4, "png"),
        labelled_example(good[3], 4, "good3"),
        no_image,
        labelled_example(good[4], 5, "good4"),
        labelled_example(good[5], 6, "good5"),
    ]
    write_records(os.path.join(path, "validation-00000-of-00001"), examples)
    return path


def test_corrupt_records_are_skipped_and_counted(corrupt_dir):
    counter = SkippedRecordCounter()
    dataset = build_dataset(generated_config(corrupt_dir), "validation", skipped_records=counter)
    images, labels = collect(dataset)
    np.testing.assert_array_equal(labels, [0, 1, 2, 3, 4, 5])
    assert counter.count == 4
    assert np.isfinite(images).all() and (np.abs(images).sum(axis=(1, 2, 3)) > 0).all()
    collect(dataset)  # A second pass counts its own skips.
    assert counter.count == 4
    counter.reset()
    assert counter.count == 0
    # Without a counter of the caller's, the dataset carries its own.
    dataset = build_dataset(generated_config(corrupt_dir), "validation")
    collect(dataset)
    assert dataset.skipped_records.count == 4


def test_fail_fast_on_corrupt_record_names_the_file(corrupt_dir):
    config = generated_config(corrupt_dir, skip_corrupt_records=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Corrupt record.*validation-00000"):
        collect(build_dataset(config, "validation"))


def test_label_out_of_range_names_the_label(tmp_path):
    encoded = jpeg_bytes(generated_image(30, 30, 0))
    write_records(
        str(tmp_path / "validation-00000-of-00001"),
        [labelled_example(encoded, 3, "ok"), labelled_example(encoded, 9, "bad")],
    )
    config = generated_config(str(tmp_path), num_classes=5)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Label out of range.*\b9\b"):
        collect(build_dataset(config, "validation"))
    # TFDS-style 0-based labels read with the imagenet_to_gcs offset: label 0 -> -1.
    write_records(
        str(tmp_path / "validation-00000-of-00001"), [labelled_example(encoded, 0, "zero")]
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="label_offset -1"):
        collect(build_dataset(config, "validation"))


# ---------------------------------------------------------------- config and demo data


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match=r"Unknown input config key\(s\) \['imagesize'\]"):
        InputConfig.from_dict({"data_dir": "x", "imagesize": 224})
    with pytest.raises(ValueError, match="crop_area_range=.*0 < low <= high <= 1"):
        InputConfig(data_dir="x", crop_area_range=[0.5, 1.5])
    with pytest.raises(ValueError, match="source='hdf5'"):
        InputConfig(data_dir="x", source="hdf5")
    with pytest.raises(ValueError, match="data_dir=''"):
        InputConfig()
    config = InputConfig.from_dict({"data_dir": "x", "crop_area_range": [0.1, 1.0]})
    assert config.crop_area_range == (0.1, 1.0)
    assert config.resolved_label_offset == -1
    assert config.replace(source="tfds").resolved_label_offset == 0


def test_config_default_keys_are_the_record_schema():
    # InputConfig restates the keys as strings (it imports no TensorFlow); they must not drift.
    config = InputConfig(data_dir="x")
    assert (config.image_key, config.label_key) == (records.IMAGE_KEY, records.LABEL_KEY)


def test_demo_data_holds_the_digits(digits_dir):
    images, digits = digit_images()
    order = np.random.default_rng(0).permutation(len(digits))[-VALIDATION_SIZE:]
    files = sorted(tf.io.gfile.glob(os.path.join(digits_dir, "validation-*")))
    records = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files)]
    assert len(records) == VALIDATION_SIZE
    for index, record in zip(order, records):
        features = record.features.feature
        assert features["image/class/label"].int64_list.value[0] == digits[index] + 1
        decoded = pil_decode(features["image/encoded"].bytes_list.value[0])
        assert decoded.shape == (32, 32, 3)
        assert np.abs(decoded.astype(int) - images[index]).mean() < 4


def test_distribute_datasets_from_function_counts_skips(corrupt_dir):
    strategy = tf.distribute.MirroredStrategy(["CPU:0"])
    counter = SkippedRecordCounter()  # Outside strategy.scope(): a host variable.
    config = generated_config(corrupt_dir)
    distributed = strategy.distribute_datasets_from_function(
        lambda context: build_dataset(config, "validation", context, skipped_records=counter)
    )
    labels = [batch_labels.numpy() for _, batch_labels in distributed]
    np.testing.assert_array_equal(np.concatenate(labels), [0, 1, 2, 3, 4, 5])
    assert counter.count == 4
