//! One output convention for every command: a table with a header row
//! (or an explicit `no …` line when empty) for people, the same data as
//! JSON with `--json` for programs, in the shapes the admin API answers
//! with (`latchkey::server::views`).

use serde::Serialize;

/// A table: a header row, then one row per object, columns padded to the
/// widest cell.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names (printed in capitals).
    pub fn new(headers: &[&'static str]) -> Table {
        Table { headers: headers.to_vec(), rows: Vec::new() }
    }

    /// Add a row; an empty cell prints as `-`.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.into_iter().map(|c| if c.is_empty() { "-".into() } else { c }).collect());
    }

    /// Print it, or `empty` (`no agents in `default``) when it has no rows.
    pub fn print(&self, empty: &str) {
        if self.rows.is_empty() {
            out!("{empty}");
            return;
        }
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: Vec<String>| {
            let n = cells.len();
            let mut out = String::new();
            for (i, (c, w)) in cells.into_iter().zip(&widths).enumerate() {
                if i + 1 == n {
                    out.push_str(&c);
                } else {
                    out.push_str(&format!("{c:<w$}  "));
                }
            }
            out!("{}", out.trim_end());
        };
        line(self.headers.iter().map(|h| h.to_uppercase()).collect());
        for row in &self.rows {
            line(row.clone());
        }
    }
}

/// Print `value` as one line of JSON.
pub fn json<T: Serialize + ?Sized>(value: &T) {
    out!("{}", serde_json::to_string(value).unwrap_or_else(|_| "null".into()));
}

/// The `where` of an empty list's line: `` in `acme` `` or nothing.
pub fn scope(org: Option<&str>) -> String {
    org.map(|o| format!(" in `{o}`")).unwrap_or_default()
}

/// Write one line of command output. A closed standard output
/// (`latchkey agent list | head -1`) ends the process quietly with status
/// 0, as a reader that has seen enough is no failure; `println!` would
/// panic there (Rust ignores SIGPIPE, so the write meets EPIPE). Any other
/// write error is reported with code `io`.
pub fn line(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("latchkey: error[io]: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}
