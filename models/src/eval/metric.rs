//! The metric names of `qie eval --metrics`.

use std::fmt;
use std::str::FromStr;

use super::encoder::EncoderKind;
use crate::ModelError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    L1,
    L2,
    Psnr,
    Ssim,
    BgL1,
    BgL2,
    BgPsnr,
    BgSsim,
    /// DINO ViT CLS-token cosine (MagicBrush).
    Dino,
    /// The same with a DINOv2 model.
    Dinov2,
    /// CLIP image-embedding cosine.
    ClipI,
    /// CLIP image-text cosine (prediction vs `output_caption`, else the prompt).
    ClipT,
    /// SigLIP pooled image-embedding cosine.
    Siglip,
    /// DreamSim's ensemble distance (1 - cosine; lower is closer).
    DreamSim,
}

impl Metric {
    pub const ALL: [Metric; 14] = [
        Metric::L1,
        Metric::L2,
        Metric::Psnr,
        Metric::Ssim,
        Metric::BgL1,
        Metric::BgL2,
        Metric::BgPsnr,
        Metric::BgSsim,
        Metric::Dino,
        Metric::Dinov2,
        Metric::ClipI,
        Metric::ClipT,
        Metric::Siglip,
        Metric::DreamSim,
    ];

    /// The metrics that need no model.
    pub const PIXEL: [Metric; 8] = [
        Metric::L1,
        Metric::L2,
        Metric::Psnr,
        Metric::Ssim,
        Metric::BgL1,
        Metric::BgL2,
        Metric::BgPsnr,
        Metric::BgSsim,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::L1 => "l1",
            Metric::L2 => "l2",
            Metric::Psnr => "psnr",
            Metric::Ssim => "ssim",
            Metric::BgL1 => "bg_l1",
            Metric::BgL2 => "bg_l2",
            Metric::BgPsnr => "bg_psnr",
            Metric::BgSsim => "bg_ssim",
            Metric::Dino => "dino",
            Metric::Dinov2 => "dinov2",
            Metric::ClipI => "clip_i",
            Metric::ClipT => "clip_t",
            Metric::Siglip => "siglip",
            Metric::DreamSim => "dreamsim",
        }
    }

    /// Scored on the background only (needs the row's `back_mask`).
    pub fn is_background(self) -> bool {
        matches!(
            self,
            Metric::BgL1 | Metric::BgL2 | Metric::BgPsnr | Metric::BgSsim
        )
    }

    /// Computed by a model (an image encoder) rather than from pixels.
    pub fn needs_model(self) -> bool {
        self.encoder().is_some()
    }

    /// The image encoder the metric runs (CLIP's for clip_t, with its text tower).
    pub fn encoder(self) -> Option<EncoderKind> {
        match self {
            Metric::Dino => Some(EncoderKind::Dino),
            Metric::Dinov2 => Some(EncoderKind::Dinov2),
            Metric::ClipI | Metric::ClipT => Some(EncoderKind::Clip),
            Metric::Siglip => Some(EncoderKind::Siglip),
            Metric::DreamSim => Some(EncoderKind::DreamSim),
            _ => None,
        }
    }

    /// Whether a larger value is better (for marking the best run).
    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Metric::Psnr
                | Metric::Ssim
                | Metric::BgPsnr
                | Metric::BgSsim
                | Metric::Dino
                | Metric::Dinov2
                | Metric::ClipI
                | Metric::ClipT
                | Metric::Siglip
        )
    }

    /// A comma-separated list (`all` for every metric); duplicates are dropped, order kept.
    pub fn parse_list(text: &str) -> Result<Vec<Metric>, ModelError> {
        let mut out: Vec<Metric> = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let add: Vec<Metric> = if item == "all" {
                Metric::ALL.to_vec()
            } else {
                vec![item.parse()?]
            };
            for m in add {
                if !out.contains(&m) {
                    out.push(m);
                }
            }
        }
        if out.is_empty() {
            return Err(ModelError::new("--metrics: no metric named"));
        }
        Ok(out)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Metric, ModelError> {
        Metric::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
                ModelError::new(format!(
                    "unknown metric {s:?} (known: {}, or all)",
                    known.join(", ")
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_in_order_without_duplicates() {
        let m = Metric::parse_list("ssim, l1,ssim").unwrap();
        assert_eq!(m, vec![Metric::Ssim, Metric::L1]);
        assert_eq!(Metric::parse_list("all").unwrap().len(), 14);
        let e = Metric::parse_list("l1,lpips").unwrap_err().to_string();
        assert!(e.contains("lpips") && e.contains("clip_i"), "{e}");
        assert!(Metric::parse_list(" , ").is_err());
    }
}
