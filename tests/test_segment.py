"""The segmentation protocol: scores from the confusion matrix, the ignore index, the segmenter on any image size, the
encoder of a pretraining checkpoint, the recipe's layer decay and schedule, and the checks made at setup."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from torchmetrics.classification import MulticlassConfusionMatrix

from mae_lightning import MAEPretraining, Segmentation, Segmenter
from mae_lightning.models.classifier import load_pretrained_encoder
from mae_lightning.models.segmenter import default_out_indices, sliding_window
from mae_lightning.optim import warmup_poly_lr
from mae_lightning.segment import segmentation_scores
from tests.helpers import digits, tiny_mae

SEGMENTER = dict(img_size=(16, 24), patch_size=4, in_chans=1, num_classes=3, embed_dim=32, depth=4, num_heads=2)


def tiny_segmenter(**overrides) -> Segmenter:
    return Segmenter(**{**SEGMENTER, "head_channels": 16, "auxiliary_channels": 8, **overrides})


# ---------------------------------------------------------------------------- scores
def test_scores_of_a_hand_made_confusion_matrix():
    # rows: true class, columns: predicted class; class 3 is neither in the masks nor predicted
    confusion = torch.tensor([[5, 1, 0, 0], [2, 3, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    confusion[2, 0] = 0
    confusion[0, 2] = 2  # class 2: predicted twice, never true
    scores = segmentation_scores(confusion)
    # IoU = TP / (true + predicted - TP): class 0: 5 / (8 + 7 - 5), class 1: 3 / (6 + 4 - 3), class 2: 0 / 3
    assert scores["iou"][:3].tolist() == pytest.approx([5 / 10, 3 / 7, 0.0])
    assert math.isnan(scores["iou"][3])
    assert scores["mIoU"].item() == pytest.approx((5 / 10 + 3 / 7 + 0.0) / 3)
    # accuracy = TP / true pixels: NaN for the classes without true pixels
    assert scores["acc"][:2].tolist() == pytest.approx([5 / 8, 3 / 6])
    assert math.isnan(scores["acc"][2]) and math.isnan(scores["acc"][3])
    assert scores["mAcc"].item() == pytest.approx((5 / 8 + 3 / 6) / 2)
    assert scores["aAcc"].item() == pytest.approx(8 / 14)


def test_the_ignore_index_counts_in_no_score():
    metric = MulticlassConfusionMatrix(3, ignore_index=255)
    target = torch.tensor([[0, 1, 2, 255], [255, 255, 1, 1]])
    preds = torch.tensor([[0, 1, 1, 2], [0, 1, 1, 0]])  # wrong under two ignored pixels, which must not count
    metric.update(preds, target)
    assert metric.compute().tolist() == [[1, 0, 0], [1, 2, 0], [0, 1, 0]]
    scores = segmentation_scores(metric.compute())
    assert scores["aAcc"].item() == pytest.approx(3 / 5)


def test_the_ignore_index_is_left_out_of_the_loss():
    module = Segmentation(tiny_segmenter(), ignore_index=255)
    logits = torch.randn(2, 3, 4, 5)
    masks = torch.randint(0, 3, (2, 4, 5))
    masks[0, :2] = 255
    loss = module.loss(logits, masks)
    kept = masks != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[kept], masks[kept])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    changed = logits.clone()
    changed[0, :, :2] = 100.0  # whatever is predicted under the ignored pixels
    assert module.loss(changed, masks).item() == pytest.approx(loss.item(), rel=1e-6)


# ---------------------------------------------------------------------------- the segmenter
@pytest.mark.parametrize("head", ["linear", "upernet"])
@pytest.mark.parametrize("size", [(16, 24), (20, 36), (37, 53), (8, 8)])
def test_logits_have_the_size_of_any_image(head, size):
    model = tiny_segmenter(head=head).eval()
    imgs = torch.randn(2, 1, *size)
    logits, auxiliary = model.forward_with_auxiliary(imgs)
    assert logits.shape == (2, 3, *size)
    assert auxiliary is None if head == "linear" else auxiliary.shape == (2, 3, *size)
    assert torch.isfinite(logits).all()


def test_padding_to_the_grid_does_not_change_the_unpadded_tokens_position_table():
    model = tiny_segmenter(head="linear").eval()
    # At the training size the table is the model's own; another grid reads the resized one.
    same = model.grid_features(torch.randn(1, 1, 16, 24))[0]
    assert same.shape == (1, 32, 4, 6)
    other = model.grid_features(torch.randn(1, 1, 24, 40))[0]
    assert other.shape == (1, 32, 6, 10)
    with pytest.raises(ValueError, match="multiples of 4"):
        model.grid_features(torch.randn(1, 1, 15, 24))


def test_default_blocks_of_the_upernet_are_beits():
    assert default_out_indices(12, 4) == [3, 5, 7, 11]
    assert default_out_indices(24, 4) == [7, 11, 15, 23]
    assert default_out_indices(4, 4) == [0, 1, 2, 3]
    assert default_out_indices(12, 1) == [11]
    with pytest.raises(ValueError, match="at least 4 blocks"):
        default_out_indices(2, 4)
    with pytest.raises(ValueError, match="out_indices"):
        tiny_segmenter(out_indices=[0, 1, 2])
    assert len(tiny_segmenter(depth=2, out_indices=[0, 0, 1, 1]).grid_features(torch.randn(2, 1, 16, 24))) == 4


def test_sliding_window_equals_one_pass_for_a_per_pixel_model():
    conv = torch.nn.Conv2d(1, 3, kernel_size=1)
    imgs = torch.randn(2, 1, 23, 37)
    with torch.no_grad():
        slid = sliding_window(conv, imgs, crop=(8, 12), stride=(5, 7), num_classes=3)
        assert torch.allclose(slid, conv(imgs), atol=1e-6)
        # An image smaller than a crop is one crop of its own size.
        small = imgs[..., :6, :9]
        assert torch.allclose(sliding_window(conv, small, (8, 12), (5, 7), 3), conv(small), atol=1e-6)


def test_slide_mode_covers_an_image_larger_than_the_crops():
    module = Segmentation(tiny_segmenter(head="linear"), eval_mode="slide", eval_stride=(8, 12)).eval()
    assert module.eval_crop == (16, 24)
    with torch.no_grad():
        assert module(torch.randn(1, 1, 40, 50)).shape == (1, 3, 40, 50)
    assert Segmentation(tiny_segmenter()).eval_stride == (11, 16)  # two thirds of the crop, rounded up


# ---------------------------------------------------------------------------- weights and recipe
def pretraining_checkpoint(path, depth: int = 4):
    mae = tiny_mae(seed=0, depth=depth)
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(MAEPretraining(mae, warmup_epochs=0), digits())
    trainer.save_checkpoint(path)
    return mae


@pytest.mark.parametrize("head", ["linear", "upernet"])
def test_the_encoder_of_a_pretraining_checkpoint_loads_with_nothing_missing(tmp_path, head):
    mae = pretraining_checkpoint(tmp_path / "mae.ckpt")
    model = Segmenter(img_size=16, patch_size=4, in_chans=1, num_classes=3, embed_dim=32, depth=4, num_heads=2,
                      head=head, head_channels=16, auxiliary_channels=8)  # fmt: skip
    load_pretrained_encoder(model, tmp_path / "mae.ckpt")
    encoder = {k: v for k, v in mae.state_dict().items() if not k.startswith(("decoder", "mask_token", "norm."))}
    state = model.state_dict()
    for key, value in encoder.items():
        assert torch.equal(state[key], value), key
    # Everything else is the new head: no encoder tensor was left as initialised.
    assert {key for key in state if key not in encoder} == {key for key in state if key.startswith("head.")}


def test_layer_decay_groups_train_the_head_at_the_full_rate():
    module = Segmentation(tiny_segmenter(), layer_decay=0.5)
    module.configure_model()
    optimizer = module.configure_optimizers()
    scale = {id(p): group["lr_scale"] for group in optimizer.param_groups for p in group["params"]}
    named = dict(module.model.named_parameters())
    assert scale[id(named["head.decode_head.conv_seg.weight"])] == 1.0
    assert scale[id(named["blocks.3.attn.qkv.weight"])] == 0.5
    assert scale[id(named["blocks.0.attn.qkv.weight"])] == 0.5**4
    assert scale[id(named["patch_embed.proj.weight"])] == 0.5**5
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert decay[id(named["pos_embed"])] == 0.0 and decay[id(named["head.neck.fpn1.1.weight"])] == 0.0


def test_poly_decay_after_the_warmup():
    args = dict(peak_lr=1.0, min_lr=0.0, warmup_epochs=2, epochs=10)
    assert warmup_poly_lr(1, **args) == pytest.approx(0.5)
    assert warmup_poly_lr(2, **args) == pytest.approx(1.0)
    assert warmup_poly_lr(6, **args) == pytest.approx(0.5)
    assert warmup_poly_lr(10, **args) == pytest.approx(0.0)
    assert warmup_poly_lr(6, **args, power=2.0) == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(ignore_index=1), "ignore_index=1 is one of the 3 classes"),
        (dict(eval_mode="tiles"), "eval_mode must be"),
        (dict(lr_decay="step"), "lr_decay must be"),
        (dict(layer_decay=0.0), "layer_decay must be"),
        (dict(eval_stride=(20, 5)), "eval_stride must be"),
    ],
)
def test_bad_settings_stop_in_one_line(arguments, message):
    with pytest.raises(ValueError, match=message) as info:
        Segmentation(tiny_segmenter(), **arguments)
    assert "\n" not in str(info.value)


def test_a_bad_head_or_class_count_stops():
    with pytest.raises(ValueError, match="head must be 'linear' or 'upernet'"):
        tiny_segmenter(head="deeplab")
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        tiny_segmenter(num_classes=0)
