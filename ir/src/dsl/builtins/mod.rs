//! Builtin functions: tensor ops that emit IR, and compile-time helpers.
//!
//! The table below names every builtin and its parameters; `Lowerer::call_builtin` binds the
//! call's arguments to them (`args`) and hands over to the module of the builtin's category:
//! `elementwise` math, `reduce` (sum, mean, max, min), `shape` (views and data movement),
//! `creation` (iota and filled tensors), `nn` (matmul, attention, conv2d), `compile_time`
//! (helpers that compute values instead of emitting nodes) and `paths` (checkpoint paths).

mod args;
mod compile_time;
mod creation;
mod elementwise;
mod nn;
mod paths;
mod reduce;
mod shape;

use super::ast::Span;
use super::eval::{CallArgs, Lowerer, Scope, R};
use super::value::Value;

macro_rules! builtins {
    ($($v:ident $name:literal ($($p:literal),*) $req:literal;)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum Builtin { $($v),* }

        impl Builtin {
            pub const ALL: &'static [Builtin] = &[$(Builtin::$v),*];

            pub fn name(self) -> &'static str {
                match self { $(Builtin::$v => $name),* }
            }

            /// Parameter names, in positional order.
            pub fn params(self) -> &'static [&'static str] {
                match self { $(Builtin::$v => &[$($p),*]),* }
            }

            /// How many leading parameters are required.
            pub fn required(self) -> usize {
                match self { $(Builtin::$v => $req),* }
            }

            pub fn from_name(s: &str) -> Option<Builtin> {
                match s { $($name => Some(Builtin::$v),)* _ => None }
            }
        }
    };
}

builtins! {
    Exp "exp" ("x") 1;
    Log "log" ("x") 1;
    Sqrt "sqrt" ("x") 1;
    Rsqrt "rsqrt" ("x") 1;
    Sin "sin" ("x") 1;
    Cos "cos" ("x") 1;
    Tanh "tanh" ("x") 1;
    Sigmoid "sigmoid" ("x") 1;
    Abs "abs" ("x") 1;
    Recip "recip" ("x") 1;
    Neg "neg" ("x") 1;
    Pow "pow" ("a", "b") 2;
    Maximum "maximum" ("a", "b") 2;
    Minimum "minimum" ("a", "b") 2;
    Where "where" ("cond", "a", "b") 3;
    Cast "cast" ("x", "dtype") 2;
    Sum "sum" ("x", "axis", "keepdim") 1;
    Mean "mean" ("x", "axis", "keepdim") 1;
    Max "max" ("x", "axis", "keepdim") 1;
    Min "min" ("x", "axis", "keepdim") 1;
    Reshape "reshape" ("x", "shape") 2;
    Transpose "transpose" ("x", "perm") 2;
    Swapaxes "swapaxes" ("x", "a", "b") 3;
    BroadcastTo "broadcast_to" ("x", "shape") 2;
    Unsqueeze "unsqueeze" ("x", "axis") 2;
    Squeeze "squeeze" ("x", "axis") 1;
    Flatten "flatten" ("x", "start", "end") 1;
    Slice "slice" ("x", "axis", "start", "end") 3;
    Concat "concat" ("xs", "axis") 1;
    Chunk "chunk" ("x", "n", "axis") 2;
    Gather "gather" ("table", "index", "axis") 2;
    Iota "iota" ("shape", "axis", "dtype") 2;
    Arange "arange" ("n", "dtype") 1;
    Full "full" ("shape", "value", "dtype") 2;
    ZerosLike "zeros_like" ("x") 1;
    OnesLike "ones_like" ("x") 1;
    Matmul "matmul" ("a", "b", "transpose_a", "transpose_b") 2;
    Attention "attention" ("q", "k", "v", "mask", "scale") 3;
    Conv2d "conv2d" ("x", "w", "stride", "padding", "dilation", "groups") 2;
    Dim "dim" ("x", "axis") 2;
    Rank "rank" ("x") 1;
    ShapeOf "shape" ("x") 1;
    Len "len" ("xs") 1;
    Int "int" ("v") 1;
    Float "float" ("v") 1;
    IsNone "is_none" ("v") 1;
    Enumerate "enumerate" ("xs") 1;
    Range "range" ("a", "b") 1;
    Assert "assert" ("cond", "message") 1;
    ModulePath "module_path" () 0;
    PathMatches "path_matches" ("path", "patterns") 2;
}

impl<'p> Lowerer<'p> {
    /// Calls builtin `builtin`: binds the arguments, then runs the handler of its category.
    pub fn call_builtin(
        &mut self,
        sc: &mut Scope<'p>,
        span: Span,
        builtin: Builtin,
        call_args: CallArgs<'p>,
    ) -> R<Value> {
        let args = self.bind_builtin(span, builtin, call_args)?;
        let args = &args;
        use Builtin as B;
        match builtin {
            B::Exp
            | B::Log
            | B::Sqrt
            | B::Rsqrt
            | B::Sin
            | B::Cos
            | B::Tanh
            | B::Sigmoid
            | B::Abs
            | B::Recip
            | B::Neg => self.unary_builtin(sc, span, args),
            B::Pow | B::Maximum | B::Minimum => self.binary_builtin(sc, span, args),
            B::Where => self.where_builtin(sc, span, args),
            B::Cast => self.cast_builtin(sc, span, args),
            B::Sum | B::Mean | B::Max | B::Min => self.reduce_builtin(sc, span, args),
            B::Reshape => self.reshape_builtin(sc, span, args),
            B::Transpose => self.transpose_builtin(sc, span, args),
            B::Swapaxes => self.swapaxes_builtin(sc, span, args),
            B::BroadcastTo => self.broadcast_to_builtin(sc, span, args),
            B::Unsqueeze => self.unsqueeze_builtin(sc, span, args),
            B::Squeeze => self.squeeze_builtin(sc, span, args),
            B::Flatten => self.flatten_builtin(sc, span, args),
            B::Slice => self.slice_builtin(sc, span, args),
            B::Concat => self.concat_builtin(sc, span, args),
            B::Chunk => self.chunk_builtin(sc, span, args),
            B::Gather => self.gather_builtin(sc, span, args),
            B::Iota | B::Arange => self.iota_builtin(sc, span, args),
            B::Full => self.full_builtin(sc, span, args),
            B::ZerosLike | B::OnesLike => self.filled_like_builtin(sc, span, args),
            B::Matmul => self.matmul_builtin(sc, span, args),
            B::Attention => self.attention_builtin(sc, span, args),
            B::Conv2d => self.conv2d_builtin(sc, span, args),
            B::Dim => self.dim_builtin(args),
            B::Rank => self.rank_builtin(args),
            B::ShapeOf => self.shape_of_builtin(args),
            B::Len => self.len_builtin(args),
            B::Int => self.int_builtin(args),
            B::Float => self.float_builtin(args),
            B::IsNone => Ok(Value::Bool(matches!(args.raw(0), Value::None))),
            B::Enumerate => self.enumerate_builtin(args),
            B::Range => self.range_builtin(args),
            B::Assert => self.assert_builtin(span, args),
            B::ModulePath => Ok(self.module_path_builtin(sc)),
            B::PathMatches => self.path_matches_builtin(args),
        }
    }
}
