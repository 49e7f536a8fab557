//! The TPC against every MUSIC-AVQA test and validation record (13,697) and against the spec's
//! table itself: template matching, the prompt each rule gives (computed here a second time,
//! straight from `spec/tspm.md`), question types, slot vocabularies, and the free-text round
//! trip. Run with `--nocapture` to see the per-template counts and the round-trip figures.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use tspm_edge::prompts::{PromptError, Question, SlotKind, templates};

use crate::util::shared_dir;

#[derive(Deserialize)]
struct Record {
    question_id: u64,
    question_content: String,
    templ_values: String,
    #[serde(rename = "type")]
    question_type: String,
}

fn records() -> Vec<Record> {
    let dir = shared_dir().join("data/music-avqa");
    let mut all = Vec::new();
    for name in ["music_avqa_test.json", "music_avqa_val.json"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        let records: Vec<Record> = serde_json::from_str(&text).unwrap();
        all.extend(records);
    }
    assert_eq!(all.len(), 13_697);
    all
}

/// `templ_values` is a list string: JSON (`["violin", "piano"]`) in these files, Python-style
/// (`['violin', 'piano']`) in others. Values never contain commas or quotes.
fn list_values(list: &str) -> Vec<String> {
    if let Ok(values) = serde_json::from_str::<Vec<String>>(list) {
        return values;
    }
    let inner = list.trim().trim_start_matches('[').trim_end_matches(']');
    inner
        .split(',')
        .map(|v| v.trim().trim_matches(|c| c == '\'' || c == '"').to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The (template, prompt rule) rows of the spec's §3 table.
fn spec_table() -> Vec<(String, String)> {
    let spec = std::fs::read_to_string(shared_dir().join("spec/tspm.md")).unwrap();
    let section = spec
        .split("## 3. Text Prompt Constructor")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let rows: Vec<(String, String)> = section
        .lines()
        .filter(|line| line.starts_with("| ") && !line.starts_with("| template |"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
            assert_eq!(cells.len(), 2, "{line}");
            (cells[0].trim().replace('`', ""), cells[1].trim().to_owned())
        })
        .collect();
    assert_eq!(rows.len(), 33);
    rows
}

/// The simplest reading of the spec, independent of `src/prompts.rs`: `{instr}` is the
/// first value (in every rule that uses it, the `<Object>` is the first slot), `{sN}` the
/// N-th, `{last slot}` the last.
fn expected_prompt(rule: &str, values: &[String]) -> String {
    let mut prompt = rule.to_owned();
    if let Some(first) = values.first() {
        prompt = prompt.replace("{instr}", first);
    }
    if let Some(last) = values.last() {
        prompt = prompt.replace("{last slot}", last);
    }
    for (i, value) in values.iter().enumerate() {
        prompt = prompt.replace(&format!("{{s{}}}", i + 1), value);
    }
    assert!(!prompt.contains('{'), "{rule} with {values:?}");
    prompt
}

/// The data's template text in the spec's spelling: ASCII `?`, no trailing space.
fn spec_spelling(question_content: &str) -> String {
    question_content.replace('\u{FF1F}', "?").trim().to_owned()
}

fn expected_text(template: &str, values: &[String]) -> String {
    let mut text = template.to_owned();
    for value in values {
        let start = text.find('<').unwrap();
        let end = start + text[start..].find('>').unwrap();
        text.replace_range(start..=end, value);
    }
    text
}

#[test]
fn table_matches_spec() {
    let spec = spec_table();
    for (template, (text, rule)) in templates().iter().zip(&spec) {
        assert_eq!(template.text(), text);
        assert_eq!(template.prompt_rule(), rule);
    }
}

#[test]
fn every_record_gets_the_spec_prompt() {
    let spec: BTreeMap<String, String> = spec_table().into_iter().collect();
    let mut per_template: BTreeMap<usize, usize> = BTreeMap::new();
    for record in records() {
        let values = list_values(&record.templ_values);
        let question = Question::from_template(&record.question_content, &values)
            .unwrap_or_else(|e| panic!("question {}: {e}", record.question_id));
        let template = spec_spelling(&record.question_content);
        let rule = &spec[&template];
        assert_eq!(
            question.prompt(),
            expected_prompt(rule, &values),
            "question {}",
            record.question_id
        );
        assert_eq!(question.text(), expected_text(&template, &values));
        assert_eq!(question.values(), values);
        let data_type: Vec<String> = serde_json::from_str(&record.question_type).unwrap();
        assert_eq!(
            question.template().question_type().data_labels(),
            [data_type[0].as_str(), data_type[1].as_str()],
            "question {}",
            record.question_id
        );
        *per_template.entry(question.template().id()).or_default() += 1;
    }
    println!("records per template:");
    for (id, count) in &per_template {
        println!("{count:6}  {id:2}  {}", templates()[*id].text());
    }
    assert_eq!(per_template.len(), 33, "every template occurs in the data");
}

#[test]
fn slot_vocabularies_are_exactly_the_data_values() {
    let mut seen: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    for record in records() {
        let values = list_values(&record.templ_values);
        let question = Question::from_template(&record.question_content, &values).unwrap();
        for (kind, value) in question.template().slots().iter().zip(values) {
            seen.entry(kind.marker()).or_default().insert(value);
        }
    }
    for kind in SlotKind::ALL {
        let table: BTreeSet<String> = kind.values().iter().map(|v| v.to_string()).collect();
        assert_eq!(seen[kind.marker()], table, "{kind}");
    }
}

#[test]
fn free_text_round_trip() {
    let records = records();
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    let mut ok = [0usize; 2];
    for record in &records {
        let question =
            Question::from_template(&record.question_content, &list_values(&record.templ_values))
                .unwrap();
        let plain = question.text().to_lowercase().replace('?', "");
        for (i, text) in [question.text(), plain.as_str()].into_iter().enumerate() {
            match Question::parse_free_text(text) {
                Ok(parsed) if parsed == question => ok[i] += 1,
                Ok(parsed) => {
                    *failures
                        .entry(format!("wrong reading: {}", parsed.text()))
                        .or_default() += 1
                }
                Err(e) => {
                    let kind = match e {
                        PromptError::NoTemplate { .. } => "no template",
                        PromptError::SlotCount { .. } => "slot count",
                        PromptError::UnknownValue { .. } => "unknown value",
                        PromptError::Ambiguous { .. } => "ambiguous",
                    };
                    *failures.entry(format!("{kind}: {text}")).or_default() += 1
                }
            }
        }
    }
    let n = records.len();
    for (label, ok) in ["as filled", "lower case, no '?'"].iter().zip(ok) {
        println!(
            "round trip ({label}): {ok}/{n} = {:.2} %",
            100.0 * ok as f64 / n as f64
        );
    }
    for (failure, count) in &failures {
        println!("{count:6}  {failure}");
    }
    for ok in ok {
        assert!(ok * 100 >= n * 99, "round trip below 99 %: {ok}/{n}");
    }
}

#[test]
fn no_template_error_quotes_the_question_and_close_templates() {
    let err = Question::parse_free_text("Is the violin quieter than the piano?").unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with(
            "no question template matches \"Is the violin quieter than the piano?\"; \
             closest templates: \"Is the <Object> louder than the <Object>?\", "
        ),
        "{message}"
    );
    let PromptError::NoTemplate { closest, .. } = err else {
        panic!("{message}")
    };
    assert_eq!(closest.len(), 3);

    let err = Question::from_template("Where is the <Object> playing?", &["violin"]).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("\"Where is the <Object> playing?\""),
        "{message}"
    );
    let PromptError::NoTemplate { closest, .. } = err else {
        panic!("{message}")
    };
    assert!(
        closest.iter().all(|t| t.starts_with("Where is the ")),
        "{closest:?}"
    );
}

#[test]
fn wrong_slot_count() {
    let err = Question::from_template("Is the <Object> louder than the <Object>?", &["violin"])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "template \"Is the <Object> louder than the <Object>?\" has 2 slots \
         (<Object>, <Object>), got 1 value: [\"violin\"]"
    );
    let err =
        Question::from_template("Where is the <LL> instrument?", &["loudest", "left"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "template \"Where is the <LL> instrument?\" has 1 slot (<LL>), got 2 values: \
         [\"loudest\", \"left\"]"
    );
}

#[test]
fn unknown_values() {
    let err = Question::parse_free_text("How many sounding kazoo in the video?").unwrap_err();
    let known = SlotKind::Object.values().join(", ");
    assert_eq!(
        err.to_string(),
        format!("unknown instrument \"kazoo\"; known: {known}")
    );
    assert!(known.starts_with("accordion, acoustic_guitar, bagpipe,"));

    let err =
        Question::parse_free_text("What kind of instrument is the top instrument").unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown side \"top\"; known: leftest, rightest"
    );

    let err = Question::from_template("Is there a <Object> sound?", &["kazoo"]).unwrap_err();
    assert_eq!(
        err,
        PromptError::UnknownValue {
            kind: SlotKind::Object,
            value: "kazoo".into()
        }
    );
}
