//! The renderer proper: [`render_program`].

use crate::index::{IndexExpr, IndexMap};
use crate::program::{Instr, KernelProgram, ReduceStage, Section, Stmt};
use qie_ir::{BinaryOp, CmpOp, DType, ReduceOp, UnaryOp};
use std::fmt::Write;

/// Helpers every generated module starts with (storage types, conversions, integer semantics).
pub const PRELUDE: &str = include_str!("prelude.cuh");

/// Threads per block of elementwise kernels.
const ELEMENTWISE_THREADS: u32 = 256;
/// Grid-stride loops use at most this many blocks (enough to fill any current GPU).
const MAX_BLOCKS: u64 = 1 << 16;
/// Placeholder for the kernel's symbol while its text is hashed.
const NAME_SLOT: &str = "__QIE_KERNEL__";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// Mark every pointer `__restrict__` (only when no output shares bytes with an input).
    pub restrict: bool,
}

/// A 1-D launch: `grid` blocks of `block` threads, no dynamic shared memory. `grid == 0` means
/// the kernel has nothing to do (empty space) and must not be launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLaunch {
    pub grid: u32,
    pub block: u32,
}

/// One rendered kernel: a `__global__` function taking one pointer per program input, then one
/// per output, in the program's binding order.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedKernel {
    /// The function's symbol: `qk_` + a hash of its text.
    pub name: String,
    /// The program's name (`g12_add_exp`), for messages; not part of the source.
    pub label: String,
    /// The function's definition (compile it after [`PRELUDE`]).
    pub source: String,
    pub launch: KernelLaunch,
}

/// Renders one program. Fails only on instructions that have no meaning for their dtype (which
/// type inference rejects earlier), naming the program.
pub fn render_program(p: &KernelProgram, opts: &RenderOptions) -> Result<RenderedKernel, String> {
    let mut r = Renderer::new(p, opts);
    let (body, launch) = if p.is_reduction() {
        r.reduction()?
    } else {
        r.elementwise()?
    };
    let hash = super::fnv1a64(&body);
    let name = format!("qk_{hash:016x}");
    Ok(RenderedKernel {
        source: body.replace(NAME_SLOT, &name),
        name,
        label: p.name.clone(),
        launch,
    })
}

/// How values of a dtype live in registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cat {
    Float,
    I32,
    I64,
    Bool,
}

fn cat(d: DType) -> Cat {
    match d {
        DType::F32 | DType::BF16 | DType::F16 => Cat::Float,
        DType::I32 => Cat::I32,
        DType::I64 => Cat::I64,
        DType::Bool => Cat::Bool,
    }
}

fn reg_type(d: DType) -> &'static str {
    match cat(d) {
        Cat::Float => "float",
        Cat::I32 => "int",
        Cat::I64 => "long long",
        Cat::Bool => "bool",
    }
}

/// The C type of a buffer element.
pub(crate) fn mem_type(d: DType) -> &'static str {
    match d {
        DType::F32 => "float",
        DType::BF16 => "bf16_t",
        DType::F16 => "f16_t",
        DType::I32 => "int",
        DType::I64 => "long long",
        DType::Bool => "u8_t",
    }
}

/// Converts a register expression of dtype `from` to a register of dtype `to`.
fn cast(from: DType, to: DType, e: &str) -> String {
    match (cat(from), cat(to)) {
        (a, b) if a == b => e.to_string(),
        (_, Cat::Float) if cat(from) == Cat::Bool => format!("(({e}) ? 1.0f : 0.0f)"),
        (_, Cat::Float) => format!("((float)({e}))"),
        (Cat::Float, Cat::Bool) => format!("(({e}) != 0.0f)"),
        (_, Cat::Bool) => format!("(({e}) != 0)"),
        (_, Cat::I32) => format!("((int)({e}))"),
        (_, Cat::I64) => format!("((long long)({e}))"),
    }
}

/// A buffer element (C expression of `mem_type(d)`) as a register of dtype `d`.
fn load_conv(d: DType, e: &str) -> String {
    match d {
        DType::BF16 | DType::F16 => format!("to_f({e})"),
        DType::Bool => format!("({e} != 0)"),
        _ => e.to_string(),
    }
}

/// A register of dtype `d` as a buffer element of dtype `d`.
fn store_conv(d: DType, e: &str) -> String {
    match d {
        DType::BF16 => format!("to_bf16({e})"),
        DType::F16 => format!("to_f16({e})"),
        DType::Bool => format!("(u8_t)({e})"),
        _ => e.to_string(),
    }
}

/// An f32 literal that reads back exactly.
fn f32_literal(v: f32) -> String {
    if v.is_nan() {
        "QNAN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "QINF".into()
        } else {
            "(-QINF)".into()
        }
    } else {
        // Debug prints the shortest text that round-trips, always with a '.' or an exponent.
        let s = format!("{v:?}");
        format!("{s}f")
    }
}

fn const_literal(d: DType, v: f64) -> String {
    match cat(d) {
        Cat::Float => f32_literal(v as f32),
        Cat::Bool => if v != 0.0 { "true" } else { "false" }.into(),
        Cat::I32 => format!("((int)({}LL))", v as i64 as i32),
        Cat::I64 => {
            let x = v as i64;
            if x == i64::MIN {
                "(-9223372036854775807LL - 1)".into()
            } else {
                format!("({x}LL)")
            }
        }
    }
}

fn reduce_identity(op: ReduceOp, d: DType) -> String {
    match (op, cat(d)) {
        (ReduceOp::Sum, c) => const_literal(if c == Cat::Bool { DType::I32 } else { d }, 0.0),
        (ReduceOp::Max, Cat::Float) => "(-QINF)".into(),
        (ReduceOp::Min, Cat::Float) => "QINF".into(),
        (ReduceOp::Max, Cat::I32) => "(-2147483647 - 1)".into(),
        (ReduceOp::Min, Cat::I32) => "2147483647".into(),
        (ReduceOp::Max, Cat::I64) => "(-9223372036854775807LL - 1)".into(),
        (ReduceOp::Min, Cat::I64) => "9223372036854775807LL".into(),
        (ReduceOp::Max, Cat::Bool) => "false".into(),
        (ReduceOp::Min, Cat::Bool) => "true".into(),
    }
}

fn reduce_combine(op: ReduceOp, d: DType, a: &str, b: &str) -> String {
    match (op, cat(d)) {
        (ReduceOp::Sum, Cat::Float) => format!("{a} + {b}"),
        (ReduceOp::Sum, Cat::Bool) => format!("{a} || {b}"),
        (ReduceOp::Sum, _) => format!("qadd({a}, {b})"),
        (ReduceOp::Max, Cat::Float) => format!("qmaxf({a}, {b})"),
        (ReduceOp::Min, Cat::Float) => format!("qminf({a}, {b})"),
        (ReduceOp::Max, Cat::Bool) => format!("{a} || {b}"),
        (ReduceOp::Min, Cat::Bool) => format!("{a} && {b}"),
        (ReduceOp::Max, _) => format!("qmax({a}, {b})"),
        (ReduceOp::Min, _) => format!("qmin({a}, {b})"),
    }
}

/// The accumulator of a reduce stage: float sums accumulate in f64 (as the CPU reference does;
/// a long sum that cancels keeps its digits), everything else in the register type.
fn acc_type(r: &ReduceStage) -> &'static str {
    match (r.op, cat(r.dtype)) {
        (ReduceOp::Sum, Cat::Float) => "double",
        _ => reg_type(r.dtype),
    }
}

fn acc_name(r: &ReduceStage) -> String {
    format!("a{}", r.dst.0)
}

/// The integer type of index arithmetic: 32-bit unsigned when every offset fits (and none is
/// negative), else 64-bit signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IndexType {
    U32,
    I64,
}

impl IndexType {
    fn name(self) -> &'static str {
        match self {
            IndexType::U32 => "unsigned",
            IndexType::I64 => "long long",
        }
    }
    fn lit(self, v: i64) -> String {
        match self {
            IndexType::U32 => format!("{v}u"),
            IndexType::I64 => format!("{v}LL"),
        }
    }
}

fn has_negative(e: &IndexExpr) -> bool {
    match e {
        IndexExpr::Var(_) => false,
        IndexExpr::Const(c) => *c < 0,
        IndexExpr::Add(a, b) => has_negative(a) || has_negative(b),
        IndexExpr::Mul(a, k) => *k < 0 || has_negative(a),
        IndexExpr::Div(a, k) | IndexExpr::Rem(a, k) => *k <= 0 || has_negative(a),
    }
}

fn render_expr(e: &IndexExpr, it: IndexType) -> String {
    match e {
        IndexExpr::Var(d) => format!("i{d}"),
        IndexExpr::Const(c) => it.lit(*c),
        IndexExpr::Add(a, b) => format!("{} + {}", render_expr(a, it), render_expr(b, it)),
        IndexExpr::Mul(a, k) => format!("{} * {}", paren(a, it), it.lit(*k)),
        IndexExpr::Div(a, k) => format!("{} / {}", paren(a, it), it.lit(*k)),
        IndexExpr::Rem(a, k) => format!("{} % {}", paren(a, it), it.lit(*k)),
    }
}

fn paren(e: &IndexExpr, it: IndexType) -> String {
    match e {
        IndexExpr::Var(_) | IndexExpr::Const(_) => render_expr(e, it),
        _ => format!("({})", render_expr(e, it)),
    }
}

/// See [`Renderer::plan_vector`].
struct VectorPlan {
    width: usize,
    loads: Vec<crate::Reg>,
    stores: Vec<usize>,
}

struct Renderer<'a> {
    p: &'a KernelProgram,
    opts: RenderOptions,
    it: IndexType,
    reg_dtype: Vec<DType>,
}

const LIMIT_U32: i64 = i32::MAX as i64;

impl<'a> Renderer<'a> {
    fn new(p: &'a KernelProgram, opts: &RenderOptions) -> Self {
        // Choose the index type from the largest offset any map can produce.
        let mut wide = p.space.iter().product::<usize>() as i64 >= LIMIT_U32;
        let mut check = |map: &IndexMap, extra: i64, extra_negative: bool| {
            let e = map.to_expr();
            let ranges = map.shape().to_vec();
            if extra_negative || has_negative(&e) || e.max_value(&ranges) + extra >= LIMIT_U32 {
                wide = true;
            }
        };
        for sec in [&p.body, &p.epilogue] {
            for s in &sec.stmts {
                match &s.instr {
                    Instr::Load { map, .. } | Instr::Iota { map, .. } => check(map, 0, false),
                    Instr::LoadGather {
                        map, stride, dim, ..
                    } => check(map, (*dim as i64 - 1).max(0) * stride.abs(), *stride < 0),
                    _ => {}
                }
            }
            for st in &sec.stores {
                check(&st.map, 0, false);
            }
        }
        Renderer {
            p,
            opts: *opts,
            it: if wide { IndexType::I64 } else { IndexType::U32 },
            reg_dtype: p.reg_dtypes(),
        }
    }

    fn signature(&self, out: &mut String, block: u32) {
        let restrict = if self.opts.restrict {
            " __restrict__"
        } else {
            ""
        };
        let mut params = vec![];
        for (i, b) in self.p.inputs.iter().enumerate() {
            params.push(format!("const {}*{restrict} in{i}", mem_type(b.ty.dtype)));
        }
        for (i, b) in self.p.outputs.iter().enumerate() {
            params.push(format!("{}*{restrict} out{i}", mem_type(b.ty.dtype)));
        }
        let _ = writeln!(
            out,
            "extern \"C\" __global__ void __launch_bounds__({block}) {NAME_SLOT}({}) {{",
            params.join(", ")
        );
    }

    /// `const IT i{first + k} = ...` for the axes `dims`, unravelled from `var`.
    fn unravel(&self, out: &mut String, indent: &str, var: &str, dims: &[usize], first: usize) {
        let it = self.it.name();
        match dims.len() {
            0 => {}
            1 => {
                let _ = writeln!(out, "{indent}const {it} i{first} = {var};");
            }
            n => {
                let t = format!("t{first}");
                let _ = writeln!(out, "{indent}{it} {t} = {var};");
                for d in (1..n).rev() {
                    let size = self.it.lit(dims[d] as i64);
                    let _ = writeln!(
                        out,
                        "{indent}const {it} i{} = {t} % {size}; {t} /= {size};",
                        first + d
                    );
                }
                let _ = writeln!(out, "{indent}const {it} i{first} = {t};");
            }
        }
    }

    fn reg(&self, r: crate::Reg) -> String {
        format!("r{}", r.0)
    }

    fn dtype_of(&self, r: crate::Reg) -> DType {
        self.reg_dtype[r.index()]
    }

    fn stmt(&self, out: &mut String, indent: &str, s: &Stmt) -> Result<(), String> {
        let d = s.dtype;
        let c = cat(d);
        let r = |x: crate::Reg| self.reg(x);
        let operand = |x: crate::Reg| cast(self.dtype_of(x), d, &self.reg(x));
        let e = match &s.instr {
            Instr::Load { input, map } => {
                let b = &self.p.inputs[*input];
                let off = render_expr(&map.to_expr(), self.it);
                let raw = load_conv(b.ty.dtype, &format!("in{input}[{off}]"));
                cast(b.ty.dtype, d, &raw)
            }
            Instr::LoadGather {
                input,
                map,
                index,
                stride,
                dim,
            } => {
                let b = &self.p.inputs[*input];
                let off = render_expr(&map.to_expr(), self.it);
                let it = self.it.name();
                let at = format!(
                    "in{input}[{off} + ({it})qclamp({}, {dim}LL) * {}]",
                    r(*index),
                    self.it.lit(*stride)
                );
                cast(b.ty.dtype, d, &load_conv(b.ty.dtype, &at))
            }
            Instr::Const { value } => const_literal(d, *value),
            Instr::Iota { map, stride, dim } => {
                let mut e = paren(&map.to_expr(), self.it);
                if *stride != 1 {
                    e = format!("({e} / {})", self.it.lit(*stride));
                }
                e = format!("({e} % {})", self.it.lit((*dim).max(1) as i64));
                cast(DType::I64, d, &format!("((long long){e})"))
            }
            Instr::Unary { op, a } => {
                let x = operand(*a);
                match (c, op) {
                    (Cat::Float, UnaryOp::Neg) => format!("(-{x})"),
                    (Cat::Float, UnaryOp::Abs) => format!("fabsf({x})"),
                    (Cat::Float, UnaryOp::Exp) => format!("expf({x})"),
                    (Cat::Float, UnaryOp::Log) => format!("logf({x})"),
                    (Cat::Float, UnaryOp::Sqrt) => format!("sqrtf({x})"),
                    (Cat::Float, UnaryOp::Rsqrt) => format!("(1.0f / sqrtf({x}))"),
                    (Cat::Float, UnaryOp::Recip) => format!("(1.0f / {x})"),
                    (Cat::Float, UnaryOp::Sin) => format!("sinf({x})"),
                    (Cat::Float, UnaryOp::Cos) => format!("cosf({x})"),
                    (Cat::Float, UnaryOp::Tanh) => format!("tanhf({x})"),
                    (Cat::Float, UnaryOp::Sigmoid) => format!("(1.0f / (1.0f + expf(-{x})))"),
                    (Cat::I32 | Cat::I64, UnaryOp::Neg) => format!("qneg({x})"),
                    (Cat::I32 | Cat::I64, UnaryOp::Abs) => format!("qabs({x})"),
                    (Cat::Bool, UnaryOp::Not) => format!("(!{x})"),
                    (Cat::I32 | Cat::I64, UnaryOp::Not) => format!("({x} == 0)"),
                    (Cat::Float, UnaryOp::Not) => format!("({x} == 0.0f)"),
                    _ => return Err(format!("{op:?} on {d} values")),
                }
            }
            Instr::Binary { op, a, b } => {
                let (x, y) = (operand(*a), operand(*b));
                match (c, op) {
                    (_, BinaryOp::And) => format!("({x} && {y})"),
                    (_, BinaryOp::Or) => format!("({x} || {y})"),
                    (Cat::Float, BinaryOp::Add) => format!("({x} + {y})"),
                    (Cat::Float, BinaryOp::Sub) => format!("({x} - {y})"),
                    (Cat::Float, BinaryOp::Mul) => format!("({x} * {y})"),
                    (Cat::Float, BinaryOp::Div) => format!("({x} / {y})"),
                    (Cat::Float, BinaryOp::Max) => format!("qmaxf({x}, {y})"),
                    (Cat::Float, BinaryOp::Min) => format!("qminf({x}, {y})"),
                    (Cat::Float, BinaryOp::Pow) => format!("powf({x}, {y})"),
                    (Cat::I32 | Cat::I64, BinaryOp::Add) => format!("qadd({x}, {y})"),
                    (Cat::I32 | Cat::I64, BinaryOp::Sub) => format!("qsub({x}, {y})"),
                    (Cat::I32 | Cat::I64, BinaryOp::Mul) => format!("qmul({x}, {y})"),
                    (Cat::I32 | Cat::I64, BinaryOp::Div) => format!("qdiv({x}, {y})"),
                    (Cat::I32 | Cat::I64, BinaryOp::FloorDiv) => format!("qfloordiv({x}, {y})"),
                    (Cat::I32 | Cat::I64, BinaryOp::Rem) => format!("qrem({x}, {y})"),
                    (Cat::I32 | Cat::I64, BinaryOp::Max) => format!("qmax({x}, {y})"),
                    (Cat::I32 | Cat::I64, BinaryOp::Min) => format!("qmin({x}, {y})"),
                    (Cat::Bool, BinaryOp::Max) => format!("({x} || {y})"),
                    (Cat::Bool, BinaryOp::Min) => format!("({x} && {y})"),
                    _ => return Err(format!("{op:?} on {d} values")),
                }
            }
            Instr::Compare { op, a, b } => {
                // Compare in the operands' own type.
                let od = self.dtype_of(*a);
                let (x, y) = (self.reg(*a), cast(self.dtype_of(*b), od, &self.reg(*b)));
                let sym = match op {
                    CmpOp::Eq => "==",
                    CmpOp::Ne => "!=",
                    CmpOp::Lt => "<",
                    CmpOp::Le => "<=",
                    CmpOp::Gt => ">",
                    CmpOp::Ge => ">=",
                };
                cast(DType::Bool, d, &format!("({x} {sym} {y})"))
            }
            Instr::Select { cond, a, b } => {
                let k = cast(self.dtype_of(*cond), DType::Bool, &self.reg(*cond));
                format!("({k} ? {} : {})", operand(*a), operand(*b))
            }
            Instr::Cast { a } => operand(*a),
        };
        let _ = writeln!(
            out,
            "{indent}const {} {} = {e};",
            reg_type(d),
            self.reg(s.dst)
        );
        Ok(())
    }

    fn section(&self, out: &mut String, indent: &str, sec: &Section) -> Result<(), String> {
        for s in &sec.stmts {
            self.stmt(out, indent, s)?;
        }
        for st in &sec.stores {
            let b = &self.p.outputs[st.output];
            let off = render_expr(&st.map.to_expr(), self.it);
            let v = cast(self.dtype_of(st.value), b.ty.dtype, &self.reg(st.value));
            let _ = writeln!(
                out,
                "{indent}out{}[{off}] = {};",
                st.output,
                store_conv(b.ty.dtype, &v)
            );
        }
        Ok(())
    }

    /// Whether this elementwise kernel can handle `width` consecutive elements of the innermost
    /// axis per thread, and which loads (by destination register) and stores (by index) then
    /// move as one aligned vector: bf16 / f32 buffers read with unit stride along the innermost
    /// axis, every other stride and the offset multiples of the width. The rest are read and
    /// written per element.
    fn plan_vector(&self) -> Option<VectorPlan> {
        let p = self.p;
        let r = p.space.len();
        if r == 0 || p.is_reduction() {
            return None;
        }
        let unit = |map: &IndexMap| map.as_strided().is_some_and(|v| v.strides[r - 1] == 1);
        let loads: Vec<(crate::Reg, &IndexMap, DType)> = p
            .body
            .stmts
            .iter()
            .filter_map(|s| match &s.instr {
                Instr::Load { input, map } => Some((s.dst, map, p.inputs[*input].ty.dtype)),
                _ => None,
            })
            .collect();
        let stores: Vec<(usize, &IndexMap, DType)> = p
            .body
            .stores
            .iter()
            .enumerate()
            .map(|(i, st)| (i, &st.map, p.outputs[st.output].ty.dtype))
            .collect();
        let candidates = || {
            loads
                .iter()
                .map(|(_, m, d)| (*m, *d))
                .chain(stores.iter().map(|(_, m, d)| (*m, *d)))
                .filter(|(m, d)| matches!(d, DType::BF16 | DType::F32) && unit(m))
        };
        let width = if candidates().any(|(_, d)| d == DType::F32) {
            4
        } else {
            8
        };
        let last = p.space[r - 1];
        if !last.is_multiple_of(width) {
            return None;
        }
        let aligned = |map: &IndexMap, d: DType| {
            matches!(d, DType::BF16 | DType::F32)
                && map.as_strided().is_some_and(|v| {
                    let w = width as i64;
                    v.strides[r - 1] == 1
                        && v.offset % w == 0
                        && v.strides[..r - 1].iter().all(|s| s % w == 0)
                })
        };
        // Every access that moves along the innermost axis must be a vector access: mixing
        // vectors with strided per-element accesses (an interleaving concat) uncoalesces them.
        let invariant = |map: &IndexMap| map.as_strided().is_some_and(|v| v.strides[r - 1] == 0);
        let all_vector = p.body.stmts.iter().all(|s| match &s.instr {
            Instr::Load { input, map } => invariant(map) || aligned(map, p.inputs[*input].ty.dtype),
            Instr::LoadGather { map, stride, .. } => invariant(map) && *stride == 0,
            _ => true,
        }) && p
            .body
            .stores
            .iter()
            .all(|st| aligned(&st.map, p.outputs[st.output].ty.dtype));
        if !all_vector {
            return None;
        }
        let plan = VectorPlan {
            width,
            loads: loads
                .iter()
                .filter(|(_, m, d)| aligned(m, *d))
                .map(|(reg, _, _)| *reg)
                .collect(),
            stores: stores
                .iter()
                .filter(|(_, m, d)| aligned(m, *d))
                .map(|(i, _, _)| *i)
                .collect(),
        };
        (!plan.loads.is_empty() || !plan.stores.is_empty()).then_some(plan)
    }

    fn elementwise(&mut self) -> Result<(String, KernelLaunch), String> {
        if let Some(vp) = self.plan_vector() {
            return self.elementwise_vectorised(&vp);
        }
        let n = self.p.space.iter().product::<usize>() as u64;
        let block = ELEMENTWISE_THREADS;
        let mut out = String::new();
        self.signature(&mut out, block);
        let it = self.it.name();
        let _ = writeln!(
            out,
            "    for ({it} idx = ({it})blockIdx.x * {block} + threadIdx.x; idx < {}; idx += ({it})gridDim.x * {block}) {{",
            self.it.lit(n as i64)
        );
        self.unravel(&mut out, "        ", "idx", &self.p.space, 0);
        self.section(&mut out, "        ", &self.p.body)?;
        out.push_str("    }\n}\n");
        let grid = n.div_ceil(block as u64).min(MAX_BLOCKS) as u32;
        Ok((out, KernelLaunch { grid, block }))
    }

    /// `width` consecutive elements per thread: vector loads first, then the body once per
    /// element (unrolled; `i<last>` is the element's own index there), then vector stores.
    fn elementwise_vectorised(
        &mut self,
        vp: &VectorPlan,
    ) -> Result<(String, KernelLaunch), String> {
        let p = self.p;
        let w = vp.width;
        let r = p.space.len();
        let last = r - 1;
        let n = (p.space.iter().product::<usize>() / w) as u64;
        let block = ELEMENTWISE_THREADS;
        let it = self.it.name();
        let mut out = String::new();
        self.signature(&mut out, block);
        let _ = writeln!(
            out,
            "    for ({it} idx = ({it})blockIdx.x * {block} + threadIdx.x; idx < {}; idx += ({it})gridDim.x * {block}) {{",
            self.it.lit(n as i64)
        );
        let mut dims: Vec<usize> = p.space.to_vec();
        dims[last] /= w;
        self.unravel(&mut out, "        ", "idx", &dims, 0);
        let _ = writeln!(
            out,
            "        const {it} base = i{last} * {};",
            self.it.lit(w as i64)
        );
        // Vector loads.
        for s in &p.body.stmts {
            if vp.loads.contains(&s.dst) {
                let _ = writeln!(out, "        float l{}[{w}];", s.dst.0);
            }
        }
        for (k, _) in p.body.stores.iter().enumerate() {
            if vp.stores.contains(&k) {
                let _ = writeln!(out, "        float s{k}[{w}];");
            }
        }
        out.push_str(
            "        {
",
        );
        let _ = writeln!(out, "            const {it} i{last} = base;");
        for s in &p.body.stmts {
            if let Instr::Load { input, map } = &s.instr {
                if vp.loads.contains(&s.dst) {
                    let off = render_expr(&map.to_expr(), self.it);
                    let _ = writeln!(
                        out,
                        "            vld{w}(in{input} + ({off}), l{});",
                        s.dst.0
                    );
                }
            }
        }
        out.push_str(
            "        }
",
        );
        out.push_str(
            "#pragma unroll
",
        );
        let _ = writeln!(out, "        for (int v = 0; v < {w}; ++v) {{");
        let _ = writeln!(out, "            const {it} i{last} = base + v;");
        let indent = "            ";
        for s in &p.body.stmts {
            match &s.instr {
                Instr::Load { input, .. } if vp.loads.contains(&s.dst) => {
                    let b = p.inputs[*input].ty.dtype;
                    let _ = writeln!(
                        out,
                        "{indent}const {} {} = {};",
                        reg_type(s.dtype),
                        self.reg(s.dst),
                        cast(b, s.dtype, &format!("l{}[v]", s.dst.0))
                    );
                }
                _ => self.stmt(&mut out, indent, s)?,
            }
        }
        for (k, st) in p.body.stores.iter().enumerate() {
            let b = &p.outputs[st.output];
            let v = cast(self.dtype_of(st.value), b.ty.dtype, &self.reg(st.value));
            if vp.stores.contains(&k) {
                let _ = writeln!(out, "{indent}s{k}[v] = {v};");
            } else {
                let off = render_expr(&st.map.to_expr(), self.it);
                let _ = writeln!(
                    out,
                    "{indent}out{}[{off}] = {};",
                    st.output,
                    store_conv(b.ty.dtype, &v)
                );
            }
        }
        out.push_str(
            "        }
",
        );
        if !vp.stores.is_empty() {
            out.push_str(
                "        {
",
            );
            let _ = writeln!(out, "            const {it} i{last} = base;");
            for (k, st) in p.body.stores.iter().enumerate() {
                if vp.stores.contains(&k) {
                    let off = render_expr(&st.map.to_expr(), self.it);
                    let _ = writeln!(out, "            vst{w}(out{} + ({off}), s{k});", st.output);
                }
            }
            out.push_str(
                "        }
",
            );
        }
        out.push_str(
            "    }
}
",
        );
        let grid = n.div_ceil(block as u64).min(MAX_BLOCKS) as u32;
        Ok((out, KernelLaunch { grid, block }))
    }

    fn reduction(&mut self) -> Result<(String, KernelLaunch), String> {
        let p = self.p;
        let kept = p.kept_space();
        let reduced = p.reduced_space();
        let rows = kept.iter().product::<usize>() as u64;
        let len = reduced.iter().product::<usize>() as u64;
        // Threads per row and rows per block.
        let (tpr, rpb): (u32, u32) = if len <= 16 {
            (1, 256)
        } else if len <= 2048 {
            (32, 8)
        } else if len <= 16384 {
            (256, 1)
        } else {
            (1024, 1)
        };
        let block = tpr * rpb;
        let it = self.it.name();
        let mut out = String::new();
        self.signature(&mut out, block);
        let _ = writeln!(
            out,
            "    const {it} row = ({it})blockIdx.x * {rpb} + threadIdx.x / {tpr};"
        );
        let _ = writeln!(out, "    const unsigned lane = threadIdx.x % {tpr};");
        let _ = writeln!(
            out,
            "    const bool active = row < {};",
            self.it.lit(rows as i64)
        );
        self.unravel(&mut out, "    ", "row", kept, 0);
        for r in &p.reduces {
            let _ = writeln!(
                out,
                "    {} {} = {};",
                acc_type(r),
                acc_name(r),
                reduce_identity(r.op, r.dtype)
            );
        }
        let _ = writeln!(out, "    if (active) {{");
        let _ = writeln!(
            out,
            "        for ({it} j = lane; j < {}; j += {tpr}) {{",
            self.it.lit(len as i64)
        );
        self.unravel(&mut out, "            ", "j", reduced, kept.len());
        self.section(&mut out, "            ", &p.body)?;
        for r in &p.reduces {
            let v = cast(self.dtype_of(r.value), r.dtype, &self.reg(r.value));
            let acc = acc_name(r);
            let _ = writeln!(
                out,
                "            {acc} = {};",
                reduce_combine(r.op, r.dtype, &acc, &v)
            );
        }
        out.push_str("        }\n    }\n");
        if tpr > 1 {
            self.combine_threads(&mut out, tpr);
        }
        let _ = writeln!(out, "    if (active && lane == 0) {{");
        for r in &p.reduces {
            let t = reg_type(r.dtype);
            let _ = writeln!(
                out,
                "        const {t} {} = ({t}){};",
                self.reg(r.dst),
                acc_name(r)
            );
        }
        self.section(&mut out, "        ", &p.epilogue)?;
        out.push_str("    }\n}\n");
        let grid = rows.div_ceil(rpb as u64);
        if grid > i32::MAX as u64 {
            return Err(format!("{} rows is too many for one launch", rows));
        }
        Ok((
            out,
            KernelLaunch {
                grid: grid as u32,
                block,
            },
        ))
    }

    /// Combines the per-thread partial values of each row (warp shuffles, then shared memory
    /// across the warps of a block-wide row); afterwards lane 0 holds the row's value.
    fn combine_threads(&self, out: &mut String, tpr: u32) {
        let warp_reduce = |out: &mut String, indent: &str, r: &ReduceStage| {
            let acc = acc_name(r);
            let _ = writeln!(
                out,
                "{indent}for (int o = 16; o > 0; o >>= 1) {acc} = {};",
                reduce_combine(
                    r.op,
                    r.dtype,
                    &acc,
                    &format!("__shfl_xor_sync(0xffffffffu, {acc}, o)")
                )
            );
        };
        for r in &self.p.reduces {
            warp_reduce(out, "    ", r);
        }
        if tpr > 32 {
            let warps = tpr / 32;
            for r in &self.p.reduces {
                let acc = acc_name(r);
                let _ = writeln!(out, "    __shared__ {} s_{acc}[{warps}];", acc_type(r));
                let _ = writeln!(
                    out,
                    "    if ((lane & 31u) == 0) s_{acc}[lane >> 5] = {acc};"
                );
            }
            out.push_str("    __syncthreads();\n");
            out.push_str("    if (lane < 32) {\n");
            for r in &self.p.reduces {
                let acc = acc_name(r);
                let _ = writeln!(
                    out,
                    "        {acc} = lane < {warps} ? s_{acc}[lane] : {};",
                    reduce_identity(r.op, r.dtype)
                );
                warp_reduce(out, "        ", r);
            }
            out.push_str("    }\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::{lower_plan, Step};
    use qie_ir::passes::{fuse, FusionOptions};
    use qie_ir::{BinaryOp, Graph, Op, TensorType};

    fn kernels(g: &Graph) -> Vec<RenderedKernel> {
        let plan = fuse(g, &FusionOptions::default());
        lower_plan(g, &plan)
            .unwrap()
            .iter()
            .flat_map(|lg| lg.steps.clone())
            .filter_map(|s| match s {
                Step::Kernel(p) => Some(render_program(&p, &RenderOptions::default()).unwrap()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn elementwise_kernel_text() {
        let mut g = Graph::new();
        let x = g.input("x", TensorType::new(DType::BF16, &[4, 5]));
        let e = g.add(Op::Unary(UnaryOp::Exp), &[x]).unwrap();
        g.set_output("e", e);
        let ks = kernels(&g);
        assert_eq!(ks.len(), 1);
        let k = &ks[0];
        assert!(k.source.contains("const bf16_t* in0"), "{}", k.source);
        assert!(k.source.contains("to_bf16(r1)"), "{}", k.source);
        assert!(k.source.contains("expf(r0)"), "{}", k.source);
        assert_eq!(
            k.launch,
            KernelLaunch {
                grid: 1,
                block: 256
            }
        );
        // Deterministic and content-addressed.
        assert_eq!(kernels(&g)[0], ks[0]);
        assert!(k.source.contains(&k.name));
    }

    #[test]
    fn contiguous_bf16_kernels_move_16_bytes_per_access() {
        let mut g = Graph::new();
        let x = g.input("x", TensorType::new(DType::BF16, &[4, 64]));
        let b = g.input("b", TensorType::new(DType::BF16, &[64]));
        let bb = g
            .add(
                Op::Broadcast {
                    shape: qie_ir::shape(&[4, 64]),
                },
                &[b],
            )
            .unwrap();
        let y = g.add(Op::Binary(BinaryOp::Add), &[x, bb]).unwrap();
        g.set_output("y", y);
        let k = &kernels(&g)[0];
        assert!(k.source.contains("vld8(in0"), "{}", k.source);
        assert!(k.source.contains("vld8(in1"), "{}", k.source);
        assert!(k.source.contains("vst8(out0"), "{}", k.source);
        // 256 elements, 8 per thread.
        assert_eq!(
            k.launch,
            KernelLaunch {
                grid: 1,
                block: 256
            }
        );
        // An odd innermost size stays scalar.
        let mut g = Graph::new();
        let x = g.input("x", TensorType::new(DType::BF16, &[4, 7]));
        let e = g.add(Op::Unary(UnaryOp::Exp), &[x]).unwrap();
        g.set_output("e", e);
        assert!(!kernels(&g)[0].source.contains("vld"));
    }

    #[test]
    fn reduction_kernel_uses_warp_shuffles() {
        let mut g = Graph::new();
        let x = g.input("x", TensorType::new(DType::F32, &[6, 100]));
        let s = g
            .add(
                Op::Reduce {
                    op: ReduceOp::Max,
                    axes: qie_ir::shape(&[1]),
                },
                &[x],
            )
            .unwrap();
        g.set_output("s", s);
        let k = &kernels(&g)[0];
        assert!(k.source.contains("__shfl_xor_sync"), "{}", k.source);
        assert!(k.source.contains("qmaxf"), "{}", k.source);
        assert_eq!(
            k.launch,
            KernelLaunch {
                grid: 1,
                block: 256
            }
        );
    }

    #[test]
    fn literals_round_trip() {
        assert_eq!(f32_literal(1.0), "1.0f");
        assert_eq!(f32_literal(1e-6), "1e-6f");
        assert_eq!(f32_literal(f32::NEG_INFINITY), "(-QINF)");
        assert_eq!(const_literal(DType::I64, -3.0), "(-3LL)");
    }
}
