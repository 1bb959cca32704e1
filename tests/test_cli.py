"""The command line and the shipped configs, end to end: the real LightningCLI, Trainer, files on disk.

Every run goes through ``mae_lightning.cli.main`` in-process (or ``python -m mae_lightning`` in a
subprocess) with the working directory in a temporary folder and absolute config paths, so nothing
is written into the repository. The W&B tests are in ``runtime/test_wandb_run.py``.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mae_lightning import MAEPretraining, MaskedAutoencoder
from mae_lightning.cli import main
from mae_lightning.models import presets
from tests.helpers import CONFIGS, DEBUG, FAST, QUICKSTART

pytestmark = pytest.mark.usefixtures("run_in_tmp")

# The groups of YAML files in configs/ and how each is used (see test_every_config_belongs_to_a_group).
TOP_LEVEL = sorted(CONFIGS.glob("*.yaml"))  # fit --config <file>
MODEL_PRESETS = sorted(CONFIGS.glob("model/*.yaml"))  # --model.init_args.model <file>
LOGGERS = sorted(CONFIGS.glob("logger/*_logger.yaml"))  # trainer.logger: <file>, named by configs and fragments
FRAGMENTS = sorted(set(CONFIGS.glob("logger/*.yaml")) - set(LOGGERS)) + sorted(CONFIGS.glob("presets/*.yaml"))
EVALUATION = sorted(CONFIGS.glob("linprobe/*.yaml")) + sorted(CONFIGS.glob("finetune/*.yaml"))  # fit --config <file>
# The ImageNet recipes: fit --config imagenet/<recipe>.yaml --config imagenet/<recipe>_vit_<size>.yaml
IMAGENET_RECIPES = ("pretrain", "finetune", "linprobe")
IMAGENET_SIZES = ("base", "large", "huge")
IMAGENET = sorted(CONFIGS.glob("imagenet/*.yaml"))
SWEEPS = sorted(CONFIGS.glob("sweeps/*.yaml"))  # `wandb sweep <file>`; checked in tests/end_to_end/test_sweeps.py
# Segmentation and audio: fit --config <file>; segment/predict.yaml stacks on segment/camvid.yaml (run end to end in
# tests/end_to_end/test_segmentation_runs.py and test_audio_runs.py).
TASKS = sorted(CONFIGS.glob("segment/*.yaml")) + sorted(CONFIGS.glob("audio/*.yaml"))


# The paper's encoders (patch_size, embed_dim, depth, num_heads) and fine-tuning recipes (base lr, layer decay,
# drop path, epochs) per size.
PAPER_ENCODERS = {"base": (16, 768, 12, 12), "large": (16, 1024, 24, 16), "huge": (14, 1280, 32, 16)}
PAPER_FINETUNING = {"base": (5.0e-4, 0.65, 0.1, 100), "large": (1.0e-3, 0.75, 0.2, 50), "huge": (1.0e-3, 0.75, 0.3, 50)}


def imagenet_config(recipe: str, size: str) -> list[str]:
    """The ``--config`` arguments of one ImageNet run: the recipe, then what its size changes."""
    folder = CONFIGS / "imagenet"
    return ["--config", str(folder / f"{recipe}.yaml"), "--config", str(folder / f"{recipe}_vit_{size}.yaml")]


def _rel(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


def print_config(capsys: pytest.CaptureFixture, *args: str) -> dict:
    """``fit <args> --print_config``: must exit with code 0; returns the printed config."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    config = yaml.safe_load(captured.out)
    assert isinstance(config, dict), captured.out
    return config


def assert_contains(printed, fragment, where: str = "") -> None:
    """Every value of ``fragment`` (a YAML file's content) is the one in ``printed`` (the resolved config)."""
    if isinstance(fragment, dict):
        assert isinstance(printed, dict), f"{where}: {printed!r} is not a mapping"
        for key, value in fragment.items():
            if key.endswith("+"):  # jsonargparse appends these items to the list the config had
                key, printed_list = key[:-1], printed.get(key[:-1])
                assert isinstance(printed_list, list), f"{where}.{key} is not a list in the resolved config"
                assert_contains(printed_list[len(printed_list) - len(value) :], value, f"{where}.{key}")
                continue
            assert key in printed, f"{where}.{key} is missing from the resolved config"
            assert_contains(printed[key], value, f"{where}.{key}")
    elif isinstance(fragment, list) and fragment and isinstance(fragment[0], dict):
        # jsonargparse merges lists of classes item by item: unset values of an item keep their defaults
        assert isinstance(printed, list) and len(printed) == len(fragment), f"{where}: {printed!r} vs {fragment!r}"
        for i, (printed_item, fragment_item) in enumerate(zip(printed, fragment, strict=True)):
            assert_contains(printed_item, fragment_item, f"{where}[{i}]")
    else:
        assert printed == fragment, f"{where}: resolved {printed!r}, the YAML says {fragment!r}"


def config_error(capsys: pytest.CaptureFixture, *args: str) -> str:
    """Run ``fit`` on the quickstart with ``args``; it must stop with code 2 and one readable error line."""
    # fast_dev_run: if the error is not caught, the run still ends in seconds (and the test fails).
    argv = ["fit", "--config", QUICKSTART, *FAST, "--trainer.fast_dev_run", "true", *args]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    assert lines[-1].startswith("mae_lightning: error: "), err
    assert err.count("mae_lightning: error:") == 1, err
    return lines[-1]


# --------------------------------------------------------------------------- every YAML parses


def test_every_config_belongs_to_a_group():
    """A new YAML in configs/ must be covered by one of the parse tests below (or this test is updated)."""
    found = {p for p in CONFIGS.rglob("*") if p.suffix in (".yaml", ".yml")}
    grouped = set(TOP_LEVEL) | set(MODEL_PRESETS) | set(LOGGERS) | set(FRAGMENTS) | set(EVALUATION) | set(SWEEPS)
    grouped |= set(TASKS)
    grouped |= {
        Path(arg) for recipe in IMAGENET_RECIPES for size in IMAGENET_SIZES for arg in imagenet_config(recipe, size)
    }
    assert sorted(map(_rel, found - grouped)) == [], "YAML files that no test in tests/test_cli.py parses"
    assert TOP_LEVEL and MODEL_PRESETS and LOGGERS and FRAGMENTS and EVALUATION and IMAGENET


@pytest.mark.parametrize("path", TOP_LEVEL, ids=_rel)
def test_top_level_config_parses(path: Path, capsys):
    config = print_config(capsys, "--config", str(path))
    assert config["model"]["class_path"] == "mae_lightning.MAEPretraining"
    assert config["model"]["init_args"]["model"]["class_path"] == "mae_lightning.MaskedAutoencoder"
    assert config["data"]["class_path"].startswith("mae_lightning.")
    assert config["data"]["class_path"].endswith("DataModule")


@pytest.mark.parametrize("path", TASKS, ids=_rel)
def test_segmentation_and_audio_configs_parse(path: Path, capsys):
    first = [CONFIGS / "segment" / "camvid.yaml"] if path.name == "predict.yaml" else []
    config = print_config(capsys, *(arg for file in (*first, path) for arg in ("--config", str(file))))
    assert config["model"]["class_path"].startswith("mae_lightning.")
    assert config["data"]["class_path"].startswith("mae_lightning.")
    assert config["data"]["class_path"].endswith("DataModule")


@pytest.mark.parametrize("path", EVALUATION, ids=_rel)
def test_evaluation_config_parses(path: Path, capsys):
    config = print_config(capsys, "--config", str(path))
    kind = "LinearProbe" if path.parent.name == "linprobe" else "FineTune"
    assert config["model"]["class_path"] == f"mae_lightning.{kind}"
    assert config["model"]["init_args"]["model"]["class_path"] == "mae_lightning.VisionTransformer"
    assert config["data"]["class_path"].endswith("DataModule")


@pytest.mark.parametrize("recipe", IMAGENET_RECIPES)
@pytest.mark.parametrize("size", IMAGENET_SIZES)
def test_imagenet_recipe_and_size_compose(recipe: str, size: str, capsys):
    config = print_config(capsys, *imagenet_config(recipe, size))
    module = {"pretrain": "MAEPretraining", "finetune": "FineTune", "linprobe": "LinearProbe"}[recipe]
    network = "MaskedAutoencoder" if recipe == "pretrain" else "VisionTransformer"
    assert config["model"]["class_path"] == f"mae_lightning.{module}"
    assert config["model"]["init_args"]["model"]["class_path"] == f"mae_lightning.{network}"
    assert config["data"]["class_path"] == "mae_lightning.ImageFolderDataModule"
    # Each size file names its run: the folder and the W&B run (the first --config is the shared recipe).
    name = f"imagenet_vit_{size}" if recipe == "pretrain" else f"{recipe}_imagenet_vit_{size}"
    assert config["trainer"]["default_root_dir"] == f"runs/{name}"
    assert config["trainer"]["logger"]["class_path"] == "mae_lightning.WandbLogger"
    assert config["trainer"]["logger"]["init_args"]["name"] == name
    if recipe != "pretrain":  # the encoder pretrained by the same size's recipe
        assert config["model"]["init_args"]["pretrained"] == f"runs/imagenet_vit_{size}/checkpoints/last.ckpt"
        encoder = config["model"]["init_args"]["model"]["init_args"]
        assert tuple(encoder[k] for k in ("patch_size", "embed_dim", "depth", "num_heads")) == PAPER_ENCODERS[size]
    trainer, data = config["trainer"], config["data"]["init_args"]
    effective_batch = (
        data["batch_size"] * trainer["devices"] * trainer["num_nodes"] * trainer["accumulate_grad_batches"]
    )
    assert effective_batch == {"pretrain": 4096, "finetune": 1024, "linprobe": 16384}[recipe]
    if recipe == "finetune":  # the official FINETUNE.md per size: base lr, layer decay, drop path, epochs
        module = config["model"]["init_args"]
        drop_path = module["model"]["init_args"]["drop_path_rate"]
        assert (module["base_lr"], module["layer_decay"], drop_path, trainer["max_epochs"]) == PAPER_FINETUNING[size]


@pytest.mark.parametrize("path", LOGGERS, ids=_rel)
def test_logger_composes_with_quickstart(path: Path, capsys):
    logger = yaml.safe_load(path.read_text())
    config = print_config(capsys, "--config", QUICKSTART, "--trainer.logger", str(path))
    assert_contains(config["trainer"]["logger"], logger, "trainer.logger")


@pytest.mark.parametrize("path", MODEL_PRESETS, ids=_rel)
def test_model_preset_composes_with_quickstart(path: Path, capsys):
    preset = yaml.safe_load(path.read_text())
    # The geometry is stated once, in `data`, and linked into the model: a preset must not set it.
    assert not {"img_size", "in_chans"} & set(preset.get("init_args", {}))
    config = print_config(capsys, "--config", QUICKSTART, "--model.init_args.model", str(path))
    assert_contains(config["model"]["init_args"]["model"], preset, "model.init_args.model")


@pytest.mark.parametrize("path", FRAGMENTS, ids=_rel)
def test_fragment_composes_with_quickstart(path: Path, capsys):
    fragment = yaml.safe_load(path.read_text())
    assert isinstance(fragment, dict) and fragment
    config = print_config(capsys, "--config", QUICKSTART, "--config", str(path))
    logger = fragment.get("trainer", {}).get("logger")
    if isinstance(logger, str):  # a logger file named by path, relative to the fragment
        fragment["trainer"]["logger"] = yaml.safe_load((path.parent / logger).read_text())
    assert_contains(config, fragment)


# --------------------------------------------------------------------------- model presets: YAML == Python


def _preset_functions() -> dict:
    # The official aliases (mae_vit_base_patch16_dec512d8b, ...) are the same functions under a second name.
    return {
        name: fn
        for name, fn in vars(presets).items()
        if name.startswith("mae_vit_") and callable(fn) and fn.__name__ == name
    }


def _architecture(model: MaskedAutoencoder) -> dict:
    """The constructor's architecture arguments, read back from the built modules."""
    embed_dim = model.patch_embed.proj.out_channels
    return {
        "patch_size": model.patch_embed.proj.kernel_size[0],
        "embed_dim": embed_dim,
        "depth": len(model.blocks),
        "num_heads": model.blocks[0].attn.num_heads,
        "mlp_ratio": model.blocks[0].mlp.fc1.out_features / embed_dim,
        "decoder_embed_dim": model.decoder_embed.out_features,
        "decoder_depth": len(model.decoder_blocks),
        "decoder_num_heads": model.decoder_blocks[0].attn.num_heads,
    }


def test_every_python_preset_has_a_yaml():
    assert sorted(_preset_functions()) == sorted(p.stem for p in MODEL_PRESETS)


@pytest.mark.parametrize("path", MODEL_PRESETS, ids=_rel)
def test_model_yaml_equals_python_preset(path: Path):
    preset = yaml.safe_load(path.read_text())
    assert preset["class_path"] == "mae_lightning.MaskedAutoencoder"
    init_args = preset["init_args"]
    function = _preset_functions().get(path.stem)
    assert function is not None, f"no function {path.stem} in mae_lightning/models/presets.py"
    img_size = 2 * init_args["patch_size"]
    # On the meta device: the real constructors, without allocating ViT-Huge.
    with torch.device("meta"):
        from_python = function(img_size=img_size)
        from_yaml = MaskedAutoencoder(img_size=img_size, **init_args)
    python_arch = _architecture(from_python)
    # norm_pix_loss is a training choice that the official presets leave to the caller, not architecture.
    unchecked = set(init_args) - set(python_arch) - {"norm_pix_loss"}
    assert not unchecked, f"{_rel(path)} sets {unchecked}, which this test does not compare"
    assert {key: init_args[key] for key in init_args if key in python_arch} == {
        key: python_arch[key] for key in init_args if key in python_arch
    }
    # The defaults the YAML leaves out (mlp_ratio, ...) agree as well: the same modules, the same shapes.
    assert _architecture(from_yaml) == python_arch
    assert {k: v.shape for k, v in from_yaml.state_dict().items()} == {
        k: v.shape for k, v in from_python.state_dict().items()
    }


# --------------------------------------------------------------------------- the paper recipe


@pytest.mark.parametrize("name", sorted(PAPER_ENCODERS))
def test_imagenet_config_is_the_paper_recipe(name: str, capsys):
    config = print_config(capsys, *imagenet_config("pretrain", name))
    module = config["model"]["init_args"]
    net = module["model"]["init_args"]
    data = config["data"]["init_args"]
    trainer = config["trainer"]

    assert module["mask_ratio"] == 0.75
    assert module["base_lr"] == pytest.approx(1.5e-4, rel=1e-12)
    assert module["lr"] is None  # the lr is scaled from base_lr by the effective batch
    assert module["min_lr"] == 0.0
    assert module["weight_decay"] == 0.05
    assert module["betas"] == [0.9, 0.95]
    assert module["warmup_epochs"] == 40
    assert net["norm_pix_loss"] is True
    assert (net["patch_size"], net["embed_dim"], net["depth"], net["num_heads"]) == PAPER_ENCODERS[name]
    assert (net["decoder_embed_dim"], net["decoder_depth"], net["decoder_num_heads"]) == (512, 8, 16)
    assert net["mlp_ratio"] == 4.0

    assert config["data"]["class_path"] == "mae_lightning.ImageFolderDataModule"
    assert data["img_size"] == 224
    assert data["in_chans"] == 3
    assert data["crop_scale"] == [0.2, 1.0]
    assert data["horizontal_flip"] is True

    assert trainer["precision"] == "bf16-mixed"
    assert trainer["strategy"] == "ddp"
    assert trainer["max_epochs"] == 800
    effective_batch = (
        data["batch_size"] * trainer["devices"] * trainer["num_nodes"] * trainer["accumulate_grad_batches"]
    )
    assert effective_batch == 4096


# --------------------------------------------------------------------------- runs


# A reconstruction grid every epoch, so that a run that writes pictures writes one.
DRAW_EVERY_EPOCH = ["--trainer.callbacks+", '{"class_path": "mae_lightning.ReconstructionCallback"}']


def test_quickstart_fast_dev_run_writes_nothing(tmp_path: Path):
    cli = main(["fit", "--config", QUICKSTART, *FAST, "--trainer.fast_dev_run", "true", *DRAW_EVERY_EPOCH])
    trainer = cli.trainer
    assert trainer.state.finished
    assert trainer.global_step == 1
    assert torch.isfinite(trainer.callback_metrics["train/loss_step"])
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
    assert torch.isfinite(trainer.callback_metrics["val/recon_psnr_masked"])  # drawn, not written
    assert not list(tmp_path.iterdir())  # the working directory is untouched


def test_run_without_logger_writes_only_into_its_folder(tmp_path: Path):
    run_dir = tmp_path / "elsewhere"
    (tmp_path / "cwd").mkdir()
    os.chdir(tmp_path / "cwd")
    limits = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    # Lightning's default ModelCheckpoint (the quickstart's own names a folder of its own).
    callbacks = ["--trainer.callbacks", '[{"class_path": "mae_lightning.ReconstructionCallback"}]']
    args = ["--trainer.logger", "false", "--trainer.default_root_dir", str(run_dir), *limits, *callbacks]
    main(["fit", "--config", QUICKSTART, *FAST, "--data.init_args.img_size", "16", *args])
    assert not list((tmp_path / "cwd").iterdir())
    written = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    assert written == ["checkpoints/epoch=0-step=2.ckpt", "config.yaml", "reconstructions/epoch=0000.png"]


@pytest.mark.parametrize(("given", "expected"), [("1", 1), ("3", 3), ("1.0", 1.0), ("0.5", 0.5)])
def test_limit_batches_integer_is_a_count(given: str, expected, capsys):
    config = print_config(capsys, "--config", QUICKSTART, "--trainer.limit_val_batches", given)
    assert config["trainer"]["limit_val_batches"] == expected and type(config["trainer"]["limit_val_batches"]) is type(
        expected
    )


def test_limit_val_batches_1_runs_one_validation_batch():
    limits = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]
    cli = main(["fit", "--config", QUICKSTART, *FAST, "--data.init_args.img_size", "16", *limits])
    assert cli.trainer.num_val_batches == [1]
    assert cli.trainer.fit_loop.epoch_loop.val_loop.batch_progress.total.completed == 1


def test_debug_preset_runs_a_few_steps(tmp_path: Path):
    cli = main(["fit", "--config", QUICKSTART, "--config", DEBUG, *FAST, "--data.init_args.img_size", "16"])
    trainer = cli.trainer
    assert trainer.state.finished
    assert trainer.global_step == 4  # limit_train_batches: 4, max_epochs: 1
    assert trainer.num_val_batches == [2]
    assert trainer.logger is None
    assert trainer.checkpoint_callback is None
    assert not list(tmp_path.rglob("*.ckpt"))
    assert torch.isfinite(trainer.callback_metrics["val/loss"])


# One short real run, shared by the tests of its files: 16x16 images (not the model's 224 default).
SHORT_RUN_BATCH, SHORT_RUN_STEPS, SHORT_RUN_IMG = 16, 3, 16


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("short_run")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(root)
        monkeypatch.setattr(sys, "argv", ["mae_lightning"])
        cli = main(
            [
                "fit",
                "--config",
                QUICKSTART,
                *FAST,
                "--data.init_args.img_size",
                str(SHORT_RUN_IMG),
                "--trainer.max_epochs",
                "1",
                "--trainer.limit_train_batches",
                str(SHORT_RUN_STEPS),
                "--trainer.limit_val_batches",
                "2",
                "--trainer.log_every_n_steps",
                "1",
                "--trainer.logger.init_args.save_dir",
                str(root / "logs"),
            ]
        )
    return cli, root


def test_short_run_saves_the_resolved_config(short_run, capsys):
    cli, root = short_run
    log_dir = Path(cli.trainer.log_dir)
    assert log_dir == root / "logs" / "version_0"  # the quickstart's CSV logger adds no folder of its own
    saved_path = log_dir / "config.yaml"
    saved = yaml.safe_load(saved_path.read_text())
    assert saved["model"]["class_path"] == "mae_lightning.MAEPretraining"
    assert saved["model"]["init_args"]["base_lr"] == 1.5e-3
    assert saved["data"]["class_path"] == "mae_lightning.DigitsDataModule"
    assert saved["data"]["init_args"]["img_size"] == SHORT_RUN_IMG
    assert saved["data"]["init_args"]["batch_size"] == SHORT_RUN_BATCH
    assert saved["trainer"]["limit_train_batches"] == SHORT_RUN_STEPS
    assert saved["trainer"]["logger"]["init_args"]["save_dir"] == str(root / "logs")
    # The saved file is a config that reproduces the run.
    assert print_config(capsys, "--config", str(saved_path)) == saved


def test_short_run_logs_metrics_and_warmup_lr(short_run):
    cli, _ = short_run
    with open(Path(cli.trainer.log_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0])
    assert {"train/loss_step", "train/loss_epoch", "val/loss", "lr", "train/images_per_sec"} <= columns
    assert any(row["val/loss"] for row in rows)
    lrs = [float(row["lr"]) for row in rows if row["lr"]]
    assert len(lrs) == SHORT_RUN_STEPS
    # warmup_epochs 3 from the quickstart: the lr rises linearly from 0, far below the peak.
    peak = 1.5e-3 * SHORT_RUN_BATCH / 256
    assert cli.model.peak_lr == pytest.approx(peak)
    assert lrs[0] < peak
    expected = [peak * (step / SHORT_RUN_STEPS) / 3 for step in range(SHORT_RUN_STEPS)]
    assert lrs == pytest.approx(expected, rel=1e-5, abs=1e-12)


def test_checkpoint_rebuilds_the_module_alone(short_run):
    cli, root = short_run
    # The quickstart's ModelCheckpoint: a fixed folder, where the evaluation configs find last.ckpt.
    checkpoints = sorted((root / "runs" / "quickstart" / "checkpoints").glob("*.ckpt"))
    assert [p.name for p in checkpoints] == ["epoch=0-step=3.ckpt", "last.ckpt"]
    loaded = MAEPretraining.load_from_checkpoint(checkpoints[0])  # no model=, no other argument
    # The geometry comes from `data` through the CLI link and must travel with the checkpoint.
    assert loaded.model.img_size == (SHORT_RUN_IMG, SHORT_RUN_IMG)
    assert loaded.model.in_chans == 1
    assert loaded.mask_ratio == cli.model.mask_ratio
    assert loaded.base_lr == cli.model.base_lr
    trained, restored = cli.model.state_dict(), loaded.state_dict()
    assert list(restored) == list(trained)
    for key, value in trained.items():
        assert torch.equal(restored[key], value), key


# --------------------------------------------------------------------------- python -m mae_lightning


def _module(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "mae_lightning", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_module_help(tmp_path: Path):
    result = _module(["--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    for subcommand in ("fit", "validate", "test", "predict"):
        assert subcommand in result.stdout


def test_module_fit_help(tmp_path: Path):
    result = _module(["fit", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    for option in ("--config", "--model", "--data", "--trainer.max_epochs", "--ckpt_path"):
        assert option in result.stdout
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- one-line errors


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _image_folder(root: Path, count: int = 4) -> str:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), mode="RGB").save(root / f"{i}.png")
    return str(root)


# (id, arguments given a tmp folder, words the error line must contain)
CONFIG_ERRORS = [
    (
        "unknown model key in a yaml",
        lambda tmp: ["--config", _write(tmp / "bad.yaml", "model: {init_args: {mask_ratoi: 0.5}}\n")],
        ["mask_ratoi"],
    ),
    (
        "unknown trainer key in a yaml",
        lambda tmp: ["--config", _write(tmp / "bad.yaml", "trainer: {max_epoch: 3}\n")],
        ["max_epoch"],
    ),
    (
        "unknown nested model key in a yaml",
        lambda tmp: ["--config", _write(tmp / "bad.yaml", "model: {init_args: {model: {init_args: {depht: 3}}}}\n")],
        ["depht"],
    ),
    ("mask_ratio 0", lambda tmp: ["--model.init_args.mask_ratio", "0"], ["mask_ratio", "(0, 1)"]),
    ("mask_ratio 1.5", lambda tmp: ["--model.init_args.mask_ratio", "1.5"], ["mask_ratio", "1.5"]),
    ("img_size 30 with patch 4", lambda tmp: ["--data.init_args.img_size", "30"], ["img_size", "patch_size=4"]),
    ("batch_size 0", lambda tmp: ["--data.init_args.batch_size", "0"], ["batch_size", "0"]),
    ("batch_size not a number", lambda tmp: ["--data.init_args.batch_size", "abc"], ["batch_size", "abc"]),
    ("negative base_lr", lambda tmp: ["--model.init_args.base_lr=-1.5e-4"], ["base_lr", "positive", "-0.00015"]),
    (
        "missing data root",
        lambda tmp: ["--data", "mae_lightning.ImageFolderDataModule", "--data.init_args.root", str(tmp / "nowhere")],
        ["nowhere", "does not exist"],
    ),
    (
        "missing shard location",
        lambda tmp: ["--data", "mae_lightning.StreamingDataModule", "--data.init_args.root", str(tmp / "nowhere")],
        ["nowhere", "no shards", "python -m mae_lightning.prepare"],
    ),
    (
        "in_chans 2 for image files",
        lambda tmp: [
            "--data",
            "mae_lightning.ImageFolderDataModule",
            "--data.init_args.root",
            _image_folder(tmp / "images"),
            "--data.init_args.in_chans",
            "2",
        ],
        ["in_chans=2"],
    ),
    ("unknown data class", lambda tmp: ["--data", "mae_lightning.NoSuchDataModule"], ["NoSuchDataModule"]),
    (
        "ckpt_path that does not exist",
        lambda tmp: ["--ckpt_path", str(tmp / "missing.ckpt")],
        ["ckpt_path", "missing.ckpt", "does not exist", "`last`"],
    ),
    (
        "grid masking at a ratio it cannot make",
        lambda tmp: [
            "--model.init_args.model.init_args.masking",
            '{"class_path": "mae_lightning.GridMasking"}',
            "--model.init_args.mask_ratio",
            "0.6",
        ],
        ["mask_ratio", "0.6"],
    ),
    (
        "init_weights that does not exist",
        lambda tmp: ["--model.init_args.init_weights", str(tmp / "mae_pretrain.pth")],
        ["model.init_args.init_weights", "mae_pretrain.pth", "does not exist"],
    ),
    (
        "max_bad_image_fraction above 1",
        lambda tmp: ["--data.init_args.max_bad_image_fraction", "1.5"],
        ["max_bad_image_fraction", "[0, 1]", "1.5"],
    ),
]


@pytest.mark.parametrize(("make_args", "words"), [c[1:] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS])
def test_config_error_is_one_clear_line(make_args, words, tmp_path: Path, capsys):
    line = config_error(capsys, *make_args(tmp_path))
    for word in words:
        assert word in line, line


# The model's geometry is linked from `data`; a contradicting value given for the model must not win.
GEOMETRY_OVERRIDES = [
    ("img_size on the command line", lambda tmp: ["--model.init_args.model.init_args.img_size", "64"]),
    (
        "img_size in a yaml",
        lambda tmp: ["--config", _write(tmp / "m.yaml", "model: {init_args: {model: {init_args: {img_size: 64}}}}\n")],
    ),
    ("in_chans on the command line", lambda tmp: ["--model.init_args.model.init_args.in_chans", "3"]),
]


@pytest.mark.parametrize("make_args", [c[1] for c in GEOMETRY_OVERRIDES], ids=[c[0] for c in GEOMETRY_OVERRIDES])
def test_model_geometry_cannot_contradict_the_data(make_args, tmp_path: Path, capsys):
    argv = ["fit", "--config", QUICKSTART, *make_args(tmp_path), *FAST, "--trainer.fast_dev_run", "true"]
    try:
        cli = main(argv)
    except SystemExit as exit_info:  # refusing the contradiction is safe as well
        err = capsys.readouterr().err
        assert exit_info.code == 2, err
        assert err.strip().splitlines()[-1].startswith("mae_lightning: error: ")
        return
    # Otherwise the data's values are the ones used, by the model and in its saved hyperparameters.
    assert cli.datamodule.img_size == (32, 32) and cli.datamodule.in_chans == 1
    assert cli.model.model.img_size == (32, 32)
    assert cli.model.model.in_chans == 1
    assert cli.trainer.state.finished
    saved = cli.model.hparams["model"]["init_args"]  # what a checkpoint rebuilds the model from
    assert (saved["img_size"], saved["in_chans"]) == ([32, 32], 1)


def test_the_run_folder_is_stated_once(tmp_path: Path):
    """Moving ``trainer.default_root_dir`` moves the logs and the checkpoints; ``--ckpt_path last`` finds them."""
    limits = ["--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]
    args = ["fit", "--config", QUICKSTART, *FAST, "--data.init_args.img_size", "16", *limits]
    args += ["--trainer.default_root_dir", str(tmp_path / "elsewhere")]
    first = main([*args, "--trainer.max_epochs", "1"])
    assert Path(first.trainer.log_dir) == tmp_path / "elsewhere" / "version_0"
    assert (tmp_path / "elsewhere" / "version_0" / "metrics.csv").is_file()
    assert (tmp_path / "elsewhere" / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "runs").exists()
    resumed = main([*args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert resumed.trainer.ckpt_path == str(tmp_path / "elsewhere" / "checkpoints" / "last.ckpt")
    assert resumed.trainer.global_step == 2


def test_outputs_without_a_folder_of_their_own_go_to_the_run_folder():
    from jsonargparse import Namespace

    from mae_lightning.cli import place_outputs_in_run_folder

    def entry(class_path: str, **init_args) -> Namespace:
        return Namespace(class_path=class_path, init_args=Namespace(**init_args))

    checkpoint = "lightning.pytorch.callbacks.ModelCheckpoint"
    config = Namespace(
        trainer=Namespace(
            default_root_dir="runs/x",
            logger=[
                entry("mae_lightning.WandbLogger", save_dir="."),
                entry("lightning.pytorch.loggers.CSVLogger", save_dir="logs"),
            ],
            callbacks=[
                entry(checkpoint, dirpath=None),
                entry(checkpoint, dirpath="kept"),
                entry("mae_lightning.KNNMonitor"),
            ],
        )
    )
    place_outputs_in_run_folder(config)
    # W&B's default "." (the working directory) counts as unset; a folder that is stated stays.
    assert [logger.init_args.save_dir for logger in config.trainer.logger] == ["runs/x", "logs"]
    assert [c.init_args.get("dirpath") for c in config.trainer.callbacks] == [
        str(Path("runs/x/checkpoints")),
        "kept",
        None,
    ]


def test_a_second_quickstart_run_replaces_last_ckpt(tmp_path: Path):
    """The evaluation configs read runs/quickstart/checkpoints/last.ckpt: it must be the newest run's."""
    limits = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]
    last = tmp_path / "runs" / "quickstart" / "checkpoints" / "last.ckpt"
    states = []
    for seed in ("1", "2"):
        main(
            [
                "fit",
                "--config",
                QUICKSTART,
                *FAST,
                "--data.init_args.img_size",
                "16",
                *limits,
                "--seed_everything",
                seed,
            ]
        )
        states.append(torch.load(last, weights_only=True)["state_dict"]["model.cls_token"])
    assert not torch.equal(states[0], states[1])
    assert not list(last.parent.glob("last-v*.ckpt"))
