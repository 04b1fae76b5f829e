//! The syntax tree of a `.qie` file. Every node carries a [`Span`] for error messages and origins.

use crate::DType;

/// A byte range in one source file (`file` indexes `Program::files`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Span {
    pub file: u32,
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn to(self, other: Span) -> Span {
        Span {
            file: self.file,
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Name {
    pub text: String,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Coalesce,
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Rem,
    Range,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Coalesce => "??",
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::FloorDiv => "~/",
            BinOp::Rem => "%",
            BinOp::Range => "..",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
    /// Height of the tree below (1 for a leaf); bounded by the parser so evaluation cannot
    /// overflow the stack.
    pub depth: u32,
}

impl Expr {
    pub fn new(kind: ExprKind, span: Span) -> Expr {
        let d = |e: &Expr| e.depth;
        let below = match &kind {
            ExprKind::List(xs) | ExprKind::Tuple(xs) => xs.iter().map(d).max().unwrap_or(0),
            ExprKind::Unary(_, x) => x.depth,
            ExprKind::Binary(_, a, b) | ExprKind::Index(a, b) => a.depth.max(b.depth),
            ExprKind::Call(f, args) => args.iter().map(|a| a.value.depth).fold(f.depth, u32::max),
            ExprKind::Member(x, _) => x.depth,
            ExprKind::If(arms, els) => {
                let arms = arms
                    .iter()
                    .map(|(c, b)| c.depth.max(b.depth))
                    .max()
                    .unwrap_or(0);
                arms.max(els.as_ref().map_or(0, |b| b.depth))
            }
            _ => 0,
        };
        Expr {
            kind,
            span,
            depth: below + 1,
        }
    }
}

#[derive(Clone, Debug)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Bool(bool),
    None,
    Str(String),
    Ident(String),
    List(Vec<Expr>),
    Tuple(Vec<Expr>),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Call(Box<Expr>, Vec<Arg>),
    Member(Box<Expr>, Name),
    Index(Box<Expr>, Box<Expr>),
    /// `if c1 { .. } else if c2 { .. } else { .. }`
    If(Vec<(Expr, Block)>, Option<Box<Block>>),
}

#[derive(Clone, Debug)]
pub struct Arg {
    pub name: Option<Name>,
    pub value: Expr,
}

#[derive(Clone, Debug)]
pub struct Block {
    pub stmts: Vec<Stmt>,
    /// The block's value: a trailing expression without `;`.
    pub tail: Option<Expr>,
    /// Deepest nesting of expressions and blocks inside.
    pub depth: u32,
}

impl Block {
    pub fn new(stmts: Vec<Stmt>, tail: Option<Expr>) -> Block {
        let stmt_depth = |s: &Stmt| match s {
            Stmt::Let(_, e) | Stmt::Assign(_, e) | Stmt::Output(_, e) | Stmt::Expr(e) => e.depth,
            Stmt::For(_, e, b) => e.depth.max(b.depth),
        };
        let inner = stmts.iter().map(stmt_depth).max().unwrap_or(0);
        let depth = inner.max(tail.as_ref().map_or(0, |e| e.depth)) + 1;
        Block { stmts, tail, depth }
    }
}

#[derive(Clone, Debug)]
pub enum Stmt {
    Let(Pattern, Expr),
    Assign(Name, Expr),
    For(Pattern, Expr, Block),
    Output(Name, Expr),
    Expr(Expr),
}

#[derive(Clone, Debug)]
pub enum Pattern {
    Name(Name),
    Tuple(Vec<Pattern>, Span),
}

/// `dtype[d0, d1, ..]` on a forward parameter (a graph input).
#[derive(Clone, Debug)]
pub struct TypeAnn {
    pub dtype: DType,
    pub dims: Vec<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct ParamDecl {
    pub name: Name,
    pub ty: Option<TypeAnn>,
    pub default: Option<Expr>,
}

#[derive(Clone, Debug)]
pub struct FnDef {
    pub name: Name,
    pub params: Vec<ParamDecl>,
    pub body: Block,
    /// The `fn name(..)` header.
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct ParamMember {
    pub name: Name,
    pub dtype: DType,
    pub dims: Vec<Expr>,
    /// `= normal(0.02)`: how to create the weight when the checkpoint lacks it.
    pub init: Option<Expr>,
    pub cond: Option<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct SubMember {
    pub name: Name,
    pub count: Option<Expr>,
    pub module: Name,
    pub args: Vec<Arg>,
    /// Explicit checkpoint path (`@ "net.0.proj"`, `@ "down_blocks.{first + 1}"`).
    pub path: Option<(Vec<PathPart>, Span)>,
    pub cond: Option<Expr>,
    pub span: Span,
}

/// A piece of a sub's `@` path: literal text, or a `{expr}` interpolation (an int or a string).
#[derive(Clone, Debug)]
pub enum PathPart {
    Text(String),
    Expr(Expr),
}

#[derive(Clone, Debug)]
pub enum Member {
    Let(Pattern, Expr),
    Param(ParamMember),
    Sub(SubMember),
}

#[derive(Clone, Debug)]
pub struct ModuleDef {
    pub name: Name,
    pub params: Vec<ParamDecl>,
    pub members: Vec<Member>,
    pub methods: Vec<FnDef>,
}

impl ModuleDef {
    pub fn method(&self, name: &str) -> Option<usize> {
        self.methods.iter().position(|m| m.name.text == name)
    }
}

#[derive(Clone, Debug)]
pub struct ConstDef {
    pub name: Name,
    pub value: Expr,
}

#[derive(Clone, Debug)]
pub enum ItemKind {
    Import(String),
    Const(ConstDef),
    Fn(FnDef),
    Module(ModuleDef),
    Entry(Name),
}

#[derive(Clone, Debug)]
pub struct Item {
    pub kind: ItemKind,
    pub is_override: bool,
    pub span: Span,
}
