"""Messages that lead somewhere: every ``--flag`` and every ``key=value`` override that the
package's messages suggest exists. Read from the source's string literals (f-strings with their
placeholders), so a new message is checked without a test of its own."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

import condseg
from condseg import cli
from condseg.config import RunConfig, load_config
from condseg.errors import ConfigError
from condseg.recipes import list_methods

SOURCE = Path(condseg.__file__).parent
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
# A dotted config key (placeholders allowed) and its value, e.g. stages.{name}.init.{part}=null.
OVERRIDE = re.compile(r"(?<![\w.{}/-])((?:[a-z_]+|\{[^}]+\})(?:\.(?:[a-z_0-9]+|\{[^}]+\}))+)"
                      r"=([^\s,;)]+)")


def _texts() -> list[tuple[str, str]]:
    """(file, text) of every string literal of the package; an f-string's placeholders are
    kept as ``{expression}``."""
    texts = []
    for path in sorted(SOURCE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        inner = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)
                 for v in node.values}
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else
                               "{" + ast.unparse(v.value) + "}" for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in inner:
                text = node.value
            else:
                continue
            texts.append((str(path.relative_to(SOURCE)), text))
    return texts


def _cli_options() -> set[str]:
    found = {"--help"}

    def walk(command) -> None:
        for param in command.params:
            found.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(cli.app))
    return found


def test_every_flag_a_message_suggests_is_an_option_of_a_command() -> None:
    options = _cli_options()
    unknown = sorted({f"{flag} ({where})" for where, text in _texts()
                      for flag in FLAG.findall(text) if flag not in options})
    assert not unknown


def test_convert_official_takes_the_overwrite_its_refusal_suggests(tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"mine")
    runner = CliRunner()
    refused = runner.invoke(cli.app, ["convert-official", str(tmp_path / "x.pth"), str(out)])
    assert refused.exit_code == 2 and "pass --overwrite" in refused.output
    taken = runner.invoke(cli.app, ["convert-official", str(tmp_path / "x.pth"), str(out),
                                    "--overwrite"])
    assert taken.exit_code == 2 and "checkpoint not found" in taken.output  # got past the flag
    assert out.read_bytes() == b"mine"


def _stages() -> set[str]:
    return {stage for method in list_methods()
            for stage in load_config("default", [f"method={method}"]).stages}


def _overrides() -> list[tuple[str, str, str]]:
    """(file, key, value) of every dotted override the messages suggest, and of the top-level
    config keys (``precision=32``); Python keyword arguments (``overwrite=True``) are not
    config keys and are left out, and so is the form itself (``key.sub=value``)."""
    found = []
    for where, text in _texts():
        for key, value in OVERRIDE.findall(text):
            if value.strip("`") != "value":
                found.append((where, key, value.rstrip(".'\"")))
        for key, value in re.findall(r"(?<![\w.{}-])([a-z_]+)=([^\s,;)]+)", text):
            if key in RunConfig.model_fields:
                found.append((where, key, value.rstrip(".'\"")))
    return found


def _parses(key: str, value: str) -> bool:
    """Whether ``key=value`` parses for some method, placeholders filled in: a stage
    placeholder by each method's stages, a loss key relative to its stage (losses name
    ``loss.options.x``; training qualifies them), other placeholders by sample text."""
    if key.startswith("loss."):
        key = "stages.{name}." + key
    value = "null" if "{" in value or value.isupper() else value
    stages = sorted(_stages())
    candidates = [re.sub(r"\{(?:name|stage|source|s)\}", stage, key) for stage in stages]
    for method in list_methods():
        for candidate in dict.fromkeys(candidates):
            filled = re.sub(r"\{[^}]+\}", "encoder", candidate)
            try:
                load_config("default", [f"method={method}", f"{filled}={value}"])
            except ConfigError as error:
                if "unknown config key" in str(error) or "not stages of method" in str(error) \
                        or "is not a section" in str(error):
                    continue
                return True  # a real key: the sample value may not suit it
            return True
    return False


def test_every_override_a_message_suggests_is_a_real_key() -> None:
    suggestions = _overrides()
    assert len(suggestions) >= 10  # the scan finds the messages
    wrong = sorted({f"{key}={value} ({where})" for where, key, value in suggestions
                    if not _parses(key, value)})
    assert not wrong


def test_the_override_check_tells_keys_from_non_keys() -> None:
    assert _parses("stages.{name}.init.{part}", "null")
    assert _parses("loss.options.lossnet", "false")  # relative to a stage
    assert not _parses("los.options.lossnet", "false")
    assert not _parses("model.option.width", "3")


def _foreign_files(folder: Path) -> dict[str, Path]:
    """Files a user may give where a model file goes, by what they are."""
    import torch
    from PIL import Image

    files = {"pth": folder / "net.pth", "png": folder / "image.png",
             "text": folder / "notes.txt", "empty": folder / "empty.safetensors"}
    torch.save({"w": torch.zeros(2)}, files["pth"])
    Image.new("RGB", (4, 4)).save(files["png"])
    files["text"].write_text("hello\n")
    files["empty"].write_bytes(b"")
    return files


KINDS = {"pth": "a zip archive, as PyTorch .pth/.ckpt checkpoints are", "png": "a PNG image",
         "text": "a text file", "empty": "an empty file"}


def test_a_non_model_file_given_as_a_model_says_what_a_model_file_is(tmp_path: Path) -> None:
    runner = CliRunner()
    for kind, path in _foreign_files(tmp_path).items():
        result = runner.invoke(cli.app, ["export", str(path)])
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert result.output.startswith(f"error: {path} is not a safetensors file")
        assert f"it looks like {KINDS[kind]}" in result.output
        assert "a model file is a .safetensors file with a condseg JSON header, written by " \
               "`condseg train`" in result.output
        assert "weights_only" not in result.output


def test_a_non_checkpoint_given_to_convert_or_as_weights_is_named_not_unpickled(
    tmp_path: Path,
) -> None:
    from condseg.errors import WeightsUnavailableError
    from condseg.models.pretrained import read_state_dict

    files = _foreign_files(tmp_path)
    for kind in ("png", "text"):
        result = CliRunner().invoke(cli.app, ["convert-official", str(files[kind]),
                                              str(tmp_path / f"{kind}.safetensors")])
        assert result.exit_code == 2
        assert result.output == (f"error: {files[kind]} is not a PyTorch checkpoint of the "
                                 f"authors' code (it looks like {KINDS[kind]}); pass their .pth "
                                 "file\n")
        with pytest.raises(WeightsUnavailableError) as refused:
            read_state_dict(files[kind], "model.weights")
        assert f"it looks like {KINDS[kind]}" in str(refused.value)
        assert "weights_only" not in str(refused.value)
    assert not list(tmp_path.glob("*.safetensors.*"))


def test_a_missing_or_raw_dataset_points_to_data_prepare(tmp_path: Path) -> None:
    raw = tmp_path / "Kvasir-SEG"  # a release as downloaded: images/ and masks/, no split
    (raw / "images").mkdir(parents=True)
    (raw / "masks").mkdir()
    file = tmp_path / "data.zip"
    file.write_bytes(b"PK\x03\x04")
    cases = {tmp_path / "missing": "dataset folder {} not found; prepare it with `condseg data "
                                   "prepare DATASET RAW OUT`",
             raw: "{} is not a prepared dataset (no train.txt, val.txt; a raw release?); "
                  "prepare it with `condseg data prepare DATASET RAW OUT` (a public release: "
                  "kvasir-seg,",
             file: "dataset folder {} is a file, not a folder; prepare it with"}
    runner = CliRunner()
    for folder, message in cases.items():
        train = ["train", "--config", "demo", "--out", str(tmp_path / "run")]
        for command in ([train, ["data", "check"]] if folder == raw else [["data", "check"]]):
            data = ["--data", str(folder)] if command[0] == "train" else [str(folder)]
            result = runner.invoke(cli.app, [*command, *data])
            assert result.exit_code == 2, result.output
            assert result.output.startswith("error: " + message.format(folder.resolve()
                                                                         if command[0] == "train"
                                                                         else folder))
            assert "`condseg data prepare folder IMAGES MASKS OUT`" in result.output
            assert result.output.count("\n") == 1
        assert not (tmp_path / "run").exists()
    result = runner.invoke(cli.app, ["cv", "--config", "demo", "--data", str(tmp_path / "missing"),
                                     "--out", str(tmp_path / "cv")])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: dataset folder {tmp_path / 'missing'} not found; "
                                    "prepare it with `condseg data prepare")
    assert not (tmp_path / "cv").exists()
