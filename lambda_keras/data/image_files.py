"""Which image files the data accepts, and the 8-bit RGB pixels of the ones it accepts.

One rule, shared by every reader of images: an image is acceptable when TensorFlow's
decoders (`tf.io.decode_image`) decode it, and its header declares at most `MAX_PIXELS`
pixels. `training.prepare_imagenet` applies it to every input file before it writes
anything; the graph-side checks that the training reader and serving run on every
record or request without decoding (`preprocessing.is_decodable_jpeg`,
`preprocessing.is_servable_image`) find the end of a JPEG the way `jpeg_end` does here,
so bytes after the end marker (a phone's trailer, a motion photo's video) are accepted
everywhere, as the decoders accept them, and a truncated file is refused everywhere.

Pixels (`rgb8_pixels`) are PIL's conversion to RGB (palette colours, grey replicated,
alpha dropped, as TensorFlow's ``channels=3`` drops it), except that 16-bit samples v
become round(v / 257), which PIL cannot give (it clips 16-bit grey to 255).
"""

from __future__ import annotations

import dataclasses
import io
import re
import warnings

import numpy as np
import tensorflow as tf
from PIL import Image

from lambda_keras.cli import UserError

# The largest image accepted, height x width as its header declares: a 50 MP camera
# frame fits; a decompression bomb (a small PNG declaring 40000 x 40000) would take
# gigabytes to decode. The same limit as serving's default (`export.saved_model`).
MAX_PIXELS = 50_000_000

_SOI = b"\xff\xd8"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Markers without a length field: TEM and the restart markers RST0-7.
_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])
_SOS, _EOI = 0xDA, b"\xff\xd9"


class UnreadableImageError(UserError, ValueError):
    """A file that the acceptance rule refuses; the message names it and says why."""


class TooLargeImageError(UnreadableImageError):
    """An image whose header declares more than `MAX_PIXELS` pixels."""


@dataclasses.dataclass(frozen=True)
class AcceptedImage:
    """What the acceptance rule learnt about one file.

    Attributes:
      height, width: of the decoded image, in pixels.
      kept_as_jpeg: its bytes up to the JPEG end marker are stored as they are (an
        8-bit RGB or grey JPEG); otherwise it is converted (`rgb8_pixels`) and re-encoded.
      reason: why it is converted ("png", "cmyk", "16-bit png", ...), or "trailing
        bytes" when only the bytes after its end marker are dropped; None when the file
        is stored unchanged.
    """

    height: int
    width: int
    kept_as_jpeg: bool
    reason: str | None


def jpeg_end(data: bytes) -> int | None:
    """The length of the JPEG at the start of `data`: the offset just past its EOI marker.

    Walks the marker segments from SOI to the first scan (SOS), skipping each by its
    length field, so that an EXIF thumbnail (a whole JPEG inside APP1) is skipped, then
    finds the first EOI (FF D9) after it: entropy-coded data never holds FF D9 (an FF in
    it is followed by 00 or a restart marker), so that is the image's own end, and
    whatever follows is a trailer the decoders ignore. None when `data` does not start
    with SOI, a segment runs past the end, or no EOI follows the first scan (a
    truncated file, which the decoders refuse).
    """
    if not data.startswith(_SOI):
        return None
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # a fill byte before a marker
            position += 1
        elif marker == _SOS:
            end = data.find(_EOI, position + 2)
            return None if end < 0 else end + 2
        elif marker in _STANDALONE_MARKERS:
            position += 2
        else:
            position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return None


def declared_pixels(data: bytes, name: str) -> tuple[int, int, str, str]:
    """(height, width, format, mode) from the header of an image file, nothing decoded.

    Raises:
      UnreadableImageError: PIL knows no such format, or the header is damaged.
      TooLargeImageError: it declares more than `MAX_PIXELS` pixels.
    """
    if not data:
        raise UnreadableImageError(f"{name}: empty (0 bytes)")
    try:
        # PIL's own warning (above 89 MP) would repeat what the size check says below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                height, width, image_format, mode = image.height, image.width, image.format, image.mode
    except Image.UnidentifiedImageError:
        raise UnreadableImageError(f"{name}: not an image (no known image format)") from None
    except Image.DecompressionBombError as error:
        raise TooLargeImageError(f"{name}: too large ({error})") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise UnreadableImageError(f"{name}: {error}") from error
    if height * width > MAX_PIXELS:
        raise TooLargeImageError(
            f"{name}: too large ({width} x {height} pixels, more than {MAX_PIXELS})")
    return height, width, image_format, mode


def accept_image(data: bytes, name: str) -> AcceptedImage:
    """Applies the acceptance rule (module docstring) to the bytes of one file.

    Decodes the file completely with TensorFlow (the bytes it would store, for a JPEG
    kept as it is) and, for a file to convert, with PIL too.

    Raises:
      UnreadableImageError: naming `name` and the decoder's reason.
      TooLargeImageError: the header declares more than `MAX_PIXELS` pixels.
    """
    height, width, image_format, mode = declared_pixels(data, name)
    kept_as_jpeg = image_format == "JPEG" and mode in ("RGB", "L")
    end = jpeg_end(data) if kept_as_jpeg else None
    try:
        decoded = tf.io.decode_image(data[:end], channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        raise UnreadableImageError(f"{name}: TensorFlow does not decode it ({_reason(error)})") from None
    if not kept_as_jpeg:
        rgb8_pixels(data, name)  # PIL must decode it completely too
    if tuple(decoded.shape[:2]) != (height, width):
        raise UnreadableImageError(f"{name}: decodes to {decoded.shape[:2]}, its header says {height} x {width}")
    if kept_as_jpeg:
        reason = None if end == len(data) else "trailing bytes"
    elif image_format == "PNG" and _png_bit_depth(data) == 16:
        reason = "16-bit png"
    else:
        reason = image_format.lower() if image_format != "JPEG" else mode.lower()
    return AcceptedImage(height, width, kept_as_jpeg, reason)


def rgb8_pixels(data: bytes, name: str) -> np.ndarray:
    """The pixels of an image file as uint8 [height, width, 3] RGB (module docstring).

    Raises:
      UnreadableImageError: PIL cannot decode it completely.
    """
    if data.startswith(_PNG_SIGNATURE) and _png_bit_depth(data) == 16:
        # PIL keeps 16 bits for grey only; TensorFlow's uint16 decode keeps them for all.
        try:
            samples = tf.io.decode_png(data, channels=3, dtype=tf.uint16).numpy()
        except tf.errors.InvalidArgumentError as error:
            raise UnreadableImageError(f"{name}: {_reason(error)}") from None
        return _sixteen_to_eight_bits(samples)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode.startswith("I;16") or image.mode == "I":
                grey = _sixteen_to_eight_bits(np.asarray(image).astype(np.int64))
                return np.repeat(grey[..., None], 3, axis=-1)
            if "transparency" in image.info or image.mode in ("PA", "LA", "La", "RGBa"):
                image = image.convert("RGBA")  # the colours under the alpha, which is dropped
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as error:
        raise UnreadableImageError(f"{name}: {error}") from error


def _reason(error: tf.errors.OpError) -> str:
    """The decoder's own words in an eager op's message, without the op and function names."""
    message = re.sub(r"\{\{[^}]*\}\}|\[Op:\w+\]", "", error.message).strip()
    return message.splitlines()[-1] if message else "no reason given"


def _sixteen_to_eight_bits(samples: np.ndarray) -> np.ndarray:
    """round(v / 257) of 16-bit samples (0 -> 0, 65535 -> 255), as uint8 of the same shape."""
    clipped = np.clip(samples.astype(np.int64), 0, 65535)
    return ((clipped * 2 + 257) // 514).astype(np.uint8)


def _png_bit_depth(data: bytes) -> int:
    """The bit depth in a PNG's IHDR chunk (byte 24 of the file)."""
    return data[24] if len(data) > 24 else 0
