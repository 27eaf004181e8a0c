"""Tests of the TFDS source of the input pipeline, offline.

Two fixtures: `tfds.testing.mock_data` (random examples generated from the builder's
feature spec) and a real-format `imagenet2012` build from tiny fake ILSVRC2012 tars
laid out as TFDS's manual download expects, which TFDS prepares exactly as it would
the real ones.
"""

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from training.input_config import InputConfig
from training.input_pipeline import build_dataset
import tensorflow_datasets as tfds

TRAIN_SYNSETS = {"n01440764": 0, "n01443537": 1}  # ImageNet labels 0 and 1
# ILSVRC2012_val_00000001..3 are labelled 65, 970 and 230 in TFDS's validation_labels.txt.
VALIDATION_LABELS = [65, 970, 230]


def test_mock_imagenet2012_through_the_pipeline(tmp_path):
    config = InputConfig(
        source="tfds", tfds_name="imagenet2012", tfds_data_dir=str(tmp_path),
        image_size=32, global_batch_size=4, eval_crop_padding=4, shuffle_buffer_size=8,
    )
    with tfds.testing.mock_data(num_examples=8, data_dir=str(tmp_path)):
        expected = [
            int(example["label"])
            for example in tfds.load("imagenet2012", split="validation", data_dir=str(tmp_path))
        ]
        batches = [(x.numpy(), y.numpy()) for x, y in build_dataset(config, "validation")]
        images, labels = zip(*batches)
        train_images, train_labels = next(iter(build_dataset(config, "train")))
    # TFDS labels are 0..999 already: the default offset for source "tfds" is 0.
    np.testing.assert_array_equal(np.concatenate(labels), expected)
    assert np.concatenate(images).shape == (8, 32, 32, 3)
    assert train_images.shape == (4, 32, 32, 3)
    assert ((train_labels.numpy() >= 0) & (train_labels.numpy() < 1000)).all()


def tiny_jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def add_to_tar(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def fake_imagenet_tars(tmp_path_factory):
    """The manual_dir of a 4-train, 3-validation imagenet2012."""
    manual_dir = tmp_path_factory.mktemp("manual")
    with tarfile.open(manual_dir / "ILSVRC2012_img_train.tar", "w") as train_tar:
        for synset in TRAIN_SYNSETS:
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as class_tar:
                for i in range(2):
                    add_to_tar(class_tar, f"{synset}_{i}.JPEG", tiny_jpeg(len(synset) + i))
            add_to_tar(train_tar, f"{synset}.tar", inner.getvalue())
    with tarfile.open(manual_dir / "ILSVRC2012_img_val.tar", "w") as val_tar:
        for i in range(1, 4):
            add_to_tar(val_tar, f"ILSVRC2012_val_{i:08d}.JPEG", tiny_jpeg(100 + i))
    return str(manual_dir)


def test_imagenet2012_prepared_from_manual_tars(fake_imagenet_tars, tmp_path):
    config = InputConfig(
        source="tfds", tfds_name="imagenet2012", tfds_data_dir=str(tmp_path / "data"),
        tfds_manual_dir=fake_imagenet_tars, image_size=16, eval_crop_padding=2,
        global_batch_size=2, num_classes=1000, shuffle_buffer_size=4,
    )
    validation = np.concatenate([y.numpy() for _, y in build_dataset(config, "validation")])
    assert sorted(validation) == sorted(VALIDATION_LABELS)

    train_images, train_labels = next(iter(build_dataset(config, "train")))
    assert train_images.shape == (2, 16, 16, 3)
    assert set(train_labels.numpy()) <= set(TRAIN_SYNSETS.values())

    # The same files read as raw TFRecords: TFDS's keys, 0-based labels.
    records_dir = tmp_path / "data" / "imagenet2012" / "5.1.0"
    tfrecord_config = InputConfig(
        data_dir=str(records_dir), eval_file_pattern="imagenet2012-validation.tfrecord-*",
        image_key="image", label_key="label", label_offset=0, image_size=16,
        eval_crop_padding=2, global_batch_size=2, num_classes=1000,
    )
    raw = np.concatenate([y.numpy() for _, y in build_dataset(tfrecord_config, "validation")])
    np.testing.assert_array_equal(raw, validation)


def test_tfds_minival_needs_a_split(tmp_path):
    config = InputConfig(source="tfds", tfds_data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="tfds_minival_split"):
        build_dataset(config, "minival")


# ---------------------------------------------------------------- user errors: one line, before any write


def run_train(tmp_path, capfd, *overrides):
    """`training.train.main` on a TFDS source; (its exit status, its error lines, model_dir)."""
    from training import train  # pylint: disable=import-outside-toplevel

    model_dir = tmp_path / "model"
    argv = ["--config", "demo", "--model_dir", str(model_dir), "--set", "demo_data=false",
            "--set", "input.source=tfds", "--set", "input.label_offset=0", "--set", "input.num_classes=1000",
            "--set", f"input.tfds_data_dir={tmp_path / 'tfds'}"]
    for override in overrides:
        argv += ["--set", override]
    capfd.readouterr()
    status = train.main(argv)
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    return status, [line for line in err.splitlines() if "error:" in line], model_dir


@pytest.mark.parametrize("overrides, expected", [
    (["input.tfds_name=no_such_dataset_xyz"], "input.tfds_name='no_such_dataset_xyz': no such TFDS dataset"),
    (["input.tfds_name=imdb_reviews"], 'reads an encoded JPEG "image" (tfds.features.Image) and an integer "label"'),
    (["input.tfds_name=imagenet2012"], "is not prepared in"),
])
def test_tfds_dataset_errors_are_one_line_before_any_write(tmp_path, capfd, overrides, expected):
    status, errors, model_dir = run_train(tmp_path, capfd, *overrides)
    assert status == 2 and len(errors) == 1 and expected in errors[0], errors
    if "not prepared" in expected:
        assert "set input.tfds_prepare=true" in errors[0] and "input.tfds_manual_dir" in errors[0]
    assert not model_dir.exists()
    # Nothing was downloaded or prepared to find out.
    assert not (tmp_path / "tfds").exists() or not any(path.is_file() for path in (tmp_path / "tfds").rglob("*"))


@pytest.mark.parametrize("overrides, expected", [
    (["input.tfds_eval_split=val"], "input.tfds_eval_split='val': not a split of TFDS dataset 'imagenet2012'"),
    (["input.tfds_train_split=train[:x]"], "input.tfds_train_split='train[:x]': not a split"),
    # The split sizes and the label feature feed the preflight's checks (4 train examples, 1000 classes).
    (["input.global_batch_size=8"], "the train split has 4 records, fewer than one training step needs"),
    (["input.num_classes=10"], "class ids 0..999 after input.label_offset, outside [0, 10)"),
])
def test_tfds_split_and_size_errors_are_one_line_before_any_write(fake_imagenet_tars, tmp_path, capfd, overrides,
                                                                  expected):
    status, errors, model_dir = run_train(tmp_path, capfd, "input.tfds_name=imagenet2012",
                                          f"input.tfds_manual_dir={fake_imagenet_tars}", *overrides)
    assert status == 2 and len(errors) == 1 and expected in errors[0], errors
    assert not model_dir.exists()
