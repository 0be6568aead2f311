"""Issue 16's table, row by row: every bad input gets one clear line (exit status 2), names the file, field
or option, and leaves nothing behind. CLI rows run the real entry point in a subprocess."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, compose_train
from flmk.data.check import check_sources, format_report
from flmk.data.images import BadFilesError, ImageError, verify_image
from flmk.data.records import DATA_HINTS, AnnotationError, EmptySplitError
from flmk.data.sources.pts import read_pts, write_pts
from flmk.data.sources.w300 import W300Source
from flmk.data.sources.wflw import parse_line
from flmk.errors import OptionError
from flmk.options import check_row_model
from flmk.train import CONF_DIR, build_datamodule, train

FAST = ["model=baseline", "model.pretrained=false", "model.crop_size=64", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1"]


def flmk(tmp_path: Path, *args: str, module: str = "flmk.train", env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m <module> args`` in an empty folder ``tmp_path/cwd``; its outputs/ must stay empty."""
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "FLMK_DATA": str(tmp_path / "data")}
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=300)


def assert_one_clear_line(done: subprocess.CompletedProcess, *names: str) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "Error executing job" not in done.stderr, done.stderr
    message = done.stderr[done.stderr.index("flmk: "):]
    for name in names:
        assert name in message, message
    return message


def left_behind(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "cwd").rglob("*") if p.is_file())


def face_points(n: int = 68, cx: float = 40, cy: float = 40, r: float = 15) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def copy_synthetic(synthetic_root: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "copy"
    shutil.copytree(synthetic_root, root)
    return root, [f"data.sources.synthetic.root={root}", "data.sources.synthetic.n=24", "data.sources.synthetic.seed=3",
                  "data.sources.synthetic.size=96", f"data.cache_dir={tmp_path / 'cache'}"]


# -- row: data.root missing, root without subfolders ----------------------------------------------------------
def test_missing_root_one_message_exit_2_no_run_folder(tmp_path):
    done = flmk(tmp_path, "data=300w", f"data.root={tmp_path / 'nowhere'}")
    message = assert_one_clear_line(done, str(tmp_path / "nowhere"), "helen/trainset", "ibug.doc.ic.ac.uk")
    assert "data=300w data.root=" in message
    assert left_behind(tmp_path) == [] and not (tmp_path / "cwd" / "outputs").exists()


def test_root_without_subfolders_names_the_missing_folder(tmp_path):
    (tmp_path / "300W").mkdir()
    cfg = compose_train(["data=300w", f"data.root={tmp_path / '300W'}", "model.crop_size=64"], tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "300W" / "afw"))):
        train(cfg)
    assert not (tmp_path / "run").exists()


# -- row: subfolders with no files ------------------------------------------------------------------------------
def test_empty_split_names_its_folders_and_the_doctor_fails(tmp_path):
    root = tmp_path / "300W"
    for sub in ("afw", "helen/trainset", "lfpw/trainset"):
        (root / sub).mkdir(parents=True)
    cfg = compose_train(["data=300w", f"data.root={root}", "model.crop_size=64"], tmp_path / "run")
    with pytest.raises(EmptySplitError, match=rf"split 'w300/train' is empty.*{re.escape(str(root))}.*afw, helen/trainset"):
        train(cfg)
    report = check_sources({"w300": W300Source(root, splits={"train": ["afw", "helen/trainset", "lfpw/trainset"]})},
                           tmp_path / "doctor")
    assert report["sources"]["w300"]["splits"]["train"]["empty"] == 1 and report["problems"] == 1
    assert "0 faces; 1 empty" in format_report(report)


# -- row: .pts with a non-number, a missing }, 60 of 68 points; WFLW line too short ----------------------------
@pytest.mark.parametrize("edit, line, words", [
    (lambda ls: ls.__setitem__(9, "12.0 abc"), 10, "expected two numbers 'x y', got '12.0 abc'"),
    (lambda ls: ls.pop(), 72, "expected closing '}' after 68 points"),
    (lambda ls: ls.__delitem__(slice(63, 71)), 64, "expected 68 points, file ends after 60"),
    (lambda ls: ls.__setitem__(9, "nan 12"), 10, "non-finite coordinate"),
])
def test_malformed_pts_names_file_and_line_once(tmp_path, edit, line, words):
    path = tmp_path / "face.pts"
    write_pts(path, face_points())
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines))
    with pytest.raises(AnnotationError) as err:
        read_pts(path, 68)
    assert str(err.value) == f"{path}, line {line}: {words}" or str(err.value).startswith(f"{path}, line {line}: {words}")
    assert str(err.value).count(str(path)) == 1


def test_short_wflw_line_names_file_and_line(tmp_path):
    with pytest.raises(AnnotationError, match=r"list\.txt, line 7: expected 207 fields, got 12") as err:
        parse_line(tmp_path / "list.txt", 7, " ".join(["1"] * 11 + ["a.jpg"]), with_attributes=True)
    assert str(err.value).count("list.txt") == 1


def test_malformed_pts_in_training_one_line_no_repeated_prefix(tmp_path):
    ibug = tmp_path / "data" / "300W" / "ibug"
    for sub in ("afw", "helen/trainset", "lfpw/trainset"):
        (tmp_path / "data" / "300W" / sub).mkdir(parents=True)
    ibug.mkdir(parents=True)
    write_pts(tmp_path / "data" / "300W" / "afw" / "a.pts", face_points())
    lines = (tmp_path / "data" / "300W" / "afw" / "a.pts").read_text().splitlines()
    lines[9] = "12.0 abc"
    (tmp_path / "data" / "300W" / "afw" / "a.pts").write_text("\n".join(lines))
    done = flmk(tmp_path, "data=300w")
    message = assert_one_clear_line(done, "a.pts, line 10", "expected two numbers")
    assert message.count("a.pts") == 1
    assert left_behind(tmp_path) == []


# -- row: .pts with 67 points (header agrees) -------------------------------------------------------------------
def test_wrong_point_count_is_an_annotation_error_and_a_doctor_problem(tmp_path):
    folder = tmp_path / "300W" / "ibug"
    folder.mkdir(parents=True)
    write_pts(folder / "short.pts", face_points(67))
    import cv2

    cv2.imwrite(str(folder / "short.jpg"), np.full((80, 80, 3), 100, np.uint8))
    with pytest.raises(AnnotationError, match=r"short\.pts, line 2: n_points: 67, the layout expects 68"):
        W300Source(tmp_path / "300W", splits={"challenging": ["ibug"]}).read("challenging")
    report = check_sources({"w300": W300Source(tmp_path / "300W", splits={"challenging": ["ibug"]})}, tmp_path / "doc")
    assert report["sources"]["w300"]["splits"]["challenging"]["malformed"] == 1 and report["problems"] == 1


# -- rows: truncated JPEG, JPEG with its second half random, a text file named .jpg ---------------------------------
def broken_jpegs(folder: Path) -> dict[str, Path]:
    victims = sorted(folder.glob("*.jpg"))[:3]
    data = victims[0].read_bytes()
    victims[0].write_bytes(data[: len(data) // 2])
    data = victims[1].read_bytes()
    rng = np.random.default_rng(0)
    victims[1].write_bytes(data[: len(data) // 2] + rng.integers(0, 256, len(data) - len(data) // 2, dtype=np.uint8).tobytes())
    victims[2].write_text("this is not a photograph")
    return {"truncated": victims[0], "random half": victims[1], "text": victims[2]}


def test_corrupt_images_are_errors_naming_the_file(synthetic_root, tmp_path):
    root, _ = copy_synthetic(synthetic_root, tmp_path)
    for kind, path in broken_jpegs(root / "train").items():
        with pytest.raises(ImageError, match=re.escape(str(path)) + ": truncated or not a readable image"):
            verify_image(path)
    good = sorted((root / "val").glob("*.jpg"))[0]
    assert verify_image(good) == (96, 96)


def test_training_checks_images_before_the_first_epoch(synthetic_root, tmp_path):
    root, overrides = copy_synthetic(synthetic_root, tmp_path)
    bad = broken_jpegs(root / "train")
    cfg = compose_train(FAST + overrides, tmp_path / "run")
    with pytest.raises(BadFilesError) as err:
        train(cfg)
    message = str(err.value)
    assert message.startswith("3 of ") and all(str(p) in message for p in bad.values()) and "data.skip_bad=true" in message
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before any epoch


def test_skip_bad_drops_them_and_a_second_check_reads_no_pixel(synthetic_root, tmp_path, monkeypatch, caplog):
    from flmk.data import images

    root, overrides = copy_synthetic(synthetic_root, tmp_path)
    bad = broken_jpegs(root / "train")
    cfg = compose_train(FAST + overrides + ["data.skip_bad=true", "test=false"], tmp_path / "run")
    dm = build_datamodule(cfg)
    with caplog.at_level("WARNING"):
        dm.setup("fit")
    assert "dropped 3 of" in caplog.text
    used = {r.image for rs in dm.splits.values() for r in rs}
    assert not used & set(bad.values())
    decoded = []
    monkeypatch.setattr(images, "verify_image", lambda p: decoded.append(p) or (96, 96))
    again = build_datamodule(cfg)
    again.setup("fit")
    assert {Path(p) for p in decoded} == set(bad.values())  # only the bad ones: the good ones are remembered


def test_far_outside_points_stop_training_naming_file(synthetic_root, tmp_path):
    root, overrides = copy_synthetic(synthetic_root, tmp_path)
    victim = sorted((root / "train").glob("*.pts"))[0]
    write_pts(victim, read_pts(victim) + 500)
    with pytest.raises(BadFilesError, match=re.escape(str(victim)) + r": point\(s\) .* far outside the 96x96 image"):
        train(compose_train(FAST + overrides, tmp_path / "run"))


def test_doctor_counts_corrupt_images(synthetic_root, tmp_path):
    from flmk.data.sources.synthetic import SyntheticSource

    root, _ = copy_synthetic(synthetic_root, tmp_path)
    bad = broken_jpegs(root / "train")
    source = SyntheticSource(root, n=24, seed=3, size=96)
    report = check_sources({"synthetic": source}, tmp_path / "doc", faces=4)
    train_split = report["sources"]["synthetic"]["splits"]["train"]
    assert train_split["unreadable_images"] == 3 and report["problems"] == 3
    assert set(train_split["unreadable_images_examples"]) == {str(p) for p in bad.values()}
    assert (tmp_path / "doc" / "faces_synthetic.png").exists()


# -- row: trainer.max_epochs=abc ----------------------------------------------------------------------------------
def test_invalid_option_value_exit_2_no_run_folder(tmp_path):
    done = flmk(tmp_path, "trainer.max_epochs=abc")
    assert_one_clear_line(done, "trainer.max_epochs='abc'", "valid integer")
    assert left_behind(tmp_path) == [] and not any((tmp_path / "cwd").iterdir())


# -- row: a module option of the wrong type (model.precise_bn=abc) ---------------------------------------------------
@pytest.mark.parametrize("option", ["model.precise_bn=abc", "model.ema_decay=abc", "model.finite_check_every=1.5"])
def test_module_option_of_the_wrong_type_exit_2_no_run_folder(tmp_path, option):
    done = flmk(tmp_path, "model=baseline", "model.pretrained=false", option)
    assert_one_clear_line(done, f"{option.split('=')[0]}=", "expected")
    assert not any((tmp_path / "cwd").iterdir())


def test_hydra_full_error_keeps_the_trace(tmp_path):
    done = flmk(tmp_path, "trainer.max_epochs=abc", env={"HYDRA_FULL_ERROR": "1"})
    assert done.returncode == 1 and "Traceback" in done.stderr and "OptionError" in done.stderr


def test_unknown_key_names_the_closest_keys(tmp_path):
    done = flmk(tmp_path, "data.cahce=true")
    assert_one_clear_line(done, "unknown option data.cahce", "closest: data.cache", "+data.cahce=")
    done = flmk(tmp_path, "data=cofw68")
    assert_one_clear_line(done, "no config data=cofw68", "300w_cofw68")
    assert not any((tmp_path / "cwd").iterdir())


# -- row: the SVD of the nuclear-norm term fails to converge --------------------------------------------------------
class SvdFailsAfter:
    """A loss whose SVD fails after ``steps`` calls, as torch's does on a non-finite matrix."""

    def __init__(self, steps: int):
        from flmk.models.baseline import PointLoss

        self.inner, self.steps, self.calls = PointLoss(), steps, 0

    def __call__(self, outputs, batch, net):
        self.calls += 1
        if self.calls > self.steps:
            torch.linalg.svdvals(torch.full((3, 3), float("nan")))
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")  # CPU SVD may return NaN
        return self.inner(outputs, batch, net)


def test_svd_failure_stops_with_the_nan_message_and_keeps_checkpoints(tmp_path, synthetic_root):
    loss = ["~model.loss", "+model.loss._target_=test_errors.SvdFailsAfter", "+model.loss.steps=3"]
    cfg = compose_train(FAST + loss + ["test=false", "trainer.max_epochs=3"], tmp_path / "run", synthetic_root)
    with pytest.raises(SystemExit, match=r"loss is not finite at epoch 1, step 3 \(linalg.svd: The algorithm failed to converge"):
        train(cfg)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


# -- row: learning rate 1e4 trains to the end without a warning -------------------------------------------------------
def test_validation_nme_far_above_the_mean_shape_warns_of_divergence():
    from flmk.models.baseline import BRNet, PointLoss
    from flmk.models.module import DIVERGENCE_EPOCHS, LandmarkModule

    module = LandmarkModule(BRNet(), PointLoss(), optimizer=torch.optim.Adam, layout="68", crop_size=64)
    module._watch_divergence(0.5, 0.2)
    module._watch_divergence(0.1, 0.2)  # a good epoch resets the count
    assert module.divergence is None
    with pytest.warns(UserWarning, match="training diverges: validation nme_io .* stayed above 2x"):
        for _ in range(DIVERGENCE_EPOCHS):
            module._watch_divergence(1e20, 0.2)
    assert "lower the learning rate" in module.divergence


@pytest.mark.slow
def test_huge_learning_rate_run_says_it_diverged(tmp_path, synthetic_root, capsys):
    cfg = compose_train(FAST + ["model.optimizer.lr=1e4", "trainer.max_epochs=4", "trainer.gradient_clip_val=null"],
                        tmp_path / "run", synthetic_root)
    try:
        train(cfg)
    except SystemExit as e:  # the loss may turn non-finite first: that is caught too
        assert "loss is" in str(e)
        return
    assert "WARNING: the run diverged" in capsys.readouterr().out
    import json

    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["meta"]["divergence"]


# -- row: documented keys (data.cache=true, 300w_csv's data.csv_dir) need + / ++ ----------------------------------------
def documented_data_keys() -> list[tuple[str, str]]:
    """(data config, key) for every `data.<key>` a data config's comments or the README's dataset table name."""
    pairs = []
    mention = re.compile(r"(?<![\w.+])data\.(\w+(?:\.\w+)*)")  # `+data.x` is documented as an addition
    for path in sorted((REPO / "conf" / "data").glob("*.yaml")):
        comments = " ".join(line.split("#", 1)[1] for line in path.read_text().splitlines() if "#" in line)
        pairs += [(path.stem, key) for key in mention.findall(comments)]
    for line in (REPO / "README.md").read_text().splitlines():
        first = re.match(r"\| `([\w]+)`(?:, `([\w]+)`)? \|", line)
        if first and (REPO / "conf" / "data" / f"{first.group(1)}.yaml").exists():
            pairs += [(first.group(1), key) for key in mention.findall(line)]
    pairs += [(c, "cache") for c in ("300w", "synthetic")] + [("300w_csv", "csv_dir")]
    return sorted(set(pairs))


@pytest.mark.parametrize("config, key", documented_data_keys())
def test_every_documented_data_key_works_without_plus(config, key, tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        value = OmegaConf.select(compose("train", overrides=[f"data={config}"]).data, key, default="<absent>")
        assert value != "<absent>", f"conf/data/{config}.yaml or the README documents data.{key}, which is not declared"
        if not OmegaConf.is_config(value):  # a plain value: setting it without + must compose
            compose("train", overrides=[f"data={config}", f"data.{key}=/somewhere"])


def test_csv_dir_reaches_the_csv_source(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["data=300w_csv", f"data.csv_dir={tmp_path}", "data.cache=true"])
    assert instantiate(cfg.data.sources.w300).csv_dir == tmp_path and cfg.data.cache is True


# -- row: COFW-68 not found suggests data=cofw68 ---------------------------------------------------------------------
def test_every_not_found_hint_names_a_config_and_key_that_exist():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        for name, (config, key) in DATA_HINTS.items():
            assert key in compose("train", overrides=[f"data={config}"]).data, (name, config, key)
    source_names = {OmegaConf.load(p).get("name") for p in (REPO / "conf" / "source").glob("*.yaml")}
    assert source_names - {"synthetic", "synthetic_video", None} <= set(DATA_HINTS)
    named = set()  # every `data=<config>` a message in the code suggests
    for path in (REPO / "src" / "flmk").rglob("*.py"):
        named |= set(re.findall(r"data=(\w+)", path.read_text()))
    missing = {c for c in named if not (REPO / "conf" / "data" / f"{c}.yaml").exists()}
    assert not missing, missing


def test_cofw68_hint_names_the_cross_dataset_config(tmp_path):
    from flmk.data.sources.cofw import Cofw68Source

    with pytest.raises(FileNotFoundError, match=r"data=300w_cofw68 data\.cofw68_root="):
        Cofw68Source(tmp_path / "nowhere", cofw_root=tmp_path).read("test")


# -- row: experiment=hm1d/table1_detector model=hm1d -------------------------------------------------------------------
def test_rows_that_choose_their_model_refuse_model_override(tmp_path):
    with pytest.raises(OptionError, match=r"model=hm1d: ablation=hm1d/l2d_64 chooses its own model \(model=fan2d"):
        check_row_model(CONF_DIR, "hm1d/l2d_64", ["experiment=hm1d/table1_detector", "model=hm1d"])
    check_row_model(CONF_DIR, "hm1d/l2d_64", ["experiment=hm1d/table1_detector", "model.net.num_stacks=2"])
    check_row_model(CONF_DIR, "odn/brnet", ["model=odn"])  # a row that keeps the chosen model
    done = flmk(tmp_path, "experiment=hm1d/table1_detector", "model=hm1d", "ablation=hm1d/l2d_64", "hydra.mode=RUN")
    assert_one_clear_line(done, "model=hm1d", "chooses its own model")
    assert not any((tmp_path / "cwd").iterdir())


# -- row: bash experiments/synthetic_tables.sh without a GPU -------------------------------------------------------------
def test_experiment_scripts_say_no_gpu_and_fail_when_rows_fail(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    (fake / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}  # a machine whose nvidia-smi finds no GPU
    script = REPO / "experiments" / "synthetic_tables.sh"
    done = subprocess.run(["bash", str(script), str(tmp_path / "out"), "1", "odn"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "no GPU found" in done.stderr and not (tmp_path / "out").exists()
    for name in ("gpu_bench.sh", "ddp_sweep.sh"):
        done = subprocess.run(["bash", str(REPO / "experiments" / name), str(tmp_path / name)], env=env,
                              capture_output=True, text=True)
        assert done.returncode == 2 and "no GPU found" in done.stderr
    done = subprocess.run(["bash", str(script), str(tmp_path / "out"), "1", "odn"], capture_output=True, text=True,
                          env={**env, "TRAINER": "cpu", "PY": "false"})  # every row fails
    assert done.returncode == 1 and "failed" in done.stderr and (tmp_path / "out" / "FAILED_ROWS").exists()
