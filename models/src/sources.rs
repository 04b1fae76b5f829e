//! The model sources shipped with qie, embedded so the binary works from any directory. A path on
//! disk overrides an embedded name, which is how users try variants without rebuilding.

/// (file name, text) of every bundled `.qie` source.
pub const BUNDLED: &[(&str, &str)] = &[
    ("qwen_image_dit.qie", include_str!("../qie/qwen_image_dit.qie")),
    ("qwen_image_layered.qie", include_str!("../qie/qwen_image_layered.qie")),
];

pub fn bundled(name: &str) -> Option<&'static str> {
    let file = name.rsplit('/').next().unwrap_or(name);
    BUNDLED.iter().find(|(n, _)| *n == file).map(|(_, text)| *text)
}
