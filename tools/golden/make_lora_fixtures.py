#!/usr/bin/env python3
"""Generate LoRA golden fixtures for the Qwen-Image DiT (diffusers 0.42.1 + peft).

A random peft LoRA (rank 4, lora_alpha 8, the DiffSynth-Studio target modules) on the tiny DiT of
tests/fixtures/dit/single/transformer, saved in the key layouts found in the wild:

  peft.safetensors       QwenImagePipeline.save_lora_weights: `transformer.<module>.lora_A.weight`,
                         rank/alpha only in the safetensors metadata (`lora_adapter_metadata`)
  diffsynth.safetensors  DiffSynth-Studio: `<module>.lora_A.default.weight`, no prefix, no alpha
                         (DiffSynth applies B @ A unscaled, so alpha / rank = 2 is folded into B)
  kohya.safetensors      kohya / musubi: `lora_unet_<module_with_underscores>.lora_down.weight`,
                         `.lora_up.weight`, `.alpha` (scalar)
  comfyui.safetensors    ComfyUI: `diffusion_model.<module>.lora_down.weight` / `.lora_up.weight` / `.alpha`

expected.safetensors holds `sample`: the DiT forward on tests/fixtures/dit/single/inputs.safetensors
with the LoRA loaded from peft.safetensors through diffusers (QwenImagePipeline.lora_state_dict +
load_lora_adapter) and set_adapters(weight 0.7), unfused (peft's own forward), plus `sample_base`
without the LoRA. The script checks that diffusers' loader reads the kohya/ComfyUI/DiffSynth files
to the same output.

Usage: python tools/golden/make_lora_fixtures.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("DIFFUSERS_ATTN_BACKEND", "native")

import torch  # noqa: E402
from peft import LoraConfig  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import diffusers  # noqa: E402
from diffusers import QwenImagePipeline, QwenImageTransformer2DModel  # noqa: E402

EXPECTED_DIFFUSERS = "0.42.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
DIT_CASE = REPO_ROOT / "tests" / "fixtures" / "dit" / "single"
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "lora"

RANK, ALPHA, SCALE, SEED = 4, 8, 0.7, 4242
TARGETS = [
    "to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0",
    "to_add_out", "img_mlp.net.2", "img_mod.1", "txt_mlp.net.2", "txt_mod.1",
]


def load_dit():
    return QwenImageTransformer2DModel.from_pretrained(DIT_CASE / "transformer").eval()


def forward(model):
    inputs = load_file(str(DIT_CASE / "inputs.safetensors"))
    meta = json.loads((DIT_CASE / "meta.json").read_text())
    with torch.no_grad():
        return model(
            hidden_states=inputs["hidden_states"],
            encoder_hidden_states=inputs["encoder_hidden_states"],
            encoder_hidden_states_mask=inputs["encoder_hidden_states_mask"],
            timestep=inputs["timestep"],
            img_shapes=[[tuple(s) for s in meta["img_shapes"]]],
            return_dict=False,
        )[0]


def random_lora(model):
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, init_lora_weights=True)
    model.add_adapter(config, adapter_name="default")
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return config


def module_of(key):
    """`transformer_blocks.0.attn.to_q.lora_A.weight` -> (`transformer_blocks.0.attn.to_q`, `A`)."""
    base, part, _ = key.rsplit(".", 2)
    return base, part[-1]


def save_formats(peft_sd, config, out: Path):
    metadata = config.to_dict()
    metadata["target_modules"] = sorted(metadata["target_modules"])  # a set: keep files reproducible
    QwenImagePipeline.save_lora_weights(
        out, transformer_lora_layers=peft_sd, weight_name="peft.safetensors",
        transformer_lora_adapter_metadata=metadata,
    )
    diffsynth, kohya, comfy = {}, {}, {}
    for key, t in peft_sd.items():
        module, ab = module_of(key)
        t = t.contiguous()
        folded = t * (ALPHA / RANK) if ab == "B" else t
        diffsynth[f"{module}.lora_{ab}.default.weight"] = folded.contiguous()
        updown = "down" if ab == "A" else "up"
        flat = "lora_unet_" + module.replace(".", "_")
        kohya[f"{flat}.lora_{updown}.weight"] = t.clone()
        comfy[f"diffusion_model.{module}.lora_{updown}.weight"] = t.clone()
        if ab == "A":
            kohya[f"{flat}.alpha"] = torch.tensor(float(ALPHA))
            comfy[f"diffusion_model.{module}.alpha"] = torch.tensor(float(ALPHA))
    save_file(diffsynth, str(out / "diffsynth.safetensors"))
    save_file(kohya, str(out / "kohya.safetensors"), metadata={"ss_network_dim": str(RANK)})
    save_file(comfy, str(out / "comfyui.safetensors"))


def forward_with_file(path: Path):
    model = load_dit()
    state_dict, metadata = QwenImagePipeline.lora_state_dict(str(path), return_lora_metadata=True)
    model.load_lora_adapter(state_dict, adapter_name="x", metadata=metadata, prefix="transformer")
    model.set_adapters(["x"], [SCALE])
    return forward(model)


def rel_l2(a, b):
    return float((a - b).norm() / b.norm())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    if diffusers.__version__ != EXPECTED_DIFFUSERS:
        raise SystemExit(f"expected diffusers {EXPECTED_DIFFUSERS}, found {diffusers.__version__}")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)

    base = forward(load_dit())
    model = load_dit()
    config = random_lora(model)
    model.set_adapters(["default"], [SCALE])
    in_memory = forward(model)
    peft_sd = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    save_formats(peft_sd, config, args.out)

    sample = forward_with_file(args.out / "peft.safetensors")
    assert rel_l2(sample, in_memory) < 1e-6, "peft file round trip"
    assert rel_l2(sample, base) > 1e-2, "the LoRA must change the output"
    for name in ("diffsynth", "kohya", "comfyui"):
        err = rel_l2(forward_with_file(args.out / f"{name}.safetensors"), sample)
        print(f"diffusers reads {name}: rel-L2 {err:.1e}")
        assert err < 1e-5, name
    save_file(
        {"sample": sample.contiguous(), "sample_base": base.contiguous()},
        str(args.out / "expected.safetensors"),
    )
    meta = dict(rank=RANK, alpha=ALPHA, scale=SCALE, targets=TARGETS, dit_case="dit/single",
                lora_changes_output_rel_l2=rel_l2(sample, base))
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote LoRA fixtures to {args.out} (LoRA moves the output by rel-L2 {rel_l2(sample, base):.3f})")


if __name__ == "__main__":
    main()
