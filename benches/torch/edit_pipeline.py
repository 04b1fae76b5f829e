"""diffusers 0.42.1 QwenImageEditPlusPipeline end to end at full size with random weights (GPU).

Same work as `qie bench edit`: real-size DiT (60 layers), Qwen2.5-VL-7B and VAE with random bf16
weights, the tokenizer/processor of a given model folder, one input image, true CFG.

    python benches/torch/edit_pipeline.py --tokenizer-from tests/fixtures/edit/plus/model --size 1024 --steps 40
"""
import argparse
import json
import os
import time
from collections import defaultdict

import numpy as np
import torch
from PIL import Image


def qwen25vl_7b_config(tokenizer_dir):
    from transformers import Qwen2_5_VLConfig
    added = json.load(open(os.path.join(tokenizer_dir, "tokenizer_config.json"))).get("added_tokens_decoder", {})
    ids = {v["content"]: int(k) for k, v in added.items()}
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6, max_position_embeddings=128000,
                         rope_theta=1000000.0, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
                         torch_dtype="bfloat16"),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_chans=3,
                           out_hidden_size=3584, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=112, fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu"),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids.get("<|video_pad|>", 0),
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokenizer-from", required=True, help="model folder with tokenizer/, processor/, scheduler/")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--runs", type=int, default=1)
    a = p.parse_args()
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline,
                           QwenImageTransformer2DModel)
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration, Qwen2VLProcessor

    dev, dtype = "cuda", torch.bfloat16
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    with torch.device(dev):
        transformer = QwenImageTransformer2DModel(num_layers=60, zero_cond_t=True)
        vae = AutoencoderKLQwenImage()
        text_encoder = Qwen2_5_VLForConditionalGeneration(qwen25vl_7b_config(os.path.join(a.tokenizer_from, "tokenizer")))
    torch.set_default_dtype(torch.float32)
    for m in (transformer, vae, text_encoder):
        m.to(dev, dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(a.tokenizer_from, "tokenizer"))
    processor = Qwen2VLProcessor.from_pretrained(os.path.join(a.tokenizer_from, "processor"))
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(os.path.join(a.tokenizer_from, "scheduler"))
    pipe = QwenImageEditPlusPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                     processor=processor, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)

    times = defaultdict(float)

    def timed(module, name, method="forward"):
        inner = getattr(module, method)

        def wrapper(*args, **kw):
            torch.cuda.synchronize()
            t = time.perf_counter()
            out = inner(*args, **kw)
            torch.cuda.synchronize()
            times[name] += time.perf_counter() - t
            return out
        setattr(module, method, wrapper)

    timed(text_encoder, "text_encoder")
    timed(vae, "vae_encode", "encode")
    timed(vae, "vae_decode", "decode")
    timed(transformer, "dit")

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (a.size, a.size, 3), dtype=np.uint8))
    for run in range(a.runs + 1):
        times.clear()
        torch.cuda.synchronize()
        t = time.perf_counter()
        pipe(image=[image], prompt="把背景换成海边的日落，保持人物不变", negative_prompt=" ",
             true_cfg_scale=a.cfg, num_inference_steps=a.steps, height=a.size, width=a.size,
             generator=torch.Generator(dev).manual_seed(0), output_type="np")
        torch.cuda.synchronize()
        total = time.perf_counter() - t
        label = "warmup" if run == 0 else f"run {run}"
        print(f"diffusers {label}: total {total:.2f} s | " + " | ".join(f"{k} {v:.2f} s" for k, v in times.items())
              + f" | {a.steps} steps, {times['dit'] / a.steps:.3f} s/step")
    print(f"torch {torch.__version__}: peak allocated {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB, "
          f"reserved {torch.cuda.max_memory_reserved() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
