#!/usr/bin/env python3
"""Check that a LoRA written by `qie train` loads unchanged into diffusers and gives the same edit.

On the tiny Qwen-Image-Edit-2511 fixture pipeline (tests/fixtures/edit/plus/model):
  1. diffusers: QwenImageEditPlusPipeline + pipe.load_lora_weights(LORA_DIR) (the folder qie wrote,
     holding pytorch_lora_weights.safetensors), the fixture's prompt, images and initial noise, 3 steps,
     true CFG 4, output_type="latent";
  2. qie: `qie edit` with --lora LORA_DIR/pytorch_lora_weights.safetensors and the same noise;
and compares the final latents (rel-L2, f32; must be <= 1e-4). Exit status 0 when they agree.

Usage: python tools/golden/check_lora_in_diffusers.py --qie target/debug/qie --lora OUT_DIR
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("DIFFUSERS_ATTN_BACKEND", "native")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as plus_module  # noqa: E402
from diffusers import QwenImageEditPlusPipeline  # noqa: E402

from make_edit_fixtures import load_pipeline, remapped_areas  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CASE = REPO / "tests" / "fixtures" / "edit" / "plus"
PROMPT = "Put the cat from Picture 1 next to the 红色的花 in Picture 2, 保持风格一致."
VL_AREA, VAE_AREA, STEPS = 9216, 16384, 3


def diffusers_latents(lora_dir: Path) -> torch.Tensor:
    pipe = load_pipeline(QwenImageEditPlusPipeline, CASE / "model")
    pipe.load_lora_weights(str(lora_dir))
    images = [Image.open(CASE / "inputs" / f"image_{i}.png").convert("RGB") for i in range(2)]
    noise = load_file(str(CASE / "init_noise.safetensors"))["latents"]
    area_map = {plus_module.CONDITION_IMAGE_SIZE: VL_AREA, plus_module.VAE_IMAGE_SIZE: VAE_AREA}
    with remapped_areas(plus_module, area_map), torch.no_grad():
        out = pipe(image=images, prompt=PROMPT, negative_prompt=" ", num_inference_steps=STEPS,
                   true_cfg_scale=4.0, latents=noise.clone(), output_type="latent")
    return out.images.float()


def qie_latents(qie: Path, lora_dir: Path | None, work: Path) -> torch.Tensor:
    latents = work / "latents.safetensors"
    cmd = [str(qie), "edit", "--model", str(CASE / "model"), "--steps", str(STEPS),
           "--sequential-positions", "--vl-area", str(VL_AREA), "--vae-area", str(VAE_AREA),
           "--output-area", str(VAE_AREA), "--pil-vl-resize",
           "--image", str(CASE / "inputs" / "image_0.png"), "--image", str(CASE / "inputs" / "image_1.png"),
           "--prompt", PROMPT, "--init-noise", str(CASE / "init_noise.safetensors"),
           "--save-latents", str(latents), "--out", str(work / "out.png")]
    if lora_dir is not None:
        cmd += ["--lora", str(lora_dir / "pytorch_lora_weights.safetensors")]
    subprocess.run(cmd, check=True, env={**os.environ, "QIE_DEVICE": "cpu"})
    return load_file(str(latents))["latents"].float()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--qie", type=Path, required=True)
    ap.add_argument("--lora", type=Path, required=True, help="the folder qie train wrote")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ours = qie_latents(args.qie, args.lora, Path(tmp))
        ours_base = qie_latents(args.qie, None, Path(tmp))
    theirs = diffusers_latents(args.lora)
    base = diffusers_latents_without_lora()
    rel = float((ours - theirs).norm() / theirs.norm())
    rel_base = float((ours_base - base).norm() / base.norm())
    # What the LoRA changes, in each program: isolates the adapter from the base pipelines' own
    # (small) difference in this setup.
    delta_ours, delta_theirs = ours - ours_base, theirs - base
    rel_delta = float((delta_ours - delta_theirs).norm() / delta_theirs.norm())
    moved = float(delta_theirs.norm() / base.norm())
    print(f"qie vs diffusers: with the LoRA rel-L2 {rel:.3e}, without {rel_base:.3e}; "
          f"the LoRA's change: rel-L2 {rel_delta:.3e} (it moves the latents by {moved:.3e})")
    if moved < 1e-6:
        print("the LoRA does not change the edit: nothing was checked")
        return 1
    return 0 if rel_delta <= 1e-2 and rel <= rel_base * 1.5 + 1e-6 else 1


def diffusers_latents_without_lora() -> torch.Tensor:
    pipe = load_pipeline(QwenImageEditPlusPipeline, CASE / "model")
    images = [Image.open(CASE / "inputs" / f"image_{i}.png").convert("RGB") for i in range(2)]
    noise = load_file(str(CASE / "init_noise.safetensors"))["latents"]
    area_map = {plus_module.CONDITION_IMAGE_SIZE: VL_AREA, plus_module.VAE_IMAGE_SIZE: VAE_AREA}
    with remapped_areas(plus_module, area_map), torch.no_grad():
        out = pipe(image=images, prompt=PROMPT, negative_prompt=" ", num_inference_steps=STEPS,
                   true_cfg_scale=4.0, latents=noise.clone(), output_type="latent")
    return out.images.float()


if __name__ == "__main__":
    sys.exit(main())
