"""Server instructions for the agent (Claude Code cuts them at 2 KB; a test keeps them under)."""

INSTRUCTIONS = """\
lens-mcp holds one transformer in memory and runs TransformerLens experiments on it.
Workflow:
1. model_info: layers, heads, context. Every layer/head/position argument is checked against it.
2. tokenize: see how prompts split. Positions count from 0 with BOS at 0; negative positions count
   from the end (-1 = last token). Answers must be single tokens, usually with a leading space (' Paris').
3. Read one forward pass: logit_lens (when the answer emerges, layer by layer), head_attribution (direct
   logit attribution of each head to logit(answer) - logit(wrong_answer); positive = pushes toward the
   answer), attention_pattern (where a head looks), run_with_cache (norms of chosen activations).
4. Intervene: patch_sweep restores clean activations into a corrupted run (1 = fully restores the
   clean behaviour, 0 = no effect); clean and corrupted prompts must have equal token counts.
   ablate_heads zero- or mean-ablates heads and reports the metric before and after.
   attribution_patch screens big grids by gradient (cheap); confirm with patch_sweep.
   path_patch: one edge, head -> logits or head q/k/v.
5. induction_scores finds induction, previous-token and duplicate-token heads.
6. Components: head_output (what a head writes, copying or suppression), neuron_attribution and
   mlp_neurons (MLP neurons), composition_scores (weight-based Q/K/V composition between heads).
7. Features: load_sae, sae_features, feature_attribution, steering_vector, generate (with interventions).
Units: raw logits, probabilities 0..1, losses in nats; numbers rounded to 4 significant digits. Ask for few layers/positions and small top_k: results are capped.
Prompts with step-by-step plans: locate_fact (where is a fact stored), find_induction_circuit,
explain_prediction. Resources: lens://model/info, lens://model/hooks (hook names), lens://server/limits.
Long tools report progress and can be cancelled. load_model switches the model (the old one stays
loaded if the new one fails). Errors say which argument was wrong and how to fix it.
"""
