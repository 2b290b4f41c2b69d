"""Every tool on every architecture family: tiny random models (tests/architectures.py) saved with
save_pretrained and loaded through ModelHost.load, the path a user's `--model <folder>` takes.

Each check compares a tool's numbers with an independent computation on the same model: the Hugging Face
model's own logits (the weights TransformerLens booted from), TransformerLens's patching and logit-lens
functions, or TransformerLens's cache. Raw (unrounded) internals are compared within 1e-4; rounded results
within their 4 significant digits.

To put a new tool in the matrix: write `check_<tool>(case)` and add it to CHECKS. A registered tool missing
from CHECKS (and from NOT_IN_MATRIX) fails test_every_registered_tool_is_in_the_matrix."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from transformer_lens import patching
from transformer_lens.tools.analysis.logit_lens import logit_lens as tl_logit_lens

from lens_mcp.errors import LensError
from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost
from lens_mcp.tools.causal.ablate_heads import ablate_heads
from lens_mcp.tools.causal.patch_sweep import run_sweep
from lens_mcp.tools.causal.path_patch import run_path_patch
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.model.model_info import model_info
from lens_mcp.tools.model.tokenize import tokenize
from lens_mcp.tools.reading import head_attribution as head_attribution_module
from lens_mcp.tools.reading.attention_pattern import attention_pattern
from lens_mcp.tools.reading.head_attribution import head_attribution
from lens_mcp.tools.reading.head_output import head_output
from lens_mcp.tools.reading.induction_scores import find_targets, head_scores_and_losses, induction_scores
from lens_mcp.tools.reading.logit_lens import lens_logits, logit_lens
from lens_mcp.tools.reading.mlp_neurons import mlp_neurons
from lens_mcp.tools.reading.neuron_attribution import neuron_attribution
from lens_mcp.tools.reading.run_with_cache import run_with_cache
from lens_mcp.tools.weights.composition_scores import all_scores, one_thread
from tests.architectures import FAMILIES, Family, build
from tests.registry_helpers import registered_tool_names

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
    gap = float(re.search(r"total equals actual to ([0-9.e+-]+)", result.note).group(1))  # type: ignore[union-attr]
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
}
"""Tool name -> check on one family. Add a line here when a tool is added."""

NOT_IN_MATRIX: dict[str, str] = {
    "load_model": "every case is loaded through ModelHost.load, the function the tool calls",
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


def test_every_registered_tool_is_in_the_matrix() -> None:
    missing = sorted(set(registered_tool_names()) - set(CHECKS) - set(NOT_IN_MATRIX))
    assert not missing, f"add a check for {missing} to CHECKS in tests/test_architectures.py"
