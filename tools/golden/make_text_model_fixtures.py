#!/usr/bin/env python3
"""Golden fixtures for the Qwen2.5-VL language model as Qwen-Image-Edit's text encoder uses it.

Output: tests/fixtures/qwen25vl_text/
  text_encoder/             Qwen2_5_VLForConditionalGeneration.save_pretrained() (tiny random config)
  <case>/inputs.safetensors input_ids i64 [B,S], attention_mask i64 [B,S]; with images also
                            image_embeds f32 [N,hidden] (the vision tower's output the language model
                            consumes) and image_grid_thw i64 [n,3]
  <case>/expected.safetensors
      hidden_states             [B,S,hidden] last hidden state after the final norm, with the
                                multimodal 3-D RoPE (mm_token_type_ids passed, as transformers 4.x did)
      hidden_states_sequential  [B,S,hidden] the exact diffusers 0.42.1 call (no mm_token_type_ids):
                                transformers 5.x then falls back to positions 0..S-1 on every axis
      position_ids              i64 [3,B,S] from get_rope_index (0 at padded positions)
  <case>/meta.json          notes, which tokens to compare (padding side)

Expected outputs come from the full model (pixel_values through the real vision tower) reloaded
with from_pretrained(), so the fixture checks what is on disk. outputs.hidden_states[-1] is asserted
to equal the post-norm last hidden state (what diffusers reads in _get_qwen_prompt_embeds).

Usage: python tools/golden/make_text_model_fixtures.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import transformers
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

EXPECTED_TRANSFORMERS = "5.24.0"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "qwen25vl_text"

IMAGE, VIDEO, VSTART, VEND, PAD = 290, 291, 292, 293, 299
VOCAB = 300

TEXT_CONFIG = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
    max_position_embeddings=1024,
    rope_parameters=dict(rope_type="default", rope_theta=1000000.0, mrope_section=[2, 3, 3]),
    pad_token_id=PAD,
    bos_token_id=PAD,
    eos_token_id=PAD,
)
VISION_CONFIG = dict(
    depth=2,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    out_hidden_size=64,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=56,
    fullatt_block_indexes=[1],
)

# Images (height, width) in pixels: multiples of 28, so the processor keeps them as they are.
IMG_A = (56, 56)  # grid 1x4x4 -> 4 tokens
IMG_B = (56, 84)  # grid 1x4x6 -> 6 tokens


def text(rng, n):
    return rng.integers(0, 280, size=n).tolist()


def image_block(grid_hw):
    n = (grid_hw[0] // 28) * (grid_hw[1] // 28)
    return [VSTART] + [IMAGE] * n + [VEND]


def build_case(name, rng):
    """(rows of token ids, images in order, padding side, notes)."""
    if name == "text_batch2":
        return [text(rng, 10), text(rng, 6)], [], "right", "B=2, text only, second row right-padded (4 pad)."
    if name == "one_image":
        rows = [text(rng, 5) + image_block(IMG_A) + text(rng, 4)]
        return rows, [IMG_A], "right", "B=1, one 56x56 image (grid 1x4x4, 4 tokens) between text."
    if name == "two_images":
        rows = [text(rng, 3) + image_block(IMG_A) + text(rng, 2) + image_block(IMG_B) + text(rng, 4)]
        return rows, [IMG_A, IMG_B], "right", "B=1, two images of different grids (1x4x4, 1x4x6), Plus-style."
    if name == "batch_images_left_pad":
        rows = [text(rng, 2) + image_block(IMG_B) + text(rng, 5), text(rng, 4) + image_block(IMG_A) + text(rng, 1)]
        return rows, [IMG_B, IMG_A], "left", (
            "B=2, one image per row (1x4x6 then 1x4x4), second row LEFT-padded: compare valid tokens only "
            "(fully masked query rows are undefined)."
        )
    raise ValueError(name)


CASES = ["text_batch2", "one_image", "two_images", "batch_images_left_pad"]


def pad_rows(rows, side):
    s = max(len(r) for r in rows)
    ids, mask = [], []
    for r in rows:
        p = s - len(r)
        if side == "right":
            ids.append(r + [PAD] * p)
            mask.append([1] * len(r) + [0] * p)
        else:
            ids.append([PAD] * p + r)
            mask.append([0] * p + [1] * len(r))
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)


def randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    if transformers.__version__ != EXPECTED_TRANSFORMERS:
        print(f"warning: transformers {transformers.__version__}, fixtures were made with {EXPECTED_TRANSFORMERS}")
    torch.manual_seed(0)
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    config = Qwen2_5_VLConfig(
        text_config=TEXT_CONFIG,
        vision_config=VISION_CONFIG,
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=VSTART,
        vision_end_token_id=VEND,
        tie_word_embeddings=False,
    )
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    randomise(model, 4242)
    enc_dir = out / "text_encoder"
    model.save_pretrained(enc_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(enc_dir, attn_implementation="eager").eval()

    processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=28 * 28 * 64)
    rng = np.random.default_rng(7)
    for case in CASES:
        rows, images, side, notes = build_case(case, rng)
        input_ids, attention_mask = pad_rows(rows, side)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        call = dict(input_ids=input_ids, attention_mask=attention_mask)
        if images:
            pixels = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for (h, w) in images]
            proc = processor(images=pixels, return_tensors="pt")
            grid = proc["image_grid_thw"]
            call.update(pixel_values=proc["pixel_values"], image_grid_thw=grid)
            with torch.no_grad():
                feats = model.model.get_image_features(proc["pixel_values"], grid, return_dict=True)
            inputs["image_embeds"] = torch.cat(feats.pooler_output, 0).float().contiguous()
            inputs["image_grid_thw"] = grid.long()
        mm_types = (input_ids == IMAGE).int()
        with torch.no_grad():
            full = model(**call, mm_token_type_ids=mm_types, output_hidden_states=True)
            # Exactly what diffusers 0.42.1 _get_qwen_prompt_embeds passes.
            seq = model(**call, output_hidden_states=True)
            lm = model.model.language_model
            if images:
                pos, _ = model.model.get_rope_index(
                    input_ids, mm_types, image_grid_thw=call["image_grid_thw"], attention_mask=attention_mask
                )
            else:
                pos = torch.arange(input_ids.shape[1]).view(1, 1, -1).expand(3, input_ids.shape[0], -1)
                pos = pos.clone()
            # hidden_states[-1] must be the post-norm last hidden state.
            embeds = model.model.get_input_embeddings()(input_ids)
            if images:
                mask = (input_ids == IMAGE).unsqueeze(-1)
                embeds = embeds.masked_scatter(mask, inputs["image_embeds"])
            direct = lm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=pos).last_hidden_state
            base = model.model(**call, mm_token_type_ids=mm_types, output_hidden_states=True)
        hs = full.hidden_states[-1]
        assert torch.equal(base.hidden_states[-1], base.last_hidden_state), "hidden_states[-1] is not post-norm"
        assert torch.equal(hs, base.last_hidden_state)
        valid = attention_mask.bool()
        assert torch.allclose(direct[valid], hs[valid], atol=1e-6), "language model with explicit positions differs"
        if images:
            # sanity: the sequential fallback really differs for image inputs
            assert not torch.allclose(seq.hidden_states[-1][valid], hs[valid], atol=1e-4)
        expected = {
            "hidden_states": hs.float().contiguous(),
            "hidden_states_sequential": seq.hidden_states[-1].float().contiguous(),
            "position_ids": pos.long().contiguous(),
        }
        d = out / case
        d.mkdir()
        save_file({k: v.contiguous() for k, v in inputs.items()}, str(d / "inputs.safetensors"))
        save_file(expected, str(d / "expected.safetensors"))
        meta = dict(
            padding_side=side,
            compare="valid_tokens" if side == "left" else "all_tokens",
            batch=input_ids.shape[0],
            seq_len=input_ids.shape[1],
            images=[list(g) for g in inputs.get("image_grid_thw", torch.zeros(0, 3)).tolist()],
            notes=notes,
            transformers=transformers.__version__,
        )
        (d / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        print(case, tuple(input_ids.shape), meta["images"])


if __name__ == "__main__":
    main()
