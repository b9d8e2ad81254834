//! Every check of a job spec, in one place, each naming the field and what to do about it.
//!
//! A spec is untrusted input at the coordinator (anyone holding the cluster token submits one) and
//! every number in it sizes something on a worker: a queue, a thread pool, a loop. So each such
//! number has a limit checked here, before anything is allocated from it, with checked arithmetic
//! where numbers multiply (sweep sizes, SGDR epochs), and validation itself never materialises what
//! it counts (20,000 candidates per list must cost a multiplication, not a 10^12-element product).

use super::{stage::GroupLrs, DataSource, JobSpec, LrValue, ScheduleKind, KNOWN_ARCHS, LAYER_GROUPS};

/// Longest job spec accepted, in bytes of TOML text.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
/// Longest job name: it names folders (`<name>-<date>-<time>-t<task>-g<generation>` on workers).
pub const MAX_NAME_LEN: usize = 64;
/// Most libtorch threads a spec may ask for.
pub const MAX_THREADS: usize = 256;
/// Most batches the loading thread prepares ahead (`data.prefetch`).
pub const MAX_PREFETCH: usize = 64;
/// Most checkpoints waiting for upload (`checkpoint.max_pending`; each is a copy of the model).
pub const MAX_PENDING_CHECKPOINTS: usize = 16;
/// Most epochs of a stage, and of a whole job.
pub const MAX_EPOCHS: u64 = 10_000;
/// Most training stages of a job.
pub const MAX_STAGES: usize = 64;
/// Largest batch a spec may ask for.
pub const MAX_BATCH_SIZE: usize = 16_384;
/// Most steps of one LR-range test or grid point.
pub const MAX_LR_FIND_STEPS: u32 = 100_000;
/// Largest seed: the runs of a job take `seed + i`, which must not wrap.
pub const MAX_SEED: u64 = 1 << 53;

/// Whether `name` can name a job (and the folders named after it): 1 to [`MAX_NAME_LEN`] ASCII
/// letters, digits, `-`, `_` and `.`, starting with a letter or a digit (so never `.`, `..`, a
/// hidden folder or something read as a command-line flag).
pub fn is_valid_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// All problems with `spec`; empty when it is valid.
pub(super) fn problems(spec: &JobSpec) -> Vec<String> {
    let mut p = Vec::new();
    if !is_valid_name(&spec.name) {
        let shown: String = spec.name.chars().take(MAX_NAME_LEN + 8).collect();
        let more = if spec.name.chars().count() > shown.chars().count() { "…" } else { "" };
        p.push(format!(
            "name: {shown:?}{more} ({} characters) must be 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.', starting with a letter or digit (it names folders)",
            spec.name.chars().count()
        ));
    }
    let ls = spec.loss.label_smoothing;
    if !(0.0..1.0).contains(&ls) {
        p.push(format!("loss.label_smoothing: must be in [0, 1) (0.1 is usual), got {ls}"));
    } else if ls > 0.0 {
        let other = match spec.data.source {
            DataSource::TextCorpus => Some("text_corpus\" trains a language model"),
            DataSource::TabularCsv => Some("tabular_csv\" trains a tabular model"),
            _ => None,
        };
        if let Some(other) = other {
            p.push(format!(
                "loss.label_smoothing: {ls} applies to classifiers of images and texts; source = \"{other}: leave it out"
            ));
        }
    }
    if spec.seed > MAX_SEED {
        p.push(format!("seed: must be at most 2^53 = {MAX_SEED}, got {}", spec.seed));
    }
    if spec.runtime.precision == super::Precision::Fp16 {
        p.push(
            "runtime.precision = \"fp16\" needs dynamic loss scaling, which Cyclotron does not have yet; \
             use \"bf16\" (fp32's range, no scaling) or \"fp32\""
                .to_string(),
        );
    }
    if matches!(spec.runtime.threads, Some(t) if !(1..=MAX_THREADS).contains(&t)) {
        p.push(format!(
            "runtime.threads: must be between 1 and {MAX_THREADS} (leave it out to use every core), got {}",
            spec.runtime.threads.unwrap_or(0)
        ));
    }
    let c = &spec.checkpoint;
    if c.max_pending > MAX_PENDING_CHECKPOINTS {
        p.push(format!(
            "checkpoint.max_pending: at most {MAX_PENDING_CHECKPOINTS} checkpoints may wait for upload (each is a copy of the model in memory), got {}",
            c.max_pending
        ));
    }
    if c.keep_last > 10_000 {
        p.push(format!("checkpoint.keep_last: at most 10000, got {}", c.keep_last));
    }
    if c.multipart_threshold_mb > 5 * 1024 {
        p.push(format!(
            "checkpoint.multipart_threshold_mb: at most 5120 (S3 parts are at most 5 GiB), got {}",
            c.multipart_threshold_mb
        ));
    }
    if c.upload_deadline_s > 7 * 86_400 {
        p.push(format!("checkpoint.upload_deadline_s: at most a week (604800), got {}", c.upload_deadline_s));
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
    p.extend(super::task::problems(spec));
    p.extend(super::torchscript::problems(spec));
    let archs = spec.data.source.task().archs();
    // `torchscript` (the user's own module) is checked with its file, in `torchscript::problems`
    let own_model = spec.model.arch == super::TORCHSCRIPT_ARCH;
    if !own_model && !archs.contains(&spec.model.arch.as_str()) {
        let yours = if super::torchscript::allowed(spec) {
            ", or torchscript (your own module, with model.torchscript)"
        } else {
            ""
        };
        p.push(format!(
            "model.arch: unknown model {:?}; known models: {}{yours}",
            spec.model.arch,
            archs.join(", ")
        ));
    }
    if spec.model.width < 1 || spec.model.width > 1024 {
        p.push(format!("model.width: must be between 1 and 1024, got {}", spec.model.width));
    }
    if !(1..=8).contains(&spec.model.blocks) {
        p.push(format!(
            "model.blocks: must be between 1 and 8 (residual blocks per stage), got {}",
            spec.model.blocks
        ));
    } else if spec.model.blocks != 1 && spec.model.arch != "small_resnet" {
        p.push(format!(
            "model.blocks: only small_resnet takes a number of blocks per stage; remove it for {:?}",
            spec.model.arch
        ));
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
        sweep(spec, f, &mut p);
    }
    if spec.ensemble.members > 1_000 {
        p.push(format!("ensemble.members: at most 1000 snapshots, got {}", spec.ensemble.members));
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
    if !(1..=MAX_BATCH_SIZE).contains(&d.batch_size) {
        let key = if d.global_batch_size.is_some() { "global_batch_size" } else { "batch_size" };
        p.push(format!("data.{key}: must be between 1 and {MAX_BATCH_SIZE}, got {}", d.batch_size));
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
    if !(1..=MAX_PREFETCH).contains(&d.prefetch) {
        p.push(format!("data.prefetch: must be between 1 and {MAX_PREFETCH} batches, got {}", d.prefetch));
    }
    if let Some(c) = d.classes.as_ref().filter(|c| c.len() > 10_000) {
        p.push(format!("data.classes: at most 10000 classes, got {}", c.len()));
    } else if let Some(c) = &d.classes {
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
    if steps > MAX_LR_FIND_STEPS {
        p.push(format!("lr_find.steps: at most {MAX_LR_FIND_STEPS}, got {steps}"));
    }
}

fn sweep(spec: &JobSpec, f: &super::LrFindSpec, p: &mut Vec<String>) {
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
    if f.grid_steps > MAX_LR_FIND_STEPS {
        p.push(format!("lr_find.grid_steps: at most {MAX_LR_FIND_STEPS}, got {}", f.grid_steps));
    }
    let Some(c) = &f.candidates else { return };
    // the size first, computed without building the product (each list at most `max` long)
    let lens = [c.arch.len(), c.batch_size.len(), c.weight_decay.len()];
    let points = lens
        .iter()
        .chain(std::iter::once(&(f.grid as usize)))
        .try_fold(1usize, |acc, &n| acc.checked_mul(n.max(1)));
    match points {
        Some(n) if n <= max => {}
        Some(n) => p.push(format!(
            "lr_find: the sweep has {n} tasks (candidate combinations × grid points); at most {max}: shorten the candidate lists or the grid"
        )),
        None => p.push(format!(
            "lr_find: the sweep has more tasks than this machine can count (lists of {} archs, {} batch sizes and {} weight decays); at most {max}: shorten the candidate lists",
            lens[0], lens[1], lens[2]
        )),
    }
    if lens.iter().any(|&n| n > max) {
        return; // do not check (and list) thousands of values one by one
    }
    if c.batch_size.iter().any(|&b| !(1..=MAX_BATCH_SIZE).contains(&b)) {
        p.push(format!(
            "lr_find.candidates.batch_size: every batch size must be between 1 and {MAX_BATCH_SIZE}, got {:?}",
            c.batch_size
        ));
    }
    if c.weight_decay.iter().any(|w| !(*w >= 0.0 && w.is_finite())) {
        p.push(format!("lr_find.candidates.weight_decay: every value must be ≥ 0, got {:?}", c.weight_decay));
    }
    for a in &c.arch {
        if a == super::TORCHSCRIPT_ARCH {
            if spec.model.torchscript.is_none() {
                p.push(
                    "lr_find.candidates.arch: \"torchscript\" names the spec's own module; set model.arch = \"torchscript\" and model.torchscript to its file"
                        .into(),
                );
            }
        } else if !KNOWN_ARCHS.contains(&a.as_str()) {
            let shown: String = a.chars().take(64).collect();
            p.push(format!(
                "lr_find.candidates.arch: unknown model {shown:?}; known models: {}",
                KNOWN_ARCHS.join(", ")
            ));
        }
    }
}

/// Epochs of an SGDR stage, Σ cycle_len·cycle_mult^i over `cycles` cycles, with checked
/// arithmetic; `None` past [`MAX_EPOCHS`] (or on overflow). Bounded work: the sum grows by at
/// least one per cycle, so the loop stops after at most `MAX_EPOCHS + 1` cycles.
pub fn sgdr_epochs(cycles: u32, cycle_len: u32, cycle_mult: u32) -> Option<u64> {
    if cycle_len == 0 || cycle_mult == 0 {
        return Some(0);
    }
    let mut total = 0u64;
    let mut cycle = u64::from(cycle_len);
    for _ in 0..cycles {
        total = total.checked_add(cycle).filter(|t| *t <= MAX_EPOCHS)?;
        cycle = cycle.checked_mul(u64::from(cycle_mult))?.min(MAX_EPOCHS + 1);
    }
    Some(total)
}

fn stages(spec: &JobSpec, p: &mut Vec<String>) {
    if spec.stages.is_empty() {
        p.push("stage: the job has no training stages; add at least one [[stage]] with lr and epochs (or cycles)".into());
    }
    if spec.stages.len() > MAX_STAGES {
        p.push(format!("stage: at most {MAX_STAGES} stages, got {}", spec.stages.len()));
        return;
    }
    let mut lr_found = spec.lr_find.is_some();
    let mut job_epochs = Some(0u64);
    for (i, s) in spec.stages.iter().enumerate() {
        let at = format!("stage {}", i + 1);
        if s.name.as_ref().is_some_and(|n| n.chars().count() > 128) {
            p.push(format!("{at}: name is longer than 128 characters"));
        }
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
            let (cycles, len, mult) = (s.cycles.unwrap_or(1), s.cycle_len.unwrap_or(1), s.cycle_mult);
            let epochs = sgdr_epochs(cycles, len, mult);
            if epochs.is_none() {
                p.push(format!(
                    "{at}: {cycles} cycles of {len} epochs × {mult}^i add up to more than {MAX_EPOCHS} epochs; lower cycles, cycle_len or cycle_mult"
                ));
            }
            job_epochs = job_epochs.zip(epochs).map(|(a, b)| a + b);
        } else {
            if s.cycles.is_some() || s.cycle_len.is_some() || s.cycle_mult != 1 {
                p.push(format!("{at}: cycles, cycle_len and cycle_mult only apply to schedule = \"sgdr\""));
            }
            match s.epochs {
                None => p.push(format!("{at}: epochs is missing (or set cycles and cycle_len for SGDR)")),
                Some(0) => p.push(format!("{at}: epochs must be ≥ 1, got 0")),
                Some(e) if u64::from(e) > MAX_EPOCHS => {
                    p.push(format!("{at}: epochs must be at most {MAX_EPOCHS}, got {e}"));
                    job_epochs = None;
                }
                Some(e) => job_epochs = job_epochs.map(|t| t + u64::from(e)),
            }
        }
    }
    if let Some(total) = job_epochs.filter(|t| *t > MAX_EPOCHS) {
        p.push(format!("stage: the stages add up to {total} epochs; a job trains at most {MAX_EPOCHS}"));
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
    fn label_smoothing_is_for_classifiers_only() {
        assert_eq!(
            check("[[stage]]\nlr = 0.1\nepochs = 1\n[loss]\nlabel_smoothing = 0.1\n"),
            Vec::<String>::new()
        );
        let text = "name = \"t\"\n[data]\nsource = \"text_corpus\"\n[model]\narch = \"awd_lstm\"\n[loss]\nlabel_smoothing = 0.1\n[[stage]]\nlr = 0.1\nepochs = 1\n";
        let problems = match JobSpec::from_toml_str(text, "<test>").unwrap().validate() {
            Err(Error::InvalidSpec { problems }) => problems,
            other => panic!("expected problems, got {other:?}"),
        };
        assert!(
            problems.iter().any(|p| p.starts_with("loss.label_smoothing: 0.1 applies to classifiers")
                && p.contains("\"text_corpus\" trains a language model")),
            "{problems:?}"
        );
    }

    #[test]
    fn blocks_per_stage_are_for_small_resnet_and_bounded() {
        let stage = "[[stage]]\nlr = 0.1\nepochs = 1\n";
        assert_eq!(check(&format!("blocks = 2\n{stage}")), Vec::<String>::new());
        for bad in [0, 9] {
            assert_eq!(
                check(&format!("blocks = {bad}\n{stage}")),
                vec![format!("model.blocks: must be between 1 and 8 (residual blocks per stage), got {bad}")]
            );
        }
        let text = format!("name = \"t\"\n[data]\nsource = \"fashion_mnist\"\n[model]\narch = \"resnet18\"\nblocks = 2\n{stage}");
        match JobSpec::from_toml_str(&text, "<test>").unwrap().validate() {
            Err(Error::InvalidSpec { problems }) => assert_eq!(
                problems,
                vec!["model.blocks: only small_resnet takes a number of blocks per stage; remove it for \"resnet18\"".to_string()]
            ),
            other => panic!("expected problems, got {other:?}"),
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
                "[[stage]]\nlr = 0.1\nepochs = 1\n[loss]\nlabel_smoothing = 1.0\n",
                "loss.label_smoothing: must be in [0, 1) (0.1 is usual), got 1",
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
                "lr_find.candidates.batch_size: every batch size must be between 1 and 16384",
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
            (
                "[[stage]]\nlr = 0.1\nepochs = 1\n[runtime]\nprecision = \"fp16\"\n",
                "runtime.precision = \"fp16\" needs dynamic loss scaling",
            ),
        ];
        for (extra, want) in cases {
            let got = check(extra);
            assert!(got.iter().any(|m| m.starts_with(want)), "for {extra:?}: wanted {want:?}, got {got:?}");
        }
    }

    #[test]
    fn numbers_that_size_queues_threads_and_loops_have_limits() {
        let cases = [
            (
                "[[stage]]\nlr = 0.1\nepochs = 1\n[runtime]\nthreads = 0\n",
                "runtime.threads: must be between 1 and 256",
            ),
            (
                "[[stage]]\nlr = 0.1\nepochs = 1\n[runtime]\nthreads = 100000\n",
                "runtime.threads: must be between 1 and 256",
            ),
            (
                "[[stage]]\nlr = 0.1\nepochs = 1\n[checkpoint]\nmax_pending = 1000000000000000\n",
                "checkpoint.max_pending: at most 16",
            ),
            ("[[stage]]\nlr = 0.1\nepochs = 1\n", ""),
            (
                "[[stage]]\nlr = 0.1\ncycles = 3\ncycle_len = 2147483648\ncycle_mult = 4294967295\n",
                "stage 1: 3 cycles of 2147483648 epochs × 4294967295^i add up to more than 10000 epochs",
            ),
            (
                "[[stage]]\nlr = 0.1\ncycles = 40\ncycle_len = 1\ncycle_mult = 4294967295\n",
                "add up to more than 10000 epochs",
            ),
            ("[[stage]]\nlr = 0.1\nepochs = 4000000000\n", "stage 1: epochs must be at most 10000"),
            (
                "[[stage]]\nlr = 0.1\nepochs = 6000\n[[stage]]\nlr = 0.1\nepochs = 6000\n",
                "stage: the stages add up to 12000 epochs",
            ),
            (
                "[[stage]]\nlr = 0.1\nepochs = 1\n[lr_find]\nsteps = 4000000000\n",
                "lr_find.steps: at most 100000",
            ),
        ];
        for (extra, want) in cases {
            let text = format!("{BASE}{extra}").replace("[data]\n", "[data]\nprefetch = 4\n");
            let spec = JobSpec::from_toml_str(&text, "<t>").unwrap();
            let got = match spec.validate() {
                Ok(()) => vec![],
                Err(Error::InvalidSpec { problems }) => problems,
                Err(e) => panic!("{e}"),
            };
            if want.is_empty() {
                assert!(got.is_empty(), "{got:?}");
            } else {
                assert!(got.iter().any(|m| m.contains(want)), "for {extra:?}: wanted {want:?}, got {got:?}");
            }
        }
        let prefetch = JobSpec::from_toml_str(
            &format!("{BASE}[[stage]]\nlr = 0.1\nepochs = 1\n")
                .replace("[data]\n", "[data]\nprefetch = 1000000000000000\n"),
            "<t>",
        )
        .unwrap();
        assert!(prefetch
            .validate()
            .unwrap_err()
            .to_string()
            .contains("data.prefetch: must be between 1 and 64"));
        let seed = JobSpec::from_toml_str(
            &format!("{BASE}[[stage]]\nlr = 0.1\nepochs = 1\n")
                .replace("name = \"t\"", "name = \"t\"\nseed = 9007199254740993"),
            "<t>",
        )
        .unwrap();
        assert!(seed.validate().unwrap_err().to_string().contains("seed: must be at most 2^53"));
    }

    #[test]
    fn huge_candidate_lists_are_counted_not_built() {
        let mut spec =
            JobSpec::from_toml_str(&format!("{BASE}[lr_find]\n[[stage]]\nlr = 0.1\nepochs = 1\n"), "<t>")
                .unwrap();
        let f = spec.lr_find.as_mut().unwrap();
        f.grid = 64;
        f.candidates = Some(crate::spec::CandidatesSpec {
            batch_size: vec![0; 20_000],
            weight_decay: vec![-1.0; 20_000],
            arch: vec!["nope".into(); 20_000],
        });
        // 20000³ × 64 = 5.12·10^14 combinations: the check multiplies, it never builds them
        let problems = match spec.validate() {
            Err(Error::InvalidSpec { problems }) => problems,
            other => panic!("{other:?}"),
        };
        assert_eq!(problems.len(), 1, "one line, not one per value: {problems:?}");
        assert!(problems[0].contains("the sweep has 512000000000000 tasks"), "{problems:?}");
        // and lists long enough to overflow the count are named as such
        let f = spec.lr_find.as_mut().unwrap();
        f.candidates.as_mut().unwrap().arch = vec!["nope".into(); 1 << 20];
        f.candidates.as_mut().unwrap().batch_size = vec![1; 1 << 20];
        f.candidates.as_mut().unwrap().weight_decay = vec![0.0; 1 << 20];
        let e = spec.validate().unwrap_err().to_string();
        assert!(e.contains("more tasks than this machine can count"), "{e}");
    }

    #[test]
    fn names_cannot_escape_their_folder_or_overflow_it() {
        for bad in ["..", ".", ".hidden", "-flag", "a/b", "", &"x".repeat(240)] {
            let spec = JobSpec::from_toml_str(
                &format!("{BASE}[[stage]]\nlr = 0.1\nepochs = 1\n")
                    .replace("name = \"t\"", &format!("name = {bad:?}")),
                "<t>",
            )
            .unwrap();
            let e = spec.validate().unwrap_err().to_string();
            assert!(e.contains("name:") && e.contains("must be 1 to 64"), "{bad:?}: {e}");
        }
        assert!(super::is_valid_name("fashion-mnist_v1.2"));
        assert!(super::is_valid_name(&"x".repeat(64)));
        assert!(!super::is_valid_name(&"x".repeat(65)));
    }

    #[test]
    fn sgdr_epochs_are_summed_with_checked_arithmetic() {
        use super::sgdr_epochs;
        assert_eq!(sgdr_epochs(3, 1, 2), Some(7));
        assert_eq!(sgdr_epochs(3, 2, 1), Some(6));
        assert_eq!(sgdr_epochs(1, 10_000, 1), Some(10_000));
        assert_eq!(sgdr_epochs(2, 10_000, 1), None);
        assert_eq!(sgdr_epochs(u32::MAX, 1, 1), None, "stops as soon as the sum passes the limit");
        assert_eq!(sgdr_epochs(3, 1 << 31, u32::MAX), None);
        assert_eq!(sgdr_epochs(64, 1, u32::MAX), None);
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
