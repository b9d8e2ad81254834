//! Optimisers over layer groups: SGD with momentum (PyTorch's formulation) and AdamW (decoupled
//! weight decay). Written here rather than taken from tch so that (1) each layer group has its own
//! learning rate every step, (2) frozen parameters (no gradient) are skipped, and (3) the state
//! (momentum buffers, Adam moments, step count) can be checkpointed and restored exactly.

use cyclotron_core::spec::{OptimizerKind, OptimizerSpec};
use tch::Tensor;

/// One optimised tensor and its state.
struct Param {
    name: String,
    group: usize,
    tensor: Tensor,
    /// SGD momentum buffer, or Adam first moment.
    m: Option<Tensor>,
    /// Adam second moment.
    v: Option<Tensor>,
    /// Steps this parameter has been updated (Adam bias correction).
    t: i64,
}

/// Tensors by name (`<param>.m`, `<param>.v`).
pub type NamedTensors = Vec<(String, Tensor)>;
/// Update counts by parameter name.
pub type StepCounts = Vec<(String, i64)>;

pub struct Optimizer {
    spec: OptimizerSpec,
    params: Vec<Param>,
    /// Readers of the parameters or state still at work (a checkpoint's copy thread, see
    /// `checkpoint::state::hand_off`): each signals (or drops) its channel when done reading; the
    /// next update waits for them, never the current step.
    readers: Vec<std::sync::mpsc::Receiver<()>>,
    /// Total time updates waited for readers.
    reader_wait: std::time::Duration,
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Optimizer")
            .field("kind", &self.spec.kind)
            .field("params", &self.params.len())
            .finish()
    }
}

impl Optimizer {
    /// `params`: (name, layer group, tensor), for the trainable variables (float, requires_grad).
    pub fn new(spec: &OptimizerSpec, params: Vec<(String, usize, Tensor)>) -> Self {
        let params = params
            .into_iter()
            .filter(|(_, _, t)| t.is_floating_point())
            .map(|(name, group, tensor)| Param { name, group, tensor, m: None, v: None, t: 0 })
            .collect();
        Optimizer { spec: spec.clone(), params, readers: vec![], reader_wait: std::time::Duration::ZERO }
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.tensor.zero_grad();
        }
    }

    /// Register a reader of the parameters or state; the next [`Optimizer::step`] (which writes
    /// them) waits until it sends on, or drops, its end of the channel.
    pub fn add_reader(&mut self, reader: std::sync::mpsc::Receiver<()>) {
        self.readers.push(reader);
    }

    /// Wait for every registered reader (before anything writes the parameters).
    pub fn wait_for_readers(&mut self) {
        if self.readers.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        for r in self.readers.drain(..) {
            // Err: the reader is gone (finished or panicked): nothing reads any more either way
            let _ = r.recv();
        }
        self.reader_wait += started.elapsed();
    }

    /// Total time updates have waited for readers.
    pub fn reader_wait(&self) -> std::time::Duration {
        self.reader_wait
    }

    /// One update with `lrs[g]` for layer group `g`. Parameters without a gradient are left alone.
    pub fn step(&mut self, lrs: &[f64]) {
        self.wait_for_readers();
        let _guard = tch::no_grad_guard();
        let s = &self.spec;
        for p in &mut self.params {
            // frozen (requires_grad off) parameters keep their weights and state, even if an earlier
            // stage left a gradient behind
            if !p.tensor.requires_grad() {
                continue;
            }
            let grad = p.tensor.grad();
            if !grad.defined() {
                continue;
            }
            let lr = lrs[p.group.min(lrs.len() - 1)];
            p.t += 1;
            match s.kind {
                OptimizerKind::Sgd => sgd(p, &grad, lr, s),
                OptimizerKind::Adamw => adamw(p, &grad, lr, s),
            }
        }
    }

    /// State for a checkpoint: `<param>.m`, `<param>.v` tensors and `<param>.t` counts.
    pub fn state(&self) -> (NamedTensors, StepCounts) {
        let mut tensors = vec![];
        let mut counts = vec![];
        for p in &self.params {
            if let Some(m) = &p.m {
                tensors.push((format!("{}.m", p.name), m.shallow_clone()));
            }
            if let Some(v) = &p.v {
                tensors.push((format!("{}.v", p.name), v.shallow_clone()));
            }
            counts.push((p.name.clone(), p.t));
        }
        (tensors, counts)
    }

    /// Restore what [`Optimizer::state`] returned; unknown names are ignored.
    pub fn load_state(&mut self, tensors: &[(String, Tensor)], counts: &[(String, i64)]) {
        for p in &mut self.params {
            let find = |suffix: &str| {
                tensors.iter().find(|(n, _)| *n == format!("{}.{suffix}", p.name)).map(|(_, t)| t.copy())
            };
            p.m = find("m");
            p.v = find("v");
            p.t = counts.iter().find(|(n, _)| *n == p.name).map_or(0, |(_, c)| *c);
        }
    }
}

/// PyTorch SGD: d = g + wd·p; buf = μ·buf + d (buf = d at first); d = nesterov ? d + μ·buf : buf; p −= lr·d.
fn sgd(p: &mut Param, grad: &Tensor, lr: f64, s: &OptimizerSpec) {
    let mut d = if s.weight_decay != 0.0 { grad + &p.tensor * s.weight_decay } else { grad.shallow_clone() };
    if s.momentum != 0.0 {
        match &mut p.m {
            Some(buf) => {
                let _ = buf.g_mul_scalar_(s.momentum);
                let _ = buf.g_add_(&d);
            }
            None => p.m = Some(d.detach().copy()),
        }
        let buf = p.m.as_ref().expect("set above");
        d = if s.nesterov { d + buf * s.momentum } else { buf.shallow_clone() };
    }
    let _ = p.tensor.g_sub_(&(d * lr));
}

/// AdamW (Loshchilov & Hutter): p ·= 1 − lr·wd; Adam update with bias correction.
fn adamw(p: &mut Param, grad: &Tensor, lr: f64, s: &OptimizerSpec) {
    let [b1, b2] = s.betas;
    if s.weight_decay != 0.0 {
        let _ = p.tensor.g_mul_scalar_(1.0 - lr * s.weight_decay);
    }
    let m = p.m.get_or_insert_with(|| grad.zeros_like());
    let _ = m.g_mul_scalar_(b1);
    let _ = m.g_add_(&(grad * (1.0 - b1)));
    let v = p.v.get_or_insert_with(|| grad.zeros_like());
    let _ = v.g_mul_scalar_(b2);
    let _ = v.g_add_(&(grad * grad * (1.0 - b2)));
    let bc1 = 1.0 - b1.powi(p.t as i32);
    let bc2 = 1.0 - b2.powi(p.t as i32);
    let denom = v.sqrt() / bc2.sqrt() + s.eps;
    let _ = p.tensor.g_sub_(&(&*m / denom * (lr / bc1)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn param(values: &[f32]) -> Tensor {
        Tensor::from_slice(values).set_requires_grad(true)
    }

    fn spec(kind: OptimizerKind, momentum: f64, wd: f64) -> OptimizerSpec {
        OptimizerSpec { kind, momentum, weight_decay: wd, ..Default::default() }
    }

    /// Minimise ½‖p‖² (gradient = p) by hand and with the optimiser.
    #[test]
    fn sgd_matches_the_pytorch_recurrence() {
        let p = param(&[1.0, -2.0]);
        let mut opt =
            Optimizer::new(&spec(OptimizerKind::Sgd, 0.9, 0.1), vec![("p".into(), 0, p.shallow_clone())]);
        let (mut x, mut buf) = ([1.0f64, -2.0], [0.0f64; 2]);
        for step in 0..5 {
            opt.zero_grad();
            (&p * &p * 0.5).sum(Kind::Float).backward();
            opt.step(&[0.1]);
            for i in 0..2 {
                let d = x[i] + 0.1 * x[i];
                buf[i] = if step == 0 { d } else { 0.9 * buf[i] + d };
                x[i] -= 0.1 * buf[i];
            }
        }
        let got: Vec<f32> = Vec::try_from(&p.detach()).unwrap();
        assert!(
            (got[0] as f64 - x[0]).abs() < 1e-6 && (got[1] as f64 - x[1]).abs() < 1e-6,
            "{got:?} vs {x:?}"
        );
    }

    #[test]
    fn adamw_first_step_moves_each_weight_by_lr() {
        // with bias correction the first Adam step is lr·sign(g) (up to eps), plus decoupled decay
        let p = param(&[3.0, -0.5]);
        let mut opt =
            Optimizer::new(&spec(OptimizerKind::Adamw, 0.0, 0.0), vec![("p".into(), 0, p.shallow_clone())]);
        (&p * &p * 0.5).sum(Kind::Float).backward();
        opt.step(&[0.01]);
        let got: Vec<f32> = Vec::try_from(&p.detach()).unwrap();
        assert!((got[0] - 2.99).abs() < 1e-5 && (got[1] + 0.49).abs() < 1e-5, "{got:?}");
    }

    #[test]
    fn groups_get_their_own_lr_and_params_without_grad_are_skipped() {
        let a = param(&[1.0]);
        let b = param(&[1.0]);
        let frozen = param(&[1.0]);
        let mut opt = Optimizer::new(
            &spec(OptimizerKind::Sgd, 0.0, 0.0),
            vec![
                ("a".into(), 0, a.shallow_clone()),
                ("b".into(), 1, b.shallow_clone()),
                ("f".into(), 1, frozen.shallow_clone()),
            ],
        );
        (&a + &b).sum(Kind::Float).backward();
        opt.step(&[0.1, 0.3]);
        assert!((a.double_value(&[0]) - 0.9).abs() < 1e-6);
        assert!((b.double_value(&[0]) - 0.7).abs() < 1e-6);
        assert_eq!(frozen.double_value(&[0]), 1.0);
    }

    #[test]
    fn state_round_trips() {
        let p = param(&[1.0, 2.0]);
        let mut opt =
            Optimizer::new(&spec(OptimizerKind::Adamw, 0.0, 0.01), vec![("p".into(), 0, p.shallow_clone())]);
        (&p * &p).sum(Kind::Float).backward();
        opt.step(&[0.01]);
        let (tensors, counts) = opt.state();
        assert_eq!(tensors.len(), 2);
        let q = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut opt2 = Optimizer::new(&spec(OptimizerKind::Adamw, 0.0, 0.01), vec![("p".into(), 0, q)]);
        opt2.load_state(&tensors, &counts);
        let (t2, c2) = opt2.state();
        assert_eq!(c2, vec![("p".to_string(), 1)]);
        assert!(t2[0].1.allclose(&tensors[0].1, 0.0, 0.0, false));
    }
}
