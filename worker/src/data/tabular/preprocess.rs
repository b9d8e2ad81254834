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
        let mut t = self.features(table)?;
        t.targets = self.targets(table, split)?;
        Ok(t)
    }

    /// The columns the model's inputs are made of (`table` needs them, not the target).
    pub fn input_columns(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .categorical
            .iter()
            .map(|c| match &c.source {
                Source::Column => c.name.clone(),
                Source::MissingFlag { column } => column.clone(),
                Source::DatePart { date, .. } => date.clone(),
            })
            .chain(self.continuous.iter().map(|c| c.name.clone()))
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        names.retain(|n| seen.insert(n.clone()));
        names
    }

    /// The model's inputs of `table`'s rows, without targets (for prediction: the target column
    /// need not exist); [`Table::targets`] is empty.
    pub fn features(&self, table: &RawTable) -> Result<Table> {
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
        let targets = match self.target_map {
            TargetMap::Values { .. } => Targets::Values(vec![]),
            TargetMap::Classes { .. } => Targets::Classes(vec![]),
        };
        Ok(Table { rows, n_cat, n_cont, cats, conts, targets, unseen })
    }

    /// The targets of `table`'s rows (its target column, which must exist).
    pub fn targets(&self, table: &RawTable, split: &str) -> Result<Targets> {
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
#[path = "preprocess_tests.rs"]
mod tests;
