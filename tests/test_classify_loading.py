"""When the classifiers read ``pretrained``: once, as fitting starts; a restored checkpoint never needs the file.

Real files on disk and the real Trainer on CPU, with a 2-block ViT on 16 px digits.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn

from mae_lightning import FineTune, LinearProbe, VisionTransformer
from mae_lightning.cli import main
from tests.helpers import CONFIGS, QUIET, digits, tiny_mae, tiny_mae_checkpoint, tiny_vit


def make_trainer(root: Path, **kwargs) -> Trainer:
    quiet = dict(enable_progress_bar=False, enable_model_summary=False, logger=False, default_root_dir=root)
    return Trainer(accelerator="cpu", **{**quiet, **kwargs})


def validate(root: Path, module, **kwargs) -> dict[str, float]:
    """val/loss and val/top1 of a fresh Trainer's ``validate``."""
    (metrics,) = make_trainer(root).validate(module, digits(batch_size=64), verbose=False, **kwargs)
    return {key: metrics[key] for key in ("val/loss", "val/top1")}


def published_classifier(kind: str) -> VisionTransformer:
    """A classifier as an official run leaves it: learned position table, trained norms, a head that matters."""
    if kind == "finetune":
        model = tiny_vit(global_pool=True)
    else:
        # main_linprobe.py: cls token, head = Sequential(BatchNorm1d(affine=False), Linear).
        model = tiny_vit(global_pool=False)
        model.head = nn.Sequential(nn.BatchNorm1d(32, affine=False, eps=1e-6), model.head)
        model.head[0].running_mean.normal_()
        model.head[0].running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.startswith(("pos_embed", "head.weight", "head.1.", "head.bias", "fc_norm", "norm")):
                tensor.normal_()
    return model.eval()


def test_fine_tuned_checkpoint_validates_after_the_pretraining_file_is_gone(tmp_path):
    pretrained = tiny_mae_checkpoint(tmp_path / "mae.ckpt")
    module = FineTune(tiny_vit(), pretrained=str(pretrained), warmup_epochs=0)
    trainer = make_trainer(tmp_path, max_steps=1, limit_val_batches=0, enable_checkpointing=False)
    trainer.fit(module, digits(batch_size=64))
    finetuned = tmp_path / "finetuned.ckpt"
    trainer.save_checkpoint(finetuned)
    before = validate(tmp_path, module)

    pretrained.unlink()
    # As `validate --ckpt_path` does: a new module from the same arguments, the weights from the checkpoint.
    after = validate(tmp_path, FineTune(tiny_vit(), pretrained=str(pretrained)), ckpt_path=finetuned)
    reloaded = FineTune.load_from_checkpoint(finetuned, model=tiny_vit())
    assert reloaded.hparams.pretrained == str(pretrained)  # still named, never read
    assert before == after == validate(tmp_path, reloaded)


@pytest.mark.parametrize("kind", ["finetune", "linprobe"])
def test_published_classifier_is_evaluated_with_its_own_head(kind, tmp_path):
    source = published_classifier(kind)
    path = tmp_path / f"mae_{kind}d_vit_tiny.pth"
    torch.save({"model": source.state_dict()}, path)
    if kind == "finetune":
        module = FineTune(tiny_vit(global_pool=True), pretrained=str(path))
    else:
        module = LinearProbe(tiny_vit(global_pool=False), pretrained=str(path))

    metrics = validate(tmp_path, module)

    data = digits(batch_size=64)
    data.setup("validate")
    batches = list(data.val_dataloader())
    imgs, targets = torch.cat([batch[0] for batch in batches]), torch.cat([batch[1] for batch in batches])
    with torch.no_grad():
        expected = source(imgs)
        torch.testing.assert_close(module.eval()(imgs), expected, rtol=0, atol=0)
    correct = (expected.argmax(dim=1) == targets).sum().item()
    assert metrics["val/top1"] == pytest.approx(correct / len(targets), abs=1e-7)
    if kind == "linprobe":  # loading the file did not thaw the encoder
        trainable = {n for n, p in module.named_parameters() if p.requires_grad}
        assert trainable == {"model.head.1.weight", "model.head.1.bias"}


def test_validating_a_pretraining_file_fails_with_one_line(tmp_path):
    mae = tiny_mae(depth=2)
    path = tmp_path / "mae_visualize_vit_tiny.pth"
    torch.save({"model": mae.state_dict()}, path)
    with pytest.raises(ValueError, match="has no head") as info:
        make_trainer(tmp_path).validate(
            FineTune(tiny_vit(), pretrained=str(path)), digits(batch_size=64), verbose=False
        )
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "--ckpt_path" in message


def test_missing_pretrained_file_fails_before_the_first_step(tmp_path):
    module = FineTune(tiny_vit(), pretrained=str(tmp_path / "nowhere.ckpt"))  # building it reads nothing
    trainer = make_trainer(tmp_path, max_steps=1, enable_checkpointing=False)
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        trainer.fit(module, digits(batch_size=64))
    assert trainer.global_step == 0


# --------------------------------------------------------------------------- the quickstart's second step


def _quickstart_checkpoint() -> Path:
    """runs/quickstart/checkpoints/last.ckpt of a 2-step quickstart run (its model size as shipped)."""
    limits = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    main(["fit", "--config", str(CONFIGS / "quickstart.yaml"), *QUIET, *limits, "--trainer.logger", "false"])
    path = Path("runs/quickstart/checkpoints/last.ckpt")
    assert path.is_file()
    return path


@pytest.mark.parametrize("evaluation", ["linprobe", "finetune"])
def test_quickstart_checkpoint_is_probed_and_fine_tuned_by_its_path_alone(evaluation: str, run_in_tmp: Path, capsys):
    """The evaluation configs state no encoder size: it comes from the checkpoint, offline."""
    checkpoint = _quickstart_checkpoint()
    config = str(CONFIGS / evaluation / "quickstart.yaml")
    cli = main(["fit", "--config", config, *QUIET, "--trainer.fast_dev_run", "true"])
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    vit = cli.model.model
    pretrained = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert (vit.patch_embed.proj.weight.shape, len(vit.blocks)) == (
        pretrained["model.patch_embed.proj.weight"].shape,
        4,
    )
    # A stated size that disagrees with the checkpoint stops with one line naming the tensors.
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                config,
                *QUIET,
                "--trainer.fast_dev_run",
                "true",
                "--model.init_args.model.init_args.embed_dim",
                "64",
                "--model.init_args.model.init_args.num_heads",
                "4",
            ]
        )
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("mae_lightning: error: pretrained checkpoint") and "cls_token" in line, line


def test_classifier_without_size_or_checkpoint_says_what_is_missing(run_in_tmp: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "linprobe" / "quickstart.yaml"), *QUIET,
              "--model.init_args.pretrained", "null", "--trainer.fast_dev_run", "true"])  # fmt: skip
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "patch_size, embed_dim, depth, num_heads are not stated" in line


def test_a_head_that_does_not_fit_the_data_stops_when_fitting_starts(run_in_tmp: Path, capsys, caplog):
    """A 3-way head on the 10 digit classes would train (loss ln 3, labels past the head fail late): one line."""
    _quickstart_checkpoint()
    config = str(CONFIGS / "finetune" / "quickstart.yaml")
    with caplog.at_level(logging.INFO):
        main(["fit", "--config", config, *QUIET, "--trainer.fast_dev_run", "true"])
    # What `pretrained` loaded is said in one line.
    loaded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pretrained checkpoint")]
    assert len(loaded) == 1 and "loaded" in loaded[0] and "missing in the file" in loaded[0], loaded
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, *QUIET, "--trainer.fast_dev_run", "true",
              "--model.init_args.model.init_args.num_classes", "3"])  # fmt: skip
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "num_classes=3" in line and "the data has 10 classes" in line, line
