//! Graph-to-graph compiler passes. Every pass is a pure `fn(&Graph) -> Graph` that keeps the
//! outputs' names and semantics.
