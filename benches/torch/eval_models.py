"""Real-size, randomly initialised metric models for the `qie eval` benchmark (no hub access on the
benchmark machine), saved with save_pretrained so qie and eval_reference.py load the same weights:

  dino/    facebook/dino-vits16's ViTConfig (384 wide, 12 layers, patch 16, 224)
  dinov2/  facebook/dinov2-base's Dinov2Config (768 wide, 12 layers, patch 14, 518)
  clip/    openai/clip-vit-base-patch32's CLIPConfig (vision 768 x 12, text 512 x 12, projection
           512), with the tiny BPE tokenizer of tests/fixtures/eval_models/clip (vocabulary sized
           to it: the text tower's cost does not depend on the vocabulary)
  siglip/  google/siglip-so400m-patch14-384's vision tower (1152 wide, 27 layers, patch 14, 384)
           with its image processor config

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
    p.add_argument("--only", choices=["dino", "dinov2", "clip", "siglip"], help="just this model")
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
    print(f"wrote {out}")


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
