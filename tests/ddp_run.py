"""A few pretraining steps on CPU with 1 or N processes, for ``test_distributed.py``; not collected by pytest.

    python tests/ddp_run.py --devices 2 --batch-size 4 --steps 3 --out <dir>

With ``--devices 2`` Lightning's DDP strategy starts the second process itself (it runs this script
again with its rank in the environment) and the processes talk over gloo. Every process writes
``<out>/rank<r>.pt``: its model weights before and after the steps, the sample indices it trained on and the
peak lr it computed.

The masks must not depend on how the batch is split across processes, so the training step here
draws each sample's masking noise from a generator seeded with the sample's index in the dataset;
the model's math is untouched (``MaskedAutoencoder`` takes the noise as an argument).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule, Trainer, seed_everything
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mae_lightning import MAEPretraining, MaskedAutoencoder
from mae_lightning.cli import leave_process_group

IMG_SIZE, PATCH, CHANNELS, NUM_IMAGES = 16, 4, 1, 64


class IndexedImages(Dataset):
    """Fixed random images that come with their own index, so a step knows which samples it got."""

    def __init__(self) -> None:
        self.images = torch.randn(NUM_IMAGES, CHANNELS, IMG_SIZE, IMG_SIZE, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return NUM_IMAGES

    def __getitem__(self, index: int):
        return self.images[index], index


class IndexedData(LightningDataModule):
    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        dataset = IndexedImages()
        if self.trainer.world_size > 1:
            # Lightning swaps in a DistributedSampler(shuffle=True, seed=0): one permutation per epoch,
            # dealt out round-robin, so N processes with batch b share the samples of one batch N*b.
            return DataLoader(dataset, batch_size=self.batch_size, shuffle=True, drop_last=True)
        # One process: the same permutation, undealt (the sampler Lightning would build for one replica).
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True)


class IndexSeededMasks(MAEPretraining):
    """MAEPretraining whose masks are a function of the sample index, whatever the process or batch."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[int] = []

    def training_step(self, batch, batch_idx: int):
        imgs, indices = batch
        noise = torch.stack(
            [torch.rand(self.model.num_patches, generator=torch.Generator().manual_seed(int(i))) for i in indices]
        )
        self.seen.extend(int(i) for i in indices)
        loss, _, _ = self.model(imgs, self.mask_ratio, noise)
        return loss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)  # N processes share the cores

    seed_everything(0)
    model = MaskedAutoencoder(
        img_size=IMG_SIZE, patch_size=PATCH, in_chans=CHANNELS, embed_dim=32, depth=2, num_heads=2,
        decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, norm_pix_loss=True,
    )  # fmt: skip
    # warmup_epochs=0: the cosine lr from the first step, so every step moves the weights.
    initial = {key: value.clone() for key, value in model.state_dict().items()}
    module = IndexSeededMasks(model, base_lr=2e-2, weight_decay=0.05, warmup_epochs=0)
    trainer = Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        precision="32-true",
        max_epochs=1,
        limit_train_batches=args.steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, IndexedData(args.batch_size))
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "initial": initial,
            "state_dict": module.model.state_dict(),
            "seen": module.seen,
            "peak_lr": module.peak_lr,
            "effective_batch_size": module.effective_batch_size,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
        },
        args.out / f"rank{trainer.global_rank}.pt",
    )
    leave_process_group()


if __name__ == "__main__":
    main()
