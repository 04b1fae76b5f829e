//! Qwen2.5-VL as Qwen-Image-Edit uses it: the vision tower and the language model whose last
//! hidden state conditions the DiT.

pub mod config;
pub mod rope_index;
pub mod text;
pub mod text_inputs;
pub mod text_weights;
pub mod vision;
pub mod vision_config;
pub mod window_index;

pub use config::QwenVlConfig;
pub use rope_index::{rope_index, sequential_positions, RowPositions};
pub use text::{PositionMode, QwenVlLanguageModel};
pub use text_inputs::TextEncoderInputs;
