//! `[data.tabular]` and `[model.tabular]`: the settings of tabular jobs (entity embeddings, Guo &
//! Berkhahn 2016): which CSV columns are categorical, continuous, dates and the target, how rows
//! are split, and the shape of the embeddings and the MLP.
//!
//! ```toml
//! [data]
//! source = "tabular_csv"
//! path = "~/.cache/cyclotron/data/tabular/txhousing.csv"
//! [data.tabular]
//! target = "sales"                     # regression on log(sales)
//! categorical = ["city", "year", "month"]
//! continuous = ["listings", "inventory"]
//! time_column = "date"                 # rows at/after test_from are the test split
//! valid_from = "2013"
//! test_from = "2014"
//! [model]
//! arch = "entity_embeddings"
//! [model.tabular]
//! layers = [200, 100]
//! emb_sizes = { city = 10 }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most columns in one role list, and most hidden layers: bounds on what a spec allocates.
pub const MAX_TABULAR_COLUMNS: usize = 1_000;
pub const MAX_TABULAR_LAYERS: usize = 8;

/// What the target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// A number, predicted on a log scale by default (`log_target`); metric RMSPE.
    #[default]
    Regression,
    /// A class (the column's text, or `> threshold` of a number); metric accuracy.
    Classification,
}

/// The names of the parts a date column becomes (fastai's `add_datepart`), each a categorical
/// column named `<column>_<part>`.
pub const DATE_PARTS: [&str; 6] = ["year", "month", "week", "dayofweek", "day", "is_month_end"];

/// Columns, their roles, and the split of a tabular CSV.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TabularSpec {
    /// The column to predict. Rows without a value are dropped (their count is logged).
    pub target: String,
    #[serde(default)]
    pub kind: TargetKind,
    /// Columns whose values are levels (any text); each gets an embedding. Index 0 is a level not
    /// seen in training, or a missing value.
    #[serde(default)]
    pub categorical: Vec<String>,
    /// Numeric columns, normalised by the training split's mean and standard deviation; a missing
    /// value takes the training median, and a column with missing training values gets a
    /// categorical `<column>_na` flag.
    #[serde(default)]
    pub continuous: Vec<String>,
    /// Continuous columns taken as `ln(1 + x)` before the rest (heavy-tailed counts such as
    /// listings; values must be > -1).
    #[serde(default)]
    pub log_continuous: Vec<String>,
    /// Date columns (`YYYY-MM-DD`, optionally followed by a time, or `YYYY/MM/DD`), each expanded
    /// into the categorical parts of [`DATE_PARTS`].
    #[serde(default)]
    pub dates: Vec<String>,
    /// Classification of a numeric target: class 1 (`"> threshold"`) when the value is above it,
    /// else class 0 (`"<= threshold"`).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Classification: the classes in index order (rows with another label are an error).
    /// Default: every label of the training split, sorted.
    #[serde(default)]
    pub classes: Option<Vec<String>>,
    /// Regression on `ln(target)` (targets must be > 0), as Rossmann's winners did.
    #[serde(default = "default_true")]
    pub log_target: bool,
    /// Split by time: the column whose value (a number, or a date as in `dates`) orders the rows.
    /// Rows at/after `test_from` are the test split, rows at/after `valid_from` (and before
    /// `test_from`) the validation split; without `valid_from` the validation split is carved
    /// from the training rows by `data.valid_pct`. Without `time_column` the rows are split by
    /// `data.valid_pct`, `data.test_pct` and `data.split_seed`.
    #[serde(default)]
    pub time_column: Option<String>,
    #[serde(default)]
    pub valid_from: Option<String>,
    #[serde(default)]
    pub test_from: Option<String>,
}

fn default_true() -> bool {
    true
}

/// The entity-embedding model (`arch = "entity_embeddings"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TabularModelSpec {
    /// Widths of the MLP's hidden layers (each linear, ReLU, BatchNorm, dropout).
    #[serde(default = "default_layers")]
    pub layers: Vec<i64>,
    /// Dropout after each hidden layer (as many as `layers`).
    #[serde(default = "default_dropout")]
    pub dropout: Vec<f64>,
    /// Dropout of the concatenated embeddings.
    #[serde(default = "default_emb_dropout")]
    pub emb_dropout: f64,
    /// Embedding widths by column (a categorical column, a date part `<date>_<part>` or a flag
    /// `<column>_na`); default `min(50, (levels + 1) / 2)`.
    #[serde(default)]
    pub emb_sizes: BTreeMap<String, i64>,
    /// Regression: predictions are squashed into `[low, high]` (target units) by a scaled sigmoid
    /// (on the log scale with `log_target`).
    #[serde(default)]
    pub y_range: Option<[f64; 2]>,
    /// Feed each categorical column to the MLP as a one-hot vector instead of an embedding (the
    /// comparison Guo & Berkhahn make; `emb_sizes` and `emb_dropout` are then unused, and layer
    /// group 0 is empty).
    #[serde(default)]
    pub one_hot: bool,
}

fn default_layers() -> Vec<i64> {
    vec![200, 100]
}
fn default_dropout() -> Vec<f64> {
    vec![0.001, 0.01]
}
fn default_emb_dropout() -> f64 {
    0.04
}

impl Default for TabularModelSpec {
    fn default() -> Self {
        TabularModelSpec {
            layers: default_layers(),
            dropout: default_dropout(),
            emb_dropout: default_emb_dropout(),
            emb_sizes: BTreeMap::new(),
            y_range: None,
            one_hot: false,
        }
    }
}

impl TabularSpec {
    /// Every feature column name the model sees as categorical before fitting: the categorical
    /// columns, then each date's parts (flags of missing values are added when fitted).
    pub fn categorical_names(&self) -> Vec<String> {
        let mut names = self.categorical.clone();
        for d in &self.dates {
            names.extend(DATE_PARTS.iter().map(|p| format!("{d}_{p}")));
        }
        names
    }

    /// Every problem, each naming its field.
    pub fn problems(&self, model: Option<&TabularModelSpec>, test_pct: Option<f64>) -> Vec<String> {
        let mut p = vec![];
        let at = "data.tabular";
        if self.target.trim().is_empty() {
            p.push(format!("{at}.target: name the column to predict"));
        }
        let lists =
            [("categorical", &self.categorical), ("continuous", &self.continuous), ("dates", &self.dates)];
        for (name, list) in lists {
            if list.len() > MAX_TABULAR_COLUMNS {
                p.push(format!("{at}.{name}: at most {MAX_TABULAR_COLUMNS} columns, got {}", list.len()));
            }
        }
        if lists.iter().all(|(_, l)| l.is_empty()) {
            p.push(format!("{at}: no feature columns; list some in categorical, continuous or dates"));
        }
        // each column in one role at most
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        seen.insert(self.target.as_str(), "target");
        for (role, list) in lists {
            for c in list.iter() {
                if let Some(prev) = seen.insert(c.as_str(), role) {
                    p.push(format!(
                        "{at}.{role}: column {c:?} is already the {prev}{}; give each column one role",
                        if prev == "target" { "" } else { " list's" }
                    ));
                }
            }
        }
        for c in &self.log_continuous {
            if !self.continuous.contains(c) {
                p.push(format!("{at}.log_continuous: {c:?} is not in continuous; list it there too"));
            }
        }
        match self.kind {
            TargetKind::Regression => {
                if self.threshold.is_some() || self.classes.is_some() {
                    p.push(format!(
                        "{at}.threshold / classes: only for kind = \"classification\"; remove them or set kind"
                    ));
                }
            }
            TargetKind::Classification => {
                if self.threshold.is_some() && self.classes.is_some() {
                    p.push(format!(
                        "{at}.classes: a threshold makes the classes (\"<= t\", \"> t\"); remove classes"
                    ));
                }
                if self.threshold.is_some_and(|t| !t.is_finite()) {
                    p.push(format!("{at}.threshold: must be a finite number"));
                }
                if self.classes.as_ref().is_some_and(|c| c.len() < 2) {
                    p.push(format!("{at}.classes: list at least two classes"));
                }
            }
        }
        match &self.time_column {
            None if self.valid_from.is_some() || self.test_from.is_some() => p.push(format!(
                "{at}.valid_from / test_from: split by time needs time_column (the column they compare with)"
            )),
            Some(_) if self.valid_from.is_none() && self.test_from.is_none() => p.push(format!(
                "{at}.time_column: set test_from (and valid_from) to split by time, or remove time_column to split by seed"
            )),
            Some(_) if test_pct.is_some() => p.push(
                "data.test_pct: not with a split by time (data.tabular.test_from gives the test split); remove it"
                    .into(),
            ),
            _ => {}
        }
        if let Some(m) = model {
            p.extend(m.problems(self));
        }
        p
    }
}

impl TabularModelSpec {
    /// Every problem, each naming its field.
    pub fn problems(&self, data: &TabularSpec) -> Vec<String> {
        let mut p = vec![];
        let at = "model.tabular";
        if self.layers.is_empty() || self.layers.len() > MAX_TABULAR_LAYERS {
            p.push(format!(
                "{at}.layers: between 1 and {MAX_TABULAR_LAYERS} hidden layers, got {}",
                self.layers.len()
            ));
        }
        if let Some(w) = self.layers.iter().find(|w| !(1..=16_384).contains(*w)) {
            p.push(format!("{at}.layers: each width must be in 1..=16384, got {w}"));
        }
        if self.dropout.len() != self.layers.len() {
            p.push(format!(
                "{at}.dropout: one value per hidden layer: layers has {}, dropout {}",
                self.layers.len(),
                self.dropout.len()
            ));
        }
        for (name, v) in self
            .dropout
            .iter()
            .map(|v| ("dropout", *v))
            .chain(std::iter::once(("emb_dropout", self.emb_dropout)))
        {
            if !(0.0..1.0).contains(&v) {
                p.push(format!("{at}.{name}: must be in [0, 1), got {v}"));
            }
        }
        if self.emb_sizes.len() > MAX_TABULAR_COLUMNS * DATE_PARTS.len() {
            p.push(format!("{at}.emb_sizes: too many entries ({})", self.emb_sizes.len()));
            return p;
        }
        let cats = data.categorical_names();
        for (col, &size) in &self.emb_sizes {
            let is_flag = col.strip_suffix("_na").is_some_and(|c| data.continuous.iter().any(|x| x == c));
            if !cats.contains(col) && !is_flag {
                p.push(format!(
                    "{at}.emb_sizes: {col:?} is not a categorical column, a date part (<date>_{}) or a missing-value flag (<continuous>_na)",
                    DATE_PARTS.join("|")
                ));
            }
            if !(1..=1024).contains(&size) {
                p.push(format!("{at}.emb_sizes.{col}: must be in 1..=1024, got {size}"));
            }
        }
        if let Some([lo, hi]) = self.y_range {
            if data.kind != TargetKind::Regression {
                p.push(format!("{at}.y_range: only for a regression; remove it"));
            } else if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                p.push(format!("{at}.y_range: need low < high, got [{lo}, {hi}]"));
            } else if data.log_target && lo <= 0.0 {
                p.push(format!(
                    "{at}.y_range: with a log target the range must be above 0, got low = {lo}; raise it or set data.tabular.log_target = false"
                ));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TabularSpec {
        TabularSpec {
            target: "sales".into(),
            kind: TargetKind::Regression,
            categorical: vec!["city".into(), "month".into()],
            continuous: vec!["listings".into()],
            log_continuous: vec!["listings".into()],
            dates: vec![],
            threshold: None,
            classes: None,
            log_target: true,
            time_column: Some("date".into()),
            valid_from: Some("2013".into()),
            test_from: Some("2014".into()),
        }
    }

    #[test]
    fn a_good_spec_has_no_problems() {
        assert_eq!(spec().problems(Some(&TabularModelSpec::default()), None), Vec::<String>::new());
    }

    #[test]
    fn problems_name_the_setting_and_what_to_do() {
        let mut s = spec();
        s.continuous.push("city".into());
        s.log_continuous.push("rain".into());
        s.time_column = None;
        s.threshold = Some(0.0);
        let m = TabularModelSpec {
            layers: vec![10],
            dropout: vec![0.1, 0.2],
            emb_sizes: [("town".to_string(), 4), ("month".to_string(), 0)].into(),
            y_range: Some([-1.0, 5.0]),
            ..Default::default()
        };
        let p = s.problems(Some(&m), None);
        let all = p.join("\n");
        for want in [
            "data.tabular.continuous: column \"city\" is already the categorical list's",
            "data.tabular.valid_from / test_from: split by time needs time_column",
            "data.tabular.threshold / classes: only for kind = \"classification\"",
            "data.tabular.log_continuous: \"rain\" is not in continuous",
            "model.tabular.dropout: one value per hidden layer: layers has 1, dropout 2",
            "model.tabular.emb_sizes: \"town\" is not a categorical column",
            "model.tabular.emb_sizes.month: must be in 1..=1024, got 0",
            "model.tabular.y_range: with a log target the range must be above 0",
        ] {
            assert!(all.contains(want), "missing {want:?} in\n{all}");
        }
        let mut s = spec();
        s.categorical.clear();
        s.continuous.clear();
        s.valid_from = None;
        s.test_from = None;
        let all = s.problems(None, Some(0.1)).join("\n");
        assert!(all.contains("no feature columns"), "{all}");
        assert!(all.contains("data.tabular.time_column: set test_from"), "{all}");
    }

    #[test]
    fn date_parts_and_flags_can_be_given_sizes() {
        let mut s = spec();
        s.dates = vec!["Date".into()];
        let m = TabularModelSpec {
            emb_sizes: [("Date_dayofweek".to_string(), 3), ("listings_na".to_string(), 2)].into(),
            ..Default::default()
        };
        assert_eq!(s.problems(Some(&m), None), Vec::<String>::new());
    }
}
