//! Config diagnostics: a message at a byte span of the file, printed as
//! `FILE:LINE:COL: message` (1-based line and column, columns in characters).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A 1-based position in the config file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Loc {
    pub line: usize,
    pub col: usize,
}

impl Loc {
    /// The position of byte `offset` in `src`.
    pub fn of(src: &str, offset: usize) -> Loc {
        let offset = offset.min(src.len());
        let before = &src[..floor_char_boundary(src, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        Loc { line, col }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// One problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diag {
    pub file: PathBuf,
    pub loc: Loc,
    pub message: String,
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.loc.line,
            self.loc.col,
            self.message
        )
    }
}

/// Collects diagnostics against one source text.
pub struct Diags<'a> {
    file: &'a Path,
    src: &'a str,
    list: Vec<Diag>,
}

impl<'a> Diags<'a> {
    pub fn new(file: &'a Path, src: &'a str) -> Self {
        Diags {
            file,
            src,
            list: Vec::new(),
        }
    }

    pub fn loc(&self, span: &Range<usize>) -> Loc {
        Loc::of(self.src, span.start)
    }

    /// Records `message` at `span` (the start of the file when `None`).
    pub fn at(&mut self, span: Option<&Range<usize>>, message: impl Into<String>) {
        let loc = span.map_or(Loc { line: 1, col: 1 }, |s| self.loc(s));
        self.list.push(Diag {
            file: self.file.to_path_buf(),
            loc,
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// How many have been recorded: a section compares it before and after.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Every diagnostic, sorted by position.
    pub fn into_sorted(mut self) -> Vec<Diag> {
        self.list.sort_by_key(|d| d.loc);
        self.list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loc_counts_lines_and_chars() {
        let src = "a = 1\nbé = 2\n";
        assert_eq!(Loc::of(src, 0), Loc { line: 1, col: 1 });
        assert_eq!(Loc::of(src, 6), Loc { line: 2, col: 1 });
        // 'é' is two bytes but one column.
        assert_eq!(Loc::of(src, 9), Loc { line: 2, col: 3 });
    }
}
