"""Converts an ImageNet folder into sharded TFRecords in the `imagenet_to_gcs` layout.

Usage:
  python -m training.prepare_imagenet --input DIR --output DIR
      [--train_shards 1024] [--validation_shards 128] [--num_workers 8]
      [--validation_labels FILE] [--seed 0]

Input layout (ILSVRC2012 as extracted from the official tars):
  DIR/train/<synset>/*.JPEG           training images, one folder per class
  DIR/val/*.JPEG (or DIR/validation/) validation images
  DIR/synset_labels.txt               the validation labels, matched to the files by
                                      name (`read_validation_labels`): "<file> <synset>"
                                      per line, Kaggle's LOC_val_solution.csv
                                      ("ImageId,PredictionString", the first synset of
                                      each row), or one synset per line (the
                                      imagenet_to_gcs file: line k labels the k-th
                                      sorted file name, ILSVRC2012_val_0000000k);
                                      --validation_labels overrides the path
Entries whose name starts with "." (.ipynb_checkpoints, .DS_Store) and files not named
.jpeg/.jpg/.png are ignored and listed in the summary; a folder directly in train/ is
a class.

Output (what `training.input_pipeline` reads with source "tfrecord"):
  OUT/train-00000-of-01024 ... OUT/validation-00127-of-00128, tf.Examples in the
  `lambda_keras.data.records` schema: image/encoded (JPEG), image/class/label (1..N
  over the sorted synsets), image/class/synset, image/height, image/width,
  image/channels (3), image/colorspace ("RGB"), image/format ("JPEG"), image/filename;
  OUT/synsets.txt, the synset of label i on line i; OUT/manifest.json, written last, with
  every shard's record count, size and SHA-256 and the label map
  (`lambda_keras.data.manifest`), against which the trainer checks the shards.

The whole plan is checked before the output folder is touched (`survey`): the folders
and the labels file exist, the labels file labels exactly the validation images present
(the first mismatch is named), every image is decoded once under the acceptance rule of
`lambda_keras.data.image_files` (what TensorFlow decodes, at most 50 MP), every class
folder and split keeps an accepted image, and each split has at least as many accepted
images as shards. A refusal is one line with exit status 2 and writes nothing, so the
corrected command runs. Files the rule refuses (unreadable, cut short, too large, a
FIFO, socket, folder or broken link named like an image) are skipped and listed.

Training images are shuffled (with --seed) before sharding, as in the reference. A JPEG
in RGB or grey is stored as its own bytes up to its end marker (a trailer after it is
dropped); any other image (PNG, 16-bit, palette, alpha, CMYK) is converted to 8-bit RGB
(`image_files.rgb8_pixels`) and re-encoded as JPEG (quality 100, 4:4:4). Each shard is
written under a temporary name that no shard pattern matches
(`.tmp-train-00004-of-01024-<id>`) and renamed when complete, so a shard file that
exists is complete: a rerun skips it (resume) and deletes temporary files left by an
interrupted run. A rerun with other shard counts, or with another --seed or set of input
images (OUT/conversion_plan.json records what decides the shard contents), is refused
when that split has shards on disk: two sets of shards would be read together. A second
conversion into the same folder while one runs is refused (`training.folder_lock`). The
manifest is removed at the start and written once all shards exist, so a folder has one
only when its conversion finished. Images are checked and shards converted by parallel
worker threads (the decoders and the TFRecord writer release the GIL for the heavy work).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import hashlib
import io
import json
import os
import random
import re
import stat
import sys
from typing import Any, Sequence

import tensorflow as tf
import tqdm
from PIL import Image

from lambda_keras import cli
from lambda_keras.cli import UserError
from lambda_keras.data import image_files, manifest
from lambda_keras.data.image_files import UnreadableImageError
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
# Quality of re-encoded (converted) images: the reference's choice, near-lossless.
_REENCODE_QUALITY = 100


@dataclasses.dataclass(frozen=True)
class ImageEntry:
    """One accepted input image: its path, synset, label (1..number of synsets) and what
    the acceptance rule found (`image_files.accept_image`)."""

    path: str
    synset: str
    label: int
    image: image_files.AcceptedImage


@dataclasses.dataclass
class SplitSummary:
    """What the conversion of one split did, and its shards as the manifest lists them.

    `skipped` lines name the files refused by the acceptance rule and why; `ignored`
    lines the entries that are not images (hidden, or without an image extension).
    """

    shards_written: int = 0
    shards_already_complete: int = 0
    images_written: int = 0
    shards: list[manifest.ShardInfo] = dataclasses.field(default_factory=list)
    reencoded: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)

    def add(self, other: "SplitSummary") -> None:
        self.shards_written += other.shards_written
        self.shards_already_complete += other.shards_already_complete
        self.images_written += other.images_written
        for reason, count in other.reencoded.items():
            self.reencoded[reason] = self.reencoded.get(reason, 0) + count
        self.skipped.extend(other.skipped)
        self.ignored.extend(other.ignored)


class InputError(UserError, ValueError):
    """The input folders or the labels file do not describe a dataset to convert; the
    message names the first problem. Raised before anything is written."""


@dataclasses.dataclass
class ConversionInput:
    """Everything the conversion will write, decided before its first write.

    Attributes:
      train, validation: the accepted images of each split; training images in shard
        order (shuffled with the seed).
      synsets: the sorted class folders; label i + 1 is synsets[i].
      summaries: per split, the files skipped and the entries ignored so far.
    """

    train: list[ImageEntry]
    validation: list[ImageEntry]
    synsets: list[str]
    summaries: dict[str, SplitSummary]


def load_rgb_jpeg(entry: ImageEntry) -> tuple[bytes, int, int, str | None]:
    """The JPEG bytes a record stores for an accepted image.

    A JPEG kept as it is loses only the bytes after its end marker; any other image is
    converted to 8-bit RGB (`image_files.rgb8_pixels`) and re-encoded.

    Returns:
      (jpeg_bytes, height, width, reason): reason is None when the file's bytes are
      kept as they are, else why they were changed (`AcceptedImage.reason`).

    Raises:
      UnreadableImageError: the file changed since it was accepted.
    """
    with tf.io.gfile.GFile(entry.path, "rb") as file:
        data = file.read()
    image = entry.image
    if image.kept_as_jpeg:
        end = image_files.jpeg_end(data)
        if end is None:
            raise UnreadableImageError(f"{entry.path}: it changed since it was checked (no JPEG end marker)")
        return data[:end], image.height, image.width, image.reason
    buffer = io.BytesIO()
    pixels = image_files.rgb8_pixels(data, entry.path)
    # 4:4:4 chroma: the converted pixels survive to within a level or two.
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=_REENCODE_QUALITY, subsampling=0)
    return buffer.getvalue(), pixels.shape[0], pixels.shape[1], image.reason


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(_IMAGE_EXTENSIONS)


def list_folder(folder: str) -> list[str]:
    """The sorted entry names of a folder (no trailing "/").

    Raises:
      InputError: a name is not UTF-8 (TensorFlow's file system cannot list it).
    """
    try:
        return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(folder))
    except UnicodeDecodeError:
        example = ""
        if "://" not in folder:
            undecodable = [name for name in os.listdir(os.fsencode(folder)) if not _is_utf8(name)]
            example = f" ({undecodable[0]!r})" if undecodable else ""
        raise InputError(
            f"{folder!r} holds a file name that is not UTF-8{example}; rename it to UTF-8 "
            "(e.g. with convmv) and rerun.") from None


def _is_utf8(name: bytes) -> bool:
    try:
        name.decode()
    except UnicodeDecodeError:
        return False
    return True


def _not_a_file(path: str) -> str | None:
    """Why a local path named like an image is not a readable file, or None when it is
    one (or lies on an object store, which holds only files)."""
    if "://" in path:
        return None
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link"
    if stat.S_ISREG(mode):
        return None
    kinds = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket"}
    return next((kind for test, kind in kinds.items() if test(mode)), "not a regular file")


def _split_entries(folder: str, names: Sequence[str], summary: SplitSummary) -> list[str]:
    """The names in `names` that are candidate images; the others are listed as ignored."""
    candidates = []
    for name in names:
        if _is_hidden(name):
            summary.ignored.append(f"{os.path.join(folder, name)} (hidden)")
        elif not _is_image_name(name):
            summary.ignored.append(f"{os.path.join(folder, name)} (not named {'/'.join(_IMAGE_EXTENSIONS)})")
        else:
            candidates.append(name)
    return candidates


def find_train_images(input_dir: str, summary: SplitSummary) -> tuple[list[tuple[str, str, int]], list[str]]:
    """Candidate training images under input_dir/train/<synset>/ and the sorted synsets.

    Returns:
      ([(path, synset, label)], synsets); hidden entries and files directly in train/
      are listed in `summary.ignored`.
    """
    train_dir = os.path.join(input_dir, "train")
    if not tf.io.gfile.isdir(train_dir):
        raise FileNotFoundError(f"Training folder {train_dir!r} does not exist.")
    synsets = []
    for name in list_folder(train_dir):
        if _is_hidden(name):
            summary.ignored.append(f"{os.path.join(train_dir, name)} (hidden)")
        elif tf.io.gfile.isdir(os.path.join(train_dir, name)):
            synsets.append(name)
        else:
            summary.ignored.append(f"{os.path.join(train_dir, name)} (not a class folder)")
    if not synsets:
        raise FileNotFoundError(f"No class folders (train/<synset>/) in {train_dir!r}.")
    candidates = []
    for label, synset in enumerate(synsets, start=1):
        folder = os.path.join(train_dir, synset)
        for name in _split_entries(folder, list_folder(folder), summary):
            candidates.append((os.path.join(folder, name), synset, label))
    return candidates, synsets


# The header of Kaggle's ImageNet localisation challenge validation labels.
_KAGGLE_HEADER = "ImageId,PredictionString"
# The official validation file names; line k of the imagenet_to_gcs list labels number k.
_ILSVRC_VALIDATION_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.\w+")


def find_validation_images(
    input_dir: str, synsets: Sequence[str], labels_file: str | None, summary: SplitSummary
) -> list[tuple[str, str, int]]:
    """Candidate validation images under input_dir/val (or validation), each labelled by
    its name from the labels file (`read_validation_labels`).

    Returns:
      [(path, synset, label)], one per file named like an image, readable or not.

    Raises:
      InputError: the labels file does not label exactly the images present, or names
        a synset that is not a training class.
    """
    candidates = [os.path.join(input_dir, name) for name in ("val", "validation")]
    val_dir = next((path for path in candidates if tf.io.gfile.isdir(path)), None)
    if val_dir is None:
        raise FileNotFoundError(f"No validation folder: tried {candidates}.")
    names = _split_entries(val_dir, list_folder(val_dir), summary)
    labels_file = labels_file or os.path.join(input_dir, "synset_labels.txt")
    if not tf.io.gfile.exists(labels_file):
        raise FileNotFoundError(f"Validation labels file {labels_file!r} does not exist.")
    synset_of = read_validation_labels(labels_file, names, val_dir)
    label_of = {synset: label for label, synset in enumerate(synsets, start=1)}
    for name in names:
        if synset_of[name] not in label_of:
            raise InputError(
                f"{labels_file!r} labels {name!r} with {synset_of[name]!r}, which is not a training class folder.")
    return [(os.path.join(val_dir, name), synset_of[name], label_of[synset_of[name]]) for name in names]


def read_validation_labels(labels_file: str, names: Sequence[str], val_dir: str) -> dict[str, str]:
    """The synset of each validation file name, matched by name.

    Formats: Kaggle's LOC_val_solution.csv (ImageId is the name without extension, the
    first word of PredictionString the synset); "<file> <synset>" per line (the file
    with or without its extension; it may hold spaces, the synset is the last word);
    one synset per line, the imagenet_to_gcs list, which names no file: line k labels
    the k-th file name in sorted order, which for the official names
    (ILSVRC2012_val_0000000k) is file number k. A list must have exactly one line per
    image, and official names must be numbered 1..lines, so that a missing or extra
    image cannot shift the labels after it.

    Raises:
      InputError: a name labelled twice, an image without a label, a label without an
        image, or a line that does not parse; the message names the first.
    """
    with tf.io.gfile.GFile(labels_file, "rb") as file:
        raw = file.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(f"{labels_file!r} is not UTF-8 text ({error}).") from None
    if text.startswith(_KAGGLE_HEADER):
        rows = [row for row in csv.reader(io.StringIO(text)) if row][1:]
        pairs = []
        for line_number, row in enumerate(rows, start=2):
            words = row[1].split() if len(row) == 2 else []
            if not words:
                raise InputError(f"{labels_file!r} line {line_number}: expected 'ImageId,synset ...', got {row!r}.")
            pairs.append((line_number, row[0], words[0]))
        return _match_by_name(pairs, names, labels_file, val_dir)
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if lines and len(lines[0][1].split()) == 1:
        return _match_by_position(lines, names, labels_file, val_dir)
    pairs = []
    for line_number, line in lines:
        fields = line.rsplit(None, 1)
        if len(fields) != 2:
            raise InputError(f"{labels_file!r} line {line_number}: expected '<file> <synset>', got {line!r}.")
        pairs.append((line_number, fields[0], fields[1]))
    return _match_by_name(pairs, names, labels_file, val_dir)


def _match_by_name(
    pairs: Sequence[tuple[int, str, str]], names: Sequence[str], labels_file: str, val_dir: str
) -> dict[str, str]:
    """{file name: synset} from (line number, file name or stem, synset) rows."""
    by_name = {name: name for name in names}
    stems: dict[str, list[str]] = {}
    for name in names:
        stems.setdefault(os.path.splitext(name)[0], []).append(name)
    synset_of: dict[str, str] = {}
    line_of: dict[str, int] = {}
    for line_number, key, synset in pairs:
        name = by_name.get(key)
        if name is None and len(stems.get(key, ())) > 1:
            raise InputError(f"{labels_file!r} line {line_number}: {key!r} matches {len(stems[key])} files in "
                             f"{val_dir!r} ({', '.join(stems[key])}).")
        name = name or (stems.get(key) or [None])[0]
        if name is None:
            raise InputError(f"{labels_file!r} line {line_number} labels {key!r}, which is not an image in "
                             f"{val_dir!r}; the labels file must label exactly the images present.")
        if name in synset_of:
            raise InputError(f"{labels_file!r} labels {name!r} twice (lines {line_of[name]} and {line_number}).")
        synset_of[name], line_of[name] = synset, line_number
    unlabelled = [name for name in names if name not in synset_of]
    if unlabelled:
        raise InputError(f"{labels_file!r} has no label for {os.path.join(val_dir, unlabelled[0])!r}"
                         f"{f' and {len(unlabelled) - 1} other image(s)' if len(unlabelled) > 1 else ''}; "
                         "the labels file must label exactly the images present.")
    return synset_of


def _match_by_position(
    lines: Sequence[tuple[int, str]], names: Sequence[str], labels_file: str, val_dir: str
) -> dict[str, str]:
    """{file name: synset} from a list of one synset per line (`read_validation_labels`)."""
    for line_number, line in lines:
        if len(line.split()) != 1:
            raise InputError(f"{labels_file!r} line {line_number}: expected one synset (as on line 1), got {line!r}.")
    numbers = [_ILSVRC_VALIDATION_NAME.fullmatch(name) for name in names]
    if names and all(numbers):
        present = {int(match[1]): name for match, name in zip(numbers, names)}
        expected = range(1, len(lines) + 1)
        missing = next((number for number in expected if number not in present), None)
        if missing is not None:
            raise InputError(f"{labels_file!r} line {lines[missing - 1][0]} labels validation image number "
                             f"{missing}, which is not in {val_dir!r}; the labels file must label exactly the "
                             "images present.")
        extra = next((number for number in sorted(present) if number > len(lines)), None)
        if extra is not None:
            raise InputError(f"{labels_file!r} has {len(lines)} lines: no label for {present[extra]!r}.")
    if len(lines) != len(names):
        raise InputError(
            f"{labels_file!r} lists {len(lines)} synsets for {len(names)} validation images in {val_dir!r}; a "
            "list without file names is matched to the sorted file names by position, so it must have exactly "
            "one line per image (or use '<file> <synset>' lines).")
    return {name: synset for name, (_, synset) in zip(names, lines)}


def survey(
    input_dir: str,
    validation_labels: str | None = None,
    num_workers: int = 8,
    seed: int = 0,
) -> ConversionInput:
    """Lists, labels and checks every input image (`image_files.accept_image`), so that
    every refusal comes before the first write.

    Raises:
      FileNotFoundError: a folder or the labels file is missing.
      InputError: labels that do not match the images, a class folder or a split
        without an accepted image.
    """
    summaries = {"train": SplitSummary(), "validation": SplitSummary()}
    train_candidates, synsets = find_train_images(input_dir, summaries["train"])
    validation_candidates = find_validation_images(input_dir, synsets, validation_labels, summaries["validation"])
    accepted: dict[str, list[ImageEntry]] = {"train": [], "validation": []}
    jobs = [(split, candidate) for split, candidates in (("train", train_candidates),
                                                         ("validation", validation_candidates))
            for candidate in candidates]
    progress = tqdm.tqdm(total=len(jobs), desc="checking", unit="img", disable=None)
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_workers) as pool:
        for (split, (path, synset, label)), outcome in zip(jobs, pool.map(lambda job: _accept(job[1][0]), jobs)):
            if isinstance(outcome, str):
                summaries[split].skipped.append(f"{path}: {outcome}")
            else:
                accepted[split].append(ImageEntry(path, synset, label, outcome))
            progress.update(1)
    progress.close()
    per_class = {synset: 0 for synset in synsets}
    for entry in accepted["train"]:
        per_class[entry.synset] += 1
    empty = [synset for synset, count in per_class.items() if count == 0]
    if empty:
        raise InputError(
            f"Class folder {os.path.join(input_dir, 'train', empty[0])!r} has no readable image"
            f"{f' (nor do {len(empty) - 1} other class folders)' if len(empty) > 1 else ''}; every folder in "
            "train/ is a class, and an empty one shifts the labels after it. Remove it or add its images.")
    if not accepted["validation"]:
        raise InputError(f"No readable validation image in {input_dir!r} "
                         f"({len(summaries['validation'].skipped)} skipped).")
    # A fixed seed keeps the shard contents identical across resumed runs.
    random.Random(seed).shuffle(accepted["train"])
    return ConversionInput(accepted["train"], accepted["validation"], synsets, summaries)


def _accept(path: str) -> image_files.AcceptedImage | str:
    """The acceptance rule's verdict on one file, or why it is skipped."""
    not_a_file = _not_a_file(path)
    if not_a_file is not None:
        return not_a_file
    try:
        with tf.io.gfile.GFile(path, "rb") as file:
            data = file.read()
        return image_files.accept_image(data, path)
    except UnreadableImageError as error:
        return str(error).removeprefix(f"{path}: ")
    except (OSError, tf.errors.OpError) as error:
        return f"cannot be read ({getattr(error, 'message', error)})"


def convert_shard(entries: Sequence[ImageEntry], path: str) -> SplitSummary:
    """Writes one shard (atomically) and reports what it wrote and skipped."""
    summary = SplitSummary(shards_written=1)

    def records():
        for entry in entries:
            try:
                jpeg_bytes, height, width, reason = load_rgb_jpeg(entry)
            except UnreadableImageError as error:
                summary.skipped.append(str(error))
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
    """Converts one split into `num_shards` shards (at most len(entries), checked by
    `convert`), skipping complete ones, then reads every shard back to describe it
    (`manifest.describe_shards`)."""
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
    # Every check of the input comes before the output folder is touched: a refused
    # command leaves nothing that would refuse the corrected one.
    found = survey(input_dir, validation_labels, num_workers, seed)
    for split, entries, num_shards in (("train", found.train, train_shards),
                                       ("validation", found.validation, validation_shards)):
        if len(entries) < num_shards:
            raise InputError(
                f"{len(entries)} readable {split} images cannot fill {num_shards} shards; use at most "
                f"{len(entries)} (--{split}_shards).")
    tf.io.gfile.makedirs(output_dir)
    with held_exclusively(output_dir, "conversion"):
        check_no_other_shard_set(output_dir, "train", train_shards)
        check_no_other_shard_set(output_dir, "validation", validation_shards)
        plan = conversion_plan(input_dir, found.train, found.validation, train_shards, validation_shards)
        check_same_plan(output_dir, plan)
        remove_temporary_files(output_dir)
        manifest.remove_manifest(output_dir)
        _write_text(os.path.join(output_dir, PLAN_FILE), json.dumps(plan, indent=2) + "\n")
        _write_text(os.path.join(output_dir, SYNSETS_FILE), "".join(f"{synset}\n" for synset in found.synsets))
        return _convert_splits(output_dir, found, train_shards, validation_shards, num_workers)


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
    splits_with_shards = {
        parsed[0] for parsed in map(parse_shard_name, tf.io.gfile.listdir(output_dir)) if parsed is not None
    }
    # Only the keys of a split with shards on disk decide what those shards hold; a
    # command refused before writing that split's shards left nothing to mix.
    differences = sorted(
        key for key in plan
        if previous.get(key) != plan[key] and key.split("_", 1)[0] in splits_with_shards
    )
    if differences:
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
    found: ConversionInput,
    train_shards: int,
    validation_shards: int,
    num_workers: int,
) -> dict[str, SplitSummary]:
    summaries = found.summaries
    for split, entries, num_shards in (("train", found.train, train_shards),
                                       ("validation", found.validation, validation_shards)):
        written = convert_split(split, entries, output_dir, num_shards, num_workers)
        summaries[split].add(written)
        summaries[split].shards = written.shards
    manifest.write_manifest(output_dir, manifest.Manifest(
        {split: tuple(summary.shards) for split, summary in summaries.items()},
        classes=tuple(found.synsets), first_label=1,
    ))
    return summaries


def format_summary(summaries: dict[str, SplitSummary]) -> str:
    """Per split: what was written and converted, then one line per skipped file and per
    ignored entry."""
    lines = []
    for split, summary in summaries.items():
        lines.append(
            f"{split}: wrote {summary.images_written} images in "
            f"{summary.shards_written} shards; {summary.shards_already_complete} "
            f"shards were already complete; converted {summary.reencoded or 'none'}; "
            f"skipped {len(summary.skipped)} unreadable file(s); ignored {len(summary.ignored)} "
            "entries that are not images"
        )
        lines.extend(f"  skipped: {line}" for line in summary.skipped)
        lines.extend(f"  ignored: {line}" for line in summary.ignored)
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
