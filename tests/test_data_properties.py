"""Property-based tests of the converter's boundary (training/prepare_imagenet.py).

Hypothesis draws small ImageNet-layout folders: 1-3 classes of 1-3 images, 1-4
validation images, names with spaces, unicode and leading dots, every kind of image
(`KINDS`: JPEGs with trailing bytes or cut short, 16-bit, palette, alpha, CMYK,
zero-byte and non-image files), a labels file in one of the three formats, complete or
damaged (a line missing, an extra line, shuffled, a name twice), and shard counts up to
more than there are images. The invariant, for every draw: the converter either refuses
in one line with exit 2, having written nothing (no output folder, or a finished
conversion already there unchanged), or succeeds, and then every record's label is the
label of its file by name and its pixels are the reference conversion of that file
(`reference_pixels`). An oracle also says which draws must succeed, so a converter that
refuses everything fails.
"""

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from training import prepare_imagenet

SYNSETS = ("n01440764", "n01443537", "n01484850")

# Kind -> (extension, is it acceptable, is it stored as the file's own JPEG bytes).
KINDS = {
    "jpeg_rgb": (".JPEG", True, True),
    "jpeg_grey": (".jpg", True, True),
    "jpeg_trailer": (".JPEG", True, True),
    "jpeg_truncated": (".JPEG", False, True),
    "png16_grey": (".png", True, False),
    "png16_rgb": (".png", True, False),
    "palette": (".png", True, False),
    "palette_transparent": (".PNG", True, False),
    "grey_alpha": (".png", True, False),
    "rgba": (".png", True, False),
    "cmyk": (".JPEG", True, False),
    "zero_bytes": (".JPEG", False, True),
    "text": (".JPEG", False, True),
}
# A converted image is re-encoded as JPEG (quality 100, 4:4:4): measured on 200 random
# noise images of up to 40 x 40, at most 4 levels off, 0.61 on average.
CONVERTED_MAX_ERROR, CONVERTED_MEAN_ERROR = 6, 1.0


def encode(kind: str, seed: int) -> tuple[bytes, np.ndarray | None]:
    """(file bytes, reference uint8 [h, w, 3] RGB or None for what must be refused)."""
    rng = np.random.default_rng(seed)
    height, width = (int(n) for n in rng.integers(1, 12, 2))
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    if kind in ("jpeg_rgb", "jpeg_trailer", "jpeg_truncated"):
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
        data = buffer.getvalue()
        if kind == "jpeg_trailer":  # a motion photo's video, holding JPEG markers too
            return data + b"\x00\x00\x00\x18ftypmp42" + bytes(rng.integers(0, 256, 500, dtype=np.uint8)) + \
                b"\xff\xd8\xff\xd9", _pil_rgb(data)
        if kind == "jpeg_truncated":
            return data[: len(data) * 2 // 3], None
        return data, _pil_rgb(data)
    if kind == "jpeg_grey":
        Image.fromarray(rgb[..., 0]).save(buffer, format="JPEG", quality=90)
        return buffer.getvalue(), _pil_rgb(buffer.getvalue())
    if kind == "png16_grey":
        samples = rng.integers(0, 65536, (height, width), dtype=np.uint16)
        Image.fromarray(samples).save(buffer, format="PNG")
        return buffer.getvalue(), np.repeat(_round_257(samples)[..., None], 3, -1)
    if kind == "png16_rgb":
        samples = rng.integers(0, 65536, (height, width, 3), dtype=np.uint16)
        encoded = tf.io.encode_png(tf.constant(samples)).numpy()
        return encoded, _round_257(samples)
    if kind in ("palette", "palette_transparent"):
        palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
        indices = rng.integers(0, 256, (height, width), dtype=np.uint8)
        image = Image.fromarray(indices, mode="P")
        image.putpalette(palette.ravel().tolist())
        if kind == "palette_transparent":
            image.info["transparency"] = bytes(rng.integers(0, 256, 256, dtype=np.uint8))
        image.save(buffer, format="PNG")
        return buffer.getvalue(), palette[indices]
    if kind == "grey_alpha":
        grey_alpha = rng.integers(0, 256, (height, width, 2), dtype=np.uint8)
        Image.fromarray(grey_alpha, mode="LA").save(buffer, format="PNG")
        return buffer.getvalue(), np.repeat(grey_alpha[..., :1], 3, -1)
    if kind == "rgba":
        rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
        Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG")
        return buffer.getvalue(), rgba[..., :3]
    if kind == "cmyk":
        Image.fromarray(rgb).convert("CMYK").save(buffer, format="JPEG", quality=95)
        return buffer.getvalue(), _pil_rgb(buffer.getvalue())
    if kind == "zero_bytes":
        return b"", None
    return "not an image, ünïcode text\n".encode(), None


def _pil_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _round_257(samples: np.ndarray) -> np.ndarray:
    return np.round(samples.astype(np.float64) / 257).astype(np.uint8)


# File stems: letters, digits, spaces, unicode.
STEMS = st.text(alphabet="abcXYZ019 _-éß日本ё", min_size=1, max_size=8).map(str.strip).filter(bool)
# Mostly acceptable kinds, so that most draws can convert.
DRAWN_KINDS = st.sampled_from([kind for kind, (_, acceptable, _) in sorted(KINDS.items())
                               for _ in range(3 if acceptable else 1)])


@st.composite
def folders(draw):
    """A folder description: {"train": {synset: [(name, kind, seed)]}, "val": [(name,
    kind, seed, synset)], labels file format and damage, shard counts, ...}."""
    num_classes = draw(st.integers(1, 3))
    counts = [draw(st.integers(1, 3)) for _ in range(num_classes)]
    num_validation = draw(st.integers(1, 4))
    images = []
    for index in range(sum(counts) + num_validation):
        # The index keeps names unique; one in six is hidden (a leading dot).
        hidden = draw(st.sampled_from([""] * 5 + ["."]))
        kind = draw(DRAWN_KINDS)
        images.append((f"{hidden}{draw(STEMS)}{index}{KINDS[kind][0]}", kind, draw(st.integers(0, 2**16))))
    train, start = {}, 0
    for synset, count in zip(SYNSETS, counts):
        train[synset] = images[start : start + count]
        start += count
    validation = [(name, kind, seed, draw(st.sampled_from(SYNSETS[:num_classes])))
                  for name, kind, seed in images[start:]]
    labels_format = draw(st.sampled_from(["file_synset", "kaggle", "positional"]))
    damages = ["none"] * 4 + ["missing", "extra", "duplicated"]
    # A list of synsets names no file: reordering its lines relabels images without a
    # trace that any converter could see, so it is not drawn.
    damages += ["shuffled"] if labels_format != "positional" else []
    return {
        "train": train,
        "val": validation,
        "hidden_folder": draw(st.booleans()),
        "labels_format": labels_format,
        "labels_damage": draw(st.sampled_from(damages)),
        # Mostly counts that fit; one more shard than images now and then.
        "train_shards": draw(st.sampled_from([1, 1, 2, sum(counts), sum(counts) + 1])),
        "validation_shards": draw(st.sampled_from([1, 1, 2, num_validation, num_validation + 1])),
        "finished_output": draw(st.sampled_from([False, False, False, True])),
    }


def write_folder(root: Path, spec: dict) -> dict[str, tuple[int, np.ndarray | None, bool]]:
    """Writes the folder; returns {file name: (label, reference pixels, kept as JPEG)}."""
    expected = {}
    for label, (synset, images) in enumerate(spec["train"].items(), start=1):
        (root / "train" / synset).mkdir(parents=True)
        for name, kind, seed in images:
            data, pixels = encode(kind, seed)
            (root / "train" / synset / name).write_bytes(data)
            if not name.startswith("."):
                expected[name] = (label, pixels, KINDS[kind][2])
    if spec["hidden_folder"]:  # Jupyter's checkpoints: not a class
        (root / "train" / ".ipynb_checkpoints").mkdir()
        (root / "train" / ".ipynb_checkpoints" / "copy.JPEG").write_bytes(encode("jpeg_rgb", 0)[0])
    (root / "val").mkdir()
    labelled = []
    synsets = list(spec["train"])
    for name, kind, seed, synset in spec["val"]:
        data, pixels = encode(kind, seed)
        (root / "val" / name).write_bytes(data)
        if not name.startswith("."):
            labelled.append((name, synset))
            expected[name] = (synsets.index(synset) + 1, pixels, KINDS[kind][2])
    (root / "val" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "synset_labels.txt").write_text(labels_text(sorted(labelled), spec["labels_format"],
                                                        spec["labels_damage"]))
    return expected


def labels_text(labelled: list[tuple[str, str]], labels_format: str, damage: str) -> str:
    """The labels file for the sorted (name, synset) pairs, damaged as asked."""
    rows = list(labelled)
    if damage == "missing" and rows:
        rows.pop(len(rows) // 2)
    elif damage == "extra":
        rows.append(("ILSVRC2012_val_99999999.JPEG", SYNSETS[0]))
    elif damage == "shuffled":
        rows.reverse()
    elif damage == "duplicated" and rows:
        rows.append(rows[0])
    if labels_format == "positional":
        return "".join(f"{synset}\n" for _, synset in rows)
    if labels_format == "kaggle":
        return "ImageId,PredictionString\n" + "".join(
            f"{os.path.splitext(name)[0]},{synset} 1 2 3 4\n" for name, synset in rows)
    return "".join(f"{name} {synset}\n" for name, synset in rows)


def must_succeed(spec: dict) -> bool:
    """The oracle: a draw that every correct converter converts. Labels matched by name
    (in any order), a readable image in every class, and enough readable images for the
    shards of each split."""
    labels_match = spec["labels_damage"] in ("none", "shuffled")
    readable_per_class = [[name for name, kind, _ in images if KINDS[kind][1] and not name.startswith(".")]
                          for images in spec["train"].values()]
    readable_validation = [name for name, kind, *_ in spec["val"] if KINDS[kind][1] and not name.startswith(".")]
    return (labels_match and all(readable_per_class)
            and sum(map(len, readable_per_class)) >= spec["train_shards"]
            and len(readable_validation) >= spec["validation_shards"])


@pytest.fixture(scope="module")
def finished_conversion(tmp_path_factory):
    """A folder holding a finished conversion of another input, to convert into."""
    root = tmp_path_factory.mktemp("finished")
    spec = {"train": {SYNSETS[0]: [("a.JPEG", "jpeg_rgb", 1)], SYNSETS[1]: [("b.JPEG", "jpeg_rgb", 2)]},
            "val": [("c.JPEG", "jpeg_rgb", 3, SYNSETS[1])], "hidden_folder": False,
            "labels_format": "file_synset", "labels_damage": "none"}
    write_folder(root / "input", spec)
    assert prepare_imagenet.main(["--input", str(root / "input"), "--output", str(root / "output"),
                                  "--train_shards", "2", "--validation_shards", "1", "--num_workers", "1"]) == 0
    return root / "output"


def contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()} if folder.exists() else {}


# Every acceptable kind converted in one draw, whatever Hypothesis draws besides.
EVERY_KIND = {
    "train": {SYNSETS[0]: [("a b.JPEG", "jpeg_rgb", 1), ("16 grey.png", "png16_grey", 2), ("p.png", "palette", 3)],
              SYNSETS[1]: [("trailer é.JPEG", "jpeg_trailer", 4), ("16 rgb.png", "png16_rgb", 5),
                           ("pt.PNG", "palette_transparent", 6), (".hidden.JPEG", "jpeg_rgb", 7)],
              SYNSETS[2]: [("cmyk.JPEG", "cmyk", 8), ("la.png", "grey_alpha", 9), ("rgba.png", "rgba", 10),
                           ("cut.JPEG", "jpeg_truncated", 11)]},
    "val": [("日本 1.jpg", "jpeg_grey", 12, SYNSETS[2]), ("empty.JPEG", "zero_bytes", 13, SYNSETS[0]),
            ("text.JPEG", "text", 14, SYNSETS[1]), ("v.png", "png16_rgb", 15, SYNSETS[1])],
    "hidden_folder": True, "labels_format": "file_synset", "labels_damage": "shuffled",
    "train_shards": 3, "validation_shards": 2, "finished_output": False,
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(spec=folders())
@example(spec=EVERY_KIND)
@example(spec={**EVERY_KIND, "labels_format": "kaggle", "validation_shards": 3})
def test_converter_refuses_in_one_line_or_writes_the_right_labels_and_pixels(
        spec, tmp_path_factory, finished_conversion, capsys):
    root = tmp_path_factory.mktemp("draw")
    expected = write_folder(root / "input", spec)
    output = root / "output"
    if spec["finished_output"]:
        shutil.copytree(finished_conversion, output)
    before = contents(output)
    capsys.readouterr()
    status = prepare_imagenet.main([
        "--input", str(root / "input"), "--output", str(output), "--num_workers", "1",
        "--train_shards", str(spec["train_shards"]), "--validation_shards", str(spec["validation_shards"])])
    err = capsys.readouterr().err.strip()
    event("converted" if status == 0 else "refused")
    if status != 0:
        assert status == 2 and len(err.splitlines()) == 1, err
        assert err.startswith("python -m training.prepare_imagenet: error: "), err
        assert contents(output) == before  # nothing written, nothing changed
        assert spec["finished_output"] or not output.exists()
        assert spec["finished_output"] or not must_succeed(spec), err
        return
    assert not spec["finished_output"]  # another conversion's folder is never written into
    records = [tf.train.Example.FromString(record.numpy()) for record in
               tf.data.TFRecordDataset(sorted(str(path) for path in output.glob("*-of-*")))]
    written = {}
    for record in records:
        feature = record.features.feature
        name = feature["image/filename"].bytes_list.value[0].decode()
        label, pixels, kept_as_jpeg = expected[name]
        assert feature["image/class/label"].int64_list.value[0] == label, name
        decoded = tf.io.decode_jpeg(feature["image/encoded"].bytes_list.value[0], channels=3,
                                    dct_method="INTEGER_ACCURATE").numpy()
        assert pixels is not None and decoded.shape == pixels.shape, name
        error = np.abs(decoded.astype(int) - pixels)
        if kept_as_jpeg:
            np.testing.assert_array_equal(decoded, pixels, err_msg=name)
        else:
            assert error.max() <= CONVERTED_MAX_ERROR and error.mean() <= CONVERTED_MEAN_ERROR, name
        written[name] = label
    # Every acceptable image is written once; every other one is skipped.
    assert sorted(written) == sorted(name for name, (_, pixels, _) in expected.items() if pixels is not None)


def _jpeg_with_thumbnail(seed: int, progressive: bool, thumbnail: bool) -> bytes:
    """A 24 x 32 JPEG; with `thumbnail`, an APP1 segment holding a whole 8 x 8 JPEG (as
    EXIF thumbnails do), whose own end marker must not count as the image's."""
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    main, small = io.BytesIO(), io.BytesIO()
    Image.fromarray(pixels).save(main, format="JPEG", quality=90, progressive=progressive)
    if not thumbnail:
        return main.getvalue()
    Image.fromarray(pixels[:8, :8]).save(small, format="JPEG")
    segment = b"Exif\0\0" + small.getvalue()
    return main.getvalue()[:2] + b"\xff\xe1" + (len(segment) + 2).to_bytes(2, "big") + segment + main.getvalue()[2:]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 1000), progressive=st.booleans(), thumbnail=st.booleans(),
       cut=st.floats(0.0, 1.0), trailer=st.binary(max_size=300))
def test_the_graph_check_the_converter_and_the_decoder_agree_on_where_a_jpeg_ends(
        seed, progressive, thumbnail, cut, trailer):
    """`preprocessing.is_decodable_jpeg` (the training reader's check), `image_files.jpeg_end`
    (the converter's) and TensorFlow's decoder accept the same files: a whole JPEG with
    any trailer, and no JPEG cut short anywhere. (The graph check takes an end marker in
    the last 64 bytes on trust; a file cut just after an EXIF thumbnail's end marker
    passes that, and its header read then fails, which the reader counts as a refusal.)"""
    from lambda_keras.data import image_files, preprocessing  # pylint: disable=import-outside-toplevel

    whole = _jpeg_with_thumbnail(seed, progressive, thumbnail)
    data = whole[: int(len(whole) * cut)] if cut < 1.0 else whole + trailer
    try:
        tf.io.decode_jpeg(data, channels=3)
        decodes = True
    except tf.errors.InvalidArgumentError:
        decodes = False
    end = image_files.jpeg_end(data)
    try:
        graph_accepts = bool(preprocessing.is_decodable_jpeg(tf.constant(data)))
    except tf.errors.InvalidArgumentError:  # a header that does not read
        graph_accepts = False
    assert graph_accepts is decodes is (end is not None)
    assert end is None or data[:end] == whole
