"""Server instructions for the agent (Claude Code cuts them at 2 KB; a test keeps them under)."""

INSTRUCTIONS = """\
lens-mcp holds one transformer in memory and runs TransformerLens experiments on it.
Workflow:
1. model_info: layers, heads, context; every layer/head/position argument is checked against it.
2. tokenize: positions count from 0 with BOS at 0, negative from the end (-1 = last token). Answers are
   single tokens, usually with a leading space (' Paris').
3. Read one forward pass: logit_lens (when the answer emerges), head_attribution (each head's direct
   contribution to logit(answer) - logit(wrong_answer); positive = towards the answer), attention_pattern,
   run_with_cache (activation norms).
4. Intervene: patch_sweep restores clean activations into a corrupted run (1 = fully restores the clean
   behaviour, 0 = no effect; equal token counts). ablate_heads reports the metric before and after.
   attribution_patch screens big grids by gradient; confirm with patch_sweep. path_patch tests an edge
   from sender heads to receivers (heads' q/k/v or the logits). edge_attribution ranks every edge;
   circuit_faithfulness(circuit='last', k=[...]): what the top k keep; circuits lists them.
5. induction_scores finds induction, previous-token and duplicate-token heads.
6. Components: head_output (what a head writes), neuron_attribution and mlp_neurons (MLP neurons),
   composition_scores (weight-based Q/K/V composition between heads).
7. Features: load_sae, sae_features, feature_attribution, steering_vector, generate (with interventions).
Units: raw logits, probabilities 0..1, losses in nats; 4 significant digits; `meaning` says what a
result's main number means. Results are capped: ask for few layers/positions, small top_k. Grid tools
take image=true for PNG heatmaps; sweeps take dry_run=true for a cost estimate.
Prompts: locate_fact, find_induction_circuit, explain_prediction, find_circuit. Resources: lens://model/info,
lens://model/hooks, lens://server/limits. Long tools report progress and can be cancelled. load_model
switches the model (the old one stays if the new one fails). Errors say how to fix them.
"""
