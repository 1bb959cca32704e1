"""Extending the training step without copying it: a subclass adds named terms, logged and (``*_loss``) optimised."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
import torch

from mae_lightning.cli import main
from tests.test_readme_examples import BRIEF

REPO = Path(__file__).resolve().parents[1]

# The example of the README's "Change the method": saved as my_loss.py, trained with COMMAND.
CODE = '''\
import torch

from mae_lightning import MaskedAutoencoder
from mae_lightning.ops import gather_tokens, inverse_permutation


class VisibleLossAutoencoder(MaskedAutoencoder):
    """Also scores the visible patches: logged as visible_mse, added to the loss times visible_weight.

    Args:
        visible_weight: weight of the visible patches' loss in the loss that is optimised (0: a metric only).
    """

    def __init__(self, *args, visible_weight: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.visible_weight = visible_weight

    def extra_terms(self, imgs, latent, ids_shuffle):
        # The official decoder output of every patch (one more decoder pass); the visible ones come first.
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.visible_weight > 0):
            pred = self.forward_decoder(latent, inverse_permutation(ids_shuffle))
            visible = ids_shuffle[:, : latent.shape[1] - 1]
            mse = self.patch_loss(gather_tokens(pred, visible), gather_tokens(self.target(imgs), visible)).mean()
        if self.visible_weight == 0:
            return {"visible_mse": mse}
        return {"visible_mse": mse, "visible_loss": self.visible_weight * mse}
'''
COMMAND = """\
python -m mae_lightning fit --config configs/quickstart.yaml \\
  --model.init_args.model my_loss.VisibleLossAutoencoder \\
  --model.init_args.model.init_args.visible_weight 0.1
"""


def run_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "my_loss.py").write_text(CODE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["mae_lightning"])
    words = shlex.split(COMMAND.replace("\\\n", " "))
    assert words[:3] == ["python", "-m", "mae_lightning"], COMMAND
    args = [str(REPO / word) if word.startswith("configs/") else word for word in words[3:]]
    return main([*args, *BRIEF])


def test_an_added_term_is_trained_logged_and_validated_from_yaml(tmp_path, monkeypatch):
    cli = run_example(tmp_path, monkeypatch)
    assert cli.trainer.state.finished and cli.trainer.global_step == 2
    model = cli.model.model
    assert type(model).__name__ == "VisibleLossAutoencoder" and model.visible_weight == 0.1
    metrics = cli.trainer.callback_metrics
    for key in ("train/visible_mse", "train/visible_loss", "val/visible_mse", "val/visible_loss", "val/loss"):
        assert torch.isfinite(metrics[key]), key

    # The loss optimised is the reconstruction loss plus the weighted term; the metric is the official
    # forward's loss on the visible patches.
    torch.manual_seed(0)
    model.eval()
    imgs = torch.randn(4, model.in_chans, *model.img_size)
    noise = torch.rand(4, model.num_patches)
    step = model.forward_train(imgs, 0.75, noise)
    model.visible_weight = 0.0  # the same step with the term as a metric only: the reconstruction loss alone
    reconstruction = model.forward_train(imgs, 0.75, noise)
    assert set(reconstruction.terms) == {"visible_mse"}
    torch.testing.assert_close(step.loss, reconstruction.loss + 0.1 * step.terms["visible_mse"])
    _, pred, mask = model(imgs, 0.75, noise)
    per_patch = ((pred - model.target(imgs)) ** 2).mean(dim=-1)
    torch.testing.assert_close(step.terms["visible_mse"], (per_patch * (1 - mask)).sum() / (1 - mask).sum())


def test_gradients_of_a_weighted_term_reach_the_decoder_and_a_metric_adds_none():
    namespace: dict = {}
    exec(compile(CODE, "my_loss.py", "exec"), namespace)
    sizes = dict(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16)
    imgs, noise = torch.randn(2, 1, 16, 16), torch.rand(2, 16)
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = namespace["VisibleLossAutoencoder"](
            **sizes, decoder_depth=1, decoder_num_heads=2, visible_weight=weight
        )
        step = model.forward_train(imgs, 0.75, noise)
        assert set(step.terms) == ({"visible_mse"} if weight == 0 else {"visible_mse", "visible_loss"})
        assert step.terms["visible_mse"].requires_grad == (weight > 0)
        step.loss.backward()
        if weight == 0:
            reference = model.decoder_pred.weight.grad.clone()
    # The visible patches' loss changes the decoder's gradient only when it is weighted into the loss.
    assert not torch.allclose(model.decoder_pred.weight.grad, reference)
