"""Evaluate a checkpoint on every test split of a data config.

    python -m flmk.evaluate ckpt_path=outputs/.../checkpoints/best.ckpt [data=<d>]

The model (and, unless given, the data) config is read from the checkpoint's
run folder (``<run>/.hydra/config.yaml``). Writes metrics.json, per-image
errors, CED plots and the network's maps to this evaluation's folder.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from flmk.artefacts import print_results, write_results
from flmk.errors import hydra_cli
from flmk.train import CONF_DIR, build_datamodule, build_loggers, build_module, run_meta
from flmk.visualise import save_maps


def run_config(ckpt_path: Path) -> DictConfig:
    for parent in ckpt_path.resolve().parents:
        cfg_file = parent / ".hydra" / "config.yaml"
        if cfg_file.exists():
            return OmegaConf.load(cfg_file)
    raise FileNotFoundError(
        f"{ckpt_path}: no .hydra/config.yaml in any parent folder, so the model config is unknown; "
        "pass model=<name> (and its options) explicitly"
    )


def evaluate(cfg: DictConfig) -> dict:
    ckpt_path = Path(cfg.ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    out_dir = Path(cfg.paths.output_dir)
    if cfg.get("model") is None or cfg.get("data") is None:
        trained = run_config(ckpt_path)
        with open_dict(cfg):
            cfg.model = cfg.model if cfg.get("model") is not None else trained.model
            cfg.data = cfg.data if cfg.get("data") is not None else trained.data
            cfg.row = trained.get("row")
    pl.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("test")
    module = build_module(cfg, dm)
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=build_loggers(cfg) or False, callbacks=[],
                                      default_root_dir=str(out_dir))
    trainer.test(module, datamodule=dm, verbose=False)
    results = module.test_results
    if trainer.is_global_zero:
        meta = run_meta(cfg, out_dir) | {"checkpoint": str(ckpt_path.resolve())}
        write_results(out_dir, results, meta)
        for name in dm.test_names:
            save_maps(module, dm, f"test/{name}", out_dir / "maps", n=cfg.get("save_maps", 4))
        print_results(results, title=f"{cfg.model.name} on {cfg.data.name} ({ckpt_path.name})", out_dir=out_dir)
    return {k: v["metrics"] for k, v in results.items()}


@hydra_cli(CONF_DIR, "evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
