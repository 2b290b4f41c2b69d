"""Features and steering on the toy model: SAELens-format SAEs (hand-computed encode/decode), load_sae checks,
sae_features, feature_attribution (finite-difference oracle), steering_vector, generate (no-cache greedy oracle,
hand-written steering hook, alpha = 0, caps, cancellation), and bad input through the MCP client."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lens_mcp.errors import LensError
from lens_mcp.limits import Limits
from lens_mcp.loading.policy import LoadPolicy
from lens_mcp.model_host import ModelHost, count_hooks
from lens_mcp.server.app import build_server
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.features._sae_format import read_sae
from lens_mcp.tools.features.feature_attribution import feature_attribution
from lens_mcp.tools.features.generate import MAX_NEW_TOKENS, generate, random_like
from lens_mcp.tools.features.load_sae import load_sae
from lens_mcp.tools.features.sae_features import sae_features
from lens_mcp.tools.features.steering_vector import steering_vector
from tests.mcp_client import call_tool, error_text, result_data
from tests.sae_refs import HOOK, toy_sae_folder, write_folder

PROMPT = "w1 w2 w3 w4 w5 w1 w2 w3"


# ---- writing SAELens folders by hand -------------------------------------------------------------


# A 3 -> 2 -> 3 SAE small enough to compute by hand.
W_ENC = [[1.0, -1.0], [0.5, 2.0], [0.0, 1.0]]  # [d_in=3, d_sae=2]
B_ENC = [0.1, -0.2]
W_DEC = [[1.0, 0.0, 2.0], [0.0, -1.0, 1.0]]  # [d_sae=2, d_in=3]
B_DEC = [0.5, 0.0, -0.5]
X = [2.0, 1.0, -1.0]


def matvec(x: list[float], w: list[list[float]]) -> list[float]:
    return [sum(x[i] * w[i][j] for i in range(len(x))) for j in range(len(w[0]))]


def hand(x: list[float], *, b_dec_in: bool, act: Any, norm: str = "none", factor: float = 1.0) -> tuple:
    """Hand computation of encode/decode for the SAE above, written with plain Python lists."""
    d = len(x)
    if norm == "constant_norm_rescale":
        coeff = math.sqrt(d) / math.sqrt(sum(v * v for v in x))
        xin, out = [v * coeff for v in x], (lambda y: [v / coeff for v in y])
    elif norm == "layer_norm":
        mu = sum(x) / d
        std = math.sqrt(sum((v - mu) ** 2 for v in x) / (d - 1))
        xin, out = [(v - mu) / (std + 1e-5) for v in x], (lambda y: [v * std + mu for v in y])
    elif norm == "expected_average_only_in":
        xin, out = [v * factor for v in x], (lambda y: [v / factor for v in y])
    else:
        xin, out = list(x), (lambda y: y)
    if b_dec_in:
        xin = [v - b for v, b in zip(xin, B_DEC, strict=True)]
    pre = [p + b for p, b in zip(matvec(xin, W_ENC), B_ENC, strict=True)]
    acts = act(pre)
    recon = [r + b for r, b in zip(matvec(acts, W_DEC), B_DEC, strict=True)]
    return acts, out(recon)


def base_cfg(**extra: Any) -> dict[str, Any]:
    return {"d_in": 3, "d_sae": 2, "dtype": "float32", **extra}


def check(folder: Path, expected: tuple) -> None:
    sae = read_sae(folder)
    x_hat, acts, _ = sae.reconstruct(torch.tensor([X]))
    assert acts[0].tolist() == pytest.approx(expected[0], abs=1e-5)
    assert x_hat[0].tolist() == pytest.approx(expected[1], abs=1e-5)


def test_relu_sae_old_config_with_b_dec_applied(tmp_path: Path) -> None:
    folder = write_folder(
        tmp_path / "relu",
        {"W_enc": W_ENC, "b_enc": B_ENC, "W_dec": W_DEC, "b_dec": B_DEC},
        base_cfg(hook_point="blocks.0.hook_resid_pre", apply_b_dec_to_input=True, activation_fn_str="relu"),
    )
    expected = hand(X, b_dec_in=True, act=lambda p: [max(v, 0.0) for v in p])
    assert expected[0][1] > 0 or expected[0][0] > 0  # the example is not trivially all-off
    check(folder, expected)
    assert read_sae(folder).hook_name == "blocks.0.hook_resid_pre"


@pytest.mark.parametrize("norm", ["constant_norm_rescale", "layer_norm"])
def test_jumprelu_sae_new_config_with_normalization(tmp_path: Path, norm: str) -> None:
    threshold = [0.3, 5.0]
    folder = write_folder(
        tmp_path / norm,
        {"W_enc": W_ENC, "b_enc": B_ENC, "W_dec": W_DEC, "b_dec": B_DEC, "threshold": threshold},
        base_cfg(
            architecture="jumprelu",
            apply_b_dec_to_input=False,
            normalize_activations=norm,
            metadata={"hook_name": "blocks.0.hook_resid_post"},
        ),
    )
    expected = hand(
        X, b_dec_in=False, norm=norm, act=lambda p: [v if v > t else 0.0 for v, t in zip(p, threshold, strict=True)]
    )
    check(folder, expected)
    log_folder = write_folder(
        tmp_path / f"{norm}-log",
        {
            "W_enc": W_ENC,
            "b_enc": B_ENC,
            "W_dec": W_DEC,
            "b_dec": B_DEC,
            "log_threshold": [math.log(t) for t in threshold],
        },
        base_cfg(architecture="jumprelu", apply_b_dec_to_input=False, normalize_activations=norm, hook_name="h"),
    )
    check(log_folder, expected)


def test_topk_sae_keeps_k_largest_and_folded_scaling_factor(tmp_path: Path) -> None:
    w_enc = [row + [0.2] for row in W_ENC]  # a third feature, so that top-2 drops one
    w_dec = W_DEC + [[1.0, 1.0, 1.0]]
    b_enc = B_ENC + [0.0]
    folder = write_folder(
        tmp_path / "topk",
        {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": B_DEC},
        base_cfg(
            d_sae=3,
            architecture="topk",
            k=2,
            apply_b_dec_to_input=True,
            normalize_activations="expected_average_only_in",
            norm_scaling_factor=0.5,
            metadata={"hook_name": "blocks.0.hook_resid_pre"},
        ),
    )
    # by hand, with the third feature
    xin = [v * 0.5 - b for v, b in zip(X, B_DEC, strict=True)]
    pre = [sum(xin[i] * w_enc[i][j] for i in range(3)) + b_enc[j] for j in range(3)]
    keep = sorted(range(3), key=lambda j: pre[j], reverse=True)[:2]
    acts = [max(pre[j], 0.0) if j in keep else 0.0 for j in range(3)]
    recon = [(sum(acts[j] * w_dec[j][i] for j in range(3)) + B_DEC[i]) / 0.5 for i in range(3)]
    assert len([a for a in acts if a > 0]) <= 2
    check(folder, (acts, recon))


def test_format_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(LensError, match="cfg.json and sae_weights.safetensors missing"):
        read_sae(tmp_path)
    folder = write_folder(tmp_path / "a", {"W_enc": W_ENC, "b_enc": B_ENC, "W_dec": W_DEC, "b_dec": B_DEC}, base_cfg())
    with pytest.raises(LensError, match="names no hook"):
        read_sae(folder)
    folder = write_folder(
        tmp_path / "b",
        {"W_enc": W_ENC, "b_enc": B_ENC, "W_dec": W_DEC, "b_dec": B_DEC},
        base_cfg(architecture="jumprelu", hook_name="x"),
    )
    with pytest.raises(LensError, match="threshold"):
        read_sae(folder)
    folder = write_folder(
        tmp_path / "c",
        {"W_enc": W_ENC, "b_enc": B_ENC, "W_dec": W_DEC, "b_dec": B_DEC},
        base_cfg(architecture="gated", hook_name="x"),
    )
    with pytest.raises(LensError, match="architecture 'gated' is not supported"):
        read_sae(folder)


# ---- an SAE on the toy model ----------------------------------------------------------------------


@pytest.fixture
def clean_toy(toy: ToolContext) -> Iterator[ToolContext]:
    """The toy model with no SAE or steering vector before and after the test."""
    toy.model.saes.clear()
    toy.model.steering_vectors.clear()
    yield toy
    toy.model.saes.clear()
    toy.model.steering_vectors.clear()
    assert count_hooks(toy.model.bridge) == 0


@pytest.fixture
def toy_sae(clean_toy: ToolContext, tmp_path: Path) -> ToolContext:
    load_sae(clean_toy, str(toy_sae_folder(tmp_path / "toy_sae")))
    return clean_toy


def resid(tc: ToolContext, text: str, hook: str = HOOK) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = tc.model.bridge.to_tokens(text)
    with torch.no_grad():
        _, cache = tc.model.bridge.run_with_cache(tokens, names_filter=[hook])
    return tokens, cache[hook][0]


def test_wrong_d_in_and_unknown_hook_are_refused_model_unchanged(clean_toy: ToolContext, tmp_path: Path) -> None:
    tokens = clean_toy.model.bridge.to_tokens(PROMPT)
    with torch.no_grad():
        before = clean_toy.model.bridge(tokens)
    with pytest.raises(LensError, match="d_in=100 but the activation at 'blocks.1.hook_resid_pre' has width 144"):
        load_sae(clean_toy, str(toy_sae_folder(tmp_path / "wide", d_in=100)))
    with pytest.raises(LensError, match="does not have"):
        load_sae(clean_toy, str(toy_sae_folder(tmp_path / "deep", hook="blocks.7.hook_resid_pre")))
    assert clean_toy.model.saes == {}
    with torch.no_grad():
        assert torch.equal(clean_toy.model.bridge(tokens), before)


def test_several_saes_keyed_by_hook(clean_toy: ToolContext, tmp_path: Path) -> None:
    load_sae(clean_toy, str(toy_sae_folder(tmp_path / "a")))
    result = load_sae(clean_toy, str(toy_sae_folder(tmp_path / "b", hook="blocks.0.hook_resid_post")))
    assert result.saes == [HOOK, "blocks.0.hook_resid_post"] and not result.replaced
    assert load_sae(clean_toy, str(toy_sae_folder(tmp_path / "c", seed=1))).replaced
    with pytest.raises(LensError, match="several SAEs are loaded"):
        sae_features(clean_toy, PROMPT)
    assert sae_features(clean_toy, PROMPT, hook="blocks.0.hook_resid_post").hook == "blocks.0.hook_resid_post"


def test_sae_features_against_hand_encoding_and_spliced_loss(toy_sae: ToolContext) -> None:
    tc = toy_sae
    sae = tc.model.saes[HOOK]
    result = sae_features(tc, PROMPT, top_k=5)
    tokens, x = resid(tc, PROMPT)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    acts = pre.relu()
    for row in result.positions:
        values, ids = acts[row.position].topk(5)
        assert [f.feature for f in row.features] == [int(i) for i, v in zip(ids, values, strict=True) if v > 0]
        assert [f.activation for f in row.features] == pytest.approx(values[values > 0].tolist(), rel=1e-3)
        assert row.n_active == int((acts[row.position] > 0).sum())
    recon = acts @ sae.W_dec + sae.b_dec
    body, body_hat = x[1:], recon[1:]
    ve = 1 - (body - body_hat).pow(2).sum() / (body - body.mean(0)).pow(2).sum()
    assert result.reconstruction.variance_explained == pytest.approx(float(ve), rel=1e-3, abs=1e-4)

    def splice(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        activation[0, 1:] = recon[1:]
        return activation

    with torch.no_grad():
        clean = tc.model.bridge(tokens)
        spliced = tc.model.bridge.run_with_hooks(tokens, fwd_hooks=[(HOOK, splice)])

    def loss(logits: torch.Tensor) -> float:
        return float(torch.nn.functional.cross_entropy(logits[0, :-1], tokens[0, 1:]))

    assert result.reconstruction.loss_clean == pytest.approx(loss(clean), rel=1e-3)
    assert result.reconstruction.loss_spliced == pytest.approx(loss(spliced), rel=1e-3)
    # promoted tokens: the decoder row through ln_final and W_U, ranked
    direction = sae.W_dec[result.promoted[0].feature]
    normed = tc.model.bridge.ln_final(direction[None, None])[0, 0]
    top = (normed @ tc.model.bridge.W_U).topk(5).indices.tolist()
    assert result.promoted[0].tokens == [tc.model.bridge.tokenizer.decode([i]) for i in top]


def test_feature_attribution_matches_finite_differences(toy_sae: ToolContext) -> None:
    tc = toy_sae
    sae = tc.model.saes[HOOK]
    result = feature_attribution(tc, PROMPT, answer=" w4", wrong_answer=" w5", top_k=4)
    tokens, x = resid(tc, PROMPT)
    acts = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).relu()
    answer, wrong = (tc.model.bridge.to_single_token(t) for t in (" w4", " w5"))

    def metric_without(feature: int, scale: float) -> float:
        def remove(activation: torch.Tensor, hook: Any) -> torch.Tensor:
            activation[0, -1] -= scale * acts[-1, feature] * sae.W_dec[feature]
            return activation

        with torch.no_grad():
            logits = tc.model.bridge.run_with_hooks(tokens, fwd_hooks=[(HOOK, remove)])[0, -1]
        return float(logits[answer] - logits[wrong])

    base = metric_without(0, 0.0)
    assert result.metric_value == pytest.approx(base, rel=1e-4)
    assert len(result.features) == 4
    eps = 1e-2
    for entry in result.features:
        finite_difference = (base - metric_without(entry.feature, eps)) / eps
        assert entry.attribution == pytest.approx(finite_difference, rel=2e-2, abs=1e-4)
        assert entry.ablation_effect == pytest.approx(base - metric_without(entry.feature, 1.0), rel=1e-3, abs=1e-5)
    assert abs(result.features[0].attribution) >= abs(result.features[-1].attribution)


def test_feature_attribution_summed_over_positions(toy_sae: ToolContext) -> None:
    every = feature_attribution(toy_sae, PROMPT, answer=" w4", position=None, top_k=100)
    per_position = [feature_attribution(toy_sae, PROMPT, answer=" w4", position=p, top_k=100) for p in range(1, 9)]
    assert every.positions == list(range(1, 9))
    totals = [r.total_attribution for r in per_position]
    assert None not in totals
    assert every.total_attribution == pytest.approx(sum(t for t in totals if t is not None), rel=1e-3)


def test_steering_vector_contrast_and_from_feature(toy_sae: ToolContext) -> None:
    tc = toy_sae
    positives, negatives = ["w1 w2 w3", "w7 w8"], ["w9 w10 w11 w12"]
    result = steering_vector(tc, "v", positives, negatives, layer=1)
    expected = torch.stack([resid(tc, p)[1][-1] for p in positives]).mean(0) - resid(tc, negatives[0])[1][-1]
    stored = tc.model.steering_vectors["v"]
    assert torch.allclose(stored.vector, expected, atol=1e-5)
    assert result.norm == pytest.approx(float(expected.norm()), rel=1e-3)
    norms = torch.cat([resid(tc, p)[1][1:].norm(dim=-1) for p in positives + negatives])
    assert result.typical_resid_norm == pytest.approx(float(norms.mean()), rel=1e-3)
    feature = steering_vector(tc, "f", from_feature=7)
    assert torch.equal(tc.model.steering_vectors["f"].vector, tc.model.saes[HOOK].W_dec[7])
    assert feature.hook == HOOK and feature.stored == ["v", "f"]


def greedy_loop(tc: ToolContext, text: str, n: int, hooks: list | None = None) -> list[int]:
    tokens = tc.model.bridge.to_tokens(text)
    for _ in range(n):
        with torch.no_grad():
            logits = tc.model.bridge.run_with_hooks(tokens, fwd_hooks=hooks or [])
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens[0, -n:].tolist()


def ids_of(tc: ToolContext, continuation: Any) -> list[int]:
    return [tc.model.bridge.to_single_token(t.token) for t in continuation.tokens]


def test_generate_baseline_equals_no_cache_greedy_loop(clean_toy: ToolContext) -> None:
    result = generate(clean_toy, "w3 w9 w4 w8 w3 w9", max_new_tokens=6)
    assert ids_of(clean_toy, result.baseline) == greedy_loop(clean_toy, "w3 w9 w4 w8 w3 w9", 6)
    assert result.intervened is None and result.controls == []


def test_steering_alpha_zero_is_baseline_and_first_token_matches_hand_hook(clean_toy: ToolContext) -> None:
    tc = clean_toy
    steering_vector(tc, "v", ["w1 w2 w3"], ["w9 w10 w11"], layer=1)
    vector = tc.model.steering_vectors["v"].vector
    prompt = "w3 w9 w4 w8 w3 w9"
    zero = generate(tc, prompt, max_new_tokens=5, interventions=[{"steer": "v", "alpha": 0}])
    assert zero.intervened is not None and zero.first_difference is None
    assert [t.model_dump() for t in zero.intervened.tokens] == [t.model_dump() for t in zero.baseline.tokens]

    alpha = 2.5
    steered = generate(tc, prompt, max_new_tokens=4, interventions=[{"steer": "v", "alpha": alpha}])

    def add(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        activation[:, 1:] += alpha * vector  # never the BOS position
        return activation

    tokens = tc.model.bridge.to_tokens(prompt)
    with torch.no_grad():
        logits = tc.model.bridge.run_with_hooks(tokens, fwd_hooks=[(HOOK, add)])[0, -1]
    first = steered.intervened.tokens[0]
    assert tc.model.bridge.to_single_token(first.token) == int(logits.argmax())
    assert first.logprob == pytest.approx(float(logits.log_softmax(-1).max()), rel=1e-4, abs=1e-5)
    assert ids_of(tc, steered.intervened) == greedy_loop(tc, prompt, 4, [(HOOK, add)])
    # logprob_other of the intervened tokens = the baseline model on the same prefix
    with torch.no_grad():
        plain = tc.model.bridge(tokens)[0, -1].log_softmax(-1)
    assert first.logprob_other == pytest.approx(
        float(plain[tc.model.bridge.to_single_token(first.token)]), rel=1e-4, abs=1e-5
    )
    assert len(steered.controls) == 1 and steered.controls[0].label == "control:v"
    assert float(random_like(vector, 7).norm()) == pytest.approx(float(vector.norm()), rel=1e-5)


def test_generate_ablation_and_clamp_match_hand_hooks(toy_sae: ToolContext) -> None:
    tc = toy_sae
    sae = tc.model.saes[HOOK]
    prompt = "w3 w9 w4 w8 w3 w9"
    result = generate(
        tc, prompt, max_new_tokens=3, interventions=[{"ablate_heads": [[1, 2]]}, {"sae_feature": 5, "value": 4.0}]
    )

    def zero_head(z: torch.Tensor, hook: Any) -> torch.Tensor:
        z[:, :, 2] = 0.0
        return z

    def clamp(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        body = activation[0, 1:]
        acts = ((body - sae.b_dec) @ sae.W_enc + sae.b_enc).relu()
        activation[0, 1:] = body + (4.0 - acts[:, 5:6]) * sae.W_dec[5]
        return activation

    expected = greedy_loop(tc, prompt, 3, [(HOOK, clamp), ("blocks.1.attn.hook_z", zero_head)])
    assert ids_of(tc, result.intervened) == expected
    assert result.interventions == ["zero-ablate heads L1H2", f"clamp SAE feature 5 on {HOOK} to 4"]


def test_generate_cap_and_cancellation(clean_toy: ToolContext) -> None:
    with pytest.raises(LensError, match="max_new_tokens=10000 is out of range"):
        generate(clean_toy, "w1 w2", max_new_tokens=10_000)
    assert MAX_NEW_TOKENS <= 256

    small = ToolContext(clean_toy.model, Limits(max_response_chars=2000))
    with pytest.raises(LensError, match="max_response_chars=2000"):
        generate(small, "w1 w2", max_new_tokens=30)

    dry = generate(clean_toy, "w1 w2", max_new_tokens=30, dry_run=True)
    assert dry.dry_run and dry.baseline is None and dry.cost is not None
    # 1 row x 31 passes over a mean of 3 + 15 tokens through 2 blocks
    assert dry.cost.work_units == 31 * 18 * 2 and dry.cost.forward_passes == 31

    class Cancelled(BaseException):
        pass

    seen: list[tuple[float, float | None]] = []

    def progress(done: float, total: float | None = None, message: str | None = None) -> None:
        seen.append((done, total))
        if done >= 3:
            raise Cancelled

    tc = ToolContext(clean_toy.model, clean_toy.limits, progress)
    with pytest.raises(Cancelled):
        generate(tc, "w1 w2 w3", max_new_tokens=20)
    assert seen == [(1, 20), (2, 20), (3, 20)]
    assert count_hooks(clean_toy.model.bridge) == 0


def test_sampling_is_seeded(clean_toy: ToolContext) -> None:
    a = generate(clean_toy, "w1 w2 w3", max_new_tokens=8, temperature=1.0, seed=3)
    b = generate(clean_toy, "w1 w2 w3", max_new_tokens=8, temperature=1.0, seed=3)
    assert a.baseline.text == b.baseline.text


# ---- through the MCP client -----------------------------------------------------------------------
async def test_tools_through_mcp_happy_path_and_bad_input(toy_host: ModelHost, tmp_path: Path) -> None:
    model = toy_host.model
    assert model is not None
    model.saes.clear()
    model.steering_vectors.clear()
    server = build_server(toy_host)
    try:
        folder = toy_sae_folder(tmp_path / "sae")
        loaded = result_data(await call_tool(server, "load_sae", {"spec": str(folder)}))
        assert loaded["loaded"]["hook"] == HOOK and loaded["loaded"]["d_sae"] == 48
        info = result_data(await call_tool(server, "model_info"))
        assert info["saes"][0].startswith(HOOK)
        feats = result_data(await call_tool(server, "sae_features", {"prompt": PROMPT, "positions": [-1], "top_k": 3}))
        assert len(feats["positions"]) == 1 and "meaning" in feats
        attr = result_data(await call_tool(server, "feature_attribution", {"prompt": PROMPT, "answer": " w4"}))
        assert attr["features"]
        vec = result_data(
            await call_tool(
                server,
                "steering_vector",
                {"name": "v", "positive_prompts": ["w1 w2"], "negative_prompts": ["w5 w6"], "layer": 1},
            )
        )
        assert vec["stored"] == ["v"]
        gen = result_data(
            await call_tool(
                server,
                "generate",
                {"prompt": "w1 w2 w3", "max_new_tokens": 3, "interventions": [{"steer": "v", "alpha": 2}]},
            )
        )
        assert len(gen["baseline"]["tokens"]) <= 3 and gen["controls"][0]["label"] == "control:v"

        bad: list[tuple[str, dict[str, Any], str]] = [
            ("load_sae", {"spec": str(tmp_path / "nope")}, "no such folder"),
            ("load_sae", {"spec": str(toy_sae_folder(tmp_path / "w", d_in=64))}, "d_in=64"),
            ("sae_features", {"prompt": PROMPT, "hook": "blocks.0.hook_resid_post"}, "no SAE is loaded on that hook"),
            ("sae_features", {"prompt": PROMPT, "top_k": 0}, "top_k=0 is out of range"),
            ("sae_features", {"prompt": PROMPT, "positions": [99]}, "positions=99 is out of range"),
            ("feature_attribution", {"prompt": PROMPT, "answer": "w4 w5"}, "must be a single token"),
            ("steering_vector", {"name": "x", "positive_prompts": ["w1"], "negative_prompts": ["w2"]}, "layer"),
            (
                "steering_vector",
                {"name": "x", "positive_prompts": [], "negative_prompts": ["w2"], "layer": 0},
                "non-empty",
            ),
            ("steering_vector", {"name": "x", "from_feature": 4800}, "out of range"),
            ("generate", {"prompt": "w1", "interventions": [{"steer": "nope"}]}, "no steering vector by that name"),
            ("generate", {"prompt": "w1", "interventions": [{"steer": "v", "beta": 1}]}, "unknown keys ['beta']"),
            ("generate", {"prompt": "w1", "interventions": [{"ablate_heads": [[9, 0]]}]}, "out of range"),
            ("generate", {"prompt": "w1", "interventions": [{"sae_feature": 1, "value": "x"}]}, "finite number"),
            ("generate", {"prompt": "w1", "max_new_tokens": 0}, "max_new_tokens=0 is out of range"),
            ("generate", {"prompt": "w1", "temperature": -1}, "temperature=-1 is out of range"),
        ]
        for name, arguments, expected in bad:
            text = error_text(await call_tool(server, name, arguments))
            assert expected in text, (name, arguments, text)
            assert "failed unexpectedly" not in text
        assert count_hooks(model.bridge) == 0
        assert list(model.saes) == [HOOK]
    finally:
        model.saes.clear()
        model.steering_vectors.clear()


def test_hub_repo_fails_fast_offline(clean_toy: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LensError, match="cannot be reached"):
        load_sae(clean_toy, "someone/some-saes", sae_id="blocks.0.hook_resid_pre")


def test_builtin_sae_refused_on_the_toy_model(clean_toy: ToolContext) -> None:
    with pytest.raises(LensError, match="does not have|d_in"):
        load_sae(clean_toy, "smollm2-135m-resid")
    with pytest.raises(LensError, match="no SAE is loaded and 'toy-induction' has no builtin one"):
        sae_features(clean_toy, PROMPT)


async def test_load_sae_follows_the_servers_load_policy(toy_host: ModelHost, tmp_path: Path) -> None:
    model = toy_host.model
    assert model is not None
    model.saes.clear()
    saved = toy_host.load_policy
    root = tmp_path / "allowed"
    inside = toy_sae_folder(root / "sae")
    outside = toy_sae_folder(tmp_path / "elsewhere")
    toy_host.load_policy = LoadPolicy(roots=(root.resolve(),), paths=True, hub=False)
    server = build_server(toy_host)
    try:
        for spec in (str(outside), str(tmp_path / "missing"), "someone/some-saes"):
            text = error_text(await call_tool(server, "load_sae", {"spec": spec}))
            assert "is not allowed" in text and "--load-root" in text, text
        traversal = error_text(await call_tool(server, "load_sae", {"spec": str(root), "sae_id": "../elsewhere"}))
        assert "no '..'" in traversal
        assert model.saes == {}
        loaded = result_data(await call_tool(server, "load_sae", {"spec": str(inside)}))
        assert loaded["saes"] == [HOOK]
        builtin = error_text(await call_tool(server, "load_sae", {"spec": "smollm2-135m-resid"}))
        assert "not allowed" not in builtin  # always allowed; refused here only for not fitting the toy model
    finally:
        toy_host.load_policy = saved
        model.saes.clear()
