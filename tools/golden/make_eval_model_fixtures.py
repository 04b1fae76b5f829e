#!/usr/bin/env python3
"""Golden fixtures for `qie eval`'s model metrics (tests/golden_eval_models.rs).

Writes tests/fixtures/eval_models/:
  dino/      a tiny random transformers ViTModel (save_pretrained: config.json, model.safetensors),
             image 224, patch 16: MagicBrush's DINO ViT-S/16 layout at a small width
  dinov2/    a tiny random Dinov2Model, image 518, patch 14 (dinov2-base's 37 x 37 position table,
             interpolated to the 16 x 16 grid of a 224 crop), layer scale 0.5 + noise
  siglip/    a tiny random SiglipModel (vision + text towers) with its SiglipImageProcessorPil
             (preprocessor_config.json: 72 x 72, mean / std 0.5), image 72, patch 16: 4 x 4 patches,
             the conv dropping a remainder as so400m's 384 / 14 does
  clip/      a tiny random CLIPModel (vision + text towers, projection), image 224, patch 32, and
             a tiny CLIP BPE tokenizer (lowercase letters, a few merges; tokenizer.json), 16 positions
  expected.safetensors
             per metric, over the (gt, pred) pairs of tests/fixtures/eval whose prediction exists:
             `<metric>.pixels` [2, 3, 224, 224] (the first pair preprocessed), `<metric>.embeds`
             [2 N, D] (the image embedding of each image, gt then pred) and `<metric>.cosine` [N];
             for clip_t: `clip_t.input_ids` [N, 16] (each row's prompt, padded to 16), `clip_t.text_embeds`
             [N, D] (CLIPModel.get_text_features) and `clip_t.cosine` [N] (prediction image vs prompt)

Preprocessing, as the reference scripts do it with torchvision on PIL images:
  dino   (MagicBrush evaluation/image_eval.py): Resize(256, BICUBIC), CenterCrop(224), ToTensor,
         Normalize(ImageNet mean, std); embedding = last_hidden_state[:, 0] (after the final LayerNorm)
  dinov2 the same as dino; embedding = Dinov2Model last_hidden_state[:, 0]
  clip_i (OpenAI clip.load's preprocess): Resize(224, BICUBIC), CenterCrop(224), ToTensor,
         Normalize(CLIP mean, std); embedding = CLIPModel.get_image_features (projected)
  siglip (the model's own SiglipImageProcessorPil): resize to 72 x 72 with PIL bicubic, rescale,
         normalise; embedding = SiglipModel.get_image_features (the attention-pooled output)

Needs torch, torchvision, transformers (versions in requirements.txt).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms
from transformers import (CLIPConfig, CLIPModel, CLIPTokenizer, Dinov2Config, Dinov2Model,
                          SiglipConfig, SiglipImageProcessorPil, SiglipModel, ViTConfig, ViTModel)

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT = REPO_ROOT / "tests" / "fixtures" / "eval_models"
IMAGES = REPO_ROOT / "tests" / "fixtures" / "eval"

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
CLIP = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])


def preprocess(resize: int, mean_std) -> transforms.Compose:
    return transforms.Compose([
        transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(*mean_std),
    ])


def pairs() -> list[tuple[Path, Path]]:
    rows = [json.loads(l) for l in open(IMAGES / "data.jsonl")]
    out = []
    for r in rows:
        gt = IMAGES / r["image"]
        pred = IMAGES / "pred" / Path(r["image"]).name
        if pred.exists() and Image.open(gt).size[0] >= 16:
            out.append((gt, pred))
    return out


def embed_all(name, model_fn, tf, tensors):
    ps = pairs()
    pixels = torch.stack([tf(Image.open(p).convert("RGB")) for pair in ps for p in pair])
    with torch.no_grad():
        embeds = model_fn(pixels)
    e = embeds.reshape(len(ps), 2, -1)
    cos = torch.nn.functional.cosine_similarity(e[:, 0], e[:, 1], dim=-1)
    tensors[f"{name}.pixels"] = pixels[:2].contiguous()  # the first row's pair (fixture size)
    tensors[f"{name}.embeds"] = embeds.contiguous()
    tensors[f"{name}.cosine"] = cos.contiguous()


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """CLIP's BPE (transformers' CLIPTokenizer: NFC, whitespace, lowercase, `</w>` word ends, byte
    level) over lowercase letters and a few merges; everything else is unknown (= end of text)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
    merges = [("e", "d"), ("ed", "i"), ("c", "a"), ("ca", "t</w>"), ("d", "o"), ("s", "e")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges)


def main() -> None:
    torch.manual_seed(20261202)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    tensors: dict[str, torch.Tensor] = {}

    vit = ViTModel(ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        image_size=224, patch_size=16, hidden_act="gelu", layer_norm_eps=1e-12, qkv_bias=True,
    )).eval()
    vit.save_pretrained(OUT / "dino")
    embed_all("dino", lambda x: vit(pixel_values=x).last_hidden_state[:, 0], preprocess(256, IMAGENET), tensors)

    tokenizer = tiny_clip_tokenizer()
    clip = CLIPModel(CLIPConfig(
        projection_dim=16,
        text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, vocab_size=len(tokenizer), max_position_embeddings=16,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, image_size=224, patch_size=32),
    )).eval()
    clip.save_pretrained(OUT / "clip")

    def clip_image(x):
        out = clip.get_image_features(pixel_values=x)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    embed_all("clip_i", clip_image, preprocess(224, CLIP), tensors)
    tokenizer.save_pretrained(OUT / "clip")

    # clip_t: the prediction's image embedding against the row's prompt
    rows = [json.loads(l) for l in open(IMAGES / "data.jsonl")]
    by_name = {Path(r["image"]).name: r["prompt"] for r in rows}
    ps = pairs()
    prompts = [by_name[gt.name] for gt, _ in ps]
    ids = tokenizer(prompts, padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        text = clip.get_text_features(input_ids=ids)
        text = text if isinstance(text, torch.Tensor) else text.pooler_output
    image = tensors["clip_i.embeds"].reshape(len(ps), 2, -1)[:, 1]
    tensors["clip_t.input_ids"] = ids.to(torch.int32).contiguous()
    tensors["clip_t.text_embeds"] = text.contiguous()
    tensors["clip_t.cosine"] = torch.nn.functional.cosine_similarity(image, text, dim=-1).contiguous()
    dinov2 = Dinov2Model(Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=518,
        patch_size=14, hidden_act="gelu", layer_norm_eps=1e-6, layerscale_value=0.5,
    )).eval()
    with torch.no_grad():  # random layer scales and position table (init makes them flat / small)
        for name, p in dinov2.named_parameters():
            if "lambda1" in name:
                p.add_(0.1 * torch.randn_like(p))
        dinov2.embeddings.position_embeddings.normal_()
    dinov2.save_pretrained(OUT / "dinov2")
    embed_all("dinov2", lambda x: dinov2(pixel_values=x).last_hidden_state[:, 0],
              preprocess(256, IMAGENET), tensors)

    siglip = SiglipModel(SiglipConfig(
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=64, vocab_size=64, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, image_size=72, patch_size=16),
    )).eval()
    with torch.no_grad():  # the pooling head's biases start at zero: make every weight matter
        for p in siglip.vision_model.head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    siglip.save_pretrained(OUT / "siglip")
    processor = SiglipImageProcessorPil(size={"height": 72, "width": 72})
    processor.save_pretrained(OUT / "siglip")

    def siglip_pixels(img):
        return processor(images=img, return_tensors="pt").pixel_values[0]

    def siglip_image(x):
        out = siglip.get_image_features(pixel_values=x)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    embed_all("siglip", siglip_image, siglip_pixels, tensors)

    save_file(tensors, OUT / "expected.safetensors")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
