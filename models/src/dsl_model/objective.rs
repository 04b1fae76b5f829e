//! Training objectives appended to a forward graph before it is differentiated, so the loss is
//! part of the same compiled plan as the model (one launch sequence, no host round trip).

use qie_ir::{BinaryOp, DType, Graph, NodeId, Op, ReduceOp, TensorType};

/// Graph input holding the regression target of [`Objective::WeightedTokenMse`].
pub const LOSS_TARGET: &str = "loss_target";
/// Graph input holding the per-sample loss weights [B].
pub const LOSS_WEIGHT: &str = "loss_weight";
/// Graph output holding the scalar loss.
pub const LOSS: &str = "loss";

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Objective {
    /// `loss = mean_b(w_b * mean((out[b, :tokens] - target[b])^2))` in f32, where `out` is the
    /// forward output `output` [B, S, C], `target` the input [`LOSS_TARGET`] [B, tokens, C] and
    /// `w` the input [`LOSS_WEIGHT`] [B]. With equal weights this is the mean of the per-sample
    /// losses, so a batch of B equals B single-sample steps averaged.
    WeightedTokenMse { output: String, tokens: usize },
}

impl Objective {
    /// Adds the loss nodes and the [`LOSS`] output to `graph`; only `loss` stays an output
    /// (the forward output is then an intermediate its memory plan can free).
    pub fn append(&self, graph: &mut Graph) -> Result<(), String> {
        match self {
            Objective::WeightedTokenMse { output, tokens } => {
                let out = graph
                    .output(output)
                    .ok_or_else(|| format!("the model has no `{output}` output to train on"))?;
                let ty = graph.ty(out).clone();
                if ty.shape.len() != 3 || *tokens == 0 || *tokens > ty.shape[1] {
                    return Err(format!(
                        "output `{output}` has shape {:?}; the loss needs [B, S, C] with S >= {tokens}",
                        ty.shape
                    ));
                }
                let (batch, channels) = (ty.shape[0], ty.shape[2]);
                let region = [batch, *tokens, channels];
                let loss = token_mse(graph, out, ty.dtype, region).map_err(|e| e.to_string())?;
                graph.outputs.clear();
                graph.set_output(LOSS, loss);
                Ok(())
            }
        }
    }
}

fn token_mse(
    g: &mut Graph,
    out: NodeId,
    dtype: DType,
    [batch, tokens, channels]: [usize; 3],
) -> Result<NodeId, qie_ir::TypeError> {
    let f32_of = |shape: &[usize]| TensorType::new(DType::F32, shape);
    let mut pred = g.add(
        Op::Slice {
            axis: 1,
            start: 0,
            end: tokens,
        },
        &[out],
    )?;
    if dtype != DType::F32 {
        pred = g.add(Op::Cast { to: DType::F32 }, &[pred])?;
    }
    let target = g.input(LOSS_TARGET, f32_of(&[batch, tokens, channels]));
    let weight = g.input(LOSS_WEIGHT, f32_of(&[batch]));
    let diff = g.add(Op::Binary(BinaryOp::Sub), &[pred, target])?;
    let sq = g.add(Op::Binary(BinaryOp::Mul), &[diff, diff])?;
    let w = g.add(
        Op::Reshape {
            shape: [batch, 1, 1].as_slice().into(),
        },
        &[weight],
    )?;
    let w = g.add(
        Op::Broadcast {
            shape: [batch, tokens, channels].as_slice().into(),
        },
        &[w],
    )?;
    let weighted = g.add(Op::Binary(BinaryOp::Mul), &[sq, w])?;
    let total = g.add(
        Op::Reduce {
            op: ReduceOp::Sum,
            axes: [0, 1, 2].as_slice().into(),
        },
        &[weighted],
    )?;
    let inv = g.constant(1.0 / (batch * tokens * channels) as f64, DType::F32);
    g.add(Op::Binary(BinaryOp::Mul), &[total, inv])
}
