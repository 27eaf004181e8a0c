"""Checks a TFRecord folder completely against its manifest.json.

Usage:
  python -m training.verify_data DIR [--num_workers 8] [--decode_images]

Reads every shard that `DIR/manifest.json` lists (written by `training.prepare_imagenet`
and `training.demo_data`): each record's CRC, the record count, the size and the SHA-256
of the file, and looks for files that a split's pattern matches but the manifest does not
list (`training.shard_set.verify_shards`, by the rules the trainer applies at start). The
trainer checks only names and sizes when it starts, since hashing all of ImageNet takes
minutes (docs/design.md, "Checking the shards"). --decode_images also
decodes every image completely, naming each record whose JPEG fails to decode or that
the trainer would skip unread (not a complete JPEG: `preprocessing.is_decodable_jpeg`,
the graph side of the rule in `lambda_keras.data.image_files`). Prints one line per
problem, naming the file; exit status 0 when there are none, 1 when there are, 2 when
DIR has no readable manifest.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Sequence

from lambda_keras import cli
from training import shard_set


@cli.entry_point("python -m training.verify_data")
def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m training.verify_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", help="The TFRecord folder (local or gs://).")
    parser.add_argument("--num_workers", type=int, default=os.cpu_count() or 1,
                        help="Shards read in parallel.")
    parser.add_argument("--decode_images", action="store_true",
                        help="Also decode every image completely (about a core-hour for ImageNet).")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    problems = shard_set.verify_shards(args.data_dir, args.num_workers, args.decode_images)
    for problem in problems:
        print(problem)
    seconds = time.perf_counter() - start
    print(f"{len(problems)} problem(s) in {args.data_dir} ({seconds:.1f} s).")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
