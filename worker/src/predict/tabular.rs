//! `cyclotron predict` of a tabular run: CSV rows through the preprocessing the run fitted on its
//! training split (`tabular.json`, kept with each snapshot, so levels, medians, normalisation and
//! date parts are the training's exactly), each member's predictions averaged as the run's
//! ensemble averaged them: values on the target's scale (a regression) or class probabilities.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;

use cyclotron_core::spec::JobSpec;
use tch::{Device, Tensor};

use super::{blob, invalid, Member};
use crate::checkpoint::snapshot::SnapshotFiles;
use crate::data::tabular::preprocess::{Preprocessing, Table, TargetMap, Targets};
use crate::data::tabular::{is_missing, read_csv, read_header};
use crate::error::Result;
use crate::models::tabular::TabularModel;
use crate::task::image::SCRIPT_MODULE;
use crate::task::tabular::{builtin_net, script_net, TabularData, TabularTask, TABULAR_CARD};
use crate::tensor_io::from_safetensors;

/// A tabular run's model, ready to predict.
pub struct TabularPredictor {
    /// The preprocessing every member was trained with (they must agree).
    pub prep: Preprocessing,
    /// The first member's job spec.
    pub spec: JobSpec,
    pub members: Vec<Member>,
}

/// Rows of CSV files, as the model sees them.
pub struct TabularInputs {
    /// `FILE:LINE` of each row.
    pub names: Vec<String>,
    pub table: Table,
    /// The rows' targets, when every file has the target column and every row a value in it.
    pub targets: Option<Targets>,
    /// Rows without a target value in files that have the target column.
    pub without_target: usize,
}

impl TabularPredictor {
    pub(super) fn from_members(read: Vec<(SnapshotFiles, JobSpec)>) -> Result<TabularPredictor> {
        let mut members: Vec<Member> = vec![];
        let mut prep: Option<Preprocessing> = None;
        for (files, spec) in read {
            let text = std::str::from_utf8(blob(&files, TABULAR_CARD)?)
                .map_err(|e| invalid("predict", format!("{}/{TABULAR_CARD}: {e}", files.url)))?;
            let p = Preprocessing::from_json(text)?;
            match &prep {
                Some(first) if *first != p => {
                    return Err(invalid(
                        "predict",
                        format!(
                            "{} was fitted on other data than {} ({TABULAR_CARD} differs)",
                            files.url, members[0].url
                        ),
                    ))
                }
                Some(_) => {}
                None => prep = Some(p),
            }
            let weights = from_safetensors(blob(&files, "model.safetensors")?, &files.url)?;
            let module = match spec.model.torchscript {
                Some(_) => Some(blob(&files, SCRIPT_MODULE)?.to_vec()),
                None => None,
            };
            members.push(Member { url: files.url.clone(), spec, weights, module });
        }
        let Some(prep) = prep else {
            return Err(invalid("predict", "the run names no snapshot to predict with"));
        };
        let spec = members[0].spec.clone();
        Ok(TabularPredictor { prep, spec, members })
    }

    /// The classes of a classifier (`None` for a regression).
    pub fn classes(&self) -> Option<&[String]> {
        match &self.prep.target_map {
            TargetMap::Classes { classes, .. } => Some(classes),
            TargetMap::Values { .. } => None,
        }
    }

    /// Whether a regression's target was learned on a log scale (metrics then include RMSPE's peers).
    pub fn log_target(&self) -> bool {
        matches!(self.prep.target_map, TargetMap::Values { log: true })
    }

    /// The rows of the CSV files at `paths` (each with a header naming at least the model's input
    /// columns; other columns are ignored), preprocessed as in training. Levels the training split
    /// did not have become the unknown level (counted in [`Table::unseen`]); missing continuous
    /// values take the training median.
    pub fn load(&self, paths: &[PathBuf]) -> Result<TabularInputs> {
        if paths.is_empty() {
            return Err(invalid("predict", "no CSV file given"));
        }
        let inputs = self.prep.input_columns();
        let target = self.prep.target.clone();
        let mut names = vec![];
        let mut tables = vec![];
        let mut targets: Option<Vec<Targets>> = Some(vec![]);
        let mut without_target = 0;
        for path in paths {
            if path.is_dir() {
                return Err(invalid(
                    &path.display().to_string(),
                    "is a folder; a tabular model predicts the rows of CSV files",
                ));
            }
            let has_target = read_header(path)?.contains(&target);
            let mut wanted = inputs.clone();
            if has_target && !wanted.contains(&target) {
                wanted.push(target.clone());
            }
            let raw = read_csv(path, &wanted)?;
            names.extend(raw.lines.iter().map(|l| format!("{}:{l}", path.display())));
            tables.push(self.prep.features(&raw)?);
            let missing =
                if has_target { raw.column(&target)?.iter().filter(|v| is_missing(v)).count() } else { 0 };
            without_target += missing;
            targets = match (targets, has_target && missing == 0) {
                (Some(mut all), true) => {
                    all.push(self.prep.targets(&raw, "input")?);
                    Some(all)
                }
                _ => None,
            };
        }
        let table = concat(tables);
        let targets = targets.map(|all| match all.first() {
            Some(Targets::Classes(_)) => Targets::Classes(
                all.into_iter().flat_map(|t| if let Targets::Classes(v) = t { v } else { vec![] }).collect(),
            ),
            _ => Targets::Values(
                all.into_iter().flat_map(|t| if let Targets::Values(v) = t { v } else { vec![] }).collect(),
            ),
        });
        Ok(TabularInputs { names, table, targets, without_target })
    }

    /// Predictions of `table`'s rows (on the CPU): values `[N]` on the target's scale or
    /// probabilities `[N, classes]`, every member's averaged.
    pub fn predict(&self, table: &Table) -> Result<Tensor> {
        if table.is_empty() {
            return Err(invalid("predict", "the CSV files hold no rows"));
        }
        let abort = AtomicBool::new(false);
        let device = Device::cuda_if_available();
        let rows = Rc::new(table.clone());
        let mut outs = vec![];
        for m in &self.members {
            let net = match &m.module {
                Some(bytes) => script_net(bytes, &m.url, &m.spec, &self.prep, device)?,
                None => TabularModel::Builtin(Box::new(builtin_net(&m.spec, &self.prep, device)?)),
            };
            crate::predict::load_member(&net, &m.weights, &m.url, m.module.is_some())?;
            let data = TabularData {
                train: Rc::clone(&rows),
                valid: Rc::clone(&rows),
                test: None,
                batch_size: m.spec.data.batch_size,
            };
            let task = TabularTask::new(net, data, self.prep.clone(), m.spec.seed);
            outs.push(task.predictions(&rows, &abort)?);
        }
        let refs: Vec<&Tensor> = outs.iter().collect();
        Ok(crate::ensemble::average(&refs))
    }
}

/// The rows of `tables` one after another (same preprocessing, so the same columns).
fn concat(tables: Vec<Table>) -> Table {
    let mut it = tables.into_iter();
    let mut all = it.next().expect("one table at least");
    for t in it {
        all.rows += t.rows;
        all.cats.extend(t.cats);
        all.conts.extend(t.conts);
        all.unseen += t.unseen;
    }
    all
}
