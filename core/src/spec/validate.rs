//! Every check of a job spec, in one place, each naming the field and what to do about it.

use super::{stage::GroupLrs, DataSource, JobSpec, LrValue, ScheduleKind, KNOWN_ARCHS, LAYER_GROUPS};

/// All problems with `spec`; empty when it is valid.
pub(super) fn problems(spec: &JobSpec) -> Vec<String> {
    let mut p = Vec::new();
    if spec.name.is_empty()
        || !spec.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        p.push(format!(
            "name: {:?} must be non-empty and use only letters, digits, '-', '_' and '.' (it names a folder)",
            spec.name
        ));
    }
    if !(spec.output.starts_with("file://")
        || spec.output.starts_with("memory://")
        || spec.output.starts_with("s3://")
        || !spec.output.contains("://"))
    {
        p.push(format!(
            "output: {:?} is not a supported store URL; use file://PATH, s3://bucket/prefix or memory://",
            crate::checkpoint::s3::redact(&spec.output)
        ));
    } else if let Err(e) =
        spec.output.starts_with("s3://").then(|| crate::checkpoint::s3::parse(&spec.output)).transpose()
    {
        p.push(format!("output: {e}"));
    }
    p.extend(spec.checkpoint.problems());
    data(spec, &mut p);
    if !KNOWN_ARCHS.contains(&spec.model.arch.as_str()) {
        p.push(format!(
            "model.arch: unknown model {:?}; known models: {}",
            spec.model.arch,
            KNOWN_ARCHS.join(", ")
        ));
    }
    if spec.model.width < 1 || spec.model.width > 1024 {
        p.push(format!("model.width: must be between 1 and 1024, got {}", spec.model.width));
    }
    let o = &spec.optimizer;
    if !(0.0..1.0).contains(&o.momentum) {
        p.push(format!("optimizer.momentum: must be in [0, 1), got {}", o.momentum));
    }
    if !(o.weight_decay >= 0.0 && o.weight_decay.is_finite()) {
        p.push(format!("optimizer.weight_decay: must be ≥ 0, got {}", o.weight_decay));
    }
    if o.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
        p.push(format!("optimizer.betas: each must be in [0, 1), got {:?}", o.betas));
    }
    if o.eps <= 0.0 {
        p.push(format!("optimizer.eps: must be > 0, got {}", o.eps));
    }
    if let Some(c) = o.clip {
        if !(c > 0.0 && c.is_finite()) {
            p.push(format!("optimizer.clip: the largest gradient norm must be > 0, got {c}"));
        }
    }
    if let Some(f) = &spec.lr_find {
        lr_find(f.start, f.end, f.steps, &mut p);
        sweep(f, &mut p);
    }
    if spec.ensemble.runs == 0 || spec.ensemble.runs > crate::sweep::MAX_POINTS {
        p.push(format!(
            "ensemble.runs: independent runs must be between 1 and {}, got {}",
            crate::sweep::MAX_POINTS,
            spec.ensemble.runs
        ));
    }
    stages(spec, &mut p);
    p
}

fn data(spec: &JobSpec, p: &mut Vec<String>) {
    let d = &spec.data;
    if d.source == DataSource::ImageFolder && d.path.as_deref().unwrap_or("").is_empty() {
        p.push("data.path: required for source = \"image_folder\" (a folder with train/<class>/ and valid/<class>/)".into());
    }
    if d.batch_size == 0 {
        p.push("data.batch_size: must be ≥ 1, got 0".into());
    }
    if !(0.0..1.0).contains(&d.valid_pct) {
        p.push(format!("data.valid_pct: must be in [0, 1), got {}", d.valid_pct));
    }
    if matches!(d.size, Some(s) if !(8..=1024).contains(&s)) {
        p.push(format!("data.size: must be between 8 and 1024 pixels, got {}", d.size.unwrap_or(0)));
    }
    if d.limit_train == Some(0) || d.limit_eval == Some(0) {
        p.push(
            "data.limit_train / data.limit_eval: must be ≥ 1 when set (leave them out to use everything)"
                .into(),
        );
    }
    if d.prefetch == 0 {
        p.push("data.prefetch: must be ≥ 1".into());
    }
    if let Some(c) = &d.classes {
        let mut sorted = c.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if c.len() < 2 || sorted.len() != c.len() {
            p.push(format!("data.classes: need at least 2 distinct class indices, got {c:?}"));
        }
    }
    if let Some(url) = &spec.model.pretrained {
        if url.contains("://") && !url.starts_with("file://") && !url.starts_with("s3://") {
            p.push(format!(
                "model.pretrained: {url:?}: unsupported scheme; use file://PATH, a plain path or s3://bucket/key"
            ));
        }
    }
    if let Some(Err(problems)) = d.augment.as_ref().map(|a| a.resolve()) {
        p.extend(problems);
    }
    if let Some(t) = &spec.tta {
        if t.n > 64 {
            p.push(format!("tta.n: at most 64 augmented views, got {}", t.n));
        }
        if matches!(t.beta, Some(b) if !(0.0..=1.0).contains(&b)) {
            p.push(format!("tta.beta: must be in [0, 1], got {}", t.beta.unwrap_or(0.0)));
        }
        if t.n > 0 && d.augment.is_none() {
            p.push("tta: test-time augmentation uses the [data.augment] transforms; add [data.augment] or set tta.n = 0".into());
        }
    }
}

fn lr_find(start: f64, end: f64, steps: u32, p: &mut Vec<String>) {
    if !(start > 0.0 && end > start && end.is_finite()) {
        p.push(format!("lr_find: need 0 < start < end, got start = {start}, end = {end}"));
    }
    if steps < 5 {
        p.push(format!("lr_find.steps: need at least 5 steps for a curve, got {steps}"));
    }
}

fn sweep(f: &super::LrFindSpec, p: &mut Vec<String>) {
    let max = crate::sweep::MAX_POINTS;
    if f.grid != 0 && !(3..=max as u32).contains(&f.grid) {
        p.push(format!(
            "lr_find.grid: a grid needs between 3 and {max} learning rates for a curve, got {} (0 runs the ramp)",
            f.grid
        ));
    }
    if f.grid > 0 && f.grid_steps == 0 {
        p.push("lr_find.grid_steps: each grid point must train at least 1 step, got 0".into());
    }
    let Some(c) = &f.candidates else { return };
    if c.batch_size.contains(&0) {
        p.push(format!(
            "lr_find.candidates.batch_size: every batch size must be ≥ 1, got {:?}",
            c.batch_size
        ));
    }
    if c.weight_decay.iter().any(|w| !(*w >= 0.0 && w.is_finite())) {
        p.push(format!("lr_find.candidates.weight_decay: every value must be ≥ 0, got {:?}", c.weight_decay));
    }
    for a in &c.arch {
        if !KNOWN_ARCHS.contains(&a.as_str()) {
            p.push(format!(
                "lr_find.candidates.arch: unknown model {a:?}; known models: {}",
                KNOWN_ARCHS.join(", ")
            ));
        }
    }
    let points = crate::sweep::candidates(f).len() * (f.grid as usize).max(1);
    if points > max {
        p.push(format!(
            "lr_find: the sweep has {points} tasks (candidate combinations × grid points); at most {max}: shorten the candidate lists or the grid"
        ));
    }
}

fn stages(spec: &JobSpec, p: &mut Vec<String>) {
    if spec.stages.is_empty() {
        p.push("stage: the job has no training stages; add at least one [[stage]] with lr and epochs (or cycles)".into());
    }
    let mut lr_found = spec.lr_find.is_some();
    for (i, s) in spec.stages.iter().enumerate() {
        let at = format!("stage {}", i + 1);
        lr_found |= s.lr_find;
        match (s.lr, &s.group_lrs) {
            (Some(LrValue::Fixed(lr)), _) if !(lr > 0.0 && lr.is_finite()) => {
                p.push(format!("{at}: lr must be > 0, got {lr}"));
            }
            (Some(LrValue::Auto(_)), _) if !lr_found => p.push(format!(
                "{at}: lr = \"auto\" needs an LR-range test first: add [lr_find] or set lr_find = true on this or an earlier stage"
            )),
            (Some(_), GroupLrs::Explicit(_)) => {
                p.push(format!("{at}: give either lr or an explicit group_lrs list, not both"));
            }
            (None, GroupLrs::Explicit(v)) if v.is_empty() || v.iter().any(|x| !(*x > 0.0 && x.is_finite())) => {
                p.push(format!("{at}: group_lrs must be learning rates > 0, got {v:?}"));
            }
            (None, GroupLrs::Explicit(v)) if v.len() != LAYER_GROUPS => p.push(format!(
                "{at}: group_lrs needs {LAYER_GROUPS} learning rates (body early, body late, head), got {}",
                v.len()
            )),
            (None, GroupLrs::Explicit(_)) => {}
            (None, _) => p.push(format!("{at}: lr is missing; set lr = 0.01 (say) or lr = \"auto\"")),
            _ => {}
        }
        if let GroupLrs::Named(n) = &s.group_lrs {
            match n.as_str() {
                "same" | "thirds" => {}
                "slice" => match (s.lr_low, s.lr) {
                    (None, _) => p.push(format!("{at}: group_lrs = \"slice\" needs lr_low (the first group's lr)")),
                    (Some(lo), Some(LrValue::Fixed(hi))) if !(lo > 0.0 && lo < hi) => {
                        p.push(format!("{at}: lr_low must be in (0, lr), got lr_low = {lo}, lr = {hi}"))
                    }
                    _ => {}
                },
                other => p.push(format!(
                    "{at}: group_lrs = {other:?} is unknown; use \"same\", \"thirds\", \"slice\" or a list of learning rates"
                )),
            }
        }
        if s.augment == Some(true) && spec.data.augment.is_none() {
            p.push(format!("{at}: augment = true needs [data.augment] (which transforms to apply)"));
        }
        if s.precompute && s.frozen_groups(LAYER_GROUPS) != LAYER_GROUPS - 1 {
            p.push(format!("{at}: precompute = true trains only the head; set freeze = true on this stage"));
        }
        if s.precompute && s.augment == Some(true) {
            p.push(format!("{at}: precompute = true caches un-augmented activations; remove augment = true"));
        }
        if s.freeze && s.freeze_to.is_some() {
            p.push(format!("{at}: set freeze or freeze_to, not both"));
        }
        if !(s.lr_min >= 0.0 && s.lr_min.is_finite()) {
            p.push(format!("{at}: lr_min must be ≥ 0, got {}", s.lr_min));
        }
        let kind = s.schedule_kind();
        if kind == ScheduleKind::Sgdr {
            if s.epochs.is_some() {
                p.push(format!("{at}: an SGDR stage counts cycles, not epochs; remove epochs (total = Σ cycle_len·cycle_mult^i)"));
            }
            if s.cycles == Some(0) {
                p.push(format!("{at}: cycles must be ≥ 1, got 0"));
            }
            if s.cycle_len == Some(0) {
                p.push(format!("{at}: cycle_len must be ≥ 1, got 0"));
            }
            if s.cycle_mult == 0 {
                p.push(format!("{at}: cycle_mult must be ≥ 1, got 0"));
            }
            if s.total_epochs() > 10_000 {
                p.push(format!(
                    "{at}: {} epochs is more than 10000; lower cycles or cycle_mult",
                    s.total_epochs()
                ));
            }
        } else {
            if s.cycles.is_some() || s.cycle_len.is_some() || s.cycle_mult != 1 {
                p.push(format!("{at}: cycles, cycle_len and cycle_mult only apply to schedule = \"sgdr\""));
            }
            match s.epochs {
                None => p.push(format!("{at}: epochs is missing (or set cycles and cycle_len for SGDR)")),
                Some(0) => p.push(format!("{at}: epochs must be ≥ 1, got 0")),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::JobSpec;
    use crate::Error;

    const BASE: &str = r#"
name = "t"
[data]
source = "fashion_mnist"
[model]
arch = "small_resnet"
"#;

    fn check(extra: &str) -> Vec<String> {
        let spec = JobSpec::from_toml_str(&format!("{BASE}{extra}"), "<test>").unwrap();
        match spec.validate() {
            Ok(()) => vec![],
            Err(Error::InvalidSpec { problems }) => problems,
            Err(e) => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn a_good_spec_has_no_problems() {
        assert_eq!(
            check("[[stage]]\nlr = 0.01\ncycles = 3\ncycle_len = 1\ncycle_mult = 2\n"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn error_texts_name_the_field() {
        let cases = [
            (
                "[[stage]]\nlr = 0.01\ncycles = 3\ncycle_len = 1\ncycle_mult = 0\n",
                "stage 1: cycle_mult must be ≥ 1, got 0",
            ),
            ("[[stage]]\nlr = -1.0\nepochs = 1\n", "stage 1: lr must be > 0, got -1"),
            ("[[stage]]\nlr = 0.0\nepochs = 1\n", "stage 1: lr must be > 0, got 0"),
            ("", "stage: the job has no training stages"),
            ("[[stage]]\nlr = \"auto\"\nepochs = 1\n", "stage 1: lr = \"auto\" needs an LR-range test first"),
            ("[[stage]]\nepochs = 1\n", "stage 1: lr is missing"),
            ("[[stage]]\nlr = 0.1\nepochs = 0\n", "stage 1: epochs must be ≥ 1, got 0"),
            (
                "[[stage]]\nlr = 0.1\ncycles = 2\ncycle_len = 1\nepochs = 3\n",
                "stage 1: an SGDR stage counts cycles",
            ),
            (
                "[[stage]]\nlr = 0.1\nepochs = 2\ngroup_lrs = \"halves\"\n",
                "stage 1: group_lrs = \"halves\" is unknown",
            ),
            (
                "[[stage]]\nlr = 0.1\nepochs = 2\ngroup_lrs = \"slice\"\n",
                "stage 1: group_lrs = \"slice\" needs lr_low",
            ),
            ("[[stage]]\nepochs = 2\ngroup_lrs = [0.1, 0.2]\n", "stage 1: group_lrs needs 3 learning rates"),
            (
                "[[stage]]\nlr = 0.1\nepochs = 1\naugment = true\n",
                "stage 1: augment = true needs [data.augment]",
            ),
            (
                "[[stage]]\nlr = 0.1\nepochs = 1\n[data.augment]\ntransforms = [\"crop_pad:x\"]\n",
                "data.augment.transforms: \"crop_pad:x\": \"x\" is not a number",
            ),
            (
                "[[stage]]\nlr = 0.1\nepochs = 1\nprecompute = true\n",
                "stage 1: precompute = true trains only the head; set freeze = true",
            ),
            (
                "[[stage]]\nlr = 0.1\nepochs = 1\n[tta]\nn = 2\n",
                "tta: test-time augmentation uses the [data.augment]",
            ),
            (
                "[[stage]]\nlr = 0.1\nepochs = 1\n[tta]\nn = 0\nbeta = 2.0\n",
                "tta.beta: must be in [0, 1], got 2",
            ),
            (
                "[[stage]]\nlr = 0.1\nepochs = 2\n[lr_find]\nstart = 1.0\nend = 0.1\n",
                "lr_find: need 0 < start < end",
            ),
            ("[[stage]]\nlr = 0.1\nepochs = 1\n[lr_find]\ngrid = 2\n", "lr_find.grid: a grid needs between 3 and 64"),
            (
                "[[stage]]\nlr = 0.1\nepochs = 1\n[lr_find]\ngrid = 4\ngrid_steps = 0\n",
                "lr_find.grid_steps: each grid point must train at least 1 step",
            ),
            (
                "[[stage]]\nlr = 0.1\nepochs = 1\n[lr_find.candidates]\nbatch_size = [64, 0]\n",
                "lr_find.candidates.batch_size: every batch size must be ≥ 1",
            ),
            (
                "[[stage]]\nlr = 0.1\nepochs = 1\n[lr_find.candidates]\nweight_decay = [-1.0]\n",
                "lr_find.candidates.weight_decay: every value must be ≥ 0",
            ),
            (
                "[[stage]]\nlr = 0.1\nepochs = 1\n[lr_find.candidates]\narch = [\"resnet9000\"]\n",
                "lr_find.candidates.arch: unknown model \"resnet9000\"",
            ),
            (
                "[[stage]]\nlr = 0.1\nepochs = 1\n[lr_find]\ngrid = 16\n[lr_find.candidates]\nbatch_size = [1, 2, 3, 4, 5]\n",
                "lr_find: the sweep has 80 tasks",
            ),
            ("[[stage]]\nlr = 0.1\nepochs = 1\n[ensemble]\nruns = 0\n", "ensemble.runs: independent runs must be between 1 and 64"),
        ];
        for (extra, want) in cases {
            let got = check(extra);
            assert!(got.iter().any(|m| m.starts_with(want)), "for {extra:?}: wanted {want:?}, got {got:?}");
        }
    }

    #[test]
    fn unknown_model_lists_the_known_ones() {
        let spec = JobSpec::from_toml_str(
            "name = \"t\"\n[data]\nsource = \"fashion_mnist\"\n[model]\narch = \"resnet9000\"\n[[stage]]\nlr = 0.1\nepochs = 1\n",
            "<t>",
        )
        .unwrap();
        let e = spec.validate().unwrap_err().to_string();
        assert!(
            e.contains("model.arch: unknown model \"resnet9000\"; known models: small_resnet, resnet18"),
            "{e}"
        );
    }

    #[test]
    fn all_problems_are_reported_together() {
        let got = check("[[stage]]\nlr = -1.0\nepochs = 0\n[[stage]]\nlr = 0.1\ncycles = 1\ncycle_len = 0\n");
        assert_eq!(got.len(), 3, "{got:?}");
    }

    #[test]
    fn unknown_fields_are_rejected_with_the_field_name() {
        let e = JobSpec::from_toml_str(&format!("{BASE}[[stage]]\nlr = 0.1\nepochz = 3\n"), "job.toml")
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("job.toml") && msg.contains("epochz"), "{msg}");
    }

    #[test]
    fn image_folder_needs_a_path() {
        let spec = JobSpec::from_toml_str(
            "name = \"t\"\n[data]\nsource = \"image_folder\"\n[model]\narch = \"resnet18\"\n[[stage]]\nlr = 0.1\nepochs = 1\n",
            "<t>",
        )
        .unwrap();
        assert!(spec.validate().unwrap_err().to_string().contains("data.path: required"));
    }
}
