"""Server instructions for the agent (Claude Code cuts them at 2 KB; a test keeps them under). They name the
tool families, not every tool, so that adding a tool to a family never breaks the budget."""

INSTRUCTIONS = """\
lens-mcp holds one transformer in memory and runs TransformerLens experiments on it. Tools come in
families; each tool's description says what it returns.
- model: model_info first (layers, heads, context: every layer/head/position argument is checked against
  it), tokenize (positions count from 0 with BOS at 0, negative from the end; answers are single tokens,
  usually with a leading space: ' Paris'), load_model.
- reading (one forward pass): logit_lens, head_attribution (direct contribution to logit(answer) -
  logit(wrong_answer); positive = towards the answer), attention_pattern, induction_scores, head and
  neuron readers.
- causal (interventions on a clean/corrupted pair or pairs=[...]): patch_sweep (1 = restores the clean
  behaviour, 0 = no effect), attribution_patch (gradient screen; confirm exactly), path_patch (one
  sender-receiver path), ablate_heads. Datasets are normalized pooled: (mean patched - mean corrupted) /
  (mean clean - mean corrupted).
- circuits: edge_attribution (edges scored), circuit_faithfulness (what the top k edges keep), circuits.
- features: SAEs, corpus exemplars of features/neurons/heads, steering, generation with interventions.
- weights (no forward pass): composition between heads.
Units: raw logits, probabilities 0..1, losses in nats; 4 significant digits; `meaning` says what a
result's main number means. Results are capped: ask for few layers/positions, small top_k. Grid tools
take image=true for PNG pictures; sweeps take dry_run=true for a cost estimate first.
Prompts: locate_fact, find_induction_circuit, explain_prediction, find_circuit. Resources: lens://model/info,
lens://model/hooks, lens://server/limits. Long tools report progress and can be cancelled. Errors say
what was wrong and how to fix it.
"""
