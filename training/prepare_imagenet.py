"""Converts an ImageNet folder into sharded TFRecords in the `imagenet_to_gcs` layout.

Usage:
  python -m training.prepare_imagenet --input DIR --output DIR
      [--train_shards 1024] [--validation_shards 128] [--num_workers 8]
      [--validation_labels FILE] [--seed 0]

Input layout (ILSVRC2012 as extracted from the official tars):
  DIR/train/<synset>/*.JPEG           training images, one folder per class
  DIR/val/*.JPEG (or DIR/validation/) validation images
  DIR/synset_labels.txt               the validation labels, matched to the files by
                                      name (`training.validation_labels`): "<file> <synset>"
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

The whole plan is checked before the output folder is touched
(`training.imagenet_folder.survey`): the folders and the labels file exist, the labels
file labels exactly the validation images present (the first mismatch is named), every
image is decoded once under the acceptance rule of
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
when that split has shards on disk: two sets of shards would be read together
(`training.shard_set.other_shard_set`). A second
conversion into the same folder while one runs is refused (`training.folder_lock`). The
manifest is removed at the start and written once all shards exist, so a folder has one
only when its conversion finished. Images are checked and shards converted by parallel
worker threads (the decoders and the TFRecord writer release the GIL for the heavy work).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import sys
from typing import Any, Sequence

import tensorflow as tf
import tqdm
from PIL import Image

from lambda_keras import cli
from lambda_keras.cli import UserError
from lambda_keras.data import image_files, manifest
from lambda_keras.data.image_files import UnreadableImageError
from lambda_keras.atomic_files import remove_temporary_files, write_text_atomically
from lambda_keras.data.records import (
    ShardSetError,
    image_example,
    parse_shard_name,
    shard_name,
    write_records_atomically,
)
from training import shard_set
from training.errors import InputError
from training.folder_lock import held_exclusively
from training.imagenet_folder import ConversionInput, ImageEntry, SplitSummary, survey

TRAIN_SHARDS = 1024
VALIDATION_SHARDS = 128
SYNSETS_FILE = "synsets.txt"
PLAN_FILE = "conversion_plan.json"
# Quality of re-encoded (converted) images: the reference's choice, near-lossless.
_REENCODE_QUALITY = 100


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
        shard_set.check_one_shard_set_to_write(output_dir, "train", train_shards)
        shard_set.check_one_shard_set_to_write(output_dir, "validation", validation_shards)
        plan = conversion_plan(input_dir, found.train, found.validation, train_shards, validation_shards)
        check_same_plan(output_dir, plan)
        remove_temporary_files(output_dir)
        manifest.remove_manifest(output_dir)
        write_text_atomically(os.path.join(output_dir, PLAN_FILE), json.dumps(plan, indent=2) + "\n")
        write_text_atomically(os.path.join(output_dir, SYNSETS_FILE),
                              "".join(f"{synset}\n" for synset in found.synsets))
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


PROG = "python -m training.prepare_imagenet"


@cli.entry_point(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="ImageNet folder (train/, val/).")
    parser.add_argument("--output", required=True, help="Output folder (local or gs://).")
    parser.add_argument("--train_shards", type=cli.integer_at_least(1), default=TRAIN_SHARDS)
    parser.add_argument("--validation_shards", type=cli.integer_at_least(1), default=VALIDATION_SHARDS)
    parser.add_argument("--num_workers", type=cli.integer_at_least(1), default=os.cpu_count() or 1)
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
