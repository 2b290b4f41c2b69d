"""The residual-stream graph of edge attribution and circuit faithfulness: its nodes, its edges, their names.

Writers, in forward order: `embed`, then per layer the heads `L{l}H{h}` and the MLP `MLP{l}`.
Readers, per layer: each query head's input `L{l}H{h}.q`, each key/value head's key and value inputs, the MLP's
input `MLP{l}`; then `logits` (the final residual stream). Key/value readers are named `L{l}H{h}.k` when every
query head has its own key/value head and `L{l}.kv{g}.k` / `.v` under grouped-query attention, where one key and
one value input feed the group of query heads listed by `kv_group`.

Every reader reads a prefix of the writers (everything written before it), so an edge (w, r) exists exactly when
`w < prefix[r]`. With parallel attention and MLP a layer's MLP reads the layer's input, not its heads' writes.
Edge names are `writer->reader`, with `@p` appended for position edges (writer and reader at position p).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from lens_mcp.errors import LensError

_WRITER = re.compile(r"^(?:embed|L(\d+)H(\d+)|MLP(\d+))$")
_READER = re.compile(r"^(?:logits|MLP(\d+)|L(\d+)H(\d+)\.([qkv])|L(\d+)\.kv(\d+)\.([kvq]))$")


@dataclass(frozen=True)
class Graph:
    n_layers: int
    n_heads: int
    n_kv: int
    parallel: bool
    writers: list[str] = field(init=False)
    readers: list[str] = field(init=False)
    prefix: list[int] = field(init=False)
    """Per reader: how many writers (from the start) it reads."""

    def __post_init__(self) -> None:
        writers, readers, prefix = ["embed"], [], []
        for layer in range(self.n_layers):
            before = len(writers)
            readers += [f"L{layer}H{h}.q" for h in range(self.n_heads)]
            readers += [self.kv_name(layer, g, "k") for g in range(self.n_kv)]
            readers += [self.kv_name(layer, g, "v") for g in range(self.n_kv)]
            prefix += [before] * (self.n_heads + 2 * self.n_kv)
            writers += [f"L{layer}H{h}" for h in range(self.n_heads)]
            readers.append(f"MLP{layer}")
            prefix.append(before if self.parallel else len(writers))
            writers.append(f"MLP{layer}")
        readers.append("logits")
        prefix.append(len(writers))
        object.__setattr__(self, "writers", writers)
        object.__setattr__(self, "readers", readers)
        object.__setattr__(self, "prefix", prefix)

    @property
    def gqa(self) -> bool:
        return self.n_kv != self.n_heads

    def kv_name(self, layer: int, group: int, which: str) -> str:
        return f"L{layer}.kv{group}.{which}" if self.gqa else f"L{layer}H{group}.{which}"

    def kv_group(self, group: int) -> list[int]:
        """The query heads a key/value head feeds."""
        size = self.n_heads // self.n_kv
        return list(range(group * size, (group + 1) * size))

    def writer_index(self, layer: int, head: int | None) -> int:
        """A head's writer index (head=None: the layer's MLP)."""
        return 1 + layer * (self.n_heads + 1) + (self.n_heads if head is None else head)

    def reader_base(self, layer: int) -> int:
        return layer * (self.n_heads + 2 * self.n_kv + 1)

    @property
    def readers_per_layer(self) -> int:
        return self.n_heads + 2 * self.n_kv + 1

    def valid(self) -> torch.Tensor:
        """[writers, readers] bool: which edges exist."""
        prefix = torch.tensor(self.prefix)
        return torch.arange(len(self.writers))[:, None] < prefix[None, :]

    @property
    def n_edges(self) -> int:
        return sum(self.prefix)

    def writer_layer(self, writer: int) -> int:
        """The layer a writer belongs to (-1 for embed)."""
        return -1 if writer == 0 else (writer - 1) // (self.n_heads + 1)

    def edge_name(self, writer: int, reader: int, position: int | None = None) -> str:
        name = f"{self.writers[writer]}->{self.readers[reader]}"
        return name if position is None else f"{name}@{position}"

    def kv_note(self) -> str | None:
        if not self.gqa:
            return None
        size = self.n_heads // self.n_kv
        return (
            f"grouped-query attention: {self.n_kv} key/value heads per layer, each feeding {size} query heads; "
            f"key/value inputs are named L<layer>.kv<g>.k / .v (kv<g> feeds query heads {size}*g to {size}*g+"
            f"{size - 1}), query inputs L<layer>H<h>.q"
        )

    # ---- parsing -----------------------------------------------------------------------------------------

    def parse_writer(self, name: str, arg: str) -> int:
        match = _WRITER.match(name.strip())
        if match is None:
            raise LensError(
                f"{arg}: {name!r} is not a writer; writers are 'embed', 'L<layer>H<head>' (a head's output) and "
                "'MLP<layer>' (an MLP's output)."
            )
        if name.strip() == "embed":
            return 0
        layer = int(match.group(1) or match.group(3))
        head = None if match.group(3) else int(match.group(2))
        self._check(layer, head, self.n_heads, arg, name)
        return self.writer_index(layer, head)

    def parse_reader(self, name: str, arg: str) -> int:
        text = name.strip()
        match = _READER.match(text)
        if match is None:
            kinds = "'L<l>.kv<g>.k' / '.v'" if self.gqa else "'L<l>H<h>.k' / '.v'"
            raise LensError(
                f"{arg}: {name!r} is not a reader; readers are 'L<l>H<h>.q' (a query input), {kinds} (key/value "
                "inputs), 'MLP<l>' (an MLP's input) and 'logits'."
            )
        if text == "logits":
            return len(self.readers) - 1
        if match.group(1) is not None:
            layer = int(match.group(1))
            self._check(layer, None, 0, arg, name)
            return self.reader_base(layer) + self.readers_per_layer - 1
        if match.group(2) is not None:
            layer, head, which = int(match.group(2)), int(match.group(3)), match.group(4)
            if which != "q" and self.gqa:
                size = self.n_heads // self.n_kv
                raise LensError(
                    f"{arg}: {name!r}: under grouped-query attention key and value inputs belong to key/value heads, "
                    f"not query heads; query head {head} reads key/value head {head // size}: write "
                    f"'{self.kv_name(layer, head // size, which)}' (it feeds query heads "
                    f"{self.kv_group(min(head // size, self.n_kv - 1))})."
                )
            self._check(layer, head, self.n_heads, arg, name)
            offset = {"q": 0, "k": self.n_heads, "v": self.n_heads + self.n_kv}[which]
            return self.reader_base(layer) + offset + head
        layer, group, which = int(match.group(5)), int(match.group(6)), match.group(7)
        if not self.gqa:
            raise LensError(
                f"{arg}: {name!r}: this model has no grouped-query attention; name key/value inputs per head, "
                f"e.g. 'L{layer}H{group}.{which}'."
            )
        if which == "q":
            raise LensError(
                f"{arg}: {name!r}: query inputs belong to query heads: write 'L{layer}H<h>.q' with h in "
                f"{self.kv_group(min(group, self.n_kv - 1))} for this key/value group."
            )
        self._check(layer, group, self.n_kv, arg, name, what="key/value head")
        offset = self.n_heads if which == "k" else self.n_heads + self.n_kv
        return self.reader_base(layer) + offset + group

    def parse_edge(self, name: object, arg: str, n_positions: int | None) -> tuple[int, int, int | None]:
        """'writer->reader' (component edges) or 'writer->reader@p' (position edges) -> indices."""
        if not isinstance(name, str) or "->" not in name:
            raise LensError(
                f"{arg}: {name!r} is not an edge; write 'writer->reader', e.g. 'L0H1->L1H2.q' or 'MLP3->logits'"
                + (", with '@<position>' for position edges." if n_positions is not None else ".")
            )
        text, position = name, None
        if "@" in text:
            text, _, where = text.rpartition("@")
            if n_positions is None:
                raise LensError(f"{arg}: {name!r} names a position, but these are component edges: drop '@{where}'.")
            try:
                position = int(where)
            except ValueError:
                raise LensError(f"{arg}: {name!r}: the position after '@' must be an integer.") from None
            if not -n_positions <= position < n_positions:
                raise LensError(f"{arg}: {name!r}: position {position} is outside the {n_positions} tokens.")
            position %= n_positions
        elif n_positions is not None:
            raise LensError(f"{arg}: {name!r}: these are position edges; append '@<position>', e.g. '{name}@-1'.")
        writer_text, _, reader_text = text.partition("->")
        writer = self.parse_writer(writer_text, arg)
        reader = self.parse_reader(reader_text, arg)
        if writer >= self.prefix[reader]:
            raise LensError(
                f"{arg}: {name!r} goes backwards or sideways: {self.writers[writer]} writes after "
                f"{self.readers[reader]} reads"
                + (" (with parallel attention a layer's MLP does not read its own heads)" if self.parallel else "")
                + "; an edge runs from an earlier writer to a later reader: reverse it or remove it."
            )
        return writer, reader, position

    def _check(self, layer: int, head: int | None, n: int, arg: str, name: str, what: str = "head") -> None:
        if not 0 <= layer < self.n_layers:
            raise LensError(f"{arg}: {name!r}: layer {layer} does not exist: use 0 to {self.n_layers - 1}.")
        if head is not None and not 0 <= head < n:
            raise LensError(f"{arg}: {name!r}: {what} {head} does not exist: use 0 to {n - 1}.")
