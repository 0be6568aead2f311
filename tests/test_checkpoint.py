"""Self-describing checkpoints: the record, evaluation of a copied-out file, refused overrides, broken files."""

from __future__ import annotations

import shutil

import pytest
import torch

from conftest import compose_train
from flmk import __version__
from flmk.checkpoint import CheckpointError, build, check_compatible, load_module, load_weights, read
from flmk.evaluate import evaluate
from flmk.train import train

FAST = ["model=baseline", "model.pretrained=false", "model.crop_size=64", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_root):
    run = tmp_path_factory.mktemp("ckpt_run")
    metrics = train(compose_train(FAST, run, synthetic_root))
    return run / "checkpoints" / "best.ckpt", metrics


def test_checkpoint_carries_its_config(trained):
    ckpt = read(trained[0])
    desc = ckpt["flmk"]
    assert desc["version"] == __version__
    assert desc["model"]["name"] == "baseline" and desc["crop_size"] == 64 and desc["model"]["crop_size"] == 64
    assert desc["layout"] == "68" and desc["num_points"] == 68 and desc["crop_scale"] == 1.25
    assert desc["data"]["name"] == "synthetic" and len(desc["normalise"]["mean"]) == 3
    assert desc["model"]["net"]["num_points"] == 68  # resolved, not "${data.num_points}"


def test_copied_checkpoint_evaluates_to_the_same_numbers(tmp_path, trained, synthetic_root):
    path, metrics = trained
    lone = tmp_path / "elsewhere" / "model.ckpt"  # no .hydra folder anywhere above it
    lone.parent.mkdir()
    shutil.copy(path, lone)
    ecfg = compose_train(["data=synthetic", f"ckpt_path={lone}", "save_maps=0"], tmp_path / "eval", synthetic_root,
                         config_name="evaluate")
    again = evaluate(ecfg)
    assert again["full"]["nme_io"] == pytest.approx(metrics["full"]["nme_io"], rel=1e-6)


@pytest.mark.parametrize("override, key", [("+model.crop_size=32", "model.crop_size: checkpoint 64, this run 32"),
                                           ("model=odn", "this run builds model=odn, 68 points, crop 224"),
                                           ("model=baseline", "model.crop_size: checkpoint 64, this run 224")])
def test_conflicting_override_is_refused_naming_both_values(tmp_path, trained, synthetic_root, override, key):
    path, _ = trained
    ecfg = compose_train(["data=synthetic", f"ckpt_path={path}", override], tmp_path / "eval", synthetic_root,
                         config_name="evaluate")
    with pytest.raises(CheckpointError) as e:
        evaluate(ecfg)
    assert str(path) in str(e.value) and "trained as model=baseline, 68 points, crop 64" in str(e.value)
    assert key in str(e.value) and "force=true" in str(e.value)
    assert not (tmp_path / "eval" / "metrics.json").exists()
    check_compatible(read(path)["flmk"], ecfg, path, force=True)  # force lets it through


def test_matching_model_override_is_accepted(tmp_path, trained, synthetic_root):
    path, _ = trained
    ecfg = compose_train(["data=synthetic", f"ckpt_path={path}", "model=baseline", "model.crop_size=64"],
                         tmp_path / "eval", synthetic_root, config_name="evaluate")
    check_compatible(read(path)["flmk"], ecfg, path)


def test_module_rebuilds_from_the_file_alone(tmp_path, trained):
    lone = tmp_path / "m.ckpt"
    shutil.copy(trained[0], lone)
    module, desc = load_module(lone)
    x = torch.randn(2, 3, 64, 64)
    assert module(x)["points"].shape == (2, 68, 2) and desc["crop_size"] == 64
    assert torch.isfinite(module.mean_shape).all()  # the mean shape travels in the state dict


def test_broken_files_are_named(tmp_path, trained):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(trained[0].read_bytes()[:5000])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    for path, words in ((garbage, "not a readable PyTorch checkpoint"), (truncated, "not a readable PyTorch checkpoint"),
                        (foreign, "not an flmk checkpoint"), (tmp_path / "missing.ckpt", "no such file")):
        with pytest.raises(CheckpointError, match=words) as e:
            load_module(path)
        assert str(path) in str(e.value)


def test_weights_of_another_model_are_named(tmp_path, trained):
    ckpt = read(trained[0])
    desc = dict(ckpt["flmk"])
    odn_desc = {**desc, "model": {**desc["model"], "name": "odn"}}
    from omegaconf import OmegaConf

    from conftest import CONF_DIR  # noqa: F401  (conf/ resolves to this worktree)
    odn_model = OmegaConf.load(f"{CONF_DIR}/model/odn.yaml")
    odn_model.net.num_points = 68
    odn_model.net.pretrained = False  # no ImageNet download here
    odn_model.crop_size = 64
    module = build(odn_desc, odn_model)
    with pytest.raises(CheckpointError, match="trained as model=baseline, 68 points, crop 64") as e:
        load_weights(module, ckpt, trained[0], desc)
    assert str(trained[0]) in str(e.value) and "do not fit" in str(e.value)
