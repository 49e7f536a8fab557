//! `tspm-edge prompts`: MUSIC-AVQA-style question records → filled question text and
//! declarative prompt, one JSON object per line, through the same prompt constructor as
//! `answer` and the daemon. Training and evaluation (`models/`) call it, so the text the head
//! learns from is the text it is served.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::prompts::Question;

/// Arguments of `prompts`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A JSON array of records with `question_id`, `question_content` (a template with
    /// `<Object>`-style slots) and `templ_values` (a JSON list, or a string holding one), as
    /// in MUSIC-AVQA's files.
    #[arg(required_unless_present = "all_texts")]
    pub records: Option<PathBuf>,
    /// Instead: print every distinct question text and prompt the templates can make with
    /// their known slot values, one per line, sorted (`models/data/question_texts.txt`).
    #[arg(long, conflicts_with = "records")]
    pub all_texts: bool,
}

#[derive(Debug, Deserialize)]
struct Record {
    question_id: serde_json::Value,
    question_content: String,
    #[serde(default)]
    templ_values: serde_json::Value,
}

#[derive(Debug, Serialize)]
struct Prompted<'a> {
    question_id: &'a serde_json::Value,
    template_id: usize,
    question: &'a str,
    prompt: &'a str,
}

/// Runs `prompts`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let Some(records) = args.records else {
        for text in crate::prompts::every_text() {
            writeln!(out, "{text}")?;
        }
        out.flush()?;
        return Ok(());
    };
    let text = std::fs::read_to_string(&records)
        .with_context(|| format!("reading {}", records.display()))?;
    let records: Vec<Record> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected a JSON array of records with question_id, question_content, \
             templ_values",
            records.display()
        )
    })?;
    for (i, record) in records.iter().enumerate() {
        let values = list_values(&record.templ_values).with_context(|| {
            format!(
                "record {i} (question_id {}): templ_values",
                record.question_id
            )
        })?;
        let question = Question::from_template(&record.question_content, &values)
            .with_context(|| format!("record {i} (question_id {})", record.question_id))?;
        let line = Prompted {
            question_id: &record.question_id,
            template_id: question.template().id(),
            question: question.text(),
            prompt: question.prompt(),
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// `templ_values` as MUSIC-AVQA writes it: a string holding a JSON list (`"[\"violin\"]"`)
/// or Python-style (`"['violin']"`), or a plain JSON list.
fn list_values(value: &serde_json::Value) -> anyhow::Result<Vec<String>> {
    match value {
        serde_json::Value::Null => Ok(Vec::new()),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .context("expected a list of strings")
            })
            .collect(),
        serde_json::Value::String(list) => {
            if let Ok(values) = serde_json::from_str::<Vec<String>>(list) {
                return Ok(values);
            }
            let inner = list.trim();
            let inner = inner
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .with_context(|| format!("expected a list like [\"violin\"], got {list:?}"))?;
            Ok(inner
                .split(',')
                .map(|v| v.trim().trim_matches(|c| c == '\'' || c == '"').to_owned())
                .filter(|v| !v.is_empty())
                .collect())
        }
        other => anyhow::bail!("expected a list of strings, got {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_values_reads_every_spelling() {
        let s = |v: &str| serde_json::Value::String(v.into());
        assert_eq!(
            list_values(&s("[\"violin\", \"piano\"]")).unwrap(),
            ["violin", "piano"]
        );
        assert_eq!(
            list_values(&s("['left', 'cello']")).unwrap(),
            ["left", "cello"]
        );
        assert_eq!(list_values(&s("[]")).unwrap(), Vec::<String>::new());
        assert_eq!(list_values(&serde_json::json!(["a"])).unwrap(), ["a"]);
        assert!(list_values(&s("violin")).is_err());
    }
}
