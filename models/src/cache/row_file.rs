//! One cached row as a safetensors file: `target` [1, S, 64], `references` [1, S_refs, 64] (absent
//! without inputs), `prompt_embeds` [1, S_txt, D], and the grids as small f32 tensors
//! (`target_grid` [3], `reference_grids` [N, 3]) so a resumed run can rebuild its manifest entry
//! from the file alone. Written to a temporary name and renamed, so a file that exists is whole.

use super::encode::EncodedRow;
use crate::ModelError;
use qie_runtime::weights::{save_safetensors, WeightStore};
use qie_runtime::Tensor;
use std::path::Path;

pub fn write_row(path: &Path, row: &EncodedRow) -> Result<(), ModelError> {
    let err = |e: String| ModelError::new(format!("{}: {e}", path.display()));
    let data = |t: &Tensor| -> Result<Vec<f32>, ModelError> {
        t.as_f32()
            .map(<[f32]>::to_vec)
            .ok_or_else(|| err(format!("expected f32 tensors, got {:?}", t.dtype())))
    };
    let grid = |g: &[usize; 3]| g.map(|v| v as f32);
    let target_grid = grid(&row.target_grid).to_vec();
    let ref_grids: Vec<f32> = row.reference_grids.iter().flat_map(grid).collect();
    let mut owned: Vec<(&str, Vec<usize>, Vec<f32>)> = vec![
        ("target", row.target.shape().to_vec(), data(&row.target)?),
        (
            "prompt_embeds",
            row.prompt_embeds.shape().to_vec(),
            data(&row.prompt_embeds)?,
        ),
        ("target_grid", vec![3], target_grid),
    ];
    if let Some(r) = &row.references {
        owned.push(("references", r.shape().to_vec(), data(r)?));
        owned.push((
            "reference_grids",
            vec![row.reference_grids.len(), 3],
            ref_grids,
        ));
    }
    let views: Vec<(&str, Vec<usize>, &[f32])> = owned
        .iter()
        .map(|(n, s, d)| (*n, s.clone(), d.as_slice()))
        .collect();
    save_safetensors(path, &views).map_err(|e| err(e.to_string()))
}

/// A row file read back, every shape checked against its grids.
pub struct RowTensors {
    pub target: Tensor,
    pub target_grid: [usize; 3],
    pub references: Option<Tensor>,
    pub reference_grids: Vec<[usize; 3]>,
    pub prompt_embeds: Tensor,
}

pub fn read_row(path: &Path) -> Result<RowTensors, ModelError> {
    let store = WeightStore::open(path).map_err(|e| {
        ModelError::new(format!(
            "{}: cannot read the cached row ({e}); delete it and run `qie cache --resume`",
            path.display()
        ))
    })?;
    let load = |name: &str| -> Result<(Vec<usize>, Vec<f32>), ModelError> {
        let info = store.info(name).ok_or_else(|| {
            ModelError::new(format!("{}: tensor `{name}` is missing", path.display()))
        })?;
        let values = store
            .load_f32(name)
            .map_err(|e| ModelError::new(format!("{}: tensor `{name}`: {e}", path.display())))?;
        Ok((info.shape.clone(), values))
    };
    let tensor = |name: &str, (shape, values): (Vec<usize>, Vec<f32>)| {
        Tensor::from_f32(&shape, values)
            .map_err(|e| ModelError::new(format!("{}: tensor `{name}`: {e}", path.display())))
    };
    let bad = |name: &str, what: String| {
        ModelError::new(format!("{}: tensor `{name}`: {what}", path.display()))
    };
    let grids = |values: &[f32]| -> Vec<[usize; 3]> {
        values
            .chunks(3)
            .map(|c| [c[0] as usize, c[1] as usize, c[2] as usize])
            .collect()
    };
    let (_, g) = load("target_grid")?;
    let target_grid = *grids(&g)
        .first()
        .ok_or_else(|| bad("target_grid", "empty".into()))?;
    let target = tensor("target", load("target")?)?;
    let tokens = |g: &[usize; 3]| g[0] * g[1] * g[2];
    if target.shape().len() != 3 || target.shape()[1] != tokens(&target_grid) {
        return Err(bad(
            "target",
            format!(
                "shape {:?} does not fit grid {target_grid:?}",
                target.shape()
            ),
        ));
    }
    let (references, reference_grids) = match store.info("references") {
        None => (None, Vec::new()),
        Some(_) => {
            let refs = tensor("references", load("references")?)?;
            let rg = grids(&load("reference_grids")?.1);
            let expected: usize = rg.iter().map(tokens).sum();
            if refs.shape().len() != 3 || refs.shape()[1] != expected {
                return Err(bad(
                    "references",
                    format!("shape {:?} does not fit grids {rg:?}", refs.shape()),
                ));
            }
            (Some(refs), rg)
        }
    };
    let prompt_embeds = tensor("prompt_embeds", load("prompt_embeds")?)?;
    if prompt_embeds.shape().len() != 3 || prompt_embeds.shape()[0] != 1 {
        return Err(bad(
            "prompt_embeds",
            format!("shape {:?}, expected [1, S, D]", prompt_embeds.shape()),
        ));
    }
    Ok(RowTensors {
        target,
        target_grid,
        references,
        reference_grids,
        prompt_embeds,
    })
}
