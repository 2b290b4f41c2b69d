"""Every tool on every architecture family: tiny random models (tests/architectures.py) saved with
save_pretrained and loaded through ModelHost.load, the path a user's `--model <folder>` takes.

Each check compares a tool's numbers with an independent computation on the same model: the Hugging Face
model's own logits (the weights TransformerLens booted from), TransformerLens's patching and logit-lens
functions, TransformerLens's cache, or the Hugging Face model driven by hand (autograd gradients at its layer inputs
and attention output projections, edits there through forward pre-hooks, a no-cache greedy loop). Raw (unrounded) internals are compared within 1e-4; rounded results
within their 4 significant digits.

To put a new tool in the matrix: write `check_<tool>(case)` and add it to CHECKS. A registered tool missing
from CHECKS (and from NOT_IN_MATRIX) fails test_every_registered_tool_is_in_the_matrix."""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from transformer_lens import patching
from transformer_lens.tools.analysis.logit_lens import logit_lens as tl_logit_lens

from lens_mcp.errors import LensError
from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost
from lens_mcp.tools.causal.ablate_heads import ablate_heads
from lens_mcp.tools.causal.attribution_patch import PairRun, attribution_patch, estimate_effects, resolve_grid
from lens_mcp.tools.causal.patch_sweep import run_sweep
from lens_mcp.tools.causal.path_patch import run_path_patch
from lens_mcp.tools.circuits.circuit_faithfulness import circuit_faithfulness
from lens_mcp.tools.circuits.edge_attribution import edge_attribution
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.core.metrics import resolve_metric
from lens_mcp.tools.core.tokens import token_strings
from lens_mcp.tools.features._corpus import read_corpus, token_store
from lens_mcp.tools.features.build_exemplar_index import build_exemplar_index
from lens_mcp.tools.features.feature_attribution import feature_attribution
from lens_mcp.tools.features.feature_exemplars import feature_exemplars
from lens_mcp.tools.features.generate import generate
from lens_mcp.tools.features.load_sae import load_sae
from lens_mcp.tools.features.sae_features import sae_features
from lens_mcp.tools.features.search_features import search_features
from lens_mcp.tools.features.steering_vector import steering_vector
from lens_mcp.tools.model.model_info import model_info
from lens_mcp.tools.model.tokenize import tokenize
from lens_mcp.tools.reading import _dla as head_attribution_module
from lens_mcp.tools.reading.attention_pattern import attention_pattern
from lens_mcp.tools.reading.head_attribution import head_attribution
from lens_mcp.tools.reading.head_output import head_output
from lens_mcp.tools.reading.induction_scores import find_targets, head_scores_and_losses, induction_scores
from lens_mcp.tools.reading.logit_lens import lens_logits, logit_lens
from lens_mcp.tools.reading.mlp_neurons import mlp_neurons
from lens_mcp.tools.reading.neuron_attribution import neuron_attribution
from lens_mcp.tools.reading.run_with_cache import run_with_cache
from lens_mcp.tools.weights.composition_scores import all_scores, one_thread
from tests.architectures import FAMILIES, WORDS, Family, build
from tests.registry_helpers import registered_tool_names
from tests.shared import write_sae_folder

TOL = 1e-4
REL = 1e-3  # rounded results: 4 significant digits
PROMPT = "ba ke lo mu ri so ba ke lo mu"
ANSWER, WRONG = " ri", " so"
CLEAN = "ba ke lo mu ri ba ke lo mu"
CORRUPTED = "ba ke lo mu zo ba ke lo mu"
PATCH_ANSWER, PATCH_WRONG = " ri", " zo"


@dataclass
class Case:
    family: Family
    host: ModelHost
    hf: Any

    @property
    def bridge(self) -> Any:
        assert self.host.model is not None
        return self.host.model.bridge

    def tc(self) -> Any:
        return _Context(self.host)

    def hf_logits(self, text: str, *, cap: bool = True) -> torch.Tensor:
        """The Hugging Face model's own logits [pos, vocab] for `text` (BOS prepended, as the tools do);
        cap=False: with the final soft cap switched off (the pre-cap logits)."""
        tokens = self.bridge.to_tokens(text, prepend_bos=True)
        config = self.hf.config
        saved = getattr(config, "final_logit_softcapping", None)
        if not cap:
            config.final_logit_softcapping = None
        try:
            with torch.no_grad():
                return self.hf(tokens).logits[0].float()
        finally:
            if not cap:
                config.final_logit_softcapping = saved

    def token(self, text: str) -> int:
        return int(self.bridge.to_single_token(text))


class _Context:
    """A ToolContext with the family's model held as the server holds it."""

    def __init__(self, host: ModelHost) -> None:
        self.host = host

    def __enter__(self) -> ToolContext:
        self._use = self.host.use()
        return ToolContext(self._use.__enter__(), self.host.limits)

    def __exit__(self, *exc: Any) -> None:
        self._use.__exit__(*exc)


@pytest.fixture(scope="session")
def family_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    return {}


@pytest.fixture(params=list(FAMILIES))
def case(
    request: pytest.FixtureRequest, family_cases: dict[str, Case], tmp_path_factory: pytest.TempPathFactory
) -> Case:
    return load_case(request.param, family_cases, tmp_path_factory)


def load_case(name: str, family_cases: dict[str, Case], tmp_path_factory: pytest.TempPathFactory) -> Case:
    if name not in family_cases:
        folder = Path(tmp_path_factory.mktemp(name))
        hf = build(FAMILIES[name], folder)
        host = ModelHost(Limits())
        host.load(str(folder), device="cpu")
        family_cases[name] = Case(FAMILIES[name], host, hf)
    return family_cases[name]


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    # compatibility mode centres the unembedding: logits differ from HF's by a constant per position
    return logits.float().log_softmax(dim=-1)


# ---- the checks, one per tool ------------------------------------------------------------------------------


def check_boot(case: Case) -> None:
    """TransformerLens reproduces the Hugging Face model (what every other check relies on)."""
    with torch.no_grad():
        ours = case.bridge(case.bridge.to_tokens(PROMPT, prepend_bos=True))[0]
    assert (log_probs(ours) - log_probs(case.hf_logits(PROMPT))).abs().max() < TOL


def check_model_info(case: Case) -> None:
    config = case.hf.config
    with case.tc() as tc:
        info = model_info(tc)
    assert info.n_layers == config.num_hidden_layers and info.n_heads == config.num_attention_heads
    assert info.n_kv_heads == getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    assert info.d_model == config.hidden_size and info.d_vocab == config.vocab_size and info.source == "local"


def check_tokenize(case: Case) -> None:
    with case.tc() as tc:
        result = tokenize(tc, PROMPT)
    assert [i for i, _ in result.tokens] == case.bridge.to_tokens(PROMPT, prepend_bos=True)[0].tolist()


def check_run_with_cache(case: Case) -> None:
    with case.tc() as tc:
        result = run_with_cache(tc, PROMPT, hooks=["resid_post"])
        tokens = case.bridge.to_tokens(PROMPT, prepend_bos=True)
        with torch.no_grad():
            _, cache = case.bridge.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_post"))
    expected = torch.stack([cache[f"blocks.{layer}.hook_resid_post"][0].norm(dim=-1) for layer in range(2)])
    assert torch.tensor(result.hooks[0].norms) == pytest.approx(expected, rel=REL, abs=TOL)


def check_head_attribution(case: Case) -> None:
    """total = actual (to 1e-4, read from the note's unrounded gap); actual = the model's real logit
    difference (pre-cap on soft-capped models); the heads' terms sum to the attention outputs."""
    with case.tc() as tc:
        result = head_attribution(tc, PROMPT, ANSWER, WRONG)
    assert result.explained, result.note
    gap = float(re.search(r"total equals actual to ([0-9.e+-]+)", result.note).group(1))
    assert gap <= TOL
    a, b = case.token(ANSWER), case.token(WRONG)
    real = case.hf_logits(PROMPT, cap=not case.family.soft_cap)[-1]
    assert result.actual == pytest.approx(float(real[a] - real[b]), rel=REL, abs=TOL)
    assert ("before the output soft cap" in result.metric) == case.family.soft_cap
    assert ("soft-caps" in result.note) == case.family.soft_cap
    # Independent: each layer's attention output through the final norm's cached scale (TransformerLens).
    tokens = case.bridge.to_tokens(PROMPT, prepend_bos=True)
    with torch.no_grad():
        _, cache = case.bridge.run_with_cache(
            tokens, names_filter=lambda n: n.endswith(("hook_attn_out", "hook_scale", "hook_z", "hook_resid_post"))
        )
        stack = torch.stack([cache[f"blocks.{layer}.hook_attn_out"][:, -1] for layer in range(2)])
        stack = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
        direction = _readout_direction(case, a, b)
        attention = float((stack[:, 0] @ direction).sum())
        assert result.heads_total + result.other.attn_bias == pytest.approx(attention, rel=REL, abs=TOL)
        plain = not case.family.post_norms and case.family.name != "granite"
        if plain:  # no map between the heads and the stream: TransformerLens's per-head results
            heads = cache.apply_ln_to_stack(cache.stack_head_results(layer=-1, pos_slice=-1), layer=-1, pos_slice=-1)
            grid = (heads[:, 0] @ direction).reshape(2, 4)
            assert torch.tensor(result.heads) == pytest.approx(grid, rel=REL, abs=TOL)


def _readout_direction(case: Case, a: int, b: int) -> torch.Tensor:
    """W_U[:, a] - W_U[:, b] with the final RMS norm's weight (when not folded) and any linear output scale."""
    bridge = case.bridge
    direction = (bridge.W_U[:, a] - bridge.W_U[:, b]).float()
    if bridge.cfg.normalization_type in ("RMS", "RMSPre"):
        weight = bridge.ln_final(torch.full((1, 1, bridge.cfg.d_model), 1e3))[0, 0]
        direction = direction * weight
    scale = {"cohere": 1.0, "granite": 1 / 4.0}.get(case.family.name, 1.0)
    return direction * scale


def check_logit_lens(case: Case) -> None:
    """Every row equals TransformerLens's logit_lens (final norm, W_U, output transform); the last row equals
    the Hugging Face model's logits; the tool's probabilities are those of the model."""
    with case.tc() as tc:
        tokens = case.bridge.to_tokens(PROMPT, prepend_bos=True)
        raw = lens_logits(tc, tokens, tokens.shape[-1] - 1)
        result = logit_lens(tc, PROMPT, answer=ANSWER)
    reference = tl_logit_lens(case.bridge, tokens, return_type="log_probs").values.reshape(3, -1)  # (layers + 1, vocab)
    assert (log_probs(raw) - reference).abs().max() < TOL
    real = log_probs(case.hf_logits(PROMPT)[-1])
    assert (log_probs(raw[-1]) - real).abs().max() < TOL
    assert result.answer is not None
    assert result.answer.probs[-1] == pytest.approx(math.exp(float(real[case.token(ANSWER)])), rel=REL, abs=TOL)


def check_attention_pattern(case: Case) -> None:
    with case.tc() as tc:
        result = attention_pattern(tc, PROMPT, layer=1, head=3, top_k=1)
    tokens = case.bridge.to_tokens(PROMPT, prepend_bos=True)
    with torch.no_grad():
        _, cache = case.bridge.run_with_cache(tokens, names_filter=lambda n: n == "blocks.1.attn.hook_pattern")
    pattern = cache["blocks.1.attn.hook_pattern"][0, 3]
    for query in result.queries:
        assert query.top[0].weight == pytest.approx(float(pattern[query.position].max()), rel=REL, abs=TOL)


PATCH_POSITIONS = [1, 4, 9]
"""The fast check's positions: one before the prompts differ (a no-op cell), where they differ, and the last.
TransformerLens runs one forward pass per cell (about 0.2 s each here); the whole grid is test_full_patching_grid
(slow)."""


def patching_grids(case: Case, positions: list[int] | None) -> tuple[Any, torch.Tensor]:
    """(our sweep, TransformerLens's resid_pre values) on the layers x positions grid (every position: None)."""
    with case.tc() as tc:
        sweep = run_sweep(tc, CLEAN, CORRUPTED, PATCH_ANSWER, PATCH_WRONG, component="resid_pre", positions=positions)
    bridge = case.bridge
    tokens = bridge.to_tokens([CLEAN, CORRUPTED], prepend_bos=True)
    a, b = case.token(PATCH_ANSWER), case.token(PATCH_WRONG)
    cells = [(layer, pos) for layer in range(2) for pos in (positions or range(tokens.shape[-1]))]
    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(tokens[:1], names_filter=lambda name: name.endswith("hook_resid_pre"))
        reference = patching.get_act_patch_resid_pre(
            bridge,
            tokens[1:],
            clean_cache,
            lambda logits: logits[0, -1, a] - logits[0, -1, b],
            index_axis_names=None,
            index_df=pd.DataFrame(cells, columns=["layer", "pos"]),
        )
    return sweep, reference.float().reshape(-1)


def check_patch_sweep(case: Case) -> None:
    """A resid_pre grid equals TransformerLens's get_act_patch_resid_pre to 1e-4, computed by the fast driven
    engine (not the hooked fallback)."""
    sweep, reference = patching_grids(case, PATCH_POSITIONS)
    assert sweep.values == pytest.approx(reference, abs=TOL)
    assert sweep.engine.stats.method == "driven", sweep.engine.stats.notes


def check_ablate_heads(case: Case) -> None:
    with case.tc() as tc:
        result = ablate_heads(tc, PROMPT, [[1, 2]], ANSWER, WRONG)
    a, b = case.token(ANSWER), case.token(WRONG)

    def zero_head(z: torch.Tensor, hook: Any) -> torch.Tensor:
        z[:, :, 2] = 0.0
        return z

    with torch.no_grad():
        logits = case.bridge.run_with_hooks(
            case.bridge.to_tokens(PROMPT, prepend_bos=True), fwd_hooks=[("blocks.1.attn.hook_z", zero_head)]
        )[0, -1]
    real = case.hf_logits(PROMPT)[-1]
    assert result.metric_before == pytest.approx(float(real[a] - real[b]), rel=REL, abs=TOL)
    assert result.metric_after == pytest.approx(float(logits[a] - logits[b]), rel=REL, abs=TOL)


def check_induction_scores(case: Case) -> None:
    """The per-token losses equal the loss from the Hugging Face model's real logits to 1e-4."""
    prompt = "ba be bi bo bu ca ce ba be bi bo bu ca ce"
    with case.tc() as tc:
        tokens = case.bridge.to_tokens(prompt, prepend_bos=True)
        targets = find_targets(tokens)
        _, first, copy = head_scores_and_losses(tc, tokens, targets)
        result = induction_scores(tc, prompt=prompt)
    real = log_probs(case.hf_logits(prompt))
    losses = -real[:-1].gather(-1, tokens[0, 1:, None])[:, 0]
    assert first == pytest.approx(losses[targets.first_seen[1] - 1], abs=TOL)
    assert copy == pytest.approx(losses[targets.copyable[1] - 1], abs=TOL)
    assert result.loss_first_repeat == pytest.approx(float(first.mean()), rel=REL, abs=TOL)


def _refused(call: Callable[[], Any], fragment: str) -> None:
    with pytest.raises(LensError, match=fragment):
        call()


def check_head_output(case: Case) -> None:
    """Refused where a norm follows the attention sublayer; elsewhere the head's output norm is
    TransformerLens's stack_head_results at the last position, and the logit of the top promoted token is
    head_attribution's cell for that head and that token (the decomposition checked against the HF logits)."""
    with case.tc() as tc:
        if case.family.post_norms:
            _refused(lambda: head_output(tc, PROMPT, 1, 1), "norm after the sublayer")
            return
        result = head_output(tc, PROMPT, 1, 1, top_k=10)
        top = next(
            t for t in result.promoted if case.bridge.to_tokens(t.token, prepend_bos=False)[0].tolist() == [t.id]
        )
        cell = head_attribution(tc, PROMPT, top.token, None).heads[1][1]
    tokens = case.bridge.to_tokens(PROMPT, prepend_bos=True)
    with torch.no_grad():
        _, cache = case.bridge.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z"))
        heads = cache.stack_head_results(layer=-1, pos_slice=-1)
    n_heads = case.bridge.cfg.n_heads
    assert result.output_norm == pytest.approx(float(heads[n_heads + 1, 0].norm()), rel=REL, abs=TOL)
    assert top.logit == pytest.approx(cell, rel=5e-3, abs=1e-3)


def check_neuron_attribution(case: Case) -> None:
    """Refused where a norm follows the MLP; elsewhere each layer's neurons plus b_out sum to head_attribution's
    MLP term (checked against the HF logits), and each listed activation is TransformerLens's hook_post."""
    with case.tc() as tc:
        if case.family.post_norms:
            _refused(lambda: neuron_attribution(tc, PROMPT, ANSWER, WRONG), "norm after the sublayer")
            return
        try:
            result = neuron_attribution(tc, PROMPT, ANSWER, WRONG, top_k=5)
        except LensError as exc:  # e.g. a residual multiplier after the MLP: refused, never silently wrong
            assert "not hook_post @ W_out" in str(exc)
            return
        whole = head_attribution(tc, PROMPT, ANSWER, WRONG)
    sums = [t + b for t, b in zip(result.layer_totals, result.bias_totals, strict=True)]
    assert sums == pytest.approx(whole.other.mlp, rel=5e-3, abs=1e-3)
    tokens = case.bridge.to_tokens(PROMPT, prepend_bos=True)
    with torch.no_grad():
        _, cache = case.bridge.run_with_cache(tokens, names_filter=lambda n: n.endswith("mlp.hook_post"))
    for neuron in result.top_neurons:
        expected = float(cache[f"blocks.{neuron.layer}.mlp.hook_post"][0, -1, neuron.neuron])
        assert neuron.activation == pytest.approx(expected, rel=REL, abs=TOL)


def check_mlp_neurons(case: Case) -> None:
    """Refused where a norm follows the MLP; elsewhere the listed neurons are the largest |hook_post|."""
    with case.tc() as tc:
        if case.family.post_norms:
            _refused(lambda: mlp_neurons(tc, PROMPT, 0), "norm after the sublayer")
            return
        try:
            result = mlp_neurons(tc, PROMPT, 0, top_k=3, top_tokens=2)
        except LensError as exc:
            assert "not hook_post @ W_out" in str(exc)
            return
    tokens = case.bridge.to_tokens(PROMPT, prepend_bos=True)
    with torch.no_grad():
        _, cache = case.bridge.run_with_cache(tokens, names_filter=["blocks.0.mlp.hook_post"])
    expected = cache["blocks.0.mlp.hook_post"][0, -1].abs().argsort(descending=True)[:3].tolist()
    assert [n.neuron for n in result.neurons] == expected


def check_composition_scores(case: Case) -> None:
    """Every (earlier sender, receiver) pair equals TransformerLens's all_composition_scores, for q, k and v."""
    for kind in ("q", "k", "v"):
        with case.tc() as tc:
            scores = all_scores(tc, kind)
            with torch.no_grad(), one_thread():
                reference = case.bridge.all_composition_scores(kind.upper()).scores
        assert scores[1] == pytest.approx(reference[:1, :, 1], abs=1e-5)


def check_path_patch(case: Case) -> None:
    """Sender L0H0 into every layer-1 head's queries equals TransformerLens's get_act_patch_direct_path to 1e-4
    (driven engine); where TransformerLens refuses the architecture, path_patch refuses too."""
    bridge = case.bridge
    tokens = bridge.to_tokens([CLEAN, CORRUPTED], prepend_bos=True)
    a, b = case.token(PATCH_ANSWER), case.token(PATCH_WRONG)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[0, -1, a] - logits[0, -1, b]

    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(tokens[:1], names_filter=["blocks.0.attn.hook_z"])
        _, corrupted_cache = bridge.run_with_cache(tokens[1:], names_filter=["blocks.0.attn.hook_z"])
    try:
        reference = patching.get_act_patch_direct_path(
            bridge, tokens[1:], clean_cache, corrupted_cache, metric, 0, 0, "q", verbose=False
        )
    except (ValueError, NotImplementedError) as exc:
        with case.tc() as tc, pytest.raises(LensError):
            run_path_patch(tc, CLEAN, CORRUPTED, PATCH_ANSWER, PATCH_WRONG, [[0, 0]], "all_heads", "q")
        print(f"TransformerLens refuses: {exc}")
        return
    with case.tc() as tc:
        run = run_path_patch(tc, CLEAN, CORRUPTED, PATCH_ANSWER, PATCH_WRONG, [[0, 0]], "all_heads", "q")
    ours = torch.zeros_like(reference)
    for (_, (receiver,)), value in zip(run.paths, run.values, strict=True):
        ours[receiver.layer, receiver.head] = value
    assert float((ours[1:] - reference[1:]).abs().max()) <= TOL
    assert run.stats.method == "driven", run.stats.notes


# ---- the Hugging Face model as the oracle for gradients, edits and generation ------------------------------

_ATTN_OUT = re.compile(r"^(.*\.(\d+))\.(?:attn|attention|self_attn)\.(?:c_proj|dense|o_proj)$")
"""The attention output projection of each decoder layer (its input is the heads' z, concatenated)."""


def hf_layers(case: Case) -> dict[int, tuple[Any, Any]]:
    """layer -> (the HF decoder layer, its attention output projection)."""
    found: dict[int, tuple[Any, Any]] = {}
    for name, module in case.hf.named_modules():
        match = _ATTN_OUT.match(name)
        if match:
            found[int(match.group(2))] = (case.hf.get_submodule(match.group(1)), module)
    assert sorted(found) == list(range(case.hf.config.num_hidden_layers)), sorted(found)
    return found


def _pre_hook(edit: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., Any]:
    """A forward pre-hook replacing a module's first input (positional or `hidden_states=`) by edit(input)."""

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if args:
            return (edit(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": edit(kwargs["hidden_states"])}

    return hook


@contextmanager
def hf_edits(
    case: Case, resid_pre: dict[int, Callable] | None = None, z: dict[int, Callable] | None = None
) -> Iterator:
    """Edit the HF model's input to decoder layer L (resid_pre) and/or its heads' z (the input of the attention
    output projection) for the duration of the block."""
    layers = hf_layers(case)
    handles = [
        layers[layer][0].register_forward_pre_hook(_pre_hook(edit), with_kwargs=True)
        for layer, edit in (resid_pre or {}).items()
    ]
    handles += [
        layers[layer][1].register_forward_pre_hook(_pre_hook(edit), with_kwargs=True)
        for layer, edit in (z or {}).items()
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def hf_metric(logits: torch.Tensor, a: int, b: int | None) -> torch.Tensor:
    """logit(a) - logit(b) (or logit(a)) at the last position of batch row 0."""
    last = logits[0, -1].float()
    return last[a] - last[b] if b is not None else last[a]


def hf_forward(case: Case, tokens: torch.Tensor, **edits: Any) -> tuple[Any, list[torch.Tensor]]:
    """(HF output with hidden states, each layer's z), under the edits of hf_edits."""
    zs: dict[int, torch.Tensor] = {}

    def keeper(layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def keep(x: torch.Tensor) -> torch.Tensor:
            zs[layer] = x
            return x

        return keep

    n_layers = case.hf.config.num_hidden_layers
    z_edits = {layer: keeper(layer) for layer in range(n_layers)}
    for layer, edit in (edits.pop("z", None) or {}).items():
        z_edits[layer] = lambda x, edit=edit, keep=z_edits[layer]: keep(edit(x))
    with hf_edits(case, z=z_edits, **edits):
        out = case.hf(tokens, output_hidden_states=True)
    return out, [zs[layer] for layer in range(n_layers)]


def check_attribution_patch(case: Case) -> None:
    """The gradient estimates (raw) for resid_pre and heads equal grad x (clean - corrupted) taken on the HF model
    (autograd through the HF forward pass, at its layer inputs and at its attention output projection's input);
    the tool's normalized heads grid is that over the HF clean - corrupted gap, and its verified cell equals the
    HF model with that head's clean z patched in."""
    bridge = case.bridge
    tokens = bridge.to_tokens([CLEAN, CORRUPTED], prepend_bos=True)
    a, b = case.token(PATCH_ANSWER), case.token(PATCH_WRONG)
    n_layers, n_heads, n_tokens = int(bridge.cfg.n_layers), int(bridge.cfg.n_heads), int(tokens.shape[-1])
    with torch.enable_grad():
        corrupted, corrupted_z = hf_forward(case, tokens[1:])
        corrupted_metric = hf_metric(corrupted.logits, a, b)
        grads = [
            grad.detach()
            for grad in torch.autograd.grad(corrupted_metric, [*corrupted.hidden_states[:n_layers], *corrupted_z])
        ]
    corrupted_z = [z.detach() for z in corrupted_z]
    hidden = [h.detach() for h in corrupted.hidden_states]
    with torch.no_grad():
        clean, clean_z = hf_forward(case, tokens[:1])
        clean_metric = float(hf_metric(clean.logits, a, b))
    corrupted_value = float(corrupted_metric)
    resid = torch.stack([(grads[L] * (clean.hidden_states[L] - hidden[L]))[0].sum(-1) for L in range(n_layers)])
    heads = torch.stack(
        [
            (grads[n_layers + L] * (clean_z[L] - corrupted_z[L]))[0].reshape(n_tokens, n_heads, -1).sum((0, 2))
            for L in range(n_layers)
        ]
    )
    with case.tc() as tc:
        pair = PairRun(tokens, resolve_metric(tc, PATCH_ANSWER, PATCH_WRONG))
        for component, expected in (("resid_pre", resid), ("heads", heads)):
            grid = resolve_grid(tc, component, None, None, [n_tokens])
            values = estimate_effects(tc, [pair], grid, "denoise").values[0]
            scale = float(expected.abs().max())
            error = float((values - expected.reshape(-1)).abs().max())
            assert scale > 1e-5, component  # not vacuous
            assert error <= TOL * min(1.0, scale), component  # relative on models whose estimates are all small
        result = attribution_patch(tc, CLEAN, CORRUPTED, PATCH_ANSWER, PATCH_WRONG, component="heads", verify_top=1)
    span = clean_metric - corrupted_value
    assert result.clean_metric == pytest.approx(clean_metric, rel=REL, abs=TOL)
    assert torch.tensor(result.grid) == pytest.approx(heads / span, rel=REL, abs=TOL)
    cell = result.verified[0]
    assert cell.head is not None

    def patch_head(z: torch.Tensor) -> torch.Tensor:
        z = z.clone().unflatten(-1, (n_heads, -1))
        z[:, :, cell.head] = clean_z[cell.layer].unflatten(-1, (n_heads, -1))[:, :, cell.head]
        return z.flatten(-2)

    with torch.no_grad():
        patched, _ = hf_forward(case, tokens[1:], z={cell.layer: patch_head})
    exact = (float(hf_metric(patched.logits, a, b)) - corrupted_value) / span
    assert cell.exact == pytest.approx(exact, rel=REL, abs=TOL)


SAE_HOOK = "blocks.1.hook_resid_pre"
D_SAE = 32


def _load_sae(case: Case, folder: str) -> Any:
    with case.tc() as tc:
        return load_sae(tc, folder)


@contextmanager
def sae_loaded(case: Case) -> Iterator[dict[str, torch.Tensor]]:
    """A random SAE with d_in = the family's d_model on SAE_HOOK, loaded through the load_sae tool; removed after."""
    assert case.host.model is not None
    with tempfile.TemporaryDirectory() as folder:
        weights = write_sae_folder(Path(folder), int(case.hf.config.hidden_size), SAE_HOOK, D_SAE)
        result = _load_sae(case, folder)
    assert result.loaded.hook == SAE_HOOK and not result.replaced
    try:
        yield weights
    finally:
        case.host.model.saes.clear()


def centred(case: Case, resid: torch.Tensor) -> torch.Tensor:
    """The HF residual as TransformerLens's compatibility mode holds it: on LayerNorm models the writing weights are
    centred, so the residual stream is the HF one less its mean over d_model (every reader's LayerNorm removes that
    mean anyway); RMSNorm models are unchanged."""
    if case.bridge.cfg.normalization_type in ("LN", "LNPre"):
        return resid - resid.mean(dim=-1, keepdim=True)
    return resid


def hf_resid(case: Case, text: str) -> torch.Tensor:
    """The HF model's input to decoder layer 1 (= SAE_HOOK) [pos, d_model], centred as the bridge's."""
    with torch.no_grad():
        out = case.hf(case.bridge.to_tokens(text, prepend_bos=True), output_hidden_states=True)
    return centred(case, out.hidden_states[1][0])


def hand_encode(weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return ((x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]).relu()


def check_load_sae(case: Case) -> None:
    """An SAE of the wrong width is refused and nothing is attached; the right one is attached on its hook with
    the weights of the file, and its hook's activation has the width the file says."""
    assert case.host.model is not None
    d_model = int(case.hf.config.hidden_size)
    with tempfile.TemporaryDirectory() as folder:
        write_sae_folder(Path(folder), d_model + 1, SAE_HOOK, D_SAE)
        _refused(lambda: _load_sae(case, folder), f"d_in={d_model + 1} but the activation")
    assert case.host.model.saes == {}
    with sae_loaded(case) as weights:
        sae = case.host.model.saes[SAE_HOOK]
        assert sae.d_in == d_model == hf_resid(case, PROMPT).shape[-1] and sae.d_sae == D_SAE
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            assert torch.equal(getattr(sae, name).cpu(), weights[name])


def check_sae_features(case: Case) -> None:
    """Listed features and activations equal a hand encoding of the HF model's own residual; the next-token loss
    with the reconstruction spliced in equals the HF model's loss with the same splice."""
    tokens = case.bridge.to_tokens(PROMPT, prepend_bos=True)
    x = hf_resid(case, PROMPT)
    with sae_loaded(case) as weights:
        with case.tc() as tc:
            result = sae_features(tc, PROMPT, top_k=4)
    acts = hand_encode(weights, x)
    assert sum(len(row.features) for row in result.positions) > 0
    for row in result.positions:
        values, ids = acts[row.position].topk(4)
        assert [f.feature for f in row.features] == [int(i) for i, v in zip(ids, values, strict=True) if v > 0]
        assert [f.activation for f in row.features] == pytest.approx(values[values > 0].tolist(), rel=REL, abs=TOL)
    recon = acts @ weights["W_dec"] + weights["b_dec"]

    def splice(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        h[0, 1:] = recon[1:].to(h.dtype)
        return h

    def loss(logits: torch.Tensor) -> float:
        return float(torch.nn.functional.cross_entropy(logits[0, :-1].float(), tokens[0, 1:]))

    with torch.no_grad():
        clean = case.hf(tokens).logits
        with hf_edits(case, resid_pre={1: splice}):
            spliced = case.hf(tokens).logits
    assert result.reconstruction is not None
    assert result.reconstruction.loss_clean == pytest.approx(loss(clean), rel=REL, abs=TOL)
    assert result.reconstruction.loss_spliced == pytest.approx(loss(spliced), rel=REL, abs=TOL)


def check_feature_attribution(case: Case) -> None:
    """attribution = activation x (decoder row . gradient), the gradient taken by autograd through the HF model at
    its layer-1 input; ablation_effect = the HF metric minus the HF metric with the feature's activation x decoder
    row subtracted at the last position."""
    tokens = case.bridge.to_tokens(PROMPT, prepend_bos=True)
    a, b = case.token(ANSWER), case.token(WRONG)
    with sae_loaded(case) as weights:
        with case.tc() as tc:
            result = feature_attribution(tc, PROMPT, ANSWER, WRONG, top_k=3)
    with torch.enable_grad():
        out = case.hf(tokens, output_hidden_states=True)
        metric = hf_metric(out.logits, a, b)
        (grad,) = torch.autograd.grad(metric, out.hidden_states[1])
    acts = hand_encode(weights, centred(case, out.hidden_states[1][0].detach()))
    assert result.metric_value == pytest.approx(float(metric), rel=REL, abs=TOL)
    assert result.features
    for entry in result.features:
        expected = float(acts[-1, entry.feature] * (weights["W_dec"][entry.feature] @ grad[0, -1]))
        assert entry.attribution == pytest.approx(expected, rel=REL, abs=TOL)

        def remove(h: torch.Tensor, feature: int = entry.feature) -> torch.Tensor:
            h = h.clone()
            h[0, -1] -= (acts[-1, feature] * weights["W_dec"][feature]).to(h.dtype)
            return h

        with torch.no_grad(), hf_edits(case, resid_pre={1: remove}):
            removed = float(hf_metric(case.hf(tokens).logits, a, b))
        assert entry.ablation_effect == pytest.approx(float(metric) - removed, rel=REL, abs=TOL)


POSITIVE, NEGATIVE = ["ba ke lo mu", "ri so ba"], ["zo zu za", "wi we wa wo"]


def check_steering_vector(case: Case) -> None:
    """The stored vector is the mean of the HF model's layer-1 input at the last token over the positive prompts
    minus that over the negative ones; the typical norm is the mean over their non-BOS tokens."""
    assert case.host.model is not None
    try:
        with case.tc() as tc:
            result = steering_vector(tc, "v", POSITIVE, NEGATIVE, layer=1)
            stored = tc.model.steering_vectors["v"].vector.float().cpu()
    finally:
        case.host.model.steering_vectors.clear()
    residuals = {text: hf_resid(case, text) for text in POSITIVE + NEGATIVE}
    expected = torch.stack([residuals[t][-1] for t in POSITIVE]).mean(0) - torch.stack(
        [residuals[t][-1] for t in NEGATIVE]
    ).mean(0)
    assert (stored - expected).abs().max() < TOL
    assert result.hook == SAE_HOOK and result.norm == pytest.approx(float(expected.norm()), rel=REL, abs=TOL)
    typical = torch.cat([r[1:].norm(dim=-1) for r in residuals.values()]).mean()
    assert result.typical_resid_norm == pytest.approx(float(typical), rel=REL, abs=TOL)


GENERATE_PROMPT = "ba ke lo mu ri"
N_NEW = 4


def hf_greedy(case: Case, edit: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[list[int], list[float]]:
    """A plain no-cache greedy loop over the HF model (optionally editing its layer-1 input): new ids and their
    log-probs, stopping after EOS as generate does."""
    sequence = case.bridge.to_tokens(GENERATE_PROMPT, prepend_bos=True)
    ids: list[int] = []
    logprobs: list[float] = []
    eos = case.bridge.tokenizer.eos_token_id
    for _ in range(N_NEW):
        with torch.no_grad(), hf_edits(case, resid_pre={1: edit} if edit else None):
            last = case.hf(sequence).logits[0, -1].float().log_softmax(-1)
        token = int(last.argmax())
        ids.append(token)
        logprobs.append(float(last[token]))
        sequence = torch.cat([sequence, torch.tensor([[token]])], dim=1)
        if token == eos:
            break
    return ids, logprobs


def check_generate(case: Case) -> None:
    """Greedy tokens and log-probs equal a no-cache argmax loop over the HF model; a steer with alpha = 0 is the
    baseline; alpha = 3 equals the HF loop with 3 x the vector added to layer 1's input after BOS."""
    assert case.host.model is not None
    alpha = 3.0
    try:
        with case.tc() as tc:
            steering_vector(tc, "v", POSITIVE, NEGATIVE, layer=1)
            vector = tc.model.steering_vectors["v"].vector.float().cpu()
            zero = generate(tc, GENERATE_PROMPT, max_new_tokens=N_NEW, interventions=[{"steer": "v", "alpha": 0}])
            steered = generate(
                tc, GENERATE_PROMPT, max_new_tokens=N_NEW, interventions=[{"steer": "v", "alpha": alpha}]
            )
            strings = lambda ids: token_strings(tc, ids)  # noqa: E731
            expected_ids, expected_lp = hf_greedy(case)

            def add(h: torch.Tensor) -> torch.Tensor:
                h = h.clone()
                h[:, 1:] += (alpha * vector).to(h.dtype)
                return h

            steered_ids, steered_lp = hf_greedy(case, add)
            expected_strings, steered_strings = strings(expected_ids), strings(steered_ids)
    finally:
        case.host.model.steering_vectors.clear()
    assert zero.baseline is not None and zero.intervened is not None and steered.intervened is not None
    assert [t.token for t in zero.baseline.tokens] == expected_strings
    assert [t.logprob for t in zero.baseline.tokens] == pytest.approx(expected_lp, rel=REL, abs=TOL)
    assert [t.model_dump() for t in zero.intervened.tokens] == [t.model_dump() for t in zero.baseline.tokens]
    assert [t.token for t in steered.intervened.tokens] == steered_strings
    assert [t.logprob for t in steered.intervened.tokens] == pytest.approx(steered_lp, rel=REL, abs=TOL)


EDGE_REFUSED = {"gemma2", "olmo2", "granite", "phi", "cohere"}
"""Families whose residual stream is not a plain sum of head, MLP and embedding writes here (norms after each
sublayer, scaled residual adds) or whose MLP input TransformerLens does not expose (parallel blocks of phi and
cohere): edge attribution refuses them."""


def check_edge_attribution(case: Case) -> None:
    """Refused where the graph is not exact; elsewhere the clean and corrupted metrics equal the HF model's, and
    the node circuit 'every writer but head L1H1' equals the HF clean run with that head's z from the corrupted
    run (a node outside the circuit has its output replaced everywhere)."""
    with case.tc() as tc:
        if case.family.name in EDGE_REFUSED:
            with pytest.raises(LensError, match="not (exact|supported) on this model"):
                edge_attribution(tc, CLEAN, CORRUPTED, PATCH_ANSWER, PATCH_WRONG)
            return
        result = edge_attribution(tc, CLEAN, CORRUPTED, PATCH_ANSWER, PATCH_WRONG, top_k=3, verify_top=1)
        n_heads = tc.view.n_heads
        keep = ["MLP0", "MLP1"] + [f"L{layer}H{head}" for layer in range(2) for head in range(n_heads)]
        keep.remove("L1H1")
        curve = circuit_faithfulness(tc, CLEAN, CORRUPTED, PATCH_ANSWER, PATCH_WRONG, nodes=keep)
    tokens = case.bridge.to_tokens([CLEAN, CORRUPTED], prepend_bos=True)
    a, b = case.token(PATCH_ANSWER), case.token(PATCH_WRONG)
    with torch.no_grad():
        clean, _ = hf_forward(case, tokens[:1])
        corrupted, corrupted_z = hf_forward(case, tokens[1:])

        def patch_head(z: torch.Tensor) -> torch.Tensor:
            z = z.clone().unflatten(-1, (n_heads, -1))
            z[:, :, 1] = corrupted_z[1].unflatten(-1, (n_heads, -1))[:, :, 1]
            return z.flatten(-2)

        patched, _ = hf_forward(case, tokens[:1], z={1: patch_head})
    assert result.clean_metric == pytest.approx(float(hf_metric(clean.logits, a, b)), rel=REL, abs=TOL)
    assert result.corrupted_metric == pytest.approx(float(hf_metric(corrupted.logits, a, b)), rel=REL, abs=TOL)
    assert curve.ablated_metric == pytest.approx(float(hf_metric(corrupted.logits, a, b)), rel=REL, abs=TOL)
    assert curve.curve[0].metric == pytest.approx(float(hf_metric(patched.logits, a, b)), rel=REL, abs=TOL)


EXEMPLAR_BODY = 16


def exemplar_rows(case: Case, corpus: Path, n_rows: int) -> torch.Tensor:
    """BOS + EXEMPLAR_BODY tokens of each corpus row the tool scans (the whole training split here)."""
    store = token_store(case.bridge.tokenizer, int(case.bridge.cfg.d_vocab), read_corpus(str(corpus)))
    rows = store.rows(EXEMPLAR_BODY, n_rows)
    ids = torch.stack([torch.from_numpy(store.context(int(r), EXEMPLAR_BODY)) for r in rows])
    return torch.cat([torch.full((len(rows), 1), int(case.bridge.tokenizer.bos_token_id)), ids], dim=1)


def check_feature_exemplars(case: Case) -> None:
    """The top head and neuron activations over a small corpus equal TransformerLens's hook_pattern (the most a
    query puts on one non-BOS token) and hook_post over every row, read by brute force."""
    with tempfile.TemporaryDirectory() as folder:
        corpus = Path(folder) / "words.txt"
        rows = [" ".join(WORDS[(7 * i + j) % len(WORDS)] for j in range(12)) for i in range(40)]
        corpus.write_text("\n\n".join(rows) + "\n", encoding="utf-8")
        args = {"corpus": str(corpus), "context": EXEMPLAR_BODY, "tokens": 10_000, "top_k": 3}
        with case.tc() as tc:
            heads = feature_exemplars(tc, layer=1, head=1, **args)
            neurons = None if tc.view.d_mlp is None else feature_exemplars(tc, layer=0, neuron=5, **args)
        tokens = exemplar_rows(case, corpus, 10_000)
    names = ["blocks.1.attn.hook_pattern", "blocks.0.mlp.hook_post"]
    with torch.no_grad():
        _, cache = case.bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
    attention = cache["blocks.1.attn.hook_pattern"][:, 1, 1:, 1:].amax(dim=-1).reshape(-1)
    assert heads.tokens_read == attention.numel()
    assert [e.activation for e in heads.top] == pytest.approx(attention.topk(3).values.tolist(), rel=REL, abs=TOL)
    if neurons is not None:
        post = cache["blocks.0.mlp.hook_post"][:, 1:, 5].reshape(-1)
        assert [e.activation for e in neurons.top] == pytest.approx(post.topk(3).values.tolist(), rel=REL, abs=TOL)
        assert neurons.density == pytest.approx(float((post > 0).float().mean()), abs=1e-4)


def check_build_exemplar_index(case: Case) -> None:
    """The index of MLP layer 0's neurons over a small corpus: each neuron's top activations equal TransformerLens's
    hook_post over every row, read by brute force; attention-only families are refused."""
    with tempfile.TemporaryDirectory() as folder:
        corpus = Path(folder) / "words.txt"
        rows = [" ".join(WORDS[(5 * i + j) % len(WORDS)] for j in range(12)) for i in range(30)]
        corpus.write_text("\n\n".join(rows) + "\n", encoding="utf-8")
        with case.tc() as tc:
            result = build_exemplar_index(tc, layer=0, corpus=str(corpus), context=EXEMPLAR_BODY, rebuild=True)
        tokens = exemplar_rows(case, corpus, 10_000)
    assert result.complete
    top = np.load(Path(result.folder) / "top_values.npy")
    with torch.no_grad():
        _, cache = case.bridge.run_with_cache(tokens, names_filter=["blocks.0.mlp.hook_post"])
    post = cache["blocks.0.mlp.hook_post"][:, 1:].reshape(-1, top.shape[1])
    assert top == pytest.approx(post.topk(top.shape[0], dim=0).values.numpy(), rel=1e-5, abs=1e-6)


def check_search_features(case: Case) -> None:
    """The neurons of MLP layer 0 that fire most at the last position, and anywhere in the prompt, equal
    TransformerLens's hook_post read by hand."""
    with tempfile.TemporaryDirectory() as folder, case.tc() as tc:
        corpus = Path(folder) / "words.txt"
        corpus.write_text(" ".join(WORDS) + "\n", encoding="utf-8")
        last = search_features(tc, PROMPT, position=-1, layer=0, top_k=3, corpus=str(corpus))
        anywhere = search_features(tc, PROMPT, layer=0, top_k=3, corpus=str(corpus))
    tokens = case.bridge.to_tokens(PROMPT, prepend_bos=True)
    with torch.no_grad():
        _, cache = case.bridge.run_with_cache(tokens, names_filter=["blocks.0.mlp.hook_post"])
    post = cache["blocks.0.mlp.hook_post"][0].float()
    values, units = post[-1].topk(3)
    assert [m.unit for m in last.matches] == units.tolist()
    assert [m.activation for m in last.matches] == pytest.approx(values.tolist(), rel=REL, abs=TOL)
    best = post[1:].max(dim=0).values
    assert [m.activation for m in anywhere.matches] == pytest.approx(best.topk(3).values.tolist(), rel=REL, abs=TOL)


CHECKS: dict[str, Callable[[Case], None]] = {
    "model_info": check_model_info,
    "tokenize": check_tokenize,
    "run_with_cache": check_run_with_cache,
    "head_attribution": check_head_attribution,
    "logit_lens": check_logit_lens,
    "attention_pattern": check_attention_pattern,
    "patch_sweep": check_patch_sweep,
    "ablate_heads": check_ablate_heads,
    "path_patch": check_path_patch,
    "induction_scores": check_induction_scores,
    "head_output": check_head_output,
    "neuron_attribution": check_neuron_attribution,
    "mlp_neurons": check_mlp_neurons,
    "composition_scores": check_composition_scores,
    "attribution_patch": check_attribution_patch,
    "load_sae": check_load_sae,
    "sae_features": check_sae_features,
    "feature_attribution": check_feature_attribution,
    "feature_exemplars": check_feature_exemplars,
    "build_exemplar_index": check_build_exemplar_index,
    "search_features": check_search_features,
    "steering_vector": check_steering_vector,
    "generate": check_generate,
    "edge_attribution": check_edge_attribution,
    "circuit_faithfulness": check_edge_attribution,
}
"""Tool name -> check on one family. Add a line here when a tool is added."""

NOT_IN_MATRIX: dict[str, str] = {
    "load_model": "every case is loaded through ModelHost.load, the function the tool calls",
    "circuits": "lists the names circuit_faithfulness and edge_attribution store; runs no model",
}

KNOWN_FAILURES: dict[tuple[str, str], str] = {}
"""(family, tool) -> why it is known not to work (listed in the README); the check must then see a refusal."""


def test_boot(case: Case) -> None:
    check_boot(case)


@pytest.mark.parametrize("tool", list(CHECKS))
def test_tool_on_family(case: Case, tool: str) -> None:
    CHECKS[tool](case)


def test_head_attribution_without_an_embedding_hook(
    family_cases: dict[str, Case], tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model with no hook_embed: the token embedding's term is read from what enters block 0 less the
    positional embedding, and the decomposition still adds up (GPT-2: learned positions)."""
    case = load_case("gpt2", family_cases, tmp_path_factory)
    with case.tc() as tc:
        expected = head_attribution(tc, PROMPT, ANSWER, WRONG)
    real = head_attribution_module.cached_forward

    def without_embed(tc: ToolContext, tokens: torch.Tensor, names: list[str], **kwargs: Any) -> Any:
        return real(tc, tokens, [name for name in names if name != "hook_embed"], **kwargs)

    monkeypatch.setattr(head_attribution_module, "cached_forward", without_embed)
    with case.tc() as tc:
        result = head_attribution(tc, PROMPT, ANSWER, WRONG)
    assert result.explained, result.note
    assert result.other.embed == pytest.approx(expected.other.embed, rel=REL, abs=TOL)
    assert result.total == pytest.approx(expected.total, rel=REL, abs=TOL)


@pytest.mark.slow
def test_full_patching_grid(case: Case) -> None:
    """Every layer x position cell of the resid_pre sweep against TransformerLens."""
    sweep, reference = patching_grids(case, None)
    assert sweep.values == pytest.approx(reference, abs=TOL)


def raw_hf_resid(case: Case, text: str) -> torch.Tensor:
    """The HF model's own input to decoder layer 1 [pos, d_model], not centred."""
    with torch.no_grad():
        out = case.hf(case.bridge.to_tokens(text, prepend_bos=True), output_hidden_states=True)
    return out.hidden_states[1][0]


def sae_features_with(case: Case, folder: str) -> Any:
    _load_sae(case, folder)
    try:
        with case.tc() as tc:
            return sae_features(tc, PROMPT, top_k=4)
    finally:
        assert case.host.model is not None
        case.host.model.saes.clear()


def assert_features(result: Any, acts: torch.Tensor) -> None:
    assert sum(len(row.features) for row in result.positions) > 0
    for row in result.positions:
        values, ids = acts[row.position].topk(4)
        assert [f.feature for f in row.features] == [int(i) for i, v in zip(ids, values, strict=True) if v > 0]
        assert [f.activation for f in row.features] == pytest.approx(values[values > 0].tolist(), rel=REL, abs=TOL)


def test_an_sae_on_the_residual_reads_the_stream_it_was_trained_on(case: Case) -> None:
    """LayerNorm families hold the residual stream centred (compatibility mode): an SAE on it whose cfg.json does not
    say it was trained on the centred stream, or says it was not, is refused with the fix and nothing is attached;
    one that normalizes its input per token (normalize_activations='layer_norm') is loaded, and its features equal a
    hand encoding of the HF model's own, uncentred residual. RMSNorm families load both and encode the HF residual
    as it is."""
    assert case.host.model is not None
    d_model = int(case.hf.config.hidden_size)
    layer_norm = case.bridge.cfg.normalization_type in ("LN", "LNPre")
    raw = raw_hf_resid(case, PROMPT)
    for centred in (None, False):
        with tempfile.TemporaryDirectory() as folder:
            weights = write_sae_folder(Path(folder), d_model, SAE_HOOK, D_SAE, centred=centred)
            if layer_norm:
                _refused(lambda folder=folder: _load_sae(case, folder), "residual stream is centred")
                assert case.host.model.saes == {}
            else:
                assert_features(sae_features_with(case, folder), hand_encode(weights, raw))
    with tempfile.TemporaryDirectory() as folder:
        weights = write_sae_folder(Path(folder), d_model, SAE_HOOK, D_SAE, centred=None, normalize="layer_norm")
        result = sae_features_with(case, folder)
    mu = raw.mean(dim=-1, keepdim=True)
    normalized = (raw - mu) / ((raw - mu).std(dim=-1, keepdim=True) + 1e-5)
    assert_features(result, hand_encode(weights, normalized))


def test_every_registered_tool_is_in_the_matrix() -> None:
    missing = sorted(set(registered_tool_names()) - set(CHECKS) - set(NOT_IN_MATRIX))
    assert not missing, f"add a check for {missing} to CHECKS in tests/test_architectures.py"
