"""The model card (``README.md``) of an exported transformers folder: what was trained, on what, how well, how to load.

Every fact comes from the checkpoint or the run folder it sits in: the hyperparameters the command line recorded,
the run's ``config.yaml`` (the resolved config the CLI saves), the last values of a CSV logger's ``metrics.csv``
(validation loss, kNN, probe and fine-tuning results) and the checkpoint callback's best score. What is not there
is said to be absent, never guessed. The license is left for the publisher to set.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mae_lightning.checkpoint import Checkpoint

# Logged metrics worth a model card: validation and test results, kNN monitor, probes, fine-tuning.
_REPORTED = ("val/", "test/", "knn", "probe", "finetune")
# How far above the checkpoint's folder a run folder's config.yaml and metrics.csv are looked for.
_RUN_FOLDER_DEPTH = 1


def model_card(checkpoint: Checkpoint, config: Mapping[str, Any], repo_id: str | None = None) -> str:
    """The ``README.md`` of the folder whose ``config.json`` is ``config``, exported from ``checkpoint``."""
    architecture = config["architectures"][0]
    repo = repo_id or "<owner>/<name>"
    run_config = _run_config(checkpoint.path)
    sizes = {key: config[key] for key in ("image_size", "patch_size", "num_channels", "hidden_size")}
    sizes |= {key: config[key] for key in ("num_hidden_layers", "num_attention_heads")}
    lines = [
        "---",
        "# license: set the license of these weights (e.g. apache-2.0; the official MAE weights are cc-by-nc-4.0)",
        "library_name: transformers",
        f"pipeline_tag: {'image-classification' if 'Classification' in architecture else 'image-feature-extraction'}",
        "tags: [vit, vit-mae, masked-autoencoder, mae-lightning]",
        "---",
        "",
        f"# {repo.split('/')[-1]}",
        "",
        f"A ViT exported by mae_lightning as transformers' `{architecture}`, from `{checkpoint.path.name}`.",
        "",
        "## What was trained on what",
        "",
        f"- model: {_model_line(checkpoint, config)}",
        f"- sizes: {json.dumps(sizes)}",
        f"- data: {_data_line(run_config)}",
        f"- training: {_progress_line(checkpoint)}",
        "",
        "## Results the run logged",
        "",
        *_metrics_lines(checkpoint),
        "",
        "## Load it",
        "",
        *_load_lines(architecture, repo),
        "",
        "## Resolved config",
        "",
        *_config_lines(checkpoint, run_config),
        "",
        "## License",
        "",
        "Not set: state it in the `license` field of this card's header before sharing the weights.",
        "",
    ]
    return "\n".join(lines)


def _model_line(checkpoint: Checkpoint, config: Mapping[str, Any]) -> str:
    if config["model_type"] == "vit_mae":
        return (
            f"Masked Autoencoder (He et al., 2021), mask ratio {config['mask_ratio']}, "
            f"{'per-patch normalised' if config['norm_pix_loss'] else 'raw'} pixel targets, decoder "
            f"{config['decoder_num_hidden_layers']} blocks of width {config['decoder_hidden_size']}"
        )
    model = checkpoint.hparams.get("model")
    kind = model.get("class_path", "") if isinstance(model, Mapping) else ""
    if "id2label" in config:
        return f"ViT classifier of {len(config['id2label'])} classes (cls token)" + (f", {kind}" if kind else "")
    return "ViT encoder (the cls token after the final norm is the image embedding)"


def _data_line(run_config: Mapping[str, Any] | None) -> str:
    data = (run_config or {}).get("data")
    if not isinstance(data, Mapping):
        return "not recorded (no config.yaml of the run beside the checkpoint)"
    args = data.get("init_args") or {}
    shown = {k: v for k, v in args.items() if k in ("root", "name", "img_size", "in_chans", "batch_size") and v}
    return f"`{data.get('class_path', '?')}` " + ", ".join(f"{k}={v}" for k, v in shown.items())


def _progress_line(checkpoint: Checkpoint) -> str:
    contents = checkpoint.contents if isinstance(checkpoint.contents, Mapping) else {}
    if "epoch" not in contents:
        return "not recorded (not a Lightning checkpoint)"
    return f"{contents['epoch'] + 1} epochs, {contents.get('global_step', '?')} optimiser steps"


def _metrics_lines(checkpoint: Checkpoint) -> list[str]:
    lines = []
    for key, state in (checkpoint.contents.get("callbacks") or {}).items() if _is_map(checkpoint.contents) else ():
        if str(key).startswith("ModelCheckpoint") and _is_map(state) and state.get("best_model_score") is not None:
            lines.append(f"- best {state.get('monitor')}: {float(state['best_model_score']):.6g} (checkpoint callback)")
    metrics = _last_logged(checkpoint.path)
    if metrics:
        source, values = metrics
        lines += [f"- {name}: {value} (last logged, {source})" for name, value in values.items()]
    return lines or ["None found: no CSV logger's metrics.csv beside the checkpoint and no checkpoint callback score."]


def _load_lines(architecture: str, repo: str) -> list[str]:
    argument = "init_weights" if architecture == "ViTMAEForPreTraining" else "pretrained"
    extra = ", add_pooling_layer=False" if architecture == "ViTModel" else ""
    return [
        "In mae_lightning (downloaded once into the run folder):",
        "",
        "```bash",
        f"python -m mae_lightning fit --config <config.yaml> --model.init_args.{argument} hf:{repo}",
        "```",
        "",
        "In transformers:",
        "",
        "```python",
        f"from transformers import {architecture}",
        "",
        f'model = {architecture}.from_pretrained("{repo}"{extra})',
        "```",
        "",
        "In timm (the encoder, converted by mae_lightning from a downloaded copy of this repository):",
        "",
        "```bash",
        "python -m mae_lightning.export <downloaded folder>/model.safetensors vit_encoder.safetensors",
        "```",
    ]


def _config_lines(checkpoint: Checkpoint, run_config: Mapping[str, Any] | None) -> list[str]:
    resolved = run_config or checkpoint.hparams
    if not resolved:
        return ["Not recorded: the checkpoint was not written by the command line."]
    text = yaml.safe_dump(json.loads(json.dumps(resolved, default=str)), sort_keys=False)
    return ["```yaml", text.rstrip(), "```"]


def _run_folders(path: Path) -> list[Path]:
    """The checkpoint's folder and those above it, nearest first (``<run>/checkpoints/last.ckpt`` -> ..., <run>)."""
    return list(path.parents)[: _RUN_FOLDER_DEPTH + 1] if path.is_file() else []


def _run_config(path: Path) -> dict | None:
    for folder in _run_folders(path):
        found = folder / "config.yaml"
        if found.is_file():
            try:
                loaded = yaml.safe_load(found.read_text())
            except yaml.YAMLError:
                return None
            return loaded if isinstance(loaded, dict) else None
    return None


def _last_logged(path: Path) -> tuple[str, dict[str, str]] | None:
    """The newest ``metrics.csv`` in the run folder: the last value logged in each reported column."""
    for folder in _run_folders(path):
        found = [*folder.glob("metrics.csv"), *folder.glob("*/metrics.csv")]
        files = sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
        if files:
            with files[0].open(newline="") as handle:
                rows = list(csv.DictReader(handle))
            last = {}
            for row in rows:
                last |= {k: v for k, v in row.items() if k and v not in (None, "") and k.startswith(_REPORTED)}
            return str(files[0].relative_to(folder)), last
    return None


def _is_map(value: object) -> bool:
    return isinstance(value, Mapping)
