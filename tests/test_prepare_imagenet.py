"""Tests of the ImageNet-folder to TFRecord converter (training/prepare_imagenet.py).

A miniature ImageNet folder is written here from the scikit-learn digits (real pixels):
three synsets of training images, a validation folder with its labels file, plus the
reference's awkward cases (a PNG and a CMYK JPEG named .JPEG) and an unreadable file.
"""

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from lambda_keras.data import manifest
from lambda_keras.data.records import ShardSetError
from training import prepare_imagenet, shard_set
from training.folder_lock import held_exclusively
from training.demo_data import digit_images
from training.input_config import InputConfig
from training.input_pipeline import build_dataset

SYNSETS = ["n01440764", "n01443537", "n01484850"]
TRAIN_PER_CLASS = 5
NUM_VALIDATION = 6


def save(image: np.ndarray, path, image_format="JPEG", mode="RGB"):
    Image.fromarray(image).convert(mode).save(path, format=image_format)


@pytest.fixture()
def imagenet_dir(tmp_path):
    """Returns (input dir, {file name: (digit image, expected label)})."""
    images, digits = digit_images(48)
    root = tmp_path / "imagenet"
    expected = {}
    index = 0
    for label, synset in enumerate(SYNSETS, start=1):
        (root / "train" / synset).mkdir(parents=True)
        for i in range(TRAIN_PER_CLASS):
            name = f"{synset}_{i}.JPEG"
            save(images[index], root / "train" / synset / name)
            expected[name] = (images[index], label)
            index += 1
    save(images[index], root / "train" / SYNSETS[0] / "n01440764_png.JPEG", "PNG")
    expected["n01440764_png.JPEG"] = (images[index], 1)
    save(images[index + 1], root / "train" / SYNSETS[1] / "n01443537_cmyk.JPEG", mode="CMYK")
    expected["n01443537_cmyk.JPEG"] = (images[index + 1], 2)
    (root / "train" / SYNSETS[2] / "n01484850_broken.JPEG").write_bytes(b"\xff\xd8\xffnot a jpeg")
    index += 2
    (root / "val").mkdir()
    validation_synsets = []
    for i in range(NUM_VALIDATION):
        name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        synset_index = int(digits[index]) % 3
        save(images[index], root / "val" / name)
        expected[name] = (images[index], synset_index + 1)
        validation_synsets.append(SYNSETS[synset_index])
        index += 1
    (root / "synset_labels.txt").write_text("\n".join(validation_synsets) + "\n")
    return str(root), expected


def read_records(pattern):
    files = sorted(tf.io.gfile.glob(pattern))
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files)]


def feature(example, key):
    value = example.features.feature[key]
    return value.int64_list.value[0] if value.int64_list.value else value.bytes_list.value[0]


def test_round_trip(imagenet_dir, tmp_path):
    input_dir, expected = imagenet_dir
    output = str(tmp_path / "records")
    assert prepare_imagenet.main([
        "--input", input_dir, "--output", output, "--train_shards", "4",
        "--validation_shards", "2", "--num_workers", "2",
    ]) == 0
    names = sorted(os.listdir(output))
    assert names == [".lock", "conversion_plan.json", "manifest.json", "synsets.txt"] + [
        f"train-0000{i}-of-00004" for i in range(4)] + [
        "validation-00000-of-00002", "validation-00001-of-00002"]
    assert open(os.path.join(output, "synsets.txt")).read().split() == SYNSETS
    written = manifest.read_manifest(output)
    assert written.classes == tuple(SYNSETS) and written.first_label == 1
    assert [shard.name for shard in written.splits["train"]] == [f"train-0000{i}-of-00004" for i in range(4)]
    assert sum(shard.num_records for shard in written.splits["train"]) == 3 * TRAIN_PER_CLASS + 2
    assert shard_set.verify_shards(output) == []

    records = read_records(os.path.join(output, "*-of-*"))
    assert len(records) == 3 * TRAIN_PER_CLASS + 2 + NUM_VALIDATION  # broken file skipped
    for record in records:
        name = feature(record, "image/filename").decode()
        image, label = expected[name]
        assert feature(record, "image/class/label") == label
        assert feature(record, "image/class/synset").decode() == SYNSETS[label - 1]
        assert feature(record, "image/format") == b"JPEG"
        encoded = feature(record, "image/encoded")
        assert encoded[:3] == b"\xff\xd8\xff"  # PNG and CMYK were re-encoded as JPEG
        decoded = np.asarray(Image.open(io.BytesIO(encoded)))
        assert decoded.shape == (48, 48, 3)
        assert (feature(record, "image/height"), feature(record, "image/width")) == (48, 48)
        assert np.abs(decoded.astype(int) - image).mean() < 4

    # Training files are shuffled before sharding: classes mix within a shard.
    first_shard = read_records(os.path.join(output, "train-00000-of-00004"))
    assert len({feature(r, "image/class/label") for r in first_shard}) > 1

    # The pipeline reads the result with the default (imagenet_to_gcs) settings.
    config = InputConfig(data_dir=output, num_classes=3, image_size=32, global_batch_size=4)
    labels = np.concatenate([y.numpy() for _, y in build_dataset(config, "validation")])
    validation = sorted(n for n in expected if n.startswith("ILSVRC"))
    assert sorted(labels) == sorted(expected[n][1] - 1 for n in validation)


def test_kaggle_validation_labels(imagenet_dir, tmp_path):
    """Kaggle's LOC_val_solution.csv: rows in any order, the first synset of each
    PredictionString (box coordinates follow it) is the label."""
    input_dir, expected = imagenet_dir
    validation = sorted(name for name in expected if name.startswith("ILSVRC"))
    rows = [f"{name[:-5]},{SYNSETS[expected[name][1] - 1]} 12 7 40 44 {SYNSETS[0]} 1 2 3 4"
            for name in reversed(validation)]
    labels_file = tmp_path / "LOC_val_solution.csv"
    labels_file.write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    os.remove(os.path.join(input_dir, "synset_labels.txt"))
    output = str(tmp_path / "records")
    assert prepare_imagenet.main([
        "--input", input_dir, "--output", output, "--train_shards", "2",
        "--validation_shards", "1", "--num_workers", "1", "--validation_labels", str(labels_file),
    ]) == 0
    records = read_records(os.path.join(output, "validation-*"))
    assert {feature(r, "image/filename").decode(): feature(r, "image/class/label") for r in records} == {
        name: expected[name][1] for name in validation
    }


def test_summary_reports_reencoded_and_unreadable(imagenet_dir, tmp_path):
    input_dir, _ = imagenet_dir
    summaries = prepare_imagenet.convert(input_dir, str(tmp_path / "out"), 2, 1, num_workers=1)
    train = summaries["train"]
    assert train.images_written == 3 * TRAIN_PER_CLASS + 2
    assert train.reencoded == {"png": 1, "cmyk": 1}
    assert [os.path.basename(line.split(":")[0]) for line in train.skipped] == ["n01484850_broken.JPEG"]
    assert (train.shards_written, train.shards_already_complete) == (2, 0)
    assert summaries["validation"].images_written == NUM_VALIDATION
    text = prepare_imagenet.format_summary(summaries)
    assert "skipped 1 unreadable" in text and "n01484850_broken.JPEG" in text


def test_resume_skips_complete_shards_and_removes_partial_ones(imagenet_dir, tmp_path):
    input_dir, _ = imagenet_dir
    output = tmp_path / "out"
    prepare_imagenet.convert(input_dir, str(output), 4, 2, num_workers=2)
    contents = {p.name: p.read_bytes() for p in output.iterdir()}
    (output / "train-00002-of-00004").unlink()
    (output / "train-00002-of-00004.tmp-deadbeef").write_bytes(b"half a shard")

    summaries = prepare_imagenet.convert(input_dir, str(output), 4, 2, num_workers=2)
    assert (summaries["train"].shards_written, summaries["train"].shards_already_complete) == (1, 3)
    assert summaries["validation"].shards_already_complete == 2
    # Same seed, same shard contents; the stale temporary file is gone.
    assert {p.name: p.read_bytes() for p in output.iterdir()} == contents


def test_interrupted_shard_leaves_no_file(imagenet_dir, tmp_path, monkeypatch):
    input_dir, _ = imagenet_dir
    output = tmp_path / "out"
    calls = []
    original = prepare_imagenet.image_example

    def failing_example(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated interruption")
        return original(*args)

    monkeypatch.setattr(prepare_imagenet, "image_example", failing_example)
    with pytest.raises(KeyboardInterrupt):
        prepare_imagenet.convert(input_dir, str(output), 1, 1, num_workers=1)
    assert sorted(p.name for p in output.iterdir()) == [".lock", "conversion_plan.json", "synsets.txt"]


def test_missing_input_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="train"):
        prepare_imagenet.convert(str(tmp_path), str(tmp_path / "out"))
    (tmp_path / "train" / "n01").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="validation folder"):
        prepare_imagenet.convert(str(tmp_path), str(tmp_path / "out"))


@pytest.mark.parametrize("flag, value", [("--train_shards", "0"), ("--train_shards", "-3"),
                                         ("--validation_shards", "0"), ("--num_workers", "x")])
def test_shard_counts_below_one_are_refused(imagenet_dir, tmp_path, capsys, flag, value):
    output = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        prepare_imagenet.main(["--input", str(imagenet_dir), "--output", str(output), flag, value])
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err
    assert not output.exists()  # nothing written
    with pytest.raises(ValueError, match="train_shards"):
        prepare_imagenet.convert(str(imagenet_dir), str(output), train_shards=0)


def test_resuming_with_another_seed_or_input_is_refused(imagenet_dir, tmp_path, capsys):
    input_dir, _ = imagenet_dir
    output = tmp_path / "out"
    prepare_imagenet.convert(input_dir, str(output), 4, 2, num_workers=2)
    (output / "train-00002-of-00004").unlink()  # as if killed before that shard was written
    contents = {p.name: p.read_bytes() for p in output.iterdir()}

    # Another seed puts other images into the missing shard: some would be read twice.
    assert prepare_imagenet.main(["--input", input_dir, "--output", str(output), "--train_shards", "4",
                                  "--validation_shards", "2", "--seed", "1"]) == 2
    error = capsys.readouterr().err
    assert "holds shards of another conversion" in error and "train_order_sha256" in error
    assert "validation_order_sha256" not in error
    # So does an input folder that gained an image since.
    save(np.zeros((48, 48, 3), np.uint8), os.path.join(input_dir, "train", SYNSETS[0], "new.JPEG"))
    with pytest.raises(ShardSetError, match="train_images, train_order_sha256"):
        prepare_imagenet.convert(input_dir, str(output), 4, 2, num_workers=2)
    assert {p.name: p.read_bytes() for p in output.iterdir()} == contents  # nothing touched


def test_a_second_conversion_into_the_same_folder_is_refused(imagenet_dir, tmp_path, capsys):
    input_dir, _ = imagenet_dir
    output = tmp_path / "out"
    with held_exclusively(str(output), "conversion"):
        assert prepare_imagenet.main(["--input", input_dir, "--output", str(output), "--train_shards", "2",
                                      "--validation_shards", "1"]) == 2
    assert f"{output} is in use by a conversion (pid {os.getpid()})" in capsys.readouterr().err
    assert [p.name for p in output.iterdir()] == [".lock"]
    # Released: the next conversion runs.
    assert prepare_imagenet.main(["--input", input_dir, "--output", str(output), "--train_shards", "2",
                                  "--validation_shards", "1"]) == 0


def test_full_disk_fails_in_one_line_and_leaves_only_complete_shards(imagenet_dir, small_disk, capsys):
    input_dir, _ = imagenet_dir
    output = small_disk("32k") / "out"
    arguments = ["--input", input_dir, "--output", str(output), "--train_shards", "8",
                 "--validation_shards", "1", "--num_workers", "1"]
    assert prepare_imagenet.main(arguments) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("python -m training.prepare_imagenet: error:") and "No space left on device" in error
    assert len(error.splitlines()) == 1
    names = sorted(p.name for p in output.iterdir())
    assert "manifest.json" not in names and not [n for n in names if ".tmp-" in n]
    shards = [n for n in names if n.startswith("train-")]
    assert 0 < len(shards) < 8
    for name in shards:  # every shard left is complete: each of its records reads
        assert sum(1 for _ in tf.data.TFRecordDataset(str(output / name))) >= 2


# ---------------------------------------------------------------- the plan is checked before the first write


def run(input_dir, output, *extra):
    """main() with two training and one validation shard unless `extra` overrides them."""
    return prepare_imagenet.main(["--input", str(input_dir), "--output", str(output), "--num_workers", "1",
                                  "--train_shards", "2", "--validation_shards", "1", *extra])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("python -m training.prepare_imagenet: error: "), err
    return err


def test_every_training_image_unreadable_is_refused_before_writing(imagenet_dir, tmp_path, capsys):
    input_dir, _ = imagenet_dir
    for path in (tmp_path / "imagenet" / "train").glob("*/*"):
        path.write_bytes(b"not an image")
    output = tmp_path / "out"
    assert run(input_dir, output) == 2
    assert "Class folder" in one_error_line(capsys) and not output.exists()


def test_too_many_validation_shards_are_refused_before_writing_and_the_corrected_rerun_runs(
        imagenet_dir, tmp_path, capsys):
    input_dir, _ = imagenet_dir
    output = tmp_path / "out"
    assert run(input_dir, output, "--validation_shards", str(NUM_VALIDATION + 1)) == 2
    assert f"{NUM_VALIDATION} readable validation images cannot fill {NUM_VALIDATION + 1} shards" in (
        one_error_line(capsys))
    assert not output.exists()
    assert run(input_dir, output, "--validation_shards", str(NUM_VALIDATION)) == 0


def test_a_plan_change_in_a_split_without_shards_resumes(imagenet_dir, tmp_path):
    """conversion_plan.json refuses only what would mix with shards on disk: a run that
    stopped after its training shards resumes with another validation shard count."""
    input_dir, _ = imagenet_dir
    output = tmp_path / "out"
    assert run(input_dir, output) == 0
    train_shards = {p.name: p.read_bytes() for p in output.glob("train-*")}
    for path in [*output.glob("validation-*"), output / "manifest.json"]:
        path.unlink()
    assert run(input_dir, output, "--validation_shards", "2") == 0
    assert {p.name: p.read_bytes() for p in output.glob("train-*")} == train_shards
    assert sorted(p.name for p in output.glob("validation-*")) == [
        "validation-00000-of-00002", "validation-00001-of-00002"]


def test_a_missing_validation_image_is_refused_not_shifted(imagenet_dir, tmp_path, capsys):
    input_dir, _ = imagenet_dir
    os.remove(os.path.join(input_dir, "val", "ILSVRC2012_val_00000003.JPEG"))
    assert run(input_dir, tmp_path / "out") == 2
    assert "line 3 labels validation image number 3, which is not in" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage, message", [
    ("missing", "has no label for"),
    ("extra", "line 7 labels 'ILSVRC2012_val_00000099.JPEG', which is not an image"),
    ("duplicated", "labels 'ILSVRC2012_val_00000001.JPEG' twice (lines 1 and 7)"),
])
def test_file_synset_labels_must_label_exactly_the_images_present(imagenet_dir, tmp_path, capsys, damage, message):
    input_dir, expected = imagenet_dir
    rows = [f"{name} {SYNSETS[expected[name][1] - 1]}" for name in sorted(expected) if name.startswith("ILSVRC")]
    rows = {"missing": rows[:-1], "extra": rows + [f"ILSVRC2012_val_00000099.JPEG {SYNSETS[0]}"],
            "duplicated": rows + rows[:1]}[damage]
    (tmp_path / "labels.txt").write_text("\n".join(rows) + "\n")
    assert run(input_dir, tmp_path / "out", "--validation_labels", str(tmp_path / "labels.txt")) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_odd_names_hidden_and_non_image_entries(imagenet_dir, tmp_path):
    """Names with spaces and unicode are labelled by name ("<file> <synset>" lines, in any
    order); hidden folders and files and non-image names are ignored and listed."""
    input_dir, expected = imagenet_dir
    root = tmp_path / "imagenet"
    (root / "train" / ".ipynb_checkpoints").mkdir()
    save(expected["n01440764_0.JPEG"][0], root / "train" / ".ipynb_checkpoints" / "copy.JPEG")
    (root / "train" / SYNSETS[0] / "notes.txt").write_text("not an image")
    (root / "val" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    validation = sorted(name for name in expected if name.startswith("ILSVRC"))
    renamed = {name: f"ünï code {i}.JPEG" for i, name in enumerate(validation)}
    for old, new in renamed.items():
        os.rename(root / "val" / old, root / "val" / new)
    (root / "synset_labels.txt").write_text("".join(
        f"{renamed[name]}\t{SYNSETS[expected[name][1] - 1]}\n" for name in reversed(validation)))
    summaries = prepare_imagenet.convert(input_dir, str(tmp_path / "out"), 2, 1, num_workers=1)
    assert manifest.read_manifest(str(tmp_path / "out")).classes == tuple(SYNSETS)  # no class ".ipynb..."
    records = read_records(str(tmp_path / "out" / "validation-*"))
    assert {feature(r, "image/filename").decode(): feature(r, "image/class/label") for r in records} == {
        renamed[name]: expected[name][1] for name in validation}
    text = prepare_imagenet.format_summary(summaries)
    for ignored in (".ipynb_checkpoints (hidden)", "notes.txt (not named", ".DS_Store (hidden)"):
        assert ignored in text


def test_a_file_name_that_is_not_utf8_is_one_line(imagenet_dir, tmp_path, capsys):
    input_dir, _ = imagenet_dir
    os.rename(os.path.join(input_dir, "val", "ILSVRC2012_val_00000001.JPEG"),
              os.path.join(os.fsencode(input_dir), b"val", b"caf\xe9.JPEG"))
    assert run(input_dir, tmp_path / "out") == 2
    assert "holds a file name that is not UTF-8 (b'caf\\xe9.JPEG')" in one_error_line(capsys)


def test_special_files_named_like_images_are_skipped_and_listed(imagenet_dir, tmp_path):
    input_dir, _ = imagenet_dir
    folder = tmp_path / "imagenet" / "train" / SYNSETS[0]
    os.mkfifo(folder / "fifo.JPEG")  # reading it would block forever
    (folder / "broken.JPEG").symlink_to(tmp_path / "nowhere.JPEG")
    (folder / "folder.JPEG").mkdir()
    summaries = prepare_imagenet.convert(input_dir, str(tmp_path / "out"), 2, 1, num_workers=1)
    skipped = "\n".join(summaries["train"].skipped)
    for line in ("fifo.JPEG: a FIFO", "broken.JPEG: a broken symbolic link", "folder.JPEG: a folder"):
        assert line in skipped
    assert summaries["train"].images_written == 3 * TRAIN_PER_CLASS + 2


def encoded(pixels: np.ndarray | Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def test_image_kinds_become_the_reference_8_bit_rgb(tmp_path):
    """Every kind TensorFlow decodes is stored as JPEG whose pixels are the reference:
    16-bit v -> round(v / 257), palette colours, alpha dropped, PIL's CMYK conversion;
    JPEGs (grey too) keep their bytes, up to the end marker. An image declaring more than
    image_files.MAX_PIXELS is skipped and listed."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    grey16 = np.array([[0, 1, 128, 129, 257, 32767, 32768, 65534, 65535, 300]] * 2, np.uint16)
    rgb16 = rng.integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    indices = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    paletted = Image.fromarray(indices, mode="P")
    paletted.putpalette(palette.ravel().tolist())
    transparent = io.BytesIO()
    paletted.save(transparent, format="PNG", transparency=bytes(range(256)))
    plain_palette = io.BytesIO()
    paletted.save(plain_palette, format="PNG")
    jpeg = encoded(rgb, "JPEG", quality=90)
    cmyk = encoded(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    kinds = {  # name -> (file bytes, reference pixels, stored bytes when kept)
        "grey16.png": (encoded(grey16, "PNG"), np.repeat(np.round(grey16 / 257)[..., None], 3, -1), None),
        "rgb16.png": (tf.io.encode_png(rgb16).numpy(), np.round(rgb16 / 257), None),
        "palette.png": (plain_palette.getvalue(), palette[indices], None),
        "palette_transparent.png": (transparent.getvalue(), palette[indices], None),
        "la.png": (encoded(rgb[..., :2], "PNG"), np.repeat(rgb[..., :1], 3, -1), None),
        "rgba.png": (encoded(np.dstack([rgb, rgb[..., :1]]), "PNG"), rgb, None),
        "cmyk.JPEG": (cmyk, np.asarray(Image.open(io.BytesIO(cmyk)).convert("RGB")), None),
        "grey.JPEG": (encoded(rgb[..., 0], "JPEG"), None, encoded(rgb[..., 0], "JPEG")),
        "trailer.JPEG": (jpeg + b"\0\0\0\x18ftypmp42" + b"\xff\xd8video\xff\xd9" * 100, None, jpeg),
    }
    assert grey16.dtype == np.uint16 and np.round(grey16 / 257)[0].tolist() == [0, 0, 0, 1, 1, 127, 128, 255, 255, 1]
    root = tmp_path / "imagenet"
    (root / "train" / "n01").mkdir(parents=True)
    for name, (data, _, _) in kinds.items():
        (root / "train" / "n01" / name).write_bytes(data)
    # A decompression bomb: a 10000 x 10000 PNG of a few kilobytes.
    encoded_bomb = encoded(np.zeros((10_000, 10_000), np.uint8), "PNG")
    (root / "train" / "n01" / "bomb.png").write_bytes(encoded_bomb)
    (root / "val").mkdir()
    (root / "val" / "v.JPEG").write_bytes(jpeg)
    (root / "synset_labels.txt").write_text("n01\n")
    summaries = prepare_imagenet.convert(str(root), str(tmp_path / "out"), 1, 1, num_workers=1)
    assert [line.split(": ", 1)[1] for line in summaries["train"].skipped] == [
        "too large (10000 x 10000 pixels, more than 50000000)"]
    for record in read_records(str(tmp_path / "out" / "train-*")):
        name = feature(record, "image/filename").decode()
        _, reference, kept = kinds[name]
        stored = feature(record, "image/encoded")
        pixels = tf.io.decode_jpeg(stored, channels=3, dct_method="INTEGER_ACCURATE").numpy()
        if kept is not None:
            assert stored == kept, name  # the JPEG's own bytes, without the trailer
            np.testing.assert_array_equal(pixels, np.asarray(Image.open(io.BytesIO(kept)).convert("RGB")))
        else:
            error = np.abs(pixels.astype(int) - reference)
            assert error.max() <= 6 and error.mean() < 1, (name, error.max(), error.mean())
    assert summaries["train"].images_written == len(kinds)
