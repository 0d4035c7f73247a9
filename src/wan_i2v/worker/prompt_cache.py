"""A bounded cache of text embeddings: the same text is encoded once per worker.

The default negative prompt is the same in almost every job and bulk runs repeat prompts; each
UMT5-XXL encode costs a forward of a 5.7B model (and, in memory-short plans, moving it to the GPU).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch


class PromptCache:
    """Least-recently-used embeddings keyed by text; `entries=0` turns the cache off."""

    def __init__(self, entries: int):
        self.entries = entries
        self._store: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def get(self, text: str, encode: Callable[[list[str]], list[torch.Tensor]]) -> tuple[torch.Tensor, bool]:
        """The embedding of `text` and whether it came from the cache."""
        found = self.lookup(text)
        if found is not None:
            return found, True
        (embedding,) = encode([text])
        self.put(text, embedding)
        return embedding, False

    def lookup(self, text: str) -> torch.Tensor | None:
        embedding = self._store.get(text)
        if embedding is None:
            self.misses += 1
            return None
        self._store.move_to_end(text)
        self.hits += 1
        return embedding

    def put(self, text: str, embedding: torch.Tensor) -> None:
        if self.entries <= 0:
            return
        self._store[text] = embedding.detach()
        self._store.move_to_end(text)
        while len(self._store) > self.entries:
            self._store.popitem(last=False)

    def clear(self) -> None:
        self._store.clear()
