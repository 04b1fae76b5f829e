//! Module instantiation: constructor arguments, module-scope lets, params (graph weights named by
//! checkpoint path) and subs (child instances, optionally repeated or conditional).

use super::ast::*;
use super::error::suggestion;
use super::eval::{path_label, CallArgs, Lowerer, Scope, R};
use super::items::ItemRef;
use super::value::{Instance, Value};
use crate::{Op, TensorType};
use std::collections::HashMap;
use std::rc::Rc;

/// Most instances one repeated sub may create.
const MAX_REPEAT: i64 = 1 << 16;

/// Checkpoint path of a child: `<prefix>.<path>` without a leading dot at the root.
pub(crate) fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}.{path}"),
    }
}

impl<'p> Lowerer<'p> {
    /// Instantiates module `mid` at checkpoint prefix `prefix`; `site` is the `sub` (or entry) span.
    pub fn instantiate(
        &mut self,
        mid: u32,
        args: CallArgs<'p>,
        prefix: Rc<str>,
        site: Span,
    ) -> R<Rc<Instance>> {
        let def = &self.prog.items.modules[mid as usize];
        self.enter(site)?;
        let r = self.instantiate_inner(def, mid, args, prefix.clone(), site);
        self.leave();
        r.map_err(|e| {
            let note = format!(
                "while instantiating `{}` ({}) at {}",
                def.name.text,
                path_label(&prefix),
                self.pos(site)
            );
            e.with_note(note)
        })
    }

    fn instantiate_inner(
        &mut self,
        def: &'p ModuleDef,
        mid: u32,
        args: CallArgs<'p>,
        prefix: Rc<str>,
        site: Span,
    ) -> R<Rc<Instance>> {
        let mut sc = Scope::new(None, prefix.clone());
        let what = format!("module `{}`", def.name.text);
        self.bind_params(&mut sc, &def.params, args, &what, def.name.span, site)?;
        for m in &def.members {
            match m {
                Member::Let(pat, e) => {
                    let v = self.eval(&mut sc, e)?;
                    self.bind_pattern(&mut sc, pat, v)?;
                }
                Member::Param(pm) => {
                    let v = self.param_member(&mut sc, pm, &prefix)?;
                    sc.vars.push((pm.name.text.as_str(), v));
                }
                Member::Sub(sm) => {
                    let v = self.sub_member(&mut sc, sm, &prefix)?;
                    sc.vars.push((sm.name.text.as_str(), v));
                }
            }
        }
        let mut env: HashMap<Rc<str>, Value> = HashMap::with_capacity(sc.vars.len());
        for (name, v) in sc.vars {
            env.insert(name.into(), v);
        }
        Ok(Rc::new(Instance {
            module: mid,
            prefix,
            env,
        }))
    }

    fn present(&mut self, sc: &mut Scope<'p>, cond: &'p Option<Expr>) -> R<bool> {
        match cond {
            Some(c) => self.eval_cond(sc, c),
            None => Ok(true),
        }
    }

    /// Evaluates a dimension expression to a non-negative int.
    pub fn eval_dim(&mut self, sc: &mut Scope<'p>, e: &'p Expr) -> R<i64> {
        match self.eval(sc, e)? {
            Value::Int(d) if d >= 0 => Ok(d),
            v => Err(self.err(
                e.span,
                format!(
                    "a dimension must be a non-negative int, got {}",
                    self.describe(&v)
                ),
            )),
        }
    }

    fn param_member(&mut self, sc: &mut Scope<'p>, pm: &'p ParamMember, prefix: &str) -> R<Value> {
        if !self.present(sc, &pm.cond)? {
            return Ok(Value::None);
        }
        let dims = pm
            .dims
            .iter()
            .map(|d| self.eval_dim(sc, d))
            .collect::<R<Vec<i64>>>()?;
        let shape = self.check_dims(&dims, pm.span)?;
        let name = join(prefix, &pm.name.text);
        if let Some(prev) = self.param_names.get(&name) {
            let msg = format!(
                "checkpoint name `{name}` is used twice (also by the param at {})",
                self.pos(*prev)
            );
            return Err(self.err(pm.name.span, msg));
        }
        self.param_names.insert(name.clone(), pm.name.span);
        if let Some(init) = &pm.init {
            if !pm.dtype.is_float() {
                let msg = format!(
                    "param `{}` is {}: only float params can have an initialiser",
                    pm.name.text, pm.dtype
                );
                return Err(self.err(init.span, msg));
            }
            let init = self.param_init(sc, init)?;
            self.graph.set_param_init(&name, init);
        }
        let ty = TensorType {
            dtype: pm.dtype,
            shape,
        };
        Ok(Value::Tensor(self.emit(
            sc,
            pm.span,
            Op::Param { name, ty },
            &[],
        )?))
    }

    /// A sub's `@` path, its `{expr}` parts evaluated (ints or strings).
    fn sub_path(&mut self, sc: &mut Scope<'p>, parts: &'p [PathPart]) -> R<String> {
        let mut path = String::new();
        for part in parts {
            match part {
                PathPart::Text(t) => path.push_str(t),
                PathPart::Expr(e) => match self.eval(sc, e)? {
                    Value::Int(i) => path.push_str(&i.to_string()),
                    Value::Str(s) => path.push_str(&s),
                    v => {
                        let msg = format!(
                            "a path interpolation must be an int or a string, got {}",
                            self.describe(&v)
                        );
                        return Err(self.err(e.span, msg));
                    }
                },
            }
        }
        Ok(path)
    }

    fn sub_member(&mut self, sc: &mut Scope<'p>, sm: &'p SubMember, prefix: &str) -> R<Value> {
        if !self.present(sc, &sm.cond)? {
            return Ok(Value::None);
        }
        let mid = match self.prog.items.table.get(&sm.module.text) {
            Some(ItemRef::Module(i)) => *i,
            Some(_) => {
                return Err(self.err(
                    sm.module.span,
                    format!(
                        "`{}` is not a module; `sub` needs a module constructor",
                        sm.module.text
                    ),
                ))
            }
            None => {
                let modules = self
                    .prog
                    .items
                    .table
                    .iter()
                    .filter(|(_, r)| matches!(r, ItemRef::Module(_)));
                let msg = format!(
                    "unknown module `{}`{}",
                    sm.module.text,
                    suggestion(&sm.module.text, modules.map(|(k, _)| k.as_str()))
                );
                return Err(self.err(sm.module.span, msg));
            }
        };
        let path = match &sm.path {
            None => sm.name.text.clone(),
            Some((parts, _)) => self.sub_path(sc, parts)?,
        };
        let child = join(prefix, &path);
        let count = match &sm.count {
            None => None,
            Some(c) => match self.eval(sc, c)? {
                Value::Int(n) if (0..=MAX_REPEAT).contains(&n) => Some(n),
                v => {
                    return Err(self.err(
                        c.span,
                        format!(
                            "repeat count must be an int in 0..={MAX_REPEAT}, got {}",
                            self.describe(&v)
                        ),
                    ))
                }
            },
        };
        let mut args = CallArgs {
            pos: Vec::new(),
            kw: Vec::new(),
        };
        for a in &sm.args {
            let v = self.eval(sc, &a.value)?;
            match &a.name {
                Some(n) => args.kw.push((n.text.as_str(), v, n.span)),
                None => args.pos.push((v, a.value.span)),
            }
        }
        match count {
            None => Ok(Value::Instance(self.instantiate(
                mid,
                args,
                child.into(),
                sm.span,
            )?)),
            Some(n) => {
                let mut out = Vec::with_capacity(n as usize);
                for i in 0..n {
                    let p = join(&child, &i.to_string());
                    out.push(Value::Instance(self.instantiate(
                        mid,
                        args.clone(),
                        p.into(),
                        sm.span,
                    )?));
                }
                Ok(Value::list(out))
            }
        }
    }
}
