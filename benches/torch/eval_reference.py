"""The Python reference for the `qie eval` benchmark, written the way the usual evaluation scripts
are (MagicBrush evaluation/image_eval.py: one row at a time, PIL + torchvision preprocessing,
one forward per image pair on the GPU): l1, l2, psnr, ssim (skimage) and their background-only
versions, dino, dinov2, clip_i, clip_t and siglip with the models of eval_models.py, and dreamsim
through the dreamsim package itself (when it imports and models/dreamsim exists; torch.hub.load
is pointed at the folder's DINO checkpoint, as the hub entry point loads it, since the benchmark
machine has no network). Prints the
wall time and the metric means (which qie's eval.json summary must match).

    python3 benches/torch/eval_reference.py --data /tmp/evalbench --models /tmp/evalmodels \
        [--rows N] [--json out.json]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.metrics import structural_similarity
from torchvision import transforms
try:  # transformers >= 5.20 names the PIL processor so
    from transformers import SiglipImageProcessorPil
except ImportError:
    from transformers import SiglipImageProcessor as SiglipImageProcessorPil
from transformers import (CLIPModel, CLIPTokenizer, Dinov2Model,
                          SiglipModel, ViTModel)

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
CLIP = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])


def tf(resize, mean_std):
    return transforms.Compose([
        transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(*mean_std)])


def pooled(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def load_models(models: Path, dev: str):
    dino = ViTModel.from_pretrained(models / "dino", add_pooling_layer=False).to(dev).eval()
    dinov2 = Dinov2Model.from_pretrained(models / "dinov2").to(dev).eval()
    clip = CLIPModel.from_pretrained(models / "clip").to(dev).eval()
    tok = CLIPTokenizer.from_pretrained(models / "clip")
    siglip = SiglipModel.from_pretrained(models / "siglip").to(dev).eval()
    sig_proc = SiglipImageProcessorPil.from_pretrained(models / "siglip")
    encoders = {
        "dino": (tf(256, IMAGENET), lambda x: dino(pixel_values=x).last_hidden_state[:, 0]),
        "dinov2": (tf(256, IMAGENET), lambda x: dinov2(pixel_values=x).last_hidden_state[:, 0]),
        "clip_i": (tf(224, CLIP), lambda x: pooled(clip.get_image_features(pixel_values=x))),
        "siglip": (lambda im: sig_proc(images=im, return_tensors="pt").pixel_values[0],
                   lambda x: pooled(siglip.get_image_features(pixel_values=x))),
    }
    return encoders, clip, tok


def pixel_metrics(data, r, gt, pred, to_tensor) -> dict:
    g, q = to_tensor(gt), to_tensor(pred)
    d = g - q
    l2 = (d ** 2).mean().item()
    vals = {"l1": d.abs().mean().item(), "l2": l2, "psnr": 10 * np.log10(1 / l2)}
    gn, qn = g.permute(1, 2, 0).numpy(), q.permute(1, 2, 0).numpy()
    _, smap = structural_similarity(gn, qn, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1.0, full=True)
    c = 5  # skimage crops (win_size - 1) // 2 = 5 pixels (11 x 11 window of sigma 1.5)
    vals["ssim"] = float(smap[c:-c, c:-c].mean())
    mask = Image.open(data / r["back_mask"]).convert("L").resize(gt.size, Image.NEAREST)
    bg = np.asarray(mask) >= 128
    bgt = torch.from_numpy(bg)
    bl2 = (d[:, bgt] ** 2).mean().item()
    vals.update(bg_l1=d[:, bgt].abs().mean().item(), bg_l2=bl2, bg_psnr=10 * np.log10(1 / bl2),
                bg_ssim=float(smap[c:-c, c:-c][bg[c:-c, c:-c]].mean()))
    return vals


def load_dreamsim(folder: Path, dev: str):
    """dreamsim.dreamsim(pretrained=True) on `folder`, or None when the package is missing."""
    if not folder.is_dir():
        return None
    try:
        from dreamsim import dreamsim
        from dreamsim.feature_extraction.vision_transformer import vit_base
    except ImportError as e:
        print(f"dreamsim reference unavailable: {e}")
        return None

    def hub_load(repo, model, **kwargs):
        vit = vit_base(patch_size=16, num_classes=0)
        path = Path(torch.hub.get_dir()) / "checkpoints" / "dino_vitbase16_pretrain.pth"
        vit.load_state_dict(torch.load(path, map_location="cpu"), strict=True)
        return vit

    torch.hub.load = hub_load
    model, preprocess = dreamsim(pretrained=True, device=dev, cache_dir=str(folder))
    return model, preprocess


def model_metrics(r, gt, pred, encoders, clip, tok, dev, dreamsim=None) -> dict:
    vals = {}
    if dreamsim is not None:
        model, preprocess = dreamsim
        vals["dreamsim"] = model(preprocess(gt).to(dev), preprocess(pred).to(dev)).item()
    for name, (prep, fn) in encoders.items():
        x = torch.stack([prep(gt), prep(pred)]).to(dev)
        e = fn(x)
        vals[name] = F.cosine_similarity(e[0:1], e[1:2]).item()
        if name == "clip_i":
            ids = tok([r["prompt"]], padding="max_length", max_length=77, truncation=True,
                      return_tensors="pt").input_ids.to(dev)
            t = pooled(clip.get_text_features(input_ids=ids))
            vals["clip_t"] = F.cosine_similarity(e[1:2], t).item()
    return vals


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--models", required=True)
    p.add_argument("--rows", type=int, default=0)
    p.add_argument("--json")
    p.add_argument("--device", default="cuda")
    p.add_argument("--group", choices=["all", "pixel", "model"], default="all",
                   help="only the pixel metrics, or only the model metrics (the benchmark times "
                        "them in separate runs to stay within a time limit per run)")
    a = p.parse_args()
    data, models = Path(a.data), Path(a.models)
    rows = [json.loads(l) for l in open(data / "data.jsonl")]
    rows = rows[: a.rows] if a.rows else rows
    dev = a.device
    start = time.time()
    encoders, clip, tok = load_models(models, dev) if a.group != "pixel" else ({}, None, None)
    ds = load_dreamsim(models / "dreamsim", dev) if a.group != "pixel" else None
    loaded = time.time()
    sums: dict[str, list[float]] = {}
    to_tensor = transforms.ToTensor()
    with torch.no_grad():
        for r in rows:
            gt = Image.open(data / r["image"]).convert("RGB")
            pred = Image.open(data / "pred" / Path(r["image"]).name).convert("RGB")
            if pred.size != gt.size:
                pred = pred.resize(gt.size, Image.BICUBIC)
            vals = {}
            if a.group != "model":
                vals.update(pixel_metrics(data, r, gt, pred, to_tensor))
            if a.group != "pixel":
                vals.update(model_metrics(r, gt, pred, encoders, clip, tok, dev, ds))
            for k, v in vals.items():
                sums.setdefault(k, []).append(v)
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    end = time.time()
    out = {"rows": len(rows), "seconds": end - start, "load_seconds": loaded - start,
           "means": {k: float(np.mean(v)) for k, v in sums.items()},
           "device": torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu", "torch": torch.__version__}
    print(json.dumps(out, indent=1))
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
