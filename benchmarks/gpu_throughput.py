"""GPU throughput of MAE ViT-B/16 pretraining: bare step, model FLOP utilisation, and a full Lightning fit.

    python benchmarks/gpu_throughput.py                 # bf16 autocast, SDPA, torch.compile, batch 256
    python benchmarks/gpu_throughput.py --no-compile --batch 128

1. Measures the bf16 matrix-multiply rate of this GPU (the roofline for MFU).
2. Times the bare training step (zero_grad, forward, backward, fused AdamW step) and reports
   images/s and MFU = images/s x FLOPs per image (counted by torch.utils.flop_counter) / matmul rate.
3. Runs ``Trainer.fit`` of :class:`MAEPretraining` on images already on the GPU for the same number
   of steps and reports its images/s against the bare step (target: within 10%).
Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import time

import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from mae_lightning import MAEPretraining
from mae_lightning.models import mae_vit_base_patch16


def matmul_rate(n: int = 8192, iters: int = 50) -> float:
    """Achieved bf16 FLOP/s of a large square matrix product."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - start)


class GPUImages(Dataset):
    """``length`` random images, already on the GPU: the data pipeline costs nothing."""

    def __init__(self, length: int, img_size: int = 224) -> None:
        self.imgs = torch.randn(length, 3, img_size, img_size, device="cuda")

    def __len__(self) -> int:
        return len(self.imgs)

    def __getitem__(self, index: int):
        return self.imgs[index], 0


class StepClock(Callback):
    """Wall time at two optimizer steps, synchronised with the GPU."""

    def __init__(self, start: int, end: int) -> None:
        self.marks, self.times = (start, end), []

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step in self.marks:
            torch.cuda.synchronize()
            self.times.append(time.perf_counter())


class InMemory(LightningDataModule):
    def __init__(self, length: int, batch_size: int) -> None:
        super().__init__()
        self.data, self.batch_size = GPUImages(length), batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=False, drop_last=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True

    peak = matmul_rate()
    model = mae_vit_base_patch16(norm_pix_loss=True).cuda()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95), fused=True
    )
    forward_train = model.forward_train if args.no_compile else torch.compile(model.forward_train)
    imgs = torch.randn(args.batch, 3, 224, 224, device="cuda")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = forward_train(imgs, 0.75).loss
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter, torch.autocast("cuda", dtype=torch.bfloat16):
        model.forward_train(imgs, 0.75)[0].backward()
    flops_per_image = counter.get_total_flops() / args.batch
    for _ in range(10):  # compile and warm up
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    bare = args.batch * args.steps / (time.perf_counter() - start)

    module = MAEPretraining(mae_vit_base_patch16(norm_pix_loss=True), warmup_epochs=0)
    if not args.no_compile:
        module.model.forward_train = torch.compile(module.model.forward_train)
    warmup = 10
    trainer = Trainer(
        accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=warmup + args.steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip

    clock = StepClock(start=warmup, end=warmup + args.steps)
    trainer.callbacks.append(clock)
    trainer.fit(module, InMemory((warmup + args.steps) * args.batch, args.batch))
    fit = args.batch * args.steps / (clock.times[1] - clock.times[0])

    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, batch {args.batch}")
    print(f"bf16 matmul rate: {peak / 1e12:.0f} TFLOP/s; FLOPs per image per step: {flops_per_image / 1e9:.1f} G")
    print(f"bare step: {bare:.0f} img/s, MFU {bare * flops_per_image / peak:.1%}")
    print(f"Trainer.fit: {fit:.0f} img/s ({fit / bare:.1%} of the bare step)")


if __name__ == "__main__":
    main()
