"""Named activation sites of a kyx decoder: read one, or replace it, in a forward pass.

The decoder scans its layers (one traced body for all of them), so a site inside layer
``i`` cannot be singled out there. ``run`` instead applies the same modules layer by
layer with that layer's slice of the stacked parameters: embed -> Block 0 .. L-1 ->
final norm and head, the same arithmetic as ``Decoder.__call__`` (tested to 1e-5), with
a hook at one site. Used by the sparse-autoencoder harvesting and splicing
(kyx/analysis/sae*.py) and the AND-OR interactions' masked inputs (``embed_edit``).

Sites, named like parameters:

- ``embed``: the token embeddings entering block 0;
- ``blocks.{i}.resid``: the residual stream after block ``i`` (what block ``i+1`` reads);
- ``blocks.{i}.attn_out``: block ``i``'s attention output, before it joins the residual;
- ``blocks.{i}.mlp_out``: block ``i``'s FFN (SwiGLU or MoE) output, likewise.

Inference only: no attention-weight reuse, no router jitter, no KV cache.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from kyx.errors import ConfigError
from kyx.model.config import ModelConfig
from kyx.model.quant import dequantize_params
from kyx.model.transformer import Block, Decoder

KINDS = ("resid", "attn_out", "mlp_out")
# the submodule of a Block whose output a kind names (None: the Block's own output)
_SUBMODULE = {"resid": None, "attn_out": ("attn",), "mlp_out": ("mlp", "moe")}
_PATTERN = re.compile(r"^blocks\.(\d+)\.(\w+)$")

Edit = Callable[[jax.Array], jax.Array]  # act_btd -> act_btd (same shape and dtype)


@dataclasses.dataclass(frozen=True)
class Site:
    """One activation site: ``layer`` -1 is the embeddings (kind ``embed``)."""
    layer: int
    kind: str

    @property
    def name(self) -> str:
        return "embed" if self.kind == "embed" else f"blocks.{self.layer}.{self.kind}"


def parse_site(name: str, cfg: ModelConfig) -> Site:
    """The Site called ``name`` in a model of ``cfg``; ConfigError naming the valid ones."""
    if name == "embed":
        return Site(-1, "embed")
    m = _PATTERN.match(str(name))
    last = cfg.num_layers - 1
    valid = f"embed, blocks.N.{{{','.join(KINDS)}}} with N in 0..{last}"
    if m is None or m.group(2) not in KINDS:
        kind = m.group(2) if m else str(name)
        close = difflib.get_close_matches(kind, KINDS, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"unknown activation site {name!r}{hint}; sites are {valid}")
    layer = int(m.group(1))
    if layer > last:
        raise ConfigError(f"activation site {name!r}: the model has {cfg.num_layers} layers; "
                          f"sites are {valid}")
    return Site(layer, m.group(2))


def site_names(cfg: ModelConfig) -> list[str]:
    """Every site of a model of ``cfg``, in forward order."""
    return ["embed"] + [f"blocks.{i}.{k}" for i in range(cfg.num_layers) for k in KINDS]


def layer_params(cfg: ModelConfig, params: dict, layer: int) -> tuple[dict, bool]:
    """(params of layer ``layer`` alone, whether it is an MoE layer), sliced from the
    decoder's stacked layer parameters (``layers``, ``layers/layer_i`` of a pattern of
    attention kinds, or ``dense_layers`` + ``moe_layers``)."""
    take = lambda tree, i: jax.tree.map(lambda a: a[i], tree)  # noqa: E731
    n = len(cfg.attention_pattern)
    if n > 1:
        s, i = divmod(layer, n)
        return take(params["layers"][f"layer_{i}"], s), False
    if not cfg.is_moe:
        return take(params["layers"], layer), False
    k, n = cfg.moe_first_dense, cfg.moe_every
    if layer < k:
        return take(params["dense_layers"], layer), False
    s, i = divmod(layer - k, n)
    name = "sparse" if i == n - 1 else f"dense_{i}"
    return take(params["moe_layers"][name], s), i == n - 1


def run(module: Decoder, params, tokens_bt: jax.Array, segment_ids_bt: jax.Array | None = None,
        positions_bt: jax.Array | None = None, *, site: Site | None = None,
        edit: Edit | None = None, embed_edit: Edit | None = None
        ) -> tuple[jax.Array, jax.Array | None]:
    """``(logits_btv, act_btd)``: the decoder's logits and the activation at ``site`` (None
    without one). With ``edit``, the site's activation is replaced by ``edit(act_btd)`` for
    the rest of the forward pass (``act_btd`` is the value before the edit);
    ``embed_edit`` likewise rewrites the token embeddings. Pure; jit it with ``site``,
    ``edit`` and ``embed_edit`` static (closures over arrays are fine inside one jit)."""
    cfg = module.cfg
    if edit is not None and site is None:
        raise ValueError("an edit needs a site")
    params = dequantize_params(params.get("params", params))
    if segment_ids_bt is None:
        segment_ids_bt = jnp.ones_like(tokens_bt)
    if positions_bt is None:
        positions_bt = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1]), tokens_bt.shape)
    variables = {"params": params}
    x_btd = module.apply(variables, tokens_bt, method=lambda m, t: m.embed(t))
    if embed_edit is not None:
        x_btd = embed_edit(x_btd)
    act = None
    if site is not None and site.kind == "embed":
        act = x_btd
        x_btd = edit(x_btd) if edit is not None else x_btd
    router_in = x_btd if cfg.is_moe and cfg.moe_router_input == "embedding" else None
    for layer in range(cfg.num_layers):
        p, sparse = layer_params(cfg, params, layer)
        here = site if site is not None and site.layer == layer else None
        x_btd, layer_act = _block(cfg, p, sparse, cfg.layer_kinds[layer], x_btd,
                                  segment_ids_bt, positions_bt, router_in, here, edit)
        act = layer_act if here is not None else act
    logits_btv, _ = module.apply(variables, x_btd, method=lambda m, x: m.unembed(x))
    return logits_btv, act


def _block(cfg, params, sparse, kind, x_btd, segment_ids_bt, positions_bt, router_in, site,
           edit):
    """One Block applied to ``x_btd``; returns (new residual, the site's activation)."""
    block = Block(cfg, sparse=sparse, kind=kind)
    apply = lambda x: block.apply({"params": params}, (x, None), (None, None),  # noqa: E731
                                  segment_ids_bt, positions_bt, router_in)[0][0]
    if site is None:
        return apply(x_btd), None
    if site.kind == "resid":
        out = apply(x_btd)
        return (edit(out) if edit is not None else out), out
    captured = []
    names = _SUBMODULE[site.kind]

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name != "__call__" or context.module.name not in names \
                or context.module.parent is None or context.module.parent.name is not None:
            return out
        # the Block's own submodule (the Block is the unnamed top module here)
        first = out[0] if isinstance(out, tuple) else out
        captured.append(first)
        if edit is None:
            return out
        new = edit(first)
        return (new, *out[1:]) if isinstance(out, tuple) else new

    with nn.intercept_methods(interceptor):
        out = apply(x_btd)
    if len(captured) != 1:
        raise RuntimeError(f"site {site.name}: expected one {names} call, saw {len(captured)}")
    return out, captured[0]
