"""diffusers 0.42.1 QwenImageTransformer2DModel forward timing on the same inputs as qie's benchmarks.

CPU (compare with `cargo bench -p qie-benches --bench dit_layer_cpu`):
    python benches/torch/dit.py --device cpu --layers 1 --img 64 --txt 256 --threads 2
GPU (compare with `qie bench dit`):
    python benches/torch/dit.py --device cuda --layers 60 --img 64 --refs 1 --dtype bf16 [--compile]
"""
import argparse
import statistics
import time

import torch
from diffusers import QwenImageTransformer2DModel


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--img", type=int, default=64, help="image side in patches: 64 for 1024 px, 32 for 512 px (VAE 8x, patch 2x2)")
    p.add_argument("--refs", type=int, default=0, help="reference images of the same size")
    p.add_argument("--txt", type=int, default=256)
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile with compile_repeated_blocks")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = torch.float32 if a.dtype == "f32" else torch.bfloat16
    torch.manual_seed(0)
    # Build directly on the device in the target dtype: 60 layers in f32 on the host would need 80 GB.
    torch.set_default_dtype(dtype)
    with torch.device(a.device):
        model = QwenImageTransformer2DModel(num_layers=a.layers)
    torch.set_default_dtype(torch.float32)
    model = model.to(device=a.device, dtype=dtype).eval()
    if a.compile:
        model.compile_repeated_blocks(fullgraph=True)
    n_img = 1 + a.refs
    s_img = n_img * a.img * a.img
    hs = torch.randn(1, s_img, 64, device=a.device, dtype=dtype)
    ehs = torch.randn(1, a.txt, 3584, device=a.device, dtype=dtype)
    mask = torch.ones(1, a.txt, dtype=torch.long, device=a.device)
    t = torch.tensor([0.7], device=a.device, dtype=dtype)
    shapes = [[(1, a.img, a.img)] * n_img]

    def run():
        with torch.no_grad():
            model(hidden_states=hs, encoder_hidden_states=ehs, encoder_hidden_states_mask=mask,
                  timestep=t, img_shapes=shapes, return_dict=False)
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()

    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    times = []
    for _ in range(a.runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    print(f"torch {torch.__version__} {a.device} {a.dtype} layers={a.layers} img={s_img} txt={a.txt} threads={torch.get_num_threads()}"
          f" compile={a.compile}: first {first:.2f} s, median {statistics.median(times):.3f} s, runs {[round(x, 3) for x in times]}")
    if a.device.startswith("cuda"):
        print(f"  peak allocated {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB, reserved {torch.cuda.max_memory_reserved() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
