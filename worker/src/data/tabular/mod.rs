//! Tabular data: one CSV file (the `csv` crate) read into the columns a job names, its rows split
//! into training, validation and test (by a time column, as Rossmann's last weeks, or by seed),
//! and the preprocessing fitted on the training rows only ([`preprocess::Preprocessing`]).
//!
//! Handling of bad input, each an error naming the file, the line and the column, never a panic:
//! a column the job names that the header lacks; a row with another number of fields than the
//! header (ragged); a target or continuous value that is not a number; a time value that is not a
//! number or date. Documented handling: a row without a target is dropped (the count is logged);
//! a missing or unseen categorical level is index 0; a missing continuous value is the training
//! median. Values are read as UTF-8 with invalid bytes replaced, so a Latin-1 file still loads.

pub mod dates;
pub mod preprocess;

use std::path::Path;

use cyclotron_core::spec::{DataSpec, TabularSpec};

use crate::error::{Error, Result};
use dates::Date;

/// A CSV file larger than this is refused (1 GiB).
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// One field longer than this is refused (64 KiB).
pub const MAX_FIELD_BYTES: usize = 1 << 16;

/// Texts that mean "no value" in a field (besides an empty one), as pandas reads them.
pub const MISSING: &[&str] = &["NA", "N/A", "NaN", "nan", "null", "NULL", "None", "?", "-"];

/// Whether a field holds no value.
pub fn is_missing(v: &str) -> bool {
    v.is_empty() || MISSING.contains(&v)
}

/// The columns of a CSV that a job uses, by name, and each row's line in the file.
#[derive(Debug, Clone, Default)]
pub struct RawTable {
    pub path: String,
    names: Vec<String>,
    /// `columns[c][r]`: the trimmed text of column `c` in row `r`.
    columns: Vec<Vec<String>>,
    /// The file's line of each row (the header is line 1), for messages.
    pub lines: Vec<u64>,
}

impl RawTable {
    /// A table from columns given in memory (tests), rows on lines 2, 3, ….
    pub fn from_columns(path: &str, columns: Vec<(&str, Vec<&str>)>) -> RawTable {
        let n = columns.first().map_or(0, |c| c.1.len());
        RawTable {
            path: path.into(),
            names: columns.iter().map(|c| c.0.to_string()).collect(),
            columns: columns.into_iter().map(|c| c.1.into_iter().map(String::from).collect()).collect(),
            lines: (2..n as u64 + 2).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The values of column `name`, which the table must have been read with.
    pub fn column(&self, name: &str) -> Result<&[String]> {
        match self.names.iter().position(|n| n == name) {
            Some(i) => Ok(&self.columns[i]),
            None => Err(Error::Invalid {
                what: self.path.clone(),
                message: format!("has no column {name:?}; its columns are {:?}", self.names),
            }),
        }
    }

    /// The rows at `keep` (in that order).
    pub fn select(&self, keep: &[usize]) -> RawTable {
        RawTable {
            path: self.path.clone(),
            names: self.names.clone(),
            columns: self.columns.iter().map(|c| keep.iter().map(|&r| c[r].clone()).collect()).collect(),
            lines: keep.iter().map(|&r| self.lines[r]).collect(),
        }
    }

    /// An error about row `row`'s value of `column`.
    pub fn invalid(&self, row: usize, column: &str, message: impl std::fmt::Display) -> Error {
        Error::Invalid {
            what: self.path.clone(),
            message: format!("line {}, column {column:?}: {message}", self.lines[row]),
        }
    }
}

/// Every column `spec` names (target, features, time column), once, in order.
pub fn wanted_columns(spec: &TabularSpec) -> Vec<String> {
    let mut names = vec![spec.target.clone()];
    names.extend(spec.categorical.iter().chain(&spec.continuous).chain(&spec.dates).cloned());
    names.extend(spec.time_column.iter().cloned());
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// Read the columns `wanted` of the CSV file at `path` (with a header line).
pub fn read_csv(path: &Path, wanted: &[String]) -> Result<RawTable> {
    let shown = path.display().to_string();
    let io = |e: std::io::Error| Error::Io { what: shown.clone(), source: e };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_FILE_BYTES {
        return Err(Error::Invalid {
            what: shown,
            message: format!("{len} bytes is over the limit of {MAX_FILE_BYTES}"),
        });
    }
    let file = std::fs::File::open(path).map_err(io)?;
    read_csv_from(file, &shown, wanted)
}

/// The column names of the CSV file at `path` (its header line).
pub fn read_header(path: &Path) -> Result<Vec<String>> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| Error::Io { what: shown.clone(), source: e })?;
    let mut reader = csv::ReaderBuilder::new().from_reader(file);
    let headers = reader.byte_headers().map_err(|e| csv_error(&shown, &e))?;
    Ok(headers.iter().map(|h| String::from_utf8_lossy(h).trim().to_string()).collect())
}

fn csv_error(path: &str, e: &csv::Error) -> Error {
    let message = match e.kind() {
        csv::ErrorKind::UnequalLengths { pos, expected_len, len } => format!(
            "line {}: {len} fields, but the header has {expected_len}; every row needs one field per column (quote fields that contain commas)",
            pos.as_ref().map_or(0, |p| p.line())
        ),
        _ => {
            let at = e.position().map(|p| format!(" (line {})", p.line())).unwrap_or_default();
            format!("not a well-formed CSV{at}: {e}")
        }
    };
    Error::Invalid { what: path.to_string(), message }
}

/// [`read_csv`] from any reader; `path` names it in errors.
pub fn read_csv_from(reader: impl std::io::Read, path: &str, wanted: &[String]) -> Result<RawTable> {
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(reader);
    let headers: Vec<String> = reader
        .byte_headers()
        .map_err(|e| csv_error(path, &e))?
        .iter()
        .map(|h| String::from_utf8_lossy(h).trim().to_string())
        .collect();
    let mut index = vec![];
    let absent: Vec<&String> = wanted.iter().filter(|w| !headers.contains(w)).collect();
    if !absent.is_empty() {
        return Err(Error::Invalid {
            what: path.to_string(),
            message: format!(
                "has no column {}; its columns are {headers:?} (check data.tabular)",
                absent.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ")
            ),
        });
    }
    for w in wanted {
        index.push(headers.iter().position(|h| h == w).unwrap_or_default());
    }
    let mut columns = vec![vec![]; wanted.len()];
    let mut lines = vec![];
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(csv_error(path, &e)),
        }
        let line = record.position().map_or(0, |p| p.line());
        for (c, &i) in index.iter().enumerate() {
            let field = record.get(i).unwrap_or_default();
            if field.len() > MAX_FIELD_BYTES {
                return Err(Error::Invalid {
                    what: path.to_string(),
                    message: format!(
                        "line {line}, column {:?}: a field of {} bytes, over the limit of {MAX_FIELD_BYTES}",
                        wanted[c],
                        field.len()
                    ),
                });
            }
            columns[c].push(String::from_utf8_lossy(field).trim().to_string());
        }
        lines.push(line);
    }
    Ok(RawTable { path: path.to_string(), names: wanted.to_vec(), columns, lines })
}

/// Rows of each split, as indices into the table, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitRows {
    pub train: Vec<usize>,
    pub valid: Vec<usize>,
    pub test: Option<Vec<usize>>,
}

/// How a time value compares: a number, or a date's day number.
fn time_value(text: &str, as_date: bool) -> Option<f64> {
    if as_date {
        Date::parse(text).map(|d| d.days() as f64)
    } else {
        text.parse::<f64>().ok().filter(|v| v.is_finite())
    }
}

/// Hold out `pct` of `rows` (a seeded choice), returning (kept, held out), each in file order.
fn carve(rows: &[usize], pct: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let n_out = ((rows.len() as f64 * pct).round() as usize).min(rows.len());
    let order = crate::data::permutation(rows.len(), seed);
    let mut out: Vec<bool> = vec![false; rows.len()];
    for &i in &order[..n_out] {
        out[i] = true;
    }
    let kept = rows.iter().zip(&out).filter(|(_, o)| !**o).map(|(r, _)| *r).collect();
    let taken = rows.iter().zip(&out).filter(|(_, o)| **o).map(|(r, _)| *r).collect();
    (kept, taken)
}

/// Split `table`'s rows as `spec` says: by `time_column` (rows at/after `test_from` are the test
/// split, at/after `valid_from` the validation split), else by seed (`valid_pct`, `test_pct`).
pub fn split_rows(table: &RawTable, spec: &TabularSpec, data: &DataSpec, seed: u64) -> Result<SplitRows> {
    let all: Vec<usize> = (0..table.len()).collect();
    let Some(col) = &spec.time_column else {
        let (rest, test) = match data.test_pct {
            Some(p) if p > 0.0 => {
                let (rest, test) = carve(&all, p, seed ^ 0x7465_7374);
                (rest, Some(test))
            }
            _ => (all, None),
        };
        let (train, valid) = carve(&rest, data.valid_pct, seed);
        return Ok(SplitRows { train, valid, test });
    };
    let bounds = [("valid_from", &spec.valid_from), ("test_from", &spec.test_from)];
    // dates when a bound is not a plain number
    let as_date = bounds.iter().any(|(_, b)| b.as_ref().is_some_and(|b| b.trim().parse::<f64>().is_err()));
    let mut cut = [None, None];
    for (k, (name, bound)) in bounds.iter().enumerate() {
        if let Some(b) = bound {
            cut[k] = Some(time_value(b, as_date).ok_or_else(|| Error::Invalid {
                what: format!("data.tabular.{name}"),
                message: format!(
                    "{b:?} is neither a number nor a date (YYYY-MM-DD or YYYY-MM); both bounds are compared as the same kind"
                ),
            })?);
        }
    }
    let values = table.column(col)?;
    let (mut train, mut valid, mut test) = (vec![], vec![], vec![]);
    for (r, v) in values.iter().enumerate() {
        let Some(t) = time_value(v, as_date) else {
            let kind = if as_date { "a date (YYYY-MM-DD)" } else { "a number" };
            return Err(table.invalid(r, col, format!("{v:?} is not {kind} like data.tabular's bounds")));
        };
        if cut[1].is_some_and(|c| t >= c) {
            test.push(r);
        } else if cut[0].is_some_and(|c| t >= c) {
            valid.push(r);
        } else {
            train.push(r);
        }
    }
    if spec.valid_from.is_none() {
        (train, valid) = carve(&train, data.valid_pct, seed);
    }
    Ok(SplitRows { train, valid, test: spec.test_from.is_some().then_some(test) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, wanted: &[&str]) -> Result<RawTable> {
        let wanted: Vec<String> = wanted.iter().map(|s| s.to_string()).collect();
        read_csv_from(text.as_bytes(), "t.csv", &wanted)
    }

    #[test]
    fn reads_the_named_columns_with_their_lines() {
        let t = read("a,b,c\n1, x ,3\n\"4,5\",y,6\n", &["c", "a"]).unwrap();
        assert_eq!(t.column("c").unwrap(), ["3", "6"]);
        assert_eq!(t.column("a").unwrap(), ["1", "4,5"]);
        assert_eq!(t.lines, [2, 3]);
        // a Latin-1 byte does not stop the file
        let t = read_csv_from(&b"city,y\nS\xe3o Paulo,1\n"[..], "l.csv", &["city".into()]).unwrap();
        assert_eq!(t.column("city").unwrap()[0], "S\u{fffd}o Paulo");
    }

    #[test]
    fn a_missing_column_and_a_ragged_row_are_named() {
        let e = read("a,b\n1,2\n", &["a", "sales"]).unwrap_err().to_string();
        assert!(
            e.contains("t.csv") && e.contains("no column \"sales\"") && e.contains("[\"a\", \"b\"]"),
            "{e}"
        );
        let e = read("a,b\n1,2\n3\n4,5\n", &["a"]).unwrap_err().to_string();
        assert!(e.contains("line 3: 1 fields, but the header has 2"), "{e}");
    }

    fn spec(time: Option<(&str, &str)>) -> (TabularSpec, DataSpec) {
        let mut t: TabularSpec = serde_json::from_str(r#"{"target": "y", "continuous": ["x"]}"#).unwrap();
        if let Some((v, te)) = time {
            t.time_column = Some("t".into());
            t.valid_from = Some(v.into());
            t.test_from = Some(te.into());
        }
        let d: DataSpec =
            serde_json::from_str(r#"{"source": "tabular_csv", "path": "t.csv", "valid_pct": 0.25}"#).unwrap();
        (t, d)
    }

    #[test]
    fn rows_split_by_time_numbers_or_dates() {
        let t =
            RawTable::from_columns("t.csv", vec![("t", vec!["2013.5", "2014", "2012", "2013", "2015.9"])]);
        let (s, d) = spec(Some(("2013", "2014")));
        let rows = split_rows(&t, &s, &d, 1).unwrap();
        assert_eq!(rows, SplitRows { train: vec![2], valid: vec![0, 3], test: Some(vec![1, 4]) });
        let t = RawTable::from_columns(
            "t.csv",
            vec![("t", vec!["2015-07-31", "2014-12-31", "2015-01-01", "2015-06-01 00:00:00"])],
        );
        let (s, d) = spec(Some(("2015-01", "2015-06-15")));
        let rows = split_rows(&t, &s, &d, 1).unwrap();
        assert_eq!(rows, SplitRows { train: vec![1], valid: vec![2, 3], test: Some(vec![0]) });
        let bad = RawTable::from_columns("t.csv", vec![("t", vec!["2015-07-31", "soon"])]);
        let e = split_rows(&bad, &s, &d, 1).unwrap_err().to_string();
        assert!(e.contains("line 3, column \"t\": \"soon\" is not a date"), "{e}");
    }

    #[test]
    fn rows_split_by_seed_cover_every_row_once() {
        let t = RawTable::from_columns("t.csv", vec![("x", vec!["1"; 40])]);
        let (s, mut d) = spec(None);
        d.test_pct = Some(0.25);
        let rows = split_rows(&t, &s, &d, 7).unwrap();
        let test = rows.test.clone().unwrap();
        assert_eq!((rows.train.len(), rows.valid.len(), test.len()), (22, 8, 10));
        let mut all: Vec<usize> = rows.train.iter().chain(&rows.valid).chain(&test).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..40).collect::<Vec<_>>());
        assert_eq!(split_rows(&t, &s, &d, 7).unwrap(), rows, "the same seed, the same split");
    }
}
