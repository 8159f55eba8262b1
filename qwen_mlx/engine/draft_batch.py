"""A draft model proposing for several sequences at once: one draft forward per column.

Alone, a draft makes its N proposals with N one-row forwards; four speculating sequences
would read the draft's weights 4N times a step. Batched, every row is fed one token per
forward: first the tokens of its context the draft's cache lacks (usually one or two: the
model's own token of the last step, and a kept proposal the draft never saw), then its own
proposals, each drawn from the row the previous column computed. A row with fewer tokens
to catch up starts proposing sooner and makes a few proposals more than it may use (taken
greedily, so its sampling key is drawn exactly as alone: a seeded reply stays the same);
those are trimmed with the rejected ones. Every row is fed the same number of tokens, so
the batched cache never holds padding between a row's tokens; what each row keeps after
the model's check is the part of what it was fed that the context now starts with, and
:class:`~qwen_mlx.engine.ragged.RaggedRows` keeps that ragged count per row.
"""

from __future__ import annotations

import mlx.core as mx

from ..models import mlx_lm_seam as seam
from .prompt_cache import common_prefix
from .ragged import RaggedRows
from .speculative import Speculation, Speculator


class DraftBatch:
    """The rows of one draft network (its sequences by id). One engine thread owns it."""

    def __init__(self, net, stream) -> None:
        self.net = net
        self.stream = stream
        self.rows = RaggedRows()
        self.held: dict[int, int] = {}  # context tokens each row's cache holds
        self.fed: dict[int, list[int]] = {}  # what the last step fed each row
        self.forwards = 0  # the draft's forwards, all rows together

    def __len__(self) -> int:
        return len(self.rows)

    def join(self, uid: int, speculation: Speculation) -> None:
        """A sequence whose draft cache holds its prompt but the last token (moved in)."""
        cache = speculation.draft_cache
        self.held[uid] = cache.offset
        self.rows.join(uid, cache.layers)
        cache.layers = None  # the batch holds them now

    def leave(self, ended: dict[int, tuple[Speculation, list[int]]]) -> None:
        """Hand these sequences' draft caches back (with the tokens they hold, from each
        one's context)."""
        layers = self.rows.leave(set(ended))
        for uid, (speculation, context) in ended.items():
            cache = speculation.draft_cache
            cache.layers = layers[uid]
            cache.tokens = context[:cache.offset]
            del self.held[uid]
            self.fed.pop(uid, None)

    def propose(self, speculators: dict[int, Speculator]) -> None:
        """Every row's proposals for this step, into its speculator (``proposals``, and
        ``q``, the draft's distributions, when it samples)."""
        ids = self.rows.ids
        rows = [speculators[uid] for uid in ids]
        behind = [s.context[self.held[uid]:] for uid, s in zip(ids, rows)]
        rooms = [s.room for s in rows]
        width = max(len(b) + k - 1 for b, k in zip(behind, rooms))
        made = [[] for _ in ids]
        drawn = [[] for _ in ids]
        fed = [[] for _ in ids]
        with seam.on(self.stream):
            for column in range(width):
                tokens = [b[column] if column < len(b) else m[-1] for b, m in zip(behind, made)]
                logits = self.net(mx.array(tokens)[:, None], cache=self.rows.layers)[:, -1]
                best = mx.argmax(logits, axis=-1).tolist()
                for i, s in enumerate(rows):
                    fed[i].append(tokens[i])
                    if column < len(behind[i]) - 1:
                        continue  # still catching up
                    if s.distribution is None or len(made[i]) >= rooms[i]:
                        made[i].append(best[i])  # greedy, or a spare never used
                        continue
                    q = s.distribution(logits[i:i + 1])
                    drawn[i].append(q)
                    made[i].append(mx.random.categorical(mx.log(q), key=s.draw()).item())
        self.forwards += width
        for i, s in enumerate(rows):
            s.proposals = made[i][:rooms[i]]
            s.q = mx.concatenate(drawn[i], axis=0) if drawn[i] else None
        self.fed = dict(zip(ids, fed))

    def settle(self, speculators: dict[int, Speculator]) -> None:
        """After the model's check: each row keeps what it was fed that the context (now
        with the step's tokens) goes on with."""
        ids = self.rows.ids
        width = len(self.fed[ids[0]]) if ids else 0
        if not width:
            return
        keep = []
        for uid in ids:
            ahead = speculators[uid].context[self.held[uid]:]
            # never the context's last token (a spare may equal it): the next step feeds
            # it, for the row its first proposal comes from
            keep.append(min(common_prefix(self.fed[uid], ahead), len(ahead) - 1))
        for uid, n in zip(ids, self.rows.trim(width, keep)):
            self.held[uid] += n
