"""Transformer pruning removes heads and FFN neurons for real, and the record rebuilds it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from slimkit.artifact import load_artifact, save_artifact
from slimkit.model import ModelRef, TorchModel, load_model
from slimkit.pipeline import Cache, build, model_key
from slimkit.registry import StepContext, parse_step
from slimkit.runtimes import get_runtime
from slimkit.techniques.prune.transformer import PruneTransformer, prune_transformer_torch
from slimkit.techniques.prune.transformer_importance import taylor_scores
from slimkit.techniques.prune.transformer_surgery import encoder_flops, encoder_layers
from tests.models import applied, token_data

REF = ModelRef(source="tests.models:tiny_bert")


def bert() -> TorchModel:
    model = load_model(REF)
    assert isinstance(model, TorchModel)
    return model


def run(model: TorchModel, batch: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return model.module(*[torch.from_numpy(batch[i.name]) for i in model.inputs]).numpy()


def silence_units(model: TorchModel) -> None:
    """Zero the output weights of head 1 in layer 0 and of FFN neurons 8..15 in layer 1."""
    layers = encoder_layers(model.module)
    size = layers[0].head_size
    with torch.no_grad():
        layers[0].attn_out.weight[:, size:2 * size] = 0
        layers[1].ffn_out.weight[:, 8:16] = 0


def test_removing_silent_units_changes_no_output(tmp_path: Path) -> None:
    model = bert()
    silence_units(model)
    batch = token_data(8, seed=3).inputs
    before = run(model, batch)
    config = PruneTransformer(importance="magnitude", heads=[3, 4], ffn=[64, 56], ffn_multiple=8)
    pruned = applied(prune_transformer_torch, model, config, StepContext(tmp_path))
    assert isinstance(pruned, TorchModel)
    layers = encoder_layers(pruned.module)
    assert [(la.heads, la.ffn) for la in layers] == [(3, 64), (4, 56)]
    assert layers[0].attention.query.out_features == 3 * layers[0].head_size
    np.testing.assert_allclose(run(pruned, batch), before, rtol=1e-5, atol=1e-6)


def test_taylor_scores_are_zero_exactly_for_silent_units() -> None:
    model = bert()
    silence_units(model)
    layers = encoder_layers(model.module)
    scores = taylor_scores(model.module, layers, ["input_ids", "attention_mask"], token_data())
    assert scores.heads[0][1] == 0 and (np.delete(scores.heads[0], 1) > 0).all()
    assert (scores.neurons[1][8:16] == 0).all() and (scores.neurons[1][:8] > 0).all()


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_pruning_meets_the_flops_budget_and_writes_its_table(tmp_path: Path,
                                                            allocation: str) -> None:
    model = bert()
    params = sum(p.numel() for p in model.module.parameters())
    full = encoder_flops(encoder_layers(model.module), 16)
    config = PruneTransformer(flops_ratio=0.6, ffn_multiple=8, allocation=allocation)
    pruned = applied(prune_transformer_torch, model, config,
                     StepContext(tmp_path, data=token_data()))
    assert isinstance(pruned, TorchModel)
    layers = encoder_layers(pruned.module)
    assert sum(p.numel() for p in pruned.module.parameters()) < params
    assert encoder_flops(layers, 16) <= 0.6 * full
    assert all(la.heads >= 1 and la.ffn % 8 == 0 for la in layers)
    record = pruned.steps[-1]
    assert record.heads == [la.heads for la in layers] and record.ffn == [la.ffn for la in layers]
    assert record.sequence_length == 16
    table = json.loads((tmp_path / "report.json").read_text())
    assert table["encoder_flops_after"] == encoder_flops(layers, 16)
    assert [r["heads_after"] for r in table["layers"]] == record.heads
    assert sum(r["flops_before"] for r in table["layers"]) == full


def test_heads_share_moves_the_saving_between_heads_and_ffn(tmp_path: Path) -> None:
    def kept(share: float) -> tuple[int, int]:
        pruned = applied(prune_transformer_torch,
            bert(), PruneTransformer(flops_ratio=0.6, ffn_multiple=8, heads_share=share,
                                     importance="magnitude"), StepContext(tmp_path))
        assert isinstance(pruned, TorchModel)
        return sum(pruned.steps[-1].heads), sum(pruned.steps[-1].ffn)

    heads_first, ffn_first = kept(0.9), kept(0.0)
    assert heads_first[0] < ffn_first[0] and heads_first[1] > ffn_first[1]


def test_saved_artifact_rebuilds_from_the_record(tmp_path: Path) -> None:
    pruned = applied(prune_transformer_torch, bert(),
                     PruneTransformer(flops_ratio=0.5, ffn_multiple=8),
                     StepContext(tmp_path, data=token_data()))
    assert isinstance(pruned, TorchModel)
    save_artifact(pruned, tmp_path / "artifact")
    again = load_artifact(tmp_path / "artifact", trust_code=True)
    assert isinstance(again, TorchModel)
    batch = token_data(6, seed=9).inputs
    np.testing.assert_array_equal(run(again, batch), run(pruned, batch))


def test_pruned_model_exports_and_runs_on_onnxruntime_and_openvino(tmp_path: Path) -> None:
    model = bert()
    data = token_data()
    step = parse_step({"prune_transformer": {"flops_ratio": 0.5, "ffn_multiple": 8}})
    torch_built = build(model, model_key(model), [step], "torch", Cache(tmp_path), data=data)
    reference = load_artifact(torch_built.path, trust_code=True)
    assert isinstance(reference, TorchModel)
    batch = token_data(6, seed=4).inputs
    expected = run(reference, batch)
    for target, runtime in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        built = build(model, model_key(model), [step], target, Cache(tmp_path), data=data)
        out = get_runtime(runtime).load(load_artifact(built.path, trust_code=True)).run(batch)[0]
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_config_round_trips_through_yaml_with_its_record() -> None:
    config = PruneTransformer(flops_ratio=0.7, heads=[1, 2], ffn=[32, 64], sequence_length=128)
    text = yaml.safe_dump(config.model_dump(mode="json"))
    assert parse_step(yaml.safe_load(text)) == config


def test_reconstruction_brings_the_output_closer_to_the_unpruned_one(tmp_path: Path) -> None:
    batch = token_data(16, seed=11).inputs
    expected = run(bert(), batch)

    def error(reconstruct: bool) -> float:
        config = PruneTransformer(importance="magnitude", heads=[2, 2], ffn=[24, 24],
                                  ffn_multiple=8, reconstruct=reconstruct)
        pruned = applied(prune_transformer_torch, bert(), config,
                                         StepContext(tmp_path, data=token_data(64)))
        assert isinstance(pruned, TorchModel)
        return float(((run(pruned, batch) - expected) ** 2).sum())

    assert error(True) < 0.7 * error(False)


def test_a_classifier_is_pruned_by_its_label_loss(tmp_path: Path) -> None:
    import transformers

    from slimkit.hf import TEXT_INPUTS, LogitsOnly

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, num_labels=3)
    module = LogitsOnly(transformers.BertForSequenceClassification(config)).eval()
    model = TorchModel(module, list(TEXT_INPUTS))
    data = token_data(32)
    data.labels = np.random.default_rng(0).integers(0, 3, len(data))
    layers = encoder_layers(module)
    scores = taylor_scores(module, layers, ["input_ids", "attention_mask"], data)
    assert all((s > 0).all() for s in scores.heads)
    pruned = applied(prune_transformer_torch, model,
                     PruneTransformer(flops_ratio=0.5, ffn_multiple=8),
                     StepContext(tmp_path, data=data))
    assert isinstance(pruned, TorchModel)
    assert sum(pruned.steps[-1].heads) < 8
    assert run(pruned, token_data(4, seed=2).inputs).shape == (4, 3)
