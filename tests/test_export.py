"""The TF Serving SavedModel (export/saved_model.py): layout, versions, signatures, outputs.

The module-scoped export is of a tiny LambdaResNet (32x32, 6 classes); the helpers
here are shared with test_export_serving.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from export import saved_model
from lambda_keras.data import preprocessing
from lambda_keras.models import LambdaResNet

IMAGE_SIZE = 32
CROP_PADDING = 4
CLASSES = 6
TOP_K = 3
CLASS_NAMES = [f"digit {index}" for index in range(CLASSES)]
SAVED_MODEL_CLI = str(Path(sys.executable).parent / "saved_model_cli")


def tiny_model() -> keras.Model:
    """The smallest LambdaResNet (lambda layers in c4 and c5), 32x32 -> 6 classes.

    An untrained network gives every image nearly the same near-uniform softmax, and
    a comparison at atol 1e-5 would say little about that. So the classifier is
    calibrated on a few images: it sees the pooled features standardised, scaled up,
    and different images get confident, different answers.
    """
    model = LambdaResNet((1, 1, 1, 1), ((), (), (1,), (1,)),
                         input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), classes=CLASSES)
    features = keras.Model(model.input, model.get_layer("avg_pool").output)
    calibration = tf.stack([
        preprocessing.preprocess_decoded_for_eval(make_image(40, 40, 100 + seed), IMAGE_SIZE,
                                                  CROP_PADDING) for seed in range(16)])
    pooled = features(calibration, training=False).numpy()
    mean, std = pooled.mean(axis=0), pooled.std(axis=0) + 1e-6
    dense = model.get_layer("predictions")
    kernel = np.random.default_rng(0).normal(size=dense.kernel.shape).astype(np.float32)
    kernel = 3.0 * kernel / std[:, None] / np.sqrt(pooled.shape[1])
    dense.kernel.assign(kernel)
    dense.bias.assign(-mean @ kernel)
    return model


def make_image(height: int, width: int, seed: int) -> np.ndarray:
    """uint8 [height, width, 3]: a smooth random pattern that JPEG keeps recognisable."""
    coarse = np.random.default_rng(seed).integers(0, 256, (1, 4, 4, 3)).astype(np.float32)
    image = tf.image.resize(coarse, [height, width], method="bilinear")[0].numpy()
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def encode_jpeg(image: np.ndarray) -> bytes:
    return tf.io.encode_jpeg(image, quality=95).numpy()


def encode_png(image: np.ndarray) -> bytes:
    return tf.io.encode_png(image).numpy()


def keras_probabilities(model: keras.Model, encoded: list[bytes]) -> np.ndarray:
    """The Keras model after the training evaluation preprocessing: [n, classes]."""
    batch = []
    for data in encoded:
        if data.startswith(b"\xff\xd8"):
            batch.append(preprocessing.preprocess_for_eval(data, IMAGE_SIZE, CROP_PADDING))
        else:
            batch.append(preprocessing.preprocess_decoded_for_eval(
                tf.io.decode_png(data, channels=3), IMAGE_SIZE, CROP_PADDING))
    return model(tf.stack(batch), training=False).numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(Keras model, version directory, loaded SavedModel) for the tiny model."""
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(1)
    model = tiny_model()
    base = tmp_path_factory.mktemp("serving") / "tiny"
    path = saved_model.export_model(model, base, top_k=TOP_K, class_names=CLASS_NAMES,
                                    crop_padding=CROP_PADDING)
    return model, path, tf.saved_model.load(str(path))


@pytest.fixture(scope="module")
def images():
    """Encoded test images: JPEGs and PNGs, landscape, portrait, small, large."""
    shapes = [(40, 50), (64, 36), (32, 32), (17, 23), (120, 90)]
    jpegs = [encode_jpeg(make_image(h, w, seed)) for seed, (h, w) in enumerate(shapes)]
    pngs = [encode_png(make_image(h, w, 10 + seed)) for seed, (h, w) in enumerate(shapes)]
    return jpegs + pngs


def test_layout_and_versions(exported, tmp_path):
    model, path, _ = exported
    assert path.name == "1"
    assert (path / "saved_model.pb").is_file()
    assert (path / "variables" / "variables.index").is_file()
    assert (path / "assets.extra" / "tf_serving_warmup_requests").is_file()

    # A taken version is refused before anything is written.
    with pytest.raises(saved_model.ExportError, match="already exists"):
        saved_model.export_model(model, path.parent, version=1)
    assert sorted(os.listdir(path.parent)) == ["1"]
    assert saved_model.existing_versions(path.parent) == [1]
    assert saved_model._choose_version(path.parent, None) == 2
    assert saved_model._choose_version(path.parent, 7) == 7
    with pytest.raises(saved_model.ExportError, match="positive"):
        saved_model._choose_version(path.parent, 0)


def test_failed_export_leaves_nothing(exported, monkeypatch):
    """A failure after the SavedModel is written removes the staging directory."""
    model, path, _ = exported
    from export import warmup

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(warmup, "write_warmup_requests", fail)
    with pytest.raises(OSError, match="disk full"):
        saved_model.export_model(model, path.parent, crop_padding=CROP_PADDING)
    assert sorted(os.listdir(path.parent)) == ["1"]


def test_export_to_an_object_store_url(exported, images, monkeypatch):
    """A URL export dir (here TensorFlow's in-memory ram:// filesystem, standing in
    for gs://, which has no atomic rename either): versions, contents, the graph
    uploaded last, and a failed upload removes what it wrote."""
    model, path, loaded = exported
    base = "ram://exports/tiny"
    uploaded = []
    copy = tf.io.gfile.copy

    def recording_copy(source, target, overwrite=False):
        uploaded.append(target)
        return copy(source, target, overwrite=overwrite)

    monkeypatch.setattr(tf.io.gfile, "copy", recording_copy)
    first = saved_model.export_model(model, base, top_k=TOP_K, class_names=CLASS_NAMES,
                                     crop_padding=CROP_PADDING, warmup=False)
    assert first == f"{base}/1"
    assert uploaded[-1] == f"{base}/1/saved_model.pb"
    assert saved_model.existing_versions(base) == [1]
    remote = tf.saved_model.load(first).signatures["serving_default"]
    np.testing.assert_allclose(
        remote(image_bytes=tf.constant(images))["probabilities"].numpy(),
        loaded.signatures["serving_default"](image_bytes=tf.constant(images))["probabilities"].numpy(),
        atol=1e-6,
    )
    with pytest.raises(saved_model.ExportError, match="already exists"):
        saved_model.export_model(model, base, version=1)

    def failing_copy(source, target, overwrite=False):
        if target.endswith("saved_model.pb"):
            raise OSError("connection reset")
        return copy(source, target, overwrite=overwrite)

    monkeypatch.setattr(tf.io.gfile, "copy", failing_copy)
    with pytest.raises(OSError, match="connection reset"):
        saved_model.export_model(model, base, crop_padding=CROP_PADDING, warmup=False)
    assert saved_model.existing_versions(base) == [1]
    assert not tf.io.gfile.exists(f"{base}/2")


def test_serving_default_equals_keras_model(exported, images):
    model, _, loaded = exported
    outputs = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
    expected = keras_probabilities(model, images)
    probabilities = outputs["probabilities"].numpy()
    assert probabilities.shape == (len(images), CLASSES)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    # The images are told apart: not one constant answer.
    assert len(set(expected.argmax(axis=1))) > 1 and expected.max() > 0.5

    # Indices are compared through their scores: near-ties may swap within 1e-5.
    indices = outputs["top_k_indices"].numpy()
    scores = outputs["top_k_scores"].numpy()
    np.testing.assert_allclose(scores, -np.sort(-expected, axis=1)[:, :TOP_K], atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(expected, indices, axis=1), scores, atol=1e-5)
    np.testing.assert_array_equal(indices[:, 0], expected.argmax(axis=1))
    labels = outputs["top_k_labels"].numpy().astype(str)
    np.testing.assert_array_equal(labels, np.array(CLASS_NAMES)[indices])


def test_serve_images_equals_keras_model(exported):
    model, _, loaded = exported
    for seed, (height, width) in enumerate([(40, 50), (90, 60), (32, 32)]):
        batch = np.stack([make_image(height, width, seed), make_image(height, width, seed + 5)])
        outputs = loaded.signatures["serve_images"](images=tf.constant(batch))
        expected = model(tf.stack([
            preprocessing.preprocess_decoded_for_eval(image, IMAGE_SIZE, CROP_PADDING)
            for image in batch]), training=False).numpy()
        np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-5)
        np.testing.assert_array_equal(outputs["top_k_indices"].numpy()[:, 0], expected.argmax(1))


def test_png_and_jpeg_of_the_same_pixels_agree(exported):
    """PNG is lossless: its answer is serve_images' answer on the same pixels."""
    _, _, loaded = exported
    image = make_image(48, 40, 3)
    from_png = loaded.signatures["serving_default"](image_bytes=tf.constant([encode_png(image)]))
    from_pixels = loaded.signatures["serve_images"](images=tf.constant(image[None]))
    np.testing.assert_allclose(from_png["probabilities"].numpy(),
                               from_pixels["probabilities"].numpy(), atol=1e-6)


@pytest.mark.parametrize("case", ["text", "truncated_jpeg", "truncated_png", "empty", "gif_header"])
def test_invalid_bytes_are_refused_and_the_next_request_works(exported, images, case):
    _, _, loaded = exported
    serve = loaded.signatures["serving_default"]
    bad = {
        "text": b"this is not an image",
        "truncated_jpeg": images[0][: len(images[0]) // 2],
        "truncated_png": images[-1][: len(images[-1]) - 20],
        "empty": b"",
        "gif_header": b"GIF89a" + b"\x00" * 40,
    }[case]
    with pytest.raises(tf.errors.InvalidArgumentError, match="could not be decoded"):
        serve(image_bytes=tf.constant([images[1], bad]))
    good = serve(image_bytes=tf.constant(images[:2]))["probabilities"].numpy()
    again = serve(image_bytes=tf.constant(images[:2]))["probabilities"].numpy()
    np.testing.assert_array_equal(good, again)
    assert good.shape == (2, CLASSES)


def test_mixed_precision_model_is_exported_in_float32(tmp_path, images):
    keras.config.set_dtype_policy("mixed_bfloat16")
    keras.utils.set_random_seed(2)
    mixed = tiny_model()
    keras.config.set_dtype_policy("float32")
    path = saved_model.export_model(mixed, tmp_path / "mixed", crop_padding=CROP_PADDING,
                                    warmup=False)
    reference = tiny_model()
    reference.set_weights(mixed.get_weights())
    loaded = tf.saved_model.load(str(path))
    outputs = loaded.signatures["serving_default"](image_bytes=tf.constant(images[:4]))
    np.testing.assert_allclose(outputs["probabilities"].numpy(),
                               keras_probabilities(reference, images[:4]), atol=1e-5)
    assert {variable.dtype for variable in loaded.variables} == {tf.float32}


def test_runs_in_a_fresh_process_without_lambda_keras(exported, images, tmp_path):
    """Plain TensorFlow loads and runs the export; lambda_keras, training, export and
    keras cannot be imported there (-I drops PYTHONPATH and the script's directory;
    sys.modules entries of None make imports of the editable install fail)."""
    model, path, _ = exported
    image_file = tmp_path / "image.jpg"
    image_file.write_bytes(images[0])
    script = textwrap.dedent(f"""
        import json, sys
        for name in ("lambda_keras", "training", "export", "keras"):
            sys.modules[name] = None
        try:
            import lambda_keras
        except ImportError:
            pass
        else:
            raise SystemExit("lambda_keras is importable")
        import tensorflow as tf
        loaded = tf.saved_model.load({str(path)!r})
        data = open({str(image_file)!r}, "rb").read()
        out = loaded.signatures["serving_default"](image_bytes=tf.constant([data]))
        print(json.dumps({{"probabilities": out["probabilities"].numpy().tolist(),
                          "labels": out["top_k_labels"].numpy().astype(str).tolist(),
                          "modules": sorted(m for m in sys.modules
                                            if m.split(".")[0] in ("lambda_keras", "training",
                                                                   "export", "keras")
                                            and sys.modules[m] is not None)}}))
    """)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["modules"] == []
    expected = keras_probabilities(model, images[:1])
    np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-5)
    assert answer["labels"][0][0] == CLASS_NAMES[int(expected.argmax())]


def _signature_blocks(show_output: str) -> dict[str, dict[str, tuple[str, str]]]:
    """Parses `saved_model_cli show --all`: {signature: {"inputs['x']": (dtype, shape)}}."""
    blocks = {}
    for match in re.finditer(r"signature_def\['(\w+)'\]:(.*?)Method name is: (\S*)",
                             show_output, re.S):
        name, body, method = match.groups()
        tensors = dict(
            (f"{kind}['{key}']", (dtype, shape))
            for kind, key, dtype, shape in re.findall(
                r"(inputs|outputs)\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: (.+)", body)
        )
        tensors["method"] = method
        blocks[name] = tensors
    return blocks


def test_saved_model_cli_show_lists_both_signatures(exported):
    _, path, _ = exported
    shown = subprocess.run([SAVED_MODEL_CLI, "show", "--all", "--dir", str(path)],
                           capture_output=True, text=True, check=True, timeout=120).stdout
    blocks = _signature_blocks(shown)
    outputs = {
        "outputs['probabilities']": ("DT_FLOAT", f"(-1, {CLASSES})"),
        "outputs['top_k_indices']": ("DT_INT32", f"(-1, {TOP_K})"),
        "outputs['top_k_scores']": ("DT_FLOAT", f"(-1, {TOP_K})"),
        "outputs['top_k_labels']": ("DT_STRING", f"(-1, {TOP_K})"),
        "method": "tensorflow/serving/predict",
    }
    assert blocks["serving_default"] == {"inputs['image_bytes']": ("DT_STRING", "(-1)"), **outputs}
    assert blocks["serve_images"] == {"inputs['images']": ("DT_UINT8", "(-1, -1, -1, 3)"), **outputs}


def test_saved_model_cli_run_classifies_a_jpeg(exported, images, tmp_path):
    model, path, _ = exported
    # A bytes array (numpy "S" dtype) loads without pickle; JPEGs end in FF D9, so
    # numpy's stripping of trailing NULs cannot touch them.
    inputs = tmp_path / "image_bytes.npy"
    np.save(inputs, np.array(images[2:3]))
    result = subprocess.run(
        [SAVED_MODEL_CLI, "run", "--dir", str(path), "--tag_set", "serve",
         "--signature_def", "serving_default", "--inputs", f"image_bytes={inputs}"],
        capture_output=True, text=True, check=True, timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    ).stdout
    expected = keras_probabilities(model, images[2:3])[0]

    def printed(key: str) -> str:
        return re.search(rf"output key {key}:\s*\[\[(.*?)\]\]", result, re.S).group(1)

    indices = [int(value) for value in printed("top_k_indices").split()]
    scores = [float(value) for value in printed("top_k_scores").split()]
    labels = re.findall(r"b'([^']*)'", printed("top_k_labels"))
    assert indices[0] == expected.argmax()
    np.testing.assert_allclose(scores, -np.sort(-expected)[:TOP_K], atol=1e-5)
    np.testing.assert_allclose(expected[indices], scores, atol=1e-5)
    assert labels == [CLASS_NAMES[index] for index in indices]


@pytest.mark.slow
def test_cli_exports_a_keras_file_and_a_model_dir(exported, tmp_path, capsys):
    model, _, _ = exported
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    model.save(run_dir / "checkpoints" / "last.keras")
    # What training.train writes; only input.image_size and eval_crop_padding are read.
    (run_dir / "config.yaml").write_text(
        f"input:\n  image_size: {IMAGE_SIZE}\n  eval_crop_padding: {CROP_PADDING}\n"
        f"  num_classes: {CLASSES}\n")
    output = tmp_path / "models" / "tiny"

    assert saved_model.main(["--model", str(run_dir), "--output", str(output), "--top_k", "2"]) == 0
    assert saved_model.main(["--model", str(run_dir / "checkpoints" / "last.keras"),
                             "--output", str(output), "--version", "5", "--image_size", "32"]) == 0
    assert saved_model.existing_versions(output) == [1, 5]
    assert saved_model.main(["--model", str(run_dir), "--output", str(output), "--version", "5"]) == 2
    assert "Version 5 already exists" in capsys.readouterr().err
    assert saved_model.main(["--model", str(tmp_path / "nothing"), "--output", str(output)]) == 2
    assert sorted(os.listdir(output)) == ["1", "5"]

    loaded = tf.saved_model.load(str(output / "1"))
    image = encode_jpeg(make_image(50, 40, 0))
    outputs = loaded.signatures["serving_default"](image_bytes=tf.constant([image]))
    np.testing.assert_allclose(outputs["probabilities"].numpy(),
                               keras_probabilities(model, [image]), atol=1e-5)
    assert outputs["top_k_labels"].shape == (1, 2)
    assert outputs["top_k_labels"].numpy()[0, 0].decode().startswith("class_")


@pytest.mark.parametrize("flag, value", [("--image_size", "0"), ("--top_k", "-1"), ("--crop_padding", "-2"),
                                         ("--version", "0"), ("--image_size", "big")])
def test_cli_refuses_bad_numbers_before_writing(tmp_path, capsys, flag, value):
    output = tmp_path / "models" / "tiny"
    with pytest.raises(SystemExit) as exit_info:
        saved_model.main(["--model", str(tmp_path / "model.keras"), "--output", str(output), flag, value])
    assert exit_info.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err
    assert not output.exists()


# --- limits and one-line errors (what happens when things go wrong) -------------------


def huge_png(side: int) -> bytes:
    """A valid PNG of side x side black pixels (side a multiple of 100): a few hundred kB,
    gigabytes decoded."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])  # 8-bit RGB
    row = bytes(1 + 3 * side)  # filter byte 0, then the row's pixels
    # Deflating every row costs seconds. After a full flush the compressor keeps no history,
    # so the next 100 rows compress to the same bytes: deflate two blocks, repeat the second,
    # and end the stream by hand (an empty final block, then the Adler-32 of all rows).
    compressor = zlib.compressobj(9)
    first = compressor.compress(row * 100) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(row * 100) + compressor.flush(zlib.Z_FULL_FLUSH)
    checksum = 1
    for _ in range(side):
        checksum = zlib.adler32(row, checksum)
    pixels = first + repeated * (side // 100 - 1) + b"\x03\x00" + checksum.to_bytes(4, "big")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_an_image_over_the_pixel_cap_is_refused_from_its_header(exported):
    _, _, loaded = exported
    serving = loaded.signatures["serving_default"]
    bomb = huge_png(16_000)  # 256 megapixels, 0.75 MB on the wire
    assert len(bomb) < 1_000_000
    with pytest.raises(tf.errors.InvalidArgumentError, match=saved_model.TOO_LARGE_ERROR):
        serving(image_bytes=tf.constant([bomb]))
    # 56 MP, over the default 50 MP: a small pattern tiled (the pixels are never decoded).
    big_jpeg = encode_jpeg(np.tile(make_image(80, 70, 3), (100, 100, 1)))
    with pytest.raises(tf.errors.InvalidArgumentError, match=saved_model.TOO_LARGE_ERROR):
        serving(image_bytes=tf.constant([big_jpeg]))
    # Under the cap, a large photo is served as before.
    outputs = serving(image_bytes=tf.constant([encode_jpeg(make_image(4_000, 3_000, 4))]))
    assert outputs["probabilities"].shape == (1, CLASSES)


def test_an_empty_batch_answers_an_empty_result(exported):
    _, _, loaded = exported
    for signature, batch in (("serving_default", {"image_bytes": tf.constant([], tf.string)}),
                             ("serve_images", {"images": tf.zeros([0, 20, 20, 3], tf.uint8)})):
        outputs = loaded.signatures[signature](**batch)
        assert outputs["probabilities"].shape == (0, CLASSES)
        assert {key: outputs[key].shape for key in ("top_k_indices", "top_k_scores", "top_k_labels")} == {
            "top_k_indices": (0, TOP_K), "top_k_scores": (0, TOP_K), "top_k_labels": (0, TOP_K)}


def test_exports_are_readable_by_other_users(exported):
    _, path, _ = exported
    assert path.stat().st_mode & 0o777 == saved_model.DIRECTORY_MODE
    for item in path.rglob("*"):
        expected = saved_model.DIRECTORY_MODE if item.is_dir() else saved_model.FILE_MODE
        assert item.stat().st_mode & 0o777 == expected, item


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_cli_refuses_a_damaged_keras_file_in_one_line(exported, tmp_path, capsys, damage):
    model, _, _ = exported
    good = tmp_path / "good.keras"
    model.save(good)
    bad = tmp_path / "bad.keras"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a zip file at all")
    assert saved_model.main(["--model", str(bad), "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert f"{bad} is not a readable .keras model" in error and "Traceback" not in error
    assert len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_a_model_with_non_finite_weights_is_refused_in_one_line(exported, tmp_path, capsys, bad_value):
    """A diverged run's checkpoint would serve NaN scores: the export names a bad weight."""
    model, _, _ = exported
    diverged = keras.models.clone_model(model)
    diverged.set_weights(model.get_weights())
    moving_variance = next(weight for weight in diverged.weights if "moving_variance" in weight.path)
    values = keras.ops.convert_to_numpy(moving_variance.value).copy()
    values[0] = bad_value
    moving_variance.assign(values)
    path = tmp_path / "diverged.keras"
    diverged.save(path)
    assert saved_model.main(["--model", str(path), "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "NaN or infinite, the first " + moving_variance.path in error[0], error
    assert not (tmp_path / "out").exists()


def test_a_model_with_fewer_classes_than_the_default_top_k_exports_them_all(tmp_path):
    """A 3-class run's export after training, with no --top_k: every class, not a refusal."""
    model = LambdaResNet((1, 1, 1, 1), ((), (), (), ()), input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), classes=3)
    path = saved_model.export_model(model, tmp_path / "three", crop_padding=CROP_PADDING, warmup=False)
    outputs = tf.saved_model.load(str(path)).signatures["serving_default"](
        image_bytes=tf.constant([encode_jpeg(make_image(40, 40, 0))]))
    assert outputs["top_k_labels"].numpy().tolist() == [[label.encode() for label in sorted(
        ["class_0", "class_1", "class_2"], key=lambda name: -outputs["probabilities"].numpy()[0][int(name[-1])])]]


def test_predict_names_the_image_that_cannot_be_decoded(exported, images, tmp_path, capsys):
    from export import predict

    _, path, _ = exported
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    good.write_bytes(images[0])
    bad.write_bytes(images[1][: len(images[1]) // 2])
    assert predict.main([str(path), str(good), str(bad)]) == 2
    error = capsys.readouterr().err
    assert f"error: {bad}: " in error and str(good) not in error and saved_model.DECODE_ERROR in error


def test_client_names_a_missing_image_file(tmp_path, capsys):
    from export import client

    missing = tmp_path / "nowhere.jpg"
    assert client.main(["--rest", "http://localhost:1", "--model", "tiny", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == f"python -m export.client: error: no such image file: {missing}"
