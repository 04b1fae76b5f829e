#!/usr/bin/env python3
"""Golden fixtures for models/src/preprocess (tests/golden_preprocess.rs).

Writes tests/fixtures/preprocess/:
  images/*.png                  small random RGB inputs (+ an RGBA PNG for load_rgb)
  resize/<case>.png             Pillow Image.resize outputs (LANCZOS, BICUBIC), default box/reducing_gap
  resize_torch/<case>.png       torchvision resize(uint8, BICUBIC, antialias=True) outputs (if torchvision)
  cases.json                    resize cases, calculate_dimensions, smart_resize, processor/tokenizer cases
  vae.safetensors               VaeImageProcessor.preprocess / postprocess inputs and outputs
  processor_legacy/             preprocessor_config.json as published checkpoints ship it
  processor_v5/                 Qwen2VLProcessor.save_pretrained (transformers 5 processor_config.json)
  processor.safetensors         pixel_values / image_grid_thw / input_ids / attention_mask per case

The processor cases run the PIL image processor (`backend="pil"`, what AutoProcessor picks without
torchvision) and, when torchvision imports, the torchvision one (the default when it is installed).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save_file

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT = REPO_ROOT / "tests" / "fixtures" / "preprocess"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_tokenizer import EDIT_TEMPLATE, PLUS_IMAGE_PREFIX, PLUS_TEMPLATE, build_tiny_qwen_tokenizer  # noqa: E402

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Qwen/Qwen-Image-Edit processor/preprocessor_config.json (Qwen2.5-VL's).
LEGACY_CONFIG = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": OPENAI_CLIP_MEAN,
    "image_processor_type": "Qwen2VLImageProcessor",
    "image_std": OPENAI_CLIP_STD,
    "max_pixels": 12845056,
    "merge_size": 2,
    "min_pixels": 3136,
    "patch_size": 14,
    "processor_class": "Qwen2_5_VLProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"longest_edge": 12845056, "shortest_edge": 3136},
    "temporal_patch_size": 2,
}


def random_image(rng, w, h, smooth=False):
    if smooth:
        # Gradients + noise: closer to photos than white noise, still exercises every byte value.
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        base = np.stack([x / w * 255, y / h * 255, (x + y) / (w + h) * 255], axis=-1)
        arr = np.clip(base + rng.normal(0, 40, size=(h, w, 3)), 0, 255)
        return Image.fromarray(arr.round().astype(np.uint8), "RGB")
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), "RGB")


def calculate_dimensions(target_area, ratio):
    # diffusers pipeline_qwenimage_edit(_plus).calculate_dimensions
    width = math.sqrt(target_area * ratio)
    height = width / ratio
    return round(width / 32) * 32, round(height / 32) * 32


def make_images(rng):
    images = {
        "noise_37x23": random_image(rng, 37, 23),
        "smooth_64x48": random_image(rng, 64, 48, smooth=True),
        "noise_23x41": random_image(rng, 23, 41),
        "smooth_100x70": random_image(rng, 100, 70, smooth=True),
    }
    (OUT / "images").mkdir(parents=True, exist_ok=True)
    for name, im in images.items():
        im.save(OUT / "images" / f"{name}.png")
    rgba = np.concatenate(
        [np.asarray(images["noise_37x23"]), rng.integers(0, 256, size=(23, 37, 1), dtype=np.uint8)], axis=-1
    )
    Image.fromarray(rgba, "RGBA").save(OUT / "images" / "rgba_37x23.png")
    return images


RESIZE_SIZES = {
    "noise_37x23": [(80, 51), (16, 9), (29, 31), (37, 40), (50, 23), (1, 1), (111, 69), (12, 8)],
    "smooth_64x48": [(32, 24), (96, 64), (63, 47), (20, 33)],
    "noise_23x41": [(41, 23), (7, 100)],
}


def make_resize(images):
    cases = []
    (OUT / "resize").mkdir(parents=True, exist_ok=True)
    for src, sizes in RESIZE_SIZES.items():
        for w, h in sizes:
            for filt, resample in (("lanczos", Image.Resampling.LANCZOS), ("bicubic", Image.Resampling.BICUBIC)):
                name = f"{src}_{filt}_{w}x{h}"
                images[src].resize((w, h), resample).save(OUT / "resize" / f"{name}.png")
                cases.append({"name": name, "src": src, "filter": filt, "width": w, "height": h})
    return cases


def make_resize_torch(images):
    try:
        from torchvision.transforms.v2 import functional as tvF
    except ImportError:
        return []
    cases = []
    (OUT / "resize_torch").mkdir(parents=True, exist_ok=True)
    for src, sizes in RESIZE_SIZES.items():
        t = torch.from_numpy(np.asarray(images[src]).copy()).permute(2, 0, 1).contiguous()
        for w, h in sizes:
            if (w, h) == (1, 1):
                continue  # torch 2.15's AVX uint8 kernel asserts on a 1x1 output
            out = tvF.resize(t, [h, w], interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)
            name = f"{src}_bicubic_{w}x{h}"
            Image.fromarray(out.permute(1, 2, 0).numpy()).save(OUT / "resize_torch" / f"{name}.png")
            cases.append({"name": name, "src": src, "filter": "bicubic", "width": w, "height": h})
    return cases


def make_vae(images, rng):
    from diffusers.image_processor import VaeImageProcessor

    proc = VaeImageProcessor(vae_scale_factor=16)  # vae_scale_factor * 2, as both edit pipelines build it
    tensors, cases = {}, []
    for src, (w, h) in (("noise_37x23", (64, 32)), ("smooth_64x48", (32, 32)), ("smooth_100x70", (100, 70))):
        out = proc.preprocess(images[src], h, w)
        name = f"preprocess_{src}_{w}x{h}"
        tensors[name] = np.ascontiguousarray(out.numpy(), dtype=np.float32)  # torch keeps NHWC strides
        cases.append({"name": name, "src": src, "width": w, "height": h, "shape": list(out.shape)})
    # Postprocess: decoder-like output slightly beyond [-1, 1], plus exact .5 ties after *255.
    x = rng.uniform(-1.2, 1.2, size=(2, 3, 5, 7)).astype(np.float32)
    x[0, 0, 0, :4] = np.array([2 * (k + 0.5) / 255 - 1 for k in (0, 1, 127, 254)], dtype=np.float32)
    tensors["postprocess_input"] = x
    pil = proc.postprocess(torch.from_numpy(x), output_type="pil")
    tensors["postprocess_output"] = np.ascontiguousarray(np.stack([np.asarray(p) for p in pil]), dtype=np.int64)
    return tensors, cases


def make_dimensions():
    out = []
    for area in (1024 * 1024, 384 * 384):
        for w, h in ((1024, 768), (37, 23), (23, 41), (1, 1), (1920, 1080), (512, 2048), (3000, 1000), (777, 333)):
            cw, ch = calculate_dimensions(area, w / h)
            out.append({"target_area": area, "width": w, "height": h, "out_width": cw, "out_height": ch})
    return out


def make_smart_resize():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    out = []
    for h, w, lo, hi in (
        (23, 37, 3136, 12845056),
        (70, 100, 3136, 12845056),
        (384, 384, 3136, 12845056),
        (288, 480, 3136, 12845056),
        (70, 100, 3136, 28 * 28 * 4),
        (1000, 30, 3136, 28 * 28 * 20),
        (42, 42, 3136, 12845056),
    ):
        rh, rw = smart_resize(h, w, factor=28, min_pixels=lo, max_pixels=hi)
        out.append({"height": h, "width": w, "min_pixels": lo, "max_pixels": hi, "out_height": rh, "out_width": rw})
    return out


def make_processor(images):
    # Qwen2VLProcessor.from_pretrained needs torchvision in transformers 5.24 (its video processor
    # requires it), so the pipeline always runs with torchvision; the PIL image processor is what
    # backend="pil" gives.
    from transformers import AutoImageProcessor, Qwen2VLProcessor

    legacy = OUT / "processor_legacy"
    build_tiny_qwen_tokenizer(legacy, "vocab_merges")
    (legacy / "preprocessor_config.json").write_text(json.dumps(LEGACY_CONFIG, indent=2) + "\n")

    # transformers 5 layout: save_pretrained output (processor_config.json with a nested
    # image_processor), with a smaller max_pixels so the downscale branch of smart_resize runs.
    tmp = OUT / "_v5_tmp"
    build_tiny_qwen_tokenizer(tmp, "tokenizer_json")
    (tmp / "preprocessor_config.json").write_text(json.dumps({**LEGACY_CONFIG, "max_pixels": 28 * 28 * 6,
        "size": {"longest_edge": 28 * 28 * 6, "shortest_edge": 3136}}, indent=2) + "\n")
    v5 = OUT / "processor_v5"
    if v5.exists():
        shutil.rmtree(v5)
    Qwen2VLProcessor.from_pretrained(str(tmp)).save_pretrained(str(v5))
    shutil.rmtree(tmp)

    cases = [
        ("edit_legacy", legacy, ["noise_37x23"], [EDIT_TEMPLATE.format("把背景换成雪山, keep the face.")]),
        (
            "plus_legacy",
            legacy,
            ["smooth_100x70", "smooth_64x48"],
            [PLUS_TEMPLATE.format(PLUS_IMAGE_PREFIX.format(1) + PLUS_IMAGE_PREFIX.format(2) + "Put them together.")],
        ),
        (
            "batch_v5",
            v5,
            ["smooth_100x70", "noise_23x41"],
            [EDIT_TEMPLATE.format("Make it blue."), EDIT_TEMPLATE.format("Turn the photo into a watercolor painting.")],
        ),
    ]
    tensors, meta = {}, []
    for backend in ("torchvision", "pil"):
        for name, folder, srcs, texts in cases:
            proc = Qwen2VLProcessor.from_pretrained(str(folder))
            if backend == "pil":
                proc.image_processor = AutoImageProcessor.from_pretrained(str(folder), backend="pil")
            assert proc.image_processor.backend == backend
            out = proc(text=texts, images=[images[s] for s in srcs], padding=True, return_tensors="pt")
            key = f"{name}_{backend}"
            tensors[f"{key}.pixel_values"] = out["pixel_values"].numpy().astype(np.float32)
            tensors[f"{key}.image_grid_thw"] = out["image_grid_thw"].numpy().astype(np.int64)
            tensors[f"{key}.input_ids"] = out["input_ids"].numpy().astype(np.int64)
            tensors[f"{key}.attention_mask"] = out["attention_mask"].numpy().astype(np.int64)
            meta.append({"name": key, "folder": folder.name, "backend": backend, "images": srcs, "texts": texts})
    return tensors, meta


def main():
    rng = np.random.default_rng(20240904)
    OUT.mkdir(parents=True, exist_ok=True)
    images = make_images(rng)
    resize_cases = make_resize(images)
    torch_cases = make_resize_torch(images)
    vae_tensors, vae_cases = make_vae(images, rng)
    save_file(vae_tensors, str(OUT / "vae.safetensors"))
    proc_tensors, proc_cases = make_processor(images)
    save_file(proc_tensors, str(OUT / "processor.safetensors"))

    import diffusers
    import PIL
    import transformers

    versions = {"pillow": PIL.__version__, "transformers": transformers.__version__, "diffusers": diffusers.__version__}
    try:
        import torchvision

        versions["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    versions["torch"] = torch.__version__
    meta = {
        "generator": "tools/golden/make_preprocess_fixtures.py",
        "versions": versions,
        "resize": resize_cases,
        "resize_torch": torch_cases,
        "vae": vae_cases,
        "calculate_dimensions": make_dimensions(),
        "smart_resize": make_smart_resize(),
        "processor": proc_cases,
    }
    (OUT / "cases.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
