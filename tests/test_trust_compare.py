"""A comparison never pairs, pools or counts twice what is not comparable (issue 23, point 2).

Evaluations record what identifies their data (the data root resolved, digests of the image
names and of the mask bytes), their protocol and their model file's digest; ``compare`` keys by
them, not by folder and image names. Hand-written evaluations (test_compare's helper) cover each
member of the class; the first test evaluates a real model on two datasets that share their
folder and file names.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from condseg.cli import app
from condseg.errors import CompareError
from condseg.evaluation.compare import compare
from condseg.evaluation.evaluate import dataset_identity, evaluate, read_results
from condseg.layout import DatasetDir
from test_compare import REF_DICE, RUN_DICE, write_evaluation, write_run

TEST = "kvasir-seg/test"


def identity(root: str = "/data/kvasir-seg", names: str = "n1", masks: str = "m1") -> dict:
    """A recorded dataset identity (the digests stand for real ones)."""
    return {"root": root, "names": names, "masks": masks}


def notes_of(result: object) -> str:
    return "\n".join(result.notes)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- recorded identity


@pytest.fixture(scope="module")
def twin_datasets(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[Path], Path, Path]:
    """Two model files (seeds 0 and 1) and two different datasets, both folders named ``data``
    with the same image names (``a/data`` and ``b/data``: other seeds, so other masks)."""
    import condseg
    from condseg.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("twins")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = condseg.create_model("condseg-net0", encoder="resnet18")
        paths.append(condseg.save_model(root / f"net0-seed{seed}.safetensors", model,
                                        mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
                                        input_size=64))
    a = synthesize(root / "a" / "data", n_train=1, n_val=4, size=64, seed=0)
    b = synthesize(root / "b" / "data", n_train=1, n_val=4, size=64, seed=1)
    assert (a / "val.txt").read_text() == (b / "val.txt").read_text()
    return paths, a, b


def test_an_evaluation_records_its_data_and_model_and_two_datasets_of_one_name_stay_apart(
    twin_datasets: tuple[list[Path], Path, Path], tmp_path: Path
) -> None:
    """Two datasets called ``data`` with the same image names used to be one column, paired
    image by image; now each is its own column, named by as much of its root as tells them
    apart, and nothing is paired across them. Two seeds on one dataset (what a study
    compares) are still one column, paired and pooled."""
    import condseg

    (model_file, seed1), a, b = twin_datasets
    model = condseg.load_model(model_file)
    folders = []
    for data in (a, b):
        out = tmp_path / data.parent.name
        evaluate(model, data, split="val", out_dir=out, workers=0, size=64)
        folders.append(out)
    recorded = read_results(folders[0]).protocol
    names = sorted((a / "val.txt").read_text().split())
    masks = [next((a / "masks").glob(f"{n}.*")) for n in names]
    assert recorded["dataset"] == dataset_identity(a, names, masks)
    assert recorded["dataset"]["root"] == str(a.resolve())
    assert recorded["model_digest"] == hashlib.sha256(model_file.read_bytes()).hexdigest()

    result = compare(folders, labels=["on a", "on b"])
    assert result.columns == ["a/data/val", "b/data/val"]
    assert not result.stats  # never paired
    assert "data/val names different datasets" in notes_of(result)
    pooled = compare(folders, labels=["net0", "net0"], pool=True)
    assert pooled.columns == ["a/data/val", "b/data/val"]
    assert [len(e.pooled) for e in pooled.entries[0].evaluations] == [1, 1]  # one run a cell

    other_seed = tmp_path / "seed1"
    evaluate(condseg.load_model(seed1), a, split="val", out_dir=other_seed, workers=0, size=64)
    seeds = compare([folders[0], other_seed], labels=["seed 0", "seed 1"])
    assert seeds.columns == ["data/val"] and len(seeds.stats) == 1
    assert compare([folders[0], other_seed], labels=["m", "m"], pool=True).entries[0].n_runs == 2


def test_the_dataset_digest_follows_the_names_and_the_mask_bytes(tmp_path: Path) -> None:
    """The digest is of the data, not of where it lies: a copy elsewhere has the same one; a
    mask changed in place, another image list or a renamed image changes it; the order the
    split lists the names in does not."""
    from condseg.data.synthetic import synthesize

    data = synthesize(tmp_path / "data", n_train=1, n_val=3, size=32)
    names = (data / "val.txt").read_text().split()

    def digest(root: Path, listed: list[str]) -> tuple[str, str]:
        record = dataset_identity(root, listed,
                                  [next((root / "masks").glob(f"{n}.*")) for n in listed])
        return record["names"], record["masks"]

    before = digest(data, names)
    copy = Path(shutil.copytree(data, tmp_path / "elsewhere" / "data"))
    assert digest(copy, names) == before
    assert digest(data, names[::-1]) == before
    assert digest(data, names[:2])[0] != before[0]
    mask = next((copy / "masks").glob(f"{names[0]}.*"))
    mask.write_bytes(mask.read_bytes() + b"\0")
    changed = digest(copy, names)
    assert changed[0] == before[0] and changed[1] != before[1]


# --------------------------------------------------------------------------- the data


def test_what_is_not_the_same_data_is_never_paired_or_pooled(tmp_path: Path) -> None:
    """Members: other data at another root (own column, with and without --pool); other data at
    the same root — masks changed in place, a split list rewritten — (refused, naming both
    folders); the same data at another root, a copy (one column, paired); another split of the
    same dataset (its own column); the folds of one dataset (one pooled column)."""
    ref = write_evaluation(tmp_path / "ref", REF_DICE, model="unet",
                           dataset=identity("/x/kvasir-seg"))
    other = write_evaluation(tmp_path / "other", RUN_DICE, dataset=identity("/y/kvasir-seg",
                                                                            masks="m2"))
    result = compare([ref, other])
    assert result.columns == ["x/kvasir-seg/test", "y/kvasir-seg/test"]
    assert not result.stats
    assert ("kvasir-seg/test names different datasets, shown apart and never paired or pooled "
            "with each other: x/kvasir-seg/test (/x/kvasir-seg), y/kvasir-seg/test "
            "(/y/kvasir-seg)") in result.notes
    pooled = compare([ref, other], labels=["m", "m"], pool=True)
    assert pooled.columns == ["x/kvasir-seg/test", "y/kvasir-seg/test"]
    assert [e.n_runs for e in pooled.entries] == [2]
    assert pooled.spread("m", "x/kvasir-seg/test", "dice") is None  # one run per cell
    deeper = write_evaluation(tmp_path / "deeper", RUN_DICE, dataset=identity(
        "/u/x/kvasir-seg", masks="m3"))
    assert compare([ref, deeper]).columns == ["/x/kvasir-seg/test", "u/x/kvasir-seg/test"]

    for changed, what in ((identity("/x/kvasir-seg", masks="m2"), "masks"),
                          (identity("/x/kvasir-seg", names="n2"), "image lists")):
        stale = write_evaluation(tmp_path / f"stale-{what[0]}", RUN_DICE, dataset=changed)
        with pytest.raises(CompareError, match=f"different {what}") as info:
            compare([ref, stale])
        message = str(info.value)
        assert str(ref) in message and str(stale) in message and "\n" not in message
        assert "condseg evaluate MODEL --data /x/kvasir-seg --split test" in message

    copy = write_evaluation(tmp_path / "copy", RUN_DICE, dataset=identity("/z/kvasir-seg"))
    same = compare([ref, copy])
    assert same.columns == [TEST] and len(same.stats) == 1
    assert not any("different datasets" in note for note in same.notes)

    val = write_evaluation(tmp_path / "val", RUN_DICE[:4], names=[f"img{i}" for i in range(4)],
                           split="val",
                           dataset=identity("/x/kvasir-seg", names="v", masks="vm"))
    assert compare([ref, val]).columns == [TEST, "kvasir-seg/val"]

    folds = []
    for k in range(2):
        run = write_run(tmp_path / f"fold{k}", "unet")
        folds.append(run)
        write_evaluation(run / "evaluation" / "val", [0.5 + 0.1 * k] * 4,
                         names=[f"img{4 * k + i}" for i in range(4)],
                         split=DatasetDir.fold_splits(k)[1],
                         dataset=identity("/x/kvasir-seg", names=f"f{k}", masks=f"fm{k}"))
    by_fold = compare(folds, pool=True)
    assert by_fold.columns == ["kvasir-seg/folds/*/val"]
    assert by_fold.text("unet", "kvasir-seg/folds/*/val", "dice") == "55.00 ± 5.00"


# --------------------------------------------------------------------------- duplicates


def test_one_evaluation_is_never_counted_twice(tmp_path: Path) -> None:
    """Members: one run given twice, through a symlink, a run and its own evaluation folder
    (one folder reached twice); a run and its copy, a copy re-evaluated (same model digest
    elsewhere), a copy written before digests were recorded (same model path, same scores):
    refused, with and without --pool. Not duplicates: one model under another protocol, a
    model file retrained in place (same path, other digest)."""
    run = write_run(tmp_path / "run", "condseg")
    evaluation = write_evaluation(run / "evaluation" / "test", RUN_DICE,
                                  dataset=identity(), model_file=str(run / "m.safetensors"),
                                  model_digest="d1")
    other = write_evaluation(tmp_path / "unet", REF_DICE, model="unet", dataset=identity(),
                             model_digest="d0")
    (tmp_path / "link").symlink_to(run)
    copy = Path(shutil.copytree(run, tmp_path / "copy"))
    again = write_evaluation(tmp_path / "again", RUN_DICE[::-1], dataset=identity(),
                             model_file=str(copy / "m.safetensors"), model_digest="d1")
    for twice in ([run, run], [run, tmp_path / "link"], [run, evaluation]):
        for pool in (False, True):
            with pytest.raises(CompareError, match="give each run or evaluation once") as info:
                compare([other, *twice], pool=pool)
            assert f"{twice[0]} and {twice[1]} both give the evaluation" in str(info.value)
    elsewhere = write_evaluation(  # the same model on another device: the same measurement
        tmp_path / "gpu", RUN_DICE[::-1], dataset=identity(), model_digest="d1",
        model_file=str(copy / "m.safetensors"),
        execution={"device": "cuda", "path": "fast"})
    for twin in (copy, again, elsewhere):
        for pool in (False, True):
            with pytest.raises(CompareError, match=r"same model .* \(a run and its copy\?\)"):
                compare([other, run, twin], pool=pool)
    old = [write_evaluation(tmp_path / f"old{k}", RUN_DICE, model_file="/runs/a/m.safetensors")
           for k in range(2)]
    with pytest.raises(CompareError, match="same model"):
        compare(old)

    tta = write_evaluation(tmp_path / "tta", RUN_DICE, dataset=identity(), model_digest="d1",
                           model_file=str(run / "m.safetensors"),
                           inference={"tta": True, "rotations": False, "sliding_window": None,
                                      "overlap": 0.25})
    kept = compare([other, run, tta])
    assert len(kept.labels) == 3 and len(kept.stats) == 2
    retrained = write_evaluation(tmp_path / "retrained", REF_DICE, dataset=identity(),
                                 model_file=str(run / "m.safetensors"), model_digest="d2")
    assert len(compare([run, retrained]).labels) == 2


def test_identical_scores_of_different_models_are_named(tmp_path: Path) -> None:
    """Models that predict alike (or one model evaluated apart, before digests) are kept but
    named: they are not independent runs."""
    a = write_evaluation(tmp_path / "a", RUN_DICE, dataset=identity(), model_digest="d1")
    b = write_evaluation(tmp_path / "b", RUN_DICE, dataset=identity(), model_digest="d2")
    c = write_evaluation(tmp_path / "c", REF_DICE, dataset=identity(), model_digest="d3")
    result = compare([c, a, b])
    assert (f"{TEST}: {a}, {b} have identical per-image scores (one model evaluated apart, or "
            "models that predict alike)") in result.notes
    assert not any("identical per-image" in n for n in compare([c, a]).notes)


# --------------------------------------------------------------------------- protocols


def test_every_protocol_difference_is_named_with_its_rows(tmp_path: Path) -> None:
    """Members: test-time augmentation, its rotations, sliding windows (and their overlap),
    threshold, input size, precision: noted with the rows of each value (with --pool, a row
    whose runs differ appears under both); resolution: a column each. Equal protocols: no
    note."""
    base = {"tta": False, "rotations": False, "sliding_window": None, "overlap": 0.25}
    variants = {
        "tta": ({"inference": {**base, "tta": True}}, "tta (false: plain; true: variant)"),
        "rotations": ({"inference": {**base, "tta": True, "rotations": True}},
                      "tta rotations (false: plain; true: variant)"),
        "window": ({"inference": {**base, "sliding_window": 512}},
                   "sliding_window (off: plain; 512: variant)"),
        "threshold": ({"threshold": 0.6}, "threshold (0.5: plain; 0.6: variant)"),
        "size": ({"input_size": [352, 352]}, "input_size ([64, 64]: plain; [352, 352]: variant)"),
        "precision": ({"execution": {"precision": "bfloat16"}},
                      "precision (float32: plain; bfloat16: variant)"),
    }
    plain = write_evaluation(tmp_path / "plain", REF_DICE, model="plain", dataset=identity(),
                             inference=base, execution={"precision": "float32"})
    for name, (protocol, expected) in variants.items():
        recorded = {"inference": base, "execution": {"precision": "float32"}, **protocol}
        variant = write_evaluation(tmp_path / name, RUN_DICE, model="variant",
                                   dataset=identity(), **recorded)
        notes = compare([plain, variant]).notes
        assert f"{TEST}: the evaluations differ in {expected}" in notes, notes
    same = write_evaluation(tmp_path / "same", RUN_DICE, model="variant", dataset=identity(),
                            inference=base, execution={"precision": "float32"})
    assert not any("differ in" in n for n in compare([plain, same]).notes)

    tta = tmp_path / "tta"
    pooled = compare([plain, same, tta], labels=["a", "b", "b"], pool=True)
    assert f"{TEST}: the evaluations differ in tta (false: a, b; true: b)" in pooled.notes
    original = write_evaluation(tmp_path / "original", RUN_DICE, dataset=identity(),
                                resolution="original")
    assert compare([plain, original]).columns == [f"{TEST} (network)", f"{TEST} (original)"]


# --------------------------------------------------------------------------- old evaluations


def test_evaluations_without_a_recorded_identity_are_compared_by_name_and_named(
    tmp_path: Path,
) -> None:
    """Written before this change: no crash, compared and paired as before, and a note names
    them (only where they share a column with another evaluation)."""
    old = write_evaluation(tmp_path / "old", REF_DICE, model="unet")
    new = write_evaluation(tmp_path / "new", RUN_DICE, dataset=identity())
    result = compare([old, new])
    assert result.columns == [TEST] and len(result.stats) == 1
    assert (f"{TEST}: {old} record no dataset identity (evaluated before condseg recorded it), "
            "so they are paired and pooled by folder and image names alone; evaluate again to "
            "check the data") in result.notes
    assert not any("no dataset identity" in n for n in compare([new]).notes)
    assert np.isfinite(result.stats[0].test.p_value)


def test_the_cli_refuses_in_one_line(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", "condseg")
    write_evaluation(run / "evaluation" / "test", RUN_DICE, dataset=identity())
    result = CliRunner().invoke(app, ["compare", str(run), str(run), "--pool"],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "once" in lines[0]
