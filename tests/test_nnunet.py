"""condseg's trainer variants on nnU-Net v2, the whole round trip on the CPU (issue 25).

On condseg's synthetic data in nnU-Net's raw format: ``condseg nnunet plan`` (nnU-Net's own
planning and preprocessing, handed over), then for each variant nnU-Net's trainer found by
name through ``nnUNet_extTrainer`` trains 1 epoch × 2 iterations and writes its checkpoint,
and nnU-Net's predictor finds the variant by the name in the checkpoint, rebuilds its network
and loads the weights strictly. nnU-Net's processes are bounded (``nnUNet_n_proc_DA=0`` while
training: no augmentation workers; ``nnUNet_def_n_proc=1``; subprocesses with a timeout that
die with the test).
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("nnunetv2", reason="nnU-Net v2 is not installed (pip install condseg[nnunet])")

import torch

from condseg.data.synthetic import synthesize
from condseg.nnunet import trainers_folder

SRC = Path(__file__).resolve().parents[1] / "src"
VOLUMES, LAYERS = 990, 991
VARIANTS_3D = ("nnUNetTrainerUAFR", "nnUNetTrainerPDCR", "nnUNetTrainerPDCRUAFR")
pytestmark = pytest.mark.slow


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def condseg(*args: str, env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run([sys.executable, "-m", "condseg", *args], env=env, timeout=timeout,
                          capture_output=True, text=True, preexec_fn=_die_with_parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def nnunet(tmp_path_factory: pytest.TempPathFactory):
    """nnU-Net's three folders with the synthetic volumes (3d_fullres) and layers (2d)
    planned and preprocessed; the environment set for this module's tests."""
    root = tmp_path_factory.mktemp("nnunet")
    env = {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "pre"),
           "nnUNet_results": str(root / "res"), "nnUNet_def_n_proc": "1",
           "nnUNet_n_proc_DA": "1", "OMP_NUM_THREADS": "1"}
    synthesize(root / "raw" / f"Dataset{VOLUMES}_SynthVolumes", n_train=5, n_val=1, size=32,
               task="volumes", format="nnunet")
    synthesize(root / "raw" / f"Dataset{LAYERS}_SynthLayers", n_train=5, n_val=1, size=64,
               task="layers", format="nnunet")
    child = {**os.environ, **env,
             "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    condseg("nnunet", "plan", "-d", str(VOLUMES), "-c", "3d_fullres", "-np", "1", env=child)
    child.pop("nnUNet_extTrainer", None)  # condseg nnunet sets it
    condseg("nnunet", "plan", "-d", str(LAYERS), "-c", "2d", "-np", "1", env=child)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {**env, "nnUNet_n_proc_DA": "0"}.items():
            patch.setenv(key, value)
        patch.setenv("nnUNet_extTrainer", str(trainers_folder()))
        yield root


def train_and_predict(root: Path, dataset: int, configuration: str, name: str):
    """(trainer after 1 epoch × 2 iterations, predictor rebuilt from its checkpoint, the
    held-out case's prediction and label)."""
    from nnunetv2.imageio.reader_writer_registry import (
        determine_reader_writer_from_dataset_json,
    )
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(str(dataset), configuration, 0, name,
                                    device=torch.device("cpu"))
    trainer.num_epochs, trainer.num_iterations_per_epoch = 1, 2
    trainer.num_val_iterations_per_epoch = 1
    trainer.run_training()
    folder = Path(trainer.output_folder_base)
    assert (folder / "fold_0" / "checkpoint_final.pth").is_file()

    predictor = nnUNetPredictor(tile_step_size=1.0, use_mirroring=False,
                                device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=(0,))
    raw = root / "raw" / trainer.plans_manager.dataset_name
    reader = determine_reader_writer_from_dataset_json(trainer.dataset_json)()
    ending = trainer.dataset_json["file_ending"]
    image, properties = reader.read_images([str(raw / "imagesTs" / f"synth_0005_0000{ending}")])
    label, _ = reader.read_seg(str(raw / "labelsTs" / f"synth_0005{ending}"))
    prediction = predictor.predict_single_npy_array(image, properties)
    return trainer, predictor, prediction, label[0]


def dice(prediction: np.ndarray, label: np.ndarray, classes: int) -> list[float]:
    out = []
    for k in range(1, classes):
        p, t = prediction == k, label == k
        out.append(2 * (p & t).sum() / max(p.sum() + t.sum(), 1))
    return out


def check_round_trip(trainer, predictor, prediction, label, name: str, classes: int) -> None:
    assert type(trainer).__name__ == name and predictor.trainer_name == name
    assert type(trainer).__module__ == "condseg.nnunet.variants"
    losses = trainer.logger.local_logger.my_fantastic_logging["train_losses"]
    assert losses and all(math.isfinite(v) for v in losses)
    # The predictor rebuilt the same modules and loaded every weight of the checkpoint strictly.
    weights = torch.load(Path(trainer.output_folder) / "checkpoint_final.pth",
                         map_location="cpu", weights_only=False)["network_weights"]
    assert set(predictor.network.state_dict()) == set(weights)
    for key, value in predictor.network.state_dict().items():
        assert torch.equal(value, weights[key].cpu()), key
    assert prediction.shape == label.shape
    assert set(np.unique(prediction)) <= set(range(classes))
    scores = [round(float(d), 3) for d in dice(prediction, label, classes)]
    print(f"{name}: Dice per foreground class on the synthetic held-out case {scores}")


def nonzero_grads(module: torch.nn.Module) -> bool:
    grads = [p.grad for p in module.parameters()]
    return bool(grads) and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", VARIANTS_3D)
def test_3d_variant_round_trip(nnunet: Path, name: str) -> None:
    trainer, predictor, prediction, label = train_and_predict(nnunet, VOLUMES, "3d_fullres", name)
    check_round_trip(trainer, predictor, prediction, label, name, classes=3)
    network = trainer.network
    keys = set(predictor.network.state_dict())
    if "UAFR" in name:
        assert nonzero_grads(network.uafr)
        assert len(network.uafr) == len(network.decoder.stages)
        assert any(k.startswith("uafr.") for k in keys)
    if "PDCR" in name:
        assert nonzero_grads(network.pdcr)  # the cross-layer projections
        pdcr = trainer.loss.last
        assert pdcr is not None and math.isfinite(float(pdcr)) and float(pdcr) > 0
        assert any(k.startswith("pdcr.") for k in keys)
    assert trainer.enable_deep_supervision


def test_condseg_nnunet_predict_finds_the_variant_by_name(nnunet: Path) -> None:
    """nnU-Net's own nnUNetv2_predict, through ``condseg nnunet predict`` (which sets
    nnUNet_extTrainer), on the model the PDCR + UAFR round trip trained."""
    name = "nnUNetTrainerPDCRUAFR"
    assert list((nnunet / "res").glob(f"*/{name}__nnUNetPlans__3d_fullres/fold_0/*.pth"))
    env = {**os.environ, "nnUNet_n_proc_DA": "1",
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    env.pop("nnUNet_extTrainer")
    raw = nnunet / "raw" / f"Dataset{VOLUMES}_SynthVolumes"
    out = nnunet / "predicted"
    condseg("nnunet", "predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d",
            str(VOLUMES), "-c", "3d_fullres", "-tr", name, "-f", "0", "-device", "cpu",
            "-npp", "1", "-nps", "1", "--disable_tta", env=env)
    predicted = tifffile.imread(out / "synth_0005.tif")
    assert predicted.shape == (32, 32, 32) and set(np.unique(predicted)) <= {0, 1, 2}


def test_m2snet_2d_round_trip(nnunet: Path) -> None:
    name = "nnUNetTrainerM2SNet"
    trainer, predictor, prediction, label = train_and_predict(nnunet, LAYERS, "2d", name)
    check_round_trip(trainer, predictor, prediction, label, name, classes=4)
    assert nonzero_grads(trainer.network.to_rgb)  # one grey channel mapped to M2SNet's three


def test_every_variant_is_found_by_name(nnunet: Path) -> None:
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from condseg.nnunet import variants

    for name, cls in variants.VARIANTS.items():
        assert recursive_find_trainer_class_by_name(name) is cls
    short = recursive_find_trainer_class_by_name("nnUNetTrainerPDCRUAFR_5epochs")
    assert issubclass(short, variants.nnUNetTrainerPDCRUAFR)
