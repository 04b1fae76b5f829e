//! The buffers a kernel is bound to, checked once when the plan is built, so that the chunk
//! loops can read and write through raw pointers without bounds checks.

use super::{Interp, RegClass};
use crate::cpu::buffer::RawBuf;
use qie_codegen::{IndexMap, Instr, KernelProgram, View};

impl Interp {
    /// Checks that buffers have the right element types and that every map stays in bounds
    /// (a gather's table for every index in `0..dim`; the indices themselves are checked as
    /// they are read).
    pub fn check_buffers(
        &self,
        p: &KernelProgram,
        inputs: &[RawBuf],
        outputs: &[RawBuf],
    ) -> Result<(), String> {
        if inputs.len() != self.input_classes.len() || outputs.len() != self.output_classes.len() {
            return Err(format!("{}: wrong number of buffers", self.name));
        }
        for (i, (b, class)) in inputs.iter().zip(&self.input_classes).enumerate() {
            if RegClass::of(b.storage) != *class {
                return Err(format!(
                    "{}: input {i} has storage {:?}",
                    self.name, b.storage
                ));
            }
        }
        for (i, (b, class)) in outputs.iter().zip(&self.output_classes).enumerate() {
            if RegClass::of(b.storage) != *class || !b.writable {
                return Err(format!(
                    "{}: output {i} is not a writable {:?} buffer",
                    self.name, class
                ));
            }
        }
        let check = |map: &IndexMap, buf: &RawBuf, what: &str| -> Result<(), String> {
            if map.shape().iter().product::<usize>() == 0 {
                return Ok(());
            }
            let views = map.views();
            for (i, v) in views.iter().enumerate() {
                let (lo, hi) = view_range(v);
                let limit = match views.get(i + 1) {
                    Some(next) => next.numel() as i64,
                    None => buf.len as i64,
                };
                if lo < 0 || hi >= limit {
                    return Err(format!(
                        "{}: {what} map {map} reaches [{lo}, {hi}] outside a buffer of {limit} elements",
                        self.name
                    ));
                }
            }
            Ok(())
        };
        for sec in [&p.body, &p.epilogue] {
            for s in &sec.stmts {
                match &s.instr {
                    Instr::Load { input, map } => check(map, &inputs[*input], "load")?,
                    Instr::LoadGather {
                        input,
                        map,
                        stride,
                        dim,
                        ..
                    } => {
                        check(map, &inputs[*input], "gather")?;
                        let (lo, hi) = view_range(map.top());
                        let span = (*dim as i64 - 1).max(0) * stride;
                        if map.as_strided().is_none()
                            || lo < 0
                            || hi + span >= inputs[*input].len as i64
                        {
                            return Err(format!("{}: gather reaches outside its table", self.name));
                        }
                    }
                    _ => {}
                }
            }
            for st in &sec.stores {
                check(&st.map, &outputs[st.output], "store")?;
            }
        }
        Ok(())
    }
}

/// Lowest and highest offset a view produces over its shape.
fn view_range(v: &View) -> (i64, i64) {
    let (mut lo, mut hi) = (v.offset, v.offset);
    for (&n, &s) in v.shape.iter().zip(&v.strides) {
        let span = (n as i64 - 1) * s;
        if span < 0 {
            lo += span;
        } else {
            hi += span;
        }
    }
    (lo, hi)
}
