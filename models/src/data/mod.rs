//! Training and inference datasets: reading rows (JSON array, JSONL, `metadata.csv`), checking
//! them (`qie data check`), training sizes and aspect buckets, and shape-grouped batching.

pub mod batching;
pub mod check;
mod csv;
pub mod problem;
pub mod rows;
pub mod sizing;
mod source;
pub mod training;

pub use batching::{batches, ShapeKey};
pub use check::{check_dataset, DataReport};
pub use problem::ProblemKind;
pub use rows::{read_dataset, read_eval_rows, BadRow, DatasetRow};
pub use sizing::SizeRule;
pub use source::{read_records, RawRecord};
pub use training::{read_training_rows, TrainRow};
