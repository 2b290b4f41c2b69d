"""edge_attribution and circuit_faithfulness: position EAP equals TransformerLens's edge attribution patching and
faithfulness equals TransformerLens's `faithfulness` on toy-induction and every non-GQA family it accepts;
component scores are sums over positions; under grouped-query attention the scores equal hand-written scalar
hooks and verified edges equal path_patch; EAP-IG equals a plain loop over interpolation steps; bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformer_lens.tools.analysis.attribution_patching import (
    EdgeAttributionConfig,
    Node,
    cache_activation_and_gradient,
    faithfulness,
)
from transformer_lens.tools.analysis.attribution_patching import attribution_patch as tl_attribution_patch

from lens_mcp.errors import LensError
from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost, count_hooks
from lens_mcp.tools.causal.path_patch import run_path_patch
from lens_mcp.tools.circuits._attribute import attribute, embeddings
from lens_mcp.tools.circuits._engine import _checked_fused_layers, _gradient_pass, build_graph
from lens_mcp.tools.circuits._faithful import evaluate, kept_masks
from lens_mcp.tools.circuits._fused import fused_layers
from lens_mcp.tools.circuits._graph import Graph
from lens_mcp.tools.circuits._inputs import load_dataset
from lens_mcp.tools.circuits.circuit_faithfulness import circuit_faithfulness
from lens_mcp.tools.circuits.circuits import circuits
from lens_mcp.tools.circuits.edge_attribution import edge_attribution, verify_edges
from lens_mcp.tools.core.batching import ProgressCounter
from lens_mcp.tools.core.context import ToolContext
from tests.architectures import FAMILIES, build

TOL = 1e-4
TOY = ("w20 w31 w42 w53 w64 w20 w31 w42 w53", "w20 w31 w42 w53 w77 w20 w31 w42 w53", " w64", " w77")
TINY = ("ba be bi bo bu ba be bi", "ba be bi da bu ba be bi", " bo", " da")
TL_FAMILIES = ["gpt2", "gpt_neox"]
"""The non-GQA families whose edge graph TransformerLens accepts (phi and cohere: no hook_mlp_in; gemma2,
olmo2: norms after each sublayer; granite: scaled residual adds)."""

_HOSTS: dict[str, ModelHost] = {}


def _host(name: str, tmp_path_factory: pytest.TempPathFactory) -> ModelHost:
    if name not in _HOSTS:
        host = ModelHost(Limits())
        if name == "toy":
            host.load("toy-induction", device="cpu")
        else:
            folder = Path(tmp_path_factory.mktemp(name))
            build(FAMILIES[name], folder)
            host.load(str(folder), device="cpu")
        _HOSTS[name] = host
    return _HOSTS[name]


@pytest.fixture
def ctx(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    host = _host(request.param, tmp_path_factory)
    with host.use() as model:
        yield ToolContext(model, host.limits), (TOY if request.param == "toy" else TINY)


def _index(graph: Graph, node: Node, writer: bool) -> int:
    if writer:
        if node.kind == "embed":
            return 0
        return graph.writer_index(int(node.layer or 0), node.head if node.kind == "attn_head_out" else None)
    if node.kind == "logits":
        return len(graph.readers) - 1
    base = graph.reader_base(int(node.layer or 0))
    if node.kind == "mlp_in":
        return base + graph.readers_per_layer - 1
    offset = {"q_input": 0, "k_input": graph.n_heads, "v_input": graph.n_heads + graph.n_kv}[node.kind]
    return base + offset + int(node.head or 0)


def _setup(tc: ToolContext, prompts: tuple[str, str, str, str]) -> tuple[Graph, torch.Tensor, Any, Any]:
    clean, corrupted, answer, wrong = prompts
    data = load_dataset(tc, None, clean, corrupted, answer, wrong, "logit_diff", True)
    a, b = tc.model.bridge.to_single_token(answer), tc.model.bridge.to_single_token(wrong)
    return build_graph(tc), data.tokens[0], data.metrics[0], lambda logits: logits[0, -1, a] - logits[0, -1, b]


def _scores(tc: ToolContext, graph: Graph, tokens: torch.Tensor, metric: Any, steps: int, by_position: bool) -> Any:
    return attribute(tc, graph, [tokens], [metric], steps, by_position, ProgressCounter()).values


@pytest.mark.parametrize("ctx", ["toy", *TL_FAMILIES], indirect=True)
def test_position_eap_equals_transformer_lens(ctx: Any) -> None:
    tc, prompts = ctx
    graph, tokens, metric, tl_metric = _setup(tc, prompts)
    ours = _scores(tc, graph, tokens, metric, 1, True).clone()
    result = tl_attribution_patch(
        tc.model.bridge, tokens[:1], tokens[1:], tl_metric, EdgeAttributionConfig(granularity="edge")
    )
    assert len(result.edge_scores) == graph.n_edges * tokens.shape[-1]
    scale = max(abs(v) for v in result.edge_scores.values())
    for (writer, reader), score in result.edge_scores.items():
        cell = (writer.position, _index(graph, writer, True), _index(graph, reader, False))
        assert abs(float(ours[cell]) - score) <= TOL * max(1.0, scale), (writer, reader)
        ours[cell] = 0.0
    assert float(ours.abs().max()) == 0.0  # no edge TransformerLens lacks


@pytest.mark.parametrize("ctx", ["toy", "gpt2", "llama"], indirect=True)
def test_component_scores_are_sums_over_positions(ctx: Any) -> None:
    tc, prompts = ctx
    graph, tokens, metric, _ = _setup(tc, prompts)
    by_position = _scores(tc, graph, tokens, metric, 1, True)
    component = _scores(tc, graph, tokens, metric, 1, False)
    torch.testing.assert_close(component, by_position.sum(dim=0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ctx", ["toy", *TL_FAMILIES], indirect=True)
def test_faithfulness_equals_transformer_lens(ctx: Any) -> None:
    tc, prompts = ctx
    graph, tokens, metric, tl_metric = _setup(tc, prompts)
    ranking = tl_attribution_patch(
        tc.model.bridge, tokens[:1], tokens[1:], tl_metric, EdgeAttributionConfig(granularity="edge")
    )
    sizes = [1, 3, 10, 40]
    theirs, circuits_ = [], []
    for k in sizes:
        top = ranking.top_edges(k)
        theirs.append(faithfulness(tc.model.bridge, tokens[:1], tokens[1:], tl_metric, top))
        circuits_.append([(_index(graph, w, True), _index(graph, r, False), w.position) for w, r, _ in top])
    kept = kept_masks(graph, circuits_, int(tokens.shape[-1]))
    curve = evaluate(tc, graph, [tokens], [metric], kept, "corrupted", None, 0, ProgressCounter())
    assert abs(float(curve.ablated[0]) - theirs[0].corrupt_metric) <= TOL
    assert abs(float(curve.full[0]) - theirs[0].full_metric) <= TOL
    _, _, recovered, _, circuit_metric = curve.pooled()
    for ours_r, ours_m, tl in zip(recovered, circuit_metric, theirs, strict=True):
        tl_metric_value = tl.corrupt_metric + tl.recovered * (tl.full_metric - tl.corrupt_metric)
        assert abs(ours_m - tl_metric_value) <= TOL
        assert abs(ours_r - tl.recovered) <= TOL * max(1.0, 1 / abs(tl.full_metric - tl.corrupt_metric))


@pytest.mark.parametrize("ctx", ["llama"], indirect=True)
def test_gqa_scores_equal_hand_written_hooks(ctx: Any) -> None:
    """Each edge's EAP score is d/d(eps) of the metric when eps * (clean - corrupted writer output) is added to
    that one reader's input on the corrupted run: a scalar leaf in a hand-written hook, per edge."""
    tc, prompts = ctx
    graph, tokens, metric, tl_metric = _setup(tc, prompts)
    assert graph.gqa
    ours = _scores(tc, graph, tokens, metric, 1, False)
    with tc.view.per_head_hooks():
        _, clean_cache = tc.model.bridge.run_with_cache(tokens[:1])
        _, corrupted_cache = tc.model.bridge.run_with_cache(tokens[1:])

    def writer_delta(layer: int, head: int | None) -> torch.Tensor:
        name = (
            "hook_embed"
            if layer < 0
            else (f"blocks.{layer}.attn.hook_result" if head is not None else f"blocks.{layer}.hook_mlp_out")
        )
        delta = clean_cache[name] - corrupted_cache[name]
        return delta[:, :, head] if head is not None else delta

    checks = [
        ((0, 1), "blocks.1.attn.hook_k_input", 1, "L0H1->L1.kv1.k"),
        ((0, 3), "blocks.1.attn.hook_v_input", 0, "L0H3->L1.kv0.v"),
        ((0, None), "blocks.1.attn.hook_q_input", 2, "MLP0->L1H2.q"),
        ((-1, None), "blocks.0.attn.hook_v_input", 1, "embed->L0.kv1.v"),
        ((1, 0), "blocks.1.hook_resid_post", None, "L1H0->logits"),
    ]
    for (layer, head), hook, index, name in checks:
        delta = writer_delta(layer, head)
        eps = torch.zeros((), requires_grad=True)

        def add(
            act: torch.Tensor, hook: Any = None, delta: torch.Tensor = delta, index: Any = index, eps: Any = eps
        ) -> torch.Tensor:
            act = act.clone()
            if index is None:
                return act + eps * delta
            act[:, :, index] = act[:, :, index] + eps * delta
            return act

        with tc.view.per_head_hooks(), torch.enable_grad(), tc.model.bridge.hooks(fwd_hooks=[(hook, add)]):
            (grad,) = torch.autograd.grad(tl_metric(tc.model.bridge(tokens[1:])), [eps])
        writer, reader, _ = graph.parse_edge(name, "test", None)
        assert abs(float(ours[writer, reader]) - float(grad)) <= TOL * max(1.0, abs(float(grad))), name


@pytest.mark.parametrize("ctx", ["toy", "llama"], indirect=True)
def test_verified_edges_equal_path_patch(ctx: Any) -> None:
    tc, prompts = ctx
    graph, tokens, metric, _ = _setup(tc, prompts)
    clean, corrupted, answer, wrong = prompts
    data = load_dataset(tc, None, clean, corrupted, answer, wrong, "logit_diff", True)
    last = graph.n_layers - 1
    kv = "kv" if graph.gqa else "H"
    cases = [((0, 1), [[last, 0]], "v", f"L0H1->L{last}.kv0.v" if graph.gqa else f"L0H1->L{last}H0.v")]
    cases.append(((0, 2), [[last, 1]], "q", f"L0H2->L{last}H1.q"))
    cases.append(((0, 0), "logits", "q", "L0H0->logits"))
    cases.append(((last, 1), "logits", "q", f"L{last}H1->logits"))
    del kv
    with torch.no_grad():
        corrupted_metric = float(metric(tc.model.bridge(tokens[1:2])[:, -1]))
    for sender, receivers, receiver_input, name in cases:
        run = run_path_patch(tc, clean, corrupted, answer, wrong, [list(sender)], receivers, receiver_input)
        exact = float(run.values.flatten()[0]) - corrupted_metric
        ours = float(verify_edges(tc, graph, data, [graph.parse_edge(name, "test", None)])[0])
        assert abs(ours - exact) <= TOL * max(1.0, abs(exact)), name


@pytest.mark.parametrize("ctx", ["toy", "llama"], indirect=True)
def test_eap_ig_equals_a_loop_over_steps(ctx: Any) -> None:
    """EAP-IG with m steps = (clean - corrupted writer) . mean over k < m of TransformerLens's gradient at the
    corrupted prompt with embeddings corrupted + k/m (clean - corrupted); m=1 is EAP."""
    tc, prompts = ctx
    graph, tokens, metric, tl_metric = _setup(tc, prompts)
    steps = 3
    ours = _scores(tc, graph, tokens, metric, steps, False)
    clean_embed, corrupted_embed = embeddings(tc, tokens[:1]), embeddings(tc, tokens[1:])
    reader_hooks = {"q": "attn.hook_q_input", "k": "attn.hook_k_input", "v": "attn.hook_v_input"}
    names = [f"blocks.{graph.n_layers - 1}.{h}" for h in reader_hooks.values()]
    names.append(f"blocks.{graph.n_layers - 1}.hook_mlp_in")
    grads: dict[str, torch.Tensor] = {}
    with tc.view.per_head_hooks():
        _, clean_cache = tc.model.bridge.run_with_cache(tokens[:1])
        _, corrupted_cache = tc.model.bridge.run_with_cache(tokens[1:])
        for k in range(steps):
            embed = corrupted_embed + (k / steps) * (clean_embed - corrupted_embed)
            with tc.model.bridge.hooks(fwd_hooks=[("hook_embed", lambda act, hook=None, e=embed: e.clone())]):
                cache = cache_activation_and_gradient(tc.model.bridge, tokens[1:], tl_metric, names_filter=names)
            for name in names:
                g = cache.gradients[name]
                assert g is not None
                grads[name] = grads.get(name, 0) + g / steps
    last = graph.n_layers - 1
    delta_head = (clean_cache["blocks.0.attn.hook_result"] - corrupted_cache["blocks.0.attn.hook_result"])[0, :, 1]
    delta_mlp = (clean_cache["blocks.0.hook_mlp_out"] - corrupted_cache["blocks.0.hook_mlp_out"])[0]
    expected = {
        f"L0H1->L{last}H0.q": (delta_head * grads[f"blocks.{last}.attn.hook_q_input"][0, :, 0]).sum(),
        graph.edge_name(1 + 1, graph.reader_base(last) + graph.n_heads + graph.n_kv): (
            delta_head * grads[f"blocks.{last}.attn.hook_v_input"][0, :, 0]
        ).sum(),
        f"MLP0->MLP{last}": (delta_mlp * grads[f"blocks.{last}.hook_mlp_in"][0]).sum(),
    }
    for name, value in expected.items():
        writer, reader, _ = graph.parse_edge(name, "test", None)
        assert abs(float(ours[writer, reader]) - float(value)) <= TOL * max(1.0, abs(float(value))), name
    eap = _scores(tc, graph, tokens, metric, 1, False)
    ig1 = attribute(tc, graph, [tokens], [metric], 1, False, ProgressCounter()).values
    torch.testing.assert_close(eap, ig1)


def test_tool_results_and_store_on_toy(tmp_path_factory: pytest.TempPathFactory) -> None:
    host = _host("toy", tmp_path_factory)
    clean, corrupted, answer, wrong = TOY
    with host.use() as model:
        tc = ToolContext(model, host.limits)
        hooks_before = count_hooks(tc.model.bridge)
        result = edge_attribution(tc, clean, corrupted, answer, wrong, top_k=5, verify_top=3, name="toy")
        # the planted induction head's value input and its direct path to the logits carry the behaviour
        assert {"L1H2->logits"} <= {e.edge for e in result.top_edges[:3]}
        assert result.n_edges == build_graph(tc).n_edges
        assert all(not v.wrong_sign for v in result.verified)
        curve = circuit_faithfulness(tc, clean, corrupted, answer, wrong, circuit="toy", k=[1, 2, 5, 20], target=0.8)
        assert [p.k for p in curve.curve] == [1, 2, 5, 20]
        assert curve.smallest_k is not None and curve.curve[-1].recovered > 0.8
        assert abs(curve.ablated_metric - result.corrupted_metric) < 1e-3
        everything = circuit_faithfulness(
            tc, clean, corrupted, answer, wrong, circuit="toy", k=[result.n_edges], name="all"
        )
        assert abs(everything.curve[0].recovered - 1) < 1e-4 and abs(everything.curve[0].complement) < 1e-4
        listed = {c.name: c for c in circuits(tc).circuits}
        assert listed["all"].last_recovered is not None and abs(listed["all"].last_recovered - 1) < 1e-3
        dry = edge_attribution(tc, clean, corrupted, answer, wrong, dry_run=True)
        assert dry.dry_run and not dry.top_edges and dry.cost.forward_passes >= 1
        assert count_hooks(tc.model.bridge) == hooks_before
        assert not tc.model.bridge.cfg.use_split_qkv_input


@pytest.mark.parametrize("ctx", ["toy"], indirect=True)
def test_mean_and_resample_ablation(ctx: Any) -> None:
    """Mean ablation with one reference prompt equals corrupted ablation with that prompt as the corrupted run;
    resample with one reference prompt equals it too."""
    tc, prompts = ctx
    clean, corrupted, answer, wrong = prompts
    args = dict(
        clean_prompt=clean, corrupted_prompt=corrupted, answer=answer, wrong_answer=wrong, nodes=["L1H2", "L0H1"]
    )
    base = circuit_faithfulness(tc, **args)
    mean = circuit_faithfulness(tc, **args, ablation="mean", reference_prompts=[corrupted])
    resample = circuit_faithfulness(tc, **args, ablation="resample", reference_prompts=[corrupted])
    assert base.curve[0].metric == mean.curve[0].metric == resample.curve[0].metric


@pytest.mark.parametrize("ctx", ["toy", "llama"], indirect=True)
def test_bad_input(ctx: Any) -> None:
    tc, prompts = ctx
    clean, corrupted, answer, wrong = prompts
    single = dict(clean_prompt=clean, corrupted_prompt=corrupted, answer=answer, wrong_answer=wrong)
    graph = build_graph(tc)
    bad = {
        "L9H0->logits": "layer 9 does not exist",
        "L0H7->logits": "head 7 does not exist",
        "L1H0->L0H1.q": "backwards",
        "MLP1->MLP1": "backwards",
        "L0H1": "not an edge",
        "L0H1->nowhere": "not a reader",
        "L0H1->logits@3": "component edges",
    }
    if graph.gqa:
        bad["L0H1->L1H2.k"] = "L1.kv1.k"
        bad["L0H1->L1.kv0.q"] = "query inputs belong to query heads"
    else:
        bad["L0H1->L1.kv0.k"] = "no grouped-query attention"
    for edge, message in bad.items():
        with pytest.raises(LensError, match=message):
            circuit_faithfulness(tc, **single, edges=["L0H0->logits", edge])
    with pytest.raises(LensError, match="non-empty"):
        circuit_faithfulness(tc, **single, edges=[])
    with pytest.raises(LensError, match="empty"):
        circuit_faithfulness(tc, **single, edges=["L0H0->logits"], remove=["L0H0->logits"])
    edge_attribution(tc, **single, top_k=3, verify_top=0)
    with pytest.raises(LensError, match="larger than"):
        circuit_faithfulness(tc, **single, circuit="last", k=[graph.n_edges + 1])
    with pytest.raises(LensError, match="not stored"):
        circuit_faithfulness(tc, **single, circuit="nope")
    with pytest.raises(LensError, match="exactly one"):
        circuit_faithfulness(tc, **single, circuit="last", nodes=["L0H0"])
    with pytest.raises(LensError, match="ig_steps"):
        edge_attribution(tc, **single, method="eap-ig", ig_steps=0)
    with pytest.raises(LensError, match="tokens"):
        circuit_faithfulness(tc, **single, nodes=["L0H0"], ablation="mean", reference_prompts=["ba"])
    hooks = count_hooks(tc.model.bridge)
    assert hooks == 0 or hooks == count_hooks(tc.model.bridge)


@pytest.mark.parametrize("family", ["gemma2", "olmo2", "granite", "phi", "cohere"])
def test_refused_where_not_exact(family: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    host = _host(family, tmp_path_factory)
    clean, corrupted, answer, wrong = TINY
    with host.use() as model:
        tc = ToolContext(model, host.limits)
        with pytest.raises(LensError, match="not (exact|supported) on this model"):
            edge_attribution(tc, clean, corrupted, answer, wrong)
        assert not tc.model.bridge.cfg.use_split_qkv_input


TOY_PAIRS = [
    ("w20 w31 w42 w53 w64 w20 w31 w42 w53", "w20 w31 w42 w53 w77 w20 w31 w42 w53", " w64", " w77"),
    ("w11 w12 w13 w14 w15 w11 w12 w13 w14", "w11 w12 w13 w14 w16 w11 w12 w13 w14", " w15", " w16"),
    ("w30 w29 w28 w27 w26 w30 w29 w28 w27", "w30 w29 w28 w27 w25 w30 w29 w28 w27", " w26", " w25"),
]


@pytest.mark.parametrize("ctx", ["toy"], indirect=True)
@pytest.mark.parametrize("by_position", [False, True])
def test_pairs_batched_equal_the_mean_of_single_pairs(ctx: Any, by_position: bool, monkeypatch: Any) -> None:
    """Pairs run as rows of one batch (and, with a small memory budget, as several chunks of pairs x steps) give
    the mean of the single-pair scores, for EAP and EAP-IG."""
    import lens_mcp.tools.circuits._attribute as attribute_module

    tc, _ = ctx
    graph = build_graph(tc)
    datasets = [load_dataset(tc, None, *pair, "logit_diff", True) for pair in TOY_PAIRS]
    tokens = [d.tokens[0] for d in datasets]
    metrics = [d.metrics[0] for d in datasets]
    for steps in (1, 3):
        single = [
            attribute(tc, graph, [t], [m], steps, by_position, ProgressCounter())
            for t, m in zip(tokens, metrics, strict=True)
        ]
        batched = attribute(tc, graph, tokens, metrics, steps, by_position, ProgressCounter())
        expected = torch.stack([s.values for s in single]).mean(dim=0)
        torch.testing.assert_close(batched.values, expected, atol=1e-5, rtol=1e-4)
        assert batched.clean_metric.tolist() == pytest.approx([float(s.clean_metric[0]) for s in single], abs=1e-5)
        assert batched.corrupted_metric.tolist() == pytest.approx(
            [float(s.corrupted_metric[0]) for s in single], abs=1e-5
        )
        # two rows per backward pass: the pairs and steps split over several chunks
        monkeypatch.setattr(
            attribute_module,
            "ROW_BYTES_BUDGET",
            2 * attribute_module.row_bytes(graph, int(tokens[0].shape[-1]), tc.view.d_model),
        )
        chunked = attribute(tc, graph, tokens, metrics, steps, by_position, ProgressCounter())
        monkeypatch.undo()
        torch.testing.assert_close(chunked.values, expected, atol=1e-5, rtol=1e-4)
        assert chunked.passes > batched.passes


@pytest.mark.parametrize("ctx", ["toy", "llama"], indirect=True)
@pytest.mark.parametrize("by_position", [False, True])
def test_edge_run_sparse_and_dense_corrections_agree(ctx: Any, by_position: bool, monkeypatch: Any) -> None:
    """The edge-ablated run gives the same metrics whether each reader's corrections are gathered edge by edge
    or multiplied as one dense product."""
    import lens_mcp.tools.circuits._engine as engine

    tc, prompts = ctx
    graph, tokens, metric, _ = _setup(tc, prompts)
    scores = _scores(tc, graph, tokens, metric, 1, by_position)
    order = torch.argsort(scores.abs().flatten(), descending=True)
    shape = tuple(scores.shape)
    ranked = [tuple(int(v) for v in torch.unravel_index(i, shape)) for i in order[: min(200, graph.n_edges)]]
    edges = [(e[1], e[2], e[0]) if by_position else (e[0], e[1], None) for e in ranked]
    kept = kept_masks(
        graph, [edges[:k] for k in (1, 5, 30, len(edges))], int(tokens.shape[-1]) if by_position else None
    )
    results = []
    for ratio in (0, 10**9):  # never dense, always dense (where the component path allows)
        monkeypatch.setattr(engine, "DENSE_RATIO", ratio)
        curve = evaluate(tc, graph, [tokens], [metric], kept, "corrupted", None, 0, ProgressCounter())
        results.append(torch.cat([curve.full, curve.ablated, curve.circuit.flatten(), curve.complement.flatten()]))
    torch.testing.assert_close(results[0], results[1], atol=1e-4, rtol=1e-4)


FUSED_FAMILIES = {"gpt_neox", "llama", "mistral", "qwen2"}
"""Families whose attention is plain q/k/v/o linear projections behind one norm: the fused gradient pass runs."""


@pytest.mark.parametrize("family", ["toy", "gpt2", *sorted(FUSED_FAMILIES)])
def test_fused_gradient_pass_equals_the_split_pass(family: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The fused gradient pass (the model's own forward pass, per-head reader gradients through each head's weight
    slice and the norm's vector-Jacobian product) gives TransformerLens's per-head split pass's reader gradients,
    writers and metric, at interpolated embeddings too; it is taken on the families it applies to, and the split
    pass elsewhere."""
    host = _host(family, tmp_path_factory)
    with host.use() as model:
        tc = ToolContext(model, host.limits)
        graph, tokens, metric, _ = _setup(tc, TOY if family == "toy" else TINY)
        layers = fused_layers(tc, graph)
        assert (layers is not None) == (family in FUSED_FAMILIES)
        if layers is None:
            assert _checked_fused_layers(tc, graph) is None
            return
        assert _checked_fused_layers(tc, graph) is not None
        embed = 0.5 * (embeddings(tc, tokens[:1]) + embeddings(tc, tokens[1:]))
        for given in (None, embed):
            fused = _gradient_pass(tc, graph, tokens[1:], metric, given, layers)
            split = _gradient_pass(tc, graph, tokens[1:], metric, given, None)
            for ours, theirs in (
                (fused.grads, split.grads),
                (fused.writers, split.writers),
                (fused.final, split.final),
            ):
                torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
            assert float(fused.metric) == pytest.approx(float(split.metric), abs=1e-5)
