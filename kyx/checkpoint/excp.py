"""ExCP: extreme compression of checkpoint chains of (weights, Adam m, Adam v) (issue 5).

Every checkpoint stores its weight residual against the previous *reconstructed*
checkpoint (so errors do not accumulate), pruned and k-means quantised, together with
the jointly pruned and quantised Adam moments. Host-side numpy; meant to run in one
background thread (an ExcpChain is not thread-safe). Format and costs: docs/excp.md.
"""
from __future__ import annotations

import dataclasses
import os
import struct
import time
from collections.abc import Mapping

import numpy as np

from kyx.checkpoint import excp_store as store
from kyx.checkpoint.excp_optax import (flat_to_tree, flatten_adam, scanned_layers, tree_to_flat,
                                       unflatten_adam)
from kyx.checkpoint.excp_quant import (BITS, Quantized, dequantize, kmeans_1d, pack_indices,
                                       prune_moments, prune_weight_residual, quantize,
                                       unpack_indices)
from kyx.distributed import is_writer
from kyx.errors import CheckpointError, ConfigError
from kyx.fileio import as_path, is_local
from kyx.logs import get_logger

log = get_logger(__name__)

__all__ = ["ExcpOptions", "ExcpChain", "encode_tensor", "decode_group", "prune_weight_residual",
           "prune_moments", "kmeans_1d", "quantize", "dequantize", "pack_indices",
           "unpack_indices", "Quantized", "flatten_adam", "unflatten_adam", "tree_to_flat",
           "flat_to_tree", "scanned_layers"]

GROUPS = ("w", "m", "v")
Flat = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class ExcpOptions:
    """Compression settings; defaults follow the paper (alpha 5e-5, beta 2, 4 bits)."""
    alpha: float = 5e-5        # weight pruning: r_w = min(alpha / sqrt(mean v), 2.5) * median|dW|
    beta: float = 2.0          # moment pruning: keep |m| > beta * mean|m|
    bits: int = 4              # 2^bits - 1 centroids plus an exact-zero code
    prune: bool = True
    quantize: bool = True
    v_space: str = "sqrt"      # k-means space for v, keeps v >= 0: "sqrt" | "log"
    coder: str = "zstd"        # lossless back end: "zstd" | "lzma" | "none"
    level: int | None = None   # coder level; None: zstd 3, lzma 6
    kmeans_iters: int = 300
    # > 0: error-bounded pruning instead of alpha: per tensor, the strongest pruning factor
    # of BOUNDED_FACTORS whose reconstruction keeps ||W - W_hat|| <= max_werr * ||W||
    max_werr: float = 0.0

    def __post_init__(self):
        if self.bits not in BITS:
            raise ConfigError(f"excp bits must be one of {BITS}, got {self.bits}")
        if self.v_space not in ("log", "sqrt"):
            raise ConfigError(f"excp v_space must be 'log' or 'sqrt', got {self.v_space!r}")
        if self.coder not in store.CODERS:
            raise ConfigError(f"excp coder must be one of {store.CODERS}, got {self.coder!r}")
        if self.alpha < 0 or self.beta < 0:
            raise ConfigError(f"excp alpha and beta must be >= 0, got {self.alpha}, {self.beta}")
        if not 0 <= self.max_werr < 1:
            raise ConfigError(f"excp max_werr must be in [0, 1) (0: use alpha), got "
                              f"{self.max_werr}")

    @property
    def lossless(self) -> bool:
        return not (self.prune or self.quantize)


def _add(base: np.ndarray, x: np.ndarray) -> np.ndarray:
    """base + x as a fresh array (also for 0-d tensors, where numpy would return a scalar)."""
    return np.add(base, x, out=np.empty_like(base))


def _raw_group(x: np.ndarray) -> tuple[dict, bytes]:
    return {"mode": "raw", "nnz": int(np.count_nonzero(x))}, store.shuffle32(x)


def _quantized_group(q: Quantized, nnz: int) -> tuple[dict, bytes]:
    cb = q.codebook.astype(np.float16 if q.kind == "kmeans" else np.float32)
    meta = {"mode": "q", "nnz": nnz, "kind": q.kind, "space": q.space, "bits": q.bits,
            "ncb": int(cb.size)}
    raw = (struct.pack("<ff", q.offset, q.scale) + cb.tobytes()
           + pack_indices(q.indices, q.bits).tobytes())
    return meta, raw


def encode_tensor(w: np.ndarray, m: np.ndarray, v: np.ndarray, base: np.ndarray,
                  opts: ExcpOptions) -> tuple[dict, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Compress one tensor against `base`; returns ({group: (meta, raw)}, (w_hat, m_hat, v_hat)).

    The returned reconstruction is computed by the same arithmetic as decode_group, so
    it is bit-identical to what a reader gets back from disk.
    """
    if opts.lossless:  # bitwise XOR against the base: exact, and compresses well
        xor = w.view(np.uint32) ^ base.view(np.uint32)
        groups = {"w": ({"mode": "xor", "nnz": int(np.count_nonzero(xor))}, store.shuffle32(xor)),
                  "m": _raw_group(m), "v": _raw_group(v)}
        return groups, (w.copy(), m.copy(), v.copy())
    dw = w - base
    q_w, factor = None, None
    if opts.prune:
        if opts.max_werr:
            dw, keep, factor, q_w = _bounded_weight_residual(w, dw, v, opts)
        else:
            dw, keep, _ = prune_weight_residual(dw, v, opts.alpha)
        m, v, _ = prune_moments(m, v, opts.beta, keep)
    groups, decoded = {}, []
    for g, x, space in (("w", dw, "linear"), ("m", m, "linear"), ("v", v, opts.v_space)):
        if opts.quantize:
            q = q_w if g == "w" and q_w is not None else quantize(x, opts.bits, space,
                                                                  opts.kmeans_iters)
            groups[g] = _quantized_group(q, int(np.count_nonzero(q.indices)))
            decoded.append(dequantize(q))
        else:
            groups[g] = _raw_group(x)
            decoded.append(x)
    if factor is not None:
        groups["w"][0]["factor"] = factor
    return groups, (_add(base, decoded[0]), decoded[1], decoded[2])


# The error-bounded mode's pruning factors (r_w / median|dw|), strongest first; 0 prunes
# nothing (only quantization error is left).
BOUNDED_FACTORS = (2.5, 2.0, 1.5, 1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.0)


def _bounded_weight_residual(w: np.ndarray, dw: np.ndarray, v: np.ndarray, opts: ExcpOptions):
    """ExCP at a weight-error bound instead of a fixed alpha: alpha / sqrt(mean v) ties the
    pruning strength to the gradient scale, so one alpha prunes too little early in a run
    and may prune too much where the residual is large next to the weight. This takes the
    first factor of BOUNDED_FACTORS whose pruned and quantized residual keeps this
    tensor's ||W - W_hat|| <= max_werr ||W|| (factor 0 if none does); returns (pruned,
    keep_mask, factor, its quantization or None)."""
    bound2 = opts.max_werr ** 2 * float(np.sum(np.square(w, dtype=np.float64)))
    for factor in BOUNDED_FACTORS:
        pruned, keep, _ = prune_weight_residual(dw, v, factor=factor)
        q = quantize(pruned, opts.bits, "linear", opts.kmeans_iters) if opts.quantize else None
        hat = dequantize(q) if q is not None else pruned
        if float(np.sum(np.square(dw - hat, dtype=np.float64))) <= bound2:
            break
    return pruned, keep, factor, q


def decode_group(meta: dict, raw: bytes, shape: tuple, base: np.ndarray | None = None
                 ) -> np.ndarray:
    """Inverse of one encode_tensor group; `base` is added back for weight residuals."""
    numel = int(np.prod(shape))
    mode = meta["mode"]
    if mode in ("xor", "raw"):
        if len(raw) != 4 * numel:
            raise ValueError(f"{len(raw)} bytes for {numel} float32 entries")
        if mode == "xor":
            bits = store.unshuffle32(raw, np.uint32)
            if base is not None:
                bits = bits ^ base.view(np.uint32).reshape(-1)
            return bits.view(np.float32).reshape(shape)
        x = store.unshuffle32(raw, np.float32).reshape(shape)
    elif mode == "q":
        cb_dtype = np.dtype(np.float16 if meta["kind"] == "kmeans" else np.float32)
        offset, scale = struct.unpack_from("<ff", raw)
        codebook = np.frombuffer(raw, cb_dtype, meta["ncb"], 8)
        packed = np.frombuffer(raw, np.uint8, offset=8 + meta["ncb"] * cb_dtype.itemsize)
        idx = unpack_indices(packed, meta["bits"], numel)
        if idx.size and int(idx.max()) > meta["ncb"]:
            raise ValueError(f"code {int(idx.max())} outside a codebook of {meta['ncb']}")
        x = dequantize(Quantized(meta["kind"], meta["space"], meta["bits"], codebook,
                                 np.float32(offset), np.float32(scale), idx, tuple(shape)))
    else:
        raise ValueError(f"unknown group mode {mode!r}")
    return x if base is None else _add(base, x)


def _as_flat_f32(d: Mapping) -> Flat:
    return {k: np.asarray(x, dtype=np.float32, order="C") for k, x in d.items()}


def _check_same(a: Mapping, b: Mapping, what: str) -> None:
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        diff = sorted(set(a) ^ set(b)) or [k for k in a if a[k].shape != b[k].shape]
        raise CheckpointError(f"ExCP: {what} differ in names or shapes (first: {diff[:5]}); "
                              "a chain needs identical tensors at every step: start a new chain")


class ExcpChain:
    """One directory of ExCP checkpoints: <root>/manifest.json + step_XXXXXXXX.excp files.

    reference (first checkpoint only): 'lossless' stores it exactly (XOR vs zeros + coder);
    'zeros' compresses it like any other step against zeros (pruning then drops small
    weights!); a flat dict (e.g. the initialisation params) is stored exactly once as
    reference.excp and the first step is compressed against it.
    """

    def __init__(self, root: str, options: ExcpOptions | None = None,
                 reference: str | Mapping = "lossless"):
        self.root = str(as_path(root))  # a local path or a storage URL
        self.manifest = store.read_manifest(self.root) or {
            "format": "kyx-excp", "version": store.VERSION, "reference": None, "steps": []}
        self.manifest["version"] = store.VERSION   # rewritten with a digest at the next write
        removed = store.remove_leftovers(self.root) if is_writer() else []
        if removed:
            log.info("ExCP: removed %s left in %s by a killed save", removed, self.root)
        if options is None and self.manifest.get("options"):
            options = ExcpOptions(**self.manifest["options"])
        self.options = options or ExcpOptions()
        if not isinstance(reference, Mapping) and reference not in ("lossless", "zeros"):
            raise ConfigError(f"excp reference must be 'lossless', 'zeros' or a dict of arrays, "
                              f"got {reference!r}")
        self._reference = reference
        self._cache: tuple[int, Flat] | None = None   # newest reconstruction (read-only arrays)
        self._walked: tuple[int, Flat] | None = None  # last reconstruct()ed step (read-only)

    def steps(self) -> list[int]:
        return [e["step"] for e in self.manifest["steps"]]

    def stats(self) -> dict[int, dict]:
        return {e["step"]: e["stats"] for e in self.manifest["steps"]}

    def meta(self, step: int) -> dict:
        """The `meta` dict given to append(step)."""
        for e in self.manifest["steps"]:
            if e["step"] == step:
                return e.get("meta", {})
        raise CheckpointError(f"no ExCP step {step} in {self.root}; available: {self.steps()}")

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def append(self, step: int, params: Mapping, mu: Mapping, nu: Mapping,
               meta: dict | None = None, return_reconstruction: bool = False):
        """Compress one checkpoint against the previous reconstruction; returns its stats.

        `meta` (small, JSON-serialisable, e.g. the Adam count) is kept in the manifest.
        With return_reconstruction, returns (stats, (params_hat, mu_hat, nu_hat)): exactly
        what reconstruct(step) will later read back.
        """
        t0 = time.perf_counter()
        step = int(step)
        w_all, m_all, v_all = _as_flat_f32(params), _as_flat_f32(mu), _as_flat_f32(nu)
        _check_same(w_all, m_all, "params and mu")
        _check_same(w_all, v_all, "params and nu")
        entries = self.manifest["steps"]
        if entries and step <= entries[-1]["step"]:
            raise CheckpointError(f"ExCP step {step} is not after the newest step "
                                  f"{entries[-1]['step']} in {self.root}; call truncate() first")
        opts, parent, base_kind, base = self.options, None, "zeros", None
        if entries:
            parent, base_kind, base = entries[-1]["step"], "parent", self._newest_params()
        elif self._reference == "lossless":
            opts = dataclasses.replace(opts, prune=False, quantize=False)
        elif isinstance(self._reference, Mapping):
            base_kind, base = "reference", _as_flat_f32(self._reference)
        if base is not None:
            _check_same(base, w_all, f"step {step} and its base ({base_kind})")
        if is_local(self.root):
            os.makedirs(self.root, exist_ok=True)
        if base_kind == "reference":
            self._write_reference(base)
        fname = f"step_{step:08d}.excp"
        writer = store.StepWriter(self._path(fname), opts.coder, opts.level)
        acc = {g: {"bytes": 0, "nnz": 0, "err2": 0.0, "ref2": 0.0} for g in GROUPS}
        recon: tuple[Flat, Flat, Flat] = ({}, {}, {})
        tensors, t_encode = [], 0.0
        try:
            for name in sorted(w_all):
                w, m, v = w_all[name], m_all[name], v_all[name]
                b = base[name] if base is not None else np.zeros_like(w)
                t1 = time.perf_counter()
                groups, hats = encode_tensor(w, m, v, b, opts)
                t_encode += time.perf_counter() - t1
                entry = {"name": name, "shape": list(w.shape)}
                for g, x, x_hat, out in zip(GROUPS, (w, m, v), hats, recon):
                    info, raw = groups[g]
                    entry[g] = {**info, **writer.add(raw)}
                    acc[g]["bytes"] += entry[g]["len"]
                    acc[g]["nnz"] += info["nnz"]
                    with np.errstate(invalid="ignore", over="ignore"):  # inf/nan inputs
                        acc[g]["err2"] += float(np.sum(np.square(x - x_hat, dtype=np.float64)))
                        acc[g]["ref2"] += float(np.sum(np.square(x, dtype=np.float64)))
                    out[name] = x_hat
                tensors.append(entry)
            nbytes, footer_hash = writer.finish({"step": step, "parent": parent, "base": base_kind,
                                                 "coder": opts.coder, "tensors": tensors})
        except BaseException:
            writer.abort()
            raise
        numel = sum(w.size for w in w_all.values())
        total_s = time.perf_counter() - t0
        stats = {
            "step": step, "parent": parent, "base": base_kind, "lossless": opts.lossless,
            "bytes": nbytes, "orig_bytes": 12 * numel, "ratio": 12 * numel / max(nbytes, 1),
            "encode_s": t_encode, "total_s": total_s, "mb_per_s": 12 * numel / 1e6 / total_s,
            "groups": {g: {"bytes": a["bytes"], "kept": a["nnz"] / max(numel, 1),
                           "rel_err": (a["err2"] / a["ref2"]) ** 0.5 if a["ref2"] else 0.0}
                       for g, a in acc.items()}}
        entries.append({"step": step, "parent": parent, "file": fname, "bytes": nbytes,
                        "footer_hash": footer_hash, "options": dataclasses.asdict(opts),
                        "stats": stats, "meta": meta or {}})
        self.manifest["options"] = dataclasses.asdict(self.options)
        store.write_manifest(self.root, self.manifest)
        for arr in recon[0].values():
            arr.flags.writeable = False
        self._cache = (step, recon[0])
        return (stats, recon) if return_reconstruction else stats

    def _write_reference(self, ref: Flat) -> None:
        writer = store.StepWriter(self._path("reference.excp"), "zstd", None)
        try:
            tensors = [{"name": k, "shape": list(x.shape),
                        "w": {"mode": "xor", **writer.add(store.shuffle32(x))}}
                       for k, x in sorted(ref.items())]
            nbytes, footer_hash = writer.finish({"step": None, "parent": None, "base": "zeros",
                                                 "coder": "zstd", "tensors": tensors})
        except BaseException:
            writer.abort()
            raise
        self.manifest["reference"] = {"file": "reference.excp", "bytes": nbytes,
                                      "footer_hash": footer_hash}

    def verify_newest(self) -> int | None:
        """Rebuild (and keep) the newest weights, which the next append builds on; raises
        CheckpointError on a damaged link. Returns that step (None for an empty chain)."""
        if not self.manifest["steps"]:
            return None
        self._newest_params()
        return self.manifest["steps"][-1]["step"]

    def _newest_params(self) -> Flat:
        newest = self.manifest["steps"][-1]["step"]
        if self._cache is None or self._cache[0] != newest:
            self._cache = (newest, self.reconstruct(newest, moments=False)[0])
            for arr in self._cache[1].values():
                arr.flags.writeable = False
        return self._cache[1]

    def _read(self, entry: dict | None, label: str, base: Flat | None, weights: bool = True,
              moments: bool = True) -> tuple[Flat, Flat, Flat]:
        """Decode one step (the reference when entry is None); weights are added to `base`."""
        info = entry if entry is not None else self.manifest["reference"]
        if info is None:
            raise CheckpointError(f"ExCP {label}: the chain in {self.root} has no reference file")
        groups = [g for g in GROUPS if (g == "w" and weights) or (g != "w" and moments)]
        out: dict[str, Flat] = {g: {} for g in GROUPS}
        with store.StepReader(self._path(info["file"]), label, info["footer_hash"]) as rd:
            kind = rd.footer.get("base")
            if not weights:
                pass
            elif kind == "reference":
                base = self._read(None, "reference", None, moments=False)[0]
            elif kind == "zeros":
                base = None
            elif kind != "parent" or base is None:
                raise CheckpointError(f"ExCP {label}: cannot resolve its base {kind!r}")
            if base is not None and set(base) != {t["name"] for t in rd.footer["tensors"]}:
                raise CheckpointError(f"ExCP {label}: tensor names differ from its base")
            for t in rd.footer["tensors"]:
                name, shape = t["name"], tuple(t["shape"])
                for g in groups:
                    what = f"tensor {name!r} ({g})"
                    raw = rd.blob(t[g], what)
                    b = None
                    if g == "w":
                        b = base[name] if base is not None else np.zeros(shape, np.float32)
                    try:
                        out[g][name] = decode_group(t[g], raw, shape, b)
                    except (ValueError, KeyError, TypeError, struct.error) as e:
                        raise CheckpointError(f"ExCP {label}, {what}: cannot decode: {e}") from e
        return out["w"], out["m"], out["v"]

    def reconstruct(self, step: int | None = None, moments: bool = True
                    ) -> tuple[Flat, Flat, Flat]:
        """(params, mu, nu) of `step` (default: newest) by walking the chain from its root,
        or from the nearest ancestor this object already rebuilt (the newest step, or the
        step of the previous call).

        Params are read-only arrays shared with the chain's cache: copy to modify.
        """
        entries = {e["step"]: e for e in self.manifest["steps"]}
        if not entries:
            raise CheckpointError(f"no ExCP checkpoints in {self.root}")
        step = max(entries) if step is None else int(step)
        if step not in entries:
            raise CheckpointError(
                f"no ExCP step {step} in {self.root}; available: {sorted(entries)}")
        label = f"step {step}"
        known = {c[0]: c[1] for c in (self._cache, self._walked) if c is not None}
        path, s, w = [], step, None
        while s is not None:
            if s in known:  # an ancestor already rebuilt: walk on from it, not from the root
                w = known[s]
                break
            if s not in entries:
                raise CheckpointError(f"ExCP step {path[-1]['step']} needs step {s}, which is "
                                      f"missing from {self.root} (broken chain)")
            path.append(entries[s])
            s = entries[s]["parent"]
        m, v = {}, {}
        for i, e in enumerate(reversed(path)):
            last = i == len(path) - 1
            w, m, v = self._read(e, f"step {e['step']}", w, moments=moments and last)
        if not path and moments:
            _, m, v = self._read(entries[step], label, None, weights=False)
        for arr in w.values():
            arr.flags.writeable = False
        self._walked = (step, w)  # reading steps in order costs one link each, not the chain
        return w, m, v

    def truncate(self, step: int, write: bool = True) -> list[int]:
        """Drop every step after `step` (e.g. when training resumed from it); returns them.
        With ``write`` False only this object forgets them (a reader of a chain that
        another process writes)."""
        keep = [e for e in self.manifest["steps"] if e["step"] <= step]
        dropped = [e for e in self.manifest["steps"] if e["step"] > step]
        if not dropped:
            return []
        self.manifest["steps"] = keep
        if self._cache is not None and self._cache[0] > step:
            self._cache = None
        if self._walked is not None and self._walked[0] > step:
            self._walked = None
        if not write:
            return [e["step"] for e in dropped]
        store.write_manifest(self.root, self.manifest)
        for e in dropped:
            as_path(self._path(e["file"])).unlink(missing_ok=True)
        return [e["step"] for e in dropped]
