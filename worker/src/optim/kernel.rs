//! The update rules, two ways:
//! - [`fused`]: on the CPU, one loop over each parameter's `f32` slices that reads the weight, its
//!   gradient and state once and writes them once, split across the intra-op threads (the
//!   per-tensor rules read and write every buffer three to five times, and allocate temporaries);
//! - [`tensor_ops`]: on any other device or dtype, the same rules as tensor ops on a run of
//!   consecutive parameters of one flat buffer: a handful of kernels per run, not per tensor.
//!
//! Both evaluate the same expression, operation by operation and rounding by rounding, as the
//! per-tensor optimiser they replace (kept in `reference.rs` as the tests' oracle): SGD as
//! PyTorch writes it, `d = g + wd·p; m = μ·m + d (m = d at first); d = nesterov ? d + μ·m : m;
//! p = p − lr·d`, and AdamW with decoupled decay and bias correction.

use cyclotron_core::spec::{OptimizerKind, OptimizerSpec};
use tch::Tensor;

/// What one update of one run of parameters needs besides the tensors.
#[derive(Debug, Clone, Copy)]
pub(super) struct Coeffs {
    pub kind: OptimizerKind,
    pub lr: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub betas: [f64; 2],
    pub eps: f64,
    /// Updates of these parameters, this one included (Adam's bias correction).
    pub t: i64,
}

impl Coeffs {
    pub fn new(s: &OptimizerSpec, lr: f64, t: i64) -> Coeffs {
        Coeffs {
            kind: s.kind,
            lr,
            weight_decay: s.weight_decay,
            momentum: s.momentum,
            nesterov: s.nesterov,
            betas: s.betas,
            eps: s.eps,
            t,
        }
    }

    /// The first update of the momentum buffer copies the step instead of decaying zeros.
    fn first(&self) -> bool {
        self.t == 1
    }
}

/// One parameter's elements (or a part of them) for [`fused`]; `m` and `v` are empty when the
/// rule keeps no such state.
#[derive(Debug)]
pub(super) struct Item<'a> {
    pub p: &'a mut [f32],
    pub g: &'a [f32],
    pub m: &'a mut [f32],
    pub v: &'a mut [f32],
    pub c: Coeffs,
}

impl<'a> Item<'a> {
    fn split_at(self, k: usize) -> (Item<'a>, Item<'a>) {
        fn cut(s: &mut [f32], k: usize) -> (&mut [f32], &mut [f32]) {
            if s.is_empty() {
                (&mut [], &mut [])
            } else {
                s.split_at_mut(k)
            }
        }
        let (p0, p1) = self.p.split_at_mut(k);
        let (g0, g1) = self.g.split_at(k);
        let (m0, m1) = cut(self.m, k);
        let (v0, v1) = cut(self.v, k);
        (Item { p: p0, g: g0, m: m0, v: v0, c: self.c }, Item { p: p1, g: g1, m: m1, v: v1, c: self.c })
    }
}

/// Below this many elements in all, one thread does the whole update.
const PARALLEL_FROM: usize = 1 << 16;

/// Update every item, the elements shared evenly over `threads` threads (this one included).
pub(super) fn fused(items: Vec<Item<'_>>, threads: usize) {
    let total: usize = items.iter().map(|i| i.p.len()).sum();
    let parts = if total < PARALLEL_FROM { 1 } else { threads.max(1) };
    let mut shares = split(items, total.div_ceil(parts).max(1));
    let mine = shares.remove(0);
    std::thread::scope(|s| {
        for share in shares {
            s.spawn(move || share.into_iter().for_each(update));
        }
        mine.into_iter().for_each(update);
    });
}

/// Cut `items` into consecutive shares of `per` elements (the last one shorter).
fn split(items: Vec<Item<'_>>, per: usize) -> Vec<Vec<Item<'_>>> {
    let mut shares = vec![vec![]];
    let mut room = per;
    for mut item in items {
        while item.p.len() > room {
            let (now, rest) = item.split_at(room);
            if !now.p.is_empty() {
                shares.last_mut().expect("one share at least").push(now);
            }
            shares.push(vec![]);
            room = per;
            item = rest;
        }
        room -= item.p.len();
        if !item.p.is_empty() {
            shares.last_mut().expect("one share at least").push(item);
        }
    }
    shares
}

fn update(i: Item<'_>) {
    let c = i.c;
    match c.kind {
        OptimizerKind::Sgd => sgd(i.p, i.g, i.m, &c),
        OptimizerKind::Adamw => adamw(i.p, i.g, i.m, i.v, &c),
    }
}

/// The SGD loop for one combination of options, so that each compiles to a branch-free loop.
#[inline(always)]
fn sgd_loop<const WD: bool, const MOM: bool, const NESTEROV: bool, const FIRST: bool>(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    (lr, wd, mu): (f32, f32, f32),
) {
    if MOM {
        for ((p, &g), m) in p.iter_mut().zip(g).zip(m.iter_mut()) {
            let d = if WD { g + *p * wd } else { g };
            let buf = if FIRST { d } else { *m * mu + d };
            *m = buf;
            let d = if NESTEROV { d + buf * mu } else { buf };
            *p -= d * lr;
        }
    } else {
        for (p, &g) in p.iter_mut().zip(g) {
            let d = if WD { g + *p * wd } else { g };
            *p -= d * lr;
        }
    }
}

fn sgd(p: &mut [f32], g: &[f32], m: &mut [f32], c: &Coeffs) {
    // scalars round to f32 as torch rounds a double scalar applied to a float tensor
    let k = (c.lr as f32, c.weight_decay as f32, c.momentum as f32);
    let (wd, mom) = (c.weight_decay != 0.0, c.momentum != 0.0);
    match (wd, mom, c.nesterov, c.first()) {
        (false, false, _, _) => sgd_loop::<false, false, false, false>(p, g, m, k),
        (true, false, _, _) => sgd_loop::<true, false, false, false>(p, g, m, k),
        (false, true, false, false) => sgd_loop::<false, true, false, false>(p, g, m, k),
        (false, true, false, true) => sgd_loop::<false, true, false, true>(p, g, m, k),
        (false, true, true, false) => sgd_loop::<false, true, true, false>(p, g, m, k),
        (false, true, true, true) => sgd_loop::<false, true, true, true>(p, g, m, k),
        (true, true, false, false) => sgd_loop::<true, true, false, false>(p, g, m, k),
        (true, true, false, true) => sgd_loop::<true, true, false, true>(p, g, m, k),
        (true, true, true, false) => sgd_loop::<true, true, true, false>(p, g, m, k),
        (true, true, true, true) => sgd_loop::<true, true, true, true>(p, g, m, k),
    }
}

/// AdamW's scalars for update `t`, each rounded to f32 where torch would round it.
struct AdamScalars {
    decay: f32,
    b1: f32,
    one_minus_b1: f32,
    b2: f32,
    one_minus_b2: f32,
    sqrt_bc2: f32,
    eps: f32,
    step: f32,
}

impl AdamScalars {
    fn new(c: &Coeffs) -> AdamScalars {
        let [b1, b2] = c.betas;
        let bc1 = 1.0 - b1.powi(c.t as i32);
        let bc2 = 1.0 - b2.powi(c.t as i32);
        AdamScalars {
            decay: (1.0 - c.lr * c.weight_decay) as f32,
            b1: b1 as f32,
            one_minus_b1: (1.0 - b1) as f32,
            b2: b2 as f32,
            one_minus_b2: (1.0 - b2) as f32,
            sqrt_bc2: bc2.sqrt() as f32,
            eps: c.eps as f32,
            step: (c.lr / bc1) as f32,
        }
    }
}

#[inline(always)]
fn adamw_loop<const WD: bool>(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &AdamScalars) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let w = if WD { *p * k.decay } else { *p };
        *m = *m * k.b1 + g * k.one_minus_b1;
        *v = *v * k.b2 + g * g * k.one_minus_b2;
        let denom = v.sqrt() / k.sqrt_bc2 + k.eps;
        *p = w - *m / denom * k.step;
    }
}

fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: &Coeffs) {
    let k = AdamScalars::new(c);
    if c.weight_decay != 0.0 {
        adamw_loop::<true>(p, g, m, v, &k);
    } else {
        adamw_loop::<false>(p, g, m, v, &k);
    }
}

/// The same rules as tensor ops on views `p`, `g`, `m`, `v` (a run of one flat buffer's
/// parameters; `m`/`v` `None` when the rule keeps no such state). Call without gradient recording.
pub(super) fn tensor_ops(
    p: &mut Tensor,
    g: &Tensor,
    m: Option<&mut Tensor>,
    v: Option<&mut Tensor>,
    c: &Coeffs,
) {
    match c.kind {
        OptimizerKind::Sgd => {
            let mut d = if c.weight_decay != 0.0 { g + &*p * c.weight_decay } else { g.shallow_clone() };
            if let (Some(m), true) = (m, c.momentum != 0.0) {
                if c.first() {
                    m.copy_(&d);
                } else {
                    let _ = m.g_mul_scalar_(c.momentum);
                    let _ = m.g_add_(&d);
                }
                d = if c.nesterov { d + &*m * c.momentum } else { m.shallow_clone() };
            }
            let _ = p.g_sub_(&(d * c.lr));
        }
        OptimizerKind::Adamw => {
            let (Some(m), Some(v)) = (m, v) else { return };
            let [b1, b2] = c.betas;
            if c.weight_decay != 0.0 {
                let _ = p.g_mul_scalar_(1.0 - c.lr * c.weight_decay);
            }
            let _ = m.g_mul_scalar_(b1);
            let _ = m.g_add_(&(g * (1.0 - b1)));
            let _ = v.g_mul_scalar_(b2);
            let _ = v.g_add_(&(g * g * (1.0 - b2)));
            let bc1 = 1.0 - b1.powi(c.t as i32);
            let bc2 = 1.0 - b2.powi(c.t as i32);
            let denom = v.sqrt() / bc2.sqrt() + c.eps;
            let _ = p.g_sub_(&(&*m / denom * (c.lr / bc1)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coeffs() -> Coeffs {
        Coeffs::new(&OptimizerSpec::default(), 0.1, 1)
    }

    #[test]
    fn split_shares_cover_every_element_once_in_order() {
        for (lens, per) in
            [(vec![5usize, 3, 8], 4usize), (vec![10], 3), (vec![2, 2], 4), (vec![1], 1), (vec![7, 0, 2], 9)]
        {
            let mut ps: Vec<Vec<f32>> = lens
                .iter()
                .scan(0.0f32, |n, &l| {
                    Some(
                        (0..l)
                            .map(|_| {
                                *n += 1.0;
                                *n
                            })
                            .collect(),
                    )
                })
                .collect();
            let gs: Vec<Vec<f32>> = lens.iter().map(|&l| vec![0.0; l]).collect();
            let items: Vec<Item<'_>> = ps
                .iter_mut()
                .zip(&gs)
                .map(|(p, g)| Item { p, g, m: &mut [], v: &mut [], c: coeffs() })
                .collect();
            let total: usize = lens.iter().sum();
            let shares = split(items, per);
            assert_eq!(shares.len(), total.div_ceil(per).max(1), "{lens:?} by {per}");
            let seen: Vec<f32> = shares.iter().flatten().flat_map(|i| i.p.iter().copied()).collect();
            assert_eq!(seen, (1..=total).map(|n| n as f32).collect::<Vec<_>>(), "{lens:?} by {per}");
            for s in &shares[..shares.len() - 1] {
                assert_eq!(s.iter().map(|i| i.p.len()).sum::<usize>(), per, "{lens:?} by {per}");
            }
        }
    }

    /// SGD bit for bit; AdamW within float rounding (libtorch's vectorised `sqrt` is not always
    /// correctly rounded, Rust's is).
    #[test]
    fn the_fused_loops_match_the_tensor_ops() {
        let n = 1000;
        let p0 = Tensor::randn([n], (tch::Kind::Float, tch::Device::Cpu));
        let g = Tensor::randn([n], (tch::Kind::Float, tch::Device::Cpu));
        for spec in [
            OptimizerSpec { momentum: 0.9, weight_decay: 5e-4, ..Default::default() },
            OptimizerSpec { momentum: 0.9, nesterov: true, weight_decay: 0.0, ..Default::default() },
            OptimizerSpec { momentum: 0.0, weight_decay: 1e-2, ..Default::default() },
            OptimizerSpec { kind: OptimizerKind::Adamw, weight_decay: 1e-2, ..Default::default() },
            OptimizerSpec { kind: OptimizerKind::Adamw, weight_decay: 0.0, ..Default::default() },
        ] {
            let (mut pa, mut ma, mut va) = (p0.copy(), Tensor::zeros_like(&p0), Tensor::zeros_like(&p0));
            let mut pb: Vec<f32> = Vec::try_from(&p0).unwrap();
            let (mut mb, mut vb) = (vec![0.0f32; n as usize], vec![0.0f32; n as usize]);
            let gb: Vec<f32> = Vec::try_from(&g).unwrap();
            for t in 1..=4 {
                let c = Coeffs::new(&spec, 0.05, t);
                tch::no_grad(|| tensor_ops(&mut pa, &g, Some(&mut ma), Some(&mut va), &c));
                let item = Item { p: &mut pb, g: &gb, m: &mut mb, v: &mut vb, c };
                fused(vec![item], 2);
            }
            let pa: Vec<f32> = Vec::try_from(&pa).unwrap();
            let worst = pa.iter().zip(&pb).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            let tolerance = if spec.kind == OptimizerKind::Sgd { 0.0 } else { 1e-6 };
            assert!(worst <= tolerance, "{spec:?}: differ by {worst}");
        }
    }
}
