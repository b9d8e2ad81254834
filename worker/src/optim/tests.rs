//! The flat-buffer optimiser against the per-tensor one it replaced (`reference.rs`): the same
//! parameters after every step, with every rule, both update paths and both gradient layouts,
//! through freezing and unfreezing; the same checkpoint state; exact resume from that state; and
//! a second optimiser over the same model (as the LR-range test makes) changing nothing.

use cyclotron_core::spec::{OptimizerKind, OptimizerSpec};
use tch::{Device, Kind, Tensor};

use super::reference::Reference;
use super::{GradLayout, Optimizer};
use crate::models::{self, Model, Net};

fn param(values: &[f32]) -> Tensor {
    Tensor::from_slice(values).set_requires_grad(true)
}

fn spec(kind: OptimizerKind, momentum: f64, wd: f64) -> OptimizerSpec {
    OptimizerSpec { kind, momentum, weight_decay: wd, ..Default::default() }
}

fn specs() -> Vec<OptimizerSpec> {
    vec![
        spec(OptimizerKind::Sgd, 0.9, 5e-4),
        OptimizerSpec { nesterov: true, ..spec(OptimizerKind::Sgd, 0.9, 0.0) },
        spec(OptimizerKind::Sgd, 0.0, 1e-2),
        spec(OptimizerKind::Adamw, 0.0, 1e-2),
        spec(OptimizerKind::Adamw, 0.0, 0.0),
    ]
}

/// A small ResNet (three layer groups, convolutions, BatchNorm, a linear head) from seed 0.
fn net() -> Net {
    net_of_width(4)
}

fn net_of_width(width: i64) -> Net {
    tch::set_num_threads(1);
    tch::manual_seed(0);
    models::build("small_resnet", width, 1, 10, Device::Cpu).unwrap()
}

/// Batch `i` of a fixed random stream.
fn batch(i: i64) -> (Tensor, Tensor) {
    tch::manual_seed(100 + i);
    (
        Tensor::randn([8, 1, 28, 28], (Kind::Float, Device::Cpu)),
        Tensor::randint(10, [8], (Kind::Int64, Device::Cpu)),
    )
}

fn backward(net: &Net, i: i64) {
    let (x, y) = batch(i);
    net.forward_t(&x, true).unwrap().cross_entropy_for_logits(&y).backward();
}

/// Largest absolute difference between the two nets' variables (parameters and buffers).
fn max_diff(a: &Net, b: &Net) -> f64 {
    let (va, vb) = (a.vs.variables(), b.vs.variables());
    assert_eq!(va.len(), vb.len());
    va.iter().map(|(name, t)| (t - &vb[name]).abs().max().double_value(&[])).fold(0.0, f64::max)
}

const LRS: [f64; 3] = [0.01, 0.03, 0.1];

/// How an optimiser under test is made.
#[derive(Debug, Clone, Copy)]
enum Make {
    Fused(GradLayout),
    TensorOps,
}

fn make(how: Make, s: &OptimizerSpec, net: &Net) -> Optimizer {
    match how {
        Make::Fused(grads) => Optimizer::with_grad_layout(s, net.parameters(), grads),
        Make::TensorOps => Optimizer::new(s, net.parameters()).tensor_ops_only(),
    }
}

const MAKES: [Make; 3] = [Make::Fused(GradLayout::Released), Make::Fused(GradLayout::Flat), Make::TensorOps];

/// Train both nets the same way for `steps` steps, group 0 frozen during steps 4..8 (so its
/// update counts fall behind the others').
fn train_both(a: &Net, ra: &mut Reference, b: &Net, ob: &mut Optimizer, steps: i64, what: &str) {
    for i in 0..steps {
        let frozen = usize::from((4..8).contains(&i));
        a.freeze_to(frozen);
        b.freeze_to(frozen);
        ra.train(a, i, &LRS);
        ob.train(b, i, &LRS);
        let d = max_diff(a, b);
        assert!(d <= 1e-6, "{what}: step {i}: parameters differ by {d}");
    }
}

/// The oracle of issue 15: same parameters after N steps as the per-tensor optimiser (1e-6),
/// for every rule, update path and gradient layout, through freezing and unfreezing.
#[test]
fn flat_buffers_give_the_per_tensor_optimisers_parameters() {
    for s in specs() {
        for how in MAKES {
            let what = format!("{how:?} {s:?}");
            let (a, b) = (net(), net());
            assert_eq!(max_diff(&a, &b), 0.0);
            let mut ra = Reference::new(&s, a.parameters());
            let mut ob = make(how, &s, &b);
            train_both(&a, &mut ra, &b, &mut ob, 12, &what);
            // the checkpoint state: same names, counts and values
            let ((ta, ca), (tb, cb)) = (ra.state(), ob.state());
            assert_eq!(ca, cb, "{what}: update counts");
            let names = |t: &[(String, Tensor)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
            assert_eq!(names(&ta), names(&tb), "{what}: state names");
            for ((n, x), (_, y)) in ta.iter().zip(&tb) {
                assert_eq!(x.size(), y.size(), "{what}: {n}");
                let d = (x - y).abs().max().double_value(&[]);
                assert!(d <= 1e-6, "{what}: {n} differs by {d}");
            }
        }
    }
}

/// Exact resume: a fresh optimiser loaded with the state of another, on a copy of its model,
/// continues with bit-identical parameters.
#[test]
fn state_round_trips_and_resume_is_exact() {
    for s in specs() {
        for how in MAKES {
            let what = format!("{how:?} {s:?}");
            let (a, mut b) = (net(), net());
            let mut oa = make(how, &s, &a);
            for i in 0..5 {
                oa.train(&a, i, &LRS);
            }
            // what a checkpoint keeps: copies of the weights and state
            let (tensors, counts) = oa.state();
            let saved: Vec<(String, Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t.copy())).collect();
            let expected = if s.kind == OptimizerKind::Adamw { 2 } else { usize::from(s.momentum != 0.0) };
            assert_eq!(saved.len(), expected * counts.len(), "{what}: m (and v) of every parameter");
            b.vs.copy(&a.vs).unwrap();
            let mut ob = make(how, &s, &b);
            ob.load_state(&saved, &counts);
            let (t2, c2) = ob.state();
            assert_eq!(c2, counts, "{what}");
            for ((n, x), (_, y)) in saved.iter().zip(&t2) {
                assert!(x.equal(y), "{what}: {n} changed in the round trip");
            }
            for i in 5..10 {
                oa.train(&a, i, &LRS);
                ob.train(&b, i, &LRS);
                assert_eq!(max_diff(&a, &b), 0.0, "{what}: step {i} after resume");
            }
        }
    }
}

/// What the tests do with either optimiser.
trait Stepper {
    fn train(&mut self, net: &Net, i: i64, lrs: &[f64]);
}

impl Stepper for Reference {
    fn train(&mut self, net: &Net, i: i64, lrs: &[f64]) {
        self.zero_grad();
        backward(net, i);
        self.step(lrs);
    }
}

impl Stepper for Optimizer {
    fn train(&mut self, net: &Net, i: i64, lrs: &[f64]) {
        self.zero_grad();
        backward(net, i);
        self.step(lrs);
    }
}

/// The LR-range test's pattern: a second optimiser trains the same model, the weights are put
/// back, and the first goes on as if nothing happened.
#[test]
fn a_second_optimiser_over_the_same_model_changes_nothing_for_the_first() {
    let s = spec(OptimizerKind::Sgd, 0.9, 5e-4);
    for how in MAKES {
        let (a, b) = (net(), net());
        let (mut ra, mut ob) = (Reference::new(&s, a.parameters()), make(how, &s, &b));
        for i in 0..3 {
            ra.train(&a, i, &LRS);
            ob.train(&b, i, &LRS);
        }
        let (saved_a, saved_b) = (crate::tensor_io::clone_vars(&a.vs), crate::tensor_io::clone_vars(&b.vs));
        {
            let mut ra2 = Reference::new(&s, a.parameters());
            let mut ob2 = make(how, &s, &b);
            for i in 10..12 {
                ra2.train(&a, i, &[1.0; 3]);
                ob2.train(&b, i, &[1.0; 3]);
            }
            assert!(max_diff(&a, &b) <= 1e-5, "{how:?}: the second optimisers agree");
        }
        crate::tensor_io::load_into(&a.vs, &saved_a, "a").unwrap();
        crate::tensor_io::load_into(&b.vs, &saved_b, "b").unwrap();
        for i in 3..6 {
            ra.train(&a, i, &LRS);
            ob.train(&b, i, &LRS);
            let d = max_diff(&a, &b);
            assert!(d <= 1e-6, "{how:?}: step {i}: {d}");
        }
    }
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
    assert!((got[0] as f64 - x[0]).abs() < 1e-6 && (got[1] as f64 - x[1]).abs() < 1e-6, "{got:?} vs {x:?}");
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
    for grads in [GradLayout::Released, GradLayout::Flat] {
        let a = param(&[1.0]);
        let b = param(&[1.0]);
        let frozen = param(&[1.0]);
        let mut opt = Optimizer::with_grad_layout(
            &spec(OptimizerKind::Sgd, 0.0, 0.0),
            vec![
                ("a".into(), 0, a.shallow_clone()),
                ("b".into(), 1, b.shallow_clone()),
                ("f".into(), 1, frozen.shallow_clone()),
            ],
            grads,
        );
        (&a + &b).sum(Kind::Float).backward();
        opt.step(&[0.1, 0.3]);
        assert!((a.double_value(&[0]) - 0.9).abs() < 1e-6, "{grads:?}");
        assert!((b.double_value(&[0]) - 0.7).abs() < 1e-6, "{grads:?}");
        assert_eq!(frozen.double_value(&[0]), 1.0, "{grads:?}");
        let (_, counts) = opt.state();
        assert_eq!(counts, vec![("a".into(), 1), ("b".into(), 1), ("f".into(), 0)], "{grads:?}");
    }
}

#[test]
fn zero_grad_releases_or_zeroes_the_gradients() {
    for grads in [GradLayout::Released, GradLayout::Flat] {
        let p = param(&[1.0, 2.0]);
        let mut opt = Optimizer::with_grad_layout(
            &spec(OptimizerKind::Sgd, 0.9, 0.0),
            vec![("p".into(), 0, p.shallow_clone())],
            grads,
        );
        for _ in 0..2 {
            (&p * 3.0).sum(Kind::Float).backward();
            opt.step(&[0.1]);
            opt.zero_grad();
            let g = p.grad();
            match grads {
                GradLayout::Released => assert!(!g.defined(), "released"),
                GradLayout::Flat => assert_eq!(g, Tensor::zeros([2], (Kind::Float, Device::Cpu)), "zeroed"),
            }
        }
        // two identical steps of a gradient of 3: nothing accumulated across zero_grad
        (&p * 3.0).sum(Kind::Float).backward();
        assert_eq!(p.grad(), Tensor::from_slice(&[3.0f32, 3.0]), "{grads:?}");
    }
}

/// Channels-last weights (`[runtime] memory_format`): the flat buffers keep each such weight's
/// slot in NHWC order, so after every step with every rule, update path and gradient layout the
/// weights are the per-tensor optimiser's on a copy of the model (1e-5), they stay channels-last
/// views of their buffer, and a checkpoint's state resumes exactly.
#[test]
fn channels_last_weights_update_in_their_own_order_and_keep_it() {
    use crate::memory_format::{is_nhwc_only, to_channels_last};
    let nhwc_weights = |n: &Net| n.parameters().iter().filter(|(_, _, t)| is_nhwc_only(t)).count();
    for s in specs() {
        for how in MAKES {
            let what = format!("{how:?} {s:?}");
            // width 8: narrower convolutions are refused in NHWC (memory_format.rs); both models
            // NHWC, so their gradients are the same and only the optimisers differ
            let (a, b) = (net_of_width(8), net_of_width(8));
            to_channels_last(&a).unwrap();
            let moved = to_channels_last(&b).unwrap();
            assert!(moved >= 4 && nhwc_weights(&b) >= 4, "{what}: the 3×3 convolutions move ({moved})");
            let mut ra = Reference::new(&s, a.parameters());
            let mut ob = make(how, &s, &b);
            // AdamW moves every weight by about its LR whatever its gradient's size, so on this
            // wider model the fused loops' rounding grows step by step (3e-4 by step 6): two steps
            // of it, eight of SGD; a weight updated in another element order would be off by far more
            let steps = if s.kind == OptimizerKind::Adamw { 2 } else { 8 };
            for i in 0..steps {
                ra.train(&a, i, &LRS);
                ob.train(&b, i, &LRS);
                let d = max_diff(&a, &b);
                assert!(d <= 1e-5, "{what}: step {i}: parameters differ by {d}");
            }
            assert_eq!(nhwc_weights(&b), moved, "{what}: the weights left channels-last");
            // exact resume of the channels-last model from its checkpointed state
            let (tensors, counts) = ob.state();
            let saved: Vec<(String, Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t.copy())).collect();
            let c = net_of_width(8);
            to_channels_last(&c).unwrap();
            let mut c = c;
            c.vs.copy(&b.vs).unwrap();
            let mut oc = make(how, &s, &c);
            oc.load_state(&saved, &counts);
            for i in steps..steps + 3 {
                ob.train(&b, i, &LRS);
                oc.train(&c, i, &LRS);
                assert_eq!(max_diff(&b, &c), 0.0, "{what}: step {i} after resume");
            }
        }
    }
}
