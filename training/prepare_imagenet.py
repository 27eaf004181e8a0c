"""Converts an ImageNet folder into sharded TFRecords in the `imagenet_to_gcs` layout.

Usage:
  python -m training.prepare_imagenet --input DIR --output DIR
      [--train_shards 1024] [--validation_shards 128] [--num_workers 8]
      [--validation_labels FILE] [--seed 0]

Input layout (ILSVRC2012 as extracted from the official tars):
  DIR/train/<synset>/*.JPEG           training images, one folder per class
  DIR/val/*.JPEG (or DIR/validation/) validation images
  DIR/synset_labels.txt               the validation synsets, either one per line in
                                      the sorted order of the validation file names
                                      (the imagenet_to_gcs file) or "<file> <synset>"
                                      per line, or Kaggle's LOC_val_solution.csv
                                      ("ImageId,PredictionString", the first synset of
                                      each row); --validation_labels overrides the path

Output (what `training.input_pipeline` reads with source "tfrecord"):
  OUT/train-00000-of-01024 ... OUT/validation-00127-of-00128, tf.Examples in the
  `lambda_keras.data.records` schema: image/encoded (JPEG), image/class/label (1..N
  over the sorted synsets), image/class/synset, image/height, image/width,
  image/channels (3), image/colorspace ("RGB"), image/format ("JPEG"), image/filename;
  OUT/synsets.txt, the synset of label i on line i; OUT/manifest.json, written last, with
  every shard's record count, size and SHA-256 and the label map
  (`lambda_keras.data.manifest`), against which the trainer checks the shards.

Training images are shuffled (with --seed) before sharding, as in the reference. PNG
files saved as .JPEG and CMYK or other non-RGB JPEGs are re-encoded as RGB JPEG
(quality 100, like the reference); unreadable files are skipped and listed in the
summary. Each shard is written under a temporary name that no shard pattern matches
(`.tmp-train-00004-of-01024-<id>`) and renamed when complete, so a shard file that
exists is complete: a rerun skips it (resume) and deletes temporary files left by an
interrupted run. A rerun with other shard counts, or with another --seed or set of input
images (OUT/conversion_plan.json records what decides the shard contents), is refused:
two sets of shards would be read together. A second conversion into the same folder while
one runs is refused (`training.folder_lock`). The manifest is removed at the start and
written once all shards exist, so a folder has one only when its conversion finished. Shards are converted by parallel
worker threads (PIL and the TFRecord writer release the GIL for the heavy work).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import io
import json
import os
import random
import sys
from typing import Any, Sequence

import tensorflow as tf
import tqdm
from PIL import Image

from lambda_keras import cli
from lambda_keras.cli import UserError
from lambda_keras.data import manifest
from lambda_keras.data.records import (
    ShardSetError,
    check_no_other_shard_set,
    image_example,
    parse_shard_name,
    remove_temporary_files,
    shard_name,
    write_records_atomically,
    written_atomically,
)
from training.folder_lock import held_exclusively

TRAIN_SHARDS = 1024
VALIDATION_SHARDS = 128
SYNSETS_FILE = "synsets.txt"
PLAN_FILE = "conversion_plan.json"
_IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
# Quality of re-encoded PNG/CMYK images: the reference's choice, near-lossless.
_REENCODE_QUALITY = 100


@dataclasses.dataclass(frozen=True)
class ImageEntry:
    """One input image: its path, synset and label (1..number of synsets)."""

    path: str
    synset: str
    label: int


@dataclasses.dataclass
class SplitSummary:
    """What the conversion of one split did, and its shards as the manifest lists them."""

    shards_written: int = 0
    shards_already_complete: int = 0
    images_written: int = 0
    shards: list[manifest.ShardInfo] = dataclasses.field(default_factory=list)
    reencoded: dict[str, int] = dataclasses.field(default_factory=dict)
    unreadable: list[str] = dataclasses.field(default_factory=list)

    def add(self, other: "SplitSummary") -> None:
        self.shards_written += other.shards_written
        self.shards_already_complete += other.shards_already_complete
        self.images_written += other.images_written
        for reason, count in other.reencoded.items():
            self.reencoded[reason] = self.reencoded.get(reason, 0) + count
        self.unreadable.extend(other.unreadable)


class UnreadableImageError(UserError, ValueError):
    """An input file that PIL cannot decode."""


def load_rgb_jpeg(path: str) -> tuple[bytes, int, int, str | None]:
    """Reads an image file as JPEG bytes that decode to RGB (or grayscale).

    Returns:
      (jpeg_bytes, height, width, reason): reason is None when the file's bytes are
      kept as they are, else why it was re-encoded ("png", "cmyk", ...).

    Raises:
      UnreadableImageError: PIL cannot decode the file completely.
    """
    with tf.io.gfile.GFile(path, "rb") as file:
        data = file.read()
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise UnreadableImageError(f"{path}: {error}") from error
    if image.format == "JPEG" and image.mode in ("RGB", "L"):
        return data, image.height, image.width, None
    reason = image.format.lower() if image.format != "JPEG" else image.mode.lower()
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=_REENCODE_QUALITY)
    return buffer.getvalue(), image.height, image.width, reason


def find_train_images(input_dir: str) -> tuple[list[ImageEntry], list[str]]:
    """Training images under input_dir/train/<synset>/, and the sorted synsets."""
    train_dir = os.path.join(input_dir, "train")
    if not tf.io.gfile.isdir(train_dir):
        raise FileNotFoundError(f"Training folder {train_dir!r} does not exist.")
    synsets = sorted(
        name.rstrip("/") for name in tf.io.gfile.listdir(train_dir)
        if tf.io.gfile.isdir(os.path.join(train_dir, name))
    )
    if not synsets:
        raise FileNotFoundError(f"No class folders (train/<synset>/) in {train_dir!r}.")
    entries = []
    for label, synset in enumerate(synsets, start=1):
        for name in sorted(tf.io.gfile.listdir(os.path.join(train_dir, synset))):
            if name.lower().endswith(_IMAGE_EXTENSIONS):
                entries.append(
                    ImageEntry(os.path.join(train_dir, synset, name), synset, label)
                )
    return entries, synsets


# The header of Kaggle's ImageNet localisation challenge validation labels.
_KAGGLE_HEADER = "ImageId,PredictionString"


def find_validation_images(
    input_dir: str, synsets: Sequence[str], labels_file: str | None = None
) -> list[ImageEntry]:
    """Validation images under input_dir/val (or validation) with their labels file."""
    candidates = [os.path.join(input_dir, name) for name in ("val", "validation")]
    val_dir = next((path for path in candidates if tf.io.gfile.isdir(path)), None)
    if val_dir is None:
        raise FileNotFoundError(f"No validation folder: tried {candidates}.")
    names = sorted(
        name for name in tf.io.gfile.listdir(val_dir)
        if name.lower().endswith(_IMAGE_EXTENSIONS)
    )
    labels_file = labels_file or os.path.join(input_dir, "synset_labels.txt")
    if not tf.io.gfile.exists(labels_file):
        raise FileNotFoundError(f"Validation labels file {labels_file!r} does not exist.")
    with tf.io.gfile.GFile(labels_file) as file:
        text = file.read()
    if text.startswith(_KAGGLE_HEADER):
        # ILSVRC2012_val_00008726,n02119789 255 142 454 329 n02119789 44 21 322 295
        rows = [line.split(",", 1) for line in text.splitlines()[1:] if line.strip()]
        by_stem = {image_id: prediction.split()[0] for image_id, prediction in rows}
        synset_of = {name: by_stem.get(os.path.splitext(name)[0]) for name in names}
        return _label_entries(names, synset_of, val_dir, synsets, labels_file)
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if all(len(fields) == 1 for fields in lines):
        if len(lines) < len(names):
            raise ValueError(
                f"{labels_file!r} has {len(lines)} synsets for {len(names)} "
                f"validation images in {val_dir!r}."
            )
        synset_of = {name: fields[0] for name, fields in zip(names, lines)}
    else:
        synset_of = {fields[0]: fields[1] for fields in lines}
    return _label_entries(names, synset_of, val_dir, synsets, labels_file)


def _label_entries(names: Sequence[str], synset_of: dict, val_dir: str, synsets: Sequence[str],
                   labels_file: str) -> list[ImageEntry]:
    """One entry per validation file name; an error names a file without a label or
    with a synset that is not a training class."""
    label_of = {synset: label for label, synset in enumerate(synsets, start=1)}
    entries = []
    for name in names:
        synset = synset_of.get(name)
        if synset is None:
            raise ValueError(f"No label for validation image {name!r} in {labels_file!r}.")
        if synset not in label_of:
            raise ValueError(
                f"Validation image {name!r} has synset {synset!r}, which is not a "
                "training class folder."
            )
        entries.append(ImageEntry(os.path.join(val_dir, name), synset, label_of[synset]))
    return entries


def convert_shard(entries: Sequence[ImageEntry], path: str) -> SplitSummary:
    """Writes one shard (atomically) and reports what it wrote and skipped."""
    summary = SplitSummary(shards_written=1)

    def records():
        for entry in entries:
            try:
                jpeg_bytes, height, width, reason = load_rgb_jpeg(entry.path)
            except UnreadableImageError:
                summary.unreadable.append(entry.path)
                continue
            if reason is not None:
                summary.reencoded[reason] = summary.reencoded.get(reason, 0) + 1
            yield image_example(
                jpeg_bytes, entry.label, entry.synset, height, width,
                os.path.basename(entry.path),
            ).SerializeToString()

    summary.images_written = write_records_atomically(path, records())
    return summary


def convert_split(
    split: str,
    entries: Sequence[ImageEntry],
    output_dir: str,
    num_shards: int,
    num_workers: int,
) -> SplitSummary:
    """Converts one split into `num_shards` shards, skipping complete ones, then reads
    every shard back to describe it (`manifest.describe_shards`)."""
    if len(entries) < num_shards:
        raise ValueError(
            f"{len(entries)} {split} images cannot fill {num_shards} shards; "
            f"use at most {len(entries)} shards."
        )
    summary = SplitSummary()
    jobs = []
    paths = [os.path.join(output_dir, shard_name(split, index, num_shards)) for index in range(num_shards)]
    for index, path in enumerate(paths):
        shard_entries = entries[
            index * len(entries) // num_shards : (index + 1) * len(entries) // num_shards
        ]
        if tf.io.gfile.exists(path):
            summary.shards_already_complete += 1
        else:
            jobs.append((shard_entries, path))
    progress = tqdm.tqdm(
        total=sum(len(shard_entries) for shard_entries, _ in jobs),
        desc=split, unit="img", disable=None,
    )
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_workers) as pool:
        futures = {pool.submit(convert_shard, *job): len(job[0]) for job in jobs}
        for future in concurrent.futures.as_completed(futures):
            summary.add(future.result())
            progress.update(futures[future])
    progress.close()
    summary.shards = manifest.describe_shards(paths, num_workers)
    return summary


def convert(
    input_dir: str,
    output_dir: str,
    train_shards: int = TRAIN_SHARDS,
    validation_shards: int = VALIDATION_SHARDS,
    num_workers: int = 8,
    validation_labels: str | None = None,
    seed: int = 0,
) -> dict[str, SplitSummary]:
    """Converts input_dir (see the module docstring) into TFRecord shards in output_dir.

    Returns:
      {"train": SplitSummary, "validation": SplitSummary}.

    Raises:
      ShardSetError (a ValueError): output_dir holds shards of another count, or of
        another plan (`check_same_plan`).
      FolderBusyError: another conversion is writing into output_dir.
    """
    for name, count in (("train_shards", train_shards), ("validation_shards", validation_shards),
                        ("num_workers", num_workers)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={count!r}")
    train_entries, synsets = find_train_images(input_dir)
    validation_entries = find_validation_images(input_dir, synsets, validation_labels)
    # A fixed seed keeps the shard contents identical across resumed runs.
    random.Random(seed).shuffle(train_entries)
    tf.io.gfile.makedirs(output_dir)
    with held_exclusively(output_dir, "conversion"):
        check_no_other_shard_set(output_dir, "train", train_shards)
        check_no_other_shard_set(output_dir, "validation", validation_shards)
        plan = conversion_plan(input_dir, train_entries, validation_entries, train_shards, validation_shards)
        check_same_plan(output_dir, plan)
        remove_temporary_files(output_dir)
        manifest.remove_manifest(output_dir)
        _write_text(os.path.join(output_dir, PLAN_FILE), json.dumps(plan, indent=2) + "\n")
        _write_text(os.path.join(output_dir, SYNSETS_FILE), "".join(f"{synset}\n" for synset in synsets))
        return _convert_splits(output_dir, train_entries, validation_entries, synsets, train_shards,
                               validation_shards, num_workers)


def conversion_plan(
    input_dir: str,
    train_entries: Sequence[ImageEntry],
    validation_entries: Sequence[ImageEntry],
    train_shards: int,
    validation_shards: int,
) -> dict[str, Any]:
    """What decides which image lands in which shard: the shard counts and, per split, a
    SHA-256 of the images in shard order (path relative to input_dir, and label)."""

    def order_digest(entries: Sequence[ImageEntry]) -> str:
        digest = hashlib.sha256()
        for entry in entries:
            digest.update(f"{os.path.relpath(entry.path, input_dir)}\t{entry.label}\n".encode())
        return digest.hexdigest()

    return {
        "train_shards": train_shards,
        "validation_shards": validation_shards,
        "train_images": len(train_entries),
        "validation_images": len(validation_entries),
        "train_order_sha256": order_digest(train_entries),
        "validation_order_sha256": order_digest(validation_entries),
    }


def check_same_plan(output_dir: str, plan: dict[str, Any]) -> None:
    """Refuses to resume shards that another plan wrote (another --seed or input listing).

    Their shards would hold another slice of the shuffled images than the ones this run
    writes, so some images would be read twice and others never.

    Raises:
      ShardSetError: naming the keys that differ.
    """
    path = os.path.join(output_dir, PLAN_FILE)
    if not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path) as file:
        previous = json.load(file)
    has_shards = any(
        parse_shard_name(name) is not None for name in tf.io.gfile.listdir(output_dir)
    )
    differences = sorted(key for key in plan if previous.get(key) != plan[key])
    if has_shards and differences:
        raise ShardSetError(
            f"{output_dir!r} holds shards of another conversion (its {PLAN_FILE} differs in "
            f"{', '.join(differences)}: another --seed or another set of input images); resuming it "
            "would mix the two. Rerun with the same input and --seed, or write into an empty folder."
        )


def _write_text(path: str, text: str) -> None:
    with written_atomically(path) as temp_path, tf.io.gfile.GFile(temp_path, "w") as file:
        file.write(text)


def _convert_splits(
    output_dir: str,
    train_entries: Sequence[ImageEntry],
    validation_entries: Sequence[ImageEntry],
    synsets: Sequence[str],
    train_shards: int,
    validation_shards: int,
    num_workers: int,
) -> dict[str, SplitSummary]:
    summaries = {
        "train": convert_split(
            "train", train_entries, output_dir, train_shards, num_workers
        ),
        "validation": convert_split(
            "validation", validation_entries, output_dir, validation_shards, num_workers
        ),
    }
    manifest.write_manifest(output_dir, manifest.Manifest(
        {split: tuple(summary.shards) for split, summary in summaries.items()},
        classes=tuple(synsets), first_label=1,
    ))
    return summaries


def format_summary(summaries: dict[str, SplitSummary]) -> str:
    lines = []
    for split, summary in summaries.items():
        lines.append(
            f"{split}: wrote {summary.images_written} images in "
            f"{summary.shards_written} shards; {summary.shards_already_complete} "
            f"shards were already complete; re-encoded {summary.reencoded or 'none'}; "
            f"skipped {len(summary.unreadable)} unreadable file(s)"
        )
        lines.extend(f"  unreadable: {path}" for path in summary.unreadable)
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1, else the usual one-line usage error."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return int(text)


PROG = "python -m training.prepare_imagenet"


@cli.entry_point(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="ImageNet folder (train/, val/).")
    parser.add_argument("--output", required=True, help="Output folder (local or gs://).")
    parser.add_argument("--train_shards", type=_positive_int, default=TRAIN_SHARDS)
    parser.add_argument("--validation_shards", type=_positive_int, default=VALIDATION_SHARDS)
    parser.add_argument("--num_workers", type=_positive_int, default=os.cpu_count() or 1)
    parser.add_argument("--validation_labels", default=None,
                        help="Default: INPUT/synset_labels.txt.")
    parser.add_argument("--seed", type=int, default=0,
                        help="Training-file shuffle seed (keep it fixed to resume).")
    args = parser.parse_args(argv)
    try:
        summaries = convert(
            args.input, args.output, args.train_shards, args.validation_shards,
            args.num_workers, args.validation_labels, args.seed,
        )
    except (FileNotFoundError, UserError):
        raise
    except (OSError, tf.errors.OpError) as error:
        # A full or read-only disk: the shards written so far are complete, a rerun resumes.
        reason = error.message if isinstance(error, tf.errors.OpError) else error
        raise ShardSetError(f"writing {args.output} failed: {reason}; "
                            "the shards written so far are complete, and a rerun resumes.") from None
    print(format_summary(summaries))
    print(f"Wrote {manifest.manifest_path(args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
