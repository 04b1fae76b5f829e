#!/usr/bin/env python3
"""Independent plain-torch re-implementation of the QwenImage DiT forward, written from NOTES.md
(no diffusers import), checked against every case in tests/fixtures/dit.

It is a second, readable spec of the semantics: if it agrees with the diffusers-generated
expected.safetensors to ~1e-6, NOTES.md describes the forward correctly. Needs only torch +
safetensors:  python tools/golden/check_dit_reference.py
"""
import glob
import json
import math
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

torch.set_num_threads(1)
root = str(Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "dit")
TOL = 1e-5
failed = []

def load_weights(tdir):
    w = {}
    for f in sorted(glob.glob(tdir + "/*.safetensors")):
        w.update({k: v.float() for k, v in load_file(f).items()})
    return w

def lin(w, name, x): return x @ w[name + ".weight"].T + w[name + ".bias"]
def rms(x, g, eps=1e-6): return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g
def ln(x, eps=1e-6): return F.layer_norm(x, (x.shape[-1],), eps=eps)

def axis_angles(pos, dim, theta=10000.0):
    inv = 1.0 / torch.pow(theta, torch.arange(0, dim, 2).float() / dim)
    return pos.float()[:, None] * inv[None]

def rope_tables(img_shapes, s_txt, axes, layer3d):
    ang = []
    maxv = 0
    n = len(img_shapes)
    for i, (f, h, w) in enumerate(img_shapes):
        # frame position: image index i (layer3d: last image = -1); frames assumed == 1
        fi = torch.full((f * h * w,), -1 if (layer3d and i == n - 1) else i)
        hp = torch.arange(h) - (h - h // 2)  # scale_rope: centred, e.g. h=4 -> -2,-1,0,1
        wp = torch.arange(w) - (w - w // 2)
        hh = hp[:, None].expand(h, w).reshape(-1).repeat(f)
        ww = wp[None, :].expand(h, w).reshape(-1).repeat(f)
        ang.append(torch.cat([axis_angles(fi, axes[0]), axis_angles(hh, axes[1]), axis_angles(ww, axes[2])], -1))
        maxv = max(maxv, h // 2, w // 2)
    if layer3d: maxv = max(maxv, n - 1)
    tp = torch.arange(maxv, maxv + s_txt)
    tang = torch.cat([axis_angles(tp, a) for a in axes], -1)
    return torch.cat(ang, 0), tang

def apply_rope(x, ang):  # x [B,S,H,D], interleaved pairs
    c, s = torch.cos(ang)[None, :, None, :], torch.sin(ang)[None, :, None, :]
    xr, xi = x[..., 0::2], x[..., 1::2]
    return torch.stack([xr * c - xi * s, xr * s + xi * c], -1).flatten(-2)

def temb_fn(w, t, addc):
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half).float() / half)
    # order matters at the 1e-5 level: diffusers computes (t * f) first, then * 1000
    a = 1000 * (t.float()[:, None] * freqs[None])
    e = torch.cat([torch.cos(a), torch.sin(a)], -1)
    e = lin(w, "time_text_embed.timestep_embedder.linear_2", F.silu(lin(w, "time_text_embed.timestep_embedder.linear_1", e)))
    if addc is not None: e = e + w["time_text_embed.addition_t_embedding.weight"][addc]
    return e

def run(case):
    d = f"{root}/{case}"
    cfg = json.load(open(d + "/transformer/config.json")); meta = json.load(open(d + "/meta.json"))
    w = load_weights(d + "/transformer"); inp = load_file(d + "/inputs.safetensors"); exp = load_file(d + "/expected.safetensors")
    H, Dh = cfg["num_attention_heads"], cfg["attention_head_dim"]
    B = meta["batch"]; shapes = meta["img_shapes"]
    x = lin(w, "img_in", inp["hidden_states"])
    c = lin(w, "txt_in", rms(inp["encoder_hidden_states"], w["txt_norm.weight"]))
    t = inp["timestep"]
    zc = cfg["zero_cond_t"]
    if zc: t = torch.cat([t, t * 0])
    temb = temb_fn(w, t, inp.get("additional_t_cond"))
    n_tgt = math.prod(shapes[0])
    S = x.shape[1]
    ia, ta = rope_tables(shapes, c.shape[1], cfg["axes_dims_rope"], cfg["use_layer3d_rope"])
    keymask = torch.cat([inp["encoder_hidden_states_mask"].bool(), torch.ones(B, S, dtype=torch.bool)], 1)
    checks = {"temb": temb, "img_in": x, "txt_in": c,
              "rope_img_cos": torch.cos(ia), "rope_img_sin": torch.sin(ia), "rope_txt_cos": torch.cos(ta), "rope_txt_sin": torch.sin(ta)}
    for L in range(cfg["num_layers"]):
        p = f"transformer_blocks.{L}."
        im = lin(w, p + "img_mod.1", F.silu(temb))  # [B or 2B, 6D]
        tm = lin(w, p + "txt_mod.1", F.silu(temb[:B]))
        def mods(m):
            s1, sc1, g1, s2, sc2, g2 = m.chunk(6, -1)  # shift, scale, gate (msa) then (mlp)
            return (s1, sc1, g1), (s2, sc2, g2)
        def per_tok(v):  # v [B or 2B, D] -> [B,S,D]
            if zc:
                sel = torch.zeros(S, dtype=torch.bool); sel[n_tgt:] = True
                return torch.where(sel[None, :, None], v[B:][:, None], v[:B][:, None])
            return v[:, None]
        (is1, isc1, ig1), (is2, isc2, ig2) = mods(im)
        (ts1, tsc1, tg1), (ts2, tsc2, tg2) = mods(tm)
        xm = ln(x) * (1 + per_tok(isc1)) + per_tok(is1)
        cm = ln(c) * (1 + tsc1[:, None]) + ts1[:, None]
        def heads(v): return v.unflatten(-1, (H, Dh))
        q = apply_rope(rms(heads(lin(w, p + "attn.to_q", xm)), w[p + "attn.norm_q.weight"]), ia)
        k = apply_rope(rms(heads(lin(w, p + "attn.to_k", xm)), w[p + "attn.norm_k.weight"]), ia)
        v = heads(lin(w, p + "attn.to_v", xm))
        tq = apply_rope(rms(heads(lin(w, p + "attn.add_q_proj", cm)), w[p + "attn.norm_added_q.weight"]), ta)
        tk = apply_rope(rms(heads(lin(w, p + "attn.add_k_proj", cm)), w[p + "attn.norm_added_k.weight"]), ta)
        tv = heads(lin(w, p + "attn.add_v_proj", cm))
        Q = torch.cat([tq, q], 1).transpose(1, 2); K = torch.cat([tk, k], 1).transpose(1, 2); V = torch.cat([tv, v], 1).transpose(1, 2)
        sc = Q @ K.transpose(-1, -2) / math.sqrt(Dh)
        sc = sc.masked_fill(~keymask[:, None, None, :], float("-inf"))
        o = (sc.softmax(-1) @ V).transpose(1, 2).flatten(2)
        St = c.shape[1]
        x = x + per_tok(ig1) * lin(w, p + "attn.to_out.0", o[:, St:])
        c = c + tg1[:, None] * lin(w, p + "attn.to_add_out", o[:, :St])
        def mlp(pref, h): return lin(w, pref + ".net.2", F.gelu(lin(w, pref + ".net.0.proj", h), approximate="tanh"))
        x = x + per_tok(ig2) * mlp(p + "img_mlp", ln(x) * (1 + per_tok(isc2)) + per_tok(is2))
        c = c + tg2[:, None] * mlp(p + "txt_mlp", ln(c) * (1 + tsc2[:, None]) + ts2[:, None])
        if L == 0: checks["block0_img"] = x; checks["block0_txt"] = c
    e = lin(w, "norm_out.linear", F.silu(temb[:B]))
    scale, shift = e.chunk(2, -1)  # NOTE: scale first
    out = lin(w, "proj_out", ln(x) * (1 + scale[:, None]) + shift[:, None])
    checks["sample"] = out
    worst = 0
    for k, v in checks.items():
        dd = (v - exp[k]).abs().max().item(); worst = max(worst, dd)
        if dd > TOL:
            print(f"   {case}.{k}: MISMATCH {dd:.3e}")
            failed.append(f"{case}.{k}")
    print(f"{case}: max abs diff over {len(checks)} tensors = {worst:.3e}")

for case in sorted(os.listdir(root)):
    run(case)
print("FAILED: " + ", ".join(failed) if failed else "all cases match")
sys.exit(1 if failed else 0)
