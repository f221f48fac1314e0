"""A base method added outside the library (here, in this test) trains with the add-ons that need no objective
of their own, with no change to any add-on folder: one registration."""
import pytest
import torch

from sharpshift import plugins
from sharpshift.config import METHOD_DEFAULTS
from sharpshift.errors import UserError
from sharpshift.losses import nt_xent
from sharpshift.methods import METHODS, register_method
from sharpshift.methods.base import SSLMethod
from sharpshift.models.heads import mlp
from sharpshift.steps import StepOutput
from sharpshift.train import pretrain
from tests.conftest import tiny_config


class Tiny(SSLMethod):
    """NT-Xent through a one-layer projector: the smallest contrastive method."""

    name = "tiny"

    def build_heads(self) -> None:
        self.projector = self.head(lambda: mlp(self.feat_dim, 8, self.mcfg.proj_output_dim, layers=1))

    def compute_loss(self, ctx) -> StepOutput:
        feats, z = self.encode(ctx.views[:2], self.backbone, self.projector)
        loss = nt_xent(z[0], z[1], self.mcfg.temperature)
        return StepOutput(loss, {"tiny": loss.detach()}, feats, z)


@pytest.fixture
def tiny_method():
    register_method(Tiny, {"proj_output_dim": 8, "temperature": 0.5})
    yield
    METHODS.pop("tiny")
    METHOD_DEFAULTS.pop("tiny")


@pytest.mark.parametrize("addons", [("sam.enabled=true",), ("saf.enabled=true", "saf.epochs_ago=1", "saf.start_epoch=0"),
                                    ("fourier.enabled=true",), ("sam.enabled=true", "fourier.enabled=true")],
                         ids=["sam", "saf", "fourier", "sam+fourier"])
def test_a_method_registered_outside_trains_with_sam_saf_and_fourier(tiny_method, tmp_path, addons):
    cfg = tiny_config("tiny", "trainer.precision=32", "trainer.log_every_n_steps=1", f"out_dir={tmp_path}",
                      "data.subset=64", "trainer.max_epochs=2", "trainer.max_steps=3", *addons)
    assert cfg.method.temperature == 0.5 and cfg.method.pred_hidden_dim is None  # its own defaults, by load_config
    run = pretrain(cfg)
    metrics = (run / "logs" / "metrics.csv").read_text()
    assert "train/tiny" in metrics
    if "saf.enabled=true" in addons:
        assert "train/saf" in metrics  # the trajectory term ran (epoch 1 = steps 2-3)
    from sharpshift.export import load_backbone

    assert any(torch.count_nonzero(p) for p in load_backbone(run).parameters())


def test_objective_add_ons_refuse_a_method_they_have_no_objective_for(tiny_method):
    for addon in ("amcl", "rsa"):
        with pytest.raises(UserError, match=f"{addon} supports .*, not 'tiny'"):
            plugins.check_compatible(tiny_config("tiny", f"{addon}.enabled=true"))


def test_the_rules_are_declared_once():
    assert plugins.supported_methods("rsa") == ["byol", "simclr", "moco"]
    assert sorted(plugins.supported_methods("amcl")) == ["barlow", "moco", "simclr", "simsiam"]
    with pytest.raises(UserError, match="rsa and amcl cannot be combined"):
        plugins.check_compatible(tiny_config("simclr", "rsa.enabled=true", "amcl.enabled=true"))
