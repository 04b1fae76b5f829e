//! The lowering interpreter: expressions, statements, calls and name lookup. Every call is inlined
//! and every loop unrolled; tensor operations emit IR nodes into `Lowerer::graph`.

use super::ast::*;
use super::builtins::Builtin;
use super::error::{suggestion, DslError};
use super::items::{ItemRef, PRELUDE_NAME};
use super::value::{Callable, Instance, Value};
use super::Program;
use crate::{DType, Graph, NodeId, Op};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

pub(crate) type R<T> = Result<T, DslError>;

/// Nested DSL calls (and module instantiations) allowed before "recursion too deep".
const MAX_DEPTH: usize = 64;

enum ConstState {
    Todo,
    Busy,
    Done(Value),
}

/// Arguments of one call, evaluated.
#[derive(Clone)]
pub(crate) struct CallArgs<'p> {
    pub pos: Vec<(Value, Span)>,
    pub kw: Vec<(&'p str, Value, Span)>,
}

/// The variables visible to the code being evaluated, plus where its nodes come from.
pub(crate) struct Scope<'p> {
    pub vars: Vec<(&'p str, Value)>,
    /// The module instance whose method is running (module-scope names are visible).
    pub inst: Option<Rc<Instance>>,
    /// Checkpoint prefix of the module the code runs for (for node origins).
    pub prefix: Rc<str>,
    /// Inside prelude functions: the user's call site, used as the origin of emitted nodes.
    pub site: Option<Span>,
    /// True in the root forward, where `output` is allowed.
    pub root: bool,
}

impl<'p> Scope<'p> {
    pub fn new(inst: Option<Rc<Instance>>, prefix: Rc<str>) -> Self {
        Scope {
            vars: Vec::new(),
            inst,
            prefix,
            site: None,
            root: false,
        }
    }

    fn var(&self, name: &str) -> Option<&Value> {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }
}

/// Origin strings by (file, offset, prefix address); the prefix is kept alive with its entry.
type OriginCache = HashMap<(u32, u32, usize), (Arc<str>, Rc<str>)>;

pub(crate) struct Lowerer<'p> {
    pub prog: &'p Program,
    pub graph: Graph,
    config: Value,
    /// The `adapter` namespace: settings of an adapter layered on the model (LoRA); an empty
    /// object when none is, so `adapter.rank ?? 0` reads 0.
    adapter: Value,
    consts: Vec<ConstState>,
    origins: OriginCache,
    pub(crate) constants: HashMap<(u64, DType), NodeId>,
    pub(crate) param_names: HashMap<String, Span>,
    depth: usize,
}

impl<'p> Lowerer<'p> {
    pub fn new(prog: &'p Program, config: &serde_json::Value) -> Self {
        Lowerer {
            prog,
            graph: Graph::new(),
            config: Value::from_json(config, "config"),
            adapter: Value::from_json(&serde_json::json!({}), "adapter"),
            consts: prog.items.consts.iter().map(|_| ConstState::Todo).collect(),
            origins: HashMap::new(),
            constants: HashMap::new(),
            param_names: HashMap::new(),
            depth: 0,
        }
    }

    /// Sets the `adapter` namespace (a JSON object; anything else reads as empty).
    pub fn set_adapter(&mut self, adapter: &serde_json::Value) {
        if adapter.is_object() {
            self.adapter = Value::from_json(adapter, "adapter");
        }
    }

    // ---- diagnostics ---------------------------------------------------------------------------

    pub fn err(&self, span: Span, msg: impl Into<String>) -> DslError {
        self.prog.files[span.file as usize].error(span.start as usize, span.end as usize, msg)
    }

    pub fn pos(&self, span: Span) -> String {
        self.prog.files[span.file as usize].pos(span.start as usize)
    }

    pub fn module_name(&self, idx: u32) -> &'p str {
        &self.prog.items.modules[idx as usize].name.text
    }

    /// A short description of a value for messages: "int 3", "tensor f32[2, 3]".
    pub fn describe(&self, v: &Value) -> String {
        match v {
            Value::None => "none".into(),
            Value::Bool(b) => format!("bool {b}"),
            Value::Int(i) => format!("int {i}"),
            Value::Float(f) => format!("float {f}"),
            Value::Str(s) => format!("string {s:?}"),
            Value::DType(d) => format!("dtype {d}"),
            Value::List(l) => format!("list of {}", l.len()),
            Value::Tuple(t) => format!("tuple of {}", t.len()),
            Value::Range(a, b) => format!("range {a}..{b}"),
            Value::Tensor(id) => format!("tensor {}", self.graph.ty(*id)),
            Value::Instance(i) => format!(
                "instance of `{}` ({})",
                self.module_name(i.module),
                path_label(&i.prefix)
            ),
            Value::Func(Callable::Fn(i)) => {
                format!("fn `{}`", self.prog.items.fns[*i as usize].name.text)
            }
            Value::Func(Callable::Method(inst, m)) => {
                let def = &self.prog.items.modules[inst.module as usize];
                format!(
                    "method `{}.{}`",
                    def.name.text, def.methods[*m as usize].name.text
                )
            }
            Value::Func(Callable::Builtin(b)) => format!("builtin `{}`", b.name()),
            Value::Module(m) => format!("module `{}`", self.module_name(*m)),
            Value::Dict(d) => format!("object `{}`", d.path),
        }
    }

    /// The origin string of nodes emitted at `span`: "file:line:col module.path".
    pub fn origin(&mut self, sc: &Scope<'p>, span: Span) -> Arc<str> {
        let site = sc.site.unwrap_or(span);
        let key = (
            site.file,
            site.start,
            Rc::as_ptr(&sc.prefix) as *const u8 as usize,
        );
        if let Some((o, _)) = self.origins.get(&key) {
            return o.clone();
        }
        let mut s = self.pos(site);
        if !sc.prefix.is_empty() {
            s.push(' ');
            s.push_str(&sc.prefix);
        }
        let o: Arc<str> = s.into();
        // The cache holds the prefix so that its address (part of the key) is never reused.
        self.origins.insert(key, (o.clone(), sc.prefix.clone()));
        o
    }

    /// Adds a node; a type error becomes a DSL error at `span` listing the operand types.
    pub fn emit(&mut self, sc: &Scope<'p>, span: Span, op: Op, args: &[NodeId]) -> R<NodeId> {
        let origin = self.origin(sc, span);
        match self.graph.add_with_origin(op, args, Some(origin)) {
            Ok(id) => Ok(id),
            Err(e) => {
                let types: Vec<String> =
                    args.iter().map(|a| self.graph.ty(*a).to_string()).collect();
                let mut err = self.err(span, e.message);
                if !types.is_empty() {
                    err.notes
                        .push(format!("operand types: {}", types.join(", ")));
                }
                Err(err)
            }
        }
    }

    // ---- names ---------------------------------------------------------------------------------

    /// Resolves a name: locals, module scope, module methods, globals, `config`, dtypes, builtins.
    pub fn lookup(&mut self, sc: &Scope<'p>, name: &str, span: Span) -> R<Value> {
        if let Some(v) = self.lookup_opt(sc, name, span)? {
            return Ok(v);
        }
        let mut cands: Vec<&str> = sc.vars.iter().map(|(n, _)| *n).collect();
        if let Some(inst) = &sc.inst {
            cands.extend(inst.env.keys().map(|k| &**k));
            let def = &self.prog.items.modules[inst.module as usize];
            cands.extend(def.methods.iter().map(|m| m.name.text.as_str()));
        }
        cands.extend(self.prog.items.table.keys().map(|k| k.as_str()));
        cands.extend(Builtin::ALL.iter().map(|b| b.name()));
        cands.extend([
            "config", "adapter", "f32", "bf16", "f16", "i32", "i64", "bool",
        ]);
        Err(self.err(
            span,
            format!("unknown name `{name}`{}", suggestion(name, cands)),
        ))
    }

    pub fn lookup_opt(&mut self, sc: &Scope<'p>, name: &str, span: Span) -> R<Option<Value>> {
        if let Some(v) = sc.var(name) {
            return Ok(Some(v.clone()));
        }
        if let Some(inst) = &sc.inst {
            if let Some(v) = inst.env.get(name) {
                return Ok(Some(v.clone()));
            }
            if let Some(m) = self.prog.items.modules[inst.module as usize].method(name) {
                return Ok(Some(Value::Func(Callable::Method(inst.clone(), m as u32))));
            }
        }
        if let Some(item) = self.prog.items.table.get(name) {
            return Ok(Some(match *item {
                ItemRef::Fn(i) => Value::Func(Callable::Fn(i)),
                ItemRef::Module(i) => Value::Module(i),
                ItemRef::Const(i) => self.const_value(i, span)?,
            }));
        }
        if name == "config" {
            return Ok(Some(self.config.clone()));
        }
        if name == "adapter" {
            return Ok(Some(self.adapter.clone()));
        }
        if let Some(d) = DType::parse(name) {
            return Ok(Some(Value::DType(d)));
        }
        Ok(Builtin::from_name(name).map(|b| Value::Func(Callable::Builtin(b))))
    }

    fn const_value(&mut self, i: u32, use_span: Span) -> R<Value> {
        match &self.consts[i as usize] {
            ConstState::Done(v) => return Ok(v.clone()),
            ConstState::Busy => {
                let name = &self.prog.items.consts[i as usize].name.text;
                return Err(self.err(use_span, format!("const `{name}` depends on itself")));
            }
            ConstState::Todo => {}
        }
        self.consts[i as usize] = ConstState::Busy;
        let def = &self.prog.items.consts[i as usize];
        let mut sc = Scope::new(None, "".into());
        let r = self.eval(&mut sc, &def.value);
        let v = match r {
            Ok(v) => v,
            Err(e) => {
                self.consts[i as usize] = ConstState::Todo;
                let note = format!(
                    "while evaluating const `{}` used at {}",
                    def.name.text,
                    self.pos(use_span)
                );
                return Err(e.with_note(note));
            }
        };
        self.consts[i as usize] = ConstState::Done(v.clone());
        Ok(v)
    }

    // ---- expressions ---------------------------------------------------------------------------

    pub fn eval(&mut self, sc: &mut Scope<'p>, e: &'p Expr) -> R<Value> {
        match &e.kind {
            ExprKind::Int(i) => Ok(Value::Int(*i)),
            ExprKind::Float(f) => Ok(Value::Float(*f)),
            ExprKind::Bool(b) => Ok(Value::Bool(*b)),
            ExprKind::None => Ok(Value::None),
            ExprKind::Str(s) => Ok(Value::Str(s.as_str().into())),
            ExprKind::Ident(name) => self.lookup(sc, name, e.span),
            ExprKind::List(xs) => Ok(Value::list(self.eval_all(sc, xs)?)),
            ExprKind::Tuple(xs) => Ok(Value::tuple(self.eval_all(sc, xs)?)),
            ExprKind::Unary(op, x) => {
                let v = self.eval(sc, x)?;
                self.unary(sc, e.span, *op, v)
            }
            ExprKind::Binary(op, a, b) => self.eval_binary(sc, e.span, *op, a, b),
            ExprKind::Call(callee, args) => self.eval_call(sc, e.span, callee, args),
            ExprKind::Member(obj, name) => {
                let v = self.eval(sc, obj)?;
                match self.member(&v, name)? {
                    Some(m) => Ok(m),
                    None => Err(self.missing_member(&v, name)),
                }
            }
            ExprKind::Index(obj, ix) => {
                let v = self.eval(sc, obj)?;
                let i = self.eval(sc, ix)?;
                self.index(&v, &i, obj.span, ix.span)
            }
            ExprKind::If(arms, else_block) => {
                for (cond, block) in arms {
                    if self.eval_cond(sc, cond)? {
                        return self.eval_block(sc, block);
                    }
                }
                match else_block {
                    Some(b) => self.eval_block(sc, b),
                    None => Ok(Value::None),
                }
            }
        }
    }

    fn eval_all(&mut self, sc: &mut Scope<'p>, xs: &'p [Expr]) -> R<Vec<Value>> {
        xs.iter().map(|x| self.eval(sc, x)).collect()
    }

    /// Evaluates a compile-time condition.
    pub fn eval_cond(&mut self, sc: &mut Scope<'p>, cond: &'p Expr) -> R<bool> {
        match self.eval(sc, cond)? {
            Value::Bool(b) => Ok(b),
            Value::Tensor(id) => Err(self.err(
                cond.span,
                format!(
                    "condition must be known at compile time, but it is a tensor {} (use `where(cond, a, b)` \
                     to select between tensors)",
                    self.graph.ty(id)
                ),
            )),
            v => Err(self.err(
                cond.span,
                format!("condition must be a bool, got {} (use `is_none(v)` to test for none)", self.describe(&v)),
            )),
        }
    }

    fn eval_binary(
        &mut self,
        sc: &mut Scope<'p>,
        span: Span,
        op: BinOp,
        a: &'p Expr,
        b: &'p Expr,
    ) -> R<Value> {
        match op {
            BinOp::Coalesce => {
                let lhs = self.eval_soft(sc, a)?;
                match lhs {
                    Some(v) if !matches!(v, Value::None) => Ok(v),
                    _ => self.eval(sc, b),
                }
            }
            BinOp::And | BinOp::Or => {
                let lhs = self.eval(sc, a)?;
                if let Value::Bool(x) = lhs {
                    if x == (op == BinOp::Or) {
                        return Ok(Value::Bool(x));
                    }
                    let rhs = self.eval(sc, b)?;
                    if let Value::Bool(y) = rhs {
                        return Ok(Value::Bool(y));
                    }
                    return self.binary(sc, span, op, lhs, rhs);
                }
                let rhs = self.eval(sc, b)?;
                self.binary(sc, span, op, lhs, rhs)
            }
            _ => {
                let lhs = self.eval(sc, a)?;
                let rhs = self.eval(sc, b)?;
                self.binary(sc, span, op, lhs, rhs)
            }
        }
    }

    /// Like `eval`, but a missing key of `config` (or of a nested object) gives `None` instead of an
    /// error: the left side of `??`.
    fn eval_soft(&mut self, sc: &mut Scope<'p>, e: &'p Expr) -> R<Option<Value>> {
        if let ExprKind::Member(obj, name) = &e.kind {
            let Some(v) = self.eval_soft(sc, obj)? else {
                return Ok(None);
            };
            if let Value::Dict(d) = &v {
                return Ok(d.entries.get(&name.text).cloned());
            }
            return match self.member(&v, name)? {
                Some(m) => Ok(Some(m)),
                None => Err(self.missing_member(&v, name)),
            };
        }
        self.eval(sc, e).map(Some)
    }

    // ---- members and indexing ------------------------------------------------------------------

    /// `v.name`, or None when `v` has no such member.
    fn member(&self, v: &Value, name: &Name) -> R<Option<Value>> {
        match v {
            Value::Instance(inst) => {
                if let Some(x) = inst.env.get(name.text.as_str()) {
                    return Ok(Some(x.clone()));
                }
                let def = &self.prog.items.modules[inst.module as usize];
                Ok(def
                    .method(&name.text)
                    .map(|m| Value::Func(Callable::Method(inst.clone(), m as u32))))
            }
            Value::Dict(d) => Ok(d.entries.get(&name.text).cloned()),
            _ => Err(self.err(
                name.span,
                format!("`.{}`: {} has no members", name.text, self.describe(v)),
            )),
        }
    }

    fn missing_member(&self, v: &Value, name: &Name) -> DslError {
        match v {
            Value::Instance(inst) => {
                let def = &self.prog.items.modules[inst.module as usize];
                let cands = inst
                    .env
                    .keys()
                    .map(|k| &**k)
                    .chain(def.methods.iter().map(|m| m.name.text.as_str()));
                self.err(
                    name.span,
                    format!(
                        "module `{}` ({}) has no member `{}`{}",
                        def.name.text,
                        path_label(&inst.prefix),
                        name.text,
                        suggestion(&name.text, cands)
                    ),
                )
            }
            Value::Dict(d) if d.path == "adapter" || d.path.starts_with("adapter.") => self
                .err(
                    name.span,
                    format!(
                        "missing adapter key `{}`: the adapter settings{} have no such key{}",
                        name.text,
                        if d.path == "adapter" { String::new() } else { format!(" at `{}`", d.path) },
                        suggestion(&name.text, d.entries.keys().map(|k| k.as_str()))
                    ),
                )
                .with_note(format!(
                    "write `{}.{} ?? default` to make it optional (no adapter is layered on the model, or it lacks the key)",
                    d.path, name.text
                )),
            Value::Dict(d) => {
                let file = if d.path == "config" {
                    "config.json"
                } else {
                    "config.json at"
                };
                let at = if d.path == "config" {
                    String::new()
                } else {
                    format!(" `{}`", d.path)
                };
                self.err(
                    name.span,
                    format!(
                        "missing config key `{}`: {file}{at} has no such key{}",
                        name.text,
                        suggestion(&name.text, d.entries.keys().map(|k| k.as_str()))
                    ),
                )
                .with_note(format!(
                    "write `{}.{} ?? default` to make it optional",
                    d.path, name.text
                ))
            }
            _ => self.err(
                name.span,
                format!("{} has no member `{}`", self.describe(v), name.text),
            ),
        }
    }

    fn index(&self, v: &Value, i: &Value, vspan: Span, ispan: Span) -> R<Value> {
        if let (Value::Dict(d), Value::Str(k)) = (v, i) {
            return d
                .entries
                .get(&**k)
                .cloned()
                .ok_or_else(|| self.err(ispan, format!("`{}` has no key `{k}`", d.path)));
        }
        if let Value::Str(s) = v {
            let chars: Vec<Value> = s
                .chars()
                .map(|c| Value::Str(c.to_string().into()))
                .collect();
            return self.index(&Value::list(chars), i, vspan, ispan);
        }
        if let (Value::Range(a, b), Value::Int(k)) = (v, i) {
            let n = b.saturating_sub(*a).max(0);
            let k2 = if *k < 0 { k.saturating_add(n) } else { *k };
            if k2 < 0 || k2 >= n {
                return Err(self.err(
                    ispan,
                    format!("index {k} out of range for {}", self.describe(v)),
                ));
            }
            return Ok(Value::Int(a + k2));
        }
        let Some(items) = v.items() else {
            let hint = if matches!(v, Value::Tensor(_)) {
                " (use slice(x, axis, start, end) on tensors)"
            } else {
                ""
            };
            return Err(self.err(vspan, format!("cannot index {}{hint}", self.describe(v))));
        };
        let n = items.len() as i64;
        match i {
            Value::Int(k) => {
                let k2 = if *k < 0 { k + n } else { *k };
                if k2 < 0 || k2 >= n {
                    return Err(self.err(
                        ispan,
                        format!("index {k} out of range for {}", self.describe(v)),
                    ));
                }
                Ok(items[k2 as usize].clone())
            }
            Value::Range(a, b) => {
                let norm = |x: i64| (if x < 0 { x + n } else { x }).clamp(0, n) as usize;
                let (a, b) = (norm(*a), norm(*b));
                let part = if a < b {
                    items[a..b].to_vec()
                } else {
                    Vec::new()
                };
                Ok(match v {
                    Value::Tuple(_) => Value::tuple(part),
                    _ => Value::list(part),
                })
            }
            _ => Err(self.err(
                ispan,
                format!("index must be an int or a range, got {}", self.describe(i)),
            )),
        }
    }

    // ---- calls ---------------------------------------------------------------------------------

    fn eval_args(&mut self, sc: &mut Scope<'p>, args: &'p [Arg]) -> R<CallArgs<'p>> {
        let mut out = CallArgs {
            pos: Vec::with_capacity(args.len()),
            kw: Vec::new(),
        };
        for a in args {
            let v = self.eval(sc, &a.value)?;
            match &a.name {
                Some(n) => out.kw.push((n.text.as_str(), v, n.span)),
                None => out.pos.push((v, a.value.span)),
            }
        }
        Ok(out)
    }

    fn eval_call(
        &mut self,
        sc: &mut Scope<'p>,
        span: Span,
        callee: &'p Expr,
        args: &'p [Arg],
    ) -> R<Value> {
        let f = match &callee.kind {
            ExprKind::Ident(name) => {
                let v = self.lookup(sc, name, callee.span)?;
                // In call position a name bound to a plain value (say a constructor argument `dim`)
                // falls through to the function of that name (the builtin `dim`).
                if is_callable(&v) {
                    v
                } else {
                    self.function_named(name).unwrap_or(v)
                }
            }
            _ => self.eval(sc, callee)?,
        };
        let args = self.eval_args(sc, args)?;
        self.call_value(sc, span, callee.span, f, args)
    }

    /// A global function or builtin called `name`, ignoring local values.
    fn function_named(&self, name: &str) -> Option<Value> {
        match self.prog.items.table.get(name) {
            Some(ItemRef::Fn(i)) => Some(Value::Func(Callable::Fn(*i))),
            Some(ItemRef::Module(i)) => Some(Value::Module(*i)),
            _ => Builtin::from_name(name).map(|b| Value::Func(Callable::Builtin(b))),
        }
    }

    pub fn call_value(
        &mut self,
        sc: &mut Scope<'p>,
        span: Span,
        callee_span: Span,
        f: Value,
        args: CallArgs<'p>,
    ) -> R<Value> {
        match f {
            Value::Func(Callable::Builtin(b)) => self.call_builtin(sc, span, b, args),
            Value::Func(Callable::Fn(i)) => {
                let def = &self.prog.items.fns[i as usize];
                self.call_user(sc, span, def, None, args)
            }
            Value::Func(Callable::Method(inst, m)) => {
                let def = &self.prog.items.modules[inst.module as usize].methods[m as usize];
                self.call_user(sc, span, def, Some(inst), args)
            }
            Value::Instance(inst) => {
                let mdef = &self.prog.items.modules[inst.module as usize];
                let Some(m) = mdef.method("forward") else {
                    return Err(self.err(
                        callee_span,
                        format!("module `{}` has no `forward` method, so its instances cannot be called", mdef.name.text),
                    ));
                };
                self.call_user(sc, span, &mdef.methods[m], Some(inst), args)
            }
            Value::Module(m) => Err(self.err(
                callee_span,
                format!(
                    "module `{}` cannot be called like a function; declare an instance in a module with \
                     `sub name = {}(..);` and call that",
                    self.module_name(m),
                    self.module_name(m)
                ),
            )),
            v => Err(self.err(callee_span, format!("{} is not callable", self.describe(&v)))),
        }
    }

    /// Binds call arguments to declared parameters, pushing them into `sc` in order (defaults are
    /// evaluated in `sc`, so they may use earlier parameters).
    pub fn bind_params(
        &mut self,
        sc: &mut Scope<'p>,
        params: &'p [ParamDecl],
        args: CallArgs<'p>,
        what: &str,
        def_span: Span,
        call_span: Span,
    ) -> R<()> {
        let sig = || {
            let ps: Vec<&str> = params.iter().map(|p| p.name.text.as_str()).collect();
            format!("({})", ps.join(", "))
        };
        let defined = format!("{what} is defined at {}", self.pos(def_span));
        if args.pos.len() > params.len() {
            let max = params.len();
            let plural = if max == 1 { "" } else { "s" };
            return Err(self
                .err(
                    call_span,
                    format!(
                        "{what} takes {max} argument{plural} {} but {} were given",
                        sig(),
                        args.pos.len()
                    ),
                )
                .with_note(defined));
        }
        let mut slots: Vec<Option<Value>> = vec![None; params.len()];
        let npos = args.pos.len();
        for (i, (v, _)) in args.pos.into_iter().enumerate() {
            slots[i] = Some(v);
        }
        for (name, v, kspan) in args.kw {
            let Some(i) = params.iter().position(|p| p.name.text == name) else {
                let msg = format!(
                    "{what} has no parameter `{name}`{}",
                    suggestion(name, params.iter().map(|p| p.name.text.as_str()))
                );
                return Err(self
                    .err(kspan, msg)
                    .with_note(format!("parameters: {}", sig()))
                    .with_note(defined));
            };
            if i < npos {
                return Err(self.err(
                    kspan,
                    format!("argument `{name}` of {what} is given twice (by position and by name)"),
                ));
            }
            slots[i] = Some(v);
        }
        for (p, slot) in params.iter().zip(slots) {
            let v = match slot {
                Some(v) => v,
                None => match &p.default {
                    Some(d) => self.eval(sc, d)?,
                    None => {
                        return Err(self
                            .err(
                                call_span,
                                format!(
                                    "missing argument `{}` in call to {what} {}",
                                    p.name.text,
                                    sig()
                                ),
                            )
                            .with_note(defined))
                    }
                },
            };
            sc.vars.push((p.name.text.as_str(), v));
        }
        Ok(())
    }

    pub fn enter(&mut self, span: Span) -> R<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            self.depth -= 1;
            return Err(self.err(
                span,
                format!("calls nested more than {MAX_DEPTH} deep (unbounded recursion?)"),
            ));
        }
        Ok(())
    }

    pub fn leave(&mut self) {
        self.depth -= 1;
    }

    fn call_user(
        &mut self,
        caller: &Scope<'p>,
        span: Span,
        def: &'p FnDef,
        inst: Option<Rc<Instance>>,
        args: CallArgs<'p>,
    ) -> R<Value> {
        let what = match &inst {
            Some(i) => format!("`{}.{}`", self.module_name(i.module), def.name.text),
            None => format!("fn `{}`", def.name.text),
        };
        let in_prelude = def.span.file == 0;
        let prefix = inst
            .as_ref()
            .map_or_else(|| caller.prefix.clone(), |i| i.prefix.clone());
        let label = inst.as_ref().map(|i| path_label(&i.prefix));
        let mut sc = Scope::new(inst, prefix);
        sc.site = if in_prelude {
            Some(caller.site.unwrap_or(span))
        } else {
            None
        };
        self.enter(span)?;
        let mut bound = true;
        let r = self
            .bind_params(&mut sc, &def.params, args, &what, def.span, span)
            .inspect_err(|_| bound = false)
            .and_then(|()| self.eval_block(&mut sc, &def.body));
        self.leave();
        r.map_err(|mut e| {
            // Errors raised inside the prelude are reported where user code called into it.
            let user_call = span.file != 0 || self.prog.files[0].name != PRELUDE_NAME;
            if in_prelude && user_call && e.file == PRELUDE_NAME && e.line > 0 {
                let mut moved = self.err(span, std::mem::take(&mut e.message));
                moved
                    .notes
                    .push(format!("raised at {} in the prelude", e.location()));
                moved.notes.append(&mut e.notes);
                e = moved;
            }
            if !bound {
                return e;
            }
            let at = self.pos(span);
            let note = match label {
                Some(l) => format!("in {what} ({l}) called at {at}"),
                None => format!("in {what} called at {at}"),
            };
            e.with_note(note)
        })
    }

    // ---- statements ----------------------------------------------------------------------------

    pub fn eval_block(&mut self, sc: &mut Scope<'p>, b: &'p Block) -> R<Value> {
        let mark = sc.vars.len();
        let r = self.eval_block_inner(sc, b);
        sc.vars.truncate(mark);
        r
    }

    fn eval_block_inner(&mut self, sc: &mut Scope<'p>, b: &'p Block) -> R<Value> {
        for s in &b.stmts {
            self.exec(sc, s)?;
        }
        match &b.tail {
            Some(e) => self.eval(sc, e),
            None => Ok(Value::None),
        }
    }

    fn exec(&mut self, sc: &mut Scope<'p>, s: &'p Stmt) -> R<()> {
        match s {
            Stmt::Let(pat, e) => {
                let v = self.eval(sc, e)?;
                self.bind_pattern(sc, pat, v)
            }
            Stmt::Assign(name, e) => {
                let v = self.eval(sc, e)?;
                if let Some(slot) = sc.vars.iter_mut().rev().find(|(n, _)| *n == name.text) {
                    slot.1 = v;
                    return Ok(());
                }
                let hint = if sc
                    .inst
                    .as_ref()
                    .is_some_and(|i| i.env.contains_key(name.text.as_str()))
                {
                    format!(
                        "`{}` is a module member and cannot be reassigned; use `let {} = ...;`",
                        name.text, name.text
                    )
                } else {
                    format!(
                        "`{}` is not a local variable; declare it with `let {} = ...;`",
                        name.text, name.text
                    )
                };
                Err(self.err(name.span, hint))
            }
            Stmt::For(pat, iter, body) => {
                let v = self.eval(sc, iter)?;
                let Some(items) = v.items() else {
                    let why = if matches!(v, Value::Range(..)) {
                        " (too long to unroll)"
                    } else {
                        ""
                    };
                    return Err(self.err(
                        iter.span,
                        format!("cannot iterate over {}{why}", self.describe(&v)),
                    ));
                };
                for item in items.iter() {
                    let mark = sc.vars.len();
                    let r = self
                        .bind_pattern(sc, pat, item.clone())
                        .and_then(|()| self.eval_block(sc, body));
                    sc.vars.truncate(mark);
                    r?;
                }
                Ok(())
            }
            Stmt::Output(name, e) => {
                let v = self.eval(sc, e)?;
                if !sc.root {
                    return Err(self.err(
                        name.span,
                        "`output` is only allowed in the forward of the entry module",
                    ));
                }
                let Value::Tensor(id) = v else {
                    return Err(self.err(
                        e.span,
                        format!(
                            "output `{}` must be a tensor, got {}",
                            name.text,
                            self.describe(&v)
                        ),
                    ));
                };
                if self.graph.output(&name.text).is_some() {
                    return Err(self.err(
                        name.span,
                        format!("output `{}` is declared twice", name.text),
                    ));
                }
                self.graph.set_output(&name.text, id);
                Ok(())
            }
            Stmt::Expr(e) => self.eval(sc, e).map(|_| ()),
        }
    }

    pub fn bind_pattern(&mut self, sc: &mut Scope<'p>, pat: &'p Pattern, v: Value) -> R<()> {
        match pat {
            Pattern::Name(n) => {
                sc.vars.push((n.text.as_str(), v));
                Ok(())
            }
            Pattern::Tuple(pats, span) => {
                let items = match &v {
                    Value::List(x) | Value::Tuple(x) => x.clone(),
                    _ => {
                        return Err(self.err(
                            *span,
                            format!(
                                "cannot unpack {} into {} names",
                                self.describe(&v),
                                pats.len()
                            ),
                        ))
                    }
                };
                if items.len() != pats.len() {
                    return Err(self.err(
                        *span,
                        format!(
                            "cannot unpack {} into {} names",
                            self.describe(&v),
                            pats.len()
                        ),
                    ));
                }
                for (p, x) in pats.iter().zip(items.iter()) {
                    self.bind_pattern(sc, p, x.clone())?;
                }
                Ok(())
            }
        }
    }
}

fn is_callable(v: &Value) -> bool {
    matches!(v, Value::Func(_) | Value::Instance(_) | Value::Module(_))
}

/// "blocks.3", or "root" for the entry module.
pub(crate) fn path_label(prefix: &str) -> String {
    if prefix.is_empty() {
        "root".to_string()
    } else {
        prefix.to_string()
    }
}
