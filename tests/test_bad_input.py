"""Bad input: a battery of malformed calls across every tool through a real MCP client session (both
client modes). Each must come back as an error whose text names the argument and says how to fix it; after
each one the server still answers and no hook is left on the model; a reference set of calls returns exactly
the same numbers before and after the battery."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest
import torch
from mcp import Client

from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost
from lens_mcp.server.app import build_server
from lens_mcp.server.readable_errors import readable_errors
from lens_mcp.tools.core.context import ToolContext
from lens_mcp.tools.features.load_sae import load_sae
from lens_mcp.tools.features.steering_vector import steering_vector
from tests.mcp_client import MODES, result_data, spawn_toy_server
from tests.registry_helpers import registered_tools
from tests.shared import CLEAN, CORRUPTED, SWEEP, P, leak_reports, untimed, write_sae_folder

LONG = " ".join(f"w{i % 250}" for i in range(60))  # 61 tokens: over the toy model's context of 48
AB = {"prompt": P, "heads": [[1, 2]], "answer": " w4"}
AP = {"prompt": P, "layer": 1, "head": 2}
SV = {"name": "x", "positive_prompts": ["w1 w2"], "negative_prompts": ["w5 w6"], "layer": 1}
SAE_HOOK = "blocks.1.hook_resid_pre"
NAN, INF = float("nan"), float("inf")  # the Python client sends both as null

# Words that say how to fix a call (an example of a valid value counts: "e.g.").
FIX_WORDS = ("use ", "pass ", "shorten", "narrow", "remove", "omit ", "reword", "repeat", "e.g.")

# (tool, arguments, substrings the message must contain: the argument, and the fix or the valid range)
CASES: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    # ---- tokenize
    ("tokenize", {}, ("text is required", "pass text")),
    ("tokenize", {"text": 12}, ("text=12", "pass text as a string")),
    ("tokenize", {"text": None}, ("text=null", "pass text")),
    ("tokenize", {"text": ["w1"]}, ("text=", "pass text as a string")),
    ("tokenize", {"text": ""}, ("text is empty", "pass some text")),
    ("tokenize", {"text": "   ", "prepend_bos": False}, ("text produced no tokens", "pass some text")),
    ("tokenize", {"text": LONG}, ("text is 61 tokens", "48", "shorten")),
    ("tokenize", {"text": "w1 " * 4000}, ("text is", "shorten")),
    ("tokenize", {"text": "w1 \ud800 w2"}, ("text is not valid unicode", "remove")),
    ("tokenize", {"text": "w1", "prepend_bos": "maybe"}, ("prepend_bos", "true or false")),
    # ---- run_with_cache
    ("run_with_cache", {}, ("prompt is required", "pass prompt")),
    ("run_with_cache", {"prompt": ""}, ("prompt is empty", "pass")),
    ("run_with_cache", {"prompt": LONG}, ("prompt is 61 tokens", "shorten")),
    ("run_with_cache", {"prompt": P, "hooks": ["nope"]}, ("hooks", "'nope'", "use a family")),
    ("run_with_cache", {"prompt": P, "hooks": []}, ("hooks", "pass a non-empty list")),
    ("run_with_cache", {"prompt": P, "hooks": [""]}, ("hooks", "use a family")),
    ("run_with_cache", {"prompt": P, "hooks": "blocks.99.hook_resid_post"}, ("hooks", "blocks.99", "use a family")),
    ("run_with_cache", {"prompt": P, "hooks": ["blocks.*.no_such_hook"]}, ("hooks", "matches no hook", "use")),
    ("run_with_cache", {"prompt": P, "hooks": ["blocks.0.attn.hook_result"]}, ("hooks", "never fires", "use 'z'")),
    ("run_with_cache", {"prompt": P, "hooks": ["__import__('os').system('true')"]}, ("hooks", "use a family")),
    ("run_with_cache", {"prompt": P, "hooks": ["blocks.0.\x00hook_z"]}, ("hooks", "use a family")),
    ("run_with_cache", {"prompt": P, "hooks": 5}, ("hooks=5", "pass hooks as a list of strings")),
    ("run_with_cache", {"prompt": P, "layers": [5]}, ("layers=5", "use 0..1")),
    ("run_with_cache", {"prompt": P, "layers": [-3]}, ("layers=-3", "use 0..1")),
    ("run_with_cache", {"prompt": P, "layers": "all"}, ("layers=", "pass layers as a list of integers")),
    ("run_with_cache", {"prompt": P, "layers": [NAN]}, ("layers[0]=null", "pass layers")),
    ("run_with_cache", {"prompt": P, "positions": [100]}, ("positions=100", "use 0..8")),
    ("run_with_cache", {"prompt": P, "positions": [-100]}, ("positions=-100", "use 0..8")),
    ("run_with_cache", {"prompt": P, "positions": []}, ("positions", "omit positions")),
    ("run_with_cache", {"prompt": P, "top_k": 0}, ("top_k=0", "use 1..100")),
    ("run_with_cache", {"prompt": P, "top_k": 10**9}, ("top_k=1000000000", "use 1..100")),
    ("run_with_cache", {"prompt": P, "top_k": -(10**30)}, ("top_k=", "use 1..100")),
    ("run_with_cache", {"prompt": P, "top_k": INF}, ("top_k=null", "pass top_k as an integer")),
    ("run_with_cache", {"prompt": P, "top_k": 2.5}, ("top_k=2.5", "pass top_k as an integer")),
    # ---- head_attribution
    ("head_attribution", {"prompt": P}, ("answer is required", "pass answer")),
    ("head_attribution", {"answer": " w4"}, ("prompt is required", "pass prompt")),
    ("head_attribution", {"prompt": "", "answer": " w4"}, ("prompt is empty", "pass")),
    ("head_attribution", {"prompt": P, "answer": ""}, ("answer is empty", "pass")),
    ("head_attribution", {"prompt": P, "answer": " w4 w5"}, ("answer must be a single token", "use the first token")),
    ("head_attribution", {"prompt": P, "answer": "zzz"}, ("answer='zzz'", "vocabulary", "pass a token")),
    ("head_attribution", {"prompt": P, "answer": "\x07"}, ("answer=", "vocabulary", "pass a token")),
    ("head_attribution", {"prompt": P, "answer": "🦄"}, ("answer=", "vocabulary", "pass a token")),
    ("head_attribution", {"prompt": P, "answer": " w4", "wrong_answer": " w4"}, ("wrong_answer", "pass a different")),
    ("head_attribution", {"prompt": P, "answer": " w4", "wrong_answer": "w5 w6"}, ("wrong_answer must be", "use")),
    ("head_attribution", {"prompt": P, "answer": " w4", "position": 99}, ("position=99", "use 0..8")),
    ("head_attribution", {"prompt": P, "answer": " w4", "position": -99}, ("position=-99", "use 0..8")),
    ("head_attribution", {"prompt": P, "answer": " w4", "position": NAN}, ("position=null", "pass position")),
    ("head_attribution", {"prompt": P, "answer": " w4", "top_k": 10**9}, ("top_k=1000000000", "use 1..100")),
    ("head_attribution", {"prompt": LONG, "answer": " w4"}, ("prompt is 61 tokens", "shorten")),
    # ---- logit_lens
    ("logit_lens", {}, ("prompt is required", "pass prompt")),
    ("logit_lens", {"prompt": P, "position": 9}, ("position=9", "use 0..8")),
    ("logit_lens", {"prompt": P, "position": -10}, ("position=-10", "use 0..8")),
    ("logit_lens", {"prompt": P, "top_k": -1}, ("top_k=-1", "use 1..100")),
    ("logit_lens", {"prompt": P, "top_k": 10**9}, ("top_k=1000000000", "use 1..100")),
    ("logit_lens", {"prompt": P, "answer": "w1 w2"}, ("answer must be a single token", "use")),
    ("logit_lens", {"prompt": P, "answer": ""}, ("answer is empty", "pass")),
    ("logit_lens", {"prompt": LONG}, ("prompt is 61 tokens", "shorten")),
    ("logit_lens", {"prompt": P, "position": "last"}, ('position="last"', "pass position as an integer")),
    # ---- attention_pattern
    ("attention_pattern", {"prompt": P, "head": 0}, ("layer is required", "pass layer")),
    ("attention_pattern", {"prompt": P, "layer": 0}, ("head is required", "pass head")),
    ("attention_pattern", {**AP, "layer": 2}, ("layer=2", "use 0..1")),
    ("attention_pattern", {**AP, "layer": -3}, ("layer=-3", "use 0..1")),
    ("attention_pattern", {**AP, "layer": 10**20}, ("layer=100000000000000000000", "use 0..1")),
    ("attention_pattern", {**AP, "head": 3}, ("head=3", "use 0..2")),
    ("attention_pattern", {**AP, "head": -4}, ("head=-4", "use 0..2")),
    ("attention_pattern", {**AP, "layer": "abc"}, ('layer="abc"', "pass layer as an integer")),
    ("attention_pattern", {**AP, "head": 1.5}, ("head=1.5", "pass head as an integer")),
    ("attention_pattern", {**AP, "layer": NAN}, ("layer=null", "pass layer as an integer")),
    ("attention_pattern", {**AP, "query_positions": [50]}, ("query_positions=50", "use 0..8")),
    ("attention_pattern", {**AP, "query_positions": [-10]}, ("query_positions=-10", "use 0..8")),
    ("attention_pattern", {**AP, "query_positions": []}, ("query_positions", "omit query_positions")),
    ("attention_pattern", {**AP, "top_k": 0}, ("top_k=0", "use 1..100")),
    ("attention_pattern", {**AP, "prompt": LONG}, ("prompt is 61 tokens", "shorten")),
    # ---- patch_sweep
    ("patch_sweep", {"clean_prompt": CLEAN, "corrupted_prompt": CORRUPTED}, ("answer is required", "pass answer")),
    ("patch_sweep", {**SWEEP, "corrupted_prompt": "w1 w2"}, ("corrupted_prompt", "same length", "reword")),
    ("patch_sweep", {**SWEEP, "clean_prompt": "w1 w2 w3"}, ("clean_prompt", "same length", "reword")),
    ("patch_sweep", {**SWEEP, "clean_prompt": LONG, "corrupted_prompt": LONG}, ("clean_prompt is 61", "shorten")),
    ("patch_sweep", {**SWEEP, "corrupted_prompt": ""}, ("corrupted_prompt is empty", "pass")),
    ("patch_sweep", {**SWEEP, "component": "bogus"}, ('component="bogus"', "pass component as one of")),
    ("patch_sweep", {**SWEEP, "metric": "accuracy"}, ('metric="accuracy"', "pass metric as one of")),
    ("patch_sweep", {**SWEEP, "layers": [9]}, ("layers=9", "use 0..1")),
    ("patch_sweep", {**SWEEP, "layers": [-3]}, ("layers=-3", "use 0..1")),
    ("patch_sweep", {**SWEEP, "layers": []}, ("layers", "omit layers")),
    ("patch_sweep", {**SWEEP, "positions": [-100]}, ("positions=-100", "use 0..9")),
    ("patch_sweep", {**SWEEP, "positions": [10]}, ("positions=10", "use 0..9")),
    ("patch_sweep", {**SWEEP, "component": "heads", "positions": [1]}, ("positions=", "use component='heads_by_pos'")),
    ("patch_sweep", {**SWEEP, "wrong_answer": None}, ("needs wrong_answer", "use metric='prob'")),
    ("patch_sweep", {**SWEEP, "answer": " w64 w65"}, ("answer must be a single token", "use")),
    ("patch_sweep", {**SWEEP, "wrong_answer": " w64"}, ("wrong_answer is the same token", "pass a different")),
    ("patch_sweep", {**SWEEP, "normalize": "perhaps"}, ("normalize", "true or false")),
    ("patch_sweep", {**SWEEP, "positions": [1, "x"]}, ('positions[1]="x"', "pass positions as a list of integers")),
    # ---- attribution_patch
    ("attribution_patch", {**SWEEP, "direction": "sideways"}, ('direction="sideways"', "pass direction as one of")),
    ("attribution_patch", {**SWEEP, "verify_top": -1}, ("verify_top=-1", "use 0..100")),
    ("attribution_patch", {**SWEEP, "verify_top": 10**6}, ("verify_top=1000000", "use 0..100")),
    ("attribution_patch", {**SWEEP, "positions": [1]}, ("positions=", "use component='heads_by_pos'")),
    ("attribution_patch", {**SWEEP, "corrupted_prompt": "w1 w2"}, ("corrupted_prompt", "same length", "reword")),
    ("attribution_patch", {**SWEEP, "wrong_answer": None}, ("needs wrong_answer", "use metric='prob'")),
    ("attribution_patch", {**SWEEP, "layers": [9]}, ("layers=9", "use 0..1")),
    ("attribution_patch", {**SWEEP, "component": "mlp_in"}, ('component="mlp_in"', "pass component as one of")),
    # ---- ablate_heads
    ("ablate_heads", {"prompt": P, "answer": " w4"}, ("heads is required", "pass heads")),
    ("ablate_heads", {**AB, "heads": []}, ("heads", "e.g. heads=[[1, 2]")),
    ("ablate_heads", {**AB, "heads": [[5, 0]]}, ("heads[0][0] (layer)=5", "use 0..1")),
    ("ablate_heads", {**AB, "heads": [[-3, 0]]}, ("heads[0][0] (layer)=-3", "use 0..1")),
    ("ablate_heads", {**AB, "heads": [[0, 9]]}, ("heads[0][1] (head)=9", "use 0..2")),
    ("ablate_heads", {**AB, "heads": [[0, -4]]}, ("heads[0][1] (head)=-4", "use 0..2")),
    ("ablate_heads", {**AB, "heads": [[0]]}, ("heads[0]", "[layer, head] pair")),
    ("ablate_heads", {**AB, "heads": [[1, 2, 3]]}, ("heads[0]", "[layer, head] pair")),
    ("ablate_heads", {**AB, "heads": [[1, 2]], "keep": [[0, 1]]}, ("heads and keep are exclusive", "pass one")),
    ("ablate_heads", {"prompt": P, "answer": " w4", "keep": [[0, 9]]}, ("keep[0][1] (head)=9", "use 0..2")),
    ("ablate_heads", {"prompt": P, "answer": " w4", "keep": []}, ("keep", "e.g. keep=[[1, 2]")),
    ("ablate_heads", {**AB, "heads": "L1H2"}, ('heads="L1H2"', "pass heads as a list of lists of integers")),
    ("ablate_heads", {**AB, "heads": [[1, "two"]]}, ('heads[0][1]="two"', "pass heads")),
    ("ablate_heads", {**AB, "mode": "half"}, ('mode="half"', "pass mode as one of")),
    ("ablate_heads", {**AB, "answer": "w4 w5"}, ("answer must be a single token", "use")),
    ("ablate_heads", {**AB, "prompt": ""}, ("prompt is empty", "pass")),
    ("ablate_heads", {**AB, "prompt": LONG}, ("prompt is 61 tokens", "shorten")),
    # ---- induction_scores
    ("induction_scores", {"seq_len": 10**6}, ("seq_len=1000000", "use 2..23")),
    ("induction_scores", {"seq_len": 1}, ("seq_len=1", "use 2..23")),
    ("induction_scores", {"seq_len": -5}, ("seq_len=-5", "use 2..23")),
    ("induction_scores", {"seq_len": 2.5}, ("seq_len=2.5", "pass seq_len as an integer")),  # null: the default
    ("induction_scores", {"seq_len": 10, "n_seqs": 0}, ("n_seqs=0", "use 1..")),
    ("induction_scores", {"seq_len": 10, "n_seqs": 10**9}, ("n_seqs=1000000000", "use 1..")),
    ("induction_scores", {"seq_len": 10, "seed": -1}, ("seed=-1", "use 0..")),
    ("induction_scores", {"seq_len": 10, "top_k": 10**9}, ("top_k=1000000000", "use 1..100")),
    ("induction_scores", {"prompt": "w1 w2 w3"}, ("prompt has no repeated token", "repeat a phrase")),
    ("induction_scores", {"prompt": ""}, ("prompt is empty", "pass")),
    ("induction_scores", {"prompt": LONG}, ("prompt is 61 tokens", "shorten")),
    # ---- load_model (failures keep the toy model loaded)
    ("load_model", {}, ("model is required", "pass model")),
    ("load_model", {"model": ""}, ("model: got an empty name", "pass a builtin")),
    ("load_model", {"model": "no-such-model-xyz"}, ("could not load 'no-such-model-xyz'", "pass a folder")),
    ("load_model", {"model": "/no/such/folder"}, ("model: no such file or folder", "pass a builtin")),
    ("load_model", {"model": "/tmp/lens-mcp-no-such-file.gguf"}, ("model: no such file", "pass a builtin")),
    ("load_model", {"model": "/etc/passwd"}, ("model: /etc/passwd is a file but not a .gguf", "pass")),
    ("load_model", {"model": "a b c"}, ("model: 'a b c'", "pass a builtin")),
    ("load_model", {"model": "toy\x00induction"}, ("model:", "control characters", "pass a builtin")),
    ("load_model", {"model": "toy-induction", "device": "gpu"}, ('device="gpu"', "pass device as one of")),
    ("load_model", {"model": "toy-induction", "dtype": "float8"}, ('dtype="float8"', "pass dtype as one of")),
    # ---- load_sae (failures leave the battery's SAE on blocks.1.hook_resid_pre as it was)
    ("load_sae", {}, ("spec is required", "pass spec")),
    ("load_sae", {"spec": ""}, ("spec is empty", "pass a builtin sae")),
    ("load_sae", {"spec": 5}, ("spec=5", "pass spec as a string")),
    ("load_sae", {"spec": "/no/such/sae"}, ("spec='/no/such/sae'", "no such folder", "pass")),
    ("load_sae", {"spec": "smollm2-135m-resid"}, ("spec='smollm2-135m-resid'", "does not have", "use")),
    ("load_sae", {"spec": "/tmp", "sae_id": "../etc"}, ("sae_id='../etc'", "pass a subfolder")),
    # ---- sae_features
    ("sae_features", {}, ("prompt is required", "pass prompt")),
    ("sae_features", {"prompt": ""}, ("prompt is empty", "pass")),
    ("sae_features", {"prompt": LONG}, ("prompt is 61 tokens", "shorten")),
    ("sae_features", {"prompt": P, "hook": "blocks.0.hook_resid_post"}, ("hook=", "no sae is loaded", "omit hook")),
    ("sae_features", {"prompt": P, "top_k": 0}, ("top_k=0", "use 1..100")),
    ("sae_features", {"prompt": P, "positions": [99]}, ("positions=99", "use 0..8")),
    ("sae_features", {"prompt": P, "positions": "last"}, ("positions=", "pass positions as a list of integers")),
    # ---- feature_attribution
    ("feature_attribution", {"prompt": P}, ("answer is required", "pass answer")),
    ("feature_attribution", {"prompt": P, "answer": " w4 w5"}, ("answer must be a single token", "use")),
    ("feature_attribution", {"prompt": P, "answer": " w4", "wrong_answer": " w4"}, ("wrong_answer", "pass a")),
    ("feature_attribution", {"prompt": P, "answer": " w4", "position": 99}, ("position=99", "use 0..8")),
    ("feature_attribution", {"prompt": P, "answer": " w4", "top_k": 10**9}, ("top_k=1000000000", "use 1..100")),
    ("feature_attribution", {"prompt": P, "answer": " w4", "hook": "nope"}, ("hook='nope'", "omit hook")),
    # ---- feature_exemplars
    ("feature_exemplars", {}, ("say which unit", "pass")),
    ("feature_exemplars", {"feature": 4800}, ("feature=4800", "features 0..")),
    ("feature_exemplars", {"feature": 1, "layer": 1, "head": 1}, ("pass either", "not both")),
    ("feature_exemplars", {"layer": 9, "head": 0}, ("layer=9", "use 0..1")),
    ("feature_exemplars", {"layer": 1, "head": 1, "top_k": 0}, ("top_k=0", "use 1..50")),
    ("feature_exemplars", {"layer": 1, "head": 1, "corpus": "/nonexistent/c.txt"}, ("no such file", "pass")),
    ("feature_exemplars", {"layer": 1, "head": 1, "corpus": "owner/data"}, ("cannot be reached", "use a builtin")),
    # ---- build_exemplar_index
    ("build_exemplar_index", {"layer": 9}, ("layer=9", "use 0..1")),
    ("build_exemplar_index", {"hook": "nope"}, ("hook='nope'", "omit hook")),
    ("build_exemplar_index", {"context": 1}, ("context=1", "use 2..")),
    ("build_exemplar_index", {"tokens": 0}, ("tokens=0", "use ")),
    ("build_exemplar_index", {"corpus": "/nonexistent/c.txt"}, ("no such file", "pass")),
    # ---- search_features
    ("search_features", {}, ("text is required", "pass text")),
    ("search_features", {"text": ""}, ("text is empty", "pass")),
    ("search_features", {"text": P, "position": 99}, ("position=99", "use 0..8")),
    ("search_features", {"text": P, "layer": 9}, ("layer=9", "use 0..1")),
    ("search_features", {"text": P, "top_k": 0}, ("top_k=0", "use 1..100")),
    ("search_features", {"text": P, "hook": "nope"}, ("hook='nope'", "omit hook")),
    # ---- steering_vector (failures store nothing)
    ("steering_vector", {"name": "x", "positive_prompts": ["w1"], "negative_prompts": ["w2"]}, ("layer", "pass")),
    ("steering_vector", {**SV, "name": ""}, ("name", "pass a short label")),
    ("steering_vector", {**SV, "positive_prompts": []}, ("positive_prompts", "pass a non-empty list")),
    ("steering_vector", {**SV, "negative_prompts": [""]}, ("negative_prompts[0] is empty", "pass")),
    ("steering_vector", {**SV, "layer": 5}, ("layer=5", "use 0..1")),
    ("steering_vector", {**SV, "position": 50}, ("position=50", "use")),
    ("steering_vector", {**SV, "negative_prompts": ["w1 w2"]}, ("the vector is zero", "use prompts that differ")),
    ("steering_vector", {"name": "x", "from_feature": 4800}, ("from_feature=4800", "use 0..")),
    ("steering_vector", {**SV, "from_feature": 1}, ("from_feature", "pass either")),
    # ---- generate
    ("generate", {}, ("prompt is required", "pass prompt")),
    ("generate", {"prompt": "w1", "max_new_tokens": 0}, ("max_new_tokens=0", "use 1..256")),
    ("generate", {"prompt": "w1 w2", "max_new_tokens": 47}, ("max_new_tokens=47", "ask for fewer", "shorten")),
    ("generate", {"prompt": "w1", "temperature": -1}, ("temperature=-1", "use 0")),
    ("generate", {"prompt": "w1", "interventions": [{"steer": "nope"}]}, ("steer='nope'", "use one of", "'v'")),
    ("generate", {"prompt": "w1", "interventions": [{"steer": "v", "beta": 1}]}, ("unknown keys ['beta']", "use")),
    ("generate", {"prompt": "w1", "interventions": [{"steer": "v", "alpha": NAN}]}, ("alpha", "pass a finite")),
    ("generate", {"prompt": "w1", "interventions": [{"ablate_heads": [[9, 0]]}]}, ("layer)=9", "use 0..1")),
    ("generate", {"prompt": "w1", "interventions": [{"sae_feature": 1, "value": "x"}]}, ("value", "pass a finite")),
    ("generate", {"prompt": "w1", "interventions": [{"sae_feature": 999}]}, ("sae_feature=999", "use 0..31")),
    ("generate", {"prompt": "w1", "interventions": [{}]}, ("interventions[0]", "e.g.")),
    # ---- unknown argument names (the SDK alone would ignore them and run with the defaults)
    ("logit_lens", {"prompt": P, "toplk": 3}, ("unknown argument 'toplk'", "top_k", "remove or rename")),
    ("model_info", {"layer": 0}, ("unknown argument 'layer'", "no arguments")),
    # ---- no such tool
    ("no_such_tool", {"text": "w1"}, ("unknown tool: 'no_such_tool'", "use one of", "tokenize")),
    # ---- path_patch
    ("path_patch", {**SWEEP, "receivers": "everything"}, ("receivers", "pass receivers")),
    ("path_patch", {**SWEEP, "receivers": [[1, 7]]}, ("receivers[0][1] (head)=7", "use 0..2")),
    ("path_patch", {**SWEEP, "senders": [[1, 0]], "receivers": [[1, 2]]}, ("no path", "use senders before layer 1")),
    ("path_patch", {**SWEEP, "receivers": "all_heads"}, ("senders=null", "pass senders")),
    ("path_patch", {**SWEEP, "receiver_input": "o"}, ("receiver_input", "pass receiver_input")),
    # ---- circuits
    ("edge_attribution", {**SWEEP, "method": "eap-ig", "ig_steps": 0}, ("ig_steps=0", "use 1..64")),
    ("circuit_faithfulness", {**SWEEP, "edges": ["L1H0->L0H1.q"]}, ("goes backwards", "remove it")),
    ("circuit_faithfulness", {**SWEEP, "edges": ["L0H1->L1H9.q"]}, ("head 9 does not exist", "use 0 to")),
    ("circuit_faithfulness", {**SWEEP, "circuit": "nope"}, ("circuit='nope' is not stored", "pass a stored name")),
    ("circuits", {"remove": ["nope"]}, ("remove='nope' is not stored", "pass a stored name")),
    # ---- component readers
    ("head_output", {"prompt": P, "layer": 9, "head": 0}, ("layer=9", "use 0..1")),
    ("head_output", {"prompt": P, "layer": 1, "head": 2, "source_position": 99}, ("source_position=99", "use 0..")),
    ("neuron_attribution", {"prompt": P, "answer": " w4", "layers": []}, ("layers: got an empty list", "omit layers")),
    ("neuron_attribution", {"prompt": P, "answer": " w4 w5"}, ("answer must be a single token", "use the first")),
    ("mlp_neurons", {"prompt": P, "layer": 0, "top_tokens": 0}, ("top_tokens=0", "use 1..20")),
    ("mlp_neurons", {"prompt": P, "layer": -9}, ("layer=-9", "use 0..1")),
    ("composition_scores", {"kind": "k", "layers": [0]}, ("layers", "pass later layers")),
    ("composition_scores", {"kind": "k", "top_k": 0}, ("top_k=0", "use 1..100")),
]

REFERENCE: list[tuple[str, dict[str, Any]]] = [
    ("head_attribution", {"prompt": CLEAN, "answer": " w64", "wrong_answer": " w77"}),
    ("patch_sweep", {**SWEEP, "component": "heads"}),
    ("patch_sweep", {**SWEEP, "component": "resid_pre"}),
    ("attribution_patch", {**SWEEP, "component": "heads_by_pos", "verify_top": 3}),
    ("attention_pattern", {"prompt": CLEAN, "layer": 1, "head": 2, "top_k": 2}),
    ("logit_lens", {"prompt": CLEAN, "answer": " w64", "top_k": 3}),
    (
        "ablate_heads",
        {"prompt": CLEAN, "heads": [[0, 1], [1, 2]], "answer": " w64", "wrong_answer": " w77", "individually": True},
    ),
    ("induction_scores", {"seq_len": 10, "n_seqs": 4}),
    ("sae_features", {"prompt": CLEAN, "positions": [-1], "top_k": 3}),
    ("feature_attribution", {"prompt": CLEAN, "answer": " w64", "wrong_answer": " w77", "top_k": 3}),
    ("generate", {"prompt": CLEAN, "max_new_tokens": 3, "interventions": [{"steer": "v", "alpha": 2}]}),
]


def numbers(data: dict[str, Any]) -> dict[str, Any]:
    return untimed(data)


@pytest.fixture(scope="module")
def battery_host(tmp_path_factory: pytest.TempPathFactory) -> ModelHost:
    """The toy model with an SAE on SAE_HOOK and a steering vector 'v', so the feature tools' own checks run."""
    host = ModelHost(Limits())
    host.load("toy-induction", device="cpu")
    assert host.model is not None
    folder = tmp_path_factory.mktemp("battery_sae")
    write_sae_folder(folder, int(host.model.bridge.cfg.d_model), SAE_HOOK)
    with host.use() as model:
        tc = ToolContext(model, host.limits)
        load_sae(tc, str(folder))
        steering_vector(tc, "v", ["w1 w2 w3"], ["w7 w8 w9"], layer=1)
    return host


def feature_state(host: ModelHost) -> dict[str, Any]:
    """What the feature tools keep on the model: SAEs by hook and steering vectors by name, as plain values."""
    assert host.model is not None
    saes = {hook: (sae.W_enc.clone(), sae.W_dec.clone()) for hook, sae in host.model.saes.items()}
    vectors = {name: (v.hook, v.vector.clone()) for name, v in host.model.steering_vectors.items()}
    return {"saes": saes, "vectors": vectors}


def same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if list(a["saes"]) != list(b["saes"]) or list(a["vectors"]) != list(b["vectors"]):
        return False
    same_saes = all(torch.equal(x, y) for k in a["saes"] for x, y in zip(a["saes"][k], b["saes"][k], strict=True))
    same_vectors = all(
        a["vectors"][k][0] == b["vectors"][k][0] and torch.equal(a["vectors"][k][1], b["vectors"][k][1])
        for k in a["vectors"]
    )
    return same_saes and same_vectors


def test_the_battery_is_large_and_covers_every_tool() -> None:
    """Every registered tool that takes arguments has at least one bad-input case (derived from the registry:
    a newly registered tool fails here until cases are added to CASES)."""
    assert len(CASES) >= 60
    covered = {tool for tool, _, _ in CASES}
    with_arguments = [tool["name"] for tool in registered_tools() if tool["inputSchema"].get("properties")]
    missing = sorted(set(with_arguments) - covered)
    assert not missing, f"add bad-input cases to CASES in tests/test_bad_input.py for {missing}"


@pytest.mark.parametrize("mode", MODES)
async def test_malformed_calls_get_clear_errors_and_change_nothing(
    battery_host: ModelHost, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an unknown Hub name must fail fast, without the network
    host = battery_host
    failures: list[str] = []
    reported = len(leak_reports())
    state = feature_state(host)
    async with Client(build_server(host), mode=mode) as client:
        before = [numbers(result_data(await client.call_tool(name, args))) for name, args in REFERENCE]
        for name, arguments, expected in CASES:
            shown = f"{name}({str(arguments)[:120]})"
            result = await client.call_tool(name, arguments)
            if not result.is_error:
                failures.append(f"{shown}: no error, got {str(result.structured_content)[:200]}")
                continue
            text = result.content[0].text
            body = text.removeprefix(f"Error executing tool {name}: ").lower()
            missing = [part for part in expected if part.lower() not in body]
            if missing:
                failures.append(f"{shown}: message lacks {missing}: {text[:400]}")
            if not any(word in body for word in FIX_WORDS):
                failures.append(f"{shown}: message says no fix: {text[:400]}")
            if "failed unexpectedly" in body or "validation error for" in body:
                failures.append(f"{shown}: unexpected failure or raw pydantic report: {text[:400]}")
            if len(leak_reports()) > reported:
                failures.append(f"{shown}: {leak_reports()[reported:]}")
                reported = len(leak_reports())
            alive = await client.call_tool("tokenize", {"text": "w1 w2"})
            if alive.is_error or alive.structured_content["n_tokens"] != 3:
                failures.append(f"{shown}: the server stopped answering: {alive.content[0].text[:200]}")
        after = [numbers(result_data(await client.call_tool(name, args))) for name, args in REFERENCE]
    assert host.model is not None and host.model.spec.name == "toy-induction"
    assert same_state(feature_state(host), state), "a failed call changed the SAEs or steering vectors"
    assert leak_reports() == []
    assert failures == [], "\n".join(failures)
    for (name, _), first, second in zip(REFERENCE, before, after, strict=True):
        assert first == second, f"{name} changed after the battery"


# ---- NaN and infinities as raw JSON ------------------------------------------------------------------------
def test_nan_and_infinity_get_the_same_clear_message(battery_host: ModelHost) -> None:
    """The Python client sends NaN/inf as null; other clients may send the JSON extensions NaN/Infinity, which
    the SDK's parser accepts. Either way the message names the argument and the fix."""
    errors = readable_errors(build_server(battery_host))
    for value, shown in [(NAN, "NaN"), (INF, "Infinity"), (-INF, "-Infinity"), (None, "null")]:
        text = errors.describe("attention_pattern", {"prompt": P, "layer": value, "head": 0})
        assert text is not None and f"layer={shown} is invalid" in text and "pass layer as an integer" in text
    text = errors.describe("patch_sweep", {**SWEEP, "layers": "[0, NaN]"})  # JSON text for a list is parsed first
    assert text is not None and "layers[1]=NaN is invalid" in text
    assert errors.describe("attention_pattern", {"prompt": P, "layer": 0, "head": 0}) is None
    assert errors.describe("patch_sweep", {**SWEEP, "layers": "[0, 1]"}) is None  # what the SDK accepts


@pytest.mark.subprocess
def test_nan_over_stdio_is_refused_clearly() -> None:
    process = spawn_toy_server(stderr=subprocess.DEVNULL)
    assert process.stdin and process.stdout
    requests = {
        2: '{"name": "logit_lens", "arguments": {"prompt": "w1 w2", "top_k": NaN}}',
        3: '{"name": "attention_pattern", "arguments": {"prompt": "w1 w2", "layer": -Infinity, "head": 0}}',
        4: '{"name": "tokenize", "arguments": {"text": "w1 w2"}}',
    }
    try:
        hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "nan", "version": "0"}}
        process.stdin.write(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello}) + "\n")
        process.stdin.write('{"jsonrpc": "2.0", "method": "notifications/initialized"}\n')
        for request_id, params in requests.items():
            call = f'{{"jsonrpc": "2.0", "id": {request_id}, "method": "tools/call", "params": {params}}}'
            process.stdin.write(call + "\n")
        process.stdin.flush()
        answers: dict[int, Any] = {}
        deadline = time.monotonic() + 90
        while set(answers) != {1, *requests} and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            message = json.loads(line)
            if "id" in message and "method" not in message:
                answers[message["id"]] = message
    finally:
        process.kill()
        process.wait(timeout=30)
    assert set(answers) == {1, *requests}
    top_k = answers[2]["result"]
    assert top_k["isError"] and "top_k=NaN is invalid" in top_k["content"][0]["text"]
    assert "pass top_k as an integer" in top_k["content"][0]["text"]
    layer = answers[3]["result"]
    assert layer["isError"] and "layer=-Infinity is invalid" in layer["content"][0]["text"]
    assert answers[4]["result"]["structuredContent"]["n_tokens"] == 3
