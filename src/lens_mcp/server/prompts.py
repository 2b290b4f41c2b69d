"""MCP prompts: the standard investigations as ready-made plans (Claude Code shows them as slash commands,
/mcp__lens-mcp__<name>). Each renders one user message that walks the agent through the tools in order,
says what to look for in each result, and what to report. Prompt arguments are strings (MCP)."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import MCPServer
from pydantic import Field

SMALL_RESULTS = (
    "Keep each result small: ask for the layers, heads and positions you need and top_k <= 10\n"
    "(results are capped; an error says how to narrow a call)."
)


def _quoted(text: str) -> str:
    return repr(text)


def locate_fact(
    prompt: Annotated[
        str,
        Field(description="Clean prompt whose next token states the fact, e.g. 'The Eiffel Tower is in the city of'"),
    ],
    answer: Annotated[str, Field(description="The expected next token, usually with a leading space: ' Paris'")],
    corrupted_prompt: Annotated[
        str,
        Field(
            description="Optional: same prompt with the subject changed (same token "
            "count), e.g. 'The Colosseum is in the city of'"
        ),
    ] = "",
    wrong_answer: Annotated[str, Field(description="Optional: what the corrupted prompt predicts, e.g. ' Rome'")] = "",
) -> str:
    """Where is this fact stored? tokenize -> logit_lens -> patch_sweep on resid_pre -> head_attribution -> the
    features at the subject, read from their exemplars."""
    corrupted = (
        f"Corrupted prompt: {_quoted(corrupted_prompt)}"
        if corrupted_prompt
        else "Corrupted prompt: none given. Write one that changes only the subject, has exactly the same "
        "number of tokens (check with tokenize) and makes the model predict a different answer."
    )
    wrong = (
        f"Competing answer (wrong_answer): {_quoted(wrong_answer)}"
        if wrong_answer
        else "Competing answer: none given. Use the corrupted prompt's top prediction (logit_lens on it, last layer)."
    )
    return f"""Find where the model stores the fact this prompt retrieves, with the lens-mcp tools.
Clean prompt: {_quoted(prompt)}
Answer: {_quoted(answer)}
{corrupted}
{wrong}

1. model_info: note n_layers and n_heads.
2. tokenize the clean prompt, the corrupted prompt, the answer and the competing answer. Both answers must be
   single tokens (is_single_token); both prompts must have the same token count. Note the position of the
   subject's last token (BOS is position 0).
3. logit_lens(prompt=clean, answer=...): the first layer where the answer becomes the top prediction, and how
   its probability grows layer by layer. Do the same on the corrupted prompt for the competing answer.
4. patch_sweep(clean_prompt=..., corrupted_prompt=..., answer=..., wrong_answer=..., component="resid_pre").
   A cell near 1 means restoring that (layer, position) restores the fact; near 0, no effect. Look for two
   bands: at the subject's last token in early-middle layers (where the fact is looked up) and at the last
   position in later layers (after it has been moved there).
5. head_attribution(prompt=clean, answer=..., wrong_answer=...): heads with large positive values write the
   answer into the logits directly (units: logit difference); negative ones push against it.
6. To confirm: attention_pattern(prompt=clean, layer=L, head=H, query_positions=[-1]) for the top heads (do
   they read the subject?), then ablate_heads on them and compare the metric before and after.
7. What is represented there (when an SAE is loaded or builtin, as on smollm2-135m): search_features(text=clean,
   position=<the subject's last token>) lists the features firing most there, each with a one-line summary of
   its exemplars; feature_exemplars(feature=F) for the two or three strongest shows the corpus contexts each
   fires on (top contexts, the max token marked, density). Say what each feature responds to only from those
   contexts (e.g. "fires on names of French landmarks"), and which of them carry the subject.

Report: the layers and position where the fact is stored (the subject band of the sweep), the layers and heads
that move it to the last position, the features found at the subject and what their exemplars show, and the
numbers behind each claim.
{SMALL_RESULTS}"""


def find_induction_circuit(
    seq_len: Annotated[
        str, Field(description="Optional: random tokens per repeat for induction_scores (default: the tool's own)")
    ] = "",
) -> str:
    """Find the induction circuit: induction_scores -> attention_pattern -> ablate_heads."""
    length = f"(seq_len={seq_len.strip()})" if seq_len.strip() else ""
    return f"""Find the induction circuit of the loaded model with the lens-mcp tools.

1. model_info: note n_layers and n_heads.
2. induction_scores{length} (random tokens repeated twice). In-context copying shows as
   loss_second_repeat far below loss_first_repeat (nats). top_induction lists heads that attend from a
   repeated token to the token after its earlier occurrence (score 0..1, mean attention); top_previous_token
   lists heads that attend to the position just before.
3. attention_pattern(prompt=example_prompt, layer=L, head=H) for the best induction head and the best
   previous-token head: in the second repeat an induction head attends seq_len - 1 positions back (the token
   after the earlier occurrence); a previous-token head attends to the position right before each query.
4. ablate_heads on example_prompt: ablate the top induction heads, then the top previous-token heads, and
   compare the metric before and after. Induction heads sit in a later layer than the previous-token heads
   they read from (K-composition): ablating either should hurt the second repeat.
5. Optional: patch_sweep with component="heads" to see which heads restore copying.

Report: the circuit as previous-token head(s) layer.head -> induction head(s) layer.head, with the scores, the
loss gap and the ablation effects that support it.
{SMALL_RESULTS}"""


def explain_prediction(
    prompt: Annotated[str, Field(description="The prompt whose next-token prediction to explain")],
    answer: Annotated[str, Field(description="Optional: the token to explain (default: the model's top-1)")] = "",
) -> str:
    """Why does the model predict this token? logit_lens -> head_attribution -> attention_pattern -> ablate_heads
    -> the features behind it, read from their exemplars."""
    target = f"Token to explain: {_quoted(answer)}" if answer else "Token to explain: the model's top-1 prediction."
    return f"""Explain the model's next-token prediction with the lens-mcp tools.
Prompt: {_quoted(prompt)}
{target}

1. tokenize the prompt (and the answer: it must be a single token).
2. logit_lens(prompt=...): the top predictions layer by layer; note the layer where the answer takes over and
   the runner-up at the last layer (use it as wrong_answer).
3. head_attribution(prompt=..., answer=..., wrong_answer=...): each head's direct contribution to
   logit(answer) - logit(wrong_answer); positive pushes toward the answer.
4. attention_pattern(prompt=..., layer=L, head=H, query_positions=[-1]) for the two or three largest heads:
   which earlier tokens they read.
5. ablate_heads on those heads: how much the logit difference drops without them.
6. Features (when an SAE is loaded or builtin, as on smollm2-135m): feature_attribution(prompt=..., answer=...,
   wrong_answer=..., top_k=5) ranks the SAE features at the last position by their effect on the logit
   difference (each with its exact ablation effect); search_features(text=prompt, position=-1) lists those that
   fire most there. For the two or three that matter most, feature_exemplars(feature=F) shows the corpus contexts
   it fires on (top contexts with the max token marked, density, quantile samples) and the tokens it promotes:
   read what the feature means from those contexts, not from its id.

Report: which heads (layer.head) and which earlier tokens produce the prediction, the features that carry it
and what their exemplars show, with the numbers.
{SMALL_RESULTS}"""


def find_circuit(
    clean_prompt: Annotated[
        str, Field(description="Clean prompt, e.g. 'When Mary and John went to the store, John gave a drink to'")
    ],
    corrupted_prompt: Annotated[
        str,
        Field(
            description="Same token count, the behaviour broken, e.g. 'When Mary and John went to the store, "
            "Anna gave a drink to'"
        ),
    ],
    answer: Annotated[str, Field(description="The clean answer, one token: ' Mary'")],
    wrong_answer: Annotated[str, Field(description="The competing answer, one token: ' John'")],
) -> str:
    """Find the circuit behind a behaviour: edge_attribution -> circuit_faithfulness curve -> verify -> report."""
    return f"""Find the circuit (edges between heads, MLPs, embeddings and logits) behind this behaviour.
Clean prompt: {_quoted(clean_prompt)}
Corrupted prompt: {_quoted(corrupted_prompt)}
Answer: {_quoted(answer)}; competing answer (wrong_answer): {_quoted(wrong_answer)}

1. tokenize both prompts: same token count; both answers single tokens. Several pairs of the same template
   (pairs=[...]) give a more reliable circuit than one.
2. edge_attribution(..., method="eap-ig", top_k=20, verify_top=5, name="c"): scores in logit-difference units,
   positive = the edge carries the clean behaviour. Check `verified`: estimates with wrong_sign or
   magnitude_off are not to be trusted. Readers: L<l>H<h>.q, key/value inputs (L<l>.kv<g>.k/.v under
   grouped-query attention, one per key/value head, feeding the query heads kv_heads lists), MLP<l>, logits.
3. circuit_faithfulness(..., circuit="c", k=[10, 20, 50, 100, 200, 500, 1000], target=0.8, image=true):
   recovered per size (1 = the circuit alone keeps the behaviour) and the smallest k reaching 0.8, with the
   curve drawn. complement near 0 means the rest of the model does not carry it too. Try ablation="mean" (per
   position over the corrupted prompts).
4. Prune: circuit_faithfulness(circuit="c", k=[K], name="c_k"), then remove=[...] edges you doubt and compare
   recovered; circuits lists what is stored with its last recovered.
5. Pictures: image=true on step 2's call draws its top edges (up to 60) as a layered graph. Optionally
   confirm single head-to-head edges with path_patch, and a head circuit with ablate_heads(keep=[[layer,
   head], ...]) (every other head ablated).

Report: the circuit (its main heads and edges, by role), the faithfulness curve and the k reaching the target,
and the verified edges with estimate vs exact.
{SMALL_RESULTS}"""


PROMPTS = (
    (locate_fact, "Where is this fact stored?"),
    (find_induction_circuit, "Find the induction circuit"),
    (explain_prediction, "Why this next token?"),
    (find_circuit, "Find the circuit behind a behaviour"),
)


def register_prompts(server: MCPServer) -> None:
    for fn, title in PROMPTS:
        server.prompt(name=fn.__name__, title=title, description=fn.__doc__)(fn)
