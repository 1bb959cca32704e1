"""Weights on the Hugging Face Hub: ``hf:`` references and ``export --push_to_hub``, offline.

Downloading and uploading need the Hub (and, to upload, an account): here a reference resolves from its copy in
the run folder without network, the parser names the expected form, offline and unreachable stop at once in one
line, private and gated repositories say so (the library's own errors, raised in place of a download), and a push
without a token or without network stops before anything is sent. The upload itself is not exercised.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mae_lightning.checkpoint import read_checkpoint
from mae_lightning.cli import main, resolve_weights_reference
from mae_lightning.export import export_transformers
from mae_lightning.export import main as export_main
from mae_lightning.models import MaskedAutoencoder
from mae_lightning.models.weights import load_weights
from mae_lightning.runtime import hub
from mae_lightning.runtime.hub import HubUnavailableError, hub_cache_folder, hub_weights, parse_hub_reference
from tests.helpers import CONFIGS, FAST_16PX, QUICKSTART, TINY_MAE, cli_checkpoint, tiny_mae

huggingface_hub = pytest.importorskip("huggingface_hub")


@pytest.fixture
def offline(monkeypatch):
    """No Hub: offline mode, and an endpoint on a closed port should anything try anyway."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")


def _exported(folder: Path, seed: int = 0) -> Path:
    """A tiny MAE exported as a transformers folder into ``folder``."""
    model = tiny_mae(seed=seed)
    export_transformers(cli_checkpoint(folder.parent / f"{folder.name}.ckpt", model, TINY_MAE), folder)
    return folder


@pytest.mark.parametrize(
    ("reference", "parsed"),
    [
        ("hf:facebook/vit-mae-base", ("facebook/vit-mae-base", None)),
        ("hf:me/mae.cifar_10@v1.0", ("me/mae.cifar_10", "v1.0")),
        ("hf:me/mae@0123abcd", ("me/mae", "0123abcd")),
    ],
)
def test_a_reference_names_a_repository_and_a_revision(reference, parsed, tmp_path):
    assert parse_hub_reference(reference) == parsed
    revision = parsed[1] or "main"
    assert hub_cache_folder(reference, tmp_path) == tmp_path / f"{parsed[0].replace('/', '__')}@{revision}"


@pytest.mark.parametrize("reference", ["hf:vit-mae-base", "hf:a/b/c", "hf:a/b@", "hf:a/b@x@y", "hf: a/b"])
def test_a_malformed_reference_names_the_expected_form(reference, tmp_path):
    with pytest.raises(HubUnavailableError, match=r"write hf:<owner>/<name> or hf:<owner>/<name>@<revision>"):
        hub_weights(reference, tmp_path)


def test_a_repository_downloaded_once_is_read_from_the_run_folder_without_network(tmp_path, offline):
    reference = "hf:me/tiny-mae@v1"
    _exported(hub_cache_folder(reference, tmp_path))
    weights = hub_weights(reference, tmp_path)
    assert weights == tmp_path / "me__tiny-mae@v1" / "model.safetensors"
    # main is another revision, not downloaded: offline, it stops in one line naming where it would be kept.
    with pytest.raises(HubUnavailableError, match=r"HF_HUB_OFFLINE set; .*me__tiny-mae@main") as err:
        hub_weights("hf:me/tiny-mae", tmp_path)
    assert "\n" not in str(err.value)
    assert not list(tmp_path.glob(".download-*"))


def test_an_unreachable_hub_stops_in_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # a closed port
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_ETAG_TIMEOUT", 1)
    with pytest.raises(HubUnavailableError, match="hf:me/tiny-mae.* cannot be downloaded") as err:
        hub_weights("hf:me/tiny-mae", tmp_path)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("error", "says"),
    [
        ("GatedRepoError", "is gated: accept its conditions"),
        ("RepositoryNotFoundError", "is private and no token with access is set"),
        ("RevisionNotFoundError", "has no revision 'v9'"),
    ],
)
def test_private_gated_and_missing_repositories_say_so(error, says, tmp_path, monkeypatch):
    import huggingface_hub.errors

    # The Hub's answer, as huggingface_hub's HTTP library gives it to the error.
    http = sys.modules[huggingface_hub.errors.Response.__module__.split(".")[0]]
    answer = http.Response(401, request=http.Request("GET", "https://huggingface.co/api/models/me/private-mae"))

    def refuse(*args, **kwargs):
        raise getattr(huggingface_hub.errors, error)("401 Client Error", response=answer)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    with pytest.raises(HubUnavailableError, match=says) as err:
        hub_weights("hf:me/private-mae@v9", tmp_path)
    assert "\n" not in str(err.value) and "hf:me/private-mae@v9" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_a_transformers_folder_becomes_its_weights_file_and_a_hub_reference_is_not_a_checkpoint(tmp_path):
    folder = _exported(tmp_path / "hf")
    assert resolve_weights_reference(str(folder), tmp_path) == folder / "model.safetensors"
    assert resolve_weights_reference(str(tmp_path / "run.ckpt"), tmp_path) is None  # a file stays as it is
    with pytest.raises(HubUnavailableError, match="holds weights, not a training checkpoint"):
        resolve_weights_reference("hf:me/tiny-mae", tmp_path, weights_only=False)


def test_init_weights_from_a_hub_reference_downloaded_before(tmp_path, monkeypatch, offline):
    """A pretraining run starts from a Hub repository already in <run folder>/hub, offline."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mae_lightning"])
    first = main(["fit", "--config", QUICKSTART, *FAST_16PX, "--trainer.fast_dev_run", "true"])
    first.trainer.save_checkpoint(tmp_path / "first.ckpt")
    cache = tmp_path / "runs" / "quickstart" / "hub"  # under the config's default_root_dir
    export_transformers(tmp_path / "first.ckpt", hub_cache_folder("hf:me/quickstart-mae", cache))

    second = main(
        ["fit", "--config", QUICKSTART, *FAST_16PX, "--trainer.max_steps", "0"]
        + ["--model.init_args.init_weights", "hf:me/quickstart-mae"]
    )

    for name, tensor in first.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[name], tensor), name


@pytest.mark.parametrize("argument", ["--model.init_args.init_weights", "--ckpt_path"])
def test_an_offline_hub_reference_stops_the_command_line_in_one_line(argument, tmp_path, monkeypatch, capsys, offline):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mae_lightning"])
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", QUICKSTART, *FAST_16PX, argument, "hf:facebook/vit-mae-base"])
    assert stop.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"mae_lightning: error: {argument.removeprefix('--')}: ")
    assert ("HF_HUB_OFFLINE" if "init_weights" in argument else "not a training checkpoint") in last
    assert not (tmp_path / "runs" / "quickstart" / "checkpoints").exists()


def test_push_without_a_token_refuses_before_sending_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    sent = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda *a, **k: sent.append(a))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda *a, **k: sent.append(a))
    ckpt = cli_checkpoint(tmp_path / "run.ckpt", tiny_mae(seed=0), TINY_MAE)

    with pytest.raises(SystemExit) as stop:
        export_main([str(ckpt), str(tmp_path / "hf"), "--push_to_hub", "me/tiny-mae"])

    assert stop.value.code == 2 and sent == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no Hugging Face token" in err[0] and "Nothing was uploaded" in err[0]
    assert (tmp_path / "hf" / "model.safetensors").is_file()  # the folder is kept, to push later


@pytest.mark.parametrize("how", ["offline", "unreachable"])
def test_push_without_network_stops_in_one_line(how, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # a closed port
    if how == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    uploads = []
    real_upload = huggingface_hub.HfApi.upload_folder
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda *a, **k: uploads.append(real_upload(*a, **k)))
    ckpt = cli_checkpoint(tmp_path / "run.ckpt", tiny_mae(seed=0), TINY_MAE)

    with pytest.raises(SystemExit) as stop:
        export_main([str(ckpt), str(tmp_path / "hf"), "--push_to_hub", "me/tiny-mae"])

    assert stop.value.code == 2 and uploads == []  # the repository could not even be created
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mae_lightning.export: error: --push_to_hub me/tiny-mae: ")
    assert ("HF_HUB_OFFLINE" if how == "offline" else "Nothing was uploaded") in err[0]


def test_push_is_one_commit_of_the_whole_folder(tmp_path, monkeypatch, capsys):
    """What is sent, with the Hub client's calls recorded in place of the network."""
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, *a, **k: calls.append(("create", a, k)))

    def upload(self, **kwargs):
        calls.append(("upload", sorted(p.name for p in Path(kwargs["folder_path"]).iterdir()), kwargs["repo_id"]))
        return "https://huggingface.co/me/tiny-mae/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload)
    ckpt = cli_checkpoint(tmp_path / "run.ckpt", tiny_mae(seed=0), TINY_MAE)

    export_main([str(ckpt), str(tmp_path / "hf"), "--push_to_hub", "me/tiny-mae"])

    assert [call[0] for call in calls] == ["create", "upload"]
    assert calls[1][1:] == (["README.md", "config.json", "model.safetensors"], "me/tiny-mae")
    assert "pushed" in capsys.readouterr().out
    assert hub.HUB_PREFIX + "me/tiny-mae" in (tmp_path / "hf" / "README.md").read_text()


def test_an_older_repository_with_pytorch_weights_only_is_read_from_its_bin_file(tmp_path, offline):
    """Older Hub repositories have ``pytorch_model.bin`` and no safetensors: read with weights_only=True."""
    reference = "hf:someone/older-mae"
    folder = _exported(hub_cache_folder(reference, tmp_path))
    tensors = load_file(folder / "model.safetensors")  # transformers' names, as on the Hub
    torch.save(tensors, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()

    weights = hub_weights(reference, tmp_path)

    assert weights == folder / "pytorch_model.bin"
    model = MaskedAutoencoder(**read_checkpoint(weights).model_args)
    assert not load_weights(model, weights, strict=True).missing
    assert torch.equal(
        model.state_dict()["blocks.0.attn.qkv.weight"], tiny_mae(seed=0).state_dict()["blocks.0.attn.qkv.weight"]
    )


def test_a_repository_without_transformers_weights_says_so_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *args, **kwargs: None)  # nothing matched
    with pytest.raises(HubUnavailableError, match="is not a transformers model: it lacks config.json"):
        hub_weights("hf:someone/timm-weights", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_linear_probe_starts_from_a_transformers_folder_whose_config_gives_the_encoder_size(tmp_path, monkeypatch):
    """``pretrained`` names a folder (no file in it named); the quickstart's unnamed size comes from config.json."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mae_lightning"])
    first = main(["fit", "--config", QUICKSTART, *FAST_16PX, "--trainer.fast_dev_run", "true"])
    first.trainer.save_checkpoint(tmp_path / "first.ckpt")
    export_transformers(tmp_path / "first.ckpt", tmp_path / "vit_hf", encoder_only=True)

    probe = main(
        ["fit", "--config", str(CONFIGS / "linprobe" / "quickstart.yaml"), *FAST_16PX, "--trainer.fast_dev_run", "true"]
        + ["--model.init_args.pretrained", str(tmp_path / "vit_hf")]
    )

    assert probe.config.fit.model.init_args.pretrained == str(tmp_path / "vit_hf" / "model.safetensors")
    encoder = first.model.model.state_dict()
    for name, tensor in probe.model.model.state_dict().items():
        if name.startswith(("blocks.", "patch_embed.", "cls_token")):
            assert torch.equal(tensor, encoder[name]), name
