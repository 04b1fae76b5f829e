#!/usr/bin/env python3
"""Golden fixtures for `qie eval`'s pixel metrics (tests/golden_eval.rs, cli/tests/eval_cli.rs).

Writes tests/fixtures/eval/:
  gt/*.png, pred/*.png, mask/*.png   small images: predictions of other sizes (resized to the
                                     ground truth with PIL bicubic), masks of other sizes (nearest)
  data.jsonl                         rows: prompt, image (ground truth), back_mask on some rows,
                                     one row whose prediction is missing
  expected.json                      per row: l1, l2 (MagicBrush image_eval.py: ToTensor, nn.L1Loss /
                                     nn.MSELoss, here in numpy float64), psnr (10 log10(1 / mse)),
                                     ssim (skimage structural_similarity, data_range=1,
                                     gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     channel_axis=2), and the bg_* variants: background = mask
                                     converted to L, resized with NEAREST, >= 128; "select" =
                                     background pixels only (SSIM: the full map, 5-pixel border
                                     cropped, averaged over background pixels), "multiply" =
                                     both images times the 0/1 mask, then the whole-image metrics.

Needs numpy, pillow, scikit-image (versions in requirements.txt).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT = REPO_ROOT / "tests" / "fixtures" / "eval"
PAD = 5  # (win_size - 1) // 2 for sigma 1.5, truncate 3.5


def to_unit(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0


def ssim_full(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    _, s = structural_similarity(
        x, y, data_range=1.0, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, channel_axis=2, full=True,
    )
    return s


def whole(p: np.ndarray, g: np.ndarray) -> dict:
    d = p - g
    mse = float(np.mean(d * d))
    return {
        "l1": float(np.mean(np.abs(d))),
        "l2": mse,
        "psnr": None if mse == 0 else float(10 * np.log10(1.0 / mse)),
        "ssim": float(ssim_full(p, g)[PAD:-PAD, PAD:-PAD].mean()),
    }


def selected(p: np.ndarray, g: np.ndarray, bg: np.ndarray) -> dict:
    d = (p - g)[bg]
    if d.size == 0:
        return {"bg_l1": None, "bg_l2": None, "bg_psnr": None, "bg_ssim": None}
    mse = float(np.mean(d * d))
    s = ssim_full(p, g)[PAD:-PAD, PAD:-PAD][bg[PAD:-PAD, PAD:-PAD]]
    return {
        "bg_l1": float(np.mean(np.abs(d))),
        "bg_l2": mse,
        "bg_psnr": None if mse == 0 else float(10 * np.log10(1.0 / mse)),
        "bg_ssim": float(s.mean()) if s.size else None,
    }


def multiplied(p: np.ndarray, g: np.ndarray, bg: np.ndarray) -> dict:
    m = bg[..., None].astype(np.float64)
    return {"bg_" + k: v for k, v in whole(p * m, g * m).items()}


def main() -> None:
    rng = np.random.default_rng(20261202)
    if OUT.exists():
        shutil.rmtree(OUT)
    for d in ("gt", "pred", "mask"):
        (OUT / d).mkdir(parents=True)

    def smooth(h: int, w: int) -> np.ndarray:
        # structure for SSIM: a gradient plus noise
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=-1)
        return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)

    # (name, gt size (w, h), pred size or None for missing, mask size or None, identical)
    cases = [
        ("cat", (48, 40), (48, 40), None, False),
        ("dog", (64, 48), (50, 37), (32, 24), False),   # pred resized up, mask resized up
        ("sea", (40, 56), (80, 112), (41, 57), False),  # pred resized down, odd mask size
        ("same", (32, 32), (32, 32), (32, 32), True),   # identical: psnr undefined
        ("gone", (32, 24), None, None, False),          # prediction missing
        ("tiny", (10, 30), (10, 30), None, False),      # below the SSIM window: ssim undefined
    ]
    rows, expected = [], []
    for index, (name, gsize, psize, msize, identical) in enumerate(cases):
        gt = Image.fromarray(smooth(gsize[1], gsize[0]))
        gt.save(OUT / "gt" / f"{name}.png")
        row = {"prompt": f"edit {name}", "image": f"gt/{name}.png"}
        if msize is not None:
            mk = (rng.random((msize[1], msize[0], 3)) * 255).astype(np.uint8)
            Image.fromarray(mk).save(OUT / "mask" / f"{name}.png")
            row["back_mask"] = f"mask/{name}.png"
        rows.append(row)
        if psize is None:
            continue
        if identical:
            pred = gt.copy()
        else:
            noisy = np.asarray(gt.resize(psize, Image.BICUBIC), dtype=np.float64)
            noisy = np.clip(noisy + rng.normal(0, 12, noisy.shape), 0, 255).astype(np.uint8)
            pred = Image.fromarray(noisy)
        pred.save(OUT / "pred" / f"{name}.png")
        # MagicBrush: img_0.resize(img_1.size) (PIL's default resample for RGB: BICUBIC)
        p = to_unit(Image.open(OUT / "pred" / f"{name}.png").convert("RGB").resize(gt.size, Image.BICUBIC))
        g = to_unit(Image.open(OUT / "gt" / f"{name}.png").convert("RGB"))
        if min(gsize) < 2 * PAD + 1:
            d = p - g
            mse = float(np.mean(d * d))
            scores = {"l1": float(np.mean(np.abs(d))), "l2": mse,
                      "psnr": float(10 * np.log10(1.0 / mse)), "ssim": None}
        else:
            scores = whole(p, g)
        entry = {"index": index, "name": name, "whole": scores}
        if msize is not None:
            mask = Image.open(OUT / "mask" / f"{name}.png").convert("L").resize(gt.size, Image.NEAREST)
            bg = np.asarray(mask) >= 128
            entry["select"] = selected(p, g, bg)
            entry["select_inverted"] = selected(p, g, ~bg)
            entry["multiply"] = multiplied(p, g, bg)
        expected.append(entry)
    with open(OUT / "data.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    with open(OUT / "expected.json", "w") as f:
        json.dump(expected, f, indent=1)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
