"""diffusers + peft LoRA training step of QwenImageTransformer2DModel (random bf16 weights), the
counterpart of `qie bench train`: forward, flow-matching MSE over the target tokens, backward,
global-norm clipping and a fused AdamW step on the f32 LoRA weights.

    python benches/torch/train_lora.py --layers 60 --img 64 --refs 1 --rank 32 [--checkpointing]
(--img 64 is 1024 px, 32 is 512 px.) Prints the median step time and the peak CUDA memory.
"""
import argparse
import statistics
import time

import torch
from diffusers import QwenImageTransformer2DModel
from peft import LoraConfig

TARGETS = ["to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0",
           "to_add_out", "img_mlp.net.2", "img_mod.1", "txt_mlp.net.2", "txt_mod.1"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=60)
    p.add_argument("--img", type=int, default=64)
    p.add_argument("--refs", type=int, default=1)
    p.add_argument("--txt", type=int, default=256)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--checkpointing", action="store_true")
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = QwenImageTransformer2DModel(num_layers=a.layers)
    torch.set_default_dtype(torch.float32)
    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=a.rank, lora_alpha=a.rank, init_lora_weights="gaussian",
                                 target_modules=TARGETS))
    for n, prm in model.named_parameters():
        if "lora_" in n:
            prm.data = prm.data.float()  # f32 master weights, as qie keeps them
    if a.checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    lora = [prm for n, prm in model.named_parameters() if "lora_" in n]
    opt = torch.optim.AdamW(lora, lr=1e-4, weight_decay=0.01, fused=True)
    n_img = 1 + a.refs
    tgt = a.img * a.img
    hs = torch.randn(1, n_img * tgt, 64, device="cuda", dtype=torch.bfloat16)
    ehs = torch.randn(1, a.txt, 3584, device="cuda", dtype=torch.bfloat16)
    mask = torch.ones(1, a.txt, dtype=torch.long, device="cuda")
    t = torch.tensor([0.7], device="cuda", dtype=torch.bfloat16)
    target = torch.randn(1, tgt, 64, device="cuda", dtype=torch.float32)
    shapes = [[(1, a.img, a.img)] * n_img]

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(hidden_states=hs, encoder_hidden_states=ehs, encoder_hidden_states_mask=mask,
                        timestep=t, img_shapes=shapes, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(out[:, :tgt].float(), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()

    step()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(a.runs):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"torch train_lora: {a.layers} layers, img {a.img}x{a.img} + {a.refs} ref, txt {a.txt}, rank {a.rank}, "
          f"checkpointing {a.checkpointing}: median {statistics.median(times):.4f} s, min {min(times):.4f} s, "
          f"peak {peak:.1f} GiB")


if __name__ == "__main__":
    main()
