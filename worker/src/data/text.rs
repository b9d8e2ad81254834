//! Text data: documents read from plain-text files (a language model's corpus) or from labelled
//! CSV files (a classifier's examples, the `csv` crate), and the tokenizer (the `tokenizers`
//! crate's BPE, its vocabulary trained on the training text only) that turns them into ids.
//!
//! Limits are checked while reading, before anything grows: a file larger than
//! [`MAX_FILE_BYTES`] or a document longer than [`MAX_DOC_BYTES`] is an error naming it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::normalizers::{Lowercase, NormalizerWrapper, Sequence, NFKC};
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::{AddedToken, Tokenizer, TokenizerImpl};

/// The tokenizer's special tokens, at ids 0, 1, 2.
pub const UNK: &str = "<unk>";
pub const PAD: &str = "<pad>";
/// Marks the start of each document in a language model's stream.
pub const BOS: &str = "<bos>";
pub const PAD_ID: i64 = 1;
pub const BOS_ID: i64 = 2;

/// A text file or CSV larger than this is refused (1 GiB).
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// One document (a line of CSV, a review) longer than this is refused (1 MiB).
pub const MAX_DOC_BYTES: usize = 1 << 20;

/// What can go wrong reading text.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

pub type Result<T> = std::result::Result<T, TextError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TextError + '_ {
    move |source| TextError::Io { path: path.to_path_buf(), source }
}

fn invalid(path: &Path, message: impl Into<String>) -> TextError {
    TextError::Invalid { path: path.to_path_buf(), message: message.into() }
}

/// Every `.txt` file under `path` (a file, or a folder searched recursively), in name order.
pub fn text_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = vec![];
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let p = entry.map_err(io(&dir))?.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "txt") {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Read a text file whole, refusing one over [`MAX_FILE_BYTES`] or not UTF-8.
pub fn read_text(path: &Path) -> Result<String> {
    let len = std::fs::metadata(path).map_err(io(path))?.len();
    if len > MAX_FILE_BYTES {
        return Err(invalid(
            path,
            format!("{len} bytes is over the limit of {MAX_FILE_BYTES}; split the file"),
        ));
    }
    let bytes = std::fs::read(path).map_err(io(path))?;
    String::from_utf8(bytes).map_err(|e| invalid(path, format!("not UTF-8 text ({e})")))
}

/// The documents of a corpus: every non-empty line of every `.txt` file under each of `paths`
/// (a paragraph, a speech, a snippet), in file-name order.
pub fn read_documents(paths: &[PathBuf]) -> Result<Vec<String>> {
    let mut docs = vec![];
    for root in paths {
        for file in text_files(root)? {
            let text = read_text(&file)?;
            docs.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from));
        }
    }
    Ok(docs)
}

/// One row of a CSV file of texts: its line in the file (the header is line 1), its text, and its
/// label when the file has the label column.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvText {
    pub line: u64,
    pub text: String,
    pub label: Option<String>,
}

/// A CSV file of texts, read.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvTexts {
    pub rows: Vec<CsvText>,
    /// The header's column names.
    pub columns: Vec<String>,
    /// Whether the file has the label column.
    pub has_label: bool,
}

/// The rows of a CSV file with a header: the text of column `text_column` and, when the file has
/// one, the label of column `label_column`.
pub fn read_csv_texts(path: &Path, text_column: &str, label_column: &str) -> Result<CsvTexts> {
    let len = std::fs::metadata(path).map_err(io(path))?.len();
    if len > MAX_FILE_BYTES {
        return Err(invalid(path, format!("{len} bytes is over the limit of {MAX_FILE_BYTES}")));
    }
    let mut reader =
        csv::ReaderBuilder::new().flexible(false).from_path(path).map_err(|e| csv_error(path, e))?;
    let columns: Vec<String> =
        reader.headers().map_err(|e| csv_error(path, e))?.iter().map(String::from).collect();
    let column = |name: &str| columns.iter().position(|h| h == name);
    let Some(ti) = column(text_column) else {
        return Err(no_column(path, text_column, &columns));
    };
    let li = column(label_column);
    let mut rows = vec![];
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| csv_error(path, e))?;
        let line = record.position().map_or(i as u64 + 2, |p| p.line());
        let text = record.get(ti).unwrap_or_default();
        if text.len() > MAX_DOC_BYTES {
            return Err(invalid(
                path,
                format!("row {line}: the text is {} bytes, over the limit of {MAX_DOC_BYTES}", text.len()),
            ));
        }
        let label = li.map(|li| record.get(li).unwrap_or_default().to_string());
        rows.push(CsvText { line, text: text.to_string(), label });
    }
    Ok(CsvTexts { rows, has_label: li.is_some(), columns })
}

fn no_column(path: &Path, name: &str, columns: &[String]) -> TextError {
    invalid(path, format!("has no column {name:?}; its columns are {columns:?}"))
}

/// Labelled examples from a CSV file with a header: the text of column `text_column` and the
/// label of column `label_column`; rows whose label is not in `keep` (when given) are skipped.
pub fn read_labelled_csv(
    path: &Path,
    text_column: &str,
    label_column: &str,
    keep: Option<&[String]>,
) -> Result<Vec<(String, String)>> {
    let read = read_csv_texts(path, text_column, label_column)?;
    if !read.has_label {
        return Err(no_column(path, label_column, &read.columns));
    }
    Ok(read
        .rows
        .into_iter()
        .filter_map(|r| {
            let label = r.label.unwrap_or_default();
            keep.is_none_or(|k| k.contains(&label)).then_some((r.text, label))
        })
        .collect())
}

fn csv_error(path: &Path, e: csv::Error) -> TextError {
    let at = e.position().map(|p| format!(" (line {})", p.line())).unwrap_or_default();
    invalid(path, format!("not a well-formed CSV{at}: {e}"))
}

/// A BPE tokenizer (NFKC, lower case, split on whitespace and punctuation) whose vocabulary of
/// at most `vocab_size` tokens is learned from `texts`; tokens seen fewer than `min_frequency`
/// times are not merged. Deterministic: the same texts give the same tokenizer.
pub fn train_tokenizer(texts: &[String], vocab_size: usize, min_frequency: u64) -> Result<Tokenizer> {
    // one thread: the counts and the merges do not depend on a thread schedule
    tokenizers::utils::parallelism::set_parallelism(false);
    let tk_err = |e: tokenizers::Error| TextError::Tokenizer(e.to_string());
    let bpe = BPE::builder().unk_token(UNK.into()).build().map_err(tk_err)?;
    let mut tokenizer: TokenizerImpl<_, NormalizerWrapper, _, _, _> =
        Tokenizer::new(ModelWrapper::BPE(bpe)).into_inner();
    tokenizer.with_normalizer(Some(NormalizerWrapper::Sequence(Sequence::new(vec![
        NFKC.into(),
        Lowercase.into(),
    ]))));
    tokenizer.with_pre_tokenizer(Some(Whitespace {}));
    let specials = [UNK, PAD, BOS].iter().map(|t| AddedToken::from(t.to_string(), true)).collect();
    let trainer = BpeTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(min_frequency)
        .special_tokens(specials)
        .show_progress(false)
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    tokenizer.train(&mut trainer, texts.iter()).map_err(tk_err)?;
    Ok(Tokenizer::from(tokenizer))
}

/// A tokenizer from its JSON (`tokenizer.json`, as [`tokenizer_json`] writes it).
pub fn load_tokenizer(json: &str) -> Result<Tokenizer> {
    json.parse::<Tokenizer>().map_err(|e| TextError::Tokenizer(format!("not a tokenizer.json: {e}")))
}

/// The tokenizer's JSON.
pub fn tokenizer_json(t: &Tokenizer) -> Result<String> {
    t.to_string(false).map_err(|e| TextError::Tokenizer(e.to_string()))
}

/// Vocabulary size (special tokens included).
pub fn vocab_size(t: &Tokenizer) -> usize {
    t.get_vocab_size(true)
}

/// Token ids of `text`.
pub fn encode(t: &Tokenizer, text: &str) -> Result<Vec<i64>> {
    let enc = t.encode(text, false).map_err(|e| TextError::Tokenizer(e.to_string()))?;
    Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
}

/// Class names in index order: `labels` when given, else the sorted distinct labels of `rows`.
pub fn class_names(rows: &[(String, String)], labels: Option<&[String]>) -> Vec<String> {
    match labels {
        Some(l) => l.to_vec(),
        None => {
            let set: BTreeMap<&str, ()> = rows.iter().map(|(_, l)| (l.as_str(), ())).collect();
            set.into_keys().map(String::from).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<String> {
        (0..200)
            .map(|i| {
                format!("The whale, the sea and the ship number {}. Call me Ishmael! A fine day.", i % 7)
            })
            .collect()
    }

    #[test]
    fn a_trained_tokenizer_round_trips_through_json_and_is_deterministic() {
        let a = train_tokenizer(&corpus(), 120, 2).unwrap();
        let b = train_tokenizer(&corpus(), 120, 2).unwrap();
        assert_eq!(tokenizer_json(&a).unwrap(), tokenizer_json(&b).unwrap());
        assert_eq!(a.token_to_id(UNK), Some(0));
        assert_eq!(a.token_to_id(PAD), Some(PAD_ID as u32));
        assert_eq!(a.token_to_id(BOS), Some(BOS_ID as u32));
        let back = load_tokenizer(&tokenizer_json(&a).unwrap()).unwrap();
        let ids = encode(&a, "Call me Ishmael, the whale!").unwrap();
        assert_eq!(ids, encode(&back, "Call me Ishmael, the whale!").unwrap());
        assert!(!ids.is_empty() && ids.iter().all(|&i| (i as usize) < vocab_size(&a)));
        // lower-cased
        assert_eq!(encode(&a, "WHALE").unwrap(), encode(&a, "whale").unwrap());
        assert!(load_tokenizer("{\"not\": 1}").unwrap_err().to_string().contains("not a tokenizer.json"));
    }

    #[test]
    fn csv_rows_are_filtered_and_bad_files_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("a.csv");
        std::fs::write(&good, "text,label\n\"great, fun\",fresh\nboring,rotten\nsome plot,plot\n").unwrap();
        let keep = ["rotten".to_string(), "fresh".to_string()];
        let rows = read_labelled_csv(&good, "text", "label", Some(&keep)).unwrap();
        assert_eq!(rows, vec![("great, fun".into(), "fresh".into()), ("boring".into(), "rotten".into())]);
        assert_eq!(class_names(&rows, None), vec!["fresh".to_string(), "rotten".into()]);
        let e = read_labelled_csv(&good, "review", "label", None).unwrap_err().to_string();
        assert!(e.contains("has no column \"review\""), "{e}");
        let ragged = dir.path().join("b.csv");
        std::fs::write(&ragged, "text,label\nok,fresh\nthree,fields,here\n").unwrap();
        let e = read_labelled_csv(&ragged, "text", "label", None).unwrap_err().to_string();
        assert!(e.contains("not a well-formed CSV (line 3)"), "{e}");
    }

    #[test]
    fn csv_texts_keep_their_lines_and_need_no_label_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.csv");
        // a quoted text over two lines: the next row starts on line 4
        std::fs::write(&path, "id,text\n1,\"first\nand more\"\n2,second\n").unwrap();
        let read = read_csv_texts(&path, "text", "label").unwrap();
        assert!(!read.has_label);
        assert_eq!(read.columns, vec!["id".to_string(), "text".into()]);
        let got: Vec<(u64, &str)> = read.rows.iter().map(|r| (r.line, r.text.as_str())).collect();
        assert_eq!(got, vec![(2, "first\nand more"), (4, "second")]);
        assert!(read.rows.iter().all(|r| r.label.is_none()));
        // training needs the label column, and says which columns the file has
        let e = read_labelled_csv(&path, "text", "label", None).unwrap_err().to_string();
        assert!(e.contains("has no column \"label\"") && e.contains("\"id\""), "{e}");
    }
}
