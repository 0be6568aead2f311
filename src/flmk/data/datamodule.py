"""LandmarkDataModule: one training set, one validation set, any number of named test sets.

Splits are written ``<source>/<split>`` where ``<source>`` is a key of
``sources`` (data configs pull reader configs from ``conf/source/``), so a
dataset combination (300W-train / COFW-68-test, 300W + 300VW-train) is a
config, not code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.trainer.states import TrainerFn
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from flmk.data.cache import CropCache, warp_crop
from flmk.data.images import BadFilesError, bad_records, read_rgb
from flmk.data.records import EmptySplitError, FaceRecord
from flmk.data.sampling import EpochSampler, SampleKey, WorkerInit, sample_rng
from flmk.data.transforms import (AugmentConfig, FaceTransform, apply_affine, crop_affine, to_chw_uint8,
                                  to_tensor_image)
from flmk.errors import OptionError
from flmk.layouts import Layout, get_layout

log = logging.getLogger(__name__)


class FaceDataset(Dataset):
    """Records -> crops.

    A training key ``(index, seed, epoch)`` (from :class:`EpochSampler`) fixes the
    sample's augmentation stream, so a fixed seed repeats a run exactly, in any
    worker and after any restart, and epochs differ; a bare index (evaluation)
    draws from a stream of its own.
    """

    def __init__(self, records: list[FaceRecord], layout: Layout, transform: FaceTransform,
                 cached: tuple[np.ndarray, np.ndarray] | None = None, image_dtype: str = "float32",
                 canvas: tuple[int, float] | None = None):
        """``canvas`` = (side, crop_scale): augment on the device (flmk.data.device_augment). Each sample then
        carries a canvas (the cached crop, or the photograph warped once to a ``side`` square spanning
        ``crop_scale`` x the face box) and the draws that turn it into the training crop."""
        self.records, self.layout, self.transform, self.cached, self.canvas = records, layout, transform, cached, canvas
        if image_dtype not in ("float32", "uint8"):
            raise ValueError(f"data.image_dtype={image_dtype!r}; expected 'float32' or 'uint8'")
        # uint8: crops leave the workers as bytes (4x less through shared memory, pinning and the bus) and
        # LandmarkModule normalises them on the device (flmk.data.transforms.normalise_image)
        self.to_image = to_chw_uint8 if image_dtype == "uint8" else to_tensor_image
        for r in records:
            if len(r.points) != layout.num_points:
                raise ValueError(f"{r.source}: {len(r.points)} points, layout {layout.name} expects {layout.num_points}")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | SampleKey) -> dict:
        return self.sample(key[0] if isinstance(key, tuple) else int(key), sample_rng(key))

    def sample(self, i: int, rng: np.random.Generator, box: np.ndarray | None = None,
               params: dict | None = None) -> dict:
        """Record ``i`` as a crop; ``box`` and ``params`` let a clip share one box and one geometry."""
        r = self.records[i]
        visible = r.visible if r.visible is not None else np.ones(len(r.points), dtype=bool)
        box = r.box_or_points_box() if box is None else box
        if self.cached is not None:  # a pre-cropped face and its affine (original -> cache crop)
            image, source = np.asarray(self.cached[0][i]), self.cached[1][i]
        elif self.canvas is not None:
            side, scale = self.canvas
            source = crop_affine(r.box_or_points_box(), side, scale)
            image = warp_crop(read_rgb(r.image), source, side)
        else:
            image, source = read_rgb(r.image), None
        s = self.transform.crop_size
        on_device = self.canvas is not None
        out = self.transform(image, r.points, box, visible, rng, params=params, source=source, on_device=on_device)
        pixels = ({"canvas": torch.from_numpy(to_chw_uint8(image)),
                   **{k: torch.from_numpy(np.asarray(out[k], dtype=np.float32))
                      for k in ("warp", "color", "blur_kernel", "noise_std", "holes")}}
                  if on_device else {"image": torch.from_numpy(self.to_image(out["crop"]))})
        return {
            **pixels,
            "points": torch.from_numpy(((out["points"] + 0.5) / s).astype(np.float32)),
            "visible": torch.from_numpy(out["visible"].astype(np.float32)),
            "has_visibility": torch.tensor(r.visible is not None),
            "affine": torch.from_numpy(out["affine"].astype(np.float32)),
            "target_orig": torch.from_numpy(r.points.astype(np.float32)),
            "box": torch.from_numpy(np.asarray(box, dtype=np.float32)),
            "index": torch.tensor(i, dtype=torch.long),
        }


class LandmarkDataModule(pl.LightningDataModule):
    def __init__(
        self,
        sources: Mapping[str, DictConfig | dict],
        layout: str,
        train: Sequence[str],
        test: Mapping[str, str | Sequence[str]],
        val: Sequence[str] | None = None,
        val_fraction: float = 0.05,
        crop_size: int = 224,
        augment: Mapping | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 0,
        name: str = "",
        num_points: int | None = None,
        stands_for: Mapping[str, str] | None = None,
        comparable: bool = True,
        cache: bool = False,
        cache_dir: str | None = None,
        cache_size: int = 256,
        cache_margin: float = 1.0,
        image_dtype: str = "float32",
        augment_on: str = "auto",
        skip_bad: bool = False,
        **_: object,  # config-only keys (data.root, data.<x>_root) that sources interpolate
    ):
        super().__init__()
        self.source_cfgs = {k: v for k, v in sources.items()}
        self.layout = get_layout(layout)
        if num_points is not None and num_points != self.layout.num_points:
            raise ValueError(f"data.num_points={num_points} but layout {self.layout.name} has {self.layout.num_points}")
        self.train_specs = list(train)
        self.val_specs = list(val) if val else None
        self.val_fraction = val_fraction
        self.test_specs, self.test_eval_layouts = {}, {}
        for name, spec in test.items():  # "src/split", [specs], or {splits: [...], eval_layout: "7"}
            if isinstance(spec, Mapping):
                self.test_specs[name] = list(spec["splits"])
                self.test_eval_layouts[name] = spec.get("eval_layout")
            else:
                self.test_specs[name] = [spec] if isinstance(spec, str) else list(spec)
        self.crop_size = crop_size
        aug = OmegaConf.to_container(augment, resolve=True) if isinstance(augment, DictConfig) else dict(augment or {})
        train_aug = {k: v for k, v in aug.items() if k != "crop_scale"}
        self.eval_aug = AugmentConfig(crop_scale=aug.get("crop_scale", 1.25))
        self.train_aug = AugmentConfig(crop_scale=aug.get("crop_scale", 1.25), **{
            k: tuple(v) if isinstance(v, list) else v for k, v in train_aug.items() if k in AugmentConfig.__dataclass_fields__})
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.persistent_workers = persistent_workers and num_workers > 0
        self.seed = seed
        self.name = name
        self.stands_for = dict(stands_for or {})
        self.comparable = comparable
        self.cache = CropCache(cache_dir, cache_size, cache_margin) if cache else None
        self.cache_dir, self.skip_bad = cache_dir, skip_bad
        if cache and not cache_dir:
            raise ValueError("data.cache=true needs data.cache_dir (where the crop store is written)")
        self.image_dtype = image_dtype
        if augment_on not in ("auto", "workers", "device"):
            raise OptionError(f"data.augment_on={augment_on!r}; expected 'workers' (albumentations in the loader "
                              "workers), 'device' (the batch, on the model's device) or 'auto' (device on a GPU)")
        self.augment_on, self.cache_margin = augment_on, cache_margin
        self._sources: dict | None = None
        self.splits: dict[str, list[FaceRecord]] = {}
        self._resume_at = (0, 0)  # (epoch, samples to skip) of the first training iteration; see load_state_dict

    # -- reading ---------------------------------------------------------------------------------
    @property
    def sources(self) -> dict:
        if self._sources is None:
            self._sources = {k: instantiate(v) if isinstance(v, (DictConfig, dict)) else v
                             for k, v in self.source_cfgs.items()}
        return self._sources

    def read(self, spec: str) -> list[FaceRecord]:
        src_name, _, split = spec.partition("/")
        if src_name not in self.sources:
            raise OptionError(f"split {spec!r}: no source {src_name!r} in data.sources ({', '.join(self.sources)})")
        source = self.sources[src_name]
        records = source.read(split)
        if not records:
            folders = getattr(source, "split_dirs", {}).get(split)
            where = f"{getattr(source, 'root', '?')}" + (f" (looked in {', '.join(folders)})" if folders else "")
            raise EmptySplitError(f"split {spec!r} is empty: the {source.name} reader found no faces under {where}")
        return records

    def prepare_data(self) -> None:
        for src in self.sources.values():
            if hasattr(src, "prepare"):
                src.prepare()

    def setup(self, stage: str | None = None) -> None:
        if "train" in self.splits:
            return
        train = [r for spec in self.train_specs for r in self.read(spec)]
        if self.val_specs:
            val = [r for spec in self.val_specs for r in self.read(spec)]
        else:  # model selection never sees a test split
            train, val = self.hold_out(train)
        self.splits = {"train": train, "val": val}
        for name, specs in self.test_specs.items():
            self.splits[f"test/{name}"] = [r for spec in specs for r in self.read(spec)]
        self.drop_bad_files()

    def drop_bad_files(self) -> None:
        """Decode every image the run uses before the first epoch: stop on bad ones, or drop them (data.skip_bad)."""
        records = [r for rs in self.splits.values() for r in rs]
        bad = bad_records(records, self.cache_dir)
        if not bad:
            return
        if not self.skip_bad:
            raise BadFilesError(list(dict.fromkeys(bad.values())), len(records))
        log.warning("data.skip_bad=true: dropped %d of %d faces with bad files", len(bad), len(records))
        self.splits = {k: [r for r in rs if id(r) not in bad] for k, rs in self.splits.items()}
        empty = [k for k, rs in self.splits.items() if not rs]
        if empty:
            raise BadFilesError([f"split {k}: every face was dropped" for k in empty], len(records))

    def hold_out(self, train: list[FaceRecord]) -> tuple[list[FaceRecord], list[FaceRecord]]:
        """A fixed ``val_fraction`` of the training records becomes the validation set."""
        order = np.random.default_rng(self.seed).permutation(len(train))
        n_val = max(1, int(round(self.val_fraction * len(train))))
        return [train[i] for i in sorted(order[n_val:])], [train[i] for i in order[:n_val]]

    # -- loaders ---------------------------------------------------------------------------------
    def transform_and_cache(self, split: str) -> tuple[FaceTransform, tuple[np.ndarray, np.ndarray] | None]:
        train = split == "train"
        transform = FaceTransform(self.layout, self.crop_size, self.train_aug if train else self.eval_aug, train)
        return transform, self.cache.get(self.splits[split]) if self.cache is not None else None

    def augments_on_device(self) -> bool:
        """data.augment_on: 'auto' augments on the device when training runs on a GPU."""
        if self.augment_on != "auto":
            return self.augment_on == "device"
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def dataset(self, split: str) -> FaceDataset:
        transform, cached = self.transform_and_cache(split)
        canvas = None
        if split == "train" and self.augments_on_device():
            # without the crop cache, one warp per sample spanning the cache's margin at the crop's pixel density
            scale = 1.0 + self.cache_margin
            canvas = (int(np.ceil(self.crop_size * scale / self.train_aug.crop_scale)), scale)
        return FaceDataset(self.splits[split], self.layout, transform, cached, image_dtype=self.image_dtype,
                           canvas=canvas)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        """Training: the order of epoch e is a function of (seed, e) (flmk.data.sampling); evaluation in order.

        Every loader has its own generator, so starting one never draws from the global torch RNG.
        """
        dataset = self.dataset(split)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            sampler=EpochSampler(len(dataset), self.seed, *self._resume_at) if shuffle else None,
            drop_last=shuffle and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            generator=torch.Generator().manual_seed(self.seed),
            worker_init_fn=WorkerInit() if self.num_workers > 0 else None,
        )

    # -- resuming -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Where training stands, saved in every checkpoint: the epoch the next batch belongs to and how many
        of its batches are done (0 at an epoch end). [assume] Under DDP the resumed epoch restarts from its
        first batch (Lightning's own behaviour); the skip needs one process."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return {}
        epoch = trainer.fit_loop.epoch_progress.current.ready - 1  # the epoch running (or just finished)
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= trainer.num_training_batches:
            epoch, done = epoch + 1, 0
        return {"train_epoch": epoch, "train_batches_done": done if trainer.world_size == 1 else 0}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            self._resume_at = (state_dict["train_epoch"], state_dict["train_batches_done"] * self.batch_size)

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", shuffle=True)
        self._resume_at = (0, 0)  # later epochs start afresh (the sampler learns them from set_epoch)
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    @property
    def test_names(self) -> list[str]:
        return list(self.test_specs)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(f"test/{name}", shuffle=False) for name in self.test_names]

    def mean_shape(self) -> np.ndarray:
        """Mean training shape in crop-normalised coordinates, under the evaluation crop (N, 2)."""
        pts = []
        for r in self.splits["train"]:
            m = crop_affine(r.box_or_points_box(), self.crop_size, self.eval_aug.crop_scale)
            pts.append((apply_affine(m, r.points) + 0.5) / self.crop_size)
        return np.mean(pts, axis=0).astype(np.float32)
