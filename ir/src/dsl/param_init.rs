//! `param w[dims] = INIT;`: the initialiser names (`zeros`, `ones`, `normal(std)`,
//! `uniform(lo, hi)`, `kaiming_uniform(a)`) read syntactically, their arguments evaluated as
//! compile-time numbers (`kaiming_uniform(sqrt(5.0))`, `normal(config.init_std ?? 0.02)`).

use super::ast::*;
use super::eval::{Lowerer, Scope, R};
use crate::ParamInit;

const KNOWN: &str = "zeros, ones, normal(std), uniform(lo, hi), kaiming_uniform(a)";

impl<'p> Lowerer<'p> {
    pub(crate) fn param_init(&mut self, sc: &mut Scope<'p>, e: &'p Expr) -> R<ParamInit> {
        let (name, args): (&str, &'p [Arg]) = match &e.kind {
            ExprKind::Ident(n) => (n.as_str(), &[]),
            ExprKind::Call(callee, args) => match &callee.kind {
                ExprKind::Ident(n) => (n.as_str(), args.as_slice()),
                _ => return Err(self.unknown_init(e)),
            },
            _ => return Err(self.unknown_init(e)),
        };
        let params: &[&str] = match name {
            "zeros" | "ones" => &[],
            "normal" => &["std"],
            "uniform" => &["lo", "hi"],
            "kaiming_uniform" => &["a"],
            _ => return Err(self.unknown_init(e)),
        };
        let values = self.init_args(sc, name, params, args, e.span)?;
        let init = match name {
            "zeros" => ParamInit::Zeros,
            "ones" => ParamInit::Ones,
            "normal" => ParamInit::Normal { std: values[0] },
            "uniform" => ParamInit::Uniform {
                lo: values[0],
                hi: values[1],
            },
            _ => ParamInit::KaimingUniform { a: values[0] },
        };
        let bad = match init {
            ParamInit::Normal { std } => (std < 0.0).then_some("`std` must be >= 0"),
            ParamInit::Uniform { lo, hi } => (lo > hi).then_some("`lo` must be <= `hi`"),
            _ => None,
        };
        match bad {
            Some(msg) => Err(self.err(e.span, format!("`{init}`: {msg}"))),
            None => Ok(init),
        }
    }

    fn unknown_init(&self, e: &Expr) -> super::DslError {
        self.err(e.span, "unknown parameter initialiser")
            .with_note(format!("known initialisers: {KNOWN}"))
    }

    /// The arguments of initialiser `name` (positional or by keyword), each a finite number.
    fn init_args(
        &mut self,
        sc: &mut Scope<'p>,
        name: &str,
        params: &[&str],
        args: &'p [Arg],
        span: Span,
    ) -> R<Vec<f64>> {
        let mut values: Vec<Option<f64>> = vec![None; params.len()];
        let mut next = 0;
        for a in args {
            let slot = match &a.name {
                Some(k) => params.iter().position(|p| *p == k.text).ok_or_else(|| {
                    self.err(k.span, format!("`{name}` has no argument `{}`", k.text))
                })?,
                None => {
                    next += 1;
                    next - 1
                }
            };
            if slot >= params.len() {
                let msg = format!("`{name}` takes {} argument(s)", params.len());
                return Err(self
                    .err(a.value.span, msg)
                    .with_note(format!("signature: {KNOWN}")));
            }
            if values[slot].is_some() {
                let msg = format!("argument `{}` of `{name}` is given twice", params[slot]);
                return Err(self.err(a.value.span, msg));
            }
            let v = self.eval(sc, &a.value)?;
            match v.as_f64() {
                Some(x) if x.is_finite() => values[slot] = Some(x),
                _ => {
                    let msg = format!(
                        "argument `{}` of `{name}` must be a finite compile-time number, got {}",
                        params[slot],
                        self.describe(&v)
                    );
                    return Err(self.err(a.value.span, msg));
                }
            }
        }
        values
            .into_iter()
            .zip(params)
            .map(|(v, p)| {
                v.ok_or_else(|| {
                    self.err(span, format!("`{name}` needs its argument `{p}`"))
                        .with_note(format!("signature: {KNOWN}"))
                })
            })
            .collect()
    }
}
