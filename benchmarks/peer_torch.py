"""The peer measurement: a Hugging Face transformers Llama training step on torch (CPU).

Builds ``LlamaForCausalLM`` with the dims of a kyx preset (the config.json kyx exports for
it, kyx/interop/hf_layouts.py: same d_model, layers, GQA heads, SwiGLU width, vocab,
untied head, float32), random weights and a random full-length batch, and times the
whole training step (forward, causal-LM loss, backward, AdamW with weight decay 0.1,
zero_grad) with torch's default intra-op threads. Prints one JSON line per size:
median step time, tokens/s, threads, torch version. Compare with
``benchmarks/train_throughput.py`` (kyx's full step, data included) run on the same
machine, one after the other (docs/benchmarks.md).

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/peer_torch.py")
    parser.add_argument("--sizes", default="small")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args(argv)
    for size in args.sizes.split(","):
        print(json.dumps(torch_step_time(size, args.steps)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
