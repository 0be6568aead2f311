"""torch.compile with static shapes (flmk.compiled): model.compile for training and evaluation, the Landmarker's
compiled inference path, and the graph-friendly inverse crop affine. On CPU the wiring runs with the eager /
aot_eager backends (no code generation); CUDA graphs themselves are measured on the GPU (experiments/latency_bench.sh)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import compose_train
from flmk import Landmarker
from flmk.compiled import bucket, compile_options, pad_rows, unpad
from flmk.data.transforms import crop_affine, normalise_chw
from flmk.landmarker import TorchNet, compile_mode
from flmk.models.baseline import BRNet, PointLoss
from flmk.models.module import LandmarkModule, to_original


class Tiny(nn.Module):
    """Image mean -> BatchNorm -> 68 points (a BatchNorm: eval must not mix the samples of a padded batch)."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(3)
        self.fc = nn.Linear(3, 136)

    def forward(self, image):
        return {"points": self.fc(self.bn(image.mean((2, 3)))).view(-1, 68, 2), "scale": image.new_ones(())}


def tiny_module(**kwargs) -> LandmarkModule:
    torch.manual_seed(0)
    return LandmarkModule(Tiny(), PointLoss(), torch.optim.SGD, layout="68", crop_size=64, **kwargs)


def test_to_original_inverts_any_crop_affine_like_a_float64_solve():
    rng = np.random.default_rng(0)
    m = np.stack([crop_affine(rng.uniform(0, 50, 2).tolist() + rng.uniform(150, 300, 2).tolist(), 64, 1.25,
                              rotation_deg=r, flip=f) for r, f in ((0, False), (23, True), (-40, False))])
    m[2, :, :2] += [[0.1, -0.05], [0.02, 0.3]]  # a general (sheared) affine too
    p = rng.random((3, 68, 2))
    u = p * 64 - 0.5 - m[:, None, :, 2]
    expected = np.linalg.solve(m[:, None, :, :2], u[..., None])[..., 0]
    got = to_original(torch.tensor(p, dtype=torch.float32), torch.tensor(m, dtype=torch.float32), 64).numpy()
    assert np.abs(got - expected).max() < 1e-5 * np.abs(expected).max()
    clips = to_original(torch.tensor(p[None], dtype=torch.float32), torch.tensor(m[None], dtype=torch.float32), 64)
    np.testing.assert_allclose(clips[0].numpy(), got)  # (B, T, ...) clips broadcast the same way


def test_static_batch_sizes_and_padding():
    assert [bucket(n, 32) for n in (1, 2, 3, 5, 16, 17, 32)] == [1, 2, 4, 8, 16, 32, 32]
    assert bucket(20, 24) == 24
    for bad in (0, 33):
        with pytest.raises(ValueError, match="static batch sizes 1..32"):
            bucket(bad, 32)
    x = torch.arange(6.0).view(3, 2)
    padded = pad_rows(x, 5)
    assert torch.equal(padded[:3], x) and torch.equal(padded[3:], x[2:].expand(2, 2)) and pad_rows(x, 3) is x
    out = {"points": padded * 2, "scale": torch.tensor(3.0), "other": torch.zeros(4), "name": "n"}
    cut = unpad(out, 3, 5)
    assert torch.equal(cut["points"], x * 2) and cut["scale"] is out["scale"] and cut["other"].shape == (4,)
    assert cut["name"] == "n"
    copied = unpad(out, 5, 5, clone=True)
    assert torch.equal(copied["points"], out["points"])
    assert copied["points"].data_ptr() != out["points"].data_ptr()  # out of a CUDA graph's memory
    assert unpad(out, 5, 5) is out


def test_compile_options_name_the_setting():
    assert compile_options("reduce-overhead") == {"dynamic": False, "mode": "reduce-overhead"}
    assert compile_options("default") == {"dynamic": False, "mode": None}
    assert compile_options("reduce-overhead", "eager") == {"dynamic": False, "backend": "eager"}
    with pytest.raises(ValueError, match="model.compile_mode='fast'"):
        compile_options("fast")
    with pytest.raises(ValueError, match="model.compile_backend='tvm'"):
        compile_options("default", "tvm")
    with pytest.raises(ValueError, match="model.compile_mode"):
        tiny_module(compile=True, compile_mode="fast")
    assert compile_mode(True) == "reduce-overhead" and compile_mode(False) is None and compile_mode(None) is None
    assert compile_mode("max-autotune-no-cudagraphs") == "max-autotune-no-cudagraphs"
    with pytest.raises(ValueError, match="compile='fast'"):
        compile_mode("fast")


def test_compiled_module_evaluates_like_the_eager_one_with_one_graph():
    """EMA + test-time flip through the compiled net; a smaller last batch is padded, not compiled anew."""
    from torch._dynamo.utils import counters

    eager = tiny_module(ema_decay=0.5, test_flip=True)
    compiled = tiny_module(ema_decay=0.5, test_flip=True, compile=True, compile_backend="aot_eager")
    for module in (eager, compiled):
        module.on_train_batch_end(None, None, 0)
        with torch.no_grad():
            module.net.fc.bias.add_(1.0)  # the raw net moves on: evaluation must use the EMA copy
    keys = list(compiled.state_dict())
    torch._dynamo.reset()
    counters.clear()
    compiled.setup("fit")
    first = compiled.net._compiled_call_impl
    assert first is not None and compiled.ema.module._compiled_call_impl is not None
    compiled.setup("test")  # a second Trainer call compiles nothing more
    assert compiled.net._compiled_call_impl is first
    assert list(compiled.state_dict()) == keys == list(eager.state_dict())  # no _orig_mod. prefixes
    eager.eval(), compiled.eval()
    images = torch.rand(7, 3, 8, 8)
    with torch.no_grad():
        for batch in (images[:4], images[4:]):  # 4, then a last batch of 3
            want, got = eager.predict_eval(batch), compiled.predict_eval(batch)
            assert got["points"].shape == (len(batch), 68, 2)
            torch.testing.assert_close(got["points"], want["points"], rtol=1e-6, atol=1e-6)
    assert compiled.eval_rows == 4 and counters["stats"]["unique_graphs"] == 1
    assert not torch.allclose(compiled.ema.module(images[:4])["points"], compiled.net(images[:4])["points"])


def small_brnet() -> LandmarkModule:
    torch.manual_seed(0)
    net = BRNet(num_points=68, backbone="resnet18", pretrained=False, cut_stage=2)
    return LandmarkModule(net, PointLoss(), torch.optim.SGD, layout="68", crop_size=64).eval()


def test_compiled_inference_path_gives_the_eager_points():
    module = small_brnet()
    desc = {"crop_size": 64}
    rng = np.random.default_rng(1)
    eager = TorchNet(module, desc, "cpu", "fp32")
    compiled = TorchNet(module, desc, "cpu", "fp32", compile="reduce-overhead", max_batch=4, compile_backend="aot_eager")
    fallback = TorchNet(module, desc, "cpu", "fp32", compile="reduce-overhead", max_batch=4)  # inductor: eager on CPU
    assert compiled.compiled is not None and fallback.compiled is None and not compiled.bf16
    for n in (1, 3, 6):  # padded to 1 and 4; 6 faces run as 4 + 2
        x = rng.standard_normal((n, 3, 64, 64)).astype(np.float32)
        a = np.stack([crop_affine([10.0 + i, 20, 110, 140 + 3 * i], 64, 1.25, rotation_deg=5 * i)
                      for i in range(n)]).astype(np.float32)
        want = eager(x, a)
        assert want.shape == (n, 68, 2)
        np.testing.assert_allclose(compiled(x, a), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(fallback(x, a), want)
        # uint8 crops, as Landmarker.crop gives them: normalised inside the compiled path
        x8 = rng.integers(0, 256, (n, 3, 64, 64), dtype=np.uint8)
        np.testing.assert_allclose(compiled(x8, a), eager(normalise_chw(x8), a), rtol=1e-5, atol=1e-4)


def test_trackers_stay_eager():
    module = small_brnet()
    module.net.step, module.net.init_state = (lambda *a: None), (lambda: None)  # a tracker's interface
    with pytest.raises(ValueError, match="tracker"):
        TorchNet(module, {"crop_size": 64}, "cpu", compile="reduce-overhead")


def test_model_compile_trains_and_its_checkpoint_loads_uncompiled(tmp_path, synthetic_root):
    from flmk.checkpoint import load_module
    from flmk.data.images import read_rgb
    from flmk.train import build_module, train

    fast = ["model=baseline", "model.pretrained=false", "model.crop_size=64", "model.net.cut_stage=2",
            "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "test=false",
            "model.compile=true", "+model.compile_backend=aot_eager", "model.ema_decay=0.9", "model.test_flip=true"]
    from torch._dynamo.utils import counters

    cfg = compose_train(fast, tmp_path / "run", synthetic_root)
    torch._dynamo.reset()
    counters.clear()
    train(cfg)
    assert counters["stats"]["unique_graphs"] >= 2  # the training net and its EMA copy (evaluation) were compiled
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    state = ckpt["state_dict"]
    assert not any("_orig_mod" in k for k in state) and {"net.head.fc.weight", "ema.module.head.fc.weight"} <= set(state)
    cfg.model.compile = False
    plain = build_module(cfg, type("DM", (), {"test_names": []})())
    plain.load_state_dict(state)  # strict: the same keys as an uncompiled module
    assert plain.compile_options is None
    # inference from the file: a module rebuilt from the checkpoint stays eager; compile=true falls back on CPU
    module, _ = load_module(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert module.compile_options is not None and "_compiled_call_impl" not in vars(module.net)
    image = read_rgb(sorted((synthetic_root / "test" / "clean").glob("*.jpg"))[0])
    box = [[20.0, 20, 76, 76]]
    lm, lm_compiled = (Landmarker.from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", device="cpu",
                                                  compile=c) for c in (None, True))
    assert lm_compiled.net.compiled is None
    assert lm(image, boxes=box)[0]["points"] == lm_compiled(image, boxes=box)[0]["points"]


def test_predict_compile_option_is_checked_before_loading_anything(tmp_path):
    from hydra import compose, initialize_config_dir

    from flmk.predict import PredictError, build_landmarker
    from flmk.train import CONF_DIR

    def cfg(*overrides):
        with initialize_config_dir(CONF_DIR, version_base="1.3"):
            return compose("predict", overrides=["input=x.jpg", "boxes=b.json", *overrides])

    assert cfg().compile is False
    with pytest.raises(PredictError, match="compile='fast'"):
        build_landmarker(cfg(f"ckpt_path={tmp_path / 'never_read.ckpt'}", "compile=fast"))
    with pytest.raises(PredictError, match="backend=torch"):
        build_landmarker(cfg("backend=onnx", "onnx=model.onnx", "compile=true"))
