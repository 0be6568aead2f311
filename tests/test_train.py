"""End to end on CPU: train + evaluate write every artefact; resume; NaN stop; determinism; learning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_train
from flmk.evaluate import evaluate
from flmk.train import train

FAST = ["model=baseline", "model.crop_size=64", "model.pretrained=false", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2"]


def test_train_and_evaluate_write_every_artefact(tmp_path, synthetic_root):
    cfg = compose_train(FAST, tmp_path / "run", synthetic_root)
    metrics = train(cfg)
    run = tmp_path / "run"
    assert set(metrics) == {"clean", "occluded", "full"}
    payload = json.loads((run / "metrics.json").read_text())
    for split in ("clean", "occluded", "full"):
        m = payload["splits"][split]
        for key in ("nme_io", "nme_ip", "nme_box", "fr@0.08", "fr@0.10", "auc@0.08", "auc@0.10", "count"):
            assert key in m and np.isfinite(m[key]), (split, key)
        assert "nme_io" in m["mean_shape"]
        errors = np.load(run / f"errors_{split}.npy")
        assert len(errors) == m["count"] and np.isclose(errors.mean(), m["nme_io"])
        assert (run / f"ced_{split}.png").stat().st_size > 1000
    # full = clean + occluded, each image counted once
    assert payload["splits"]["full"]["count"] == payload["splits"]["clean"]["count"] + payload["splits"]["occluded"]["count"]
    assert payload["splits"]["occluded"]["nme_io_occluded"] > 0
    assert payload["meta"]["synthetic"] is True
    assert (run / "checkpoints" / "best.ckpt").exists() and (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "csv" / "metrics.csv").read_text().count("train/loss") == 1

    # evaluate the checkpoint: same numbers as the test after training; the model config comes from
    # the run folder's .hydra/config.yaml, which Hydra writes for a command-line run
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    ecfg = compose_train(["data=synthetic", f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", "save_maps=0"], tmp_path / "eval",
                         synthetic_root, config_name="evaluate")
    again = evaluate(ecfg)
    assert again["full"]["nme_io"] == pytest.approx(metrics["full"]["nme_io"], rel=1e-6)
    assert (tmp_path / "eval" / "metrics.json").exists()


def test_fixed_seed_repeats_exactly(tmp_path, synthetic_root):
    results = [train(compose_train(FAST + ["test=false"], tmp_path / f"r{i}", synthetic_root)) for i in range(2)]
    a, b = (torch.load(tmp_path / f"r{i}" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
            for i in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert results[0] == results[1]


def test_resume_continues_from_checkpoint(tmp_path, synthetic_root):
    first = compose_train(FAST + ["test=false"], tmp_path / "a", synthetic_root)
    train(first)
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 0
    resumed = compose_train(FAST + ["test=false", "trainer.max_epochs=2", f"ckpt_path={last}"], tmp_path / "b",
                            synthetic_root)
    train(resumed)
    state = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["epoch"] == 1 and state["global_step"] == 6  # 3 steps from the checkpoint + 3 new ones


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, synthetic_root):
    # epoch 0 (3 steps) is fine and checkpointed; the loss turns NaN at the first step of epoch 1
    nan_loss = ["~model.loss", "+model.loss._target_=conftest.NaNAfter", "+model.loss.steps=3"]
    cfg = compose_train(FAST + nan_loss + ["test=false", "trainer.max_epochs=3", "model.finite_check_every=1"],
                        tmp_path / "run", synthetic_root)
    with pytest.raises(SystemExit, match="loss is nan at epoch 1, step 3"):
        train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=False)
    assert state["epoch"] == 0 and state["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert "loss is nan" in (tmp_path / "run" / "FAILED.txt").read_text()


def test_nan_read_back_every_n_steps_still_stops_before_the_next_checkpoint(tmp_path, synthetic_root):
    # the flag is read back every 50 steps: the NaN of step 3 is found when epoch 1's checkpoint is about to be written
    nan_loss = ["~model.loss", "+model.loss._target_=conftest.NaNAfter", "+model.loss.steps=3"]
    cfg = compose_train(FAST + nan_loss + ["test=false", "trainer.max_epochs=3", "model.finite_check_every=50"],
                        tmp_path / "run", synthetic_root)
    with pytest.raises(SystemExit, match=r"loss is nan at epoch 1, step 6 .*first within the last 50 steps"):
        train(cfg)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["epoch"] == 0 and state["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_missing_dataset_root_names_folder_and_layout(tmp_path):
    cfg = compose_train(["data=300w", f"data.root={tmp_path / 'nowhere'}", "model.crop_size=64"], tmp_path / "run")
    with pytest.raises(FileNotFoundError) as err:
        train(cfg)
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "helen/trainset" in msg and "ibug.doc.ic.ac.uk" in msg


def test_unreadable_image_names_the_file(tmp_path, synthetic_root):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(synthetic_root, root)
    victim = sorted((root / "val").glob("*.jpg"))[0]  # validation is not shuffled: read first
    victim.write_bytes(b"not a jpeg")
    cfg = compose_train(FAST + [f"data.sources.synthetic.root={root}", "data.sources.synthetic.n=24", "data.sources.synthetic.seed=3", "data.sources.synthetic.size=96"], tmp_path / "run")
    with pytest.raises(Exception, match=victim.name):
        train(cfg)


@pytest.mark.slow
def test_short_training_lowers_validation_nme(tmp_path, synthetic_root):
    cfg = compose_train(["model=baseline", "model.crop_size=64", "model.pretrained=false", "trainer.max_epochs=8", "model.optimizer.lr=1e-3",
                         "augment=none", "test=false"], tmp_path / "run", synthetic_root)
    train(cfg)
    import csv

    rows = [r for r in csv.DictReader(open(tmp_path / "run" / "csv" / "metrics.csv")) if r.get("val/nme")]
    nmes = [float(r["val/nme"]) for r in rows]
    assert nmes[-1] < 0.7 * nmes[0], nmes


def test_wandb_logs_offline_without_an_account(tmp_path, synthetic_root, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose_train(FAST + ["logger=wandb"], tmp_path / "run", synthetic_root)
    train(cfg)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    media = {p.parent.name for p in runs[0].glob("files/media/images/*/*.png")}
    assert media == {"ced", "predictions"}
    assert (tmp_path / "run" / "csv" / "metrics.csv").exists()  # the CSV log is kept beside W&B


def test_evaluate_saves_the_networks_maps(tmp_path, synthetic_root):
    """ODN's occlusion probability map (Fig. 6) over test crops, written by flmk.evaluate."""
    cfg = compose_train(["model=odn", "model.crop_size=64", "model.pretrained=false", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
                         "trainer.limit_val_batches=1", "test=false"], tmp_path / "run", synthetic_root)
    train(cfg)
    (tmp_path / "run" / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / "run" / ".hydra" / "config.yaml")
    ecfg = compose_train(["data=synthetic", f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}", "save_maps=2",
                          "trainer.limit_test_batches=1"], tmp_path / "eval", synthetic_root, config_name="evaluate")
    evaluate(ecfg)
    maps = sorted(p.name for p in (tmp_path / "eval" / "maps").glob("*.png"))
    assert "test_clean_0_occlusion_map.png" in maps and "test_occluded_1_feature_energy.png" in maps
