"""Fault injection: nothing the data writers wrote is lost, and nothing is lost silently.

One test per hostile input of issue 19 (truncated, cut and bit-flipped shards, stray
files, damaged JPEG headers, a killed converter, a rerun with other shard counts,
skipped counts that added up over validation passes, junk in a batch). Each asserts what
was read, what was counted, and which file the warning or the error names.

The data are the scikit-learn digits written by `training.demo_data` (2 validation
shards of 149 and 148 records, 8 training shards of 188 and 187) and a few generated
JPEGs; a miniature ImageNet folder for the converter.
"""

import dataclasses
import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from lambda_keras import atomic_files
from lambda_keras.data import manifest, records
from training import demo_data, prepare_imagenet, shard_set
from training.errors import DataIntegrityError
from training.input_config import InputConfig
from training.input_pipeline import SkippedRecordCounter, build_dataset

ROOT = Path(__file__).resolve().parents[1]
SHARD = "validation-00000-of-00002"
SHARD_RECORDS, OTHER_SHARD_RECORDS = 149, 148


# ---------------------------------------------------------------- helpers


def record_spans(path) -> list[tuple[int, int]]:
    """(start, end) byte offsets of each record of a TFRecord file, from its framing."""
    data = Path(path).read_bytes()
    spans, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        end = offset + length + records.RECORD_FRAMING_BYTES
        spans.append((offset, end))
        offset = end
    return spans


def truncate(path, size: int) -> None:
    with open(path, "r+b") as file:
        file.truncate(size)


def flip_byte(path, offset: int) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)[0]
        file.seek(offset)
        file.write(bytes([byte ^ 0xFF]))


def read_validation(config: InputConfig, split: str = "validation"):
    """(labels read, the counter) of one evaluation pass."""
    counter = SkippedRecordCounter()
    labels = [y.numpy() for _, y in build_dataset(config, split, skipped_records=counter)]
    return np.concatenate(labels), counter


def jpeg(seed: int, size: int = 24) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def damaged_header(encoded: bytes) -> bytes:
    """The JPEG with a frame height of 0 in its SOF0 header; SOI and EOI stay intact."""
    sof = encoded.index(b"\xff\xc0")
    return encoded[: sof + 5] + b"\x00\x00" + encoded[sof + 7 :]


def example(encoded: bytes, label: int) -> bytes:
    return records.image_example(encoded, label, "synset", 24, 24, f"image{label}").SerializeToString()


def write_shard(path, serialized_records) -> None:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in serialized_records:
            writer.write(record)


def small_config(path, **overrides) -> InputConfig:
    values = dict(data_dir=str(path), num_classes=10, image_size=16, eval_crop_padding=2,
                  global_batch_size=8, interleave_cycle_length=1)
    values.update(overrides)
    return InputConfig(**values)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pristine_digits(tmp_path_factory):
    path = tmp_path_factory.mktemp("pristine") / "digits"
    demo_data.write_demo_data(str(path))
    return path


@pytest.fixture()
def digits(pristine_digits, tmp_path):
    """A fresh copy of the demo data (with its manifest) to damage."""
    path = tmp_path / "digits"
    shutil.copytree(pristine_digits, path)
    return path


def demo_config(path, **overrides) -> InputConfig:
    return demo_data.demo_input_config(str(path), interleave_cycle_length=1, **overrides)


def write_imagenet_folder(root: Path) -> str:
    """Two synsets of 6 training digits each and 4 validation digits."""
    images, _ = demo_data.digit_images(24)
    synsets = ["n01440764", "n01443537"]
    for label, synset in enumerate(synsets):
        (root / "train" / synset).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(images[6 * label + i]).save(root / "train" / synset / f"{synset}_{i}.JPEG")
    (root / "val").mkdir()
    for i in range(4):
        Image.fromarray(images[12 + i]).save(root / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    (root / "synset_labels.txt").write_text("".join(f"{synsets[i % 2]}\n" for i in range(4)))
    return str(root)


# ---------------------------------------------------------------- 1. truncated at a record boundary


def test_shard_truncated_at_a_record_boundary_is_named_not_silently_short(digits, capfd):
    shard = digits / SHARD
    truncate(shard, record_spans(shard)[74][0])  # 74 of its 149 records left, framing intact

    with pytest.raises(DataIntegrityError, match=rf"{SHARD}: \d+ bytes, manifest.json says \d+"):
        read_validation(demo_config(digits, skip_corrupt_records=False))

    labels, counter = read_validation(demo_config(digits))
    # The short file is left out whole: its surviving records cannot be told from a
    # foreign file's. The other shard is read completely.
    assert len(labels) == OTHER_SHARD_RECORDS
    assert list(counter.skipped_files) == [str(shard)]
    assert "manifest.json says" in counter.skipped_files[str(shard)]
    assert f"WARNING: leaving out {shard}" in capfd.readouterr().err


# ---------------------------------------------------------------- 2. cut mid-record, flipped byte, stray file


def test_shard_cut_mid_record_is_left_out_with_a_manifest(digits):
    shard = digits / SHARD
    truncate(shard, record_spans(shard)[100][0] + 50)
    labels, counter = read_validation(demo_config(digits))
    assert len(labels) == OTHER_SHARD_RECORDS
    assert list(counter.skipped_files) == [str(shard)]


def test_shard_cut_mid_record_without_manifest_keeps_what_was_read(digits, capfd):
    os.remove(digits / manifest.MANIFEST_NAME)
    shard = digits / SHARD
    cut = record_spans(shard)[100][0]
    truncate(shard, cut + 50)

    labels, counter = read_validation(demo_config(digits))
    assert len(labels) == 100 + OTHER_SHARD_RECORDS  # the 100 whole records, then the next file
    assert counter.count == 1  # without a manifest the number of records lost is unknown
    err = capfd.readouterr().err
    assert f"{shard}: unreadable from byte {cut} of {cut + 50}" in err
    assert "read 100 of an unknown number of records" in err

    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"Corrupt record.*{SHARD}: unreadable from byte {cut}"):
        read_validation(demo_config(digits, skip_corrupt_records=False))


def test_flipped_byte_skips_and_counts_the_rest_of_the_shard(digits, capfd):
    shard = digits / SHARD
    start, end = record_spans(shard)[40]
    flip_byte(shard, (start + end) // 2)  # inside record 40's tf.Example: its CRC fails

    labels, counter = read_validation(demo_config(digits))
    assert len(labels) == 40 + OTHER_SHARD_RECORDS
    # The manifest says how many records the unreadable rest of the file held.
    assert counter.count == SHARD_RECORDS - 40
    assert f"{shard}: unreadable from byte {start} of" in capfd.readouterr().err
    assert not counter.skipped_files  # the size matches: found while reading

    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"Corrupt record.*{SHARD}: unreadable from byte {start}"):
        read_validation(demo_config(digits, skip_corrupt_records=False))
    # The full check names it too.
    problems = shard_set.verify_shards(str(digits))
    assert len(problems) == 1 and problems[0].startswith(f"{shard}: unreadable")


def test_stray_file_matching_the_pattern_is_named(digits, capfd):
    stray = digits / "train-notes.txt"
    stray.write_text("not a TFRecord file\n")
    config = demo_config(digits, eval_file_pattern="train-*")  # one pass over the 8 train shards

    with pytest.raises(DataIntegrityError, match=r"train-notes.txt: not listed in manifest.json"):
        read_validation(demo_config(digits, eval_file_pattern="train-*", skip_corrupt_records=False))
    labels, counter = read_validation(config)
    assert len(labels) == 1500
    assert list(counter.skipped_files) == [str(stray)] and counter.count == 0
    assert f"WARNING: leaving out {stray}: not listed" in capfd.readouterr().err

    # Without a manifest the stray file is read: its unreadable bytes count as one record.
    os.remove(digits / manifest.MANIFEST_NAME)
    labels, counter = read_validation(config)
    assert len(labels) == 1500 and counter.count == 1
    assert f"{stray}: unreadable from byte 0 of 20" in capfd.readouterr().err


def test_same_size_foreign_shard_passes_the_start_check_but_not_verify(digits):
    shard = digits / SHARD
    # Another file of the same size whose records all read: record 0 moved to the end.
    data, first_end = shard.read_bytes(), record_spans(shard)[0][1]
    shard.write_bytes(data[first_end:] + data[:first_end])
    labels, counter = read_validation(demo_config(digits))
    assert len(labels) == SHARD_RECORDS + OTHER_SHARD_RECORDS and counter.count == 0
    problems = shard_set.verify_shards(str(digits))
    assert problems == [f"{shard}: sha256 is {manifest.describe_shard(str(shard)).sha256}, manifest.json says "
                        f"{manifest.read_manifest(str(digits)).shards()[SHARD].sha256}"]
    assert subprocess.run([sys.executable, "-m", "training.verify_data", str(digits)], cwd=ROOT,
                          capture_output=True, timeout=120).returncode == 1


# ---------------------------------------------------------------- 3. damaged JPEG header; junk in a batch


def test_damaged_jpeg_header_is_skipped_and_counted(tmp_path, capfd):
    images = [jpeg(i) for i in range(6)]
    assert tf.image.extract_jpeg_shape(images[0]).numpy().tolist() == [24, 24, 3]
    with pytest.raises(tf.errors.InvalidArgumentError, match="Invalid JPEG data"):
        tf.image.extract_jpeg_shape(damaged_header(images[2]))
    shard = tmp_path / "validation-00000-of-00001"
    serialized = [example(image, i + 1) for i, image in enumerate(images)]
    serialized[2] = example(damaged_header(images[2]), 3)
    write_shard(shard, serialized)
    offset = record_spans(shard)[2][0]

    labels, counter = read_validation(small_config(tmp_path, global_batch_size=3))
    np.testing.assert_array_equal(labels, [0, 1, 3, 4, 5])
    assert counter.count == 1
    assert f"{shard}: 1 record(s) from byte {offset} are not tf.Examples or hold a JPEG with a damaged header" in (
        capfd.readouterr().err)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"Corrupt record.*{shard.name}: 1 record"):
        read_validation(small_config(tmp_path, skip_corrupt_records=False))


def test_damaged_headers_anywhere_in_a_long_shard_are_each_counted(tmp_path, capfd):
    # Records are accounted for 32 at a time: damage on both sides of a boundary, and last.
    damaged = {31, 32, 69}
    image = jpeg(0)
    serialized = [example(damaged_header(image) if i in damaged else image, i % 10 + 1) for i in range(70)]
    shard = tmp_path / "validation-00000-of-00001"
    write_shard(shard, serialized)
    spans = record_spans(shard)

    labels, counter = read_validation(small_config(tmp_path))
    assert len(labels) == 70 - 3 and counter.count == 3
    err = capfd.readouterr().err
    assert f"{shard}: 2 record(s) from byte {spans[31][0]}" in err
    assert f"{shard}: 1 record(s) from byte {spans[69][0]}" in err


def test_batch_mixing_valid_and_junk_images_keeps_the_valid_ones(tmp_path):
    good = [jpeg(i) for i in range(5)]
    junk = [
        example(damaged_header(jpeg(10)), 9),   # damaged header
        example(jpeg(11)[:300], 9),              # truncated JPEG
        example(b"GIF89a not a JPEG", 9),        # not a JPEG
        b"\x0f\xff not a tf.Example",            # not a tf.Example (wire type 7 is invalid)
    ]
    serialized = [example(good[0], 1), junk[0], example(good[1], 2), junk[1], junk[2],
                  example(good[2], 3), junk[3], example(good[3], 4), example(good[4], 5)]
    write_shard(tmp_path / "validation-00000-of-00001", serialized)
    labels, counter = read_validation(small_config(tmp_path, global_batch_size=9))
    np.testing.assert_array_equal(labels, [0, 1, 2, 3, 4])  # one batch, the junk dropped
    assert counter.count == 4


def corrupt_later_scan(seed: int, size: int = 64) -> bytes:
    """A progressive JPEG whose third scan header claims 9 components: the frame header
    reads, and the decode fails when it reaches that scan."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90, progressive=True)
    encoded = buffer.getvalue()
    third_scan = [i for i in range(len(encoded) - 1) if encoded[i : i + 2] == b"\xff\xda"][2]
    return encoded[: third_scan + 4] + b"\x09" + encoded[third_scan + 5 :]


def test_jpeg_failing_mid_decode_is_named_by_verify_data_and_ends_the_run_in_one_line(digits, tmp_path, capsys):
    shard = digits / SHARD
    serialized = [record.numpy() for record in tf.data.TFRecordDataset(str(shard))]
    bad = corrupt_later_scan(0)
    assert tf.image.extract_jpeg_shape(bad).numpy().tolist() == [64, 64, 3]  # the header reads
    serialized[5] = records.image_example(bad, 3, "digit_2", 64, 64, "broken.jpg").SerializeToString()
    write_shard(shard, serialized)
    written = manifest.read_manifest(str(digits))
    manifest.write_manifest(str(digits), dataclasses.replace(written, splits={
        split: tuple(manifest.describe_shards([str(digits / info.name) for info in shards]))
        for split, shards in written.splits.items()}))

    from training import train, verify_data  # pylint: disable=import-outside-toplevel

    assert verify_data.main([str(digits)]) == 0  # counts, sizes and checksums agree
    assert verify_data.main([str(digits), "--decode_images"]) == 1
    assert f"{shard}: record 5 (broken.jpg): its image does not decode (" in capsys.readouterr().out

    status = train.main([
        "--config", "demo", "--data_dir", str(digits), "--model_dir", str(tmp_path / "model"),
        "--set", "model.lambda_blocks=[[], [], [], []]", "--set", "train.epochs=1",
        "--set", "train.steps_per_epoch=1", "--set", "train.warmup_epochs=0", "--set", "input.cache=false",
    ])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and error[-1].startswith(
        f"python -m training.train: error: An image in {digits} does not decode (Invalid JPEG data)"), error
    assert f"python -m training.verify_data {digits} --decode_images` names its record" in error[-1]


def test_trailing_bytes_are_accepted_by_every_reader_and_truncation_by_none(tmp_path, capfd):
    """One rule (lambda_keras.data.image_files): bytes after a JPEG's or PNG's end (a
    phone's trailer, a motion photo's video) decode in TensorFlow, so the training
    reader, verify_data and serving accept them; a truncated file is refused by all."""
    from lambda_keras.data import image_files, preprocessing  # pylint: disable=import-outside-toplevel

    trailer = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20  # no FF D9 near the end
    with_trailer, plain, truncated = jpeg(1) + trailer, jpeg(2), jpeg(3)[:400]
    png = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png, format="PNG")
    for image, accepted in ((with_trailer, True), (png.getvalue() + trailer, True), (truncated, False)):
        assert bool(preprocessing.is_servable_image(tf.constant(image))) is accepted
        assert (image_files.jpeg_end(image) is not None) is (accepted and image[:2] == b"\xff\xd8")
    np.testing.assert_array_equal(tf.io.decode_jpeg(with_trailer), tf.io.decode_jpeg(jpeg(1)))

    shard = tmp_path / "validation-00000-of-00001"
    write_shard(shard, [example(with_trailer, 1), example(plain, 2), example(truncated, 3),
                        example(b"GIF89a not a JPEG", 4)])
    labels, counter = read_validation(small_config(tmp_path, global_batch_size=2))
    np.testing.assert_array_equal(labels, [0, 1])  # the trailer's record is read, not skipped
    assert counter.count == 2
    problems = records.undecodable_images(str(shard))
    assert [problem.split(": ", 1)[1].split(" (")[0] for problem in problems] == ["record 2", "record 3"]
    assert "not a complete JPEG" in problems[1]


# ---------------------------------------------------------------- 4. converter killed mid-way


def test_killed_converter_leaves_no_file_the_trainer_reads_and_resumes(tmp_path, capfd):
    input_dir = write_imagenet_folder(tmp_path / "imagenet")
    output = tmp_path / "records"
    # SIGKILL in the middle of the third of four training shards (3 images each).
    script = textwrap.dedent(f"""
        import os, signal
        from training import prepare_imagenet
        load, calls = prepare_imagenet.load_rgb_jpeg, []
        def load_then_die(path):
            calls.append(path)
            if len(calls) == 8:
                os.kill(os.getpid(), signal.SIGKILL)
            return load(path)
        prepare_imagenet.load_rgb_jpeg = load_then_die
        prepare_imagenet.main(["--input", {input_dir!r}, "--output", {str(output)!r},
                               "--train_shards", "4", "--validation_shards", "2", "--num_workers", "1"])
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, timeout=120)
    assert result.returncode == -signal.SIGKILL

    names = sorted(os.listdir(output))
    temporaries = [name for name in names if atomic_files.TEMP_MARKER in name]
    assert temporaries and all(name.startswith(".tmp-train-00002-of-00004-") for name in temporaries)
    assert [name for name in names if name.startswith("train-")] == ["train-00000-of-00004", "train-00001-of-00004"]
    assert manifest.MANIFEST_NAME not in names

    config = InputConfig(data_dir=str(output), num_classes=2, image_size=16, eval_crop_padding=2, global_batch_size=2,
                         eval_file_pattern="train-*", skip_corrupt_records=False)
    with pytest.raises(DataIntegrityError, match=r"train-00002-of-00004: missing from its set of 4"):
        read_validation(config)
    labels, counter = read_validation(config.replace(skip_corrupt_records=True))
    assert len(labels) == 6  # the two complete shards
    assert sorted(os.path.basename(path) for path in counter.skipped_files) == [
        "train-00002-of-00004", "train-00003-of-00004"]

    capfd.readouterr()
    assert prepare_imagenet.main(["--input", input_dir, "--output", str(output), "--train_shards", "4",
                                  "--validation_shards", "2", "--num_workers", "1"]) == 0
    assert "train: wrote 6 images in 2 shards; 2 shards were already complete" in capfd.readouterr().out
    assert not [name for name in os.listdir(output) if atomic_files.TEMP_MARKER in name]
    assert shard_set.verify_shards(str(output)) == []
    labels, counter = read_validation(config)
    assert len(labels) == 12 and counter.count == 0


# ---------------------------------------------------------------- 5. rerun with other shard counts


def test_rerun_with_other_shard_counts_is_refused_and_changes_nothing(tmp_path, capfd):
    input_dir = write_imagenet_folder(tmp_path / "imagenet")
    output = tmp_path / "records"
    arguments = ["--input", input_dir, "--output", str(output), "--validation_shards", "1", "--num_workers", "1"]
    assert prepare_imagenet.main(arguments + ["--train_shards", "4"]) == 0
    before = {path.name: path.read_bytes() for path in output.iterdir()}
    capfd.readouterr()

    assert prepare_imagenet.main(arguments + ["--train_shards", "2"]) == 2
    err = capfd.readouterr().err.strip()
    assert err.count("\n") == 0 and "error:" in err
    assert "train-00000-of-00004' belongs to a set of 4 train shards; writing 2 train shards" in err
    assert {path.name: path.read_bytes() for path in output.iterdir()} == before
    with pytest.raises(records.ShardSetError, match="set of 4 train shards"):
        demo_data.write_demo_data(str(output), train_shards=8)

    # A folder that an older converter left with two sets and no manifest: never read.
    for name in ("train-00000-of-00002", "train-00001-of-00002"):
        shutil.copy(output / "train-00000-of-00004", output / name)
    os.remove(output / manifest.MANIFEST_NAME)
    config = InputConfig(data_dir=str(output), num_classes=2, image_size=16, eval_crop_padding=2, global_batch_size=2)
    with pytest.raises(DataIntegrityError, match=r"two sets of train shards, of 2 .* and 4 .*read every image twice"):
        build_dataset(config, "train")


# ---------------------------------------------------------------- skipped counts per pass


@pytest.fixture()
def corrupt_digits(digits):
    """The digits with 3 records of validation-00001 replaced by junk images."""
    shard = digits / "validation-00001-of-00002"
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(str(shard))]
    for index in (5, 50, 100):
        serialized[index] = example(b"not a JPEG", 1)
    write_shard(shard, serialized)
    os.remove(digits / manifest.MANIFEST_NAME)
    return digits


def test_skipped_counts_are_per_validation_pass(corrupt_digits):
    counter = SkippedRecordCounter()
    dataset = build_dataset(demo_config(corrupt_digits), "validation", skipped_records=counter)
    for _ in range(3):
        assert sum(len(y) for _, y in dataset) == 297 - 3
        assert counter.count == 3

    # The same through Keras: three epochs, each validated, then evaluate.
    config = demo_config(corrupt_digits, global_batch_size=32)
    train_counter, eval_counter = SkippedRecordCounter(), SkippedRecordCounter()
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    counts = []
    record = keras.callbacks.LambdaCallback(on_test_end=lambda logs: counts.append(eval_counter.count))
    model.fit(build_dataset(config, "train", skipped_records=train_counter), epochs=3, steps_per_epoch=2,
              validation_data=build_dataset(config, "validation", skipped_records=eval_counter), verbose=0,
              callbacks=[record])
    assert counts == [3, 3, 3]  # today's code: [3, 6, 9]
    model.evaluate(build_dataset(config, "validation", skipped_records=eval_counter), verbose=0)
    assert eval_counter.count == 3
