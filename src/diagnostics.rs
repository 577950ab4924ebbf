//! Errors in operator-written files (labelwall.yaml, policy.yaml, inventory.yaml): each names
//! the file, the line where known, the item (rule, group, endpoint) and the field, so that
//! `labelwall check` can list every problem at once.
//! Must not depend on: anything of labelwall's but `yaml_lines`.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line, where known.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The item the problem is in, e.g. "rule `ratings-to-db`" or "group `other`".
    pub item: Option<String>,
    /// The key path of the field, e.g. `to[1]` or `dataplane.reply_port`.
    pub field: Option<String>,
    pub message: String,
}

impl Diagnostic {
    /// A problem with the file as a whole (unreadable, not YAML).
    pub fn file(file: &Path, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: file.to_path_buf(),
            line: None,
            column: None,
            item: None,
            field: None,
            message: message.into(),
        }
    }

    /// A YAML syntax or shape error from serde, located where the parser says.
    pub fn from_yaml(file: &Path, error: &serde_yaml_ng::Error) -> Diagnostic {
        let location = error.location();
        let message = error.to_string();
        // serde_yaml_ng appends " at line L column C"; the location is printed in front.
        let message = match message.rfind(" at line ") {
            Some(at) => message[..at].to_string(),
            None => message,
        };
        Diagnostic {
            line: location.as_ref().map(|l| l.line()),
            column: location.as_ref().map(|l| l.column()),
            ..Diagnostic::file(file, message)
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if let Some(item) = &self.item {
            write!(f, ": {item}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found (at least one), one per line when printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

/// One diagnostic per key given twice in a mapping of `file`.
pub fn duplicate_keys(file: &Path, lines: &crate::yaml_lines::LineIndex) -> Vec<Diagnostic> {
    lines
        .duplicates()
        .iter()
        .map(|d| Diagnostic {
            line: Some(d.line),
            field: Some(d.path.clone()),
            ..Diagnostic::file(
                file,
                format!("`{}` is given twice (first at line {}); remove one", d.key, d.first_line),
            )
        })
        .collect()
}

/// Reads a file for one of the loaders, as a diagnostic on failure.
pub fn read_file(path: &Path) -> Result<String, Diagnostics> {
    std::fs::read_to_string(path).map_err(|error| {
        Diagnostics::from(Diagnostic::file(path, format!("cannot read the file: {error}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_line_item_field() {
        let d = Diagnostic {
            line: Some(12),
            item: Some("rule `ratings-to-db`".into()),
            field: Some("to[0]".into()),
            ..Diagnostic::file(Path::new("policy.yaml"), "unknown group `db`")
        };
        assert_eq!(
            d.to_string(),
            "policy.yaml:12: rule `ratings-to-db`: to[0]: unknown group `db`"
        );
    }
}
