//! Lowering the entry module: binding graph inputs (checked against the forward signature) and
//! static arguments, running the root forward, and collecting the outputs.

use super::ast::*;
use super::error::{suggestion, DslError};
use super::eval::{CallArgs, Lowerer, Scope, R};
use super::value::Value;
use super::{InputDecl, InputKind, Program, StaticValue};
use crate::{Graph, Op, TensorType};
use std::collections::HashMap;

fn static_value(v: &StaticValue) -> Value {
    match v {
        StaticValue::Int(i) => Value::Int(*i),
        StaticValue::Float(f) => Value::Float(*f),
        StaticValue::Bool(b) => Value::Bool(*b),
        StaticValue::List(xs) => Value::list(xs.iter().map(static_value).collect()),
    }
}

fn forward_of(prog: &Program) -> R<(&ModuleDef, &FnDef)> {
    let def = &prog.items.modules[prog.items.entry as usize];
    match def.method("forward") {
        Some(i) => Ok((def, &def.methods[i])),
        None => Err(prog.files[def.name.span.file as usize].error(
            def.name.span.start as usize,
            def.name.span.end as usize,
            format!("entry module `{}` has no `fn forward(..)`", def.name.text),
        )),
    }
}

fn source_text(prog: &Program, span: Span) -> String {
    let text = &prog.files[span.file as usize].text;
    text.get(span.start as usize..span.end as usize)
        .unwrap_or("")
        .to_string()
}

fn ann_text(prog: &Program, ann: &TypeAnn) -> String {
    let dims: Vec<String> = ann.dims.iter().map(|d| source_text(prog, d.span)).collect();
    format!("{}[{}]", ann.dtype, dims.join(", "))
}

pub(crate) fn signature(prog: &Program) -> R<Vec<InputDecl>> {
    let (_, f) = forward_of(prog)?;
    Ok(f.params
        .iter()
        .map(|p| InputDecl {
            name: p.name.text.clone(),
            kind: match &p.ty {
                Some(ann) => InputKind::Tensor {
                    dtype: ann.dtype,
                    dims: ann.dims.iter().map(|d| source_text(prog, d.span)).collect(),
                    optional: p.default.is_some(),
                },
                None => InputKind::Static,
            },
        })
        .collect())
}

pub(crate) fn lower(
    prog: &Program,
    config: &serde_json::Value,
    adapter: Option<&serde_json::Value>,
    inputs: &[(String, TensorType)],
    statics: &[(String, StaticValue)],
) -> R<Graph> {
    let (def, f) = forward_of(prog)?;
    let mut lw = Lowerer::new(prog, config);
    if let Some(adapter) = adapter {
        lw.set_adapter(adapter);
    }
    let fwd = format!("`{}.forward`", def.name.text);
    let names = || f.params.iter().map(|p| p.name.text.as_str());
    // Reject unknown or misplaced names before doing any work.
    for (i, (name, _)) in inputs.iter().enumerate() {
        match f.params.iter().find(|p| p.name.text == *name) {
            None => {
                return Err(lw.err(f.span, format!("unknown input `{name}`: {fwd} has no such parameter{}", suggestion(name, names()))))
            }
            Some(p) if p.ty.is_none() => {
                return Err(lw.err(
                    p.name.span,
                    format!("`{name}` is a static argument of {fwd} (no tensor type), but it was supplied as a tensor input"),
                ))
            }
            _ => {}
        }
        if inputs[..i].iter().any(|(n, _)| n == name) {
            return Err(lw.err(f.span, format!("input `{name}` is supplied twice")));
        }
    }
    for (name, _) in statics {
        match f.params.iter().find(|p| p.name.text == *name) {
            None => {
                return Err(lw.err(
                    f.span,
                    format!(
                        "unknown static argument `{name}`: {fwd} has no such parameter{}",
                        suggestion(name, names())
                    ),
                ))
            }
            Some(p) if p.ty.is_some() => {
                return Err(lw.err(
                    p.name.span,
                    format!(
                    "`{name}` is a tensor input of {fwd}, but it was supplied as a static argument"
                ),
                ))
            }
            _ => {}
        }
    }

    let no_args = CallArgs {
        pos: Vec::new(),
        kw: Vec::new(),
    };
    let inst = lw.instantiate(prog.items.entry, no_args, "".into(), def.name.span)?;
    let mut sc = Scope::new(Some(inst), "".into());
    sc.root = true;
    // symbol -> (value, input that bound it)
    let mut symbols: HashMap<&str, (i64, &str)> = HashMap::new();
    for p in &f.params {
        let name = p.name.text.as_str();
        let v = match &p.ty {
            Some(ann) => match inputs.iter().find(|(n, _)| n == name) {
                Some((_, ty)) => bind_input(&mut lw, &mut sc, &mut symbols, p, ann, ty)?,
                None => match &p.default {
                    Some(d) => match lw.eval(&mut sc, d)? {
                        Value::None => Value::None,
                        v => {
                            let msg = format!("the default of tensor input `{name}` must be `none`, got {}", lw.describe(&v));
                            return Err(lw.err(d.span, msg));
                        }
                    },
                    None => {
                        let msg = format!("missing required input `{name}`: {}", ann_text(prog, ann));
                        return Err(lw.err(p.name.span, msg).with_note("declare it `= none` in the signature to make it optional"));
                    }
                },
            },
            None => match statics.iter().find(|(n, _)| n == name) {
                Some((_, s)) => static_value(s),
                None => match &p.default {
                    Some(d) => lw.eval(&mut sc, d)?,
                    None => {
                        return Err(lw.err(
                            p.name.span,
                            format!("missing static argument `{name}` of {fwd} (a compile-time value such as an int or a list)"),
                        ))
                    }
                },
            },
        };
        sc.vars.push((name, v));
    }
    lw.eval_block(&mut sc, &f.body)
        .map_err(|e| e.with_note(format!("in {fwd} (root)")))?;
    if lw.graph.outputs.is_empty() {
        return Err(lw.err(
            f.span,
            format!("{fwd} declares no outputs; add `output name = value;`"),
        ));
    }
    Ok(lw.graph)
}

fn bind_input<'p>(
    lw: &mut Lowerer<'p>,
    sc: &mut Scope<'p>,
    symbols: &mut HashMap<&'p str, (i64, &'p str)>,
    p: &'p ParamDecl,
    ann: &'p TypeAnn,
    ty: &TensorType,
) -> R<Value> {
    let name = p.name.text.as_str();
    let want = ann_text(lw.prog, ann);
    let dims: Vec<i64> = ty.shape.iter().map(|&d| d as i64).collect();
    lw.check_dims(&dims, ann.span).map_err(|e| DslError {
        message: format!("input `{name}`: {}", e.message),
        ..e
    })?;
    if ty.dtype != ann.dtype {
        return Err(lw.err(
            ann.span,
            format!("input `{name}` is {ty} but the signature requires {want}"),
        ));
    }
    if ty.rank() != ann.dims.len() {
        return Err(lw.err(
            ann.span,
            format!(
                "input `{name}` has rank {} ({ty}) but the signature {want} has rank {}",
                ty.rank(),
                ann.dims.len()
            ),
        ));
    }
    for (i, (d, &actual)) in ann.dims.iter().zip(&dims).enumerate() {
        if let ExprKind::Ident(sym) = &d.kind {
            if let Some(&(v, from)) = symbols.get(sym.as_str()) {
                if v != actual {
                    return Err(lw.err(
                        d.span,
                        format!("input `{name}`: dim {i} is {actual} but {sym} = {v} from `{from}` ({ty})"),
                    ));
                }
                continue;
            }
            if lw.lookup_opt(sc, sym, d.span)?.is_none() {
                symbols.insert(sym.as_str(), (actual, name));
                sc.vars.push((sym.as_str(), Value::Int(actual)));
                continue;
            }
        }
        let expect = lw.eval_dim(sc, d)?;
        if expect != actual {
            let text = source_text(lw.prog, d.span);
            let msg = if text == expect.to_string() {
                format!("input `{name}`: dim {i} is {actual} but the signature {want} requires {expect} ({ty})")
            } else {
                format!("input `{name}`: dim {i} is {actual} but the signature {want} requires {text} = {expect} ({ty})")
            };
            return Err(lw.err(d.span, msg));
        }
    }
    let op = Op::Input {
        name: name.to_string(),
        ty: ty.clone(),
    };
    Ok(Value::Tensor(lw.emit(sc, p.name.span, op, &[])?))
}
