"""Circuit faithfulness: every edge outside a circuit ablated, exactly, many circuits as rows of one batch.

For each pair the rows are: the full model (nothing ablated), everything ablated, and per circuit the circuit
kept (everything else ablated) and its complement (only the circuit ablated). An ablated edge carries the
replacement writer output instead of the live one: the pair's corrupted run ("corrupted"), the mean over the
reference prompts per position ("mean", Wang et al.), or one reference prompt drawn per row ("resample").
recovered = (mean circuit - mean ablated-all) / (mean full - mean ablated-all), pooled over pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lens_mcp.errors import LensError
from lens_mcp.tools.circuits._engine import Metric, edge_run, writer_states
from lens_mcp.tools.circuits._graph import Graph
from lens_mcp.tools.core.batching import ProgressCounter
from lens_mcp.tools.core.context import ToolContext

ROW_BYTES_BUDGET = 512 * 2**20


@dataclass
class Curve:
    full: torch.Tensor
    """[pairs]"""
    ablated: torch.Tensor
    """[pairs]"""
    circuit: torch.Tensor
    """[pairs, circuits]"""
    complement: torch.Tensor
    """[pairs, circuits]"""
    passes: int

    def pooled(self) -> tuple[float, float, list[float], list[float], list[float]]:
        """(full, ablated, recovered per circuit, complement recovered per circuit, circuit metric per circuit)."""
        full, ablated = float(self.full.mean()), float(self.ablated.mean())
        gap = full - ablated
        if abs(gap) < 1e-9:
            raise LensError(
                "the full model and the fully ablated model give the same metric, so recovered is undefined: choose "
                "pairs whose metric the corruption (or ablation) changes."
            )
        circuit = self.circuit.mean(dim=0)
        complement = self.complement.mean(dim=0)
        return (
            full,
            ablated,
            [float(v) for v in (circuit - ablated) / gap],
            [float(v) for v in (complement - ablated) / gap],
            [float(v) for v in circuit],
        )


def kept_masks(
    graph: Graph, circuits: Sequence[Sequence[tuple[int, int, int | None]]], n_tokens: int | None
) -> torch.Tensor:
    """[circuits, (positions,) writers, readers] bool of the kept edges."""
    shape = (len(circuits), *((n_tokens,) if n_tokens is not None else ()), len(graph.writers), len(graph.readers))
    kept = torch.zeros(shape, dtype=torch.bool)
    for index, edges in enumerate(circuits):
        if not edges:
            continue
        w = torch.tensor([e[0] for e in edges])
        r = torch.tensor([e[1] for e in edges])
        if n_tokens is None:
            kept[index, w, r] = True
        else:
            p = torch.tensor([e[2] for e in edges])
            kept[index, p, w, r] = True
    return kept


def evaluate(
    tc: ToolContext,
    graph: Graph,
    pairs: Sequence[torch.Tensor],
    metrics: Sequence[Metric],
    kept: torch.Tensor,
    ablation: str,
    references: torch.Tensor | None,
    seed: int,
    counter: ProgressCounter,
) -> Curve:
    """kept: [circuits, (positions,) writers, readers]. references: [n, tokens] for mean/resample."""
    valid = graph.valid()
    if kept.dim() == 4:
        valid = valid.expand(kept.shape[1], -1, -1)
    n_circuits = int(kept.shape[0])
    ablate = torch.cat(
        [torch.zeros_like(valid)[None], valid[None], valid & ~kept, kept & valid], dim=0
    )  # full, all, circuits, complements
    full = torch.zeros(len(pairs))
    ablated = torch.zeros(len(pairs))
    circuit = torch.zeros(len(pairs), n_circuits)
    complement = torch.zeros(len(pairs), n_circuits)
    passes = 0
    generator = torch.Generator().manual_seed(seed)
    reference_writers = None
    if references is not None:
        reference_writers = writer_states(tc, graph, references).writers
        passes += 1
    d_model = tc.view.d_model
    for index, (tokens, metric) in enumerate(zip(pairs, metrics, strict=True)):
        n_tokens = int(tokens.shape[-1])
        if reference_writers is not None and int(reference_writers.shape[1]) != n_tokens:
            raise LensError(
                f"reference_prompts are {reference_writers.shape[1]} tokens long but pair {index} is {n_tokens}: "
                "mean and resample ablation replace writers position by position; give prompts of the same length."
            )
        if ablation == "corrupted":
            replacement = writer_states(tc, graph, tokens[1:2]).writers
            passes += 1
        elif ablation == "mean":
            assert reference_writers is not None
            replacement = reference_writers.mean(dim=0, keepdim=True)
        rows = ablate.shape[0]
        per_batch = max(1, ROW_BYTES_BUDGET // (4 * n_tokens * len(graph.writers) * (d_model + len(graph.readers))))
        values = torch.zeros(rows)
        for start in range(0, rows, per_batch):
            stop = min(rows, start + per_batch)
            if ablation == "resample":
                assert reference_writers is not None
                picks = torch.randint(0, int(reference_writers.shape[0]), (stop - start,), generator=generator)
                replacement = reference_writers[picks.to(reference_writers.device)]
            clean = tokens[:1].expand(stop - start, -1)
            values[start:stop] = edge_run(
                tc, graph, clean, ablate[start:stop].to(tokens.device), replacement, metric
            ).cpu()
            passes += 1
            counter.advance(stop - start)
        full[index], ablated[index] = values[0], values[1]
        circuit[index] = values[2 : 2 + n_circuits]
        complement[index] = values[2 + n_circuits :]
    return Curve(full, ablated, circuit, complement, passes)
