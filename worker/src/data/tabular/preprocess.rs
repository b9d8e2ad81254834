//! The preprocessing of tabular rows, fitted on the training split only and saved with every
//! snapshot (`tabular.json`) so that prediction repeats it exactly:
//!
//! - a categorical column's levels are the training split's distinct values, sorted; a value is
//!   its level's position + 1, and index 0 stands for a missing value or a level the training
//!   split never had (a city seen only in the test months);
//! - a date column becomes the categorical parts of fastai's `add_datepart` (`<date>_year`,
//!   `_month`, `_week`, `_dayofweek`, `_day`, `_is_month_end`);
//! - a continuous column's missing values take the training median, and when the training split
//!   has missing values a categorical flag `<column>_na` says which were filled; then the column
//!   is normalised by the training mean and standard deviation (of the filled values);
//! - the target: a number (regression, on a log scale when `log_target`) or a class (the text of
//!   the column, or `> threshold` of a number).

use serde::{Deserialize, Serialize};

use cyclotron_core::spec::{TabularSpec, TargetKind, DATE_PARTS};

use super::dates::Date;
use super::{is_missing, RawTable};
use crate::error::{Error, Result};

/// Most levels of one categorical column (its embedding has a row per level).
pub const MAX_LEVELS: usize = 100_000;
/// The version of `tabular.json`.
pub const FORMAT: u32 = 1;

/// Where a categorical feature's values come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The CSV column of the feature's name.
    Column,
    /// Part `part` (an index into `DATE_PARTS`) of date column `date`.
    DatePart { date: String, part: usize },
    /// Whether continuous column `column` was missing (`"true"` / `"false"`).
    MissingFlag { column: String },
}

/// A categorical feature and its levels (sorted; level `i` has index `i + 1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Categorical {
    pub name: String,
    pub source: Source,
    pub levels: Vec<String>,
}

impl Categorical {
    /// Rows of its embedding: every level and index 0.
    pub fn cardinality(&self) -> i64 {
        self.levels.len() as i64 + 1
    }

    /// Index of `value`: 0 when missing or unseen.
    pub fn index(&self, value: Option<&str>) -> i64 {
        value
            .and_then(|v| self.levels.binary_search_by(|l| l.as_str().cmp(v)).ok())
            .map_or(0, |i| i as i64 + 1)
    }
}

/// A continuous feature's training statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Continuous {
    pub name: String,
    /// Taken as `ln(1 + x)` before the median, mean and standard deviation.
    #[serde(default)]
    pub log: bool,
    pub median: f64,
    pub mean: f64,
    pub std: f64,
}

/// What the target becomes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetMap {
    /// A number; the model predicts `ln(value)` when `log`.
    Values { log: bool },
    /// A class index into `classes`; with `threshold`, class 1 is a number above it.
    Classes { classes: Vec<String>, threshold: Option<f64> },
}

/// The fitted preprocessing (`tabular.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    pub format: u32,
    pub target: String,
    pub target_map: TargetMap,
    pub categorical: Vec<Categorical>,
    pub continuous: Vec<Continuous>,
}

/// The targets of a table's rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// Regression targets on their own scale.
    Values(Vec<f32>),
    Classes(Vec<i64>),
}

/// Rows ready for the model: categorical indices `[rows × n_cat]` and normalised continuous values
/// `[rows × n_cont]`, row-major, and the targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub rows: usize,
    pub n_cat: usize,
    pub n_cont: usize,
    pub cats: Vec<i64>,
    pub conts: Vec<f32>,
    pub targets: Targets,
    /// Categorical values (not missing) whose level the training split did not have.
    pub unseen: usize,
}

impl Table {
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }
}

/// The rows of `table` that have a target value, and how many were dropped.
pub fn drop_missing_target(table: &RawTable, spec: &TabularSpec) -> Result<(RawTable, usize)> {
    let keep: Vec<usize> = table
        .column(&spec.target)?
        .iter()
        .enumerate()
        .filter(|(_, v)| !is_missing(v))
        .map(|(r, _)| r)
        .collect();
    let dropped = table.len() - keep.len();
    Ok((table.select(&keep), dropped))
}

/// The value of a continuous column: `ln(1 + x)` when `log` (an error naming the row when
/// `x <= -1`).
fn feature(table: &RawTable, row: usize, column: &str, v: &str, log: bool) -> Result<f64> {
    let x = number(table, row, column, v)?;
    if !log {
        return Ok(x);
    }
    if x <= -1.0 {
        return Err(table.invalid(
            row,
            column,
            format!("{x} is not > -1, so ln(1 + x) is undefined (data.tabular.log_continuous)"),
        ));
    }
    Ok(x.ln_1p())
}

fn number(table: &RawTable, row: usize, column: &str, v: &str) -> Result<f64> {
    v.parse::<f64>().ok().filter(|x| x.is_finite()).ok_or_else(|| {
        table.invalid(row, column, format!("{v:?} is not a number (a missing value is empty or NA)"))
    })
}

/// Each row's date of column `name` (`None` when missing), or an error naming the first bad one.
fn dates(table: &RawTable, name: &str) -> Result<Vec<Option<Date>>> {
    let values = table.column(name)?;
    values
        .iter()
        .enumerate()
        .map(|(r, v)| {
            if is_missing(v) {
                return Ok(None);
            }
            Date::parse(v).map(Some).ok_or_else(|| {
                table.invalid(r, name, format!("{v:?} is not a date (YYYY-MM-DD, YYYY/MM/DD or YYYY-MM)"))
            })
        })
        .collect()
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn levels(name: &str, values: impl Iterator<Item = String>) -> Result<Vec<String>> {
    let set: std::collections::BTreeSet<String> = values.collect();
    if set.len() > MAX_LEVELS {
        return Err(Error::Invalid {
            what: format!("data.tabular.categorical ({name})"),
            message: format!(
                "{} levels in the training split, over the limit of {MAX_LEVELS}: is it an identifier? make it continuous or leave it out",
                set.len()
            ),
        });
    }
    Ok(set.into_iter().collect())
}

impl Preprocessing {
    /// Fit on `train`: the training split's rows only, each with a target.
    pub fn fit(train: &RawTable, spec: &TabularSpec) -> Result<Preprocessing> {
        let mut categorical = vec![];
        for name in &spec.categorical {
            let values = train.column(name)?.iter().filter(|v| !is_missing(v)).cloned();
            categorical.push(Categorical {
                name: name.clone(),
                source: Source::Column,
                levels: levels(name, values)?,
            });
        }
        for date in &spec.dates {
            let parts: Vec<[String; 6]> = dates(train, date)?.iter().flatten().map(|d| d.parts()).collect();
            for (k, part) in DATE_PARTS.iter().enumerate() {
                let name = format!("{date}_{part}");
                let lv = levels(&name, parts.iter().map(|p| p[k].clone()))?;
                categorical.push(Categorical {
                    name,
                    source: Source::DatePart { date: date.clone(), part: k },
                    levels: lv,
                });
            }
        }
        let mut continuous = vec![];
        for name in &spec.continuous {
            let raw = train.column(name)?;
            let log = spec.log_continuous.contains(name);
            let mut present = vec![];
            for (r, v) in raw.iter().enumerate() {
                if !is_missing(v) {
                    present.push(feature(train, r, name, v, log)?);
                }
            }
            let n_missing = raw.len() - present.len();
            let med = median(&mut present.clone());
            let n = raw.len().max(1) as f64;
            let mean = (present.iter().sum::<f64>() + med * n_missing as f64) / n;
            let var = (present.iter().map(|v| (v - mean).powi(2)).sum::<f64>()
                + (med - mean).powi(2) * n_missing as f64)
                / n;
            let std = if var.sqrt() > 1e-12 { var.sqrt() } else { 1.0 };
            continuous.push(Continuous { name: name.clone(), log, median: med, mean, std });
            if n_missing > 0 {
                categorical.push(Categorical {
                    name: format!("{name}_na"),
                    source: Source::MissingFlag { column: name.clone() },
                    levels: vec!["false".into(), "true".into()],
                });
            }
        }
        let target_map = match spec.kind {
            TargetKind::Regression => TargetMap::Values { log: spec.log_target },
            TargetKind::Classification => {
                let classes = match (spec.threshold, &spec.classes) {
                    (Some(t), _) => vec![format!("<= {t}"), format!("> {t}")],
                    (None, Some(c)) => c.clone(),
                    (None, None) => levels(&spec.target, train.column(&spec.target)?.iter().cloned())?,
                };
                if classes.len() < 2 {
                    return Err(Error::Invalid {
                        what: format!("data.tabular.target ({})", spec.target),
                        message: format!(
                            "the training split has only the classes {classes:?}; a classifier needs two"
                        ),
                    });
                }
                TargetMap::Classes { classes, threshold: spec.threshold }
            }
        };
        Ok(Preprocessing { format: FORMAT, target: spec.target.clone(), target_map, categorical, continuous })
    }

    /// The rows of `table` as the model sees them; `split` names the split in errors.
    pub fn transform(&self, table: &RawTable, split: &str) -> Result<Table> {
        let rows = table.len();
        let (n_cat, n_cont) = (self.categorical.len(), self.continuous.len());
        let mut cats = vec![0i64; rows * n_cat];
        let mut unseen = 0;
        let mut date_cache: Vec<(String, Vec<Option<[String; 6]>>)> = vec![];
        for (c, cat) in self.categorical.iter().enumerate() {
            let mut set = |r: usize, value: Option<&str>| {
                let i = cat.index(value);
                unseen += usize::from(i == 0 && value.is_some());
                cats[r * n_cat + c] = i;
            };
            match &cat.source {
                Source::Column => {
                    for (r, v) in table.column(&cat.name)?.iter().enumerate() {
                        set(r, (!is_missing(v)).then_some(v.as_str()));
                    }
                }
                Source::MissingFlag { column } => {
                    for (r, v) in table.column(column)?.iter().enumerate() {
                        set(r, Some(if is_missing(v) { "true" } else { "false" }));
                    }
                }
                Source::DatePart { date, part } => {
                    let at = match date_cache.iter().position(|(d, _)| d == date) {
                        Some(at) => at,
                        None => {
                            let parts = dates(table, date)?.iter().map(|d| d.map(|d| d.parts())).collect();
                            date_cache.push((date.clone(), parts));
                            date_cache.len() - 1
                        }
                    };
                    for (r, p) in date_cache[at].1.iter().enumerate() {
                        set(r, p.as_ref().map(|p| p[*part].as_str()));
                    }
                }
            }
        }
        let mut conts = vec![0f32; rows * n_cont];
        for (c, cont) in self.continuous.iter().enumerate() {
            for (r, v) in table.column(&cont.name)?.iter().enumerate() {
                let x = if is_missing(v) { cont.median } else { feature(table, r, &cont.name, v, cont.log)? };
                conts[r * n_cont + c] = ((x - cont.mean) / cont.std) as f32;
            }
        }
        let targets = self.targets(table, split)?;
        Ok(Table { rows, n_cat, n_cont, cats, conts, targets, unseen })
    }

    fn targets(&self, table: &RawTable, split: &str) -> Result<Targets> {
        let name = &self.target;
        let values = table.column(name)?;
        match &self.target_map {
            TargetMap::Values { log } => {
                let mut ys = Vec::with_capacity(values.len());
                for (r, v) in values.iter().enumerate() {
                    let y = number(table, r, name, v)?;
                    if *log && y <= 0.0 {
                        return Err(table.invalid(
                            r,
                            name,
                            format!("the target is {y}; a log target must be > 0 (set data.tabular.log_target = false)"),
                        ));
                    }
                    ys.push(y as f32);
                }
                Ok(Targets::Values(ys))
            }
            TargetMap::Classes { classes, threshold } => {
                let mut ys = Vec::with_capacity(values.len());
                for (r, v) in values.iter().enumerate() {
                    let class = match threshold {
                        Some(t) => i64::from(number(table, r, name, v)? > *t),
                        None => match classes.iter().position(|c| c == v) {
                            Some(i) => i as i64,
                            None => {
                                return Err(table.invalid(
                                    r,
                                    name,
                                    format!("the {split} split has class {v:?}, which is not one of {classes:?}; list data.tabular.classes"),
                                ))
                            }
                        },
                    };
                    ys.push(class);
                }
                Ok(Targets::Classes(ys))
            }
        }
    }

    /// The number of classes (1 for a regression: one output).
    pub fn outputs(&self) -> i64 {
        match &self.target_map {
            TargetMap::Values { .. } => 1,
            TargetMap::Classes { classes, .. } => classes.len() as i64,
        }
    }

    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map_err(|e| Error::Invalid { what: "tabular.json".into(), message: e.to_string() })
    }

    pub fn from_json(text: &str) -> Result<Preprocessing> {
        let p: Preprocessing = serde_json::from_str(text)
            .map_err(|e| Error::Invalid { what: "tabular.json".into(), message: e.to_string() })?;
        if p.format != FORMAT {
            return Err(Error::Invalid {
                what: "tabular.json".into(),
                message: format!("format {} is not {FORMAT}, the one this worker reads", p.format),
            });
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> TabularSpec {
        serde_json::from_str(json).unwrap()
    }

    fn houses() -> RawTable {
        RawTable::from_columns(
            "h.csv",
            vec![
                ("city", vec!["Austin", "Waco", "Austin", "", "Dallas", "Tyler"]),
                ("listings", vec!["10", "NA", "30", "20", "1000", ""]),
                ("date", vec!["2015-07-31", "2015-01-05", "", "2016-02-29", "2015-07-31", "2016-03-01"]),
                ("sales", vec!["100", "200", "300", "400", "500", "600"]),
            ],
        )
    }

    fn regression() -> TabularSpec {
        spec(r#"{"target": "sales", "categorical": ["city"], "continuous": ["listings"], "dates": ["date"]}"#)
    }

    #[test]
    fn fitted_on_the_training_rows_only() {
        let all = houses();
        let train = all.select(&[0, 1, 2, 3]);
        let p = Preprocessing::fit(&train, &regression()).unwrap();
        let city = &p.categorical[0];
        assert_eq!(city.levels, ["Austin", "Waco"], "Dallas and Tyler are only in later rows");
        // listings: train values 10, 30, 20 and one missing → median 20, filled, mean 20
        let l = &p.continuous[0];
        assert_eq!((l.median, l.mean), (20.0, 20.0));
        assert!((l.std - 50f64.sqrt()).abs() < 1e-9, "{l:?}");
        let test = p.transform(&all.select(&[4, 5]), "test").unwrap();
        // unseen level → 0; the 1000 is normalised by the training statistics
        assert_eq!(test.cats[0], 0);
        assert!((test.conts[0] - ((1000.0 - 20.0) / l.std) as f32).abs() < 1e-3);
        assert_eq!(test.targets, Targets::Values(vec![500.0, 600.0]));
        assert!(test.unseen >= 2, "Dallas, Tyler and new date parts: {}", test.unseen);
    }

    #[test]
    fn missing_continuous_values_take_the_median_and_a_flag() {
        let all = houses();
        let p = Preprocessing::fit(&all, &regression()).unwrap();
        let flag = p.categorical.iter().position(|c| c.name == "listings_na").expect("a flag column");
        assert_eq!(p.categorical[flag].source, Source::MissingFlag { column: "listings".into() });
        let t = p.transform(&all, "train").unwrap();
        let l = &p.continuous[0];
        assert_eq!(l.median, 25.0, "the median of 10, 30, 20 and 1000");
        let at = |r: usize| t.conts[r * t.n_cont];
        assert_eq!(at(1), ((25.0 - l.mean) / l.std) as f32, "a missing value is the median");
        assert_eq!(at(5), at(1));
        let flags: Vec<i64> = (0..6).map(|r| t.cats[r * t.n_cat + flag]).collect();
        assert_eq!(flags, [1, 2, 1, 1, 1, 2], "false = 1, true = 2");
        // a missing categorical value is index 0 too
        assert_eq!(t.cats[3 * t.n_cat], 0);
    }

    #[test]
    fn a_log_column_is_transformed_before_its_statistics() {
        let t = RawTable::from_columns(
            "l.csv",
            vec![("n", vec!["0", "NA", "99", "9"]), ("y", vec!["1", "2", "3", "4"])],
        );
        let mut s = spec(r#"{"target": "y", "continuous": ["n"], "log_continuous": ["n"]}"#);
        let p = Preprocessing::fit(&t, &s).unwrap();
        let n = &p.continuous[0];
        assert!(n.log && (n.median - 10f64.ln()).abs() < 1e-12, "{n:?}");
        let x = p.transform(&t, "train").unwrap().conts[2];
        assert!((f64::from(x) - (100f64.ln() - n.mean) / n.std).abs() < 1e-5);
        s.log_continuous.clear();
        assert!(!Preprocessing::fit(&t, &s).unwrap().continuous[0].log);
        let bad = RawTable::from_columns("l.csv", vec![("n", vec!["-2"]), ("y", vec!["1"])]);
        let e = p.transform(&bad, "test").unwrap_err().to_string();
        assert!(e.contains("line 2, column \"n\": -2 is not > -1"), "{e}");
    }

    #[test]
    fn dates_become_categorical_parts() {
        let all = houses();
        let p = Preprocessing::fit(&all, &regression()).unwrap();
        let names: Vec<&str> = p.categorical.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "city",
                "date_year",
                "date_month",
                "date_week",
                "date_dayofweek",
                "date_day",
                "date_is_month_end",
                "listings_na"
            ]
        );
        let t = p.transform(&all, "train").unwrap();
        let level = |r: usize, c: usize| {
            let i = t.cats[r * t.n_cat + c];
            if i == 0 {
                "-".to_string()
            } else {
                p.categorical[c].levels[i as usize - 1].clone()
            }
        };
        // 2015-07-31: a Friday, ISO week 31, the month's last day
        let row0: Vec<String> = (1..7).map(|c| level(0, c)).collect();
        assert_eq!(row0, ["2015", "7", "31", "4", "31", "true"]);
        assert_eq!(level(3, 6), "true", "2016-02-29 ends its month");
        assert_eq!(level(2, 1), "-", "a missing date is index 0 in every part");
    }

    #[test]
    fn bad_values_are_named_with_their_line() {
        let bad = houses().select(&[0, 1, 2]);
        let t = RawTable::from_columns(
            "b.csv",
            vec![
                ("city", vec!["a", "b"]),
                ("listings", vec!["1", "many"]),
                ("date", vec!["", ""]),
                ("sales", vec!["1", "2"]),
            ],
        );
        let e = Preprocessing::fit(&t, &regression()).unwrap_err().to_string();
        assert!(e.contains("b.csv: line 3, column \"listings\": \"many\" is not a number"), "{e}");
        let p = Preprocessing::fit(&bad, &regression()).unwrap();
        let t = RawTable::from_columns(
            "b.csv",
            vec![
                ("city", vec!["a"]),
                ("listings", vec!["1"]),
                ("date", vec!["2015-02-30"]),
                ("sales", vec!["1"]),
            ],
        );
        let e = p.transform(&t, "test").unwrap_err().to_string();
        assert!(e.contains("column \"date\": \"2015-02-30\" is not a date"), "{e}");
        let t = RawTable::from_columns(
            "b.csv",
            vec![("city", vec!["a"]), ("listings", vec!["1"]), ("date", vec![""]), ("sales", vec!["lots"])],
        );
        let e = p.transform(&t, "test").unwrap_err().to_string();
        assert!(e.contains("column \"sales\": \"lots\" is not a number"), "{e}");
        let t = RawTable::from_columns(
            "b.csv",
            vec![("city", vec!["a"]), ("listings", vec!["1"]), ("date", vec![""]), ("sales", vec!["0"])],
        );
        let e = p.transform(&t, "test").unwrap_err().to_string();
        assert!(e.contains("log target must be > 0") && e.contains("log_target = false"), "{e}");
    }

    #[test]
    fn rows_without_a_target_are_dropped_and_counted() {
        let t = RawTable::from_columns(
            "t.csv",
            vec![("y", vec!["1", "NA", "", "4"]), ("x", vec!["a", "b", "c", "d"])],
        );
        let (kept, dropped) =
            drop_missing_target(&t, &spec(r#"{"target": "y", "categorical": ["x"]}"#)).unwrap();
        assert_eq!(dropped, 2);
        assert_eq!(kept.column("x").unwrap(), ["a", "d"]);
        assert_eq!(kept.lines, [2, 5]);
    }

    #[test]
    fn classes_from_a_threshold_or_the_labels() {
        let t = RawTable::from_columns(
            "s.csv",
            vec![("profit", vec!["-3.5", "0", "12"]), ("mode", vec!["a", "b", "a"])],
        );
        let s = spec(
            r#"{"target": "profit", "kind": "classification", "threshold": 0.0, "categorical": ["mode"]}"#,
        );
        let p = Preprocessing::fit(&t, &s).unwrap();
        assert_eq!(p.outputs(), 2);
        assert_eq!(p.transform(&t, "train").unwrap().targets, Targets::Classes(vec![0, 0, 1]));
        let s = spec(r#"{"target": "mode", "kind": "classification", "categorical": ["profit"]}"#);
        let p = Preprocessing::fit(&t.select(&[0, 1]), &s).unwrap();
        assert_eq!(p.transform(&t.select(&[0, 1]), "train").unwrap().targets, Targets::Classes(vec![0, 1]));
        let extra = RawTable::from_columns("s.csv", vec![("profit", vec!["1"]), ("mode", vec!["c"])]);
        let e = p.transform(&extra, "test").unwrap_err().to_string();
        assert!(e.contains("the test split has class \"c\""), "{e}");
    }

    #[test]
    fn the_saved_preprocessing_repeats_exactly() {
        let all = houses();
        let p = Preprocessing::fit(&all.select(&[0, 1, 2, 3]), &regression()).unwrap();
        let back = Preprocessing::from_json(&p.to_json().unwrap()).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.transform(&all, "test").unwrap(), p.transform(&all, "test").unwrap());
        let e = Preprocessing::from_json(&p.to_json().unwrap().replace("\"format\": 1", "\"format\": 9"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("format 9"), "{e}");
    }
}
