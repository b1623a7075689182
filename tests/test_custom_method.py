"""A method defined outside the package — its own tiny model, its own loss, SGD with a poly
schedule, one stage, in the folder-shaped module ``tests/custom_method/`` and registered with
the ``register_*`` calls of the packaged families — trained, evaluated and predicted with
``condseg.train`` and the CLI, without touching package code. It is the worked example of
docs/architecture.md ("Adding a method")."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import condseg
from condseg.cli import app
from condseg.data.synthetic import synthesize
from custom_method.model import TinyFCN  # importing the package registers the method


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic data with a test split (two training names moved into test.txt)."""
    root = synthesize(tmp_path_factory.mktemp("tiny") / "data", n_train=10, n_val=4, size=48)
    names = (root / "train.txt").read_text().split()
    (root / "train.txt").write_text("\n".join(names[:8]) + "\n")
    (root / "test.txt").write_text("\n".join(names[8:]) + "\n")
    return root


def test_a_method_from_outside_trains_with_its_own_recipe(data: Path, tmp_path: Path) -> None:
    config = condseg.load_config("default", ["method=tiny", "progress_bar=false",
                                             "log_every_n_steps=1"])
    assert list(config.stages) == ["train"] and config.model.name == "tiny-fcn"
    result = condseg.train(config, data, tmp_path / "run")

    assert result.model_file == tmp_path / "run" / "train" / "model.safetensors"
    model = condseg.load_model(result.model_file)
    assert isinstance(model, TinyFCN) and model.meta["arch"]["options"] == {"width": 8}
    with (tmp_path / "run" / "train" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    # The poly schedule, per epoch, on both groups (the encoder and the head): lr·(1 − e/3)^0.9.
    for group in ("encoder", "rest"):
        lrs = [float(r[f"lr_{group}"]) for r in rows if r.get(f"lr_{group}")]
        assert lrs == pytest.approx([0.05 * (1 - e / 3) ** 0.9 for e in range(3)])
    # Validation selects the model; the test split is evaluated once, at the end.
    summary = json.loads((result.evaluation_dir / "summary.json").read_text())
    assert result.evaluation_dir == tmp_path / "run" / "evaluation" / "test"
    assert summary["protocol"]["split"] == "test" and summary["protocol"]["n_images"] == 2
    assert summary["protocol"]["method"] == "tiny"
    assert 0 <= summary["metrics"]["dice"]["mean"] <= 1


def test_the_cli_trains_evaluates_and_predicts_it(data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    run = tmp_path / "run"
    trained = runner.invoke(app, ["train", "--data", str(data), "--method", "tiny", "--out",
                                  str(run), "progress_bar=false",
                                  "stages.train.max_epochs=1"])
    assert trained.exit_code == 0, trained.output
    assert "test-split evaluation" in trained.output
    model_file = run / "train" / "model.safetensors"
    evaluated = runner.invoke(app, ["evaluate", str(model_file), "--data", str(data),
                                    "--out", str(tmp_path / "eval")])
    assert evaluated.exit_code == 0, evaluated.output
    assert (tmp_path / "eval" / "per_image.csv").is_file()
    predicted = runner.invoke(app, ["predict", str(model_file), str(data / "images"), "--out",
                                    str(tmp_path / "pred"), "--overlay"])
    assert predicted.exit_code == 0, predicted.output
    assert len(list((tmp_path / "pred").glob("*_overlay.png"))) == 14
    listed = runner.invoke(app, ["methods"])
    assert "tiny" in listed.output and "weighted-bce" in listed.output


def test_a_recipe_that_cannot_work_is_refused_before_anything_is_written(
    data: Path, tmp_path: Path
) -> None:
    config = condseg.load_config("default", ["method=tiny", "stages.train.loss.name=condseg-cr"])
    with pytest.raises(condseg.CondsegError, match=r"needs the views \['strong'\].*views="):
        condseg.train(config, data, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    config = condseg.load_config("default", ["method=tiny", "data.size=30"])
    with pytest.raises(condseg.CondsegError, match="multiples of 4"):
        condseg.train(config, data, tmp_path / "run")
    hook = "stages.train.batch_hook={name: multiscale, options: {sizes: [32, 30]}}"
    config = condseg.load_config("default", ["method=tiny", hook])
    with pytest.raises(condseg.CondsegError, match=r"30x30 .*multiples of 4.*batch_hook sizes"):
        condseg.train(config, data, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_every_register_takes_the_name_the_item_and_a_keyword_description() -> None:
    from condseg.registry import Registry

    things: Registry[object] = Registry("thing")

    @things.register("decorated", description="as a decorator")
    def decorated() -> None: ...

    def called() -> None: ...

    assert things.register("called", called, description="as a call") is called
    assert things.get("decorated") is decorated
    assert things.describe() == {"called": "as a call", "decorated": "as a decorator"}
    with pytest.raises(condseg.CondsegError, match="a thing named 'called' is registered"):
        things.register("called", decorated)
    # The earlier positional description is refused where it stands, not registered as a loss.
    with pytest.raises(TypeError, match=r"register\(name, item, description=\.\.\.\)"):
        condseg.register_loss("positional", "a description")
