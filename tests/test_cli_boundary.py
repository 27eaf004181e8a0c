"""Every command-line tool answers a user's mistake in one line with exit status 2.

The rule lives in one place, `lambda_keras.cli`; these tests check the rule itself, that
every `python -m` tool of the package goes through it, and (Hypothesis) that command
lines drawn from hostile values (missing, empty, special and unicode paths, negative,
huge, non-finite and non-numeric numbers) never end in a traceback or a silent success.
"""

import errno
import importlib
import os
import pathlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambda_keras import cli

REPO = pathlib.Path(__file__).resolve().parent.parent
TOOLS = sorted(
    ".".join(path.relative_to(REPO).with_suffix("").parts)
    for package in ("lambda_keras", "training", "export")
    for path in (REPO / package).rglob("*.py")
    if 'if __name__ == "__main__":' in path.read_text("utf-8")
)


def test_the_package_has_the_tools_the_readme_names():
    assert {"lambda_keras.convert_timm", "training.train", "training.prepare_imagenet", "training.verify_data",
            "training.demo_data", "export.saved_model", "export.predict", "export.client"} <= set(TOOLS)


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_goes_through_the_boundary(tool):
    main = importlib.import_module(tool).main
    assert getattr(main, "__wrapped__", None) is not None, f"{tool}.main is not wrapped by cli.entry_point"


def _run(function, capsys):
    status = cli.entry_point("python -m tool")(lambda argv: function())(None)
    return status, capsys.readouterr().err


def test_a_user_error_is_one_line_with_exit_2(capsys):
    def refuse():
        raise cli.UserError("the first line\n  and a second one\n")

    assert _run(refuse, capsys) == (2, "python -m tool: error: the first line; and a second one\n")


def test_an_os_error_names_its_path(capsys):
    def missing():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "/no/such/file")

    assert _run(missing, capsys) == (2, "python -m tool: error: /no/such/file: No such file or directory\n")


def test_a_file_where_a_folder_is_asked_for_is_named_as_such(tmp_path, capsys):
    """os.makedirs on a file (a --model_dir or --output naming one) says "File exists"."""
    a_file = tmp_path / "manifest.json"
    a_file.write_text("{}")
    status, error = _run(lambda: os.makedirs(a_file, exist_ok=True), capsys)
    assert (status, error) == (2, f"python -m tool: error: {a_file} is a file, not a folder (File exists)\n")
    # An existing folder that a tool refuses to reuse keeps the plain message.
    status, error = _run(lambda: os.mkdir(tmp_path), capsys)
    assert (status, error) == (2, f"python -m tool: error: {tmp_path}: File exists\n")


def test_ctrl_c_exits_130_and_a_bug_keeps_its_traceback(capsys):
    def interrupted():
        raise KeyboardInterrupt

    assert _run(interrupted, capsys) == (130, "python -m tool: interrupted\n")

    def bug():
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        _run(bug, capsys)


def test_a_bad_command_line_is_one_line_with_exit_2(capsys):
    parser = cli.ArgumentParser(prog="python -m tool")
    parser.add_argument("--count", type=int, required=True)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--count", "many"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("python -m tool: error: argument --count: invalid int value: 'many' "
                                       "(see --help)\n")


@pytest.fixture(scope="module")
def hostile_paths(tmp_path_factory):
    """Paths a user may pass by mistake: missing, a folder, an empty file, a text file,
    a FIFO, a unicode name with spaces, a file under a file."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "folder").mkdir()
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.keras").write_text("not a model")
    (root / "ünï cödé folder").mkdir()
    os.mkfifo(root / "fifo.safetensors")
    return [str(root / "missing"), str(root / "folder"), str(root / "empty.jpg"), str(root / "text.keras"),
            str(root / "ünï cödé folder"), str(root / "fifo.safetensors"), str(root / "text.keras" / "below"), ""]


NUMBERS = ["0", "-1", "-0", "1e309", "nan", "inf", "99999999999999999999", "1.5", "x", "", " 3"]


def _command_lines(tool, paths):
    """Hostile command lines for one tool: its flags with drawn paths and numbers."""
    path, number = st.sampled_from(paths), st.sampled_from(NUMBERS)
    model = st.sampled_from(["lambda_resnet26t", "resnet50", ""])
    lines = {
        "lambda_keras.convert_timm": st.tuples(path, st.just("--model"), model, st.just("--output"),
                                               path.map(lambda p: p + ".weights.h5")),
        "training.verify_data": st.tuples(path, st.just("--num_workers"), number),
        "training.prepare_imagenet": st.tuples(st.just("--input"), path, st.just("--output"), path,
                                               st.just("--train_shards"), number),
        "export.saved_model": st.tuples(st.just("--model"), path, st.just("--output"), path,
                                        st.sampled_from(["--image_size", "--top_k", "--version"]), number),
        "training.demo_data": st.tuples(st.just("--output"), path, st.sampled_from(
            ["--image_size", "--train_shards", "--validation_shards", "--first_label"]), number),
        "export.predict": st.tuples(path, path),
        "export.client": st.tuples(st.just("--rest"), st.sampled_from(["http://127.0.0.1:1", "localhost:1", ""]),
                                   st.just("--model"), st.just("m"), st.just("--timeout"), number, path),
    }
    return lines[tool].map(list)


@pytest.mark.parametrize("tool", ["lambda_keras.convert_timm", "training.verify_data", "training.prepare_imagenet",
                                  "training.demo_data", "export.saved_model", "export.predict", "export.client"])
def test_hostile_command_lines_get_one_line_and_exit_2(tool, hostile_paths, capsys):
    main = importlib.import_module(tool).main

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(argv=_command_lines(tool, hostile_paths))
    def check(argv):
        capsys.readouterr()
        try:
            status = main(argv)
        except SystemExit as exit_info:
            status = exit_info.code
        error = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        if status == 0:  # A valid command line among the drawn ones (e.g. `--train_shards " 3"`).
            return
        assert status == 2, (argv, status, error)
        assert len(error) == 1 and error[0].startswith(f"python -m {tool}: error: "), (argv, error)

    check()
