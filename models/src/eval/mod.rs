//! Scoring edited images against ground truth (`qie eval`): MagicBrush's L1 / L2, PSNR and
//! SSIM, the same over the background only, DINO / DINOv2 / CLIP / SigLIP image-embedding cosines, the
//! DreamSim distance, and the
//! matching of rows to prediction files.

pub mod bootstrap;
pub mod dreamsim;
pub mod embedding;
pub mod encoder;
pub mod encoder_config;
pub mod mask;
pub mod metric;
pub mod naming;
pub mod pixels;
pub mod positions;
pub mod preprocess;
pub mod score;
pub mod ssim;
pub mod summary;
pub mod text_encoder;

pub use embedding::{add_embedding_metric, add_text_metric, PredEmbeddings};
pub use encoder::{EncoderKind, ImageEncoder};
pub use metric::Metric;
pub use naming::NameTemplate;
pub use score::{score_row, EvalSettings, MaskMode, RowProblem, RowScore};
pub use summary::{summarize, Stats};
pub use text_encoder::TextEncoder;
