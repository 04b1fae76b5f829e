//! Run-time checks of what a caller binds, before a backend touches its memory.

use super::IoSlot;
use crate::backend::{ParamData, ParamStore, RuntimeError};
use crate::tensor::{Storage, Tensor};
use qie_ir::TensorType;
use std::collections::HashMap;

/// Every input is bound, with the declared shape and host storage.
pub fn check_inputs(
    slots: &[IoSlot],
    inputs: &HashMap<String, Tensor>,
) -> Result<(), RuntimeError> {
    for i in slots {
        let t = inputs
            .get(&i.name)
            .ok_or_else(|| RuntimeError::MissingInput(i.name.clone()))?;
        if t.shape() != i.ty.shape.as_slice() || t.data().storage() != Storage::of(i.ty.dtype) {
            return Err(RuntimeError::BadInput {
                name: i.name.clone(),
                message: format!("expected {}, got {}", i.ty, t.ty()),
            });
        }
    }
    Ok(())
}

/// `data` can bind a weight of type `ty`: the same host storage class and element count.
pub fn check_param_data(
    name: &str,
    ty: &TensorType,
    data: &ParamData<'_>,
) -> Result<(), RuntimeError> {
    if data.storage() != Storage::of(ty.dtype) {
        return Err(RuntimeError::BadParam {
            name: name.to_string(),
            message: format!(
                "a {ty} value needs {:?} data, got {:?}",
                Storage::of(ty.dtype),
                data.storage()
            ),
        });
    }
    if data.len() != ty.numel() {
        return Err(RuntimeError::BadParam {
            name: name.to_string(),
            message: format!(
                "expected {ty} ({} elements), got {} elements",
                ty.numel(),
                data.len()
            ),
        });
    }
    Ok(())
}

/// The store's data for each weight `params` names (name, bound type), checked, in order.
pub fn param_data<'p, 's>(
    params: impl IntoIterator<Item = (&'p str, &'p TensorType)>,
    store: &'s dyn ParamStore,
) -> Result<Vec<ParamData<'s>>, RuntimeError> {
    params
        .into_iter()
        .map(|(name, ty)| {
            let data = store
                .param(name)
                .ok_or_else(|| RuntimeError::MissingParam(name.to_string()))?;
            check_param_data(name, ty, &data)?;
            Ok(data)
        })
        .collect()
}
