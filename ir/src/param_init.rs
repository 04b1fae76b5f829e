//! How a parameter the checkpoint lacks is created: the initialiser a `.qie` source writes as
//! `param w[out, in] = kaiming_uniform(sqrt(5.0));`, carried by the graph so the weight loader can
//! make the tensor (new layers, LoRA adapters, learned embeddings of a variant).

use std::fmt;

/// A parameter initialiser, with torch.nn.init's semantics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamInit {
    Zeros,
    Ones,
    /// N(0, std^2).
    Normal {
        std: f64,
    },
    /// U(lo, hi).
    Uniform {
        lo: f64,
        hi: f64,
    },
    /// `kaiming_uniform_(w, a)` with the leaky_relu gain: U(-b, b), b = sqrt(6 / ((1 + a^2) fan_in)).
    KaimingUniform {
        a: f64,
    },
}

impl ParamInit {
    /// torch's `_calculate_fan_in_and_fan_out(..)[0]`: `shape[1] * prod(shape[2..])`; a rank-1
    /// shape (torch refuses those) and empty products count as 1.
    pub fn fan_in(shape: &[usize]) -> usize {
        let receptive: usize = shape.iter().skip(2).product();
        shape.get(1).copied().unwrap_or(1).max(1) * receptive.max(1)
    }

    /// The half-width of the uniform range for `shape` (`KaimingUniform`), `hi - lo` halves
    /// aside: `None` for the non-uniform initialisers.
    pub fn bound(&self, shape: &[usize]) -> Option<f64> {
        match *self {
            ParamInit::KaimingUniform { a } => {
                Some((6.0 / ((1.0 + a * a) * Self::fan_in(shape) as f64)).sqrt())
            }
            ParamInit::Uniform { lo, hi } => Some((hi - lo) / 2.0),
            _ => None,
        }
    }

    /// The uniform range `(lo, hi)` for `shape`, for `Uniform` and `KaimingUniform`.
    pub fn uniform_range(&self, shape: &[usize]) -> Option<(f64, f64)> {
        match *self {
            ParamInit::Uniform { lo, hi } => Some((lo, hi)),
            ParamInit::KaimingUniform { .. } => self.bound(shape).map(|b| (-b, b)),
            _ => None,
        }
    }
}

impl fmt::Display for ParamInit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamInit::Zeros => f.write_str("zeros"),
            ParamInit::Ones => f.write_str("ones"),
            ParamInit::Normal { std } => write!(f, "normal({std})"),
            ParamInit::Uniform { lo, hi } => write!(f, "uniform({lo}, {hi})"),
            ParamInit::KaimingUniform { a } => write!(f, "kaiming_uniform({a})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_in_follows_torch() {
        assert_eq!(ParamInit::fan_in(&[8, 4]), 4);
        assert_eq!(ParamInit::fan_in(&[8, 4, 3, 3]), 36);
        assert_eq!(ParamInit::fan_in(&[8]), 1);
    }

    #[test]
    fn kaiming_bound_matches_peft_lora_a() {
        // peft: kaiming_uniform_(lora_A.weight, a=sqrt(5)) on [r, in] gives bound 1/sqrt(in).
        let b = ParamInit::KaimingUniform { a: 5f64.sqrt() }
            .bound(&[4, 16])
            .unwrap();
        assert!((b - 0.25).abs() < 1e-12, "{b}");
    }
}
