"""The world CLIP: open_clip trained on the concept world learns colours, saves as weights + config, and
loads by the route a user's own CLIP file takes."""

from __future__ import annotations

import shlex

import numpy as np
import pytest
import torch

from clipprobe.concepts.config import WorldClipConfig
from clipprobe.concepts.scoring import ClipScorer, config_beside_weights, group_probabilities
from clipprobe.concepts.vocabulary import DEFAULT_PROMPT, Vocabulary
from clipprobe.concepts.world_clip import (
    CAPTION_TEMPLATES,
    caption,
    load_world_images,
    save_world_clip,
    train_world_clip,
    zero_shot_accuracy,
)
from clipprobe.world.config import WorldSpec
from clipprobe.world.generate import generate_world

COLOURS = ("red", "blue", "green", "yellow")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A world CLIP trained for 60 steps on 160 images of 4 colours (about half a minute of CPU)."""
    root = tmp_path_factory.mktemp("world_clip")
    spec = WorldSpec(seed=3, train_per_class=80, val_per_class=40, pool_size=0, shapes=("circle", "square"),
                     colours=COLOURS, patterns=("plain", "striped"))
    generate_world(root / "world", spec)
    config = WorldClipConfig(epochs=12, batch_size=32, lr=3e-3, seed=0, clip_model="WorldCLIP-test")
    model = train_world_clip(root / "world", root / "clip", config)
    return root, model


def test_captions_carry_the_seeds_prompt():
    attrs = {"colour": "red", "pattern": "striped", "shape": "circle"}
    texts = [caption(t, attrs) for t in CAPTION_TEMPLATES]
    assert DEFAULT_PROMPT.format(concept="red") in texts and "a red striped circle" in texts


def test_trained_world_clip_tells_colours_apart(trained):
    root, model = trained
    assert len(model.train_loss) == 12 and model.train_loss[-1] < model.train_loss[0]
    val = load_world_images(root / "world", "val", model.preprocess)
    acc = zero_shot_accuracy(model.model, model.tokenizer, val).set_index("group")
    assert acc.loc["colour", "chance"] == 0.25 and acc.loc["colour", "n_images"] == 80
    # Chance is 0.25: the tiny CLIP names the colour of held-out images far better.
    assert acc.loc["colour", "accuracy"] >= 0.9, acc


def test_saved_world_clip_loads_as_a_users_weights_file(trained):
    root, model = trained
    weights, config = save_world_clip(model, root / "saved")
    assert config_beside_weights("WorldCLIP-test", str(weights)) == config
    scorer = ClipScorer.create("WorldCLIP-test", str(weights))
    assert scorer.weights_form == "state_dict" and scorer.weights_sha256
    vocab = Vocabulary.from_dict({"colours": list(COLOURS)})
    val = load_world_images(root / "world", "val", scorer.preprocess)
    got = scorer.score_images(val.pixels[:16], scorer.text_features(vocab))
    with torch.inference_mode():
        image = torch.nn.functional.normalize(model.model.encode_image(val.pixels[:16]).float(), dim=-1)
        text = torch.nn.functional.normalize(model.model.encode_text(
            model.tokenizer([DEFAULT_PROMPT.format(concept=c) for c in COLOURS])).float(), dim=-1)
    want = group_probabilities(image, [text], float(model.model.logit_scale.detach().exp())).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_unknown_architecture_names_the_config_fix(tmp_path):
    weights = tmp_path / "mine.pt"
    torch.save({"x": torch.zeros(1)}, weights)
    with pytest.raises(ValueError, match=r"put its open_clip config as NoSuchCLIP.json next to the weights file"):
        ClipScorer.create("NoSuchCLIP", str(weights))


def test_clip_command_logs_registers_and_reports(tracking_store, tmp_path):
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from clipprobe.cli import main
    from clipprobe.tracking.runs import find_latest_run

    runner = CliRunner()
    made = runner.invoke(main, ["world", "--out", str(tmp_path / "my w"), "--size", "32", "--train-per-class", "3",
                                "--val-per-class", "1", "--pool-size", "40"])
    assert made.exit_code == 0, made.output
    result = runner.invoke(main, ["clip", "--epochs", "1", "--batch-size", "8"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = find_latest_run("clip")
    assert {"val_zero_shot_acc.colour", "val_zero_shot_acc.pattern", "val_zero_shot_acc.shape"} <= set(run.data.metrics)
    assert run.data.metrics["val_zero_shot_chance.shape"] == pytest.approx(0.1)
    weights = tmp_path / "my w" / "clip" / "WorldCLIP-ViT-T-8.pt"
    assert run.data.tags["clipprobe.clip_weights"] == str(weights.resolve()) and weights.with_suffix(".json").is_file()
    # the command it prints to use the CLIP runs as printed, even from a folder with a space in its name
    [hint] = [line for line in result.output.splitlines() if line.startswith("use it: ")]
    assert shlex.split(hint.removeprefix("use it: "))[-2:] == ["--clip-weights", str(weights.resolve())]
    (version,) = MlflowClient().search_model_versions("name = 'world_clip'")
    assert version.tags["clipprobe.clip_weights_sha256"] == run.data.tags["clipprobe.clip_weights_sha256"]
    files = MlflowClient().list_logged_model_artifacts(version.source.removeprefix("models:/"), "extra_files")
    assert sorted(f.path.rsplit("/", 1)[-1] for f in files) == ["WorldCLIP-ViT-T-8.json", "WorldCLIP-ViT-T-8.pt"]
    # On the world, concepts with no CLIP option scores with the world's CLIP, by its weights file.
    mined = runner.invoke(main, ["concepts", "--top-k", "4", "--negatives", "8", "--num-workers", "0",
                                 "--cache-dir", str(tmp_path / "cache")], catch_exceptions=False)
    assert mined.exit_code == 0, mined.output
    concepts = find_latest_run("concepts")
    assert concepts.data.params["clip_model"] == "WorldCLIP-ViT-T-8"
    assert concepts.data.params["clip_weights_form"] == "state_dict"
    assert concepts.data.params["clip_weights_sha256"] == run.data.tags["clipprobe.clip_weights_sha256"]
    from clipprobe.tracking.configs import load_config

    assert load_config(WorldClipConfig, run.info.run_id) == WorldClipConfig(epochs=1, batch_size=8)
    # the option names are the logged params: --clip-model the architecture, --model-name the registered model
    assert {k: run.data.params[k] for k in ("clip_model", "model_name", "epochs", "batch_size")} == {
        "clip_model": "WorldCLIP-ViT-T-8", "model_name": "world_clip", "epochs": "1", "batch_size": "8"}
    too_big = runner.invoke(main, ["clip", "--epochs", "1"])  # refused before a run exists
    assert too_big.exit_code == 2 and "fewer than a batch of 64" in too_big.output
    assert find_latest_run("clip").info.run_id == run.info.run_id


def test_a_clip_config_stored_before_the_rename_still_reads():
    """clip/config.json written when --clip-model was stored as model_name reads as clip_model; a stored config
    never mixes the two meanings."""
    old = {"format": 1, "epochs": 3, "batch_size": 16, "lr": 0.003, "weight_decay": 0.1, "warmup_pct": 0.1,
           "seed": 0, "model_name": "WorldCLIP-old", "prompt": DEFAULT_PROMPT}
    assert WorldClipConfig.from_dict(old) == WorldClipConfig(epochs=3, batch_size=16, clip_model="WorldCLIP-old")
    assert WorldClipConfig.from_json(WorldClipConfig(clip_model="X").to_json()).clip_model == "X"
    with pytest.raises(ValueError, match="batch size >= 2"):
        WorldClipConfig(batch_size=1)  # a config checks itself when built: no validate() to forget
