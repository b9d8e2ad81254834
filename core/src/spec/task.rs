//! Which kind of training a spec asks for, told by its data source, and the checks that depend on
//! it (which models, which sections make sense).

use super::{DataSource, JobSpec};

/// The kinds of training (each a worker task).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    ImageClassification,
    /// A recurrent language model trained with truncated BPTT.
    LanguageModel,
    /// A classifier of texts on a recurrent encoder.
    TextClassification,
    /// Rows of a table: entity embeddings of categorical columns and an MLP.
    Tabular,
}

/// Recurrent text models.
pub const TEXT_ARCHS: &[&str] = &["awd_lstm"];
/// Tabular models.
pub const TABULAR_ARCHS: &[&str] = &["entity_embeddings"];

impl TaskKind {
    /// The architectures this kind of task can train.
    pub fn archs(self) -> &'static [&'static str] {
        match self {
            TaskKind::ImageClassification => super::KNOWN_ARCHS,
            TaskKind::LanguageModel | TaskKind::TextClassification => TEXT_ARCHS,
            TaskKind::Tabular => TABULAR_ARCHS,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TaskKind::ImageClassification => "image classification",
            TaskKind::LanguageModel => "language model",
            TaskKind::TextClassification => "text classification",
            TaskKind::Tabular => "tabular model",
        }
    }

    pub fn is_text(self) -> bool {
        matches!(self, TaskKind::LanguageModel | TaskKind::TextClassification)
    }
}

impl DataSource {
    /// What a job on this source trains.
    pub fn task(self) -> TaskKind {
        match self {
            DataSource::FashionMnist | DataSource::ImageFolder => TaskKind::ImageClassification,
            DataSource::TextCorpus => TaskKind::LanguageModel,
            DataSource::TextCsv => TaskKind::TextClassification,
            DataSource::TabularCsv => TaskKind::Tabular,
        }
    }
}

/// The problems of `spec` that depend on its kind of task.
pub(super) fn problems(spec: &JobSpec) -> Vec<String> {
    let mut p = vec![];
    let kind = spec.data.source.task();
    let source = format!("{:?}", spec.data.source).to_lowercase();
    let not_for =
        |field: &str, why: &str| format!("{field}: not for a {} (data.source {source}); {why}", kind.name());
    if let Some(t) = &spec.data.text {
        p.extend(t.problems());
    }
    if let Some(l) = &spec.model.lstm {
        p.extend(l.problems());
    }
    if let Some(t) = spec.data.test_pct {
        if !(0.0..1.0).contains(&t) || t + spec.data.valid_pct >= 1.0 {
            p.push(format!(
                "data.test_pct: must be in [0, 1) and leave training data beside valid_pct, got {t}"
            ));
        }
    }
    p.extend(tabular_problems(spec, kind, &not_for));
    if kind.is_text() || kind == TaskKind::Tabular {
        if spec.data.augment.is_some() {
            p.push(not_for("data.augment", "remove it"));
        }
        if spec.tta.is_some() {
            p.push(not_for("tta", "remove it"));
        }
        if spec.data.classes.is_some() {
            let use_instead =
                if kind.is_text() { "use data.text.labels" } else { "use data.tabular.classes" };
            p.push(not_for("data.classes", use_instead));
        }
        if spec.model.pretrained.is_some() {
            let why = if kind.is_text() {
                "a text classifier starts from a language model with model.encoder"
            } else {
                "remove it"
            };
            p.push(not_for("model.pretrained", why));
        }
        if spec.stages.iter().any(|s| s.precompute) {
            p.push(not_for("precompute", "train the head with freeze = true instead"));
        }
    }
    if !kind.is_text() {
        if spec.data.text.is_some() {
            p.push(not_for("data.text", "remove it"));
        }
        if spec.model.lstm.is_some() {
            p.push(not_for("model.lstm", "remove it"));
        }
    }
    if spec.model.encoder.is_some() && kind != super::task::TaskKind::TextClassification {
        p.push(not_for("model.encoder", "only a text classifier starts from a language model's encoder"));
    }
    if let Some(url) = &spec.model.encoder {
        if url.contains("://") && !url.starts_with("file://") && !url.starts_with("s3://") {
            p.push(format!("model.encoder: {url:?}: unsupported scheme; use file://PATH, a plain path or s3://bucket/prefix"));
        }
    }
    let own_test = !matches!(spec.data.source, DataSource::TextCsv | DataSource::TabularCsv);
    if spec.data.test_pct.is_some() && own_test {
        p.push(not_for("data.test_pct", "the source has its own test split"));
    }
    p
}

/// The problems of a tabular job's sections, and of those sections in another kind of job.
fn tabular_problems(spec: &JobSpec, kind: TaskKind, not_for: &dyn Fn(&str, &str) -> String) -> Vec<String> {
    let mut p = vec![];
    if kind != TaskKind::Tabular {
        if spec.data.tabular.is_some() {
            p.push(not_for("data.tabular", "remove it"));
        }
        if spec.model.tabular.is_some() {
            p.push(not_for("model.tabular", "remove it"));
        }
        return p;
    }
    if spec.data.path.as_deref().unwrap_or("").is_empty() {
        p.push("data.path: required for source = \"tabular_csv\" (the CSV file)".into());
    }
    if spec.data.batch_size < 2 {
        p.push(format!(
            "data.batch_size: a tabular model needs at least 2 rows per batch (its BatchNorm layers), got {}",
            spec.data.batch_size
        ));
    }
    match &spec.data.tabular {
        None => p.push(
            "data.tabular: required for source = \"tabular_csv\": give target and the categorical / continuous / dates columns"
                .into(),
        ),
        Some(t) => p.extend(t.problems(spec.model.tabular.as_ref(), spec.data.test_pct)),
    }
    p
}
