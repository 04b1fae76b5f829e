//! Comparing a store with the tensors a model expects, reporting every
//! problem at once (like `load_state_dict(strict=True)` in PyTorch).

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

use super::error::{Result, WeightsError};
use super::store::WeightStore;

/// Entries shown per list before "... and N more".
const SHOWN: usize = 20;

/// Whether tensors present in the files but not expected are an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckMode {
    /// Missing, unexpected and mis-shaped tensors are all errors.
    #[default]
    Strict,
    /// Extra tensors in the files are fine (partial models, shared files).
    AllowUnexpected,
}

/// A tensor whose shape differs from the expected one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    pub name: String,
    pub expected: Vec<usize>,
    pub found: Vec<usize>,
}

/// Result of comparing a store with an expected tensor list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// The path the store was opened from.
    pub source: PathBuf,
    /// Expected but absent, in expected order.
    pub missing: Vec<String>,
    /// Present but not expected, sorted (empty in `AllowUnexpected` mode).
    pub unexpected: Vec<String>,
    /// Present with another shape, in expected order.
    pub mismatched: Vec<ShapeMismatch>,
}

impl CheckReport {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

impl WeightStore {
    /// Fails with one error listing all missing, unexpected and mis-shaped
    /// tensors.
    pub fn check<S: AsRef<str>>(&self, expected: &[(S, Vec<usize>)]) -> Result<()> {
        self.check_with(expected, CheckMode::Strict)
    }

    /// [`WeightStore::check`] with a choice about unexpected tensors.
    pub fn check_with<S: AsRef<str>>(
        &self,
        expected: &[(S, Vec<usize>)],
        mode: CheckMode,
    ) -> Result<()> {
        let report = self.check_report(expected, mode);
        if report.is_ok() {
            Ok(())
        } else {
            Err(WeightsError::Mismatch(Box::new(report)))
        }
    }

    /// The comparison itself, for callers that want the lists.
    pub fn check_report<S: AsRef<str>>(
        &self,
        expected: &[(S, Vec<usize>)],
        mode: CheckMode,
    ) -> CheckReport {
        let mut report = CheckReport {
            source: self.source().to_path_buf(),
            ..CheckReport::default()
        };
        let mut seen = HashSet::with_capacity(expected.len());
        for (name, shape) in expected {
            let name = name.as_ref();
            if !seen.insert(name) {
                continue;
            }
            match self.info(name) {
                None => report.missing.push(name.to_string()),
                Some(info) if info.shape != *shape => report.mismatched.push(ShapeMismatch {
                    name: name.to_string(),
                    expected: shape.clone(),
                    found: info.shape.clone(),
                }),
                Some(_) => {}
            }
        }
        if mode == CheckMode::Strict {
            report.unexpected = self
                .names()
                .into_iter()
                .filter(|n| !seen.contains(n))
                .map(str::to_string)
                .collect();
        }
        report
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut counts = Vec::new();
        for (n, what) in [
            (self.missing.len(), "missing"),
            (self.unexpected.len(), "unexpected"),
            (self.mismatched.len(), "mis-shaped"),
        ] {
            if n > 0 {
                counts.push(format!("{n} {what}"));
            }
        }
        if counts.is_empty() {
            return write!(f, "weights: {}: all tensors match", self.source.display());
        }
        write!(
            f,
            "weights: {}: tensors do not match the model: {}",
            self.source.display(),
            counts.join(", ")
        )?;
        let mismatched: Vec<String> = self
            .mismatched
            .iter()
            .map(|m| format!("{}: expected {:?}, found {:?}", m.name, m.expected, m.found))
            .collect();
        section(f, "missing tensors", &self.missing)?;
        section(f, "unexpected tensors", &self.unexpected)?;
        section(f, "mis-shaped tensors", &mismatched)
    }
}

fn section(f: &mut fmt::Formatter<'_>, title: &str, items: &[String]) -> fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    write!(f, "\n{title} ({}):", items.len())?;
    for item in items.iter().take(SHOWN) {
        write!(f, "\n  {item}")?;
    }
    if items.len() > SHOWN {
        write!(f, "\n  ... and {} more", items.len() - SHOWN)?;
    }
    Ok(())
}
