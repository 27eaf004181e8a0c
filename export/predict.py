"""Classifies image files with an exported SavedModel, in process, without a server.

Usage:
  python -m export.predict EXPORT IMAGE [IMAGE ...]

EXPORT is a version directory (``BASE/NAME/3``) or a model directory (``BASE/NAME``,
whose highest version is used). The images go through the export's
``serving_default`` signature as raw bytes, exactly as TF Serving would feed them, so
this checks the export end to end; it needs TensorFlow only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf

from lambda_keras import cli
from export.saved_model import DECODE_ERROR, TOO_LARGE_ERROR, existing_versions


def resolve_version_dir(export: str | Path) -> Path:
    """``BASE/NAME/<version>`` for a version directory or the highest version of ``BASE/NAME``."""
    export = Path(export)
    if (export / "saved_model.pb").is_file():
        return export
    versions = existing_versions(export)
    if not versions:
        raise FileNotFoundError(
            f"{export} is neither a SavedModel (no saved_model.pb) nor a model directory "
            "with numbered versions"
        )
    return export / str(versions[-1])


def classify(export: str | Path, image_paths: Sequence[str | Path]) -> list[list[tuple[str, float]]]:
    """Top-k ``(label, score)`` pairs per image, from ``serving_default``."""
    version_dir = resolve_version_dir(export)
    serving = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    image_bytes = tf.constant([Path(path).read_bytes() for path in image_paths])
    outputs = serving(image_bytes=image_bytes)
    labels = outputs["top_k_labels"].numpy()
    scores = outputs["top_k_scores"].numpy()
    return [
        [(label.decode("utf-8"), float(score)) for label, score in zip(image_labels, image_scores)]
        for image_labels, image_scores in zip(labels, scores)
    ]


def _classifies(export: str | Path, image_path: str | Path) -> bool:
    try:
        classify(export, [image_path])
    except tf.errors.InvalidArgumentError:
        return False
    return True


@cli.entry_point("python -m export.predict")
def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m export.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", help="BASE/NAME or BASE/NAME/<version>")
    parser.add_argument("images", nargs="+", help="JPEG or PNG files")
    args = parser.parse_args(argv)
    missing = [path for path in args.images if not Path(path).is_file()]
    if missing:
        print(f"python -m export.predict: error: no such image file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        results = classify(args.export, args.images)
    except FileNotFoundError as error:
        print(f"python -m export.predict: error: {error}", file=sys.stderr)
        return 2
    except tf.errors.InvalidArgumentError as error:
        # The batch fails as a whole; classifying the images one by one names the bad ones.
        bad = [path for path in args.images if not _classifies(args.export, path)]
        known = [reason for reason in (DECODE_ERROR, TOO_LARGE_ERROR) if reason in error.message]
        reason = known[0] if known else error.message.strip().splitlines()[-1]
        print(f"python -m export.predict: error: {', '.join(bad) or 'the batch'}: {reason}", file=sys.stderr)
        return 2
    print(f"Classified with {resolve_version_dir(args.export)}:")
    for path, top_k in zip(args.images, results):
        print(f"{path}: " + ", ".join(f"{label} ({score:.3f})" for label, score in top_k))
    return 0


if __name__ == "__main__":
    sys.exit(main())
