"""Deploy latency on this CPU: each model in Keras, ONNX Runtime and LiteRT, beside its peer.

Models: ``LambdaResNet26T`` (256x256) holding timm's ``lambda_resnet26t`` weights
(timm's random initialisation under ``torch.manual_seed(0)``, converted by
``lambda_keras.convert_timm``), ``LambdaMobileNetV2`` (224x224) and
``keras.applications.MobileNetV2`` (224x224, ``weights=None``), both initialised under
``keras.utils.set_random_seed(0)``; and the peer ``timm_lambda_resnet26t``: the same
timm model exported with ``torch.onnx`` (the TorchScript exporter, ``dynamo=False``)
and run in ONNX Runtime. 1000 classes everywhere.

Runtimes (``--runtimes``): ``keras`` (TensorFlow, a ``tf.function`` of the network in
inference mode), ``onnxruntime``, ``litert-float32``, ``litert-dynamic`` (int8 weights,
dynamic-range quantization) and ``litert-int8`` (full integer quantization, calibrated on
``--calibration_examples`` synthetic images: latency, not accuracy, is measured). Every
file is written by ``export.portable.export_portable`` and holds one graph: float32
[batch, S, S, 3] RGB pixels in [0, 255] in, the ImageNet normalisation inside, the
model's outputs out; the Keras runtime times that same pixel network, and timm's ONNX
graph is wrapped the same way (NHWC pixels in, the same normalisation, then timm's
NCHW network), so every runtime takes the same input.

Timing: every (model, runtime) is timed in its own fresh process, ``--processes`` times,
in alternating rounds so that a slow spell of the machine meets every side; each process
makes ``--warmup`` untimed calls, then ``--repeats`` timed calls per batch size
(``--batches``), and reports their median. A row gives the min / median / max of those
per-process medians, and the 10th and 90th percentiles of all timed calls. Every runtime
gets ``--threads`` intra-op threads (default: the core count) and one inter-op thread
(TensorFlow and ONNX Runtime run one op at a time; LiteRT has no inter-op pool), recorded
in each row with the CPU, AVX-512, oneDNN and the runtime's version. ``vs_peer_fastest``
divides our model's median by the fastest median of its peer at the same batch
(LambdaResNet26T: timm's ONNX; LambdaMobileNetV2: keras.applications.MobileNetV2 in any
runtime). The files are exported once into ``--work_dir`` (kept between runs; export
time is never timed); ``file_mb`` is the file's size (the ``.keras`` file for Keras).

timm runs under the peer venv's python (``$LAMBDA_KERAS_PEER_PYTHON``, default
``.venv-peers/bin/python``, the venv of ``requirements-peers.txt``; torchvision does not
import beside TensorFlow); its ONNX file runs in this venv's ONNX Runtime, the same one
as ours, and is checked against our converted LambdaResNet26T on sample images
(``max_abs_diff_vs_keras`` of the timm row).

A file whose export fails (``export.portable`` refuses it) becomes a row with the failure
in ``status``, and the other runtimes go on. Writes ``benchmarks/results/deploy_latency.csv``
and prints the markdown table of docs/benchmarks.md ("Deploy latency").

    # the full run (about 25 min on 2 cores, 6 of them exporting; nothing else running)
    LAMBDA_KERAS_PEER_PYTHON=/work/peers-venv/bin/python .venv/bin/python benchmarks/deploy_latency.py
    # a smoke test
    .venv/bin/python benchmarks/deploy_latency.py --models LambdaMobileNetV2 --batches 1 \\
        --repeats 3 --processes 1 --results /tmp/deploy_smoke
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from platform_facts import facts as platform_facts  # benchmarks/ is on sys.path as a script
from results_csv import write_csv
from timing import call_seconds

REPOSITORY = Path(__file__).resolve().parents[1]
RESULTS = REPOSITORY / "benchmarks" / "results"
DEFAULT_WORK_DIR = Path("/tmp/lambda_keras_deploy_latency")

TIMM_NAME = "lambda_resnet26t"
TIMM_MODEL = "timm_lambda_resnet26t"
# model -> (image size, peer)
MODELS = {
    "LambdaResNet26T": (256, TIMM_MODEL),
    "LambdaMobileNetV2": (224, "MobileNetV2"),
    "MobileNetV2": (224, None),
    TIMM_MODEL: (256, None),
}
RUNTIMES = ("keras", "onnxruntime", "litert-float32", "litert-dynamic", "litert-int8")
# runtime -> (export format, quantization, file suffix)
FILES = {
    "onnxruntime": ("onnx", "none", ".onnx"),
    "litert-float32": ("litert", "none", ".float32.tflite"),
    "litert-dynamic": ("litert", "dynamic", ".dynamic.tflite"),
    "litert-int8": ("litert", "int8", ".int8.tflite"),
}
# lambda_keras.data.preprocessing's MEAN_RGB and STDDEV_RGB (checked against them in the
# export worker), written out for the timm worker, whose venv has no TensorFlow.
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
SAMPLE_SEED = 1


def runtimes_of(model: str, runtimes: list[str]) -> list[str]:
    """The runtimes a model runs in: timm's only in ONNX Runtime."""
    return [runtime for runtime in runtimes if model != TIMM_MODEL or runtime == "onnxruntime"]


def file_path(work_dir: Path, model: str, runtime: str) -> Path:
    return work_dir / (model + (".keras" if runtime == "keras" else FILES[runtime][2]))


def file_mb(path: Path) -> float:
    """Size of the file and any external-data file beside it (`<name>.data`), MB (10^6 bytes)."""
    extra = path.with_name(path.name + ".data")
    return round((path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)) / 1e6, 2)


# --- the peer venv: timm's weights and its ONNX file ------------------------------------


def peer_python() -> str:
    default = REPOSITORY / ".venv-peers" / "bin" / "python"
    python = os.environ.get("LAMBDA_KERAS_PEER_PYTHON") or str(default)
    if not Path(python).is_file():
        sys.exit(f"timm's side needs the peer venv's python at {python}: set $LAMBDA_KERAS_PEER_PYTHON "
                 "(requirements-peers.txt, docs/testing.md)")
    return python


def timm_export(work_dir: Path) -> dict:
    """Under the peer python: timm's model (seed 0) -> safetensors and a pixels-in ONNX file."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    network = timm.create_model(TIMM_NAME, pretrained=False).eval()
    checkpoint = work_dir / f"{TIMM_NAME}.safetensors"
    save_file({key: value.contiguous() for key, value in network.state_dict().items()}, str(checkpoint))

    class Pixels(torch.nn.Module):
        """NHWC RGB pixels in [0, 255] -> timm's logits, as export.portable's files take them."""

        def __init__(self):
            super().__init__()
            self.network = network
            self.register_buffer("mean", torch.tensor(MEAN_RGB).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(STDDEV_RGB).view(1, 3, 1, 1))

        def forward(self, pixels):
            return self.network((pixels.permute(0, 3, 1, 2) - self.mean) / self.std)

    size = MODELS[TIMM_MODEL][0]
    output = file_path(work_dir, TIMM_MODEL, "onnxruntime")
    temporary = output.with_name(output.name + ".partial.onnx")
    with torch.no_grad():
        # The TorchScript exporter: the dynamo one (torch's default) needs onnxscript.
        torch.onnx.export(Pixels().eval(), (torch.zeros(1, size, size, 3),), str(temporary), dynamo=False,
                          input_names=["pixels"], output_names=["logits"], opset_version=17,
                          dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}})
    versions = {"timm": timm.__version__, "torch": torch.__version__}
    (work_dir / "timm_versions.json").write_text(json.dumps(versions))
    temporary.rename(output)  # last: the file's presence says the export is complete
    return {"checkpoint": str(checkpoint), "onnx": str(output), **versions}


# --- the main venv: our files -----------------------------------------------------------


def sample_pixels(size: int, count: int, seed: int = SAMPLE_SEED):
    """float32 [count, S, S, 3] in [0, 255], without TensorFlow (the timing workers')."""
    import numpy as np

    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype(np.float32)


def build_model(model: str, work_dir: Path):
    import keras

    from lambda_keras import convert_timm
    from lambda_keras.models import CONSTRUCTORS

    size = MODELS[model][0]
    keras.utils.set_random_seed(0)
    if model == "MobileNetV2":
        return keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3))
    if model == "LambdaResNet26T":
        network = CONSTRUCTORS[model](input_shape=(size, size, 3), classifier_activation=None)
        state = convert_timm.read_state_dict(work_dir / f"{TIMM_NAME}.safetensors")
        convert_timm.load_timm_weights(network, state, TIMM_NAME)
        return network
    return CONSTRUCTORS[model](input_shape=(size, size, 3))


def export_files(model: str, runtimes: list[str], work_dir: Path, calibration_examples: int) -> dict:
    """Writes the model's missing files (the `.keras` file and its exports); returns export facts."""
    import keras
    import numpy as np

    from export import portable
    from lambda_keras.data import preprocessing
    from lambda_keras.data.preprocessing import EvalTransform

    assert np.allclose(MEAN_RGB, preprocessing.MEAN_RGB) and np.allclose(STDDEV_RGB, preprocessing.STDDEV_RGB)
    size = MODELS[model][0]
    keras_file = file_path(work_dir, model, "keras")
    if keras_file.exists():
        network = keras.saving.load_model(keras_file, compile=False)
    else:
        network = build_model(model, work_dir)
        network.save(keras_file.with_name(keras_file.name + ".partial.keras"))
        keras_file.with_name(keras_file.name + ".partial.keras").rename(keras_file)
    facts = {}
    for runtime in runtimes:
        if runtime == "keras":
            continue
        path = file_path(work_dir, model, runtime)
        export_format, quantization, _ = FILES[runtime]
        if not path.exists():
            calibration = sample_pixels(size, calibration_examples, seed=2) if quantization == "int8" else None
            try:
                portable.export_portable(network, path, export_format, quantization, calibration,
                                         eval_transform=EvalTransform(size, 32))
            except portable.ExportError as error:  # recorded in the row; the other runtimes go on
                facts[runtime] = f"export failed: {error}"
                continue
        check = json.loads(portable.contract_path_for(path).read_text())["check"]
        facts[runtime] = check["max_abs_difference_from_keras"]
    if model == "LambdaResNet26T":
        # timm's ONNX file against our converted model: the same weights, the same outputs.
        timm_file = file_path(work_dir, TIMM_MODEL, "onnxruntime")
        if timm_file.exists():
            pixels = sample_pixels(size, 4)
            ours = portable.portable_model(network, size)(pixels, training=False).numpy()
            theirs = portable.Runtime(str(timm_file), "onnx").run(pixels)
            facts[TIMM_MODEL] = float(np.max(np.abs(ours - theirs)))
    return facts


# --- timing workers ---------------------------------------------------------------------


def time_runtime(model: str, runtime: str, work_dir: Path, batches: list[int], repeats: int, warmup: int,
                 threads: int) -> dict:
    """In a fresh process: the runtime's calls on each batch size (seconds, all timed calls)."""
    size = MODELS[model][0]
    path = file_path(work_dir, model, runtime)
    if runtime == "keras":
        import keras
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        from export import portable

        network = portable.portable_model(keras.saving.load_model(path, compile=False), size)
        forward = tf.function(lambda x: network(x, training=False))

        def predictor(pixels):
            tensor = tf.constant(pixels)
            return lambda: forward(tensor).numpy()

        version = f"tensorflow {tf.__version__}, keras {keras.__version__}"
        backend = "tensorflow"
    elif runtime == "onnxruntime":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name

        def predictor(pixels):
            return lambda: session.run([output_name], {input_name: pixels})[0]

        version = f"onnxruntime {onnxruntime.__version__}"
        backend = "onnxruntime"
    else:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        input_index = interpreter.get_input_details()[0]["index"]
        output_index = interpreter.get_output_details()[0]["index"]

        def predictor(pixels):
            interpreter.resize_tensor_input(input_index, pixels.shape)
            interpreter.allocate_tensors()

            def call():
                interpreter.set_tensor(input_index, pixels)
                interpreter.invoke()
                return interpreter.get_tensor(output_index).copy()

            return call

        version = f"ai-edge-litert {importlib.metadata.version('ai-edge-litert')}"
        backend = "litert"
    calls = {}
    for batch in batches:
        calls[str(batch)] = call_seconds(predictor(sample_pixels(size, batch)), repeats, warmup)
    return {"calls": calls, "runtime_version": version, **platform_facts(backend=backend)}


# --- the driver -------------------------------------------------------------------------


def run_worker(command: list[str], environment: dict | None = None) -> dict:
    """Runs a worker; its last JSON line, or {"status": "failed: ..."}."""
    result = subprocess.run(command, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(environment or {})},
                            capture_output=True, text=True, cwd=REPOSITORY)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode or not lines:
        return {"status": f"failed: {result.stderr.strip()[-400:]}"}
    return {**json.loads(lines[-1]), "status": "ok"}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per batch size and process")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before them")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per (model, runtime)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads of every runtime")
    parser.add_argument("--calibration_examples", type=int, default=32, help="synthetic images calibrating int8")
    parser.add_argument("--work_dir", type=Path, default=DEFAULT_WORK_DIR, help="exported files, kept between runs")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where deploy_latency.csv goes")
    parser.add_argument("--worker", choices=("timm-export", "export", "time"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    work_dir = args.work_dir.resolve()

    if args.worker:
        if args.worker == "timm-export":
            result = timm_export(work_dir)
        elif args.worker == "export":
            result = {"max_abs_diff": export_files(args.models[0], args.runtimes, work_dir,
                                                   args.calibration_examples)}
        else:
            result = time_runtime(args.models[0], args.runtimes[0], work_dir, args.batches, args.repeats,
                                  args.warmup, args.threads)
        print(json.dumps(result), flush=True)
        return

    work_dir.mkdir(parents=True, exist_ok=True)
    script = [sys.executable, __file__, "--work_dir", str(work_dir)]
    # 1. The files, once (kept in work_dir): timm's first, since LambdaResNet26T takes its weights.
    needs_timm = TIMM_MODEL in args.models or "LambdaResNet26T" in args.models
    timm_facts = {}
    if needs_timm and not file_path(work_dir, TIMM_MODEL, "onnxruntime").exists():
        timm_facts = run_worker([peer_python(), __file__, "--work_dir", str(work_dir), "--worker", "timm-export"])
        if timm_facts["status"] != "ok":
            sys.exit(f"timm's export failed: {timm_facts['status']}")
    if needs_timm:
        timm_facts = json.loads((work_dir / "timm_versions.json").read_text())
    differences = {}
    for model in args.models:
        if model == TIMM_MODEL:
            continue
        result = run_worker([*script, "--worker", "export", "--models", model, "--runtimes", *args.runtimes,
                             "--calibration_examples", str(args.calibration_examples)])
        if result["status"] != "ok":
            sys.exit(f"{model}'s export failed: {result['status']}")
        differences[model] = result["max_abs_diff"]
        print(f"exported {model}: max |file - Keras| {result['max_abs_diff']}", flush=True)

    # 2. The timings: each (model, runtime) in a fresh process, in alternating rounds.
    pairs = [(model, runtime) for model in args.models for runtime in runtimes_of(model, args.runtimes)]
    runs: dict[tuple[str, str], list[dict]] = {pair: [] for pair in pairs}
    for model, runtime in pairs:
        failure = differences.get(model, {}).get(runtime)
        if isinstance(failure, str):
            runs[(model, runtime)].append({"status": failure})
    for round_index in range(args.processes):
        for model, runtime in pairs:
            if runs[(model, runtime)] and runs[(model, runtime)][0]["status"].startswith("export failed"):
                continue
            run = run_worker([*script, "--worker", "time", "--models", model, "--runtimes", runtime,
                              "--batches", *map(str, args.batches), "--repeats", str(args.repeats),
                              "--warmup", str(args.warmup), "--threads", str(args.threads)])
            runs[(model, runtime)].append(run)
            medians = {batch: round(1000 * statistics.median(calls), 1)
                       for batch, calls in run.get("calls", {}).items()}
            print(f"round {round_index + 1}: {model} {runtime}: {medians or run['status']} ms", flush=True)

    # 3. The rows.
    date = datetime.date.today().isoformat()
    rows = []
    for (model, runtime), model_runs in runs.items():
        ok = [run for run in model_runs if run["status"] == "ok"]
        path = file_path(work_dir, model, runtime)
        if model == TIMM_MODEL:
            difference = differences.get("LambdaResNet26T", {}).get(TIMM_MODEL, "")
        else:
            difference = differences[model].get(runtime, 0.0 if runtime == "keras" else "")
        for batch in args.batches:
            row = {"model": model, "image_size": MODELS[model][0], "runtime": runtime,
                   "runtime_version": ok[-1]["runtime_version"] if ok else "", "batch": batch,
                   "intra_op_threads": args.threads, "inter_op_threads": "" if runtime.startswith("litert") else 1,
                   "processes": len(ok), "calls_per_process": args.repeats, "warmup_calls": args.warmup}
            if ok:
                medians = [1000 * statistics.median(run["calls"][str(batch)]) for run in ok]
                pooled = [1000 * seconds for run in ok for seconds in run["calls"][str(batch)]]
                row.update({"latency_ms_min": round(min(medians), 2),
                            "latency_ms_median": round(statistics.median(medians), 2),
                            "latency_ms_max": round(max(medians), 2),
                            "call_ms_p10": round(percentile(pooled, 0.1), 2),
                            "call_ms_p90": round(percentile(pooled, 0.9), 2)})
                row["img_s"] = round(batch / row["latency_ms_median"] * 1000, 2)
            if isinstance(difference, str):  # the export's failure, in status
                difference = ""
            row.update({"file": path.name, "file_mb": file_mb(path) if path.exists() else "",
                        "max_abs_diff_vs_keras": difference,
                        "status": "ok" if ok else model_runs[-1]["status"][:300]})
            if model == TIMM_MODEL:
                row["exporter"] = f"torch.onnx TorchScript (dynamo=False), torch {timm_facts.get('torch')}, " \
                                  f"timm {timm_facts.get('timm')}"
            if ok:
                row.update({key: ok[-1][key] for key in ("cpu", "avx512", "onednn", "cores")})
            row["date"] = date
            rows.append(row)
    for row in rows:
        peer = MODELS[row["model"]][1]
        peer_medians = [other["latency_ms_median"] for other in rows
                        if other["model"] == peer and other["batch"] == row["batch"] and "latency_ms_median" in other]
        if peer_medians and "latency_ms_median" in row:
            row["vs_peer_fastest"] = round(row["latency_ms_median"] / min(peer_medians), 2)

    args.results.mkdir(parents=True, exist_ok=True)
    write_csv(args.results / "deploy_latency.csv", rows)
    print_table(rows, args)


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    first = next((row for row in rows if row.get("cpu")), {})
    versions = sorted({row["runtime_version"] for row in rows if row["runtime_version"]})
    print(f"\n{first.get('cpu', '?')} ({first.get('cores', '?')} cores, AVX-512 {first.get('avx512', '?')}), "
          f"{args.threads} intra-op threads; {'; '.join(versions)}. ms per call: median of {args.processes} "
          f"processes' medians of {args.repeats} calls (min-max over processes); x peer: over the peer's fastest\n")
    batch_columns = " | ".join(f"batch {batch}" for batch in args.batches)
    print(f"| model | runtime | {batch_columns} | file MB |")
    print("|---|---|" + "---|" * len(args.batches) + "---|")
    for model in args.models:
        for runtime in runtimes_of(model, args.runtimes):
            cells = []
            for batch in args.batches:
                row = next(row for row in rows
                           if (row["model"], row["runtime"], row["batch"]) == (model, runtime, batch))
                if "latency_ms_median" not in row:
                    cells.append(row["status"][:60])
                    continue
                cell = f"{row['latency_ms_median']:.1f} ({row['latency_ms_min']:.1f}-{row['latency_ms_max']:.1f})"
                if "vs_peer_fastest" in row:
                    cell += f", {row['vs_peer_fastest']:.2f}x peer"
                cells.append(cell)
            size = next(row["file_mb"] for row in rows if (row["model"], row["runtime"]) == (model, runtime))
            print(f"| {model} | {runtime} | {' | '.join(cells)} | {size} |")


if __name__ == "__main__":
    main()
