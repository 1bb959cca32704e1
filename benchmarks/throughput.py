"""Images per second of one full MAE pretraining step, ours against peer implementations, in one process.

    python benchmarks/throughput.py                      # configs A, B, C, fp32, 2 threads
    python benchmarks/throughput.py --configs C --reps 9
    python benchmarks/throughput.py --dtype bf16 --impls ours     # CPU bf16 autocast against our fp32 step
    python benchmarks/throughput.py --memory              # + peak memory, one process per implementation

A step is zero_grad, forward, backward and AdamW step. Every implementation gets the same
weights (copied from one MaskedAutoencoder), the same images and the same masks; the script
first checks that they all compute the same loss. Repetitions are interleaved (the order
rotates every round) so that a noisy machine slows every implementation alike; the table
reports the minimum and the median step time over the repetitions and the ratio ours/peer.
Peers need the ``bench`` extra: ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import BUILDERS, Impl  # noqa: E402

from mae_lightning.models import MaskedAutoencoder  # noqa: E402

# The three configurations: architecture, image size, batch.
CONFIGS = {
    "A": dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
              decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, batch=4),
    "B": dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6,
              decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8, batch=16),
    "C": dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3,
              decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4, batch=64),
}  # fmt: skip
MASK_RATIO = 0.75


def make_optimizer(impl: Impl, ours_fused: bool) -> torch.optim.Optimizer:
    params = [p for p in impl.module.parameters() if p.requires_grad]
    if impl.name == "mae_lightning":
        return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), fused=ours_fused or None)
    return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95))  # what a user of the peer gets by default


def build(config: dict, names: list[str], seed: int = 0) -> tuple[list[Impl], torch.Tensor, torch.Tensor]:
    arch = {k: v for k, v in config.items() if k != "batch"}
    torch.manual_seed(seed)
    reference = MaskedAutoencoder(**arch)
    impls = [BUILDERS[name](reference, MASK_RATIO, arch) for name in names]
    imgs = torch.randn(config["batch"], 3, arch["img_size"], arch["img_size"])
    noise = torch.rand(config["batch"], reference.num_patches)
    return impls, imgs, noise


def check_same_loss(impls: list[Impl], imgs: torch.Tensor, noise: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        losses = {impl.name: impl.loss(imgs, noise).item() for impl in impls}
    first = next(iter(losses.values()))
    for name, value in losses.items():
        if abs(value - first) > 1e-4 * abs(first):
            raise AssertionError(f"implementations disagree on the loss: {losses} ({name})")
    return losses


def step_fn(impl: Impl, optimizer: torch.optim.Optimizer, imgs, noise, dtype: str):
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = impl.loss(imgs, noise)
        loss.backward()
        optimizer.step()

    return step


def flops_per_image(step, batch: int) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / batch


def time_config(key: str, names: list[str], reps: int, steps: int, dtype: str, fused: bool) -> list[dict]:
    config = CONFIGS[key]
    impls, imgs, noise = build(config, names)
    losses = check_same_loss(impls, imgs, noise)
    steps_fns = [step_fn(i, make_optimizer(i, fused), imgs, noise, dtype) for i in impls]
    flops = [flops_per_image(s, config["batch"]) for s in steps_fns]  # also the warm-up step
    for s in steps_fns:
        s()
    times: list[list[float]] = [[] for _ in impls]
    for rep in range(reps):
        order = list(range(len(impls)))
        order = order[rep % len(order) :] + order[: rep % len(order)]
        for i in order:
            start = time.perf_counter()
            for _ in range(steps):
                steps_fns[i]()
            times[i].append((time.perf_counter() - start) / steps)
    rows = []
    for impl, t, f in zip(impls, times, flops, strict=True):
        rows.append(
            dict(config=key, impl=impl.name, dtype=dtype, batch=config["batch"], loss=losses[impl.name],
                 min_s=min(t), median_s=statistics.median(t), gflop_per_image=f / 1e9)
        )  # fmt: skip
    return rows


def peak_memory(key: str, name: str, dtype: str, fused: bool) -> float:
    """Peak resident memory (MiB) of a fresh process that builds one implementation and runs 3 steps."""
    code = (
        "import sys, resource, torch; sys.argv=['x'];"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r});"
        "import throughput as t;"
        f"impls, imgs, noise = t.build(t.CONFIGS[{key!r}], [{name!r}]);"
        f"s = t.step_fn(impls[0], t.make_optimizer(impls[0], {fused}), imgs, noise, {dtype!r});"
        "[s() for _ in range(3)];"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def print_table(rows: list[dict], markdown: bool) -> None:
    header = ["config", "implementation", "dtype", "img/s (best)", "img/s (median)", "ours/this (best)",
              "ours/this (median)", "GFLOP/img", "peak MiB"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in dict.fromkeys(r["config"] for r in rows):
        group = [r for r in rows if r["config"] == key]
        ours = next((r for r in group if r["impl"] == "mae_lightning"), None)
        for r in group:
            best, median = r["batch"] / r["min_s"], r["batch"] / r["median_s"]
            ratio_best = f"{r['min_s'] / ours['min_s']:.2f}x" if ours else "-"
            ratio_median = f"{r['median_s'] / ours['median_s']:.2f}x" if ours else "-"
            memory = f"{r['peak_mib']:.0f}" if "peak_mib" in r else "-"
            cells = [key, r["impl"], r["dtype"], f"{best:.1f}", f"{median:.1f}", ratio_best, ratio_median,
                     f"{r['gflop_per_image']:.2f}", memory]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines) if markdown else "\n".join(lines).replace("|", " "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--impls", nargs="+", default=list(BUILDERS), choices=list(BUILDERS))
    parser.add_argument("--reps", type=int, default=7, help="interleaved repetitions (min and median over them)")
    parser.add_argument("--steps", type=int, default=2, help="steps per repetition")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: CPU autocast")
    parser.add_argument("--no-fused", action="store_true", help="our AdamW with foreach instead of fused")
    parser.add_argument("--memory", action="store_true", help="measure peak memory (one process per impl)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    rows = []
    for key in args.configs:
        rows += time_config(key, args.impls, args.reps, args.steps, args.dtype, not args.no_fused)
        if args.memory:
            for row, name in zip(rows[-len(args.impls) :], args.impls, strict=True):
                row["peak_mib"] = peak_memory(key, name, args.dtype, not args.no_fused)
    print(f"# torch {torch.__version__}, {args.threads} threads, {args.reps} reps x {args.steps} steps")
    print_table(rows, args.markdown)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
