"""PyTorch baselines for the CUDA microbenchmarks (runtime/examples/cuda_bench.rs).

Same shapes, same card: attention at the Qwen-Image DiT's length (B=1, N=8448, 24 heads x 128,
bf16) through scaled_dot_product_attention with each backend, and the linear-layer GEMMs
(x @ W^T, W in nn.Linear layout). CUDA events, warm-up, median of --iters runs, random data.

    python3 benches/torch/attention.py [--iters 30] [--json out.json]
"""

import argparse
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def bench(fn, iters, warmup=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    pairs = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        pairs.append((s, e))
    torch.cuda.synchronize()
    ms = sorted(s.elapsed_time(e) for s, e in pairs)
    return ms[len(ms) // 2], ms[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    print(f"device: {props.name}  SMs {props.multi_processor_count}  torch {torch.__version__}  "
          f"cuda {torch.version.cuda}  cudnn {torch.backends.cudnn.version()}")
    print(f"median of {args.iters} runs after 5 warm-up runs, CUDA events, random bf16 data")
    results = []

    def report(name, flops, t):
        med, mn = t
        print(f"{name:<58} {med:8.3f} ms  {flops / med / 1e9:7.1f} TFLOP/s  "
              f"(min {mn:.3f} ms, {flops / mn / 1e9:.1f} TFLOP/s)")
        results.append({"name": name, "median_ms": med, "min_ms": mn,
                        "tflops": flops / med / 1e9})

    bf = torch.bfloat16
    x = torch.randn(8448, 3072, device=dev, dtype=bf)
    w1 = torch.randn(3072, 3072, device=dev, dtype=bf) * 0.02
    w2 = torch.randn(12288, 3072, device=dev, dtype=bf) * 0.02
    b2 = torch.randn(12288, device=dev, dtype=bf) * 0.1
    h = torch.randn(8192, 12288, device=dev, dtype=bf)
    gemms = [
        ("torch linear [8448,3072] x [3072,3072]^T", lambda: F.linear(x, w1), 2 * 8448 * 3072 * 3072),
        ("torch matmul [8448,3072] x [3072,3072]", lambda: torch.matmul(x, w1), 2 * 8448 * 3072 * 3072),
        ("torch linear [8192,3072] x [3072,12288]^T", lambda: F.linear(x[:8192], w2), 2 * 8192 * 3072 * 12288),
        ("torch gelu_tanh(linear + bias) [8192,3072]x[3072,12288]^T",
         lambda: F.gelu(F.linear(x[:8192], w2, b2), approximate="tanh"), 2 * 8192 * 3072 * 12288),
        ("torch linear [8192,12288] x [12288,3072]^T", lambda: F.linear(h, w2.t()), 2 * 8192 * 3072 * 12288),
    ]
    with torch.no_grad():
        for name, fn, flops in gemms:
            report(name, flops, bench(fn, args.iters))

        b, n, heads, d = 1, 8448, 24, 128
        # [B, S, H, D] storage viewed as [B, H, S, D], as diffusers does.
        q, k, v = (torch.randn(b, n, heads, d, device=dev, dtype=bf).transpose(1, 2) for _ in range(3))
        flops = 4 * b * heads * n * n * d
        keep = torch.ones(b, n, dtype=torch.bool, device=dev)
        keep[:, 236:256] = False  # 20 padded text tokens, as in cuda_bench
        mask = keep[:, None, None, :]
        for backend, label in [(SDPBackend.FLASH_ATTENTION, "flash"),
                               (SDPBackend.CUDNN_ATTENTION, "cudnn"),
                               (SDPBackend.EFFICIENT_ATTENTION, "efficient")]:
            for masked in (False, True):
                name = f"torch sdpa {label} B1 N8448 H24 D128" + (" (mask)" if masked else "")
                try:
                    with sdpa_kernel([backend]):
                        fn = (lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)) if masked \
                            else (lambda: F.scaled_dot_product_attention(q, k, v))
                        report(name, flops, bench(fn, args.iters))
                except RuntimeError as e:
                    print(f"{name:<58} unavailable: {str(e).splitlines()[0][:80]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": props.name, "torch": torch.__version__, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
