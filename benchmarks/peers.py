"""The implementations the throughput benchmark races: ours and three peers, all on the same weights and masks.

Each builder returns an :class:`Impl`: a module and a ``loss(imgs, noise)`` function computing the
MAE loss of one batch with the masks that ``noise`` fixes (keep the ``len_keep`` smallest). All
of them start from the weights of one :class:`MaskedAutoencoder`, so before timing the benchmark
checks that they compute the same loss: they do the same work.

Peers (the ``bench`` extra):
- ``hf``: Hugging Face transformers ``ViTMAEForPreTraining`` (SDPA attention).
- ``lightly``: lightly's ``MaskedVisionTransformerTIMM`` + ``MAEDecoderTIMM``, its documented MAE step.
- ``official``: the official facebookresearch/mae model as written there, on timm's ``PatchEmbed``/``Block``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mae_lightning.masking import num_kept
from mae_lightning.models import MaskedAutoencoder
from mae_lightning.ops import patchify


@dataclass
class Impl:
    name: str
    module: nn.Module
    loss: Callable[[Tensor, Tensor], Tensor]


def build_ours(reference: MaskedAutoencoder, mask_ratio: float) -> Impl:
    model = _clone(reference)
    return Impl("mae_lightning", model, lambda imgs, noise: model.forward_train(imgs, mask_ratio, noise).loss)


# ---------------------------------------------------------------------------- official model on timm blocks
class OfficialMAE(nn.Module):
    """facebookresearch/mae ``MaskedAutoencoderViT`` (models_mae.py), written out on timm blocks."""

    def __init__(self, ref: MaskedAutoencoder, depth: int, num_heads: int, decoder_depth: int, decoder_num_heads: int):
        super().__init__()
        from timm.models.vision_transformer import Block, PatchEmbed

        embed_dim, dec_dim = ref.cls_token.shape[-1], ref.mask_token.shape[-1]
        norm = _layer_norm
        self.patch_size = ref.patch_size
        self.patch_embed = PatchEmbed(ref.img_size, ref.patch_size, ref.in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros_like(ref.pos_embed), requires_grad=False)
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, 4.0, qkv_bias=True, norm_layer=norm) for _ in range(depth)]
        )
        self.norm = norm(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros_like(ref.decoder_pos_embed), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            [Block(dec_dim, decoder_num_heads, 4.0, qkv_bias=True, norm_layer=norm) for _ in range(decoder_depth)]
        )
        self.decoder_norm = norm(dec_dim)
        self.decoder_pred = nn.Linear(dec_dim, ref.decoder_pred.out_features)

    def random_masking(self, x, mask_ratio, noise):
        N, L, D = x.shape
        len_keep = int(L * (1 - mask_ratio))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
        mask = torch.ones([N, L], device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, dim=1, index=ids_restore)
        return x_masked, mask, ids_restore

    def forward(self, imgs, mask_ratio, noise):
        x = self.patch_embed(imgs)
        x = x + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls_token = self.cls_token + self.pos_embed[:, :1, :]
        x = torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        x = self.decoder_embed(x)
        mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))[:, 1:, :]
        target = patchify(imgs, self.patch_size)
        loss = ((x - target) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()


def build_official(reference: MaskedAutoencoder, mask_ratio: float, arch: dict) -> Impl:
    model = OfficialMAE(reference, arch["depth"], arch["num_heads"], arch["decoder_depth"], arch["decoder_num_heads"])
    model.load_state_dict(reference.state_dict(), strict=True)  # the same keys, by design
    return Impl("official (timm blocks)", model, lambda imgs, noise: model(imgs, mask_ratio, noise))


# ---------------------------------------------------------------------------- Hugging Face transformers
def build_hf(reference: MaskedAutoencoder, mask_ratio: float, arch: dict) -> Impl:
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    embed_dim, dec_dim = reference.cls_token.shape[-1], reference.mask_token.shape[-1]
    config = ViTMAEConfig(
        hidden_size=embed_dim,
        num_hidden_layers=arch["depth"],
        num_attention_heads=arch["num_heads"],
        intermediate_size=4 * embed_dim,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        image_size=list(reference.img_size),
        patch_size=reference.patch_size,
        num_channels=reference.in_chans,
        decoder_hidden_size=dec_dim,
        decoder_num_hidden_layers=arch["decoder_depth"],
        decoder_num_attention_heads=arch["decoder_num_heads"],
        decoder_intermediate_size=4 * dec_dim,
        mask_ratio=mask_ratio,
        norm_pix_loss=False,
        attn_implementation="sdpa",
    )
    model = ViTMAEForPreTraining(config)
    model.load_state_dict(_to_hf(reference.state_dict(), arch), strict=True)
    return Impl("hf transformers", model, lambda imgs, noise: model(pixel_values=imgs, noise=noise).loss)


def _to_hf(state: dict[str, Tensor], arch: dict) -> dict[str, Tensor]:
    out = {
        "vit.embeddings.cls_token": state["cls_token"],
        "vit.embeddings.position_embeddings": state["pos_embed"],
        "vit.embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "vit.embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "vit.layernorm.weight": state["norm.weight"],
        "vit.layernorm.bias": state["norm.bias"],
        "decoder.mask_token": state["mask_token"],
        "decoder.decoder_pos_embed": state["decoder_pos_embed"],
    }
    for name in ("decoder_embed", "decoder_norm", "decoder_pred"):
        for kind in ("weight", "bias"):
            out[f"decoder.{name}.{kind}"] = state[f"{name}.{kind}"]
    for ours, theirs, depth in (("blocks", "vit.layers", arch["depth"]),
                                ("decoder_blocks", "decoder.decoder_layers", arch["decoder_depth"])):  # fmt: skip
        for i in range(depth):
            src, dst = f"{ours}.{i}", f"{theirs}.{i}"
            for kind in ("weight", "bias"):
                q, k, v = state[f"{src}.attn.qkv.{kind}"].chunk(3)
                out[f"{dst}.attention.q_proj.{kind}"] = q
                out[f"{dst}.attention.k_proj.{kind}"] = k
                out[f"{dst}.attention.v_proj.{kind}"] = v
                out[f"{dst}.attention.o_proj.{kind}"] = state[f"{src}.attn.proj.{kind}"]
                out[f"{dst}.mlp.fc1.{kind}"] = state[f"{src}.mlp.fc1.{kind}"]
                out[f"{dst}.mlp.fc2.{kind}"] = state[f"{src}.mlp.fc2.{kind}"]
                out[f"{dst}.layernorm_before.{kind}"] = state[f"{src}.norm1.{kind}"]
                out[f"{dst}.layernorm_after.{kind}"] = state[f"{src}.norm2.{kind}"]
    return out


# ---------------------------------------------------------------------------- lightly
def build_lightly(reference: MaskedAutoencoder, mask_ratio: float, arch: dict) -> Impl:
    import warnings

    from lightly.models import utils
    from lightly.models.modules import MAEDecoderTIMM, MaskedVisionTransformerTIMM
    from timm.models.vision_transformer import VisionTransformer

    embed_dim, dec_dim = reference.cls_token.shape[-1], reference.mask_token.shape[-1]
    vit = VisionTransformer(
        img_size=reference.img_size,
        patch_size=reference.patch_size,
        in_chans=reference.in_chans,
        embed_dim=embed_dim,
        depth=arch["depth"],
        num_heads=arch["num_heads"],
        num_classes=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MAEDecoderTIMM's deprecation notice
        decoder = MAEDecoderTIMM(
            num_patches=reference.num_patches,
            patch_size=reference.patch_size,
            in_chans=reference.in_chans,
            embed_dim=embed_dim,
            decoder_embed_dim=dec_dim,
            decoder_depth=arch["decoder_depth"],
            decoder_num_heads=arch["decoder_num_heads"],
        )
    model = nn.ModuleDict({"backbone": MaskedVisionTransformerTIMM(vit=vit), "decoder": decoder})
    state = reference.state_dict()
    enc = {f"vit.{k}": v for k, v in state.items() if not k.startswith(("decoder", "mask_token"))}
    model.backbone.load_state_dict(enc, strict=False)  # its own encoder mask token is unused by MAE
    model.decoder.load_state_dict({k: v for k, v in state.items() if k.startswith(("decoder", "mask_token"))})
    seq_len = reference.num_patches + 1
    patch = reference.patch_size

    def loss(imgs: Tensor, noise: Tensor) -> Tensor:
        # lightly's documented MAE step, with idx_keep / idx_mask taken from the shared noise.
        ids_shuffle = torch.argsort(noise, dim=1) + 1
        keep = num_kept(noise.shape[1], mask_ratio)
        cls = torch.zeros(noise.shape[0], 1, dtype=torch.long, device=noise.device)
        idx_keep, idx_mask = torch.cat([cls, ids_shuffle[:, :keep]], dim=1), ids_shuffle[:, keep:]
        x_encoded = model.backbone.encode(images=imgs, idx_keep=idx_keep)
        x_decode = model.decoder.embed(x_encoded)
        x_masked = utils.repeat_token(model.decoder.mask_token, (imgs.shape[0], seq_len))
        x_masked = utils.set_at_index(x_masked, idx_keep, x_decode.type_as(x_masked))
        x_decoded = model.decoder.decode(x_masked)
        x_pred = model.decoder.predict(utils.get_at_index(x_decoded, idx_mask))
        target = utils.get_at_index(utils.patchify(imgs, patch), idx_mask - 1)
        return nn.functional.mse_loss(x_pred, target)

    return Impl("lightly", model, loss)


def _layer_norm(dim: int, **kwargs) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6, **kwargs)


def _clone(reference: MaskedAutoencoder) -> MaskedAutoencoder:
    import copy

    return copy.deepcopy(reference)


BUILDERS = {
    "ours": lambda ref, ratio, arch: build_ours(ref, ratio),
    "official": build_official,
    "hf": build_hf,
    "lightly": build_lightly,
}
