"""The survey of an ImageNet input folder: every image the converter will write, checked.

`survey` lists the training images (`train/<synset>/`, `find_train_images`) and the
validation images (`val/` or `validation/`, labelled by name from the labels file:
`find_validation_images`, `training.validation_labels`), and decodes each one once under
the acceptance rule of `lambda_keras.data.image_files`, so that every refusal comes
before `training.prepare_imagenet` writes anything. Entries whose name starts with "."
and files not named .jpeg/.jpg/.png are ignored and listed; files the rule refuses
(unreadable, cut short, too large, a FIFO, socket, folder or broken link named like an
image) are skipped and listed (`SplitSummary`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import random
import stat
from typing import Sequence

import tensorflow as tf
import tqdm

from lambda_keras.data import image_files, manifest
from lambda_keras.data.image_files import UnreadableImageError
from training.errors import InputError
from training.validation_labels import read_validation_labels

_IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


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
