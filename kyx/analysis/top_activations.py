"""The contexts that most activate chosen features (e.g. SAE latents) of a model's site.

Streams a model's batches once: at every non-padding token, the features are a function
of the site's activation (``features(act_nd) -> f_nl``, jit-compatible); for each
requested latent the ``top`` largest values seen so far are kept with their token
window, so memory is ``latents x top`` contexts whatever the data size.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from kyx.analysis import sites


@dataclasses.dataclass
class Context:
    value: float
    before: str      # text of up to ``context`` tokens of the same document before
    token: str       # the activating token's text
    after: str       # text of up to ``after`` tokens after it

    def render(self, mark: str = "«»") -> str:
        return (self.before + mark[0] + self.token + mark[1] + self.after).replace("\n", "⏎")


def top_activations(loaded, site: str, features, latents, batches, *, top: int = 10,
                    num_batches: int = 20, context: int = 16, after: int = 4
                    ) -> dict[int, list[Context]]:
    """Latent -> its ``top`` contexts over ``num_batches`` of ``batches`` (numpy dicts with
    tokens / segment_ids / positions), highest first. ``features`` maps act_nd [n, d] to
    f_nl [n, L]; ``latents`` are column indices of f."""
    where = sites.parse_site(site, loaded.model.cfg)
    cols = jnp.asarray(list(latents), jnp.int32)

    @jax.jit
    def values(tokens_bt, segment_ids_bt, positions_bt):
        _, act_btd = sites.run(loaded.model, loaded.params, tokens_bt, segment_ids_bt,
                               positions_bt, site=where)
        b, t, d = act_btd.shape
        f_btk = features(act_btd.reshape(b * t, d))[:, cols].reshape(b, t, -1)
        return jnp.where((segment_ids_bt > 0)[..., None], f_btk, -jnp.inf)

    best = {int(lat): [] for lat in latents}  # latent -> [(value, tokens, segments, b, t)]
    for i, batch in zip(range(num_batches), batches):
        f_btk = np.asarray(values(batch["tokens"], batch["segment_ids"], batch["positions"]))
        b, t, k = f_btk.shape
        flat_nk = f_btk.reshape(b * t, k)
        n = min(top, b * t)
        idx_nk = np.argpartition(-flat_nk, n - 1, axis=0)[:n]
        for j, lat in enumerate(best):
            for pos in idx_nk[:, j]:
                value = float(flat_nk[pos, j])
                if np.isfinite(value):
                    row, col = divmod(int(pos), t)
                    best[lat].append((value, batch["tokens"][row].copy(),
                                      batch["segment_ids"][row].copy(), col))
            best[lat] = sorted(best[lat], key=lambda e: -e[0])[:top]
    tok = loaded.tokenizer
    return {lat: [_context(tok, *entry, context, after) for entry in entries]
            for lat, entries in best.items()}


def _context(tokenizer, value, tokens, seg, col, context, after) -> Context:
    """The window around ``col`` inside its document, split as before / token / after by
    decoding growing prefixes (pieces decoded alone lose their leading spaces)."""
    same = seg == seg[col]
    lo = col
    while lo > 0 and col - lo < context and same[lo - 1]:
        lo -= 1
    hi = col + 1
    while hi < len(tokens) and hi - col <= after and same[hi]:
        hi += 1
    decode = lambda ids: tokenizer.decode([int(x) for x in ids])  # noqa: E731
    before, upto, whole = decode(tokens[lo:col]), decode(tokens[lo:col + 1]), decode(tokens[lo:hi])
    if upto.startswith(before) and whole.startswith(upto):
        return Context(value, before, upto[len(before):], whole[len(upto):])
    return Context(value, before, decode(tokens[col:col + 1]), decode(tokens[col + 1:hi]))
