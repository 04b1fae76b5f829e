//! Tensor names of LoRA files: which module a key belongs to, which factor it holds, and which
//! tool wrote it.

use std::fmt;

/// The key layouts qie reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraFormat {
    /// peft / diffusers: `transformer.<module>.lora_A.weight` (prefix optional), alpha in metadata.
    Peft,
    /// DiffSynth-Studio: `<module>.lora_A.default.weight`, no prefix, no alpha.
    DiffSynth,
    /// kohya / musubi-tuner: `lora_unet_<module_with_underscores>.lora_down.weight` + `.alpha`.
    Kohya,
    /// ComfyUI: `diffusion_model.<module>.lora_down.weight` (or lora_A) + `.alpha`.
    ComfyUi,
}

impl fmt::Display for LoraFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LoraFormat::Peft => "peft/diffusers",
            LoraFormat::DiffSynth => "DiffSynth",
            LoraFormat::Kohya => "kohya",
            LoraFormat::ComfyUi => "ComfyUI",
        })
    }
}

/// A module as a LoRA key names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ModuleName {
    /// The DiT's own dotted name (`transformer_blocks.0.attn.to_q`).
    Dotted(String),
    /// kohya's flattened name (`transformer_blocks_0_attn_to_q`), resolved against the DiT later.
    Flat(String),
}

impl fmt::Display for ModuleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModuleName::Dotted(s) | ModuleName::Flat(s) => f.write_str(s),
        }
    }
}

/// Which tensor of a module's LoRA a key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Factor {
    /// `lora_A` / `lora_down`: [rank, in]
    Down,
    /// `lora_B` / `lora_up`: [out, rank]
    Up,
    /// `alpha`: a scalar
    Alpha,
}

/// One parsed key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedKey {
    pub module: ModuleName,
    pub factor: Factor,
    pub format: LoraFormat,
}

/// Variants of low-rank adapters qie does not merge (they need more than `B @ A`).
const UNSUPPORTED: [(&str, &str); 6] = [
    ("dora_scale", "DoRA"),
    ("lora_magnitude_vector", "DoRA"),
    ("hada_", "LoHa"),
    ("lokr_", "LoKr"),
    (".lora_B.bias", "LoRA bias"),
    (".lora_up.bias", "LoRA bias"),
];

/// Parses `key`; `Err` carries the reason it is not a LoRA tensor qie can merge.
pub fn parse_key(key: &str) -> Result<ParsedKey, String> {
    for (needle, what) in UNSUPPORTED {
        if key.contains(needle) {
            return Err(format!("{what} tensors are not supported"));
        }
    }
    if key.ends_with(".diff") || key.ends_with(".diff_b") {
        return Err("full weight / bias diffs are not supported".to_string());
    }
    let (rest, flat, prefix_format) = strip_prefix(key);
    let (module, factor, adapter) = split_suffix(rest).ok_or_else(|| {
        "not a LoRA tensor (expected .lora_A/.lora_B/.lora_down/.lora_up .weight or .alpha)"
            .to_string()
    })?;
    if module.is_empty() {
        return Err("no module name before the LoRA suffix".to_string());
    }
    let format = match (prefix_format, adapter) {
        (Some(f), _) => f,
        (None, true) => LoraFormat::DiffSynth,
        (None, false) => LoraFormat::Peft,
    };
    let module = if flat {
        ModuleName::Flat(module.to_string())
    } else {
        ModuleName::Dotted(module.to_string())
    };
    Ok(ParsedKey {
        module,
        factor,
        format,
    })
}

/// Removes the tool's prefix: (rest, flattened name?, format the prefix implies).
fn strip_prefix(key: &str) -> (&str, bool, Option<LoraFormat>) {
    const PREFIXES: [(&str, bool, Option<LoraFormat>); 5] = [
        ("lora_unet_", true, Some(LoraFormat::Kohya)),
        ("lycoris_", true, Some(LoraFormat::Kohya)),
        ("diffusion_model.", false, Some(LoraFormat::ComfyUi)),
        ("base_model.model.", false, Some(LoraFormat::Peft)),
        ("transformer.", false, Some(LoraFormat::Peft)),
    ];
    for (prefix, flat, format) in PREFIXES {
        if let Some(rest) = key.strip_prefix(prefix) {
            return (rest, flat, format);
        }
    }
    (key, false, None)
}

/// `<module>.<suffix>` -> (module, factor, had a peft adapter name like `.default.`).
fn split_suffix(rest: &str) -> Option<(&str, Factor, bool)> {
    if let Some(module) = rest.strip_suffix(".alpha") {
        return Some((module, Factor::Alpha, false));
    }
    let without_weight = rest.strip_suffix(".weight")?;
    for (tag, factor) in [
        (".lora_A", Factor::Down),
        (".lora_down", Factor::Down),
        (".lora_B", Factor::Up),
        (".lora_up", Factor::Up),
    ] {
        if let Some(module) = without_weight.strip_suffix(tag) {
            return Some((module, factor, false));
        }
        // peft adapter name between the factor and `.weight` (DiffSynth: `.default`)
        if let Some(pos) = without_weight.rfind(&format!("{tag}.")) {
            let adapter = &without_weight[pos + tag.len() + 1..];
            if !adapter.is_empty() && !adapter.contains('.') {
                return Some((&without_weight[..pos], factor, true));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dotted(s: &str) -> ModuleName {
        ModuleName::Dotted(s.to_string())
    }

    #[test]
    fn recognises_every_layout() {
        let m = "transformer_blocks.0.attn.to_q";
        let cases = [
            (
                "transformer.transformer_blocks.0.attn.to_q.lora_A.weight",
                Factor::Down,
                LoraFormat::Peft,
            ),
            (
                "transformer_blocks.0.attn.to_q.lora_B.weight",
                Factor::Up,
                LoraFormat::Peft,
            ),
            (
                "transformer_blocks.0.attn.to_q.lora_A.default.weight",
                Factor::Down,
                LoraFormat::DiffSynth,
            ),
            (
                "diffusion_model.transformer_blocks.0.attn.to_q.lora_up.weight",
                Factor::Up,
                LoraFormat::ComfyUi,
            ),
            (
                "diffusion_model.transformer_blocks.0.attn.to_q.alpha",
                Factor::Alpha,
                LoraFormat::ComfyUi,
            ),
        ];
        for (key, factor, format) in cases {
            let p = parse_key(key).unwrap();
            assert_eq!(
                (p.module, p.factor, p.format),
                (dotted(m), factor, format),
                "{key}"
            );
        }
        let k = parse_key("lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight").unwrap();
        assert_eq!(
            k.module,
            ModuleName::Flat("transformer_blocks_0_attn_to_q".into())
        );
        assert_eq!(k.format, LoraFormat::Kohya);
    }

    #[test]
    fn rejects_what_it_cannot_merge() {
        assert!(parse_key("x.to_q.dora_scale").unwrap_err().contains("DoRA"));
        assert!(parse_key("lora_unet_x.hada_w1_a")
            .unwrap_err()
            .contains("LoHa"));
        assert!(parse_key("transformer.img_in.weight").is_err());
        assert!(parse_key(".lora_A.weight").is_err());
    }
}
