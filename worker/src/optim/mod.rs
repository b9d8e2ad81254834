//! Optimisers over layer groups: SGD with momentum (PyTorch's formulation) and AdamW (decoupled
//! weight decay). Written here rather than taken from tch so that (1) each layer group has its own
//! learning rate every step, (2) frozen parameters (no gradient) are skipped, and (3) the state
//! (momentum buffers, Adam moments, step count) can be checkpointed and restored exactly.
//!
//! **Flat buffers.** Each layer group's parameters, and their momentum / Adam state, live as views
//! into one contiguous buffer per group and dtype ([`flat`]). On the CPU one fused loop updates
//! every parameter, reading each weight, gradient and state element once ([`kernel::fused`]); on
//! other devices an update is a handful of tensor ops per group ([`kernel::tensor_ops`]). The
//! arithmetic is the per-tensor optimiser's, operation by operation, and checkpoints keep its
//! names and format: `<param>.m`, `<param>.v` tensors and a step count per parameter.
//!
//! **Gradients** ([`GradLayout`]): on the CPU they are released by [`Optimizer::zero_grad`], as
//! PyTorch's `zero_grad(set_to_none=True)`, so backward hands each parameter the gradient it just
//! computed (no zeroing, no accumulation pass) and the fused loop reads it where it is. Elsewhere
//! they are views into a flat gradient buffer per group, which backward accumulates into and
//! `zero_grad` zeroes with one call per group.

mod flat;
mod kernel;
#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;

use cyclotron_core::spec::{OptimizerKind, OptimizerSpec};
use tch::Tensor;

use flat::{Buffer, Part, Slot};
use kernel::Coeffs;

/// One optimised tensor: its name, group, update count and place in the flat buffers.
struct Param {
    name: String,
    group: usize,
    tensor: Tensor,
    /// Steps this parameter has been updated (Adam bias correction).
    t: i64,
    slot: Slot,
}

/// Tensors by name (`<param>.m`, `<param>.v`).
pub type NamedTensors = Vec<(String, Tensor)>;
/// Update counts by parameter name.
pub type StepCounts = Vec<(String, i64)>;

/// Where gradients live between backward and the update (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradLayout {
    /// Views into one flat gradient buffer per group: backward accumulates into them in place.
    Flat,
    /// Released at `zero_grad` (PyTorch's `set_to_none`): backward sets each one afresh.
    Released,
}

impl GradLayout {
    /// `Released` when every parameter is an `f32` CPU tensor (the fused loops read gradients
    /// wherever they are), else `Flat` (tensor ops on runs of a flat buffer need flat gradients).
    /// `CYCLOTRON_OPTIM_GRADS=flat` forces `Flat` (for benchmarks).
    fn default_for(params: &[Param]) -> GradLayout {
        let forced = std::env::var("CYCLOTRON_OPTIM_GRADS").is_ok_and(|v| v == "flat");
        let cpu_f32 = params
            .iter()
            .all(|p| p.tensor.device() == tch::Device::Cpu && p.tensor.kind() == tch::Kind::Float);
        if cpu_f32 && !forced {
            GradLayout::Released
        } else {
            GradLayout::Flat
        }
    }
}

pub struct Optimizer {
    spec: OptimizerSpec,
    params: Vec<Param>,
    buffers: Vec<Buffer>,
    grads: GradLayout,
    /// Releases every parameter's gradient (libtorch's `zero_grad`, which sets them to none).
    releaser: Option<tch::COptimizer>,
    /// Update CPU `f32` buffers with tensor ops too (tests run the GPU path on the CPU this way).
    tensor_ops_only: bool,
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
            .field("buffers", &self.buffers.len())
            .field("grads", &self.grads)
            .finish()
    }
}

impl Optimizer {
    /// `params`: (name, layer group, tensor), for the trainable variables (float, requires_grad).
    /// Nothing moves until the first update or [`Optimizer::load_state`]: then the parameters
    /// become views into the flat buffers, keeping their values.
    pub fn new(spec: &OptimizerSpec, params: Vec<(String, usize, Tensor)>) -> Self {
        let params: Vec<(String, usize, Tensor)> =
            params.into_iter().filter(|(_, _, t)| t.is_floating_point()).collect();
        let (buffers, slots) = flat::layout(&params.iter().map(|(_, g, t)| (*g, t)).collect::<Vec<_>>());
        let params: Vec<Param> = params
            .into_iter()
            .zip(slots)
            .map(|((name, group, tensor), slot)| Param { name, group, tensor, t: 0, slot })
            .collect();
        let grads = GradLayout::default_for(&params);
        Optimizer {
            spec: spec.clone(),
            params,
            buffers,
            grads,
            releaser: None,
            tensor_ops_only: false,
            readers: vec![],
            reader_wait: std::time::Duration::ZERO,
        }
    }

    /// The same, with gradients kept as `grads` says.
    pub fn with_grad_layout(
        spec: &OptimizerSpec,
        params: Vec<(String, usize, Tensor)>,
        grads: GradLayout,
    ) -> Self {
        let mut opt = Optimizer::new(spec, params);
        let cpu_f32 = opt.buffers.iter().all(Buffer::cpu_f32);
        opt.grads = if cpu_f32 { grads } else { GradLayout::Flat };
        opt
    }

    pub fn grad_layout(&self) -> GradLayout {
        self.grads
    }

    /// Update with tensor ops even on the CPU (with flat gradients, as on a GPU), for tests.
    #[cfg(test)]
    fn tensor_ops_only(mut self) -> Self {
        self.tensor_ops_only = true;
        self.grads = GradLayout::Flat;
        self
    }

    /// Clear every gradient before the next backward: release them, or zero the flat buffers.
    pub fn zero_grad(&mut self) {
        if self.grads == GradLayout::Released {
            if self.releaser.is_none() {
                self.releaser = self.build_releaser();
            }
            if self.releaser.as_ref().is_some_and(|r| r.zero_grad().is_ok()) {
                return;
            }
        }
        for b in &mut self.buffers {
            if let Some(g) = &mut b.g {
                let _ = g.zero_();
            }
        }
        for p in &mut self.params {
            let grad = p.tensor.grad();
            if !grad.defined() {
                continue;
            }
            let in_buffer =
                self.buffers[p.slot.buf].g.as_ref().is_some_and(|g| flat::attached(&grad, g, &p.slot));
            if !in_buffer {
                p.tensor.zero_grad();
            }
        }
    }

    /// A libtorch optimiser over the same tensors, used only for its `zero_grad`.
    fn build_releaser(&self) -> Option<tch::COptimizer> {
        let mut r = tch::COptimizer::sgd(0.0, 0.0, 0.0, 0.0, false).ok()?;
        for p in &self.params {
            r.add_parameters(&p.tensor, 0).ok()?;
        }
        Some(r)
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

    /// Allocate the parameter (and, for flat gradients, gradient) buffers on first use, and put
    /// every parameter in its slot: at first, and again after something gave it other storage.
    /// Call without gradient recording, after [`Optimizer::wait_for_readers`].
    fn attach_params(&mut self) {
        for b in &mut self.buffers {
            if b.p.is_none() {
                b.p = Some(b.zeros());
            }
            if self.grads == GradLayout::Flat && b.g.is_none() {
                b.g = Some(b.zeros());
            }
        }
        for p in &mut self.params {
            let Some(flat) = &self.buffers[p.slot.buf].p else { continue };
            if !flat::attached(&p.tensor, flat, &p.slot) {
                flat::attach(&mut p.tensor, flat, &p.slot);
            }
        }
    }

    /// One update with `lrs[g]` for layer group `g`. Parameters without a gradient are left alone.
    pub fn step(&mut self, lrs: &[f64]) {
        self.wait_for_readers();
        let _guard = tch::no_grad_guard();
        self.attach_params();
        // frozen (requires_grad off) parameters keep their weights and state, even if an earlier
        // stage left a gradient behind
        let mut active: Vec<(usize, Tensor)> = Vec::with_capacity(self.params.len());
        for (i, p) in self.params.iter_mut().enumerate() {
            if !p.tensor.requires_grad() {
                continue;
            }
            let mut grad = p.tensor.grad();
            if !grad.defined() {
                continue;
            }
            if let Some(g) = &self.buffers[p.slot.buf].g {
                if !flat::attached(&grad, g, &p.slot) {
                    flat::attach(&mut grad, g, &p.slot);
                }
            }
            p.t += 1;
            active.push((i, grad));
        }
        let s = &self.spec;
        let (with_m, with_v) = match s.kind {
            OptimizerKind::Sgd => (s.momentum != 0.0, false),
            OptimizerKind::Adamw => (true, true),
        };
        for &(i, _) in &active {
            let b = &mut self.buffers[self.params[i].slot.buf];
            if with_m {
                b.state(Part::M);
            }
            if with_v {
                b.state(Part::V);
            }
        }
        let lr_of = |group: usize| lrs[group.min(lrs.len() - 1)];
        let (fused, by_ops): (Vec<_>, Vec<_>) = active
            .into_iter()
            .partition(|(i, _)| !self.tensor_ops_only && self.buffers[self.params[*i].slot.buf].cpu_f32());
        self.update_fused(fused, &lr_of);
        self.update_by_ops(by_ops, &lr_of);
    }

    /// The CPU `f32` parameters of `active`, with their gradients, in one fused pass.
    fn update_fused(&self, active: Vec<(usize, Tensor)>, lr_of: &dyn Fn(usize) -> f64) {
        if active.is_empty() {
            return;
        }
        // the gradients as dense tensors in their parameter's memory order (NCHW, or NHWC for a
        // channels-last weight), alive while the slices into them are
        let grads: Vec<Tensor> =
            active.iter().map(|(i, g)| flat::dense_in_slot_order(g, &self.params[*i].slot)).collect();
        let mut items = Vec::with_capacity(active.len());
        for ((i, _), grad) in active.iter().zip(&grads) {
            let p = &self.params[*i];
            let b = &self.buffers[p.slot.buf];
            let n = p.slot.numel as usize;
            let c = Coeffs::new(&self.spec, lr_of(p.group), p.t);
            let Some(flat_p) = &b.p else { continue };
            // SAFETY: `flat_p`, `b.m` and `b.v` are contiguous f32 CPU buffers owned by this
            // optimiser, alive for this call; slot `p.slot` lies inside each, and slots of different
            // parameters do not overlap, so no two slices alias. `grad` is the parameter's own
            // dense f32 CPU gradient of `n` elements in the slot's order, held in `grads`, which no other slice
            // covers. Nothing else runs on these tensors during the update (no autograd, readers
            // waited for).
            #[allow(unsafe_code)]
            let item = unsafe {
                kernel::Item {
                    p: slot_mut(flat_p, &p.slot),
                    g: std::slice::from_raw_parts(grad.data_ptr() as *const f32, n),
                    m: b.m.as_ref().map_or_else(Default::default, |m| slot_mut(m, &p.slot)),
                    v: b.v.as_ref().map_or_else(Default::default, |v| slot_mut(v, &p.slot)),
                    c,
                }
            };
            debug_assert_eq!(grad.numel(), n);
            items.push(item);
        }
        kernel::fused(items, tch::get_num_threads().max(1) as usize);
    }

    /// The other parameters of `active` by tensor ops, one call per run of consecutive
    /// parameters of a buffer that share an update count.
    fn update_by_ops(&mut self, active: Vec<(usize, Tensor)>, lr_of: &dyn Fn(usize) -> f64) {
        let mut is_active = vec![false; self.params.len()];
        for (i, _) in &active {
            is_active[*i] = true;
        }
        for b in &mut self.buffers {
            let mut k = 0;
            while k < b.members.len() {
                let first = b.members[k];
                if !is_active[first] {
                    k += 1;
                    continue;
                }
                let t = self.params[first].t;
                let mut end = k + 1;
                while end < b.members.len() && is_active[b.members[end]] && self.params[b.members[end]].t == t
                {
                    end += 1;
                }
                let (from, last) = (&self.params[first].slot, &self.params[b.members[end - 1]].slot);
                let (off, len) = (from.off, last.off + last.numel - from.off);
                let run = |t: &Option<Tensor>| t.as_ref().map(|t| t.narrow(0, off, len));
                let (Some(mut p), Some(g)) = (run(&b.p), run(&b.g)) else { break };
                let (mut m, mut v) = (run(&b.m), run(&b.v));
                let c = Coeffs::new(&self.spec, lr_of(b.group), t);
                kernel::tensor_ops(&mut p, &g, m.as_mut(), v.as_mut(), &c);
                k = end;
            }
        }
    }

    /// State for a checkpoint: `<param>.m`, `<param>.v` tensors and `<param>.t` counts. The
    /// tensors are views of the optimiser's buffers: copy them before the next update.
    pub fn state(&self) -> (NamedTensors, StepCounts) {
        let mut tensors = vec![];
        let mut counts = vec![];
        let keeps_m = self.spec.kind == OptimizerKind::Adamw || self.spec.momentum != 0.0;
        for p in &self.params {
            let b = &self.buffers[p.slot.buf];
            if p.t > 0 && keeps_m {
                if let Some(m) = &b.m {
                    tensors.push((format!("{}.m", p.name), flat::view(m, &p.slot)));
                }
            }
            if p.t > 0 {
                if let Some(v) = &b.v {
                    tensors.push((format!("{}.v", p.name), flat::view(v, &p.slot)));
                }
            }
            counts.push((p.name.clone(), p.t));
        }
        (tensors, counts)
    }

    /// Restore what [`Optimizer::state`] returned; unknown names are ignored, and a parameter
    /// without saved state starts afresh.
    pub fn load_state(&mut self, tensors: &[(String, Tensor)], counts: &[(String, i64)]) {
        self.wait_for_readers();
        let _guard = tch::no_grad_guard();
        self.attach_params();
        for p in &mut self.params {
            p.t = counts.iter().find(|(n, _)| *n == p.name).map_or(0, |(_, c)| *c);
            let b = &mut self.buffers[p.slot.buf];
            for (suffix, part) in [("m", Part::M), ("v", Part::V)] {
                let key = format!("{}.{suffix}", p.name);
                let saved = tensors.iter().find(|(n, _)| *n == key).map(|(_, t)| t);
                let mut slot = match (saved, part) {
                    (Some(_), _) => flat::view(b.state(part), &p.slot),
                    (None, Part::M) => match &b.m {
                        Some(m) => flat::view(m, &p.slot),
                        None => continue,
                    },
                    (None, Part::V) => match &b.v {
                        Some(v) => flat::view(v, &p.slot),
                        None => continue,
                    },
                };
                let restored = match saved {
                    Some(t) => slot.f_copy_(t).map_err(|e| e.to_string()),
                    None => slot.f_zero_().map(|_| ()).map_err(|e| e.to_string()),
                };
                if let Err(e) = restored {
                    tracing::warn!(param = %p.name, "optimiser state {key} not restored, starting afresh: {e}");
                    let _ = slot.f_zero_();
                }
            }
        }
    }
}

/// The `f32` elements of `slot` in `flat`.
///
/// # Safety
/// `flat` is a contiguous f32 CPU tensor that holds `slot`, alive while the slice is; no other
/// reference to those elements exists while it is.
#[allow(unsafe_code)]
unsafe fn slot_mut<'a>(flat: &Tensor, slot: &Slot) -> &'a mut [f32] {
    debug_assert!(flat.kind() == tch::Kind::Float && flat.device() == tch::Device::Cpu);
    debug_assert!(slot.off + slot.numel <= flat.numel() as i64);
    let base = flat.data_ptr() as *mut f32;
    // SAFETY: in bounds (above); exclusivity is the caller's promise
    unsafe { std::slice::from_raw_parts_mut(base.add(slot.off as usize), slot.numel as usize) }
}
