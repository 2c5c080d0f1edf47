"""The peer measurement: a Hugging Face transformers Llama training step on torch (CPU).

Builds ``LlamaForCausalLM`` with the dims of a kyx preset (the config.json kyx exports for
it, kyx/interop/hf_layouts.py: same d_model, layers, GQA heads, SwiGLU width, vocab,
untied head, float32), random weights and a random full-length batch, and times the
whole training step (forward, causal-LM loss, backward, AdamW with weight decay 0.1,
zero_grad) with torch's default intra-op threads. Prints one JSON line per size:
median step time, tokens/s, threads, torch version. Compare with
``benchmarks/train_throughput.py`` (kyx's full step, data included) run on the same
machine, one after the other (docs/benchmarks.md).

The ratio depends on the CPU as much as on either step: torch's matmuls go through MKL,
XLA's through its own kernels, and their speeds differ by machine (on an AMD EPYC torch's
f32 matmul reached half of XLA's, on an Intel Xeon more than XLA's). The last JSON line
(``matmul_peak``) gives both f32 matmul peaks of this machine, so a ratio can be read
against them.

    python benchmarks/peer_torch.py [--sizes small] [--steps 6]

Needs the [test] extra (torch, transformers).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kyx import config as config_lib  # noqa: E402
from kyx.interop.hf_layouts import hf_config_from_model  # noqa: E402
from kyx.model import ModelConfig  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def torch_step_time(size: str, steps: int) -> dict:
    import numpy as np
    import torch
    import transformers

    cfg = config_lib.load(os.path.join(CONFIGS, f"pretrain.py:{size}"), [])
    mcfg = ModelConfig.from_config(cfg.model)
    hf = hf_config_from_model(mcfg, "llama")
    hf = transformers.LlamaConfig(**{k: v for k, v in hf.items()
                                     if k not in ("architectures", "model_type", "torch_dtype")})
    hf._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(hf).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    b, t = cfg.data.batch_size, cfg.data.seq_len
    tokens = torch.randint(0, mcfg.vocab_size, (b, t))

    def step():
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach().item()

    step()   # warm-up (allocations, sdpa kernel choice)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    return {"bench": "peer_torch", "size": size, "batch": b, "seq_len": t,
            "params": sum(p.numel() for p in model.parameters()),
            "step_time_s": median, "tokens_per_s": b * t / median,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "attention": "sdpa"}


def matmul_peaks(n: int = 2048, repeats: int = 5, iters: int = 4) -> dict:
    """f32 (n x n) @ (n x n) FLOP/s of torch (its default threads) and of XLA (this
    process's JAX CPU device), best of ``repeats`` bursts of ``iters`` matmuls each."""
    import torch

    from kyx.telemetry.flops import matmul_peak_flops

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            a @ b
        best = min(best, (time.perf_counter() - start) / iters)
    return {"bench": "matmul_peak", "n": n, "torch_flops": 2 * n ** 3 / best,
            "xla_flops": matmul_peak_flops(n, repeats=repeats, iters=iters),
            "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/peer_torch.py")
    parser.add_argument("--sizes", default="small")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--matmul-n", type=int, default=2048, help="matmul_peak size")
    args = parser.parse_args(argv)
    for size in args.sizes.split(","):
        print(json.dumps(torch_step_time(size, args.steps)), flush=True)
    print(json.dumps(matmul_peaks(args.matmul_n)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
