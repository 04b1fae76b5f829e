#!/usr/bin/env python3
"""Generate LoRA gradient fixtures for `qie backward dit` (diffusers 0.42.1 + peft, f32, CPU).

For each tiny DiT case of tests/fixtures/dit (multi_ref: an edit with two reference images;
zero_cond_t: the same with Qwen-Image-Edit-2511's zero_cond_t), a random peft LoRA (rank 4,
lora_alpha 8, the DiffSynth-Studio target modules, A and B both random so every gradient is
non-zero) is added and one training step's loss is differentiated:

    loss = mean((sample[:, :S_target] - target) ** 2)     (f32; S_target = the first image's tokens)

Written to tests/fixtures/lora_grad/<case>/:
  lora.safetensors      the adapter as diffusers saves it (`transformer.<module>.lora_A.weight`, rank
                        and alpha in the `lora_adapter_metadata` header)
  target.safetensors    `target` [B, S_target, 64]
  expected.safetensors  `loss` and the gradient of every tensor of lora.safetensors under its name

Usage: python tools/golden/make_lora_grad_fixtures.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
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
DIT_FIXTURES = REPO_ROOT / "tests" / "fixtures" / "dit"
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "lora_grad"
CASES = ["multi_ref", "zero_cond_t"]

RANK, ALPHA, SEED = 4, 8, 777
TARGETS = [
    "to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0",
    "to_add_out", "img_mlp.net.2", "img_mod.1", "txt_mlp.net.2", "txt_mod.1",
]


def make_case(case: str, out: Path, gen: torch.Generator):
    src = DIT_FIXTURES / case
    meta = json.loads((src / "meta.json").read_text())
    inputs = load_file(str(src / "inputs.safetensors"))
    model = QwenImageTransformer2DModel.from_pretrained(src / "transformer").eval()
    model.requires_grad_(False)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, init_lora_weights=True)
    model.add_adapter(config, adapter_name="default")
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
                p.requires_grad_(True)

    s_target = math.prod(meta["img_shapes"][0])
    batch = inputs["hidden_states"].shape[0]
    channels = model.config.patch_size ** 2 * model.config.out_channels
    target = torch.randn((batch, s_target, channels), generator=gen)
    kwargs = dict(
        hidden_states=inputs["hidden_states"],
        encoder_hidden_states=inputs["encoder_hidden_states"],
        timestep=inputs["timestep"],
        img_shapes=[[tuple(s) for s in meta["img_shapes"]]] * batch,
        return_dict=False,
    )
    if "encoder_hidden_states_mask" in inputs:
        kwargs["encoder_hidden_states_mask"] = inputs["encoder_hidden_states_mask"]
    sample = model(**kwargs)[0]
    loss = ((sample[:, :s_target].float() - target) ** 2).mean()
    loss.backward()

    # The file's names (diffusers' save_lora_weights) for each peft parameter.
    peft_sd = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    dest = out / case
    dest.mkdir(parents=True, exist_ok=True)
    metadata = config.to_dict()
    metadata["target_modules"] = sorted(metadata["target_modules"])
    QwenImagePipeline.save_lora_weights(
        dest, transformer_lora_layers=peft_sd, weight_name="lora.safetensors",
        transformer_lora_adapter_metadata=metadata,
    )
    saved = load_file(str(dest / "lora.safetensors"))
    grads = {"loss": loss.detach().reshape(())}
    params = dict(model.named_parameters())
    for key in saved:
        module = key.removeprefix("transformer.")
        # peft's parameter: <module>.lora_A.default.weight
        base, ab, w = module.rsplit(".", 2)
        p = params[f"{base}.{ab}.default.{w}"]
        assert torch.equal(p.detach(), saved[key]), key
        # None: the loss does not depend on it (the last block's text stream feeds nothing).
        g = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
        grads[key] = g.contiguous()
    zero = [k for k, g in grads.items() if k != "loss" and not bool(g.abs().max() > 0)]
    assert len(zero) < len(saved) // 4, f"{case}: too many zero gradients: {zero}"
    save_file({"target": target.contiguous()}, str(dest / "target.safetensors"))
    save_file(grads, str(dest / "expected.safetensors"))
    info = dict(dit_case=f"dit/{case}", rank=RANK, alpha=ALPHA, targets=TARGETS, s_target=s_target,
                img_shapes=meta["img_shapes"], loss=float(loss.detach()), tensors=len(saved), zero_gradients=zero)
    (dest / "meta.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"{case}: loss {float(loss.detach()):.6f}, {len(saved)} LoRA tensors, {len(zero)} with zero gradient")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    if diffusers.__version__ != EXPECTED_DIFFUSERS:
        raise SystemExit(f"expected diffusers {EXPECTED_DIFFUSERS}, found {diffusers.__version__}")
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    for case in CASES:
        make_case(case, args.out, gen)


if __name__ == "__main__":
    main()
