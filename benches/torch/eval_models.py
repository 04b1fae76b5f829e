"""Real-size, randomly initialised metric models for the `qie eval` benchmark (no hub access on the
benchmark machine), saved with save_pretrained so qie and eval_reference.py load the same weights:

  dino/    facebook/dino-vits16's ViTConfig (384 wide, 12 layers, patch 16, 224)
  dinov2/  facebook/dinov2-base's Dinov2Config (768 wide, 12 layers, patch 14, 518)
  clip/    openai/clip-vit-base-patch32's CLIPConfig (vision 768 x 12, text 512 x 12, projection
           512), with the tiny BPE tokenizer of tests/fixtures/eval_models/clip (vocabulary sized
           to it: the text tower's cost does not depend on the vocabulary)
  siglip/  google/siglip-so400m-patch14-384's vision tower (1152 wide, 27 layers, patch 14, 384)
           with its image processor config
  dreamsim/ the DreamSim ensemble folder as dreamsim(cache_dir=...) leaves it: DINO ViT-B/16
           (checkpoints/dino_vitbase16_pretrain.pth), CLIP and OpenCLIP ViT-B/16 in DINO's layout
           with their 768 x 512 projections, and a peft LoRA (r 16, alpha 8) on every attn.qkv

    python3 benches/torch/eval_models.py --out /tmp/evalmodels
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
try:  # transformers >= 5.20 names the PIL processor so
    from transformers import SiglipImageProcessorPil
except ImportError:
    from transformers import SiglipImageProcessor as SiglipImageProcessorPil
from transformers import (CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model, SiglipConfig,
                          SiglipModel, ViTConfig, ViTModel)

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--only", choices=["dino", "dinov2", "clip", "siglip", "dreamsim"],
                   help="just this model")
    a = p.parse_args()
    out = Path(a.out)
    want = lambda name: a.only in (None, name)
    torch.manual_seed(0)
    if want("dino"):
        ViTModel(ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                           intermediate_size=1536, patch_size=16, image_size=224),
                 add_pooling_layer=False).save_pretrained(out / "dino")
    if want("dinov2"):
        Dinov2Model(Dinov2Config(image_size=518)).save_pretrained(out / "dinov2")
    if want("clip"):
        save_clip(out)
    if want("siglip"):
        save_siglip(out)
    if want("dreamsim"):
        save_dreamsim(out / "dreamsim")
    print(f"wrote {out}")


def vit_b16(clip: bool) -> dict:
    """A random ViT-B/16 state dict in DINO's layout (DreamSim converts CLIP to it)."""
    w, n = 768, lambda *s: 0.02 * torch.randn(*s)
    sd = {"cls_token": n(1, 1, w), "pos_embed": n(1, 197, w),
          "patch_embed.proj.weight": n(w, 3, 16, 16), "patch_embed.proj.bias": torch.zeros(w)}
    for i in range(12):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": torch.ones(w), b + "norm1.bias": torch.zeros(w),
                   b + "attn.qkv.weight": n(3 * w, w), b + "attn.qkv.bias": torch.zeros(3 * w),
                   b + "attn.proj.weight": n(w, w), b + "attn.proj.bias": torch.zeros(w),
                   b + "norm2.weight": torch.ones(w), b + "norm2.bias": torch.zeros(w),
                   b + "mlp.fc1.weight": n(4 * w, w), b + "mlp.fc1.bias": torch.zeros(4 * w),
                   b + "mlp.fc2.weight": n(w, 4 * w), b + "mlp.fc2.bias": torch.zeros(w)})
    sd.update({"norm.weight": torch.ones(w), "norm.bias": torch.zeros(w)})
    if clip:
        sd.update({"pos_drop.weight": torch.ones(w), "pos_drop.bias": torch.zeros(w),
                   "proj": n(w, 512)})
    return sd


def save_dreamsim(out: Path) -> None:
    from safetensors.torch import save_file
    shutil.rmtree(out, ignore_errors=True)
    (out / "checkpoints").mkdir(parents=True)
    (out / "ensemble_lora").mkdir()
    torch.save(vit_b16(False), out / "checkpoints" / "dino_vitbase16_pretrain.pth")
    # the DINO training checkpoint DreamSim opens for a projection head it does not use
    head = {f"module.head.{k}": torch.zeros(1) for k in
            ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp.4.weight",
             "mlp.4.bias", "last_layer.weight"]}
    torch.save({"student": head}, out / "dino_vitb16_pretrain.pth")
    for name in ["clip_vitb16", "open_clip_vitb16"]:
        torch.save({"state_dict": vit_b16(True)}, out / f"{name}_pretrain.pth.tar")
    lora = {}
    for t in range(3):
        for i in range(12):
            key = f"base_model.model.extractor_list.{t}.model.blocks.{i}.attn.qkv"
            lora[key + ".lora_A.weight"] = 0.02 * torch.randn(16, 768)
            lora[key + ".lora_B.weight"] = 0.02 * torch.randn(3 * 768, 16)
    save_file(lora, out / "ensemble_lora" / "adapter_model.safetensors")
    json.dump({"peft_type": "LORA", "r": 16, "lora_alpha": 8, "lora_dropout": 0.3,
               "bias": "none", "target_modules": ["qkv"], "use_rslora": False,
               "use_dora": False, "fan_in_fan_out": False, "inference_mode": True},
              open(out / "ensemble_lora" / "adapter_config.json", "w"), indent=1)


def save_clip(out: Path) -> None:
    tok = REPO / "tests/fixtures/eval_models/clip"
    vocab = len(json.load(open(tok / "tokenizer.json"))["model"]["vocab"])
    CLIPModel(CLIPConfig(
        projection_dim=512,
        text_config=dict(vocab_size=vocab, max_position_embeddings=77, bos_token_id=vocab - 2,
                         eos_token_id=vocab - 1, pad_token_id=vocab - 1),
        vision_config=dict(patch_size=32),
    )).save_pretrained(out / "clip")
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(tok / f, out / "clip" / f)


def save_siglip(out: Path) -> None:
    SiglipModel(SiglipConfig(
        text_config=dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=128),
        vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                           num_attention_heads=16, image_size=384, patch_size=14),
    )).save_pretrained(out / "siglip")
    SiglipImageProcessorPil(size={"height": 384, "width": 384}).save_pretrained(out / "siglip")


if __name__ == "__main__":
    main()
