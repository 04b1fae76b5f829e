#!/usr/bin/env python3
"""Generate golden fixtures for diffusers' AutoencoderKLQwenImage (the Qwen-Image VAE), images only.

Each case directory under tests/fixtures/vae/<case>/ holds:

  vae/                      model.save_pretrained() output (config.json + safetensors)
  inputs.safetensors        `image` [1, 3, H, W] in [-1, 1] (encoder input), `latents` [B, 16, h, w]
                            (decoder input), `latents_tiled` [1, 16, h', w'] (tiled decoder input)
  expected.safetensors      `latent` (posterior mode = mean, raw) [1, 16, H/8, W/8], `sample` (decoded
                            `latents`, clamped to [-1, 1]), `sample_tiled` (decoded `latents_tiled` with
                            enable_tiling(...) small tiles, not clamped, as diffusers), `latent_normalized`
                            ((latent - mean) / std as the edit pipelines), `latents_denormalized`
                            (latents / (1 / std) + mean), `latent_bf16` / `sample_bf16` (the model run
                            natively in bf16 on CPU), `latent_bf16w` / `sample_bf16w` (bf16-rounded
                            weights, f32 math)
  meta.json                 tiling parameters and notes

The model is a tiny random-init config (real layout: dim_mult [1, 2, 4, 4], num_res_blocks 2,
temperal_downsample [False, True, True], the real latents_mean / latents_std); every parameter is
re-randomised (RMS-norm gammas around 1, conv weights N(0, 1/fan_in), biases N(0, 0.1^2)).
Expected outputs come from reloading the *saved* model with from_pretrained() and calling the real
diffusers encode / decode on single frames ([B, C, 1, H, W]); the time axis is dropped in the files.
Inputs are rounded to bf16-representable values so the bf16 reference sees the same inputs.

Usage (see README.md for the environment):
    python tools/golden/make_vae_fixtures.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import diffusers
from diffusers import AutoencoderKLQwenImage

EXPECTED_DIFFUSERS = "0.42.1"

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "vae"

CONFIG = dict(
    base_dim=4,
    z_dim=16,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    dropout=0.0,
    input_channels=3,
)

# Tiles of 32 x 48 sample pixels (4 x 6 latents), strides 24 x 32 (3 x 4 latents): on a 7 x 10 latent
# that is 3 x 3 tiles, the last row / column narrower than the blend extent (8 and 16 pixels).
TILING = dict(
    tile_sample_min_height=32,
    tile_sample_min_width=48,
    tile_sample_stride_height=24,
    tile_sample_stride_width=32,
)

CASE = "tiny"
SEED = 2001
IMAGE_SHAPE = (1, 3, 48, 64)
LATENTS_SHAPE = (2, 16, 6, 8)
LATENTS_TILED_SHAPE = (1, 16, 7, 10)


def randomize_(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Re-randomise every parameter (in place) so no identity/zero init survives."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                fan_in = math.prod(p.shape[1:])
                p.copy_(noise * (1.5 / math.sqrt(fan_in)))


def bf16_round(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(torch.float32)


def f32c(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous().clone()


def encode(vae, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.encode(image[:, :, None]).latent_dist.mode()[:, :, 0]


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.decode(latents[:, :, None]).sample[:, :, 0]


def stats(name: str, t: torch.Tensor) -> None:
    clamped = (t.abs() >= 1.0).float().mean().item()
    print(f"  {name} {tuple(t.shape)} std={t.std().item():.4f} absmax={t.abs().max().item():.4f} "
          f"|x|>=1: {100 * clamped:.1f}%")


def build(out_root: Path) -> None:
    gen = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    model = AutoencoderKLQwenImage(**CONFIG).to(torch.float32).eval()
    randomize_(model, gen)

    image = bf16_round(torch.rand(IMAGE_SHAPE, generator=gen) * 2.0 - 1.0)
    latents = bf16_round(torch.randn(LATENTS_SHAPE, generator=gen))
    latents_tiled = bf16_round(torch.randn(LATENTS_TILED_SHAPE, generator=gen))

    case_dir = out_root / CASE
    if case_dir.exists():
        shutil.rmtree(case_dir)
    vae_dir = case_dir / "vae"
    vae_dir.mkdir(parents=True)
    model.save_pretrained(vae_dir)

    ref = AutoencoderKLQwenImage.from_pretrained(vae_dir, torch_dtype=torch.float32).eval()
    latent = encode(ref, image)
    sample = decode(ref, latents)
    ref.enable_tiling(**TILING)
    sample_tiled = decode(ref, latents_tiled)
    ref.disable_tiling()
    untiled = decode(ref, latents_tiled)

    z = ref.config.z_dim
    mean = torch.tensor(ref.config.latents_mean).view(1, z, 1, 1)
    std = torch.tensor(ref.config.latents_std).view(1, z, 1, 1)
    latent_normalized = (latent - mean) / std
    latents_denormalized = latents / (1.0 / std) + mean

    m16 = AutoencoderKLQwenImage.from_pretrained(vae_dir, torch_dtype=torch.bfloat16).eval()
    latent_bf16 = encode(m16, image.to(torch.bfloat16))
    sample_bf16 = decode(m16, latents.to(torch.bfloat16))
    # bf16-rounded weights, f32 math: what the CPU backend computes for WeightPrecision::Bf16.
    m16w = AutoencoderKLQwenImage.from_pretrained(vae_dir, torch_dtype=torch.bfloat16).to(torch.float32).eval()
    latent_bf16w = encode(m16w, image)
    sample_bf16w = decode(m16w, latents)

    expected = {
        "latent": f32c(latent),
        "sample": f32c(sample),
        "sample_tiled": f32c(sample_tiled),
        "latent_normalized": f32c(latent_normalized),
        "latents_denormalized": f32c(latents_denormalized),
        "latent_bf16": f32c(latent_bf16),
        "sample_bf16": f32c(sample_bf16),
        "latent_bf16w": f32c(latent_bf16w),
        "sample_bf16w": f32c(sample_bf16w),
    }

    # ---- sanity checks (fail loudly if the fixture would be degenerate) ----
    for k, v in expected.items():
        assert torch.isfinite(v).all(), k
        stats(k, v)
    seam = (sample_tiled - untiled).abs().max().item()
    print(f"  tiled vs untiled decode: max diff {seam:.3e} (tiles must differ)")
    assert seam > 1e-3, seam
    for name, a, b in [("latent_bf16", latent_bf16, latent), ("sample_bf16", sample_bf16, sample),
                       ("latent_bf16w", latent_bf16w, latent), ("sample_bf16w", sample_bf16w, sample)]:
        rel = ((a - b).norm() / b.norm()).item()
        print(f"  {name} vs f32: rel-L2 {rel:.3e}")

    inputs = {"image": image, "latents": latents, "latents_tiled": latents_tiled}
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(case_dir / "inputs.safetensors"),
              metadata={"format": "pt"})
    save_file(expected, str(case_dir / "expected.safetensors"), metadata={"format": "pt"})
    meta = {
        "tiling": TILING,
        "notes": "AutoencoderKLQwenImage, single frame (T=1). `latent` = posterior mode (raw). `sample` "
        "= decode(latents), clamped to [-1, 1]. `sample_tiled` = decode(latents_tiled) after "
        "enable_tiling(**tiling): diffusers' tiled_decode does not clamp. *_bf16: the model loaded in "
        "bfloat16 and run natively on CPU (tolerance ~2e-2). *_bf16w: bf16-rounded weights, f32 math.",
    }
    with open(case_dir / "meta.json", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)
        f.write("\n")
    files = sorted(p.relative_to(case_dir).as_posix() for p in case_dir.rglob("*") if p.is_file())
    print(f"  [{CASE}] wrote {files}")


# A second layout: 3 stages, 1 residual block per stage, time downsampling in the first stage
# only, z_dim 4. The encoder's flat down_blocks indices and the decoder's widths differ from the
# released layout, so it checks that the source computes them from the config.
LAYOUT_CASE = "layout"
LAYOUT_CONFIG = dict(
    base_dim=4,
    z_dim=4,
    dim_mult=[1, 2, 3],
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[True, False],
    dropout=0.0,
    input_channels=3,
    latents_mean=[0.1, -0.2, 0.3, 0.0],
    latents_std=[1.5, 2.0, 0.5, 1.0],
)
LAYOUT_IMAGE_SHAPE = (1, 3, 32, 48)
LAYOUT_LATENTS_SHAPE = (1, 4, 6, 8)


def build_layout(out_root: Path) -> None:
    gen = torch.Generator().manual_seed(SEED + 1)
    torch.manual_seed(SEED + 1)
    model = AutoencoderKLQwenImage(**LAYOUT_CONFIG).to(torch.float32).eval()
    randomize_(model, gen)
    image = bf16_round(torch.rand(LAYOUT_IMAGE_SHAPE, generator=gen) * 2.0 - 1.0)
    latents = bf16_round(torch.randn(LAYOUT_LATENTS_SHAPE, generator=gen))
    case_dir = out_root / LAYOUT_CASE
    if case_dir.exists():
        shutil.rmtree(case_dir)
    vae_dir = case_dir / "vae"
    vae_dir.mkdir(parents=True)
    model.save_pretrained(vae_dir)
    ref = AutoencoderKLQwenImage.from_pretrained(vae_dir, torch_dtype=torch.float32).eval()
    expected = {"latent": f32c(encode(ref, image)), "sample": f32c(decode(ref, latents))}
    for k, v in expected.items():
        assert torch.isfinite(v).all(), k
        stats(k, v)
    save_file({"image": image.contiguous(), "latents": latents.contiguous()},
              str(case_dir / "inputs.safetensors"), metadata={"format": "pt"})
    save_file(expected, str(case_dir / "expected.safetensors"), metadata={"format": "pt"})
    files = sorted(p.relative_to(case_dir).as_posix() for p in case_dir.rglob("*") if p.is_file())
    print(f"  [{LAYOUT_CASE}] wrote {files}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--case", choices=["all", CASE, LAYOUT_CASE], default="all")
    args = ap.parse_args()

    if diffusers.__version__ != EXPECTED_DIFFUSERS:
        print(f"WARNING: diffusers {diffusers.__version__} != {EXPECTED_DIFFUSERS}; fixtures may differ",
              file=sys.stderr)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}")
    torch.set_num_threads(1)
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()

    args.out.mkdir(parents=True, exist_ok=True)
    if args.case in ("all", CASE):
        build(args.out)
    if args.case in ("all", LAYOUT_CASE):
        build_layout(args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"total fixture size under {args.out}: {total} bytes ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
