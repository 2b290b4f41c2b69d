"""Reading components: head_attribution's by_source / baseline_prompt / pairs, head_output, neuron_attribution,
mlp_neurons, composition_scores. Numbers are checked against TransformerLens's own computations
(stack_head_results, apply_ln_to_stack, get_full_resid_decomposition, all_composition_scores), against hand
computations from the Hugging Face modules, and against toy-induction's planted circuit (L0H1 previous-token
head, L1H2 induction head). A tiny random Llama (gated MLP, grouped-query attention, norm weights that are not
1) covers what the toy model lacks."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost, count_hooks
from lens_mcp.server.app import build_server
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.reading.head_attribution import head_attribution
from lens_mcp.tools.reading.head_output import head_output
from lens_mcp.tools.reading.mlp_neurons import mlp_neurons
from lens_mcp.tools.reading.neuron_attribution import neuron_attribution
from lens_mcp.tools.weights.composition_scores import all_scores, composition_scores, one_thread
from tests.component_refs import (
    full_cache,
    hand_gated_activations,
    head_logits,
    ln_logits,
    neuron_reference,
    reference_grid,
    source_reference,
)
from tests.mcp_client import call_tool, error_text, result_data

TOY_PROMPT = "w12 w87 w33 w140 w5 w61 w12 w87 w33 w140"  # the induction head predicts w5
TOY_BASELINE = "w12 w87 w33 w140 w9 w61 w12 w87 w33 w140"  # same length, w9 where w5 was
TOY_OTHER = "w7 w20 w44 w3 w90 w7 w20 w44"  # another repeat, a different length
REL, ABS = 2e-3, 2e-5
BUILTIN = Path(__file__).resolve().parent.parent / "src" / "lens_mcp" / "builtin" / "toy_induction"


@pytest.fixture(scope="module")
def llama_host(tmp_path_factory: pytest.TempPathFactory) -> ModelHost:
    """A 2-layer random Llama: gated SiLU MLP (d_mlp 96), 4 query heads sharing 2 key/value heads, RMS norms
    with random weights (folded by compatibility mode), the toy tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.copy_(1 + 0.3 * torch.randn_like(parameter))
            elif "proj" in name:
                parameter.mul_(5.0)  # activations well above rounding noise
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(BUILTIN / name, folder / name)
    host = ModelHost(Limits())
    host.load(str(folder), device="cpu")
    return host


@pytest.fixture
def llama(llama_host: ModelHost) -> Iterator[ToolContext]:
    with llama_host.use() as model:
        yield ToolContext(model, llama_host.limits)


# ---- head_output -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["toy", "llama"])
@pytest.mark.parametrize(("layer", "head", "position"), [(1, 2, -1), (0, 1, 4), (1, 3, 6)])
def test_head_output_matches_stack_head_results(
    request: pytest.FixtureRequest, fixture: str, layer: int, head: int, position: int
) -> None:
    tc: ToolContext = request.getfixturevalue(fixture)
    head = head % tc.model.cfg.n_heads
    tokens, _, cache = full_cache(tc, TOY_PROMPT)
    pos = position % tokens.shape[-1]
    result = head_output(tc, TOY_PROMPT, layer, head, position=position, top_k=5)
    reference = head_logits(tc, cache, pos, layer, head)
    values, ids = reference.topk(5)
    assert [t.id for t in result.promoted] == ids.tolist()
    assert [t.logit for t in result.promoted] == pytest.approx(values.tolist(), rel=REL, abs=ABS)
    low_values, low_ids = (-reference).topk(5)
    assert [t.id for t in result.suppressed] == low_ids.tolist()
    assert [t.logit for t in result.suppressed] == pytest.approx((-low_values).tolist(), rel=REL, abs=ABS)
    # the OV readout: the value of the head's key/value group at the source, through W_O, by hand
    n_kv = int(getattr(tc.model.cfg, "n_key_value_heads", None) or tc.model.cfg.n_heads)
    kv = head // (tc.model.cfg.n_heads // n_kv)
    assert result.kv_head == kv
    source = result.ov.source_position
    pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0, head, pos]
    if pos >= 1:  # default source: most attended, BOS left out
        assert source == int(pattern[1 : pos + 1].argmax()) + 1
    value = cache[f"blocks.{layer}.attn.hook_v"][0, source, kv] @ tc.model.bridge.blocks[layer].attn.W_O[head].detach()
    ov = ln_logits(cache, value, pos, tc.model.bridge.W_U.detach())
    assert [t.id for t in result.ov.promoted] == ov.topk(5).indices.tolist()
    source_id = int(tokens[0, source])
    assert result.ov.source_token_logit == pytest.approx(float(ov[source_id]), rel=REL, abs=ABS)
    assert result.ov.source_token_rank == int((ov > ov[source_id]).sum()) + 1
    assert result.ov.attention == pytest.approx(float(pattern[source]), rel=REL, abs=ABS)
    assert count_hooks(tc.model.bridge) == 0


def test_head_output_induction_head_copies(toy: ToolContext) -> None:
    """L1H2 at the last w140 attends to the w5 after the earlier w140 and copies it: its output's top token is
    w5, and its OV circuit on that source ranks w5 first."""
    result = head_output(toy, TOY_PROMPT, 1, 2, top_k=3)
    assert result.ov.source_position == 5 and result.ov.source_token == "w5"
    assert result.ov.behaviour == "copying" and result.ov.source_token_rank == 1
    assert result.promoted[0].token == "w5"
    assert result.ov.attention > 0.5


def test_head_output_explicit_source(toy: ToolContext) -> None:
    result = head_output(toy, TOY_PROMPT, 1, 2, source_position=0)
    assert result.ov.source_position == 0 and result.ov.source_token == "<|bos|>"


# ---- head_attribution: by_source, baseline_prompt, pairs ----------------------------------------------------


@pytest.mark.parametrize("fixture", ["toy", "llama"])
def test_by_source_matches_hand_split_and_sums_to_the_cell(request: pytest.FixtureRequest, fixture: str) -> None:
    tc: ToolContext = request.getfixturevalue(fixture)
    layer, head = 1, tc.model.cfg.n_heads - 1
    result = head_attribution(tc, TOY_PROMPT, "w5", "w61", by_source=True, layer=layer, head=head, top_k=100)
    split = result.by_source
    assert split is not None and (split.layer, split.head) == (layer, head)
    reference = source_reference(tc, TOY_PROMPT, "w5", "w61", layer, head)
    assert split.score == pytest.approx(result.heads[layer][head], rel=REL, abs=ABS)
    assert float(reference.sum()) == pytest.approx(split.score, rel=REL, abs=ABS)
    by_position = {part.position: part.contribution for part in split.sources}
    assert len(by_position) == len(reference)  # top_k 100 > prompt length: every source listed
    assert [by_position[s] for s in range(len(reference))] == pytest.approx(reference.tolist(), rel=REL, abs=ABS)
    assert split.rest == pytest.approx(0.0, abs=ABS)


def test_by_source_defaults_to_the_top_head_and_finds_the_copied_token(toy: ToolContext) -> None:
    result = head_attribution(toy, TOY_PROMPT, "w5", "w61", by_source=True, top_k=3)
    split = result.by_source
    assert split is not None
    assert (split.layer, split.head) == (result.top_heads[0].layer, result.top_heads[0].head) == (1, 2)
    assert split.sources[0].position == 5 and split.sources[0].token == "w5"
    listed = sum(part.contribution for part in split.sources)
    assert listed + split.rest == pytest.approx(split.score, rel=REL, abs=1e-3)


def test_baseline_prompt_is_prompt_minus_baseline(toy: ToolContext) -> None:
    result = head_attribution(toy, TOY_PROMPT, "w5", "w61", baseline_prompt=TOY_BASELINE, top_k=4)
    grid, actual = reference_grid(toy, TOY_PROMPT, "w5", "w61")
    base_grid, base_actual = reference_grid(toy, TOY_BASELINE, "w5", "w61")
    assert torch.tensor(result.heads) == pytest.approx(grid - base_grid, rel=REL, abs=ABS)
    assert result.actual == pytest.approx(actual - base_actual, rel=REL, abs=ABS)
    assert result.explained
    comparison = result.baseline
    assert comparison is not None
    assert comparison.prompt_actual == pytest.approx(actual, rel=REL) and comparison.baseline_actual == pytest.approx(
        base_actual, rel=REL
    )
    top = comparison.top_heads[0]
    assert (top.layer, top.head) == (1, 2)  # the induction head carries what differs: the copied token
    assert top.prompt_score == pytest.approx(float(grid[1, 2]), rel=REL)
    assert top.baseline_score == pytest.approx(float(base_grid[1, 2]), rel=REL)


def test_by_source_with_baseline_splits_the_difference(toy: ToolContext) -> None:
    result = head_attribution(
        toy, TOY_PROMPT, "w5", "w61", baseline_prompt=TOY_BASELINE, by_source=True, layer=1, head=2, top_k=100
    )
    split = result.by_source
    assert split is not None
    reference = source_reference(toy, TOY_PROMPT, "w5", "w61", 1, 2) - source_reference(
        toy, TOY_BASELINE, "w5", "w61", 1, 2
    )
    by_position = {part.position: part.contribution for part in split.sources}
    assert [by_position[s] for s in range(len(reference))] == pytest.approx(reference.tolist(), rel=REL, abs=ABS)
    assert split.score == pytest.approx(result.heads[1][2], rel=REL, abs=ABS)


def test_pairs_mean_and_spread(toy: ToolContext) -> None:
    pairs = [
        {"clean_prompt": TOY_PROMPT, "answer": "w5", "wrong_answer": "w61"},
        {"clean_prompt": TOY_OTHER, "answer": "w3", "wrong_answer": "w90"},
        {"clean_prompt": TOY_BASELINE, "answer": "w9", "wrong_answer": "w61"},
    ]
    result = head_attribution(toy, pairs=pairs, top_k=3)
    references = [reference_grid(toy, p["clean_prompt"], p["answer"], p["wrong_answer"]) for p in pairs]
    grids = torch.stack([grid for grid, _ in references])
    assert torch.tensor(result.heads) == pytest.approx(grids.mean(dim=0), rel=REL, abs=ABS)
    assert result.spread is not None and result.spread.n_pairs == 3
    assert torch.tensor(result.spread.std) == pytest.approx(grids.std(dim=0, unbiased=False), rel=REL, abs=ABS)
    assert torch.tensor(result.spread.min) == pytest.approx(grids.amin(dim=0), rel=REL, abs=ABS)
    assert result.pairs is not None
    assert [p.clean_metric for p in result.pairs] == pytest.approx([a for _, a in references], rel=REL)
    assert all(p.corrupted_metric is None for p in result.pairs)
    assert result.actual == pytest.approx(sum(a for _, a in references) / 3, rel=REL)
    assert (result.top_heads[0].layer, result.top_heads[0].head) == (1, 2)


def test_pairs_with_corrupted_prompts_are_differences(toy: ToolContext) -> None:
    pairs = [{"clean_prompt": TOY_PROMPT, "corrupted_prompt": TOY_BASELINE, "answer": "w5", "wrong_answer": "w61"}]
    result = head_attribution(toy, pairs=pairs)
    single = head_attribution(toy, TOY_PROMPT, "w5", "w61", baseline_prompt=TOY_BASELINE)
    assert result.heads == single.heads
    assert result.pairs is not None and result.pairs[0].corrupted_metric == single.baseline.baseline_actual


def test_pairs_run_as_rows_of_one_batch_and_equal_the_single_calls(
    toy: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four pairs with corrupted prompts, all of one length: one batched forward pass, not eight."""
    words = TOY_PROMPT.split()
    pairs = [
        {"clean_prompt": " ".join(words[i:] + words[:i]), "corrupted_prompt": TOY_BASELINE, "answer": "w5",
         "wrong_answer": "w61"}
        for i in range(4)
    ]  # fmt: skip
    assert len({len(p["clean_prompt"].split()) for p in pairs} | {len(TOY_BASELINE.split())}) == 1
    runs: list[int] = []
    original = type(toy.model.bridge).run_with_cache

    def counted(self: object, tokens: torch.Tensor, *args: object, **kwargs: object) -> object:
        runs.append(int(tokens.shape[0]))
        return original(self, tokens, *args, **kwargs)

    monkeypatch.setattr(type(toy.model.bridge), "run_with_cache", counted)
    result = head_attribution(toy, pairs=pairs)
    assert runs == [8]
    monkeypatch.undo()
    singles = [head_attribution(toy, p["clean_prompt"], "w5", "w61", baseline_prompt=TOY_BASELINE).heads for p in pairs]
    assert torch.tensor(result.heads) == pytest.approx(torch.tensor(singles).mean(dim=0), rel=REL, abs=ABS)


def test_plain_call_unchanged(toy: ToolContext) -> None:
    plain = head_attribution(toy, TOY_PROMPT, "w5", "w61")
    assert plain.by_source is None and plain.baseline is None and plain.spread is None and plain.pairs is None
    grid, _ = reference_grid(toy, TOY_PROMPT, "w5", "w61")
    assert torch.tensor(plain.heads) == pytest.approx(grid, rel=REL, abs=ABS)


# ---- neurons -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrong", ["w61", None])
def test_neuron_attribution_matches_full_resid_decomposition(llama: ToolContext, wrong: str | None) -> None:
    result = neuron_attribution(llama, TOY_PROMPT, "w5", wrong, top_k=10)
    values, labels = neuron_reference(llama, TOY_PROMPT, "w5", wrong)
    neuron_rows = [i for i, label in enumerate(labels) if "N" in label and label.startswith("L")]
    neuron_values = values[neuron_rows]
    best = neuron_values.abs().argsort(descending=True)[:10]
    expected = [labels[neuron_rows[int(i)]] for i in best]
    assert [f"L{n.layer}N{n.neuron}" for n in result.top_neurons] == expected
    assert [n.attribution for n in result.top_neurons] == pytest.approx(neuron_values[best].tolist(), rel=REL, abs=ABS)
    # layer totals: the sum over each layer's neurons; plus b_out, the MLP's whole direct effect
    whole = head_attribution(llama, TOY_PROMPT, "w5", wrong)
    assert [t + b for t, b in zip(result.layer_totals, result.bias_totals, strict=True)] == pytest.approx(
        whole.other.mlp, rel=5e-3, abs=1e-4
    )
    assert result.actual == pytest.approx(whole.actual, rel=REL)


def test_neuron_activations_are_gate_times_up(llama: ToolContext) -> None:
    """On a gated MLP the activation is act(gate) x up, computed here from the Hugging Face module itself."""
    result = neuron_attribution(llama, TOY_PROMPT, "w5", "w61", layers=[1], top_k=20)
    hand = hand_gated_activations(llama, TOY_PROMPT, 1)
    assert result.layers == [1]
    for neuron in result.top_neurons:
        assert neuron.layer == 1
        assert neuron.activation == pytest.approx(float(hand[neuron.neuron]), rel=REL, abs=ABS)


def test_mlp_neurons_most_active_and_their_tokens(llama: ToolContext) -> None:
    result = mlp_neurons(llama, TOY_PROMPT, 0, top_k=4, top_tokens=3)
    hand = hand_gated_activations(llama, TOY_PROMPT, 0)
    assert result.gated and result.d_mlp == 96
    assert [n.neuron for n in result.neurons] == hand.abs().argsort(descending=True)[:4].tolist()
    assert [n.activation for n in result.neurons] == pytest.approx(
        hand[[n.neuron for n in result.neurons]].tolist(), rel=REL, abs=ABS
    )
    tokens, _, cache = full_cache(llama, TOY_PROMPT)
    pos = tokens.shape[-1] - 1
    W_out = llama.model.bridge.blocks[0].mlp.W_out.detach()
    for neuron in result.neurons:
        write = neuron.activation * W_out[neuron.neuron]
        reference = ln_logits(cache, write, pos, llama.model.bridge.W_U.detach())
        assert [t.id for t in neuron.promoted] == reference.topk(3).indices.tolist()
        assert [t.logit for t in neuron.suppressed] == pytest.approx(
            (-(-reference).topk(3).values).tolist(), rel=5e-3, abs=1e-4
        )


def test_neuron_attribution_refuses_over_the_work_cap(toy_host: ModelHost) -> None:
    from lens_mcp.errors import LensError

    with toy_host.use() as model:
        tc = ToolContext(model, Limits(max_work_units=5))
        with pytest.raises(LensError, match="refused before computing"):
            neuron_attribution(tc, TOY_PROMPT, "w5")


# ---- composition_scores ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["q", "k", "v"])
@pytest.mark.parametrize("fixture", ["toy", "llama"])
def test_composition_matches_all_composition_scores(request: pytest.FixtureRequest, fixture: str, kind: str) -> None:
    tc: ToolContext = request.getfixturevalue(fixture)
    with torch.no_grad(), one_thread():
        reference = tc.model.bridge.all_composition_scores(kind.upper()).scores
    scores = all_scores(tc, kind)
    assert set(scores) == set(range(1, tc.model.cfg.n_layers))
    for layer, grid in scores.items():
        assert grid.shape == (layer, tc.model.cfg.n_heads, tc.model.cfg.n_heads)  # grouped-query heads expanded
        assert grid == pytest.approx(reference[:layer, :, layer], abs=1e-5)


def test_composition_chunked_senders_and_work_cap(llama: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    from lens_mcp.errors import LensError
    from lens_mcp.tools.weights import composition_scores as module

    whole = all_scores(llama, "k")
    monkeypatch.setattr(module, "PRODUCT_FLOATS", 1)  # one sender layer per product
    assert all_scores(llama, "k")[1] == pytest.approx(whole[1], abs=1e-6)
    monkeypatch.setattr(module, "MAX_MACS", 10)
    with pytest.raises(LensError, match="multiply-adds"):
        composition_scores(llama, "k")


def test_toy_top_k_composition_is_previous_token_into_induction(toy: ToolContext) -> None:
    circuit = json.loads((BUILTIN / "circuit.json").read_text())
    result = composition_scores(toy, "k", top_k=3)
    top = result.top_pairs[0]
    assert [top.sender_layer, top.sender_head] == circuit["previous_token_head"]
    assert [top.receiver_layer, top.receiver_head] == circuit["induction_head"]
    assert top.ratio == pytest.approx(top.score / result.baseline_mean, rel=REL)
    assert top.score > result.baseline_mean + 10 * result.baseline_std
    assert result.n_pairs == 9 and result.receiver_layers == [1]


def test_composition_random_baseline_matches_gaussian_matrices(toy: ToolContext) -> None:
    """The baseline: TransformerLens's composition score of Gaussian factors of the model's shapes."""
    from transformer_lens.FactoredMatrix import FactoredMatrix
    from transformer_lens.utilities.matrix import composition_scores as tl_scores

    result = composition_scores(toy, "v", top_k=1)
    generator = torch.Generator().manual_seed(123)
    d_model, d_head = toy.model.cfg.d_model, toy.model.cfg.d_head

    def factored() -> FactoredMatrix:
        return FactoredMatrix(
            torch.randn(16, d_model, d_head, generator=generator), torch.randn(16, d_head, d_model, generator=generator)
        )

    with one_thread():
        sample = tl_scores(factored(), factored(), broadcast_dims=False)
    assert float(sample.mean()) == pytest.approx(result.baseline_mean, abs=5 * result.baseline_std)


def test_composition_layers_are_receivers(llama: ToolContext) -> None:
    result = composition_scores(llama, "q", top_k=100, layers=[-1])
    assert result.receiver_layers == [1] and result.n_pairs == 4 * 4
    assert all(p.receiver_layer == 1 and p.sender_layer == 0 for p in result.top_pairs)
    scores = [p.score for p in result.top_pairs]
    assert scores == sorted(scores, reverse=True)


# ---- through the MCP client --------------------------------------------------------------------------------


async def test_new_tools_through_the_client(toy_host: ModelHost) -> None:
    server = build_server(toy_host)
    calls = {
        "head_output": {"prompt": TOY_PROMPT, "layer": 1, "head": 2, "top_k": 3},
        "neuron_attribution": {"prompt": TOY_PROMPT, "answer": "w5", "wrong_answer": "w61", "top_k": 5},
        "mlp_neurons": {"prompt": TOY_PROMPT, "layer": 0, "top_k": 2},
        "composition_scores": {"kind": "k", "top_k": 3},
        "head_attribution": {
            "pairs": [
                {"clean_prompt": TOY_PROMPT, "corrupted_prompt": TOY_BASELINE, "answer": "w5", "wrong_answer": "w61"}
            ]
        },
    }
    for name, arguments in calls.items():
        data = result_data(await call_tool(server, name, arguments))
        assert len(json.dumps(data)) < 8000, name
    data = result_data(await call_tool(server, "composition_scores", calls["composition_scores"]))
    assert data["top_pairs"][0]["sender_head"] == 1 and data["top_pairs"][0]["receiver_head"] == 2
    assert "meaning" in data
    assert count_hooks(toy_host.model.bridge) == 0


BAD_CALLS = [
    ("head_output", {"prompt": TOY_PROMPT, "layer": 5, "head": 0}, ["layer=5 is out of range"]),
    ("head_output", {"prompt": TOY_PROMPT, "layer": 1, "head": 9}, ["head=9 is out of range"]),
    ("head_output", {"prompt": TOY_PROMPT, "layer": 1, "head": 2, "source_position": 40}, ["source_position=40"]),
    ("head_output", {"prompt": "", "layer": 1, "head": 2}, ["prompt is empty"]),
    ("neuron_attribution", {"prompt": TOY_PROMPT, "answer": "w5 w6"}, ["answer must be a single token"]),
    ("neuron_attribution", {"prompt": TOY_PROMPT, "answer": "w5", "layers": []}, ["layers: got an empty list"]),
    ("neuron_attribution", {"prompt": TOY_PROMPT, "answer": "w5", "layers": [7]}, ["layers=7 is out of range"]),
    ("neuron_attribution", {"prompt": TOY_PROMPT, "answer": "w5", "top_k": 0}, ["top_k=0 is out of range"]),
    ("mlp_neurons", {"prompt": TOY_PROMPT, "layer": 0, "top_tokens": 0}, ["top_tokens=0 is out of range"]),
    ("mlp_neurons", {"prompt": TOY_PROMPT, "layer": 0, "position": 99}, ["position=99 is out of range"]),
    ("composition_scores", {"kind": "x"}, ["kind"]),
    ("composition_scores", {"kind": "k", "layers": [0]}, ["no earlier heads"]),
    ("head_attribution", {"answer": "w5"}, ["prompt is required"]),
    ("head_attribution", {"prompt": TOY_PROMPT}, ["answer is required"]),
    (
        "head_attribution",
        {"prompt": TOY_PROMPT, "answer": "w5", "pairs": [{"clean_prompt": TOY_PROMPT, "answer": "w5"}]},
        ["either pairs=[...] or the single-prompt arguments"],
    ),
    (
        "head_attribution",
        {"pairs": [{"clean_prompt": TOY_PROMPT, "answer": "w5"}], "by_source": True},
        ["by_source reads one prompt"],
    ),
    ("head_attribution", {"prompt": TOY_PROMPT, "answer": "w5", "layer": 1}, ["pass by_source=true"]),
    (
        "head_attribution",
        {"prompt": TOY_PROMPT, "answer": "w5", "by_source": True, "layer": 7, "head": 0},
        ["layer=7 is out of range"],
    ),
    (
        "head_attribution",
        {"prompt": TOY_PROMPT, "answer": "w5", "by_source": True, "layer": 1},
        ["pass both layer and head"],
    ),
    (
        "head_attribution",
        {"prompt": TOY_PROMPT, "answer": "w5", "by_source": True, "baseline_prompt": TOY_OTHER},
        ["same length"],
    ),
    (
        "head_attribution",
        {"pairs": [{"clean_prompt": TOY_PROMPT, "answer": "w5"}, {"clean_prompt": TOY_OTHER, "answer": "w3 w4"}]},
        ["pairs[1].answer must be a single token"],
    ),
    (
        "head_attribution",
        {
            "pairs": [
                {"clean_prompt": TOY_PROMPT, "answer": "w5", "corrupted_prompt": TOY_BASELINE},
                {"clean_prompt": TOY_OTHER, "answer": "w3"},
            ]
        },
        ["given in some pairs and not others"],
    ),
    ("head_attribution", {"pairs": [{"clean_prompt": "", "answer": "w5"}]}, ["pairs[0].clean_prompt is empty"]),
    ("head_attribution", {"pairs": [{"clean_prompt": TOY_PROMPT}]}, ["answer is required"]),
    ("head_attribution", {"pairs": []}, ["pairs is empty"]),
]


@pytest.mark.parametrize(("name", "arguments", "fragments"), BAD_CALLS)
async def test_bad_input_is_a_readable_error(
    toy_host: ModelHost, name: str, arguments: dict[str, Any], fragments: list[str]
) -> None:
    server = build_server(toy_host)
    message = error_text(await call_tool(server, name, arguments))
    assert "unexpectedly" not in message, message
    for fragment in fragments:
        assert fragment in message, (arguments, message)
    assert count_hooks(toy_host.model.bridge) == 0


# ---- a model that normalizes each sublayer's output (Gemma 2): refused, not silently wrong ------------------


@pytest.fixture(scope="module")
def gemma2_host(tmp_path_factory: pytest.TempPathFactory) -> ModelHost:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    folder = tmp_path_factory.mktemp("tiny_gemma2")
    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
    )
    Gemma2ForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(BUILTIN / name, folder / name)
    host = ModelHost(Limits())
    host.load(str(folder), device="cpu")
    return host


@pytest.mark.parametrize(
    ("name", "arguments", "fragment"),
    [
        ("head_output", {"prompt": TOY_PROMPT, "layer": 1, "head": 0}, "head_output is not supported on this model"),
        ("neuron_attribution", {"prompt": TOY_PROMPT, "answer": "w5"}, "norm after the sublayer"),
        ("mlp_neurons", {"prompt": TOY_PROMPT, "layer": 0}, "norm after the sublayer"),
    ],
)
async def test_post_sublayer_norm_models_are_refused(
    gemma2_host: ModelHost, name: str, arguments: dict[str, Any], fragment: str
) -> None:
    message = error_text(await call_tool(build_server(gemma2_host), name, arguments))
    assert fragment in message and "unexpectedly" not in message
    assert count_hooks(gemma2_host.model.bridge) == 0
