"""The Masked Autoencoder of He et al. (2021) as a plain ``nn.Module``.

A drop-in for facebookresearch/mae's ``MaskedAutoencoderViT``: the same constructor arguments,
the same ``state_dict`` keys (an official ``*_full.pth`` loads with ``strict=True``), the same
initialisation and the same ``forward(imgs, mask_ratio) -> (loss, pred, mask)``. Generalised to
any channel count and to non-square images. Which patches are hidden is a separate choice
(``masking``, see ``masking.py``); ``noise`` fixes the masking when given. What is regressed is
:meth:`MaskedAutoencoder.target`, how a hidden patch is scored :meth:`MaskedAutoencoder.patch_loss`,
and a step's further terms :meth:`MaskedAutoencoder.extra_terms`: one place each, that every path calls.

Two settings make pretraining cheaper, both from CrossMAE (Fu et al., 2024), both in :meth:`MaskedAutoencoder._decode`,
the one decoder of every path: ``decoder_keep_ratio`` (partial reconstruction: a training step decodes and scores
a random share of the removed patches) and ``decoder="cross"`` (mask-token queries cross-attend to the visible
tokens instead of joining them in self-attention). ``decoder="local"`` is Audio-MAE's decoder (Huang et al., 2022):
attention within shifted windows of the patch grid, for spectrograms. The defaults are the paper's decoder and loss,
bit for bit.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from mae_lightning.masking import MaskingStrategy, RandomMasking, mask_from_scores, num_kept
from mae_lightning.models.pos_embed import sincos_2d
from mae_lightning.models.vit import Block, CrossAttentionBlock, LayerNorm, PatchEmbed, WindowAttentionBlock
from mae_lightning.ops import gather_tokens, inverse_permutation, patchify, pool_tokens, unpatchify


class StepOutput(NamedTuple):
    """What :meth:`MaskedAutoencoder.forward_train` returns.

    Attributes:
        loss: the scalar to optimise: the reconstruction loss, plus every term of ``terms`` named ``*_loss``.
        latent: (N, 1 + L_keep, D) the encoded cls and visible tokens.
        terms: the named scalars of :meth:`MaskedAutoencoder.extra_terms` (none by default), each logged by
            the pretraining module as ``train/<name>``, ``val/<name>`` or ``test/<name>``.
    """

    loss: Tensor
    latent: Tensor
    terms: dict[str, Tensor]


class MaskedAutoencoder(nn.Module):
    """ViT encoder on the visible patches, light transformer decoder, MSE on the masked patches.

    Partial reconstruction (``decoder_keep_ratio`` < 1) is a training economy: :meth:`forward_train` in training
    mode decodes and scores a random subset of the removed patches. In eval mode (validation and test, whose
    ``val/loss`` is :meth:`forward_train` on fixed masks) and in :meth:`forward` (the official output, the
    reconstruction pictures) every removed patch is reconstructed and scored, so ``val/loss`` stays comparable
    between runs with different keep ratios.

    Args:
        img_size: image side, or (height, width); each must be a multiple of ``patch_size``.
        patch_size: side of a square patch in pixels.
        in_chans: image channels (1 for grayscale, 3 for RGB, any number of bands).
        embed_dim: encoder width.
        depth: encoder blocks.
        num_heads: encoder attention heads.
        decoder_embed_dim: decoder width.
        decoder_depth: decoder blocks.
        decoder_num_heads: decoder attention heads.
        mlp_ratio: hidden width of the MLPs relative to the block width.
        norm_pix_loss: regress per-patch normalised pixels (zero mean, unit variance per patch),
            the paper's default for its best results.
        masking: which patches are hidden (:mod:`mae_lightning.masking`); None: :class:`RandomMasking`,
            the paper's uniform sampling. Holds no parameters: the ``state_dict`` is the same for all.
        decoder: ``"self"``, the paper's decoder (transformer blocks over the visible tokens and the mask
            tokens together), or ``"cross"``, CrossMAE's (Fu et al., 2024): each mask-token query attends to the
            visible tokens and the cls token only (cross-attention, no attention among the queries), so its cost
            grows linearly with the number of patches decoded, or ``"local"``, Audio-MAE's (Huang et al., 2022): the
            visible and mask tokens of the whole grid (the cls token set aside) attend within windows of
            ``decoder_window`` patches, every second block's windows shifted by half a window (Swin's alternation),
            for spectrograms, whose time-frequency patterns are local. Every decoder's own weights are
            ``decoder_blocks.*``, and ``"local"`` has the keys of ``"self"``; the encoder and its ``state_dict`` are
            the same.
        decoder_keep_ratio: share of the removed patches that a training step decodes and scores, in (0, 1]:
            ``max(1, round(num_removed * decoder_keep_ratio))`` of them, drawn uniformly per sample from the global
            torch generator (saved in checkpoints, so a resumed run repeats the draw). 1.0: all of them (the paper).
            Validation, test and :meth:`forward` always reconstruct every removed patch.
        decoder_fp32: run the decoder and the pixel head in float32 under mixed precision (autocast off), the
            workaround for a decoder whose bf16/fp16 loss turns NaN; a NaN rollback can set it during a run.
        decoder_window: (rows, columns) of patches in a window of ``decoder="local"``, clamped to the grid;
            (4, 4) is Audio-MAE's. Unused by the other decoders.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = False,
        masking: MaskingStrategy | None = None,
        decoder: Literal["self", "cross", "local"] = "self",
        decoder_keep_ratio: float = 1.0,
        decoder_fp32: bool = False,
        decoder_window: tuple[int, int] = (4, 4),
    ) -> None:
        super().__init__()
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if in_chans <= 0:
            raise ValueError(f"in_chans must be positive, got {in_chans}")
        for name, width in (("embed_dim", embed_dim), ("decoder_embed_dim", decoder_embed_dim)):
            if width % 4:
                raise ValueError(f"{name} must be divisible by 4 for the 2-D sin-cos table, got {width}")
        if decoder not in ("self", "cross", "local"):
            raise ValueError(f"decoder must be 'self', 'cross' or 'local', got {decoder!r}")
        if not 0.0 < decoder_keep_ratio <= 1.0:
            raise ValueError(f"decoder_keep_ratio must be in (0, 1], got {decoder_keep_ratio}")
        if decoder == "local" and decoder_keep_ratio < 1.0:
            raise ValueError(
                f"decoder='local' needs every patch on its grid: decoder_keep_ratio must be 1, got {decoder_keep_ratio}"
            )
        decoder_window = tuple(decoder_window)
        if len(decoder_window) != 2 or not all(isinstance(w, int) and w > 0 for w in decoder_window):
            raise ValueError(f"decoder_window must be two positive integers, got {decoder_window}")
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.norm_pix_loss = norm_pix_loss
        self.masking = RandomMasking() if masking is None else masking
        self.decoder = decoder
        self.decoder_keep_ratio = decoder_keep_ratio
        self.decoder_fp32 = decoder_fp32
        self.decoder_window = decoder_window

        # Encoder: sees the visible patches and the cls token only.
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Fixed (not trained) tables; parameters rather than buffers to keep the official keys.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = LayerNorm(embed_dim)

        # Decoder: encoded visible tokens + one shared mask token per removed patch.
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)
        if decoder == "local":  # Swin's alternation: every second block's windows shifted by half a window
            shifts = [
                (0, 0) if i % 2 == 0 else (decoder_window[0] // 2, decoder_window[1] // 2) for i in range(decoder_depth)
            ]
            blocks = [
                WindowAttentionBlock(decoder_embed_dim, decoder_num_heads, mlp_ratio, decoder_window, shift)
                for shift in shifts
            ]
        else:
            block = CrossAttentionBlock if decoder == "cross" else Block
            blocks = [block(decoder_embed_dim, decoder_num_heads, mlp_ratio) for _ in range(decoder_depth)]
        self.decoder_blocks = nn.ModuleList(blocks)
        self.decoder_norm = LayerNorm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.target_dim)

        self.initialize_weights()

    @property
    def img_size(self) -> tuple[int, int]:
        return self.patch_embed.img_size

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def initialize_weights(self) -> None:
        """The official initialisation: sin-cos tables, xavier-uniform linears, N(0, 0.02) tokens."""
        self.pos_embed.data.copy_(sincos_2d(self.pos_embed.shape[-1], self.grid_size, cls_token=True)[None])
        self.decoder_pos_embed.data.copy_(
            sincos_2d(self.decoder_pos_embed.shape[-1], self.grid_size, cls_token=True)[None]
        )
        # The patch embedding is initialised as the Linear layer it is (viewed as out x (C*p*p));
        # its bias keeps PyTorch's default, as in the official code.
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(_init_linear_and_norm)

    # ------------------------------------------------------------------ patches
    def patchify(self, imgs: Tensor) -> Tensor:
        """imgs: (N, C, H, W) -> (N, L, p*p*C)."""
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: Tensor) -> Tensor:
        """x: (N, L, p*p*C) -> (N, C, H, W)."""
        return unpatchify(x, self.patch_size, self.grid_size, self.in_chans)

    # ------------------------------------------------------------------ model
    def forward_encoder(
        self, imgs: Tensor, mask_ratio: float, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Encode the visible patches.

        imgs: (N, C, H, W) -> latent (N, 1 + L_keep, D), mask (N, L), ids_restore (N, L).
        """
        ids_shuffle, ids_restore, mask, len_keep = self._masking(imgs, mask_ratio, noise)
        return self._encode_visible(imgs, ids_shuffle[:, :len_keep]), mask, ids_restore

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """Predict every patch's pixels (the cross decoder queries the visible patches too).

        latent: (N, 1 + L_keep, D), ids_restore: (N, L) -> pred (N, L, target_dim).
        """
        ids_shuffle = inverse_permutation(ids_restore)
        len_keep = latent.shape[1] - 1
        return self._predict(latent, ids_shuffle[:, :len_keep], ids_shuffle[:, len_keep:], every_patch=True)

    # ------------------------------------------------------------------ what is regressed, and how it is scored
    @property
    def target_dim(self) -> int:
        """Values regressed per patch (p*p*C pixels), the width of ``decoder_pred``; follows :meth:`target`."""
        return self.patch_size * self.patch_size * self.in_chans

    def target(self, imgs: Tensor) -> Tensor:
        """What the decoder regresses: imgs (N, C, H, W) -> (N, L, target_dim).

        The pixels of every patch, normalised by the patch's own mean and variance with ``norm_pix_loss`` (the
        official target). Every path scores against it: :meth:`forward`, :meth:`forward_train`, validation. A
        subclass that regresses something else overrides it with :attr:`target_dim` (which sizes the pixel head)
        and :meth:`prediction_to_pixels` (which draws the predictions in the reconstruction pictures).
        """
        patches = self.patchify(imgs)
        if not self.norm_pix_loss:
            return patches
        mean, std = _patch_statistics(patches)
        return (patches - mean) / std

    def prediction_to_pixels(self, pred: Tensor, imgs: Tensor) -> Tensor:
        """Predictions back in image space, the inverse of :meth:`target`: pred (N, L, target_dim) -> (N, C, H, W).

        With ``norm_pix_loss`` every predicted patch is un-normalised with the mean and variance of the real patch
        of ``imgs`` (N, C, H, W), as the official demo does: the colour level of a hidden patch comes from the
        image, its detail from the model.
        """
        if self.norm_pix_loss:
            mean, std = _patch_statistics(self.patchify(imgs))
            pred = pred * std + mean
        return self.unpatchify(pred)

    def patch_loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """The loss of each predicted patch: mean squared error over its values.

        pred, target: (..., target_dim) -> (...). Every path (forward, forward_train, validation) scores
        patches with this method, so a subclass that overrides it changes the training loss.
        """
        return ((pred - target) ** 2).mean(dim=-1)

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """:meth:`patch_loss` averaged over the removed patches only.

        imgs: (N, C, H, W), pred: (N, L, target_dim), mask: (N, L) with 1 = removed -> scalar loss.
        """
        loss = self.patch_loss(pred, self.target(imgs))
        return (loss * mask).sum() / mask.sum()

    def forward(
        self, imgs: Tensor, mask_ratio: float = 0.75, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mask, encode, decode and score a batch.

        Args:
            imgs: (N, C, H, W) images, normalised as in training.
            mask_ratio: share of patches removed, in (0, 1).
            noise: optional (N, L) values fixing the mask (the smallest ``int(L * (1 - mask_ratio))`` are kept);
                drawn by ``masking`` when None.

        Returns:
            loss: scalar, :meth:`patch_loss` averaged over the removed patches.
            pred: (N, L, target_dim) predicted patches, in the units of :meth:`target`.
            mask: (N, L), 1 on removed patches.
        """
        check_mask_ratio(mask_ratio, self.num_patches)
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.forward_loss(imgs, pred, mask)
        return loss, pred, mask

    def forward_train(self, imgs: Tensor, mask_ratio: float = 0.75, noise: Tensor | None = None) -> StepOutput:
        """The loss of :meth:`forward` with less work, the encoded visible tokens and a subclass's extra terms.

        The pixel head and the loss run on the removed patches only: every sample removes the same
        number of patches, so the mean over the removed patches of the batch equals the official
        masked average, and the predictions of visible patches, which the loss ignores, are never
        computed. In training mode with ``decoder_keep_ratio`` < 1 the decoder sees and scores only the
        subset of :meth:`scored_patches` (partial reconstruction); in eval mode every removed patch.
        imgs: (N, C, H, W) -> :class:`StepOutput` (loss (scalar), latent (N, 1 + L_keep, D), terms).
        """
        check_mask_ratio(mask_ratio, self.num_patches)
        ids_shuffle, _, _, len_keep = self._masking(imgs, mask_ratio, noise)
        ids_keep, ids_removed = ids_shuffle[:, :len_keep], ids_shuffle[:, len_keep:]
        latent = self._encode_visible(imgs, ids_keep)
        ids_scored = self.scored_patches(ids_removed) if self.training else ids_removed
        pred = self._predict(latent, ids_keep, ids_scored)
        # The target is per patch, so gathering after it is the same as before it, bit for bit.
        loss = self.patch_loss(pred, gather_tokens(self.target(imgs), ids_scored)).mean()
        terms = self.extra_terms(imgs, latent, ids_shuffle)
        added = [value for name, value in terms.items() if name.endswith("_loss")]
        return StepOutput(loss + sum(added) if added else loss, latent, terms)

    def extra_terms(self, imgs: Tensor, latent: Tensor, ids_shuffle: Tensor) -> dict[str, Tensor]:
        """Named scalars that a subclass adds to every :meth:`forward_train` step; none here.

        Called after the reconstruction loss with what the step computed. A term named ``*_loss`` is added to the
        loss that is optimised; every term is logged (``train/<name>``, ``val/<name>``). A metric that needs no
        gradient is cheaper computed under ``torch.no_grad()``.

        Args:
            imgs: (N, C, H, W) the batch.
            latent: (N, 1 + K, D) the encoded cls token and K visible patches.
            ids_shuffle: (N, L) the patches in masking order, the K visible ones first (its
                :func:`~mae_lightning.ops.inverse_permutation` is the ``ids_restore`` of :meth:`forward_decoder`).
        """
        return {}

    def num_scored(self, num_removed: int) -> int:
        """How many of ``num_removed`` patches a training step decodes and scores: at least one."""
        return max(1, round(num_removed * self.decoder_keep_ratio))

    def scored_patches(self, ids_removed: Tensor) -> Tensor:
        """The removed patches that a training step decodes and scores (partial reconstruction).

        ids_removed: (N, M) patch indices -> (N, :meth:`num_scored` (M)): ``ids_removed`` itself when all are kept
        (no random draw: the default consumes no random numbers), else a uniform subset per sample, in random
        order. Drawn by the global torch generator of the batch's device, whose state a checkpoint saves, so a
        resumed run repeats the subsets. The draw is the same for every masking strategy: the order in which a
        strategy removes patches is not random for all of them (``BlockMasking`` ranks its top-up patches before
        its blocks, ``GridMasking`` removes in row-major order), so taking its first patches would bias the subset.
        """
        num_removed = ids_removed.shape[1]
        count = self.num_scored(num_removed)
        if count == num_removed:
            return ids_removed
        picks = torch.rand(ids_removed.shape, device=ids_removed.device).argsort(dim=1)[:, :count]
        return ids_removed.gather(1, picks)

    def fixed_noise(
        self, sample_ids: Tensor, mask_ratio: float, seed: int, device: torch.device | str = "cpu"
    ) -> Tensor:
        """The ``noise`` of fixed masks from this model's masking strategy, one generator per sample.

        sample_ids: (N,) integers -> (N, L), row ``i`` drawn from a generator seeded with ``(seed, sample_ids[i])``:
        the same masks for any batch size, process count or device (validation, pictures, notebooks).
        """
        return self.masking.fixed_scores(sample_ids, self.grid_size, mask_ratio, seed).to(device)

    def _masking(self, imgs: Tensor, mask_ratio: float, noise: Tensor | None) -> tuple[Tensor, Tensor, Tensor, int]:
        n, length = imgs.shape[0], self.num_patches
        if noise is None:
            noise = self.masking.scores(n, self.grid_size, mask_ratio, imgs.device)
        ids_shuffle, ids_restore, mask, len_keep = mask_from_scores(noise, mask_ratio, (n, length))
        return ids_shuffle, ids_restore, mask.to(imgs.dtype), len_keep

    def _encode_visible(self, imgs: Tensor, ids_keep: Tensor) -> Tensor:
        """imgs: (N, C, H, W), ids_keep: (N, L_keep) -> latent (N, 1 + L_keep, D) after the final norm."""
        x = self.patch_embed.embed_patches(self.patchify(self.patch_embed.check(imgs)), ids_keep)
        x = x + self.pos_embed[0, 1:][ids_keep]
        cls_token = self.cls_token + self.pos_embed[:, :1, :]
        x = torch.cat([cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def _predict(self, latent: Tensor, ids_keep: Tensor, ids_masked: Tensor, every_patch: bool = False) -> Tensor:
        """``decoder_pred`` of :meth:`_decode`: -> (N, Q, target_dim), or (N, L, target_dim) with ``every_patch``.

        With ``decoder_fp32`` the decoder and the pixel head run in float32 under mixed precision (autocast off).
        """
        if not self.decoder_fp32:
            return self.decoder_pred(self._decode(latent, ids_keep, ids_masked, every_patch))
        with torch.autocast(latent.device.type, enabled=False):
            return self.decoder_pred(self._decode(latent.float(), ids_keep, ids_masked, every_patch))

    def _decode(self, latent: Tensor, ids_keep: Tensor, ids_masked: Tensor, every_patch: bool = False) -> Tensor:
        """The decoder, after ``decoder_norm``: the one place the decoders and partial reconstruction live.

        latent: (N, 1 + K, D) the encoded cls and visible tokens, ids_keep: (N, K) their patches, ids_masked: (N, Q)
        removed patches to reconstruct (all of them or a subset) -> (N, Q, D_dec), in the order of ``ids_masked``.
        With ``every_patch`` (``ids_keep`` and ``ids_masked`` then cover the image) -> (N, L, D_dec) in patch order,
        the visible patches included: the official output.
        """
        table = self.decoder_pos_embed[0]
        x = self.decoder_embed(latent)
        # Every token carries its patch's position (the cls token the table's first row), so the decoder can lay
        # the tokens out in any order.
        positions = torch.cat([table[:1].expand(x.shape[0], 1, -1), table[1:][ids_keep]], dim=1)
        visible = x + positions
        if self.decoder == "cross":
            if every_patch:
                ids_masked = torch.arange(self.num_patches, device=ids_keep.device).expand(x.shape[0], -1)
            queries = self.mask_token + table[1:][ids_masked]
            for block in self.decoder_blocks:
                queries = block(queries, visible)
            return self.decoder_norm(queries)
        # One sequence of the visible tokens and a mask token per patch to reconstruct, in patch order: with every
        # patch the official layout. Attention does not depend on the order, the last bits of its sums do.
        order = torch.cat([ids_keep, ids_masked], dim=1).argsort(dim=1)
        tokens = torch.cat([visible[:, 1:], self.mask_token + table[1:][ids_masked]], dim=1)
        x = torch.cat([visible[:, :1], gather_tokens(tokens, order)], dim=1)
        if self.decoder == "local":
            # The windows tile the whole grid; the cls token has no place on it and is set aside (as in Audio-MAE).
            x = x[:, 1:]
            for block in self.decoder_blocks:
                x = block(x, self.grid_size)
            x = self.decoder_norm(x)
        else:
            for block in self.decoder_blocks:
                x = block(x)
            # Per-token layers from here on: dropping the cls token before them gives the official output.
            x = self.decoder_norm(x[:, 1:])
        if every_patch:
            return x
        return gather_tokens(x, inverse_permutation(order)[:, ids_keep.shape[1] :])

    # ------------------------------------------------------------------ embeddings
    def forward_features(self, imgs: Tensor) -> Tensor:
        """Encode every patch, no masking: imgs (N, C, H, W) -> (N, 1 + L, D) after the final norm."""
        ids_all = torch.arange(self.num_patches, device=imgs.device).expand(imgs.shape[0], -1)
        return self._encode_visible(imgs, ids_all)

    def embed(self, imgs: Tensor, pool: str = "cls") -> Tensor:
        """Image embeddings for downstream use: imgs (N, C, H, W) -> (N, D).

        Args:
            imgs: images.
            pool: ``"cls"`` for the cls token, ``"mean"`` for the mean of the patch tokens.
        """
        return pool_tokens(self.forward_features(imgs), pool)


def check_mask_ratio(mask_ratio: float, num_patches: int) -> None:
    """Raise a ValueError unless ``mask_ratio`` leaves at least one visible and one masked patch."""
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in the open interval (0, 1), got {mask_ratio}")
    if num_kept(num_patches, mask_ratio) < 1:
        raise ValueError(f"mask_ratio={mask_ratio} keeps no patch visible out of {num_patches}: lower it")


def _patch_statistics(patches: Tensor) -> tuple[Tensor, Tensor]:
    """The official per-patch normalisation: patches (..., D) -> mean and std (..., 1), unbiased var + 1e-6."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)  # unbiased, as the official code
    return mean, (var + 1.0e-6) ** 0.5


def _init_linear_and_norm(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
