"""Prefix-aware routing: which worker most likely still holds the start of a request's
prompt in its prefix cache (`rust/batch.rs`), so a chat's next turn goes where its history
is instead of being evaluated again on another worker.

The front cannot count tokens (the tokenizer lives in the workers) and a chat is rendered by
the worker, so the key is text: the request's prompt as a string (`prompt_text`), hashed at
its first 64, 128, 256, ... characters (`prefix_keys`). A request's keys are remembered as
served by the worker it went to; the next request takes the worker of its longest
remembered key that has a free slot. Keys shorter than `MIN_CHARS` are not kept: a few
characters (a chat's "user" header) are shared by every request and say nothing about
where a useful cache is. The map is LRU, at most `MAX_KEYS` keys, and a worker's keys are
forgotten when its process is replaced (its caches are gone).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Optional, Sequence

#: The shortest prefix worth routing on, in characters (~16 tokens of English).
MIN_CHARS = 64
#: How many more sequences than the least busy worker the worker holding a request's prompt
#: start may be running and still get it (a cached start saves a prefill; a pile of requests
#: sharing one system prompt on one worker would leave the others' cores idle).
ROUTE_SLACK = 2
#: Keys kept over all workers: about 10 (lengths) per conversation, so ~400 conversations.
MAX_KEYS = 4096


def prompt_text(prompt: Any = None, messages: Optional[Sequence[dict]] = None) -> str:
    """The text whose start says which cache a request can reuse. A chat's messages each
    as role and content between separators, so a chat's next turn (its messages so far,
    the reply, a new message) starts with the previous turn's text; token ids as numbers,
    each ended by a comma, so a longer prompt with the same first ids starts the same."""
    if messages is not None:
        return "m" + "".join(f"\x1e{m.get('role', '')}\x1f{m.get('content') or ''}" for m in messages)
    if isinstance(prompt, str):
        return "t" + prompt
    if prompt is None:
        return ""
    return "i" + "".join(f"{int(t)}," for t in prompt)


def prefix_keys(text: str) -> list[bytes]:
    """Hashes of the text's first MIN_CHARS, 2 x MIN_CHARS, 4 x ... characters (while it
    has that many), shortest first. One pass over the text."""
    h = hashlib.blake2b(digest_size=8)
    keys, done, length = [], 0, MIN_CHARS
    while length <= len(text):
        h.update(text[done:length].encode("utf-8", "surrogatepass"))
        keys.append(h.copy().digest())
        done, length = length, length * 2
    return keys


class PrefixRouter:
    """Recent prefix keys -> the worker (index, incarnation) that last served them."""

    def __init__(self, max_keys: int = MAX_KEYS):
        self.max_keys = max_keys
        self._owner: OrderedDict[bytes, tuple[int, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._owner)

    def candidates(self, keys: Sequence[bytes]) -> list[tuple[int, int]]:
        """The (worker, incarnation) of each remembered key, longest key first, each worker
        once: the order in which workers are likely to hold the longest prefix."""
        out: list[tuple[int, int]] = []
        for k in reversed(keys):
            owner = self._owner.get(k)
            if owner is not None and owner not in out:
                out.append(owner)
        return out

    def remember(self, keys: Sequence[bytes], worker: int, incarnation: int) -> None:
        for k in keys:
            self._owner[k] = (worker, incarnation)
            self._owner.move_to_end(k)
        while len(self._owner) > self.max_keys:
            self._owner.popitem(last=False)

    def forget(self, worker: int) -> None:
        """The worker's process was replaced: none of its caches are left."""
        for k in [k for k, (w, _) in self._owner.items() if w == worker]:
            del self._owner[k]
