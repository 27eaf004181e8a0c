"""A load test of an exported `serving_default` signature, in-process.

Threads call the signature with batches of valid images mixed with invalid ones (30%
of requests carry one invalid file). Every valid answer must equal the single-image
answer (atol 1e-4: oneDNN picks its convolution algorithm by batch size, which moves
probabilities by up to ~2e-5, measured) and every invalid request must be refused
with the decode error. Resident memory is read after a warm-up run and at the end.
Used by the serving tests (short) and `benchmarks/serving_speed.py` (60 s).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable, Sequence

import numpy as np
import psutil
import tensorflow as tf

INVALID_FRACTION = 0.3


@dataclasses.dataclass
class LoadReport:
    """Counts of the timed run (after the warm-up); failures of both runs."""

    threads: int
    seconds: float
    valid_answered: int
    invalid_refused: int
    failures: list[str]
    rss_after_warmup_bytes: int
    rss_end_bytes: int

    @property
    def requests_per_s(self) -> float:
        return (self.valid_answered + self.invalid_refused + len(self.failures)) / self.seconds


def run_load_test(
    serve: Callable[..., dict],
    images: Sequence[bytes],
    invalid_images: Sequence[bytes],
    threads: int,
    seconds: float,
    warmup_seconds: float,
    max_batch: int = 4,
) -> LoadReport:
    """Runs `threads` threads for `warmup_seconds`, then again for `seconds`.

    Args:
      serve: the loaded `serving_default` signature (`image_bytes` in).
      images: valid encoded images.
      invalid_images: files that must be refused (empty, not an image, truncated).
      max_batch: valid images per request, 1 to this many.

    Returns:
      The timed run's counts; `failures` describes every wrong answer, accepted
      invalid request or unexpected error message of the warm-up and the timed run.
    """
    reference = [serve(image_bytes=tf.constant([image]))["probabilities"].numpy()[0]
                 for image in images]
    counts = {"valid": 0, "refused": 0}
    failures: list[str] = []
    lock = threading.Lock()

    def worker(seed: int, stop: float) -> None:
        rng = np.random.default_rng(seed)
        while time.monotonic() < stop:
            picks = rng.choice(len(images), size=int(rng.integers(1, max_batch + 1)))
            batch = [images[i] for i in picks]
            if rng.random() < INVALID_FRACTION:
                invalid = invalid_images[int(rng.integers(len(invalid_images)))]
                batch.insert(int(rng.integers(0, len(batch) + 1)), invalid)
                try:
                    serve(image_bytes=tf.constant(batch))
                    outcome = "an invalid image was accepted"
                except tf.errors.InvalidArgumentError as error:
                    outcome = "refused" if "could not be decoded" in error.message else error.message[:200]
            else:
                probabilities = serve(image_bytes=tf.constant(batch))["probabilities"].numpy()
                correct = np.allclose(probabilities, [reference[i] for i in picks], atol=1e-4)
                outcome = "valid" if correct else f"wrong answer for images {picks.tolist()}"
            with lock:
                if outcome in counts:
                    counts[outcome] += 1
                else:
                    failures.append(outcome)

    def run(duration: float) -> None:
        stop = time.monotonic() + duration
        pool = [threading.Thread(target=worker, args=(seed, stop)) for seed in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()

    process = psutil.Process()
    run(warmup_seconds)  # thread pools, allocator arenas
    before = dict(counts)
    rss_after_warmup = process.memory_info().rss
    start = time.monotonic()
    run(seconds)
    return LoadReport(
        threads=threads,
        seconds=time.monotonic() - start,
        valid_answered=counts["valid"] - before["valid"],
        invalid_refused=counts["refused"] - before["refused"],
        failures=list(failures),
        rss_after_warmup_bytes=rss_after_warmup,
        rss_end_bytes=process.memory_info().rss,
    )
