"""The LightningModule that pretrains a :class:`MaskedAutoencoder` with the paper's recipe."""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from mae_lightning.checkpoint import DECODER_KEYS
from mae_lightning.models.mae import MaskedAutoencoder, check_mask_ratio
from mae_lightning.models.weights import load_weights
from mae_lightning.ops import POOLS, pool_tokens
from mae_lightning.optim import param_groups_weight_decay
from mae_lightning.recipe import Recipe


class MAEPretraining(Recipe):
    """Masked-autoencoder pretraining: AdamW, lr scaled by the effective batch, warmup + cosine.

    The learning rate is set before every step from the fractional epoch, as the official
    ``lr_sched.adjust_learning_rate``; so the schedule is defined in epochs and stays the same
    when the number of devices changes between runs. It ends where the run ends: at
    ``max_epochs`` or at ``max_steps``, whichever comes first (:func:`~mae_lightning.optim.run_length`).

    Validation masks are drawn per sample from ``(val_mask_seed, position of the sample in the
    validation set)``, so ``val/loss`` does not change with the batch size or the number of processes.

    Args:
        model: the masked autoencoder to train.
        mask_ratio: share of patches removed per image in training. A schedule overrides
            :meth:`train_mask_ratio`, which reads it.
        eval_mask_ratio: share of patches removed in validation, test and the reconstruction pictures; fixed,
            so that ``val/loss`` compares across epochs and runs. None: ``mask_ratio``.
        base_lr: learning rate per 256 images of effective batch
            (``lr = base_lr * batch_size * devices * nodes * accumulate_grad_batches / 256``).
        lr: absolute peak learning rate; overrides ``base_lr`` when set.
        min_lr: learning rate at the end of the cosine decay.
        weight_decay: AdamW weight decay on weight matrices (none on biases and norms).
        betas: AdamW betas; the paper uses (0.9, 0.95).
        warmup_epochs: epochs of linear warmup from 0 to the peak learning rate.
        val_mask_seed: seed of the validation masks, so that ``val/loss`` is comparable across epochs and runs.
        fused_adamw: use PyTorch's fused AdamW kernel (same update, one pass over memory); set
            false for parameter types it does not support.
        init_weights: weights to start from (continued pretraining): an official ``*_full.pth``, an
            official encoder-only file (the decoder keeps its fresh initialisation), a checkpoint of this
            project or a ``.safetensors`` export. Loaded when fitting starts, never over a resumed
            checkpoint; position tables follow the model's patch grid (see ``models/weights.py``).
        compile: compile the model with ``torch.compile`` (in place: checkpoint keys do not change);
            worth it on GPUs for long runs, mostly compile time on a CPU.
    """

    def __init__(
        self,
        model: MaskedAutoencoder,
        mask_ratio: float = 0.75,
        eval_mask_ratio: float | None = None,
        base_lr: float = 1.5e-4,
        lr: float | None = None,
        min_lr: float = 0.0,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_epochs: float = 40,
        val_mask_seed: int = 0,
        fused_adamw: bool = True,
        init_weights: str | None = None,
        compile: bool = False,
    ) -> None:
        fixed_ratio = mask_ratio if eval_mask_ratio is None else eval_mask_ratio
        for ratio in dict.fromkeys((mask_ratio, fixed_ratio)):
            check_mask_ratio(ratio, model.num_patches)
            # A strategy that cannot hide this share on this grid (GridMasking) says so now, not at the first step.
            model.fixed_noise(torch.zeros(1, dtype=torch.long), ratio, seed=0)
        super().__init__(model, base_lr, lr, min_lr, weight_decay, warmup_epochs)
        self.mask_ratio = mask_ratio
        self.eval_mask_ratio = fixed_ratio
        self.betas = tuple(betas)
        self.val_mask_seed = val_mask_seed
        self.fused_adamw = fused_adamw
        self.init_weights = init_weights
        self.compile_model = compile
        self._eval_samples_seen = 0

    def forward(self, imgs: Tensor, mask_ratio: float | None = None, noise: Tensor | None = None):
        """Delegates to the model: returns (loss, pred, mask); ``eval_mask_ratio`` unless ``mask_ratio`` is given."""
        return self.model(imgs, self.eval_mask_ratio if mask_ratio is None else mask_ratio, noise)

    # ------------------------------------------------------------------ weights and compilation
    weights_argument = "init_weights"

    def load_weights_file(self, path: str, stage: str) -> bool:
        if stage != "fit":
            return False
        report = load_weights(self.model, path, expected_missing=[f"{key}*" for key in DECODER_KEYS])
        # Loading an encoder-only file leaves the decoder fresh by design; anything else is worth a warning.
        (rank_zero_info if report.clean else rank_zero_warn)(f"init_weights: {report.message()}")
        return True

    def configure_model(self) -> None:
        super().configure_model()
        # nn.Module.compile() compiles in place, so state_dict keys keep their names (no `_orig_mod.`).
        if self.compile_model and getattr(self.model, "_compiled_call_impl", None) is None:
            self.model.compile()
            # Training calls forward_train, not forward: compile that entry point as well.
            self._forward_train = torch.compile(self.model.forward_train)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        groups = param_groups_weight_decay(self.model, self.weight_decay, self._param_shapes)
        # The lr given here is replaced before the first step (see on_train_batch_start). The fused
        # kernel does the whole update in one pass over memory: 2-3x faster than the default
        # foreach on CPU (benchmarks/RESULTS.md), and the fastest choice on CUDA too.
        return torch.optim.AdamW(groups, lr=self.lr or self.base_lr, betas=self.betas, fused=self.fused_adamw)

    # ------------------------------------------------------------------ steps
    def train_mask_ratio(self) -> float:
        """The share of patches hidden in this training step: ``mask_ratio``.

        Called once per training step; a schedule overrides it (reading ``self.trainer.global_step``, say).
        Validation, test and the pictures use ``eval_mask_ratio`` whatever it returns. Under ``compile`` each new
        value compiles ``forward_train`` again, so a compiled schedule should take few distinct values.
        """
        return self.mask_ratio

    def training_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        imgs = batch[0]
        forward_train = getattr(self, "_forward_train", self.model.forward_train)
        loss, latent, terms = forward_train(imgs, self.train_mask_ratio())
        self.log_train_loss(loss, imgs.shape[0])
        for name, value in terms.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=False)
        # The encoded visible tokens go to the callbacks (the online probe of KNNMonitor) at no extra cost.
        return {"loss": loss, "latent": latent.detach()}

    def on_validation_epoch_start(self) -> None:
        self._eval_samples_seen = 0

    def on_test_epoch_start(self) -> None:
        self._eval_samples_seen = 0

    def validation_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        return self._fixed_mask_step(batch[0], "val")

    def test_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        return self._fixed_mask_step(batch[0], "test")

    def predict_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        """Unmasked image embeddings (cls token and mean of the patch tokens) with the targets."""
        tokens = self.forward_features(batch[0])
        return {pool: pool_tokens(tokens, pool) for pool in POOLS} | {"target": batch[1]}

    def forward_features(self, imgs: Tensor) -> Tensor:
        """The encoder on every patch, no masking: imgs (N, C, H, W) -> tokens (N, 1 + L, D).

        The monitors call it through the strategy's wrapper (see ``runtime/strategy_forward.py``), so
        under FSDP every process takes part and the sharded weights are gathered as in a training step.
        """
        return self.model.forward_features(imgs)

    def _fixed_mask_step(self, imgs: Tensor, split: str) -> dict[str, Tensor]:
        """The loss of ``imgs`` on fixed masks at ``eval_mask_ratio``, logged as ``<split>/loss`` with its terms."""
        # The same masks every epoch and for any batch size or process count, so the loss measures the
        # model and not the draw. The evaluation loaders do not shuffle, and with N processes Lightning's
        # DistributedSampler deals the samples round-robin: the k-th sample of rank r is number k * N + r.
        trainer = self._trainer  # None when called outside a Trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        positions = torch.arange(self._eval_samples_seen, self._eval_samples_seen + imgs.shape[0]) * world + rank
        self._eval_samples_seen += imgs.shape[0]
        # The model's own masking strategy draws them, one generator per sample (see MaskedAutoencoder.fixed_noise).
        noise = self.model.fixed_noise(positions, self.eval_mask_ratio, self.val_mask_seed, imgs.device)
        loss, latent, terms = self.model.forward_train(imgs, self.eval_mask_ratio, noise)
        for name, value in {"loss": loss, **terms}.items():
            shown = split == "val" and name == "loss"
            self.log(f"{split}/{name}", value, sync_dist=True, prog_bar=shown, batch_size=imgs.shape[0])
        return {"loss": loss, "latent": latent}
