#!/usr/bin/env python3
"""Generate golden fixtures for the Qwen2.5-VL vision tower (transformers 5.24.0
Qwen2_5_VisionTransformerPretrainedModel, i.e. `model.visual` of Qwen2_5_VLForConditionalGeneration).

Output under tests/fixtures/qwen25vl_vision/:

  text_encoder/             Qwen2_5_VLForConditionalGeneration.save_pretrained() of a tiny random model
                            (vision tower + a tiny language model: the real on-disk layout)
  <case>.safetensors        pixel_values [N, 3*2*14*14] and image_grid_thw [images, 3] from the real
                            Qwen2VLImageProcessor (PIL backend), and `image_embeds` [N/4, out_hidden_size]
                            = the tower's pooler_output
  meta.json                 grid_thw per case, image sizes, notes

Every parameter is re-randomised (norm weights around 1, everything else N(0, 0.1^2)) so nothing stays at an
identity/zero initialisation. Expected outputs come from reloading the *saved* model with from_pretrained().

Usage: python tools/golden/make_vision_fixtures.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import transformers
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

EXPECTED_TRANSFORMERS = "5.24.0"

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "qwen25vl_vision"

VISION = dict(
    depth=4,
    hidden_size=32,
    hidden_act="silu",
    intermediate_size=64,
    num_heads=2,
    in_channels=3,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    out_hidden_size=64,
    fullatt_block_indexes=[1, 3],
)

TEXT = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=256,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]},
    tie_word_embeddings=True,
)

# (height, width) in pixels, multiples of 28 so smart_resize keeps them. In merge units (28 px) with
# windows of 4x4 units: 196x140 -> 7x5 units, windows 2x2 with edge windows of 3 rows / 1 column;
# 84x112 -> 3x4 units: the width is a whole window (the reference pads a full empty window, dropped);
# 140x168 -> 5x6 units, windows 2x2.
CASES = {
    "two_images": dict(seed=2001, sizes=[(196, 140), (84, 112)]),
    "single_image": dict(seed=2002, sizes=[(140, 168)]),
}


def randomise(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * 0.1
            if "norm" in name or "ln_q" in name:
                p.copy_(1.0 + noise)
            else:
                p.copy_(noise)


def random_image(rng: np.random.RandomState, h: int, w: int) -> Image.Image:
    return Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if transformers.__version__ != EXPECTED_TRANSFORMERS:
        raise SystemExit(f"transformers {EXPECTED_TRANSFORMERS} expected, found {transformers.__version__}")
    torch.manual_seed(0)
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    config = Qwen2_5_VLConfig(vision_config=VISION, text_config=TEXT)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    randomise(model, seed=1234)
    model.save_pretrained(out / "text_encoder")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(out / "text_encoder", dtype=torch.float32).eval()
    visual = model.model.visual

    processor = Qwen2VLImageProcessorPil()
    meta = {"transformers": transformers.__version__, "cases": {}}
    for case, spec in CASES.items():
        rng = np.random.RandomState(spec["seed"])
        images = [random_image(rng, h, w) for h, w in spec["sizes"]]
        batch = processor(images=images, return_tensors="pt")
        pixel_values = batch["pixel_values"].to(torch.float32).contiguous()
        grid_thw = batch["image_grid_thw"].to(torch.int64).contiguous()
        with torch.no_grad():
            embeds = visual(pixel_values, grid_thw=grid_thw).pooler_output
        save_file(
            {
                "pixel_values": pixel_values,
                "image_grid_thw": grid_thw,
                "image_embeds": embeds.to(torch.float32).contiguous(),
            },
            str(out / f"{case}.safetensors"),
        )
        meta["cases"][case] = {
            "image_sizes": spec["sizes"],
            "grid_thw": grid_thw.tolist(),
            "pixel_values": list(pixel_values.shape),
            "image_embeds": list(embeds.shape),
        }
        print(case, list(pixel_values.shape), grid_thw.tolist(), "->", list(embeds.shape))
    meta["notes"] = (
        "image_embeds = model.model.visual(pixel_values, grid_thw).pooler_output (merger output with the "
        "window permutation undone), f32, default attention implementation."
    )
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
