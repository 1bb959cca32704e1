"""FLOPs of one MAE training step (forward + backward) per image, by decoder setting: counted, not timed.

    python benchmarks/decoder_flops.py                      # ViT-B/16 at 224 px, the paper's 8 x 512 decoder

Rows: the paper's decoder (self-attention over every token), partial reconstruction (``decoder_keep_ratio``
0.5: half of the masked patches decoded and scored), the CrossMAE decoder (``decoder: cross``: mask-token
queries cross-attend to the visible tokens) and both. Counted with ``torch.utils.flop_counter`` on CPU.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from mae_lightning.models import mae_vit_base_patch16

SETTINGS = {
    "paper (self, all masked)": {},
    "partial, keep 0.5": {"decoder_keep_ratio": 0.5},
    "cross": {"decoder": "cross"},
    "cross + partial 0.5": {"decoder": "cross", "decoder_keep_ratio": 0.5},
}


def step_flops(overrides: dict, batch: int = 2) -> float:
    """Forward + backward FLOPs per image of one training step (``forward_train``)."""
    torch.manual_seed(0)
    model = mae_vit_base_patch16(norm_pix_loss=True, **overrides).train()
    imgs = torch.randn(batch, 3, 224, 224)
    with FlopCounterMode(display=False) as counter:
        loss = model.forward_train(imgs, 0.75).loss
        loss.backward()
    return counter.get_total_flops() / batch


def main() -> None:
    baseline = None
    print("| decoder | GFLOPs per image (fwd + bwd) | vs the paper's |")
    print("| --- | --- | --- |")
    for name, overrides in SETTINGS.items():
        flops = step_flops(overrides)
        baseline = baseline or flops
        print(f"| {name} | {flops / 1e9:.1f} | {flops / baseline:.2f}x |")


if __name__ == "__main__":
    main()
