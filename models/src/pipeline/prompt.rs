//! From the VL model's last hidden state to the DiT's prompt embeddings
//! (`_get_qwen_prompt_embeds`: drop the system-prompt tokens, keep the valid ones).

use super::latents::{f32_data, tensor};
use crate::ModelError;
use qie_runtime::Tensor;

/// hidden [1, S, D] of a single unpadded prompt -> [1, S - drop, D].
pub fn prompt_embeds_from_hidden(hidden: &Tensor, drop: usize) -> Result<Tensor, ModelError> {
    let s = hidden.shape();
    if s.len() != 3 || s[0] != 1 {
        return Err(ModelError::new(format!(
            "text encoder output {s:?}: expected [1, S, D]"
        )));
    }
    if s[1] <= drop {
        return Err(ModelError::new(format!(
            "the encoded prompt has {} tokens, no more than the {drop} template tokens dropped",
            s[1]
        )));
    }
    let data = f32_data(hidden)?;
    tensor(&[1, s[1] - drop, s[2]], data[drop * s[2]..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_the_template_tokens() {
        let h = Tensor::from_f32(&[1, 3, 2], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        let e = prompt_embeds_from_hidden(&h, 1).unwrap();
        assert_eq!(e.shape(), &[1, 2, 2]);
        assert_eq!(e.as_f32().unwrap(), &[3., 4., 5., 6.]);
        assert!(prompt_embeds_from_hidden(&h, 3).is_err());
    }
}
