//! The optimiser as it was before flat buffers (one tensor at a time, several tensor ops each),
//! kept verbatim as the oracle of the tests: the flat-buffer optimiser must give the same
//! parameters, and the same checkpoint state, after any number of steps.

use cyclotron_core::spec::{OptimizerKind, OptimizerSpec};
use tch::Tensor;

use super::{NamedTensors, StepCounts};

struct Param {
    name: String,
    group: usize,
    tensor: Tensor,
    m: Option<Tensor>,
    v: Option<Tensor>,
    t: i64,
}

pub(super) struct Reference {
    spec: OptimizerSpec,
    params: Vec<Param>,
}

impl Reference {
    pub(super) fn new(spec: &OptimizerSpec, params: Vec<(String, usize, Tensor)>) -> Self {
        let params = params
            .into_iter()
            .filter(|(_, _, t)| t.is_floating_point())
            .map(|(name, group, tensor)| Param { name, group, tensor, m: None, v: None, t: 0 })
            .collect();
        Reference { spec: spec.clone(), params }
    }

    pub(super) fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.tensor.zero_grad();
        }
    }

    pub(super) fn step(&mut self, lrs: &[f64]) {
        let _guard = tch::no_grad_guard();
        let s = &self.spec;
        for p in &mut self.params {
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

    pub(super) fn state(&self) -> (NamedTensors, StepCounts) {
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
}

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
