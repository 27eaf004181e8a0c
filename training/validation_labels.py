"""The validation labels file of an ImageNet folder: which synset each validation image is.

`read_validation_labels` reads the three formats in use and matches them to the image
files by name, never by position alone, so that a missing or extra image cannot shift
the labels after it (`training.imagenet_folder.find_validation_images` calls it):

- Kaggle's LOC_val_solution.csv: "ImageId,PredictionString", the ImageId the file name
  without its extension, the first word of PredictionString the synset;
- "<file> <synset>" per line, the file with or without its extension;
- one synset per line, the imagenet_to_gcs list: line k labels the k-th sorted file
  name, which for the official names (ILSVRC2012_val_0000000k) is file number k.
"""

from __future__ import annotations

import csv
import io
import os
import re
from typing import Sequence

import tensorflow as tf

from training.errors import InputError

# The header of Kaggle's ImageNet localisation challenge validation labels.
_KAGGLE_HEADER = "ImageId,PredictionString"

# The official validation file names; line k of the imagenet_to_gcs list labels number k.
_ILSVRC_VALIDATION_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.\w+")


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
