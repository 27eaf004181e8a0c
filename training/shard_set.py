"""The shard set of a TFRecord folder: which files make up a split, and the rules they meet.

Every data-integrity rule over a folder's files is one function here, with one message,
used by the converter (`training.prepare_imagenet`, `training.demo_data`), the input
pipeline (`training.tfrecord_source`), the run's preflight (`training.preflight`) and
the full check (`training.verify_data`):

- the listing: `list_shards` (and `list_files`, its paths) gives the files a split's
  pattern matches, checked by the rules below, minival held out of train, shared
  between hosts (`_names_of_this_host`); `records_per_host` counts them from the
  manifest;
- one set per split: `other_shard_set` — one split's shards in a folder all have one
  shard count; two sets would both match `<split>-*` and every image be read twice
  (`check_one_shard_set_to_write` for the writers, `_names_without_manifest` for the
  reader);
- against the manifest (`lambda_keras.data.manifest`): `manifest_problems` — a file the
  pattern matches but the manifest does not list (`unlisted`), a listed file that is
  missing (`missing`), or of another size (`wrong_size`); `verify_shards` adds what only
  a full read tells (record count, SHA-256);
- without a manifest: `_names_without_manifest` — temporary files, and gaps in a set
  named `<split>-NNNNN-of-MMMMM`;
- the label map: `labels_outside_classes` — the manifest's labels, after the label
  offset, fit [0, num_classes).

A file's problem is a short phrase ("missing (...)") put after its path; a refusal of
the whole set is a DataIntegrityError (ShardSetError for a writer) of one line.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fnmatch
import os
import sys
from typing import Iterable, Mapping

import tensorflow as tf

from lambda_keras.atomic_files import TEMP_MARKER
from lambda_keras.data import manifest, records
from lambda_keras.data.manifest import MANIFEST_NAME, ShardInfo
from training.errors import ConfigError, DataIntegrityError
from training.input_config import SPLITS, InputConfig

_STAT_THREADS = 32
# Problems named in a DataIntegrityError; the rest are counted.
_PROBLEMS_SHOWN = 3


@dataclasses.dataclass(frozen=True)
class ShardFile:
    """A TFRecord file to read: its path, size, and record count (-1 without a manifest)."""

    path: str
    size_bytes: int
    num_records: int


# ---------------------------------------------------------------- the rules


def other_shard_set(directory: str, names: Iterable[str], writing: tuple[str, int] | None = None) -> str | None:
    """Why `names` (file names in `directory`, sub-folders allowed) hold one split's
    shards from two sets of different counts, or None when they do not.

    `writing` is (split, num_shards) of a set about to be written into `directory`:
    shards of the same count are the same set (a rerun resumes it).
    """
    sets: dict[tuple[str, str], dict[int, str]] = {}  # (folder, split) -> {count: its first file}
    for name in sorted(names):
        folder, file_name = os.path.split(name)
        parsed = records.parse_shard_name(file_name)
        if parsed is not None:
            sets.setdefault((folder, parsed[0]), {}).setdefault(parsed[2], name)
    if writing is not None:
        split, count = writing
        sets.setdefault(("", split), {}).setdefault(count, records.shard_name(split, 0, count))
    for (folder, split), counts in sorted(sets.items()):
        if len(counts) < 2:
            continue
        adding = writing is not None and writing[0] == split and not folder
        if adding:
            other = writing[1]
            kept = min(count for count in counts if count != other)
            other_text = f"writing {other} {split} shards"
        else:
            other, kept = min(counts), max(counts)
            other_text = f"{os.path.join(directory, counts[other])!r} to a set of {other}"
        low, high = sorted((kept, other))
        where = os.path.join(directory, folder) if folder else directory
        remedy = f"Use {kept} {split} shards to resume that set, or write into an empty folder" if adding else (
            "Delete one set")
        return (
            f"{os.path.join(directory, counts[kept])!r} belongs to a set of {kept} {split} shards; {other_text}, so "
            f"{where!r} {'would hold' if adding else 'holds'} two sets of {split} shards, of "
            f"{low} ({os.path.basename(counts[low])}, ...) and {high} ({os.path.basename(counts[high])}, ...) "
            f"files: reading both would read every image twice. {remedy}."
        )
    return None


def stray(name: str) -> str:
    """What a file that belongs to no shard set is: a temporary file of a writer, or a stray file."""
    return "a temporary file of an interrupted conversion" if TEMP_MARKER in name else "a stray file"


def unlisted(name: str) -> str:
    """The problem of a file that a split's pattern matches but the manifest does not list."""
    return f"not listed in {MANIFEST_NAME} ({stray(name)})"


def missing(expected: ShardInfo | None = None, set_size: int | None = None) -> str:
    """The problem of a file that should be there: listed in the manifest (`expected`),
    or a gap in its `<split>-NNNNN-of-MMMMM` set of `set_size` (no manifest)."""
    if expected is not None:
        return f"missing ({MANIFEST_NAME} lists it with {expected.num_records} records)"
    if set_size is not None:
        return f"missing from its set of {set_size} (an interrupted conversion?)"
    return "missing"


def wrong_size(size: int, expected: ShardInfo) -> str | None:
    """The problem of a file whose size differs from the manifest's, or None."""
    if size == expected.size_bytes:
        return None
    return f"{size} bytes, {MANIFEST_NAME} says {expected.size_bytes} (truncated, or another file)"


def manifest_problems(
    listed: Mapping[str, ShardInfo], present: Iterable[str], sizes: Mapping[str, int | None]
) -> dict[str, str]:
    """{file name: problem} of a folder's files against its manifest.

    Args:
      listed: the manifest's shards under check, by file name.
      present: the names found that ought to be listed (those a split's pattern matches).
      sizes: the size in bytes of each listed file to check (None: it is missing).
    """
    problems = {name: unlisted(name) for name in present if name not in listed}
    for name, size in sizes.items():
        problem = missing(listed[name]) if size is None else wrong_size(size, listed[name])
        if problem is not None:
            problems[name] = problem
    return problems


def labels_outside_classes(first: int, last: int, num_classes: int) -> str | None:
    """Why class ids first..last (the data's labels after input.label_offset) do not fit
    the classifier's [0, num_classes), or None when they do."""
    if 0 <= first and last < num_classes:
        return None
    return (f"the data's labels map to class ids {first}..{last} after input.label_offset, outside "
            f"[0, {num_classes}) (input.num_classes)")


# ---------------------------------------------------------------- the writers' check


def check_one_shard_set_to_write(directory: str, split: str, num_shards: int) -> None:
    """Refuses to write `num_shards` shards of `split` next to a set of another count.

    Raises:
      records.ShardSetError: `other_shard_set`'s message.
    """
    names = tf.io.gfile.listdir(directory) if tf.io.gfile.isdir(directory) else []
    problem = other_shard_set(directory, names, writing=(split, num_shards))
    if problem is not None:
        raise records.ShardSetError(problem)


# ---------------------------------------------------------------- the listing


def list_files(
    config: InputConfig,
    split: str,
    input_context: tf.distribute.InputContext | None = None,
    skipped_files: dict[str, str] | None = None,
) -> list[str]:
    """The TFRecord files this host reads for `split`, sorted by name, once checked.

    "train" and "minival" share `train_file_pattern`: minival is the last
    `minival_num_shards` files and train the rest. With an `input_context`, host i of
    n reads files i, i+n, i+2n, ..., so the hosts together read every file once.

    The files are checked before they are split, against `data_dir/manifest.json` when
    there is one (`manifest_problems`: among the files the pattern matches, those not
    listed, and among this host's, those missing or of another size), and its label
    map (`labels_outside_classes`); without one by their names
    (`_names_without_manifest`). A problem raises DataIntegrityError naming the file,
    or, with `skip_corrupt_records`, leaves that file out with a warning and an entry
    {path: problem} in `skipped_files`. Holding out minival and sharing between hosts
    work on the complete set, so a file left out never moves another between the splits.

    Raises:
      FileNotFoundError: `data_dir` does not exist or the pattern matches nothing
        (the message names the pattern).
      DataIntegrityError: see above; also when no file is left to read, or there are
        fewer files than hosts to share them.
      ConfigError: minival_num_shards leaves no training file, or is 0 for "minival".
      ValueError: bad split.
    """
    return [shard.path for shard in list_shards(config, split, input_context, skipped_files)]


def list_shards(
    config: InputConfig,
    split: str,
    input_context: tf.distribute.InputContext | None = None,
    skipped_files: dict[str, str] | None = None,
) -> list[ShardFile]:
    """`list_files`, with the size and record count of each file to read."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    if not tf.io.gfile.isdir(config.data_dir):
        raise FileNotFoundError(
            f"Input data_dir {config.data_dir!r} does not exist or is not a directory."
        )
    pattern = _pattern(config, split)
    full_pattern = os.path.join(config.data_dir, pattern)
    folder = os.path.join(config.data_dir, "")
    matched = sorted(path[len(folder):] for path in tf.io.gfile.glob(full_pattern))
    if not matched:
        raise FileNotFoundError(
            f"No TFRecord files match {full_pattern!r} (split {split!r})."
        )
    shard_manifest = _read_manifest(config.data_dir)
    if shard_manifest is None:
        print(f"Note: {config.data_dir!r} has no {MANIFEST_NAME}; its {split} files are checked by "
              "name and size only.", file=sys.stderr)
        names, problems = _names_without_manifest(config.data_dir, matched)
        listed = {}
    else:
        first = shard_manifest.first_label + config.resolved_label_offset
        labels = labels_outside_classes(first, first + shard_manifest.num_classes - 1, config.num_classes)
        if labels is not None:
            raise DataIntegrityError(f"{manifest.manifest_path(config.data_dir)!r}: {labels}.")
        listed = _listed(shard_manifest, pattern)
        names = sorted(listed)
        problems = manifest_problems(listed, matched, {})

    names = _names_of_this_host(config, split, names, input_context)
    sizes = dict(zip(names, _file_sizes([os.path.join(config.data_dir, name) for name in names])))
    if listed:
        problems.update(manifest_problems(listed, (), sizes))
    else:
        problems.update({name: missing() for name, size in sizes.items() if size is None and name not in problems})
    _report_problems(config, split, problems, skipped_files)
    shards = [
        ShardFile(os.path.join(config.data_dir, name), sizes[name], listed[name].num_records if listed else -1)
        for name in names if name not in problems
    ]
    if not shards:
        raise DataIntegrityError(
            f"No readable {split} files are left in {config.data_dir!r} after leaving out "
            f"{len(problems)} with problems."
        )
    return shards


def records_per_host(config: InputConfig, split: str, hosts: int) -> tuple[int, ...] | None:
    """The records each of `hosts` input pipelines reads of `split`, from the manifest.

    The same files `list_shards` gives each host, counted as the manifest lists them
    (files that skip_corrupt_records leaves out still count: an upper bound). None
    for a TFDS source or a folder without a manifest.

    Raises:
      DataIntegrityError, ConfigError: as `list_files`.
    """
    if config.source != "tfrecord":
        return None
    shard_manifest = _read_manifest(config.data_dir)
    if shard_manifest is None:
        return None
    listed = _listed(shard_manifest, _pattern(config, split))
    counts = []
    for host in range(hosts):
        context = tf.distribute.InputContext(num_input_pipelines=hosts, input_pipeline_id=host,
                                             num_replicas_in_sync=hosts)
        counts.append(sum(listed[name].num_records
                          for name in _names_of_this_host(config, split, sorted(listed), context)))
    return tuple(counts)


def _pattern(config: InputConfig, split: str) -> str:
    return config.eval_file_pattern if split == "validation" else config.train_file_pattern


def _read_manifest(data_dir: str) -> manifest.Manifest | None:
    try:
        return manifest.read_manifest(data_dir)
    except manifest.ManifestError as error:
        raise DataIntegrityError(str(error)) from error


def _listed(shard_manifest: manifest.Manifest, pattern: str) -> dict[str, ShardInfo]:
    """The manifest's shards that `pattern` matches, by file name."""
    return {name: shard for name, shard in shard_manifest.shards().items() if fnmatch.fnmatchcase(name, pattern)}


def _names_of_this_host(
    config: InputConfig, split: str, names: list[str], input_context: tf.distribute.InputContext | None
) -> list[str]:
    """Of the split's sorted file names, those this host reads: minival held out of
    train, then every `num_input_pipelines`-th name from `input_pipeline_id`."""
    if split != "validation" and config.minival_num_shards:
        if config.minival_num_shards >= len(names):
            raise ConfigError(
                f"input.minival_num_shards={config.minival_num_shards} leaves no training "
                f"files: {os.path.join(config.data_dir, _pattern(config, split))!r} matches only {len(names)}."
            )
        held_out = len(names) - config.minival_num_shards
        names = names[held_out:] if split == "minival" else names[:held_out]
    elif split == "minival":
        raise ConfigError(
            'Split "minival" needs input.minival_num_shards > 0 (the paper held out 20 of '
            "1024 training shards)."
        )
    if input_context is not None and input_context.num_input_pipelines > 1:
        pipelines = input_context.num_input_pipelines
        if len(names) < pipelines:
            raise DataIntegrityError(
                f"{len(names)} files for split {split!r} cannot be shared between "
                f"{pipelines} input pipelines (hosts); write more shards."
            )
        names = names[input_context.input_pipeline_id :: pipelines]
    return names


def _names_without_manifest(data_dir: str, matched: list[str]) -> tuple[list[str], dict[str, str]]:
    """(the names to read, {name: problem}) of the matched files of a folder without a manifest.

    Temporary files are problems; a set named `<split>-NNNNN-of-MMMMM` is completed to
    all its M names, the absent ones being problems (an interrupted conversion).

    Raises:
      DataIntegrityError: two such sets of one split with different counts (`other_shard_set`).
    """
    two_sets = other_shard_set(data_dir, matched)
    if two_sets is not None:
        raise DataIntegrityError(two_sets)
    problems = {name: stray(name) for name in matched if TEMP_MARKER in name}
    names = {name for name in matched if name not in problems}
    for name in list(names):
        folder, file_name = os.path.split(name)
        parsed = records.parse_shard_name(file_name)
        if parsed is None:
            continue
        split_name, _, count = parsed
        for index in range(count):
            member = os.path.join(folder, records.shard_name(split_name, index, count))
            if member not in names:
                names.add(member)
                problems[member] = missing(set_size=count)
    return sorted(names), problems


def _file_sizes(paths: list[str]) -> list[int | None]:
    """The size in bytes of each file, None for a missing one."""

    def size(path: str) -> int | None:
        try:
            return tf.io.gfile.stat(path).length
        except tf.errors.NotFoundError:
            return None

    # One request per file on a remote file system: in parallel, so that a thousand
    # shards on GCS take seconds, not a minute.
    with concurrent.futures.ThreadPoolExecutor(max_workers=_STAT_THREADS) as pool:
        return list(pool.map(size, paths))


def _report_problems(
    config: InputConfig, split: str, problems: dict[str, str], skipped_files: dict[str, str] | None
) -> None:
    """Raises DataIntegrityError for `problems` ({name: problem}), or, with
    skip_corrupt_records, warns about each and records it in `skipped_files`."""
    paths = {os.path.join(config.data_dir, name): problem for name, problem in sorted(problems.items())}
    if paths and not config.skip_corrupt_records:
        named = "; ".join(f"{path}: {problem}" for path, problem in list(paths.items())[:_PROBLEMS_SHOWN])
        more = f"; and {len(paths) - _PROBLEMS_SHOWN} more" if len(paths) > _PROBLEMS_SHOWN else ""
        raise DataIntegrityError(
            f"{len(paths)} problem(s) with the {split} files (input.skip_corrupt_records=false): {named}{more}."
        )
    for path, problem in paths.items():
        print(f"WARNING: leaving out {path}: {problem}.", file=sys.stderr)
        if skipped_files is not None:
            skipped_files[path] = problem


# ---------------------------------------------------------------- the full check


def verify_shards(directory: str, num_workers: int = 8, decode_images: bool = False) -> list[str]:
    """Checks a TFRecord folder against its manifest by reading every shard.

    With `decode_images`, also decodes every record's image completely
    (`records.undecodable_images`): about a core-hour for ImageNet.

    Returns:
      One line per problem, naming the file: `manifest_problems` over the files that a
      split's `<split>-*` pattern matches (temporary files of it included), a shard
      unreadable (truncated or failing a CRC check), or whose record count or SHA-256
      differs from the manifest's. An empty list when everything matches.

    Raises:
      ManifestError: the folder has no manifest, or it cannot be read.
    """
    shard_manifest = manifest.read_manifest(directory)
    if shard_manifest is None:
        raise manifest.ManifestError(f"No {MANIFEST_NAME} in {directory!r}: nothing to verify the shards against.")
    listed = shard_manifest.shards()
    present = [
        name for name in tf.io.gfile.listdir(directory)
        if any(name.startswith((f"{split}-", f"{TEMP_MARKER}{split}-")) for split in shard_manifest.splits)
    ]
    to_read = sorted(set(listed) & set(present))

    def read(name: str) -> ShardInfo | str:
        path = os.path.join(directory, name)
        try:
            return manifest.describe_shard(path)
        except tf.errors.DataLossError as error:
            return f"unreadable ({error.message})"

    with concurrent.futures.ThreadPoolExecutor(max_workers=num_workers) as pool:
        found = dict(zip(to_read, pool.map(read, to_read)))
    sizes = {name: None for name in listed if name not in found}
    sizes.update({name: shard.size_bytes for name, shard in found.items() if isinstance(shard, ShardInfo)})
    problems = manifest_problems(listed, present, sizes)
    lines = [f"{os.path.join(directory, name)}: {problem}" for name, problem in sorted(problems.items())]
    for name, shard in found.items():
        path = os.path.join(directory, name)
        if isinstance(shard, str):
            lines.append(f"{path}: {shard}")
            continue
        lines += [
            f"{path}: {field} is {getattr(shard, field)}, {MANIFEST_NAME} says {getattr(listed[name], field)}"
            for field in ("num_records", "sha256") if getattr(shard, field) != getattr(listed[name], field)
        ]
        if decode_images:
            lines += records.undecodable_images(path)
    return lines
