"""The audio configs as a user runs them, on a few generated recordings: pretraining (configs/audio/fsdd.yaml) with
each masking strategy and the local decoder, fine-tuning and probing from its checkpoint alone, a multi-label
fine-tuning from a labels CSV, and the AudioSet recipe building and training a step."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from mae_lightning.cli import main
from tests.helpers import CONFIGS, QUIET

AUDIO = CONFIGS / "audio"
RATE = 8000


def write_recordings(root, per_class: int = 4) -> None:
    """Two 'digits' as tones of their own pitch, 0.3 to 0.7 s, in train/<class>/ and test/<class>/."""
    import soundfile

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label, pitch in (("0", 300.0), ("1", 900.0)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                t = np.arange(int(RATE * rng.uniform(0.3, 0.7))) / RATE
                wave = 0.5 * np.sin(2 * np.pi * pitch * t) + 0.01 * rng.normal(size=t.shape)
                soundfile.write(folder / f"{label}_{i}.wav", wave.astype(np.float32), RATE)


TINY = [
    "--data.init_args.img_size", "[32, 32]",
    "--data.init_args.batch_size", "4",
    "--data.init_args.num_workers", "0",
    "--data.init_args.stats_files", "8",
    "--trainer.max_epochs", "1",
    "--trainer.check_val_every_n_epoch", "1",
    *QUIET,
]  # fmt: skip
ENCODER = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def model_args(**sizes) -> list[str]:
    return [f"--model.init_args.model.init_args.{key}={value}" for key, value in sizes.items()]


@pytest.fixture
def recordings(tmp_path):
    write_recordings(tmp_path / "digits")
    return tmp_path / "digits"


@pytest.mark.parametrize(
    "masking",
    [
        "mae_lightning.RandomMasking",
        *(pytest.param(f"mae_lightning.{name}", marks=pytest.mark.slow)
          for name in ("TimeMasking", "FrequencyMasking", "TimeFrequencyMasking")),
    ],
)  # fmt: skip
def test_pretraining_runs_with_each_masking_strategy(recordings, run_in_tmp, masking):
    decoder = dict(decoder_embed_dim=16, decoder_depth=2, decoder_num_heads=2)
    cli = main(["fit", "--config", str(AUDIO / "fsdd.yaml"), "--data.init_args.root", str(recordings), *TINY,
                *model_args(**ENCODER, **decoder), "--model.init_args.model.init_args.masking", masking])  # fmt: skip
    assert cli.trainer.state.finished
    assert type(cli.model.model.masking).__name__ == masking.rpartition(".")[2]
    metrics = cli.trainer.callback_metrics
    assert np.isfinite(float(metrics["val/loss"])) and 0.0 <= float(metrics["val/knn_top1"]) <= 1.0
    assert list((run_in_tmp / "runs" / "audio_fsdd").rglob("reconstructions/epoch=0000.png"))


def test_fine_tuning_and_probing_start_from_the_pretraining_checkpoint_alone(recordings, run_in_tmp):
    decoder = dict(decoder_embed_dim=16, decoder_depth=2, decoder_num_heads=2, decoder="local")
    main(["fit", "--config", str(AUDIO / "fsdd.yaml"), "--data.init_args.root", str(recordings), *TINY,
          *model_args(**ENCODER, **decoder)])  # fmt: skip
    for config in ("fsdd_finetune.yaml", "fsdd_linprobe.yaml"):
        cli = main(["fit", "--config", str(AUDIO / config), "--data.init_args.root", str(recordings), *TINY,
                    "--model.init_args.model.init_args.num_classes", "2"])  # fmt: skip
        assert cli.model.model.embed_dim == 32 and len(cli.model.model.blocks) == 2  # read from the checkpoint
        assert 0.0 <= float(cli.trainer.callback_metrics["val/top1"]) <= 1.0
        # The fine-tuning normalises as its pretraining did: the statistics stored in the checkpoint.
        assert cli.datamodule.mean is not None


def test_multi_label_fine_tuning_from_a_labels_file(recordings, run_in_tmp):
    with open(recordings / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "labels"])
        for path in sorted(recordings.rglob("*.wav")):
            names = ["tone", "low" if path.parent.name == "0" else "high"]
            writer.writerow([str(path.relative_to(recordings)), ";".join(names)])
    cli = main(["fit", "--config", str(AUDIO / "fsdd_finetune.yaml"), "--data.init_args.root", str(recordings), *TINY,
                "--data.init_args.labels_file", str(recordings / "labels.csv"),
                "--model.init_args.pretrained", "null", *model_args(**ENCODER, num_classes=3),
                "--model.init_args.multilabel", "true", "--model.init_args.label_smoothing", "0.0"])  # fmt: skip
    assert cli.datamodule.classes == ["high", "low", "tone"]
    assert 0.0 <= float(cli.trainer.callback_metrics["val/mAP"]) <= 1.0


def test_the_audioset_recipe_builds_and_trains_a_step(recordings, run_in_tmp):
    with open(recordings / "labels.csv", "w", newline="") as f:
        f.write("file,labels\n")
        for path in sorted(recordings.rglob("*.wav")):
            f.write(f"{path.relative_to(recordings)},speech\n")
    sizes = dict(patch_size=16, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=2,
                 decoder_num_heads=2)  # fmt: skip
    cli = main(["fit", "--config", str(AUDIO / "audioset_vit_base.yaml"), "--data.init_args.root", str(recordings),
                "--data.init_args.val_dir", "test", "--data.init_args.labels_file", str(recordings / "labels.csv"),
                "--data.init_args.img_size", "[128, 64]", "--data.init_args.batch_size", "2",
                "--data.init_args.num_workers", "0", "--data.init_args.stats_files", "4",
                "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
                "--trainer.precision", "32", "--trainer.fast_dev_run", "1", *model_args(**sizes), *QUIET])  # fmt: skip
    module, data = cli.model, cli.datamodule
    assert (module.model.decoder, module.mask_ratio, module.model.norm_pix_loss) == ("local", 0.8, True)
    assert (data.features.sample_rate, data.features.n_mels, data.features.fft_size) == (16000, 128, 1024)
    assert cli.config_init["fit"]["trainer"]["max_epochs"] == 32
    assert cli.trainer.global_step == 1
