//! The renderer proper: [`render_program`] writes one program as CUDA C, following the launch
//! decisions of [`crate::schedule`].

use super::dtypes::{
    cast, const_literal, load_conv, mem_type, reduce_combine, reduce_identity, reg_class, reg_type,
    store_conv, RegClass,
};
use crate::index::IndexExpr;
use crate::program::{Instr, KernelProgram, ReduceStage, Section, Stmt};
use crate::schedule::{
    grid_stride_launch, index_width, plan_reduction, plan_vector, IndexWidth, KernelLaunch,
    VectorPlan,
};
use crate::Reg;
use qie_ir::{BinaryOp, CmpOp, DType, ReduceOp, UnaryOp};
use std::fmt::Write;

/// Helpers every generated module starts with (storage types, conversions, integer semantics).
pub const PRELUDE: &str = include_str!("prelude.cuh");

/// Placeholder for the kernel's symbol while its text is hashed.
const NAME_SLOT: &str = "__QIE_KERNEL__";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// Mark every pointer `__restrict__` (only when no output shares bytes with an input).
    pub restrict: bool,
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
    let r = Renderer::new(p, opts);
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

/// The C spelling of an index width.
trait CudaIndex {
    /// The C type of index variables.
    fn c_type(self) -> &'static str;
    /// An index literal.
    fn literal(self, v: i64) -> String;
}

impl CudaIndex for IndexWidth {
    fn c_type(self) -> &'static str {
        match self {
            IndexWidth::U32 => "unsigned",
            IndexWidth::I64 => "long long",
        }
    }
    fn literal(self, v: i64) -> String {
        match self {
            IndexWidth::U32 => format!("{v}u"),
            IndexWidth::I64 => format!("{v}LL"),
        }
    }
}

fn render_expr(e: &IndexExpr, index: IndexWidth) -> String {
    match e {
        IndexExpr::Var(d) => format!("i{d}"),
        IndexExpr::Const(c) => index.literal(*c),
        IndexExpr::Add(a, b) => format!("{} + {}", render_expr(a, index), render_expr(b, index)),
        IndexExpr::Mul(a, k) => format!("{} * {}", paren(a, index), index.literal(*k)),
        IndexExpr::Div(a, k) => format!("{} / {}", paren(a, index), index.literal(*k)),
        IndexExpr::Rem(a, k) => format!("{} % {}", paren(a, index), index.literal(*k)),
    }
}

fn paren(e: &IndexExpr, index: IndexWidth) -> String {
    match e {
        IndexExpr::Var(_) | IndexExpr::Const(_) => render_expr(e, index),
        _ => format!("({})", render_expr(e, index)),
    }
}

/// The accumulator of a reduce stage: float sums accumulate in f64 (as the CPU reference does;
/// a long sum that cancels keeps its digits), everything else in the register type.
fn acc_type(r: &ReduceStage) -> &'static str {
    match (r.op, reg_class(r.dtype)) {
        (ReduceOp::Sum, RegClass::Float) => "double",
        _ => reg_type(r.dtype),
    }
}

fn acc_name(r: &ReduceStage) -> String {
    format!("a{}", r.dst.0)
}

struct Renderer<'a> {
    p: &'a KernelProgram,
    opts: RenderOptions,
    index: IndexWidth,
    reg_dtype: Vec<DType>,
}

impl<'a> Renderer<'a> {
    fn new(p: &'a KernelProgram, opts: &RenderOptions) -> Self {
        Renderer {
            p,
            opts: *opts,
            index: index_width(p),
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
        let index_type = self.index.c_type();
        match dims.len() {
            0 => {}
            1 => {
                let _ = writeln!(out, "{indent}const {index_type} i{first} = {var};");
            }
            n => {
                let t = format!("t{first}");
                let _ = writeln!(out, "{indent}{index_type} {t} = {var};");
                for d in (1..n).rev() {
                    let size = self.index.literal(dims[d] as i64);
                    let _ = writeln!(
                        out,
                        "{indent}const {index_type} i{} = {t} % {size}; {t} /= {size};",
                        first + d
                    );
                }
                let _ = writeln!(out, "{indent}const {index_type} i{first} = {t};");
            }
        }
    }

    fn reg(&self, r: Reg) -> String {
        format!("r{}", r.0)
    }

    fn dtype_of(&self, r: Reg) -> DType {
        self.reg_dtype[r.index()]
    }

    fn stmt(&self, out: &mut String, indent: &str, s: &Stmt) -> Result<(), String> {
        let d = s.dtype;
        let class = reg_class(d);
        let r = |x: Reg| self.reg(x);
        let operand = |x: Reg| cast(self.dtype_of(x), d, &self.reg(x));
        let e = match &s.instr {
            Instr::Load { input, map } => {
                let b = &self.p.inputs[*input];
                let off = render_expr(&map.to_expr(), self.index);
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
                let off = render_expr(&map.to_expr(), self.index);
                let index_type = self.index.c_type();
                let at = format!(
                    "in{input}[{off} + ({index_type})qclamp({}, {dim}LL) * {}]",
                    r(*index),
                    self.index.literal(*stride)
                );
                cast(b.ty.dtype, d, &load_conv(b.ty.dtype, &at))
            }
            Instr::Const { value } => const_literal(d, *value),
            Instr::Iota { map, stride, dim } => {
                let mut e = paren(&map.to_expr(), self.index);
                if *stride != 1 {
                    e = format!("({e} / {})", self.index.literal(*stride));
                }
                e = format!("({e} % {})", self.index.literal((*dim).max(1) as i64));
                cast(DType::I64, d, &format!("((long long){e})"))
            }
            Instr::Unary { op, a } => {
                let x = operand(*a);
                match (class, op) {
                    (RegClass::Float, UnaryOp::Neg) => format!("(-{x})"),
                    (RegClass::Float, UnaryOp::Abs) => format!("fabsf({x})"),
                    (RegClass::Float, UnaryOp::Exp) => format!("expf({x})"),
                    (RegClass::Float, UnaryOp::Log) => format!("logf({x})"),
                    (RegClass::Float, UnaryOp::Sqrt) => format!("sqrtf({x})"),
                    (RegClass::Float, UnaryOp::Rsqrt) => format!("(1.0f / sqrtf({x}))"),
                    (RegClass::Float, UnaryOp::Recip) => format!("(1.0f / {x})"),
                    (RegClass::Float, UnaryOp::Sin) => format!("sinf({x})"),
                    (RegClass::Float, UnaryOp::Cos) => format!("cosf({x})"),
                    (RegClass::Float, UnaryOp::Tanh) => format!("tanhf({x})"),
                    (RegClass::Float, UnaryOp::Sigmoid) => format!("(1.0f / (1.0f + expf(-{x})))"),
                    (RegClass::I32 | RegClass::I64, UnaryOp::Neg) => format!("qneg({x})"),
                    (RegClass::I32 | RegClass::I64, UnaryOp::Abs) => format!("qabs({x})"),
                    (RegClass::Bool, UnaryOp::Not) => format!("(!{x})"),
                    (RegClass::I32 | RegClass::I64, UnaryOp::Not) => format!("({x} == 0)"),
                    (RegClass::Float, UnaryOp::Not) => format!("({x} == 0.0f)"),
                    _ => return Err(format!("{op:?} on {d} values")),
                }
            }
            Instr::Binary { op, a, b } => {
                let (x, y) = (operand(*a), operand(*b));
                match (class, op) {
                    (_, BinaryOp::And) => format!("({x} && {y})"),
                    (_, BinaryOp::Or) => format!("({x} || {y})"),
                    (RegClass::Float, BinaryOp::Add) => format!("({x} + {y})"),
                    (RegClass::Float, BinaryOp::Sub) => format!("({x} - {y})"),
                    (RegClass::Float, BinaryOp::Mul) => format!("({x} * {y})"),
                    (RegClass::Float, BinaryOp::Div) => format!("({x} / {y})"),
                    (RegClass::Float, BinaryOp::Max) => format!("qmaxf({x}, {y})"),
                    (RegClass::Float, BinaryOp::Min) => format!("qminf({x}, {y})"),
                    (RegClass::Float, BinaryOp::Pow) => format!("powf({x}, {y})"),
                    (RegClass::I32 | RegClass::I64, BinaryOp::Add) => format!("qadd({x}, {y})"),
                    (RegClass::I32 | RegClass::I64, BinaryOp::Sub) => format!("qsub({x}, {y})"),
                    (RegClass::I32 | RegClass::I64, BinaryOp::Mul) => format!("qmul({x}, {y})"),
                    (RegClass::I32 | RegClass::I64, BinaryOp::Div) => format!("qdiv({x}, {y})"),
                    (RegClass::I32 | RegClass::I64, BinaryOp::FloorDiv) => {
                        format!("qfloordiv({x}, {y})")
                    }
                    (RegClass::I32 | RegClass::I64, BinaryOp::Rem) => format!("qrem({x}, {y})"),
                    (RegClass::I32 | RegClass::I64, BinaryOp::Max) => format!("qmax({x}, {y})"),
                    (RegClass::I32 | RegClass::I64, BinaryOp::Min) => format!("qmin({x}, {y})"),
                    (RegClass::Bool, BinaryOp::Max) => format!("({x} || {y})"),
                    (RegClass::Bool, BinaryOp::Min) => format!("({x} && {y})"),
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
            let off = render_expr(&st.map.to_expr(), self.index);
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

    /// A grid-stride loop over the elements (or over vectors of `width` elements when the
    /// schedule vectorises the kernel).
    fn elementwise(&self) -> Result<(String, KernelLaunch), String> {
        if let Some(vector) = plan_vector(self.p) {
            return self.elementwise_vectorised(&vector);
        }
        let n = self.p.space.iter().product::<usize>() as u64;
        let launch = grid_stride_launch(n);
        let block = launch.block;
        let mut out = String::new();
        self.signature(&mut out, block);
        let index_type = self.index.c_type();
        let _ = writeln!(
            out,
            "    for ({index_type} idx = ({index_type})blockIdx.x * {block} + threadIdx.x; idx < {}; idx += ({index_type})gridDim.x * {block}) {{",
            self.index.literal(n as i64)
        );
        self.unravel(&mut out, "        ", "idx", &self.p.space, 0);
        self.section(&mut out, "        ", &self.p.body)?;
        out.push_str("    }\n}\n");
        Ok((out, launch))
    }

    /// `width` consecutive elements per thread: vector loads first, then the body once per
    /// element (unrolled; `i<last>` is the element's own index there), then vector stores.
    fn elementwise_vectorised(
        &self,
        vector: &VectorPlan,
    ) -> Result<(String, KernelLaunch), String> {
        let p = self.p;
        let w = vector.width;
        let last = p.space.len() - 1;
        let n = (p.space.iter().product::<usize>() / w) as u64;
        let launch = grid_stride_launch(n);
        let block = launch.block;
        let index_type = self.index.c_type();
        let mut out = String::new();
        self.signature(&mut out, block);
        let _ = writeln!(
            out,
            "    for ({index_type} idx = ({index_type})blockIdx.x * {block} + threadIdx.x; idx < {}; idx += ({index_type})gridDim.x * {block}) {{",
            self.index.literal(n as i64)
        );
        let mut dims: Vec<usize> = p.space.to_vec();
        dims[last] /= w;
        self.unravel(&mut out, "        ", "idx", &dims, 0);
        let _ = writeln!(
            out,
            "        const {index_type} base = i{last} * {};",
            self.index.literal(w as i64)
        );
        // Vector loads.
        for s in &p.body.stmts {
            if vector.loads.contains(&s.dst) {
                let _ = writeln!(out, "        float l{}[{w}];", s.dst.0);
            }
        }
        for (k, _) in p.body.stores.iter().enumerate() {
            if vector.stores.contains(&k) {
                let _ = writeln!(out, "        float s{k}[{w}];");
            }
        }
        out.push_str("        {\n");
        let _ = writeln!(out, "            const {index_type} i{last} = base;");
        for s in &p.body.stmts {
            if let Instr::Load { input, map } = &s.instr {
                if vector.loads.contains(&s.dst) {
                    let off = render_expr(&map.to_expr(), self.index);
                    let _ = writeln!(
                        out,
                        "            vld{w}(in{input} + ({off}), l{});",
                        s.dst.0
                    );
                }
            }
        }
        out.push_str("        }\n");
        out.push_str("#pragma unroll\n");
        let _ = writeln!(out, "        for (int v = 0; v < {w}; ++v) {{");
        let _ = writeln!(out, "            const {index_type} i{last} = base + v;");
        let indent = "            ";
        for s in &p.body.stmts {
            match &s.instr {
                Instr::Load { input, .. } if vector.loads.contains(&s.dst) => {
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
            if vector.stores.contains(&k) {
                let _ = writeln!(out, "{indent}s{k}[v] = {v};");
            } else {
                let off = render_expr(&st.map.to_expr(), self.index);
                let _ = writeln!(
                    out,
                    "{indent}out{}[{off}] = {};",
                    st.output,
                    store_conv(b.ty.dtype, &v)
                );
            }
        }
        out.push_str("        }\n");
        if !vector.stores.is_empty() {
            out.push_str("        {\n");
            let _ = writeln!(out, "            const {index_type} i{last} = base;");
            for (k, st) in p.body.stores.iter().enumerate() {
                if vector.stores.contains(&k) {
                    let off = render_expr(&st.map.to_expr(), self.index);
                    let _ = writeln!(out, "            vst{w}(out{} + ({off}), s{k});", st.output);
                }
            }
            out.push_str("        }\n");
        }
        out.push_str("    }\n}\n");
        Ok((out, launch))
    }

    /// One row per `threads_per_row` threads: each thread folds its share of the row, the
    /// threads of a row combine their values, and the row's first thread runs the epilogue.
    fn reduction(&self) -> Result<(String, KernelLaunch), String> {
        let p = self.p;
        let kept = p.kept_space();
        let reduced = p.reduced_space();
        let plan = plan_reduction(p);
        let threads_per_row = plan.threads_per_row;
        let rows_per_block = plan.rows_per_block;
        let block = plan.block();
        let index_type = self.index.c_type();
        let mut out = String::new();
        self.signature(&mut out, block);
        // `lane`: which slice of the row this thread folds.
        let (row_in_block, lane) = if plan.columns {
            (
                format!("threadIdx.x % {rows_per_block}"),
                format!("threadIdx.x / {rows_per_block}"),
            )
        } else {
            (
                format!("threadIdx.x / {threads_per_row}"),
                format!("threadIdx.x % {threads_per_row}"),
            )
        };
        let _ = writeln!(
            out,
            "    const {index_type} row = ({index_type})blockIdx.x * {rows_per_block} + {row_in_block};"
        );
        let _ = writeln!(out, "    const unsigned lane = {lane};");
        let _ = writeln!(
            out,
            "    const bool active = row < {};",
            self.index.literal(plan.rows as i64)
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
            "        for ({index_type} j = lane; j < {}; j += {threads_per_row}) {{",
            self.index.literal(plan.row_len as i64)
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
        if plan.columns {
            self.combine_column_slices(&mut out, threads_per_row, rows_per_block);
        } else if threads_per_row > 1 {
            self.combine_threads(&mut out, threads_per_row);
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
        Ok((out, plan.launch()?))
    }

    /// Column layout: the `slices` partial values of each of the block's `tile` rows meet in
    /// shared memory and slice 0 folds them in slice order (deterministic, like the row layout).
    fn combine_column_slices(&self, out: &mut String, slices: u32, tile: u32) {
        for r in &self.p.reduces {
            let acc = acc_name(r);
            let _ = writeln!(
                out,
                "    __shared__ {} s_{acc}[{}];",
                acc_type(r),
                slices * tile
            );
            let _ = writeln!(out, "    s_{acc}[threadIdx.x] = {acc};");
        }
        out.push_str("    __syncthreads();\n");
        out.push_str("    if (lane == 0) {\n");
        let _ = writeln!(out, "        for (unsigned k = 1; k < {slices}; ++k) {{");
        for r in &self.p.reduces {
            let acc = acc_name(r);
            let _ = writeln!(
                out,
                "            {acc} = {};",
                reduce_combine(
                    r.op,
                    r.dtype,
                    &acc,
                    &format!("s_{acc}[k * {tile} + threadIdx.x]")
                )
            );
        }
        out.push_str("        }\n    }\n");
    }

    /// Combines the per-thread partial values of each row (warp shuffles, then shared memory
    /// across the warps of a block-wide row); afterwards lane 0 holds the row's value.
    fn combine_threads(&self, out: &mut String, threads_per_row: u32) {
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
        if threads_per_row > 32 {
            let warps = threads_per_row / 32;
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
    fn column_reduction_tiles_consecutive_rows() {
        // A sum over tokens of [tokens, channels]: a warp must read consecutive channels.
        let mut g = Graph::new();
        let x = g.input("x", TensorType::new(DType::BF16, &[4096, 3072]));
        let s = g
            .add(
                Op::Reduce {
                    op: ReduceOp::Sum,
                    axes: qie_ir::shape(&[0]),
                },
                &[x],
            )
            .unwrap();
        g.set_output("s", s);
        let k = &kernels(&g)[0];
        assert!(k.source.contains("threadIdx.x % 16"), "{}", k.source);
        assert!(k.source.contains("s_a"), "{}", k.source);
        assert!(!k.source.contains("__shfl_xor_sync"), "{}", k.source);
        assert_eq!(
            k.launch,
            KernelLaunch {
                grid: 3072 / 16,
                block: 1024
            }
        );
    }
}
