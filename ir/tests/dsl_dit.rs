//! A Qwen-Image-like DiT written in the DSL, lowered at full size: checks the checkpoint names and
//! shapes of one block, the output type, and that lowering stays fast.

use qie_ir::dsl::Program;
use qie_ir::{DType, Op, TensorType};
use serde_json::json;
use std::time::Instant;

const DIT: &str = r#"
const inner = config.num_attention_heads * config.attention_head_dim;

// Sinusoidal timestep features as diffusers' Timesteps(256, flip_sin_to_cos=True, shift=0).
fn timestep_features(t, n = 256) {
    let half = n ~/ 2;
    let freqs = exp(cast(arange(half), f32) * (0.0 - log(10000.0) / half));
    let args = unsqueeze(t, 1) * unsqueeze(freqs, 0);
    concat([cos(args), sin(args)], -1)
}

// Interleaved complex rotation of pairs (x[2i], x[2i+1]); cos/sin are [S, D/2].
fn apply_rope(x, cos_t, sin_t) {
    let s = shape(x);
    let pairs = reshape(x, [s[0], s[1], s[2], s[3] ~/ 2, 2]);
    let x0 = squeeze(slice(pairs, 4, 0, 1), 4);
    let x1 = squeeze(slice(pairs, 4, 1, 2), 4);
    let c = reshape(cos_t, [1, s[1], 1, s[3] ~/ 2]);
    let sn = reshape(sin_t, [1, s[1], 1, s[3] ~/ 2]);
    let r0 = x0 * c - x1 * sn;
    let r1 = x0 * sn + x1 * c;
    reshape(concat([unsqueeze(r0, -1), unsqueeze(r1, -1)], -1), s)
}

fn modulate(x, params) {
    let (shift, scale, gate) = chunk(params, 3, -1);
    (x * (1 + unsqueeze(scale, 1)) + unsqueeze(shift, 1), unsqueeze(gate, 1))
}

module TimestepEmbedding(dim) {
    sub linear_1 = Linear(256, dim);
    sub linear_2 = Linear(dim, dim);
    fn forward(t) { linear_2(silu(linear_1(timestep_features(t)))) }
}

module FeedForward(dim, mult = 4) {
    sub proj = Linear(dim, dim * mult) @ "net.0.proj";
    sub out = Linear(dim * mult, dim) @ "net.2";
    fn forward(x) { out(gelu_tanh(proj(x))) }
}

module JointAttention(dim, heads, head_dim) {
    sub to_q = Linear(dim, heads * head_dim);
    sub to_k = Linear(dim, heads * head_dim);
    sub to_v = Linear(dim, heads * head_dim);
    sub add_q_proj = Linear(dim, heads * head_dim);
    sub add_k_proj = Linear(dim, heads * head_dim);
    sub add_v_proj = Linear(dim, heads * head_dim);
    sub norm_q = RMSNorm(head_dim, 1e-6);
    sub norm_k = RMSNorm(head_dim, 1e-6);
    sub norm_added_q = RMSNorm(head_dim, 1e-6);
    sub norm_added_k = RMSNorm(head_dim, 1e-6);
    sub to_out = Linear(heads * head_dim, dim) @ "to_out.0";
    sub to_add_out = Linear(heads * head_dim, dim);

    fn heads_of(x) { reshape(x, [dim(x, 0), dim(x, 1), heads, head_dim]) }

    fn forward(img, txt, rope, mask) {
        let (img_cos, img_sin, txt_cos, txt_sin) = rope;
        let q = concat([apply_rope(norm_added_q(heads_of(add_q_proj(txt))), txt_cos, txt_sin),
                        apply_rope(norm_q(heads_of(to_q(img))), img_cos, img_sin)], 1);
        let k = concat([apply_rope(norm_added_k(heads_of(add_k_proj(txt))), txt_cos, txt_sin),
                        apply_rope(norm_k(heads_of(to_k(img))), img_cos, img_sin)], 1);
        let v = concat([heads_of(add_v_proj(txt)), heads_of(to_v(img))], 1);
        let o = attention(q, k, v, mask = mask);
        let o = reshape(o, [dim(o, 0), dim(o, 1), heads * head_dim]);
        let s_txt = dim(txt, 1);
        (to_out(slice(o, 1, s_txt, dim(o, 1))), to_add_out(slice(o, 1, 0, s_txt)))
    }
}

module Block(dim, heads, head_dim) {
    sub img_mod = Linear(dim, 6 * dim) @ "img_mod.1";
    sub txt_mod = Linear(dim, 6 * dim) @ "txt_mod.1";
    sub img_norm1 = LayerNorm(dim, 1e-6, elementwise_affine = false);
    sub txt_norm1 = LayerNorm(dim, 1e-6, elementwise_affine = false);
    sub img_norm2 = LayerNorm(dim, 1e-6, elementwise_affine = false);
    sub txt_norm2 = LayerNorm(dim, 1e-6, elementwise_affine = false);
    sub attn = JointAttention(dim, heads, head_dim);
    sub img_mlp = FeedForward(dim);
    sub txt_mlp = FeedForward(dim);

    fn forward(img, txt, temb, rope, mask) {
        let (img_mod1, img_mod2) = chunk(img_mod(silu(temb)), 2, -1);
        let (txt_mod1, txt_mod2) = chunk(txt_mod(silu(temb)), 2, -1);
        let (img_x, img_gate1) = modulate(img_norm1(img), img_mod1);
        let (txt_x, txt_gate1) = modulate(txt_norm1(txt), txt_mod1);
        let (img_attn, txt_attn) = attn(img_x, txt_x, rope, mask);
        let img = img + img_gate1 * img_attn;
        let txt = txt + txt_gate1 * txt_attn;
        let (img_x2, img_gate2) = modulate(img_norm2(img), img_mod2);
        let img = img + img_gate2 * img_mlp(img_x2);
        let (txt_x2, txt_gate2) = modulate(txt_norm2(txt), txt_mod2);
        let txt = txt + txt_gate2 * txt_mlp(txt_x2);
        (img, txt)
    }
}

module QwenImageTransformer2DModel() {
    let head_dim = config.attention_head_dim;
    sub img_in = Linear(config.in_channels, inner);
    sub txt_norm = RMSNorm(config.joint_attention_dim, 1e-6);
    sub txt_in = Linear(config.joint_attention_dim, inner);
    sub time_embed = TimestepEmbedding(inner) @ "time_text_embed.timestep_embedder";
    sub transformer_blocks = config.num_layers x Block(inner, config.num_attention_heads, head_dim);
    sub norm_out_linear = Linear(inner, 2 * inner) @ "norm_out.linear";
    sub norm_out = LayerNorm(inner, 1e-6, elementwise_affine = false) @ "norm_out.norm";
    sub proj_out = Linear(inner, config.patch_size * config.patch_size * config.out_channels);

    fn forward(hidden_states: f32[B, S_img, config.in_channels],
               encoder_hidden_states: f32[B, S_txt, config.joint_attention_dim],
               encoder_hidden_states_mask: bool[B, S_txt] = none,
               timestep: f32[B],
               img_cos: f32[S_img, head_dim ~/ 2], img_sin: f32[S_img, head_dim ~/ 2],
               txt_cos: f32[S_txt, head_dim ~/ 2], txt_sin: f32[S_txt, head_dim ~/ 2]) {
        let img = img_in(hidden_states);
        let txt = txt_in(txt_norm(encoder_hidden_states));
        let temb = time_embed(timestep * 1000.0);
        let mask = if is_none(encoder_hidden_states_mask) { none } else {
            concat([encoder_hidden_states_mask, full([B, S_img], true, bool)], 1)
        };
        let rope = (img_cos, img_sin, txt_cos, txt_sin);
        for blk in transformer_blocks {
            let (i, t) = blk(img, txt, temb, rope, mask);
            img = i;
            txt = t;
        }
        let (scale, shift) = chunk(norm_out_linear(silu(temb)), 2, 1);
        let x = norm_out(img) * (1 + unsqueeze(scale, 1)) + unsqueeze(shift, 1);
        output sample = proj_out(x);
    }
}
"#;

fn config(layers: usize) -> serde_json::Value {
    json!({
        "num_layers": layers, "num_attention_heads": 24, "attention_head_dim": 128,
        "joint_attention_dim": 3584, "in_channels": 64, "out_channels": 16, "patch_size": 2,
        "axes_dims_rope": [16, 56, 56]
    })
}

fn inputs(s_img: usize, s_txt: usize) -> Vec<(String, TensorType)> {
    let f = |d: &[usize]| TensorType::new(DType::F32, d);
    vec![
        ("hidden_states".into(), f(&[1, s_img, 64])),
        ("encoder_hidden_states".into(), f(&[1, s_txt, 3584])),
        (
            "encoder_hidden_states_mask".into(),
            TensorType::new(DType::Bool, &[1, s_txt]),
        ),
        ("timestep".into(), f(&[1])),
        ("img_cos".into(), f(&[s_img, 64])),
        ("img_sin".into(), f(&[s_img, 64])),
        ("txt_cos".into(), f(&[s_txt, 64])),
        ("txt_sin".into(), f(&[s_txt, 64])),
    ]
}

fn program() -> Program {
    let read = |n: &str| (n == "dit.qie").then(|| DIT.to_string());
    Program::from_sources("dit.qie", &read).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn dit_block_checkpoint_layout() {
    let g = program()
        .lower(&config(2), &inputs(64, 7), &[])
        .unwrap_or_else(|e| panic!("{e}"));
    qie_ir::verify(&g).unwrap_or_else(|e| panic!("{e}"));
    let params: Vec<(&str, Vec<usize>)> = g
        .params()
        .into_iter()
        .map(|(n, id)| (n, g.ty(id).shape.to_vec()))
        .collect();
    let find = |name: &str| {
        params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s.clone())
    };
    assert_eq!(
        find("transformer_blocks.1.attn.to_q.weight"),
        Some(vec![3072, 3072])
    );
    assert_eq!(
        find("transformer_blocks.1.attn.norm_added_k.weight"),
        Some(vec![128])
    );
    assert_eq!(
        find("transformer_blocks.1.attn.to_out.0.bias"),
        Some(vec![3072])
    );
    assert_eq!(
        find("transformer_blocks.0.img_mod.1.weight"),
        Some(vec![18432, 3072])
    );
    assert_eq!(
        find("transformer_blocks.0.txt_mlp.net.0.proj.weight"),
        Some(vec![12288, 3072])
    );
    assert_eq!(
        find("transformer_blocks.0.txt_mlp.net.2.weight"),
        Some(vec![3072, 12288])
    );
    assert_eq!(
        find("time_text_embed.timestep_embedder.linear_1.weight"),
        Some(vec![3072, 256])
    );
    assert_eq!(find("norm_out.linear.weight"), Some(vec![6144, 3072]));
    assert_eq!(find("proj_out.weight"), Some(vec![64, 3072]));
    assert_eq!(find("txt_norm.weight"), Some(vec![3584]));
    assert!(
        find("transformer_blocks.0.img_norm1.weight").is_none(),
        "no affine"
    );
    // Per block: 2 modulation linears, 8 attention linears, 4 qk norms, 2 feed-forwards of 2 linears.
    let per_block = params
        .iter()
        .filter(|(n, _)| n.starts_with("transformer_blocks.0."))
        .count();
    assert_eq!(per_block, 2 * 2 + 8 * 2 + 4 + 2 * 2 * 2);
    let out = g.output("sample").unwrap();
    assert_eq!(g.ty(out), &TensorType::new(DType::F32, &[1, 64, 64]));
    assert_eq!(
        g.nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Attention { .. }))
            .count(),
        2
    );
}

#[test]
fn full_size_dit_lowers_quickly() {
    let prog = program();
    let t = Instant::now();
    let g = prog
        .lower(&config(60), &inputs(4096, 512), &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let dt = t.elapsed();
    println!("lowered 60-block DiT: {} nodes in {dt:?}", g.len());
    assert!(g.len() > 20_000, "{} nodes", g.len());
    // The diffusers checkpoint of the 60-block model has 1933 tensors.
    assert_eq!(g.params().len(), 60 * 32 + 13);
    // Generous bound for a debug-assertion build on a shared machine; release is far below.
    assert!(dt.as_secs_f64() < 5.0, "lowering took {dt:?}");
    // Without the optional mask input.
    let no_mask: Vec<_> = inputs(16, 3)
        .into_iter()
        .filter(|(n, _)| n != "encoder_hidden_states_mask")
        .collect();
    let g = prog
        .lower(&config(1), &no_mask, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(g.nodes.iter().all(|n| n.ty.dtype != DType::Bool));
}
