"""model.precise_bn: before each validation the evaluated net's BatchNorm statistics are the plain average over
the last k training batches (issue 15 item 4: stale, noisy running statistics made CCDN's validation swing)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from conftest import compose_train
from flmk.errors import OptionError
from flmk.models.module import LandmarkModule
from flmk.train import train
from test_train import FAST


class BNFirst(nn.Module):
    """BatchNorm on the image's channels first: its statistics are the images' channel moments."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 136)

    def forward(self, image):
        return {"points": self.fc(self.bn(image).mean((2, 3))).view(-1, 68, 2)}


def trained(precise_bn: int, **kwargs) -> tuple[LandmarkModule, list[dict]]:
    """A module after 5 training batches of different means and spreads (forward in train mode + the batch hook)."""
    torch.manual_seed(0)
    module = LandmarkModule(BNFirst(), nn.Identity(), torch.optim.SGD, layout="68", crop_size=8, precise_bn=precise_bn,
                            **kwargs)
    module.trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    batches = [{"image": torch.randn(4, 3, 5, 5) * (i + 1) + i, "points": torch.zeros(4, 68, 2)} for i in range(5)]
    module.net.train()
    for i, b in enumerate(batches):
        module.net(b["image"])  # the training step's forward moves the running statistics (momentum 0.1)
        module.on_train_batch_end(None, b, i)
    return module, batches


def moments(batches: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean over batches of each batch's channel mean and unbiased channel variance (what BN tracks)."""
    x = torch.stack([b["image"].transpose(0, 1).flatten(1) for b in batches])  # (batches, C, N*H*W)
    return x.mean(-1).mean(0), x.var(-1, correction=1).mean(0)


def test_statistics_are_the_average_over_the_last_batches():
    module, batches = trained(precise_bn=3)
    running = module.net.bn.running_mean.clone()
    module.on_validation_epoch_start()
    mean, var = moments(batches[-3:])
    torch.testing.assert_close(module.net.bn.running_mean, mean)
    torch.testing.assert_close(module.net.bn.running_var, var)
    assert not torch.allclose(running, mean, atol=0.1)  # the momentum-0.1 average is something else
    assert module.net.bn.momentum == 0.1 and module.net.training  # restored for the next epoch
    assert int(module.net.bn.num_batches_tracked) == 3 and not module.recent_batches


def test_the_net_stays_in_eval_mode_for_the_validation():
    module, batches = trained(precise_bn=2)
    module.eval()  # Lightning's validation loop does this before the hook
    module.on_validation_epoch_start()
    assert not module.net.training and not module.net.bn.training
    torch.testing.assert_close(module.net.bn.running_mean, moments(batches[-2:])[0])


def test_with_an_ema_the_ema_net_is_recomputed():
    module, batches = trained(precise_bn=2, ema_decay=0.5)
    raw = module.net.bn.running_mean.clone()
    module.on_validation_epoch_start()
    torch.testing.assert_close(module.ema.module.bn.running_mean, moments(batches[-2:])[0])
    torch.testing.assert_close(module.net.bn.running_mean, raw)  # the trained net's own statistics are left alone


def test_off_by_default_and_a_bad_value_names_the_option():
    module, _ = trained(precise_bn=0)
    running = module.net.bn.running_mean.clone()
    module.on_validation_epoch_start()
    torch.testing.assert_close(module.net.bn.running_mean, running)
    assert not module.recent_batches
    with pytest.raises(OptionError, match="model.precise_bn=-1"):  # one line from flmk.train, exit 2
        LandmarkModule(BNFirst(), nn.Identity(), torch.optim.SGD, layout="68", crop_size=8, precise_bn=-1)


def test_training_run_keeps_the_weights_and_saves_the_recomputed_statistics(tmp_path, synthetic_root):
    """The same seed with and without: identical weights (BN statistics take no part in training), different
    statistics in the checkpoint, averaged over exactly k batches."""
    states = {}
    for k in (0, 2):
        train(compose_train(FAST + ["test=false", f"model.precise_bn={k}"], tmp_path / f"k{k}", synthetic_root))
        states[k] = torch.load(tmp_path / f"k{k}" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    stats = [k for k in states[0] if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert stats and all(torch.equal(states[0][k], states[2][k]) for k in states[0] if k not in stats)
    assert not all(torch.equal(states[0][k], states[2][k]) for k in stats if k.endswith("running_mean"))
    assert {int(states[2][k]) for k in stats if k.endswith("num_batches_tracked")} == {2}
    assert {int(states[0][k]) for k in stats if k.endswith("num_batches_tracked")} == {3}
