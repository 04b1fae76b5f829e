#!/usr/bin/env python3
"""Golden fixtures for `qie eval`'s `dreamsim` metric and the torch checkpoint reader.

Writes tests/fixtures/dreamsim/:
  models/    a DreamSim ensemble cache folder as `dreamsim(cache_dir=...)` leaves it, with tiny
             random towers (width 128, 2 heads of 64 as ViT-B's 768 / 12, 224 input, patch 16):
             checkpoints/dino_vitbase16_pretrain.pth  the DINO backbone torch.hub fetches (12 blocks,
                        mlp ratio 1, stored in float16)
             dino_vitb16_pretrain.pth                  the DINO training checkpoint DreamSim opens
                        for its (unused) projection head: a small `student` head
             clip_vitb16_pretrain.pth.tar, open_clip_vitb16_pretrain.pth.tar
                        {'state_dict': CLIP / OpenCLIP ViT-B/16 in DINO's layout (ln_pre as pos_drop)
                        + 'proj' [128, 64]}, 2 blocks, float32
             ensemble_lora/  a peft LoRA (r 4, alpha 8, target `qkv`) with random A and B,
                        written by peft's save_pretrained
  expected.safetensors
             over the (gt, pred) pairs of tests/fixtures/eval whose prediction exists:
             `dreamsim.pixels` [2, 3, 224, 224] (the first pair preprocessed: Resize((224, 224),
             BICUBIC), ToTensor), `dreamsim.embeds` [2 N, 256] (PerceptualModel.embed: the
             normalised concatenation) and `dreamsim.distance` [N] (the model's output)

Writes tests/fixtures/torch_file/: `values.pth` (torch.save of a nested dict: float32 / float16 /
bfloat16 / float64 / int64 tensors, a transposed view, two views of one storage, an OrderedDict
state dict with _metadata, an argparse.Namespace and plain values) and `expected.safetensors`
(every tensor contiguous, as float32, named by its path joined with '/').

The reference is the dreamsim package itself (dreamsim.dreamsim with pretrained=True, CPU) with
three things patched so that it builds tiny towers offline: torch.hub.load returns DINO's
vit_base layout at the tiny width loaded from checkpoints/ (what the hub entry point does), and
vit_base in the CLIP / OpenCLIP loaders is the tiny width. Needs requirements.txt plus
dreamsim==0.2.1 and open_clip_torch (imported by dreamsim).
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
from functools import partial
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

from make_eval_model_fixtures import pairs  # the same (gt, pred) pairs, in the same order

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT = REPO_ROOT / "tests" / "fixtures" / "dreamsim"
MODELS = OUT / "models"
TORCH_FILE = REPO_ROOT / "tests" / "fixtures" / "torch_file"
IMAGES = REPO_ROOT / "tests" / "fixtures" / "eval"

WIDTH, HEADS, PROJ = 128, 2, 64


def tiny_vit(depth: int, mlp_ratio: float, patch_size: int = 16):
    from dreamsim.feature_extraction.vision_transformer import VisionTransformer
    return VisionTransformer(patch_size=patch_size, embed_dim=WIDTH, depth=depth, num_heads=HEADS,
                             mlp_ratio=mlp_ratio, qkv_bias=True,
                             norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))


def randomise(module: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight") and "norm" in name or name.startswith("pos_drop.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))


def write_models(gen: torch.Generator) -> None:
    shutil.rmtree(MODELS, ignore_errors=True)
    (MODELS / "checkpoints").mkdir(parents=True)
    dino = tiny_vit(12, 1.0)
    randomise(dino, gen)
    torch.save({k: v.half() for k, v in dino.state_dict().items()},
               MODELS / "checkpoints" / "dino_vitbase16_pretrain.pth")
    head = {f"module.head.{k}": 0.05 * torch.randn(s, generator=gen) for k, s in [
        ("mlp.0.weight", (8, WIDTH)), ("mlp.0.bias", (8,)), ("mlp.2.weight", (8, 8)),
        ("mlp.2.bias", (8,)), ("mlp.4.weight", (4, 8)), ("mlp.4.bias", (4,)),
        ("last_layer.weight", (16, 4))]}
    torch.save({"student": head}, MODELS / "dino_vitb16_pretrain.pth")
    for name in ["clip_vitb16", "open_clip_vitb16"]:
        vit = tiny_vit(2, 4.0)
        vit.pos_drop = torch.nn.LayerNorm(WIDTH)
        randomise(vit, gen)
        sd = dict(vit.state_dict())
        sd["proj"] = 0.1 * torch.randn(WIDTH, PROJ, generator=gen)
        torch.save({"state_dict": sd}, MODELS / f"{name}_pretrain.pth.tar")


def patch_dreamsim() -> None:
    import dreamsim.feature_extraction.load_clip_as_dino as clip_loader
    import dreamsim.feature_extraction.load_open_clip_as_dino as open_clip_loader

    def hub_load(repo, model, **kwargs):
        assert (repo, model) == ("facebookresearch/dino:main", "dino_vitb16"), (repo, model)
        vit = tiny_vit(12, 1.0)
        path = Path(torch.hub.get_dir()) / "checkpoints" / "dino_vitbase16_pretrain.pth"
        vit.load_state_dict(torch.load(path, map_location="cpu"), strict=True)
        return vit

    torch.hub.load = hub_load
    clip_loader.vit_base = lambda patch_size: tiny_vit(2, 4.0, patch_size)
    open_clip_loader.vit_base = lambda patch_size: tiny_vit(2, 4.0, patch_size)


def write_lora(gen: torch.Generator) -> None:
    from dreamsim.config import dreamsim_args
    from dreamsim.model import PerceptualModel
    from peft import LoraConfig, get_peft_model

    model = PerceptualModel(**dreamsim_args["model_config"]["ensemble"], device="cpu",
                            load_dir=str(MODELS), normalize_embeds=True)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.3, bias="none", target_modules=["qkv"])
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    peft_model.save_pretrained(str(MODELS / "ensemble_lora"))


def reference() -> dict[str, torch.Tensor]:
    from dreamsim import dreamsim

    model, preprocess = dreamsim(pretrained=True, device="cpu", cache_dir=str(MODELS))
    ps = pairs()
    pixels = [preprocess(Image.open(p)) for pair in ps for p in pair]
    with torch.no_grad():
        embeds = torch.cat([model.embed(x) for x in pixels])
        distance = torch.cat([model(pixels[2 * i], pixels[2 * i + 1]) for i in range(len(ps))])
    return {"dreamsim.pixels": torch.cat(pixels[:2]).contiguous(),
            "dreamsim.embeds": embeds.contiguous(), "dreamsim.distance": distance.contiguous()}


def write_torch_file(gen: torch.Generator) -> None:
    shutil.rmtree(TORCH_FILE, ignore_errors=True)
    TORCH_FILE.mkdir(parents=True)
    base = torch.randn(3, 5, generator=gen)
    shared = torch.randn(4, 6, generator=gen)
    linear = torch.nn.Linear(5, 3)
    sd = linear.state_dict()  # an OrderedDict with _metadata
    value = {
        "f32": base,
        "transposed": base.t(),
        "f16": torch.randn(2, 3, generator=gen).half(),
        "bf16": torch.randn(7, generator=gen).bfloat16(),
        "f64": torch.randn(2, 2, generator=gen).double(),
        "i64": torch.arange(-3, 3),
        "scalar": torch.tensor(2.5),
        "nested": {"state_dict": sd, "row": shared[1], "column": shared[:, 2]},
        "args": argparse.Namespace(lr=0.1, name="x"),
        "plain": [1, 2.0, "three", None, True, (4, 5)],
        "big": 1 << 40,
    }
    torch.save(value, TORCH_FILE / "values.pth")
    flat = {"f32": base, "transposed": base.t(), "f16": value["f16"], "bf16": value["bf16"],
            "f64": value["f64"], "i64": value["i64"], "scalar": value["scalar"],
            "nested/row": shared[1], "nested/column": shared[:, 2]}
    flat.update({f"nested/state_dict/{k}": v for k, v in sd.items()})
    save_file({k: v.detach().float().contiguous() for k, v in flat.items()},
              TORCH_FILE / "expected.safetensors")
    assert isinstance(sd, collections.OrderedDict) and hasattr(sd, "_metadata")


def main() -> None:
    gen = torch.Generator().manual_seed(11)
    write_torch_file(gen)
    OUT.mkdir(parents=True, exist_ok=True)
    write_models(gen)
    patch_dreamsim()
    write_lora(gen)
    save_file(reference(), OUT / "expected.safetensors")
    print("wrote", OUT, TORCH_FILE)


if __name__ == "__main__":
    main()
