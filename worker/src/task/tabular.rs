//! Tabular data with entity embeddings: rows of a CSV preprocessed as fitted on the training split
//! ([`Preprocessing`], saved with each snapshot as `tabular.json`), batches of categorical
//! indices and continuous values, a [`TabularNet`] (or the user's TorchScript module taking the same
//! two tensors, [`TabularModel::Script`]).
//!
//! A regression trains on the mean squared error of `ln(target)` (with `log_target`, the default;
//! else of the target itself); its predictions are on the target's own scale, `[N]`, an ensemble's
//! the mean of its members'; its metrics are that loss (so the RMSE of the log is `sqrt(loss)`) and
//! Rossmann's RMSPE, `sqrt(mean(((y - ŷ) / y)²))` over rows whose target is not 0. A classifier
//! trains on cross-entropy and predicts softmax probabilities `[N, classes]` (accuracy, NLL).

use std::rc::Rc;
use std::sync::atomic::AtomicBool;

use cyclotron_core::results::Metrics;
use tch::{Device, Kind, Tensor};

use super::{check_abort, classification_metrics, Batch, Batches, Shard, Split, Task};
use crate::data::rank_positions;
use crate::data::tabular::preprocess::{Preprocessing, Table, TargetMap, Targets};
use crate::error::{Error, Result};
use crate::models::tabular::{build_script, default_emb_size, TabularConfig, TabularModel, TabularNet};
use crate::models::Model;

/// Most values a tabular model's weights may hold (a quarter of a billion floats, 1 GiB): the
/// levels of the training split size its embeddings, so a CSV must not be able to ask for more.
pub const MAX_MODEL_VALUES: i64 = 1 << 28;

/// The snapshot blob holding the fitted [`Preprocessing`].
pub const TABULAR_CARD: &str = "tabular.json";

/// The splits of a tabular job, preprocessed.
pub struct TabularData {
    pub train: Rc<Table>,
    pub valid: Rc<Table>,
    pub test: Option<Rc<Table>>,
    pub batch_size: usize,
}

/// A tabular model and its data.
pub struct TabularTask {
    net: Rc<TabularModel>,
    data: TabularData,
    prep: Rc<Preprocessing>,
    seed: u64,
}

/// The model inputs of `rows` of `table`: categorical indices `[B, n_cat]`, continuous `[B, n_cont]`.
pub fn inputs(table: &Table, rows: &[usize]) -> (Tensor, Tensor) {
    let (nc, nx) = (table.n_cat, table.n_cont);
    let mut cats = Vec::with_capacity(rows.len() * nc);
    let mut conts = Vec::with_capacity(rows.len() * nx);
    for &r in rows {
        cats.extend_from_slice(&table.cats[r * nc..(r + 1) * nc]);
        conts.extend_from_slice(&table.conts[r * nx..(r + 1) * nx]);
    }
    let b = rows.len() as i64;
    (Tensor::from_slice(&cats).view([b, nc as i64]), Tensor::from_slice(&conts).view([b, nx as i64]))
}

/// The targets of `rows`: f32 values or i64 classes, `[B]`.
pub fn targets(table: &Table, rows: &[usize]) -> Tensor {
    match &table.targets {
        Targets::Values(v) => Tensor::from_slice(&rows.iter().map(|&r| v[r]).collect::<Vec<f32>>()),
        Targets::Classes(c) => Tensor::from_slice(&rows.iter().map(|&r| c[r]).collect::<Vec<i64>>()),
    }
}

/// Mean squared error of the logs (or of the values) and RMSPE of predictions `p` against `y`,
/// both `[N]` on the target's scale.
pub fn regression_metrics(p: &Tensor, y: &Tensor, log: bool) -> Metrics {
    let (p, y) = (p.to_kind(Kind::Double), y.to_kind(Kind::Double));
    let loss = if log {
        (p.clamp_min(1e-12).log() - y.log()).square().mean(Kind::Double).double_value(&[])
    } else {
        (&p - &y).square().mean(Kind::Double).double_value(&[])
    };
    let nonzero = y.ne(0.0);
    let pct = ((&y - &p) / y.where_scalarother(&nonzero, 1.0)).square().masked_select(&nonzero);
    let rmspe = if pct.numel() == 0 { f64::NAN } else { pct.mean(Kind::Double).sqrt().double_value(&[]) };
    Metrics::regression(loss, rmspe)
}

impl TabularTask {
    pub fn new(net: TabularModel, data: TabularData, prep: Preprocessing, seed: u64) -> Self {
        TabularTask { net: Rc::new(net), data, prep: Rc::new(prep), seed }
    }

    pub fn net(&self) -> &TabularModel {
        &self.net
    }

    pub fn preprocessing(&self) -> &Preprocessing {
        &self.prep
    }

    fn device(&self) -> Device {
        self.net.vs().device()
    }

    fn log_target(&self) -> bool {
        matches!(self.prep.target_map, TargetMap::Values { log: true })
    }

    fn is_regression(&self) -> bool {
        matches!(self.prep.target_map, TargetMap::Values { .. })
    }

    fn split(&self, split: Split) -> &Table {
        match split {
            Split::Train => &self.data.train,
            Split::Valid => &self.data.valid,
            Split::Eval => self.data.test.as_deref().unwrap_or(&self.data.valid),
        }
    }

    /// Predictions of `table`'s rows, in order, on the CPU: values `[N]` on the target's scale or
    /// probabilities `[N, classes]`.
    pub fn predictions(&self, table: &Table, abort: &AtomicBool) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        if table.is_empty() {
            return Err(Error::Invalid { what: "evaluation".into(), message: "the split is empty".into() });
        }
        let rows: Vec<usize> = (0..table.len()).collect();
        let mut parts = vec![];
        for chunk in rows.chunks(self.data.batch_size.max(1) * 4) {
            check_abort(abort)?;
            let (c, x) = inputs(table, chunk);
            let out = self.net.forward(&c.to_device(self.device()), &x.to_device(self.device()), false)?;
            let out = match (self.is_regression(), self.log_target()) {
                (true, true) => out.exp(),
                (true, false) => out,
                (false, _) => out.softmax(-1, Kind::Float),
            };
            parts.push(out.to_device(Device::Cpu));
        }
        Ok(Tensor::cat(&parts, 0))
    }
}

impl Task for TabularTask {
    fn model(&self) -> &dyn Model {
        &*self.net
    }

    fn steps_per_epoch(&self, world: usize) -> Result<u64> {
        let n = self.data.train.len() / (self.data.batch_size * world.max(1));
        if n == 0 {
            return Err(Error::Invalid {
                what: "data.batch_size".into(),
                message: format!(
                    "{} is larger than the training split ({} rows); lower batch_size",
                    self.data.batch_size,
                    self.data.train.len()
                ),
            });
        }
        Ok(n as u64)
    }

    fn train_batches(&self, epoch: u64, shard: Shard) -> Result<Batches> {
        let b = self.data.batch_size;
        let positions = rank_positions(self.data.train.len(), self.seed, epoch, shard.rank, shard.world, b);
        let table = Rc::clone(&self.data.train);
        let n = positions.len() / b.max(1);
        Ok(Box::new((0..n).map(move |k| {
            let rows = &positions[k * b..(k + 1) * b];
            let (c, x) = inputs(&table, rows);
            Batch { inputs: vec![c, x], target: targets(&table, rows), items: rows.len() as u64 }
        })))
    }

    fn loss(&mut self, batch: &Batch) -> Result<Tensor> {
        let device = self.device();
        let out =
            self.net.forward(&batch.inputs[0].to_device(device), &batch.inputs[1].to_device(device), true)?;
        let y = batch.target.to_device(device);
        Ok(match (self.is_regression(), self.log_target()) {
            (true, true) => out.mse_loss(&y.log(), tch::Reduction::Mean),
            (true, false) => out.mse_loss(&y, tch::Reduction::Mean),
            (false, _) => out.cross_entropy_for_logits(&y),
        })
    }

    fn predict(&self, split: Split, abort: &AtomicBool) -> Result<Tensor> {
        self.predictions(self.split(split), abort)
    }

    fn metrics(&self, predictions: &Tensor, split: Split) -> Metrics {
        let table = self.split(split);
        let all: Vec<usize> = (0..table.len()).collect();
        let y = targets(table, &all);
        if self.is_regression() {
            regression_metrics(predictions, &y, self.log_target())
        } else {
            classification_metrics(predictions, &y)
        }
    }

    fn eval_split(&self) -> &'static str {
        if self.data.test.is_some() {
            "test"
        } else {
            "valid"
        }
    }

    fn artifacts(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut files = vec![(TABULAR_CARD.into(), self.prep.to_json()?.into_bytes())];
        if let Some(module) = self.net.script_bytes()? {
            files.push((crate::task::image::SCRIPT_MODULE.into(), module));
        }
        Ok(files)
    }
}

/// RMSPE of predicting, for each row of `eval`, the training median of the target among rows with
/// the same level of the first categorical column (the overall median for a level not in
/// training): the trivial baseline a model must beat.
pub fn median_baseline_rmspe(train: &Table, eval: &Table) -> Option<f64> {
    let (Targets::Values(ty), Targets::Values(ey)) = (&train.targets, &eval.targets) else { return None };
    let median = |mut v: Vec<f32>| -> f32 {
        v.sort_by(f32::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let key = |t: &Table, r: usize| if t.n_cat == 0 { 0 } else { t.cats[r * t.n_cat] };
    let mut groups: std::collections::BTreeMap<i64, Vec<f32>> = Default::default();
    for (r, &y) in ty.iter().enumerate() {
        groups.entry(key(train, r)).or_default().push(y);
    }
    let overall = median(ty.clone());
    let medians: std::collections::BTreeMap<i64, f32> =
        groups.into_iter().map(|(k, v)| (k, median(v))).collect();
    let p: Vec<f32> =
        (0..eval.len()).map(|r| medians.get(&key(eval, r)).copied().unwrap_or(overall)).collect();
    regression_metrics(&Tensor::from_slice(&p), &Tensor::from_slice(ey), false).rmspe
}

/// The tabular task of `spec`: the CSV read, rows without a target dropped (counted in the log),
/// split, preprocessed as fitted on the training rows, the model from the job's seed.
pub fn build(
    spec: &cyclotron_core::spec::JobSpec,
    obs: &mut dyn crate::event::Observer,
) -> Result<TabularTask> {
    use crate::data::tabular::{preprocess, read_csv, split_rows, wanted_columns};
    let Some(t) = spec.data.tabular.clone() else {
        return Err(Error::Invalid {
            what: "data.tabular".into(),
            message: "required for source = \"tabular_csv\"".into(),
        });
    };
    let path = spec.data.resolved_path();
    let (prep, data) = crate::event::phase(obs, "loading data", || -> Result<_> {
        let raw = read_csv(std::path::Path::new(&path), &wanted_columns(&t))?;
        let (raw, dropped) = preprocess::drop_missing_target(&raw, &t)?;
        if dropped > 0 {
            tracing::info!(path = %path, dropped, target = %t.target, "rows without a target dropped");
        }
        let rows = split_rows(&raw, &t, &spec.data, spec.data.split_seed.unwrap_or(spec.seed))?;
        let limit = |mut v: Vec<usize>, n: Option<usize>| {
            v.truncate(n.unwrap_or(usize::MAX));
            v
        };
        let train_rows = limit(rows.train, spec.data.limit_train);
        let train_raw = raw.select(&train_rows);
        if train_raw.is_empty() || rows.valid.is_empty() {
            return Err(Error::Invalid {
                what: "data".into(),
                message: format!(
                    "{path}: the training split has {} rows and the validation split {}; both need some (check data.tabular's bounds or data.valid_pct)",
                    train_raw.len(),
                    rows.valid.len()
                ),
            });
        }
        let prep = preprocess::Preprocessing::fit(&train_raw, &t)?;
        let train = prep.transform(&train_raw, "training")?;
        let valid = prep.transform(&raw.select(&limit(rows.valid, spec.data.limit_eval)), "validation")?;
        let test = match rows.test {
            Some(r) if !r.is_empty() => {
                Some(prep.transform(&raw.select(&limit(r, spec.data.limit_eval)), "test")?)
            }
            Some(_) => {
                return Err(Error::Invalid {
                    what: "data.tabular.test_from".into(),
                    message: format!("{path}: no row is at or after test_from; lower it"),
                })
            }
            None => None,
        };
        let eval = test.as_ref().unwrap_or(&valid);
        tracing::info!(
            train = train.len(),
            valid = valid.len(),
            test = test.as_ref().map_or(0, |t| t.len()),
            categorical = train.n_cat,
            continuous = train.n_cont,
            unseen_levels_valid = valid.unseen,
            unseen_levels_test = test.as_ref().map_or(0, |t| t.unseen),
            baseline_rmspe = %median_baseline_rmspe(&train, eval).map_or("n/a".into(), |r| format!("{r:.4}")),
            "table loaded (levels unseen in training are index 0; baseline_rmspe: each row predicted by the training median of its first categorical column's level)"
        );
        Ok((prep, (train, valid, test)))
    })?;
    let (train, valid, test) = data;
    crate::runtime::set_threads(spec);
    tch::manual_seed(spec.seed as i64);
    let device = crate::runtime::device(spec)?;
    let net = net(spec, &prep, device)?;
    let log = matches!(prep.target_map, TargetMap::Values { log: true });
    if let (Targets::Values(ys), Some(net)) = (&train.targets, net.builtin()) {
        let mean = ys.iter().map(|&y| if log { f64::from(y).ln() } else { f64::from(y) }).sum::<f64>()
            / ys.len().max(1) as f64;
        net.set_output_bias(mean);
    }
    let data = TabularData {
        train: Rc::new(train),
        valid: Rc::new(valid),
        test: test.map(Rc::new),
        batch_size: spec.data.batch_size,
    };
    Ok(TabularTask::new(net, data, prep, spec.seed))
}

/// The model of `spec` for the fitted preprocessing `prep` on `device`: the user's TorchScript
/// module (`model.torchscript`, read from its file or store) or the built-in one ([`builtin_net`]).
pub fn net(
    spec: &cyclotron_core::spec::JobSpec,
    prep: &Preprocessing,
    device: Device,
) -> Result<TabularModel> {
    match &spec.model.torchscript {
        Some(url) => {
            let options = crate::runtime::store_options(spec);
            let bytes = crate::models::pretrained::read_model_file("model.torchscript", url, &options)?;
            script_net(&bytes, url, spec, prep, device)
        }
        None => builtin_net(spec, prep, device).map(|n| TabularModel::Builtin(Box::new(n))),
    }
}

/// The user's TorchScript module in `bytes` (`what` names them) for `prep`'s columns and outputs,
/// checked on rows holding each categorical column's first and last level.
pub fn script_net(
    bytes: &[u8],
    what: &str,
    spec: &cyclotron_core::spec::JobSpec,
    prep: &Preprocessing,
    device: Device,
) -> Result<TabularModel> {
    let levels: Vec<(String, i64)> =
        prep.categorical.iter().map(|c| (c.name.clone(), c.cardinality())).collect();
    let groups = spec.model.torchscript_groups.as_deref();
    build_script(bytes, what, groups, &levels, prep.continuous.len() as i64, prep.outputs(), device)
}

/// The model `spec.model.tabular` asks for, sized by the fitted preprocessing `prep` (embeddings
/// of the training levels), on `device`, initialised from torch's generator; refused when it would
/// hold more than [`MAX_MODEL_VALUES`] values.
pub fn builtin_net(
    spec: &cyclotron_core::spec::JobSpec,
    prep: &Preprocessing,
    device: Device,
) -> Result<TabularNet> {
    let m = spec.model.tabular.clone().unwrap_or_default();
    let embeddings: Vec<(i64, i64)> = prep
        .categorical
        .iter()
        .map(|c| {
            (
                c.cardinality(),
                m.emb_sizes.get(&c.name).copied().unwrap_or_else(|| default_emb_size(c.cardinality())),
            )
        })
        .collect();
    // the embeddings and the MLP's weight matrices, counted with checked arithmetic
    let input = |&(rows, w): &(i64, i64)| if m.one_hot { rows } else { w };
    let mut width =
        embeddings.iter().try_fold(prep.continuous.len() as i64, |acc, e| acc.checked_add(input(e)));
    let mut total = embeddings
        .iter()
        .filter(|_| !m.one_hot)
        .try_fold(0i64, |acc, &(rows, w)| acc.checked_add(rows.checked_mul(w)?));
    for &next in m.layers.iter().chain(std::iter::once(&prep.outputs())) {
        total = total.zip(width).and_then(|(t, w)| t.checked_add(w.checked_mul(next)?));
        width = Some(next);
    }
    if total.is_none_or(|t| t > MAX_MODEL_VALUES) {
        return Err(Error::Invalid {
            what: "model.tabular".into(),
            message: format!(
                "the model would hold more than {MAX_MODEL_VALUES} values ({} embeddings of the training levels, layers {:?}); use fewer levels, smaller emb_sizes or narrower layers",
                embeddings.len(),
                m.layers
            ),
        });
    }
    let log = matches!(prep.target_map, TargetMap::Values { log: true });
    let y_range = m.y_range.map(|[lo, hi]| if log { (lo.ln(), hi.ln()) } else { (lo, hi) });
    let cfg = TabularConfig {
        embeddings,
        n_cont: prep.continuous.len() as i64,
        layers: m.layers.iter().copied().zip(m.dropout.iter().copied()).collect(),
        emb_dropout: m.emb_dropout,
        outputs: prep.outputs(),
        y_range,
        one_hot: m.one_hot,
    };
    Ok(TabularNet::new(tch::nn::VarStore::new(device), cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tabular::preprocess::Preprocessing;
    use crate::data::tabular::RawTable;

    /// y = 10 · (3 if city b else 1) · (1 + x/10): learnable from one category and one number.
    fn task(n: usize) -> TabularTask {
        let cities = ["a", "b", "c"];
        let mut city = vec![];
        let mut x = vec![];
        let mut y = vec![];
        for i in 0..n {
            let c = cities[i % 3];
            let xi = (i % 7) as f64;
            city.push(c.to_string());
            x.push(xi.to_string());
            y.push((10.0 * if c == "b" { 3.0 } else { 1.0 } * (1.0 + xi / 10.0)).to_string());
        }
        fn refs(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        let raw =
            RawTable::from_columns("t.csv", vec![("city", refs(&city)), ("x", refs(&x)), ("y", refs(&y))]);
        let spec =
            serde_json::from_str(r#"{"target": "y", "categorical": ["city"], "continuous": ["x"]}"#).unwrap();
        let prep = Preprocessing::fit(&raw, &spec).unwrap();
        let table = Rc::new(prep.transform(&raw, "training").unwrap());
        tch::manual_seed(2);
        let cfg = TabularConfig {
            embeddings: vec![(4, 2)],
            n_cont: 1,
            layers: vec![(16, 0.0)],
            emb_dropout: 0.0,
            outputs: 1,
            y_range: None,
            one_hot: false,
        };
        let net = TabularNet::new(tch::nn::VarStore::new(Device::Cpu), cfg);
        net.set_output_bias((20f64).ln());
        let data =
            TabularData { train: Rc::clone(&table), valid: Rc::clone(&table), test: None, batch_size: 16 };
        TabularTask::new(TabularModel::Builtin(Box::new(net)), data, prep, 1)
    }

    #[test]
    fn rmspe_is_rossmanns_and_skips_zero_targets() {
        let y = Tensor::from_slice(&[100f32, 200.0, 0.0]);
        let p = Tensor::from_slice(&[110f32, 180.0, 5.0]);
        let m = regression_metrics(&p, &y, false);
        // ((100-110)/100)² = 0.01, ((200-180)/200)² = 0.01 → sqrt(0.01) = 0.1
        assert!((m.rmspe.unwrap() - 0.1).abs() < 1e-9, "{m:?}");
        let m = regression_metrics(
            &Tensor::from_slice(&[100f32, 200.0]),
            &Tensor::from_slice(&[100f32, 200.0]),
            true,
        );
        assert_eq!((m.loss, m.rmspe), (0.0, Some(0.0)));
        assert_eq!(m.headline().0, "rmspe");
    }

    #[test]
    fn batches_carry_indices_and_values_and_the_model_learns() {
        let t = task(192);
        let abort = AtomicBool::new(false);
        let p = t.predict(Split::Valid, &abort).unwrap();
        assert_eq!(p.size(), vec![192]);
        assert!(p.double_value(&[0]) > 0.0, "predictions are on the target's scale");
        let spec = cyclotron_core::spec::OptimizerSpec {
            kind: cyclotron_core::spec::OptimizerKind::Adamw,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut l = crate::learner::Learner::new(Box::new(t), &spec, 1);
        let before = l.evaluate(Split::Valid).unwrap();
        for epoch in 0..30 {
            for b in l.task.train_batches(epoch, Shard::ALONE).unwrap() {
                assert_eq!(b.inputs[0].kind(), Kind::Int64);
                assert_eq!(b.inputs[0].size(), vec![16, 1]);
                assert_eq!(b.inputs[1].size(), vec![16, 1]);
                l.step(&b, &[1e-2; crate::models::GROUPS]).unwrap();
            }
        }
        let after = l.evaluate(Split::Valid).unwrap();
        assert!(after.rmspe.unwrap() < 0.1 && after.rmspe < before.rmspe, "{before:?} -> {after:?}");
        let files = l.task.artifacts().unwrap();
        assert_eq!(files[0].0, "tabular.json");
        let back = Preprocessing::from_json(std::str::from_utf8(&files[0].1).unwrap()).unwrap();
        assert_eq!(back.categorical[0].levels, ["a", "b", "c"]);
    }

    #[test]
    fn a_job_builds_from_a_csv_and_a_model_too_large_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut csv = String::from("when,shop,y\n");
        for i in 0..40 {
            csv.push_str(&format!("{},{},{}\n", 2000 + i / 10, ["a", "b"][i % 2], 1 + i));
        }
        csv.push_str("2003,c,NA\n");
        let path = dir.path().join("t.csv");
        std::fs::write(&path, csv).unwrap();
        let toml = |layers: &str| {
            format!(
                "name = \"t\"\n[data]\nsource = \"tabular_csv\"\npath = {path:?}\nbatch_size = 4\n[data.tabular]\ntarget = \"y\"\ncategorical = [\"shop\"]\ntime_column = \"when\"\nvalid_from = \"2002\"\ntest_from = \"2003\"\n[model]\narch = \"entity_embeddings\"\n[model.tabular]\nlayers = {layers}\ndropout = [0.0, 0.0]\n[[stage]]\nlr = 0.01\nepochs = 1\n"
            )
        };
        let spec = cyclotron_core::spec::JobSpec::from_toml_str(&toml("[8, 4]"), "t").unwrap();
        spec.validate().unwrap();
        let t = build(&spec, &mut crate::event::Quiet).unwrap();
        assert_eq!((t.data.train.len(), t.data.valid.len(), t.eval_split()), (20, 10, "test"));
        assert_eq!(t.data.test.as_ref().unwrap().len(), 10, "the row without a target is dropped");
        assert_eq!(t.net().builtin().unwrap().config().embeddings, vec![(3, 2)], "shops a, b and index 0");
        let big = cyclotron_core::spec::JobSpec::from_toml_str(&toml("[16384, 16384]"), "t").unwrap();
        let e = build(&big, &mut crate::event::Quiet).err().expect("too large").to_string();
        assert!(e.contains("model.tabular: the model would hold more than"), "{e}");
    }

    #[test]
    fn the_baseline_predicts_each_levels_training_median() {
        let t = task(30);
        let r = median_baseline_rmspe(&t.data.train, &t.data.valid).unwrap();
        // within a city the target varies with x by up to ±30 %
        assert!(r > 0.05 && r < 0.4, "{r}");
    }
}
