"""CLIP weights in the forms people have them, each saved from one tiny model: a plain state dict,
an open_clip training checkpoint (epoch_N.pt, DDP prefixes), OpenAI's TorchScript archive, and an
open_clip tag or hf-hub repo resolved from a local cache with HF_HUB_OFFLINE (never the network)."""

from __future__ import annotations

import json

import huggingface_hub.constants
import open_clip
import pytest
import torch
from click.testing import CliRunner
from concepts_tiny_clip import register_tiny
from open_clip.pretrained import _pcfg
from torch import nn

from clipprobe.cli import main
from clipprobe.concepts.scoring import ClipScorer, file_sha256, weights_file_form

# OpenAI's layout (heads = width // 64, QuickGELU), so its TorchScript form loads through open_clip's
# load_openai_model, which reads the architecture from the weights.
OAI_NAME = "clipprobe-tiny-oai"
OAI_CONFIG = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
}
REPO = "clipprobe/tiny-clip"


class _Archive(nn.Module):
    """A TorchScript module holding CLIP's weights under OpenAI's names, as clip.load's archives do."""

    def forward(self) -> torch.Tensor:
        return self.logit_scale


def torchscript_archive(state: dict[str, torch.Tensor], path) -> None:
    root = _Archive()
    extras = {"input_resolution": 32, "context_length": 77, "vocab_size": 49408}  # buffers OpenAI's archive has
    for key, value in {**state, **{k: torch.tensor(v) for k, v in extras.items()}}.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, nn.Module())
            module = getattr(module, name)
        if key in extras:
            module.register_buffer(leaf, value)
        else:
            module.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
    torch.jit.save(torch.jit.script(root), str(path))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    name = register_tiny(folder, OAI_NAME, OAI_CONFIG)
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None)
    # fp16-exact values: OpenAI's loader passes weights through fp16, as its archives store them.
    state = {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    files = {"state_dict": folder / "plain.pt", "training_checkpoint": folder / "epoch_3.pt",
             "torchscript": folder / "ViT-tiny.pt"}
    torch.save(state, files["state_dict"])
    model.load_state_dict(state)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    torch.save({"epoch": 3, "name": "tiny-run", "state_dict": {f"module.{k}": v for k, v in state.items()},
                "optimizer": optimizer.state_dict(), "scaler": torch.amp.GradScaler("cpu").state_dict()},
               files["training_checkpoint"])
    torchscript_archive({k: v for k, v in state.items() if k != "attn_mask"}, files["torchscript"])
    return name, files


def _features(scorer: ClipScorer) -> torch.Tensor:
    images = torch.linspace(-1, 1, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32)
    tokens = scorer.tokenizer(["a red square", "a blue circle"])
    with torch.no_grad():
        return torch.cat([scorer.image_features(images), scorer.model.encode_text(tokens)], dim=1)


def test_every_local_form_loads_the_same_weights(tiny):
    name, files = tiny
    reference = _features(ClipScorer.create(name, str(files["state_dict"])))
    for form, path in files.items():
        assert weights_file_form(path) == form
        scorer = ClipScorer.create(name, str(path))
        assert scorer.weights_form == form and scorer.weights_sha256 == file_sha256(path)
        prov = scorer.provenance()
        assert (prov["clip_weights_form"], prov["clip_pretrained"]) == (form, path.name)
        assert torch.allclose(_features(scorer), reference, atol=1e-5), form
    with pytest.raises(ValueError, match=r"bad.pt: not a readable CLIP weights file .*expected a state dict"):
        bad = files["state_dict"].with_name("bad.pt")
        bad.write_bytes(b"not weights")
        weights_file_form(bad)


def _hf_cache(cache, tiny_files):
    """A Hugging Face cache holding REPO as a download would leave it: refs/main -> one snapshot."""
    repo = cache / f"models--{REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(tiny_files["state_dict"].read_bytes())
    (snapshot / "open_clip_config.json").write_text(json.dumps({"model_cfg": OAI_CONFIG, "preprocess_cfg": {}}))
    return snapshot / "open_clip_pytorch_model.bin"


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_tag_and_hf_hub_resolve_from_the_cache_offline(tiny, tmp_path, offline, monkeypatch):
    name, files = tiny
    cached = _hf_cache(tmp_path / "hf", files)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, name,
                        {"tinytag": _pcfg(hf_hub=f"{REPO}/", quick_gelu=True)})
    reference = _features(ClipScorer.create(name, str(files["state_dict"])))
    for model_name, pretrained, form in [(name, "tinytag", "tag"), (f"hf-hub:{REPO}", None, "hf-hub")]:
        scorer = ClipScorer.create(model_name, pretrained, cache_dir=str(tmp_path / "hf"))
        assert (scorer.weights_form, scorer.weights_sha256) == (form, file_sha256(cached))
        assert scorer.provenance()["clip_pretrained"] == pretrained
        assert torch.allclose(_features(scorer), reference, atol=1e-5), form


def test_missing_downloads_fail_fast_naming_the_fix(tiny, tmp_path, offline):
    empty = str(tmp_path / "empty")
    with pytest.raises(RuntimeError) as err:
        ClipScorer.create("ViT-B-32", "openai", cache_dir=empty)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("CLIP weights ViT-B-32 pretrained 'openai' could not be fetched (HF_HUB_OFFLINE is "
                              "set and they are not in the cache): on a machine with network run `python -c "
                              "\"import open_clip; open_clip.create_model('ViT-B-32', pretrained='openai')\"`")
    assert message.endswith("or pass the weights file with --clip-weights")
    with pytest.raises(RuntimeError, match=r"^CLIP weights hf-hub:nobody/nothing could not be fetched \(HF_HUB_OFF"):
        ClipScorer.create("hf-hub:nobody/nothing", cache_dir=empty)


def test_concepts_records_the_weights_form_and_sha256(tiny, tracking_store, tmp_path, offline, monkeypatch):
    from clipprobe.core.parquet import read_table
    from clipprobe.tracking.runs import download_artifact, find_latest_run

    name, files = tiny
    result = CliRunner().invoke(main, ["world", "--out", str(tmp_path / "w"), "--size", "32", "--train-per-class",
                                       "0", "--val-per-class", "0", "--pool-size", "60"])
    assert result.exit_code == 0, result.output
    # An empty cache: the default tag's weights are not there, and offline they cannot come.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-home"))
    result = CliRunner().invoke(main, ["concepts", "--top-k", "5", "--negatives", "20"])
    assert result.exit_code == 1 and "could not be fetched (HF_HUB_OFFLINE is set" in result.output
    path = files["torchscript"]
    result = CliRunner().invoke(main, ["concepts", "--clip-model", name, "--clip-weights", str(path), "--top-k", "5",
                                       "--negatives", "20", "--num-workers", "0", "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    run = find_latest_run("concepts")
    sha = file_sha256(path)
    assert (run.data.params["clip_weights_form"], run.data.params["clip_weights_sha256"]) == ("torchscript", sha)
    assert run.data.tags["clipprobe.clip_weights_sha256"] == sha
    _, meta = read_table(download_artifact(run.info.run_id, "concepts/scores.parquet"))
    assert (meta["clip_weights_form"], meta["clip_weights_sha256"], meta["clip_pretrained"]) == \
        ("torchscript", sha, "ViT-tiny.pt")


@pytest.fixture
def unreachable_hub(monkeypatch):
    """No HF_HUB_OFFLINE, no proxy, and a hub endpoint nothing listens at (a closed local port): a machine
    without network that nobody told, as a researcher's laptop on a train is."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    for variable in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    return port


def test_without_network_a_tag_fails_at_once_and_the_cache_still_serves(tiny, tmp_path, unreachable_hub,
                                                                        monkeypatch):
    """Not cached: one line naming the unreachable hub and the fix, without huggingface_hub's minute of
    retries; cached: the weights load, no request made."""
    name, files = tiny
    with pytest.raises(RuntimeError) as err:
        ClipScorer.create("ViT-B-32", "openai", cache_dir=str(tmp_path / "empty"))
    assert str(err.value).startswith(f"CLIP weights ViT-B-32 pretrained 'openai' could not be fetched (127.0.0.1:"
                                     f"{unreachable_hub} is unreachable: ")
    assert "and they are not in the cache): on a machine with network run" in str(err.value)
    cached = _hf_cache(tmp_path / "hf", files)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, name, {"tinytag": _pcfg(hf_hub=f"{REPO}/", quick_gelu=True)})
    scorer = ClipScorer.create(name, "tinytag", cache_dir=str(tmp_path / "hf"))
    assert (scorer.weights_form, scorer.weights_sha256) == ("tag", file_sha256(cached))
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # offline only while resolving


def test_wrong_clip_inputs_are_one_line_naming_the_fix(tiny, tmp_path):
    """What a researcher mistypes or mixes up: each refused in one line that says what to do."""
    import torchvision

    name, files = tiny
    with pytest.raises(RuntimeError, match=r"^could not load CLIP ViT-B-32 from .*plain\.pt \(state_dict\): .*check "
                                           "that --clip-model names the architecture these weights were saved from$"):
        ClipScorer.create("ViT-B-32", str(files["state_dict"]))  # open_clip asserts on the shapes
    with pytest.raises(ValueError, match=r"unknown CLIP architecture 'VIT-B-32': did you mean ViT-B-32"):
        ClipScorer.create("VIT-B-32", "openai")
    with pytest.raises(FileNotFoundError, match=r"^CLIP weights file not found: .*my-clip\.pt"):
        ClipScorer.create("my-own-clip", str(tmp_path / "my-clip.pt"))  # not "unknown architecture"
    backbone = torchvision.models.mobilenet_v2(width_mult=0.25, num_classes=4)
    torch.save(backbone, tmp_path / "whole.pt")
    torch.save({"model": backbone.state_dict(), "epoch": 3}, tmp_path / "model_3.pth")
    with pytest.raises(ValueError, match=r"whole\.pt: a pickled torchvision\.models\.mobilenetv2\.MobileNetV2, which "
                                         r"weights-only loading refuses; save model\.state_dict\(\) instead"):
        weights_file_form(tmp_path / "whole.pt")
    with pytest.raises(ValueError, match=r"model_3\.pth: holds a dict without tensors \(keys: model, epoch\), .*a "
                                         r"backbone checkpoint: import it with `clipprobe checkpoints`$"):
        weights_file_form(tmp_path / "model_3.pth")
