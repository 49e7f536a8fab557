//! The Text Prompt Constructor (TPC): MUSIC-AVQA question templates → filled questions and
//! declarative prompts (spec `tspm.md` §3).
//!
//! **Owns:** the 33 templates as data ([`templates`]), the vocabulary of each slot kind
//! ([`known_values`]), the matching of a question to its template, and the two strings the
//! text encoder embeds for a question: the *question text* (the template with its slots
//! filled) and the *prompt* (the declarative sentence of the template's rule). It is pure: no
//! I/O, no threads, no model. Whoever answers a question (the engine thread, the CLI) calls
//! it before running the text encoder.
//!
//! **Two ways in.**
//! - [`Question::from_template`]: a template text (as in the data's `question_content`) and
//!   its slot values in order (the data's `templ_values`).
//! - [`Question::parse_free_text`]: what a user typed, without brackets, e.g. `is the violin
//!   louder than the piano`. Each template is compiled into a word pattern in which each slot
//!   matches the known values of its kind; articles (`a`, `an`, `the`), punctuation and case
//!   are ignored, `acoustic guitar` matches `acoustic_guitar`, and an instrument may take a
//!   plural `s`/`es` (`violins`).
//!
//! **Matching a template text** compares normalised forms: full-width punctuation becomes
//! ASCII (`？` → `?`; the data's `How many sounding <Object> in the video？` is one such
//! case), whitespace is collapsed and trimmed, a space before punctuation is dropped (the data
//! has `Are there <Object> and <Object> sound? ` with a trailing space), and case is ignored.
//! The text we produce is always built from the canonical (spec) spelling of the template.
//!
//! **Slot values are kept as in the data** (`acoustic_guitar`, with its underscore) both in
//! the question text and in the prompt: the spec says so, and the embeddings the head was
//! trained on were made from these strings, so prettifying them here would move the device's
//! inputs away from the training inputs. Input values are matched case-insensitively, with a
//! space or `-` accepted for the underscore, and a few aliases (`leftmost` → `leftest`,
//! `center` → `middle`); the [`Question`] always holds the data's spelling.
//!
//! **Errors are never a silent default:** no template ([`PromptError::NoTemplate`], naming
//! the three closest templates), a wrong number of values ([`PromptError::SlotCount`]), a value
//! outside its slot's vocabulary ([`PromptError::UnknownValue`], listing the known ones), or
//! free text with more than one reading ([`PromptError::Ambiguous`]).
//!
//! **Invariants** (checked by the unit tests): each template's `slots` list the markers of its
//! text in order; each prompt rule uses only placeholders its template can fill (`{instr}`
//! only where there is exactly one `<Object>`); ids are indices into [`templates`] and are
//! stable (new templates are appended).

use std::fmt;
use std::sync::OnceLock;

/// The kind of a template slot, named after its marker in the template text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotKind {
    /// `<Object>`: an instrument (`violin`, `acoustic_guitar`, …).
    Object,
    /// `<LR>`: a position (`left`, `right`, `middle`).
    Lr,
    /// `<LL>`: a loudness extreme (`loudest`, `lowest`).
    Ll,
    /// `<FL>`: an order (`first`, `last`).
    Fl,
    /// `<TH>`: an ordinal (`first` … `fifth`).
    Th,
    /// `<BA>`: a temporal relation (`before`, `after`).
    Ba,
    /// `<LRer>`: a side (`leftest`, `rightest`).
    Lrer,
}

impl SlotKind {
    /// Every slot kind, in marker order of the spec.
    pub const ALL: [SlotKind; 7] = [
        SlotKind::Object,
        SlotKind::Lr,
        SlotKind::Ll,
        SlotKind::Fl,
        SlotKind::Th,
        SlotKind::Ba,
        SlotKind::Lrer,
    ];

    /// The marker in a template text, e.g. `<Object>`.
    pub fn marker(self) -> &'static str {
        match self {
            SlotKind::Object => "<Object>",
            SlotKind::Lr => "<LR>",
            SlotKind::Ll => "<LL>",
            SlotKind::Fl => "<FL>",
            SlotKind::Th => "<TH>",
            SlotKind::Ba => "<BA>",
            SlotKind::Lrer => "<LRer>",
        }
    }

    /// What a value of this kind is, for messages: "unknown instrument …".
    pub fn noun(self) -> &'static str {
        match self {
            SlotKind::Object => "instrument",
            SlotKind::Lr => "position",
            SlotKind::Ll => "loudness",
            SlotKind::Fl => "order",
            SlotKind::Th => "ordinal",
            SlotKind::Ba => "relation",
            SlotKind::Lrer => "side",
        }
    }

    /// The values this slot takes, spelt as in the data.
    pub fn values(self) -> &'static [&'static str] {
        match self {
            SlotKind::Object => INSTRUMENTS,
            SlotKind::Lr => LR_VALUES,
            SlotKind::Ll => LL_VALUES,
            SlotKind::Fl => FL_VALUES,
            SlotKind::Th => TH_VALUES,
            SlotKind::Ba => BA_VALUES,
            SlotKind::Lrer => LRER_VALUES,
        }
    }

    fn from_marker(marker: &str) -> Option<SlotKind> {
        SlotKind::ALL
            .into_iter()
            .find(|kind| kind.marker().eq_ignore_ascii_case(marker))
    }
}

impl fmt::Display for SlotKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.marker())
    }
}

// The slot vocabularies were derived from the data: every `templ_values` entry of
// `music_avqa_test.json` and `music_avqa_val.json` (13,697 records), paired with the marker
// at the same position in `question_content`. Each list is exactly the set of values that
// occur there; `tests/prompts.rs` checks both directions. (`<LL>` is loudest/lowest and
// `<LRer>` is leftest/rightest in the data, not what the marker names suggest.)
const INSTRUMENTS: &[&str] = &[
    "accordion",
    "acoustic_guitar",
    "bagpipe",
    "banjo",
    "bassoon",
    "cello",
    "clarinet",
    "congas",
    "drum",
    "electric_bass",
    "erhu",
    "flute",
    "guzheng",
    "piano",
    "pipa",
    "saxophone",
    "suona",
    "trumpet",
    "tuba",
    "ukulele",
    "violin",
    "xylophone",
];
const LR_VALUES: &[&str] = &["left", "right", "middle"];
const LL_VALUES: &[&str] = &["loudest", "lowest"];
const FL_VALUES: &[&str] = &["first", "last"];
const TH_VALUES: &[&str] = &["first", "second", "third", "fourth", "fifth"];
const BA_VALUES: &[&str] = &["before", "after"];
const LRER_VALUES: &[&str] = &["leftest", "rightest"];

/// Other spellings a person may use, mapped to the data's value. Not in the data, so kept
/// apart from the vocabularies above.
const ALIASES: &[(SlotKind, &str, &str)] = &[
    (SlotKind::Lrer, "leftmost", "leftest"),
    (SlotKind::Lrer, "rightmost", "rightest"),
    (SlotKind::Lr, "center", "middle"),
    (SlotKind::Lr, "centre", "middle"),
];

/// Every slot kind with its known values (spelt as in the data), for help texts and errors.
pub fn known_values() -> [(SlotKind, &'static [&'static str]); 7] {
    SlotKind::ALL.map(|kind| (kind, kind.values()))
}

/// The modality half of a MUSIC-AVQA question type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Modality {
    /// `Audio`.
    Audio,
    /// `Visual`.
    Visual,
    /// `Audio-Visual`.
    AudioVisual,
}

/// The kind half of a MUSIC-AVQA question type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuestionKind {
    /// `Counting`.
    Counting,
    /// `Comparative`.
    Comparative,
    /// `Existential`.
    Existential,
    /// `Location`.
    Location,
    /// `Temporal`.
    Temporal,
}

/// A MUSIC-AVQA question type, the data's `type` field. Each template has exactly one in the
/// test and validation splits, so it is part of the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuestionType {
    /// Audio, Visual or Audio-Visual.
    pub modality: Modality,
    /// Counting, Comparative, …
    pub kind: QuestionKind,
}

impl QuestionType {
    /// The two labels as the data writes them, e.g. `["Audio-Visual", "Location"]`.
    pub fn data_labels(self) -> [&'static str; 2] {
        let modality = match self.modality {
            Modality::Audio => "Audio",
            Modality::Visual => "Visual",
            Modality::AudioVisual => "Audio-Visual",
        };
        let kind = match self.kind {
            QuestionKind::Counting => "Counting",
            QuestionKind::Comparative => "Comparative",
            QuestionKind::Existential => "Existential",
            QuestionKind::Location => "Location",
            QuestionKind::Temporal => "Temporal",
        };
        [modality, kind]
    }
}

impl fmt::Display for QuestionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [modality, kind] = self.data_labels();
        write!(f, "{modality} {kind}")
    }
}

/// One question template and its prompt rule.
#[derive(Debug, PartialEq, Eq)]
pub struct Template {
    id: usize,
    text: &'static str,
    slots: &'static [SlotKind],
    question_type: QuestionType,
    prompt_rule: &'static str,
}

impl Template {
    /// Stable id: the index in [`templates`] (the order of the spec's table).
    pub fn id(&self) -> usize {
        self.id
    }

    /// The canonical template text, with its slot markers, e.g. `Is the <Object> louder than
    /// the <Object>?`.
    pub fn text(&self) -> &'static str {
        self.text
    }

    /// The slots, in the order of the text (and of the values).
    pub fn slots(&self) -> &'static [SlotKind] {
        self.slots
    }

    /// The question type the data gives every question of this template.
    pub fn question_type(&self) -> QuestionType {
        self.question_type
    }

    /// The prompt rule as the spec writes it: `{instr}` is the `<Object>` value, `{s1}` …
    /// `{s4}` the i-th value, `{last slot}` the last value.
    pub fn prompt_rule(&self) -> &'static str {
        self.prompt_rule
    }

    /// Slot values that make an example question (the i-th `<Object>` is `violin`, then
    /// `piano`; the i-th `<LR>` is `left`, then `right`; …).
    pub fn example_values(&self) -> Vec<&'static str> {
        let mut seen = [0usize; SlotKind::ALL.len()];
        self.slots
            .iter()
            .map(|&kind| {
                let examples: &[&'static str] = match kind {
                    SlotKind::Object => &["violin", "piano"],
                    SlotKind::Lr => &["left", "right"],
                    SlotKind::Ll => &["loudest"],
                    SlotKind::Fl => &["first"],
                    SlotKind::Th => &["second"],
                    SlotKind::Ba => &["after"],
                    SlotKind::Lrer => &["leftest"],
                };
                let nth = &mut seen[kind as usize];
                let value = examples.get(*nth).unwrap_or(&examples[0]);
                *nth += 1;
                *value
            })
            .collect()
    }

    /// The example question (see [`Template::example_values`]).
    pub fn example(&'static self) -> Question {
        self.fill(&self.example_values())
            .expect("example values are in the vocabularies")
    }

    /// Fills this template with `values` (one per slot, in order).
    pub fn fill<S: AsRef<str>>(&'static self, values: &[S]) -> Result<Question, PromptError> {
        if values.len() != self.slots.len() {
            return Err(PromptError::SlotCount {
                template: self.text,
                slots: self.slots,
                got: values.iter().map(|v| v.as_ref().to_owned()).collect(),
            });
        }
        let values = self
            .slots
            .iter()
            .zip(values)
            .map(|(&kind, value)| {
                let value = value.as_ref();
                canonical_value(kind, &words(value).join(" ")).ok_or_else(|| {
                    PromptError::UnknownValue {
                        kind,
                        value: value.to_owned(),
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Question::build(self, values))
    }
}

const fn av(kind: QuestionKind) -> QuestionType {
    QuestionType {
        modality: Modality::AudioVisual,
        kind,
    }
}
const fn visual(kind: QuestionKind) -> QuestionType {
    QuestionType {
        modality: Modality::Visual,
        kind,
    }
}
const fn audio(kind: QuestionKind) -> QuestionType {
    QuestionType {
        modality: Modality::Audio,
        kind,
    }
}

const fn template(
    id: usize,
    text: &'static str,
    slots: &'static [SlotKind],
    question_type: QuestionType,
    prompt_rule: &'static str,
) -> Template {
    Template {
        id,
        text,
        slots,
        question_type,
        prompt_rule,
    }
}

use QuestionKind::{Comparative, Counting, Existential, Location, Temporal};
use SlotKind::{Ba, Fl, Ll, Lr, Lrer, Object, Th};

/// The spec's table (§3), in its order, which is also grouped by question type. Texts and
/// rules are the spec's words; `tests/prompts.rs` compares them with the spec file.
static TEMPLATES: [Template; 33] = [
    template(
        0,
        "Is this sound from the instrument in the video?",
        &[],
        av(Existential),
        "The sound is from the instrument in the video.",
    ),
    template(
        1,
        "Is the <Object> in the video always playing?",
        &[Object],
        av(Existential),
        "The {instr} is not playing in this video.",
    ),
    template(
        2,
        "Is there a voiceover?",
        &[],
        av(Existential),
        "There are sounds other than musical instruments in the video.",
    ),
    template(
        3,
        "How many instruments are sounding in the video?",
        &[],
        av(Counting),
        "There are musical instruments playing in the video.",
    ),
    template(
        4,
        "How many types of musical instruments sound in the video?",
        &[],
        av(Counting),
        "There are musical instruments playing in the video.",
    ),
    template(
        5,
        "How many instruments in the video did not sound from beginning to end?",
        &[],
        av(Counting),
        "The instrument is not playing in the video.",
    ),
    template(
        6,
        "How many sounding <Object> in the video?",
        &[Object],
        av(Counting),
        "The {instr} is playing in this video.",
    ),
    template(
        7,
        "Where is the <LL> instrument?",
        &[Ll],
        av(Location),
        "The sounds of musical instruments in the video are different.",
    ),
    template(
        8,
        "Is the <FL> sound coming from the <LR> instrument?",
        &[Fl, Lr],
        av(Location),
        "The instruments in the video are not sounding simultaneously.",
    ),
    template(
        9,
        "Which is the musical instrument that sounds at the same time as the <Object>?",
        &[Object],
        av(Location),
        "The {instr} is playing in this video.",
    ),
    // `{last slot}` here is the <FL> value ("first"/"last"), not the <LR> one: the spec
    // (and the authors' prompt script, which takes the last value) say so, and the head was
    // trained on these prompts, so we keep it.
    template(
        10,
        "What is the <LR> instrument of the <FL> sounding instrument?",
        &[Lr, Fl],
        av(Location),
        "There are musical instruments on the {last slot} that are not being played.",
    ),
    template(
        11,
        "Is the instrument on the <LR> more rhythmic than the instrument on the <LR>?",
        &[Lr, Lr],
        av(Comparative),
        "Inconsistent rhythmic sense of instrumental performance in the video.",
    ),
    template(
        12,
        "Is the instrument on the <LR> louder than the instrument on the <LR>?",
        &[Lr, Lr],
        av(Comparative),
        "The sounds of musical instruments in the video are different.",
    ),
    template(
        13,
        "Is the <Object> on the <LR> more rhythmic than the <Object> on the <LR>?",
        &[Object, Lr, Object, Lr],
        av(Comparative),
        "The {s1} on the {s2} plays a different rhythm than the {s3} on the {s4}.",
    ),
    template(
        14,
        "Is the <Object> on the <LR> louder than the <Object> on the <LR>?",
        &[Object, Lr, Object, Lr],
        av(Comparative),
        "The {s1} on the {s2} and the {s3} on the {s4} produce different volumes of sound.",
    ),
    template(
        15,
        "Where is the <FL> sounding instrument?",
        &[Fl],
        av(Temporal),
        "The instruments in the video do not sound simultaneously.",
    ),
    template(
        16,
        "Which <Object> makes the sound <FL>?",
        &[Object, Fl],
        av(Temporal),
        "The {instr} in the video are not sounding at the same time.",
    ),
    template(
        17,
        "What is the <TH> instrument that comes in?",
        &[Th],
        av(Temporal),
        "There are musical instruments playing in the video.",
    ),
    template(
        18,
        "Which instrument makes sounds <BA> the <Object>?",
        &[Ba, Object],
        av(Temporal),
        "The {last slot} is playing in this video.",
    ),
    template(
        19,
        "Is there a <Object> in the entire video?",
        &[Object],
        visual(Counting),
        "The {instr} is not in this video.",
    ),
    template(
        20,
        "Are there <Object> and <Object> instruments in the video?",
        &[Object, Object],
        visual(Counting),
        "There are instruments other than {s1} or {s2} in this video.",
    ),
    template(
        21,
        "How many types of musical instruments appeared in the entire video?",
        &[],
        visual(Counting),
        "There are musical instruments playing in the video.",
    ),
    template(
        22,
        "How many <Object> are in the entire video?",
        &[Object],
        visual(Counting),
        "The {instr} is in this video.",
    ),
    template(
        23,
        "Where is the performance?",
        &[],
        visual(Location),
        "There are musical instruments playing in the video.",
    ),
    template(
        24,
        "What is the instrument on the <LR> of <Object>?",
        &[Lr, Object],
        visual(Location),
        "There is a musical instrument on the {s1} side of the {s2}.",
    ),
    template(
        25,
        "What kind of musical instrument is it?",
        &[],
        visual(Location),
        "There are musical instruments playing in the video.",
    ),
    template(
        26,
        "What kind of instrument is the <LRer> instrument?",
        &[Lrer],
        visual(Location),
        "There are musical instruments playing in the video.",
    ),
    template(
        27,
        "Is there a <Object> sound?",
        &[Object],
        audio(Counting),
        "There are sounds of instruments other than the {instr} in the video.",
    ),
    template(
        28,
        "Are there <Object> and <Object> sound?",
        &[Object, Object],
        audio(Counting),
        "There are sounds of instruments other than the {s1} or the {s2} in the video.",
    ),
    template(
        29,
        "How many musical instruments were heard throughout the video?",
        &[],
        audio(Counting),
        "There are musical instruments playing in the video.",
    ),
    template(
        30,
        "Is the <Object> more rhythmic than the <Object>?",
        &[Object, Object],
        audio(Comparative),
        "The {s1} and {s2} have different rhythms in the video.",
    ),
    template(
        31,
        "Is the <Object> louder than the <Object>?",
        &[Object, Object],
        audio(Comparative),
        "The {s1} and {s2} have different sounds in the video.",
    ),
    template(
        32,
        "Is the <Object> playing longer than the <Object>?",
        &[Object, Object],
        audio(Comparative),
        "The {s1} and {s2} are not played at the same time in the video.",
    ),
];

/// The 33 MUSIC-AVQA templates, indexed by [`Template::id`].
pub fn templates() -> &'static [Template] {
    &TEMPLATES
}

/// Every question the templates can ask: each template filled with every combination of its
/// slots' known values, in template order (the set of texts the text encoder can be asked to
/// embed; the model build embeds them all into a table, see `models/export_text_table.py`).
pub fn every_question() -> impl Iterator<Item = Question> {
    templates().iter().flat_map(|template| {
        let vocab: Vec<&'static [&'static str]> =
            template.slots.iter().map(|kind| kind.values()).collect();
        let count: usize = vocab.iter().map(|v| v.len()).product();
        (0..count).map(move |mut n| {
            // The n-th combination, the last slot varying fastest.
            let mut values = vec![""; vocab.len()];
            for (slot, known) in vocab.iter().enumerate().rev() {
                values[slot] = known[n % known.len()];
                n /= known.len();
            }
            Question::build(template, values)
        })
    })
}

/// The distinct texts of [`every_question`] (question texts and prompts), sorted: one line
/// each in `models/data/question_texts.txt`, which a test keeps equal to this.
pub fn every_text() -> Vec<String> {
    let mut texts: Vec<String> = every_question().flat_map(|q| [q.text, q.prompt]).collect();
    texts.sort_unstable();
    texts.dedup();
    texts
}

/// A question matched to its template: the strings the text encoder embeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    template: &'static Template,
    values: Vec<&'static str>,
    text: String,
    prompt: String,
}

impl Question {
    /// Finds `template_text` among the templates (after normalisation, see the module doc) and
    /// fills it with `values`, one per slot in order, as in the data's `templ_values`.
    pub fn from_template<S: AsRef<str>>(
        template_text: &str,
        values: &[S],
    ) -> Result<Question, PromptError> {
        let key = normalize(template_text);
        let template = compiled()
            .iter()
            .find(|c| c.key == key)
            .map(|c| c.template)
            .ok_or_else(|| PromptError::NoTemplate {
                question: template_text.to_owned(),
                closest: closest_templates(template_text),
            })?;
        template.fill(values)
    }

    /// Matches free text without brackets (`is the violin louder than the piano?`) to a
    /// template and its slot values.
    ///
    /// Text with slot markers is a template without its values: it is looked up as one, so
    /// the error says which values are missing ([`PromptError::SlotCount`]).
    pub fn parse_free_text(text: &str) -> Result<Question, PromptError> {
        if split_marker(text).is_some() {
            return Question::from_template::<&str>(text, &[]);
        }
        let question_words = content_words(text);
        let question_words: Vec<&str> = question_words.iter().map(String::as_str).collect();

        let mut readings: Vec<(&'static Template, Vec<&'static str>)> = Vec::new();
        for c in compiled() {
            let mut found = Vec::new();
            match_pieces(
                &c.pieces,
                &question_words,
                false,
                &mut Vec::new(),
                &mut found,
            );
            for fills in found {
                let values = fills
                    .into_iter()
                    .map(|fill| match fill {
                        Fill::Known(value) => value,
                        Fill::Unknown(..) => unreachable!("strict matching yields known values"),
                    })
                    .collect::<Vec<_>>();
                if !readings
                    .iter()
                    .any(|(t, v)| t.id == c.template.id && *v == values)
                {
                    readings.push((c.template, values));
                }
            }
        }
        match readings.len() {
            1 => {
                let (template, values) = readings.pop().expect("one reading");
                return Ok(Question::build(template, values));
            }
            0 => {}
            _ => {
                return Err(PromptError::Ambiguous {
                    question: text.to_owned(),
                    readings: readings
                        .into_iter()
                        .map(|(t, v)| Question::build(t, v).text)
                        .collect(),
                });
            }
        }

        // No reading with known values: is it a known template with an unknown value? Take
        // the reading with the fewest unknown values and report its first.
        let mut best: Option<(usize, SlotKind, String)> = None;
        for c in compiled() {
            let mut found = Vec::new();
            match_pieces(
                &c.pieces,
                &question_words,
                true,
                &mut Vec::new(),
                &mut found,
            );
            for fills in found {
                let unknown = c
                    .template
                    .slots
                    .iter()
                    .zip(&fills)
                    .filter_map(|(&kind, fill)| match fill {
                        Fill::Unknown(value) => Some((kind, value)),
                        Fill::Known(_) => None,
                    });
                let count = unknown.clone().count();
                if let Some((kind, value)) = unknown.clone().next()
                    && best.as_ref().is_none_or(|(n, ..)| count < *n)
                {
                    best = Some((count, kind, value.clone()));
                }
            }
        }
        Err(match best {
            Some((_, kind, value)) => PromptError::UnknownValue { kind, value },
            None => PromptError::NoTemplate {
                question: text.to_owned(),
                closest: closest_templates(text),
            },
        })
    }

    fn build(template: &'static Template, values: Vec<&'static str>) -> Question {
        let text = fill_markers(template.text, &values);
        let prompt = render_prompt(template, &values);
        Question {
            template,
            values,
            text,
            prompt,
        }
    }

    /// The matched template.
    pub fn template(&self) -> &'static Template {
        self.template
    }

    /// The slot values, in slot order, spelt as in the data (`acoustic_guitar`).
    pub fn values(&self) -> &[&'static str] {
        &self.values
    }

    /// The question fed to the text encoder: the canonical template text with its slots
    /// filled, e.g. `Is the acoustic_guitar louder than the piano?`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The declarative prompt of the template's rule, e.g. `The acoustic_guitar and piano
    /// have different sounds in the video.`
    pub fn prompt(&self) -> &str {
        &self.prompt
    }
}

/// Why a question could not be turned into a prompt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    /// The question matches none of the 33 templates.
    #[error("no question template matches {question:?}; closest templates: {}", quoted(.closest))]
    NoTemplate {
        /// The question as given.
        question: String,
        /// The three closest templates, best first.
        closest: Vec<String>,
    },
    /// The number of values differs from the number of slots of the template.
    #[error("{}", slot_count_message(.template, .slots, .got))]
    SlotCount {
        /// The canonical template text.
        template: &'static str,
        /// Its slots.
        slots: &'static [SlotKind],
        /// The values given.
        got: Vec<String>,
    },
    /// A slot value outside the vocabulary of its kind.
    #[error("unknown {} {value:?}; known: {}", .kind.noun(), .kind.values().join(", "))]
    UnknownValue {
        /// The slot's kind.
        kind: SlotKind,
        /// The value as given.
        value: String,
    },
    /// Free text that reads as more than one templated question.
    #[error("{question:?} reads as more than one question: {}", quoted(.readings))]
    Ambiguous {
        /// The question as given.
        question: String,
        /// The filled question text of each reading.
        readings: Vec<String>,
    },
}

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|item| format!("{item:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn slot_count_message(template: &str, slots: &[SlotKind], got: &[String]) -> String {
    let slots = match slots.len() {
        0 => "no slots".to_owned(),
        n => {
            let markers: Vec<&str> = slots.iter().map(|kind| kind.marker()).collect();
            let plural = if n == 1 { "" } else { "s" };
            format!("{n} slot{plural} ({})", markers.join(", "))
        }
    };
    let plural = if got.len() == 1 { "" } else { "s" };
    format!(
        "template {template:?} has {slots}, got {} value{plural}: {got:?}",
        got.len()
    )
}

/// Normalised form of a template text or question for comparison: full-width forms to ASCII,
/// whitespace collapsed and trimmed, no space before punctuation, lower case.
fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split(|c: char| c.is_whitespace() || c == '\u{3000}') {
        if word.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        for c in word.chars().map(ascii_form) {
            if matches!(c, '?' | '!' | '.' | ',' | ';' | ':') && out.ends_with(' ') {
                out.pop();
            }
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// Full-width ASCII variants (U+FF01..U+FF5E) and CJK punctuation to ASCII.
fn ascii_form(c: char) -> char {
    match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        '\u{3002}' => '.',
        '\u{3001}' => ',',
        _ => c,
    }
}

/// Lower-case words of `text`: letters and digits; everything else (including `_` and `-`)
/// separates words. Slot markers are kept out by the callers.
fn words(text: &str) -> Vec<String> {
    normalize(text)
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

fn is_article(word: &str) -> bool {
    matches!(word, "a" | "an" | "the")
}

/// The data's spelling of `phrase` (lower-case words joined by single spaces) as a value of
/// `kind`, if it is one.
fn canonical_value(kind: SlotKind, phrase: &str) -> Option<&'static str> {
    let exact = |phrase: &str| {
        kind.values().iter().copied().find(|value| {
            value
                .chars()
                .map(|c| if c == '_' { ' ' } else { c })
                .eq(phrase.chars())
        })
    };
    exact(phrase)
        .or_else(|| {
            ALIASES
                .iter()
                .find(|(k, alias, _)| *k == kind && *alias == phrase)
                .map(|(_, _, value)| *value)
        })
        .or_else(|| {
            // Plurals, for instruments only: "violins", "electric basses".
            if kind != SlotKind::Object {
                return None;
            }
            let singular = phrase.strip_suffix('s')?;
            exact(singular).or_else(|| exact(singular.strip_suffix('e')?))
        })
}

/// Longest value of any kind, in words ("acoustic guitar"); an unknown value may be a little
/// longer.
const MAX_VALUE_WORDS: usize = 2;
const MAX_UNKNOWN_WORDS: usize = 3;

#[derive(Debug)]
enum Piece {
    Word(String),
    Slot(SlotKind),
}

#[derive(Debug, Clone)]
enum Fill {
    Known(&'static str),
    Unknown(String),
}

/// What is derived from a template once: its comparison key and its word pattern.
struct Compiled {
    template: &'static Template,
    key: String,
    pieces: Vec<Piece>,
}

fn compiled() -> &'static [Compiled] {
    static COMPILED: OnceLock<Vec<Compiled>> = OnceLock::new();
    COMPILED.get_or_init(|| {
        TEMPLATES
            .iter()
            .map(|template| Compiled {
                template,
                key: normalize(template.text),
                pieces: pieces(template.text),
            })
            .collect()
    })
}

/// Splits a template text into its words (without articles) and slot markers.
fn pieces(text: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        let (literal, marker, after) = match split_marker(rest) {
            Some(parts) => parts,
            None => (rest, "", ""),
        };
        out.extend(
            words(literal)
                .into_iter()
                .filter(|w| !is_article(w))
                .map(Piece::Word),
        );
        if marker.is_empty() {
            return out;
        }
        out.push(Piece::Slot(
            SlotKind::from_marker(marker).expect("template markers are slot kinds"),
        ));
        rest = after;
    }
}

/// `(before, "<Marker>", after)` for the first `<…>` in `text`.
fn split_marker(text: &str) -> Option<(&str, &str, &str)> {
    let start = text.find('<')?;
    let end = start + text[start..].find('>')? + 1;
    Some((&text[..start], &text[start..end], &text[end..]))
}

/// Collects into `out` every way `words` matches `pieces`. A slot takes one to
/// [`MAX_VALUE_WORDS`] words that name a known value of its kind; with `allow_unknown`, up to
/// [`MAX_UNKNOWN_WORDS`] words that do not.
fn match_pieces(
    pieces: &[Piece],
    words: &[&str],
    allow_unknown: bool,
    fills: &mut Vec<Fill>,
    out: &mut Vec<Vec<Fill>>,
) {
    match pieces.split_first() {
        None => {
            if words.is_empty() {
                out.push(fills.clone());
            }
        }
        Some((Piece::Word(word), rest)) => {
            if words.first() == Some(&word.as_str()) {
                match_pieces(rest, &words[1..], allow_unknown, fills, out);
            }
        }
        Some((Piece::Slot(kind), rest)) => {
            let max = if allow_unknown {
                MAX_UNKNOWN_WORDS
            } else {
                MAX_VALUE_WORDS
            };
            for n in 1..=max.min(words.len()) {
                let phrase = words[..n].join(" ");
                let fill = match canonical_value(*kind, &phrase) {
                    Some(value) => Fill::Known(value),
                    None if allow_unknown => Fill::Unknown(phrase),
                    None => continue,
                };
                fills.push(fill);
                match_pieces(rest, &words[n..], allow_unknown, fills, out);
                fills.pop();
            }
        }
    }
}

/// The words of a question or template that carry its wording: without slot markers,
/// articles, or known slot values.
fn content_words(text: &str) -> Vec<String> {
    let mut without_markers = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((before, _, after)) = split_marker(rest) {
        without_markers.push_str(before);
        without_markers.push(' ');
        rest = after;
    }
    without_markers.push_str(rest);
    words(&without_markers)
        .into_iter()
        .filter(|w| !is_article(w))
        .collect()
}

/// The three templates whose wording is closest to `text`: the longest common subsequence of
/// their words (slot values and markers left out), as a Dice-style ratio.
fn closest_templates(text: &str) -> Vec<String> {
    let words = content_words(text);
    let question = strip_values(&words);
    let mut scored: Vec<(f64, &'static Template)> = compiled()
        .iter()
        .map(|c| {
            let literal: Vec<&str> = c
                .pieces
                .iter()
                .filter_map(|piece| match piece {
                    Piece::Word(word) => Some(word.as_str()),
                    Piece::Slot(_) => None,
                })
                .collect();
            let total = question.len() + literal.len();
            let score = if total == 0 {
                0.0
            } else {
                2.0 * lcs(&question, &literal) as f64 / total as f64
            };
            (score, c.template)
        })
        .collect();
    // Stable sort: ties keep the table order.
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored
        .into_iter()
        .take(3)
        .map(|(_, t)| t.text.to_owned())
        .collect()
}

/// Drops the words that name a known value of any slot kind.
fn strip_values(words: &[String]) -> Vec<&str> {
    let mut out = Vec::with_capacity(words.len());
    let mut i = 0;
    'words: while i < words.len() {
        for n in (1..=MAX_VALUE_WORDS.min(words.len() - i)).rev() {
            let phrase = words[i..i + n].join(" ");
            if SlotKind::ALL
                .iter()
                .any(|&kind| canonical_value(kind, &phrase).is_some())
            {
                i += n;
                continue 'words;
            }
        }
        out.push(words[i].as_str());
        i += 1;
    }
    out
}

fn lcs(a: &[&str], b: &[&str]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut diagonal = 0;
        for (j, y) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if x == y {
                diagonal + 1
            } else {
                above.max(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The template text with its markers replaced by `values`, in order.
fn fill_markers(text: &str, values: &[&str]) -> String {
    let mut out = String::with_capacity(text.len() + 16 * values.len());
    let mut rest = text;
    let mut values = values.iter();
    while let Some((before, _, after)) = split_marker(rest) {
        out.push_str(before);
        out.push_str(values.next().expect("one value per marker"));
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The template's prompt rule with its placeholders replaced.
fn render_prompt(template: &Template, values: &[&str]) -> String {
    let rule = template.prompt_rule;
    let mut out = String::with_capacity(rule.len() + 16 * values.len());
    let mut rest = rule;
    while let Some(start) = rest.find('{') {
        let end = start + rest[start..].find('}').expect("placeholders are closed");
        out.push_str(&rest[..start]);
        out.push_str(placeholder(template, values, &rest[start + 1..end]));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn placeholder<'v>(template: &Template, values: &[&'v str], name: &str) -> &'v str {
    let index = match name {
        "instr" => template
            .slots
            .iter()
            .position(|&kind| kind == SlotKind::Object)
            .expect("{instr} rules have an <Object> slot"),
        "last slot" => values
            .len()
            .checked_sub(1)
            .expect("{last slot} rules have slots"),
        _ => name
            .strip_prefix('s')
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| n.checked_sub(1))
            .expect("placeholders are {instr}, {last slot} or {sN}"),
    };
    values[index]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list the model build embeds (models/data/question_texts.txt.gz) is what the
    /// templates make: regenerate it with
    /// `tspm-edge prompts --all-texts | gzip -9n > models/data/question_texts.txt.gz`.
    #[test]
    fn the_committed_text_list_is_every_text() {
        use std::io::Read;
        let gz: &[u8] = include_bytes!("../models/data/question_texts.txt.gz");
        let mut committed = String::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_string(&mut committed)
            .unwrap();
        let expected: String = every_text().iter().map(|t| format!("{t}\n")).collect();
        assert!(
            committed == expected,
            "models/data/question_texts.txt.gz is stale: regenerate it (see this test's doc)"
        );
        assert_eq!(every_text().len(), 22_808);
    }

    #[test]
    fn table_is_consistent() {
        assert_eq!(templates().len(), 33);
        for (i, t) in templates().iter().enumerate() {
            assert_eq!(t.id(), i);
            // Slots list the markers of the text, in order.
            let mut markers = Vec::new();
            let mut rest = t.text();
            while let Some((_, marker, after)) = split_marker(rest) {
                markers.push(SlotKind::from_marker(marker).unwrap());
                rest = after;
            }
            assert_eq!(markers, t.slots(), "{}", t.text());
            // Placeholders are fillable.
            let objects = t.slots().iter().filter(|&&k| k == SlotKind::Object).count();
            let mut rest = t.prompt_rule();
            while let Some(start) = rest.find('{') {
                let end = start + rest[start..].find('}').unwrap();
                let name = &rest[start + 1..end];
                match name {
                    "instr" => assert_eq!(objects, 1, "{}", t.text()),
                    "last slot" => assert!(!t.slots().is_empty()),
                    _ => {
                        let n: usize = name.strip_prefix('s').unwrap().parse().unwrap();
                        assert!((1..=t.slots().len()).contains(&n), "{}", t.text());
                    }
                }
                rest = &rest[end + 1..];
            }
            // Every template's example parses back from its own text.
            let example = t.example();
            assert_eq!(example.template().id(), i);
            let parsed = Question::parse_free_text(example.text()).unwrap();
            assert_eq!(parsed, example);
        }
        let keys: std::collections::HashSet<_> = compiled().iter().map(|c| &c.key).collect();
        assert_eq!(keys.len(), 33, "normalised texts are distinct");
    }

    #[test]
    fn normalisation() {
        assert_eq!(
            normalize("  How many sounding <Object>  in the video\u{FF1F} "),
            "how many sounding <object> in the video?"
        );
        assert_eq!(
            normalize("Are there <Object> and <Object> sound ? "),
            "are there <object> and <object> sound?"
        );
        assert_eq!(normalize("a\u{3000}b\u{FF0C}c\u{3002}"), "a b,c.");
    }

    #[test]
    fn from_template_variants() {
        let q = Question::from_template(
            "How many sounding <Object> in the video\u{FF1F}",
            &["acoustic_guitar"],
        )
        .unwrap();
        assert_eq!(q.template().id(), 6);
        assert_eq!(q.text(), "How many sounding acoustic_guitar in the video?");
        assert_eq!(q.prompt(), "The acoustic_guitar is playing in this video.");

        let q = Question::from_template(
            "are there <object> and <object> sound? ",
            &["Acoustic Guitar", "drums"],
        )
        .unwrap();
        assert_eq!(q.values(), ["acoustic_guitar", "drum"]);
        assert_eq!(
            q.prompt(),
            "There are sounds of instruments other than the acoustic_guitar or the drum in the video."
        );

        let q = Question::from_template(
            "What is the <LR> instrument of the <FL> sounding instrument?",
            &["left", "first"],
        )
        .unwrap();
        assert_eq!(
            q.prompt(),
            "There are musical instruments on the first that are not being played."
        );
    }

    #[test]
    fn free_text() {
        let a = Question::parse_free_text("Is the violin louder than the piano?").unwrap();
        let b = Question::parse_free_text("is violin louder than piano").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.template().id(), 31);
        assert_eq!(a.values(), ["violin", "piano"]);
        assert_eq!(
            a.prompt(),
            "The violin and piano have different sounds in the video."
        );

        let q = Question::parse_free_text("What kind of instrument is the leftmost instrument")
            .unwrap();
        assert_eq!(q.values(), ["leftest"]);
        let q = Question::parse_free_text("How many violins are in the entire video?").unwrap();
        assert_eq!((q.template().id(), q.values()), (22, &["violin"][..]));
        let q = Question::parse_free_text(
            "IS THE ACOUSTIC GUITAR ON THE LEFT LOUDER THAN THE ELECTRIC-BASS ON THE RIGHT？",
        )
        .unwrap();
        assert_eq!(
            q.values(),
            ["acoustic_guitar", "left", "electric_bass", "right"]
        );
    }

    #[test]
    fn errors() {
        let err = Question::parse_free_text("is the kazoo louder than the piano").unwrap_err();
        assert_eq!(
            err,
            PromptError::UnknownValue {
                kind: SlotKind::Object,
                value: "kazoo".into()
            }
        );
        assert!(
            err.to_string()
                .starts_with("unknown instrument \"kazoo\"; known: accordion, acoustic_guitar, ")
        );

        let err = Question::parse_free_text("Is the violin quieter than the piano?").unwrap_err();
        let PromptError::NoTemplate { closest, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(closest[0], "Is the <Object> louder than the <Object>?");

        let err =
            Question::parse_free_text("Is the <Object> louder than the <Object>?").unwrap_err();
        assert!(matches!(err, PromptError::SlotCount { .. }), "{err:?}");

        let err = Question::from_template("Are there <Object> and <Object> sound?", &["violin"])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "template \"Are there <Object> and <Object> sound?\" has 2 slots (<Object>, <Object>), \
             got 1 value: [\"violin\"]"
        );
        let err = Question::from_template("Is there a voiceover?", &["violin"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "template \"Is there a voiceover?\" has no slots, got 1 value: [\"violin\"]"
        );
    }
}
