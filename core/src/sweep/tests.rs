use super::*;
use crate::lr_range::{LrFinder, LrRange};
use crate::spec::{CandidatesSpec, JobSpec};

fn spec(extra: &str) -> JobSpec {
    let s = JobSpec::from_toml_str(
        &format!(
            "name = \"t\"\n[data]\nsource = \"fashion_mnist\"\n[model]\narch = \"small_resnet\"\n[[stage]]\nlr = \"auto\"\nepochs = 1\n{extra}"
        ),
        "<t>",
    )
    .unwrap();
    s.validate().unwrap();
    s
}

/// A U-shaped loss-after-S-steps curve with its minimum at `best` (log scale), diverging above `blowup`.
fn u_loss(lr: f64, best: f64, blowup: f64) -> GridPoint {
    if lr > blowup {
        return GridPoint::from_losses(lr, &[2.3, 9.0, f64::NAN], true);
    }
    let d = (lr / best).log10();
    let end = 0.4 + 0.3 * d * d;
    let losses: Vec<f64> = (0..8).map(|i| 2.3 + (end - 2.3) * f64::from(i) / 7.0).collect();
    GridPoint::from_losses(lr, &losses, false)
}

#[test]
fn candidates_are_every_combination_and_apply_to_the_spec() {
    let f = LrFindSpec {
        candidates: Some(CandidatesSpec {
            batch_size: vec![64, 256],
            weight_decay: vec![1e-4, 1e-2],
            arch: vec![],
        }),
        ..Default::default()
    };
    let c = candidates(&f);
    assert_eq!(c.len(), 4);
    assert_eq!(c[1].label(), "batch_size=64 weight_decay=0.01");
    assert_eq!(c[2].label(), "batch_size=256 weight_decay=0.0001");
    let mut s = spec("[lr_find]\n");
    c[3].apply(&mut s);
    assert_eq!(
        (s.data.batch_size, s.optimizer.weight_decay, s.model.arch.as_str()),
        (256, 1e-2, "small_resnet")
    );
    assert_eq!(candidates(&LrFindSpec::default()), vec![Candidate::default()]);
    assert_eq!(Candidate::default().label(), "as specified");
}

#[test]
fn a_users_module_competes_with_built_in_models_as_the_torchscript_candidate() {
    let text = "name = \"t\"\n[data]\nsource = \"fashion_mnist\"\n[model]\narch = \"torchscript\"\n\
                torchscript = \"file://m.pt\"\ntorchscript_groups = [[\"conv1\"], [\"layer1\"]]\n\
                [lr_find]\n[lr_find.candidates]\narch = [\"torchscript\", \"small_resnet\"]\n\
                [[stage]]\nlr = \"auto\"\nepochs = 1\n";
    let s = JobSpec::from_toml_str(text, "<t>").unwrap();
    s.validate().unwrap();
    let c = candidates(s.lr_find.as_ref().unwrap());
    assert_eq!(c.len(), 2);
    let applied: Vec<JobSpec> = c
        .iter()
        .map(|c| {
            let mut one = s.clone();
            c.apply(&mut one);
            one
        })
        .collect();
    // each candidate's spec is valid: the module stays with "torchscript", goes with a built-in
    for one in &applied {
        one.validate().unwrap_or_else(|e| panic!("{}: {e}", one.model.arch));
    }
    assert_eq!(applied[0].model.torchscript.as_deref(), Some("file://m.pt"));
    assert!(applied[0].model.torchscript_groups.is_some());
    assert_eq!(
        (applied[1].model.arch.as_str(), applied[1].model.torchscript.as_ref()),
        ("small_resnet", None)
    );
    assert!(applied[1].model.torchscript_groups.is_none());
    assert_eq!(c[0].label(), "arch=torchscript");

    // without a module of its own, "torchscript" names nothing
    let plain = JobSpec::from_toml_str(
        "name = \"t\"\n[data]\nsource = \"fashion_mnist\"\n[model]\narch = \"small_resnet\"\n\
         [lr_find]\n[lr_find.candidates]\narch = [\"torchscript\", \"small_cnn\"]\n[[stage]]\nlr = \"auto\"\nepochs = 1\n",
        "<t>",
    )
    .unwrap();
    let e = plain.validate().unwrap_err().to_string();
    assert!(e.contains("lr_find.candidates.arch: \"torchscript\" names the spec's own module"), "{e}");
}

#[test]
fn which_jobs_sweep_on_the_cluster() {
    assert!(!spec("[lr_find]\n").parallel_sweep(), "one ramp runs inside the run");
    assert!(spec("[lr_find]\ngrid = 4\n").parallel_sweep());
    assert!(spec("[lr_find]\n[lr_find.candidates]\nbatch_size = [32, 64]\n").parallel_sweep());
    assert!(!spec("[lr_find]\n[lr_find.candidates]\nbatch_size = [32]\n").parallel_sweep());
    assert!(spec("[lr_find]\n[ensemble]\nruns = 2\n").parallel_sweep(), "runs share one sweep");
    let plain = JobSpec { lr_find: None, ..spec("[lr_find]\n") };
    assert!(!plain.parallel_sweep());
}

#[test]
fn grid_points_are_log_spaced_from_start_to_end_per_candidate() {
    let f = spec("[lr_find]\nstart = 1e-4\nend = 1.0\ngrid = 5\ngrid_steps = 12\n[lr_find.candidates]\nweight_decay = [0.0, 0.1]\n")
        .lr_find
        .unwrap();
    let lrs = grid_lrs(&f);
    for (got, want) in lrs.iter().zip([1e-4, 1e-3, 1e-2, 1e-1, 1.0]) {
        assert!((got / want - 1.0).abs() < 1e-12, "{lrs:?}");
    }
    let pts = points(&f);
    assert_eq!(pts.len(), 10);
    assert_eq!(pts[0].0, 0);
    assert_eq!(pts[5].0, 1);
    assert_eq!(pts[5].1.weight_decay, Some(0.1));
    assert_eq!(pts[6].2, Probe::Grid { lr: lrs[1], steps: 12 });
    let ramp = points(&LrFindSpec::default());
    assert_eq!(ramp, vec![(0, Candidate::default(), Probe::Range)]);
}

#[test]
fn a_point_is_the_mean_of_its_last_quarter_and_divergence_is_marked() {
    let p = GridPoint::from_losses(0.1, &[2.0, 1.8, 1.6, 1.4, 1.2, 1.0, 0.8, 0.6], false);
    assert!((p.loss - 0.7).abs() < 1e-12, "{p:?}");
    assert!(!p.diverged);
    let blown = GridPoint::from_losses(5.0, &[2.0, 3.0, 9.0], false);
    assert!(blown.diverged && blown.loss.is_nan(), "above 4× the first loss");
    let nan = GridPoint::from_losses(5.0, &[2.0, f64::NAN], true);
    assert!(nan.diverged);
    // NaN survives JSON (raft entries and results are JSON)
    let back: GridPoint = serde_json::from_str(&serde_json::to_string(&nan).unwrap()).unwrap();
    assert!(back.loss.is_nan() && back.steps == 2 && back.diverged);
}

#[test]
fn merging_a_grid_sorts_it_and_suggests_below_the_minimum_before_divergence() {
    let f = spec("[lr_find]\nstart = 1e-4\nend = 10.0\ngrid = 11\n").lr_find.unwrap();
    let mut pts: Vec<GridPoint> = grid_lrs(&f).into_iter().map(|lr| u_loss(lr, 0.1, 3.0)).collect();
    pts.reverse(); // reports arrive in any order
    let r = merge_grid(&pts);
    assert!(r.lrs.windows(2).all(|w| w[0] < w[1]));
    assert!(r.diverged && r.losses.last().unwrap().is_nan());
    let s = r.suggestion.expect("a U-shaped curve gives suggestions");
    // the curve is a parabola in log LR with its vertex at 0.1, which is also a grid point
    assert!((s.minimum - 0.1).abs() < 1e-9, "the best grid point: {s:?}");
    assert!((s.valley / 0.1 - 1.0).abs() < 1e-6, "the parabola's vertex: {s:?}");
    // the best point (lr = 0.1) ends at 0.4; its value is the mean of its last quarter
    assert!((best_loss(&r) - (2.3 - 1.9 * 6.0 / 7.0 + 0.4) / 2.0).abs() < 1e-9, "{}", best_loss(&r));
}

#[test]
fn the_grid_valley_falls_between_points_where_the_curve_bottoms_out() {
    // vertex at 10^-1.25, between the grid points 0.1 and 10^-1.5
    let lrs: Vec<f64> = (0..7).map(|i| 10f64.powf(-3.0 + 0.5 * f64::from(i))).collect();
    let losses: Vec<f64> = lrs.iter().map(|lr| 0.5 + (lr.log10() + 1.25).powi(2)).collect();
    let s = grid_suggestions(&lrs, &losses).unwrap();
    assert!((s.valley.log10() + 1.25).abs() < 1e-9, "{s:?}");
    // at the curve's end the best point is the suggestion
    let falling: Vec<f64> = (0..7).map(|i| 2.0 - 0.1 * f64::from(i)).collect();
    let s = grid_suggestions(&lrs, &falling).unwrap();
    assert_eq!((s.valley, s.minimum), (lrs[6], lrs[6]));
    assert!(grid_suggestions(&lrs[..2], &losses[..2]).is_none());
}

#[test]
fn the_candidate_with_the_lowest_loss_is_chosen_and_its_lr_suggested() {
    let f = spec("[lr_find]\nstart = 1e-4\nend = 10.0\ngrid = 6\nsuggestion = \"minimum\"\n[lr_find.candidates]\nbatch_size = [32, 64]\n")
        .lr_find
        .unwrap();
    let reports: Vec<(usize, PointReport)> = points(&f)
        .into_iter()
        .map(|(ci, _, p)| {
            let Probe::Grid { lr, .. } = p else { panic!() };
            let mut pt = u_loss(lr, 0.1, 5.0);
            if ci == 1 {
                pt.loss -= 0.1; // batch 64 is better everywhere
            }
            (ci, PointReport::Grid { point: pt })
        })
        .collect();
    let o = conclude(&f, &reports, true).unwrap();
    assert_eq!(o.chosen, 1);
    assert_eq!(o.chosen().candidate.batch_size, Some(64));
    assert_eq!(o.chosen().lr, o.chosen().report.suggestion.map(|s| s.minimum));
    assert!(o.candidates[0].best_loss > o.candidates[1].best_loss);
    // a missing point is an error, not a silently shorter curve
    let err = conclude(&f, &reports[1..], true).unwrap_err();
    assert!(err.contains("5 of 6 grid points"), "{err}");
}

#[test]
fn ramps_are_compared_too_and_a_sweep_without_any_suggestion_says_what_to_do() {
    let f = spec("[lr_find]\n[lr_find.candidates]\nweight_decay = [0.0, 0.01]\n").lr_find.unwrap();
    let ramp = |offset: f64| {
        let r = LrRange { start: 1e-5, end: 1.0, steps: 40 };
        let mut finder = LrFinder::default();
        for i in 0..40 {
            let lr = r.lr_at(i);
            finder.record(lr, 2.0 + offset - (lr.log10() + 5.0) * 0.3);
        }
        LrFindReport::from_finder(finder, false)
    };
    let reports =
        vec![(0, PointReport::Range { report: ramp(0.0) }), (1, PointReport::Range { report: ramp(-0.5) })];
    let o = conclude(&f, &reports, true).unwrap();
    assert_eq!(o.chosen, 1);
    assert_eq!(o.grid, 0);
    let dead = LrFindReport {
        lrs: vec![1e-5, 1e-4],
        losses: vec![f64::NAN, f64::NAN],
        raw_losses: vec![f64::NAN, f64::NAN],
        suggestion: None,
        diverged: true,
    };
    let none =
        vec![(0, PointReport::Range { report: dead.clone() }), (1, PointReport::Range { report: dead })];
    let err = conclude(&f, &none, true).unwrap_err();
    assert!(err.contains("no LR sweep gave a usable curve") && err.contains("lower lr_find.start"), "{err}");
}

#[test]
fn grid_points_from_different_initial_weights_do_not_make_a_curve() {
    let f = spec("[lr_find]\nstart = 1e-3\nend = 1.0\ngrid = 3\n").lr_find.unwrap();
    let reports = |inits: [&str; 3]| -> Vec<(usize, PointReport)> {
        grid_lrs(&f)
            .into_iter()
            .zip(inits)
            .map(|(lr, init)| {
                let mut point = u_loss(lr, 0.03, 10.0);
                point.init = Some(init.into());
                (0, PointReport::Grid { point })
            })
            .collect()
    };
    assert!(conclude(&f, &reports(["a", "a", "a"]), true).is_ok());
    let err = conclude(&f, &reports(["a", "b", "a"]), true).unwrap_err();
    assert!(err.contains("2 different initial weights") && err.contains("identical workers"), "{err}");
}
