//! [`ClipTokenizer`] against transformers' `CLIPTokenizer` (reference ids from
//! `scripts/fixtures/clip_parity.py`, checked there against an independent Python BPE):
//! every test string at `max_length` 77 and 16 and with the pad token `!`, from
//! `tokenizer.json` and from `vocab.json` + `merges.txt`; and the typed errors for missing
//! or corrupt files.

use std::path::{Path, PathBuf};

use dmq_pipeline::PipelineError;
use dmq_pipeline::tokenizer::{
    ClipTokenizer, MERGES_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, VOCAB_FILE,
};
use serde::Deserialize;
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dmq-models/tests/fixtures/clip")
}

fn tokenizer_dir() -> PathBuf {
    fixtures().join("tokenizer")
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Expected {
    vocab_size: usize,
    bos_id: u32,
    eos_id: u32,
    model_max_length: usize,
    max_length: usize,
    cases: Vec<Case>,
    short_max_length: usize,
    short_cases: Vec<Case>,
    pad_bang_id: u32,
    pad_bang_cases: Vec<Case>,
}

fn expected() -> Expected {
    let text = std::fs::read_to_string(fixtures().join("tokenizer_ids.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Checks every case, one prompt at a time and as one batch.
fn check(tok: &ClipTokenizer, cases: &[Case], max_len: usize, what: &str) {
    let prompts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let batch = tok.encode_padded(&prompts, max_len).unwrap();
    assert_eq!(batch.len(), cases.len());
    for (case, got) in cases.iter().zip(&batch) {
        assert_eq!(got, &case.ids, "{what}: {:?}", case.text);
        assert_eq!(
            tok.encode_padded(&[&case.text], max_len).unwrap()[0],
            case.ids
        );
    }
}

/// A copy of the fixture tokenizer with `config` as `tokenizer_config.json` (none when
/// `None`) and, with `vocab_merges`, `vocab.json` + `merges.txt` instead of
/// `tokenizer.json`.
fn variant(config: Option<&Value>, vocab_merges: bool) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let json_text = std::fs::read_to_string(tokenizer_dir().join(TOKENIZER_FILE)).unwrap();
    if vocab_merges {
        let v: Value = serde_json::from_str(&json_text).unwrap();
        let model = &v["model"];
        std::fs::write(
            t.path().join(VOCAB_FILE),
            serde_json::to_vec(&model["vocab"]).unwrap(),
        )
        .unwrap();
        let mut merges = String::from("#version: 0.2\n");
        for m in model["merges"].as_array().unwrap() {
            match m {
                Value::Array(pair) => {
                    merges += &format!(
                        "{} {}\n",
                        pair[0].as_str().unwrap(),
                        pair[1].as_str().unwrap()
                    )
                }
                Value::String(s) => merges += &format!("{s}\n"),
                other => panic!("merge {other}"),
            }
        }
        std::fs::write(t.path().join(MERGES_FILE), merges).unwrap();
    } else {
        std::fs::write(t.path().join(TOKENIZER_FILE), json_text).unwrap();
    }
    if let Some(c) = config {
        std::fs::write(
            t.path().join(TOKENIZER_CONFIG_FILE),
            serde_json::to_vec_pretty(c).unwrap(),
        )
        .unwrap();
    }
    t
}

fn fixture_config() -> Value {
    let text = std::fs::read_to_string(tokenizer_dir().join(TOKENIZER_CONFIG_FILE)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A file error naming `file` (its last path component) and containing `needle`.
fn expect_file_err<T: std::fmt::Debug>(r: Result<T, PipelineError>, file: &str, needle: &str) {
    match r {
        Err(PipelineError::File {
            path,
            field,
            reason,
        }) => {
            assert!(
                path.file_name().is_some_and(|n| n == file),
                "{} is not {file} ({field}: {reason})",
                path.display()
            );
            let all = format!("{field}: {reason}");
            assert!(all.contains(needle), "{all}");
        }
        other => panic!("expected a file error naming {file}, got {other:?}"),
    }
}

#[test]
fn ids_match_transformers() {
    let e = expected();
    let tok = ClipTokenizer::from_dir(&tokenizer_dir()).unwrap();
    assert_eq!(tok.max_length(), e.model_max_length);
    assert_eq!(tok.vocab_size(), e.vocab_size);
    assert_eq!(tok.pad_id(), e.eos_id);
    assert_eq!(tok.token_to_id("<|startoftext|>"), Some(e.bos_id));
    assert!(e.cases.len() >= 25);
    check(&tok, &e.cases, e.max_length, "max_length 77");
    check(&tok, &e.short_cases, e.short_max_length, "max_length 16");
    // Truncation keeps EOS last.
    let long = e.cases.last().unwrap();
    assert_eq!(long.ids[e.max_length - 1], e.eos_id);
    assert!(!long.ids[1..e.max_length - 1].contains(&e.eos_id));
}

#[test]
fn pad_token_from_the_config() {
    let e = expected();
    let mut cfg = fixture_config();
    cfg["pad_token"] = json!("!");
    let t = variant(Some(&cfg), false);
    let tok = ClipTokenizer::from_dir(t.path()).unwrap();
    assert_eq!(tok.pad_id(), e.pad_bang_id);
    check(&tok, &e.pad_bang_cases, e.max_length, "pad '!'");

    // The same from special_tokens_map.json (an older layout), as an AddedToken object, with
    // no tokenizer_config.json: model_max_length defaults to 77.
    let t = variant(None, false);
    std::fs::write(
        t.path().join("special_tokens_map.json"),
        serde_json::to_vec(&json!({"pad_token": {"content": "!", "lstrip": false,
            "normalized": false, "rstrip": false, "single_word": false}}))
        .unwrap(),
    )
    .unwrap();
    let tok = ClipTokenizer::from_dir(t.path()).unwrap();
    assert_eq!(tok.max_length(), 77);
    check(
        &tok,
        &e.pad_bang_cases,
        e.max_length,
        "pad '!' (special_tokens_map)",
    );
}

#[test]
fn vocab_and_merges_without_tokenizer_json() {
    let e = expected();
    let t = variant(Some(&fixture_config()), true);
    assert!(!t.path().join(TOKENIZER_FILE).exists());
    let tok = ClipTokenizer::from_dir(t.path()).unwrap();
    assert_eq!(tok.vocab_size(), e.vocab_size);
    check(&tok, &e.cases, e.max_length, "vocab + merges");
    check(
        &tok,
        &e.short_cases,
        e.short_max_length,
        "vocab + merges, 16",
    );
    let mut cfg = fixture_config();
    cfg["pad_token"] = json!("!");
    let t = variant(Some(&cfg), true);
    let tok = ClipTokenizer::from_dir(t.path()).unwrap();
    check(
        &tok,
        &e.pad_bang_cases,
        e.max_length,
        "vocab + merges, pad '!'",
    );
}

#[test]
fn missing_or_corrupt_files_are_named() {
    // No directory / no tokenizer files.
    let empty = tempfile::tempdir().unwrap();
    expect_file_err(
        ClipTokenizer::from_dir(empty.path()),
        TOKENIZER_FILE,
        "not found",
    );
    expect_file_err(
        ClipTokenizer::from_dir(&empty.path().join("nowhere")),
        TOKENIZER_FILE,
        "not found",
    );
    // A corrupt tokenizer.json: garbage, truncated JSON, a JSON object of another shape.
    let text = std::fs::read_to_string(tokenizer_dir().join(TOKENIZER_FILE)).unwrap();
    for bad in [
        "\u{0}\u{1}garbage".to_string(),
        text[..text.len() / 2].to_string(),
        "{}".into(),
    ] {
        let t = variant(Some(&fixture_config()), false);
        std::fs::write(t.path().join(TOKENIZER_FILE), bad).unwrap();
        expect_file_err(
            ClipTokenizer::from_dir(t.path()),
            TOKENIZER_FILE,
            "tokenizers",
        );
    }
    // A corrupt tokenizer_config.json.
    let t = variant(Some(&fixture_config()), false);
    std::fs::write(
        t.path().join(TOKENIZER_CONFIG_FILE),
        "{\"model_max_length\": ",
    )
    .unwrap();
    expect_file_err(
        ClipTokenizer::from_dir(t.path()),
        TOKENIZER_CONFIG_FILE,
        "invalid JSON",
    );
    // Bad values, each named.
    let with = |key: &str, v: Value| {
        let mut c = fixture_config();
        c[key] = v;
        variant(Some(&c), false)
    };
    for (key, v, needle) in [
        ("model_max_length", json!(1e30), "model_max_length"),
        ("model_max_length", json!(0), "model_max_length"),
        ("padding_side", json!("left"), "padding_side"),
        ("truncation_side", json!("left"), "truncation_side"),
        ("pad_token", json!("<|notthere|>"), "pad_token"),
        ("pad_token", Value::Null, "pad_token"),
        ("eos_token", json!(7), "eos_token"),
        (
            "added_tokens_decoder",
            json!({"5": {"content": "!", "special": true}}),
            "added_tokens_decoder.5",
        ),
    ] {
        let t = with(key, v.clone());
        let r = ClipTokenizer::from_dir(t.path());
        if key == "pad_token" && v.is_string() {
            // An unknown pad token is registered as a special token by transformers too,
            // with a new id: accepted, and padding uses it.
            let tok = r.unwrap();
            assert_eq!(tok.pad_id() as usize, tok.vocab_size() - 1);
            continue;
        }
        expect_file_err(r, TOKENIZER_CONFIG_FILE, needle);
    }
    // vocab.json + merges.txt: a bad merges line, a BOS missing from the vocabulary.
    let t = variant(Some(&fixture_config()), true);
    let merges = std::fs::read_to_string(t.path().join(MERGES_FILE)).unwrap();
    std::fs::write(
        t.path().join(MERGES_FILE),
        merges.replacen("\n", "\nabc\n", 1),
    )
    .unwrap();
    expect_file_err(ClipTokenizer::from_dir(t.path()), MERGES_FILE, "line 2");
    let mut cfg = fixture_config();
    cfg["bos_token"] = json!("<|bos|>");
    let t = variant(Some(&cfg), true);
    expect_file_err(ClipTokenizer::from_dir(t.path()), VOCAB_FILE, "bos_token");
    let t = variant(Some(&fixture_config()), true);
    std::fs::write(t.path().join(VOCAB_FILE), "[1, 2]").unwrap();
    expect_file_err(ClipTokenizer::from_dir(t.path()), VOCAB_FILE, "JSON");
}

#[test]
fn max_len_must_hold_the_special_tokens() {
    let tok = ClipTokenizer::from_dir(&tokenizer_dir()).unwrap();
    for n in [0, 1] {
        match tok.encode_padded(&["a bag"], n) {
            Err(PipelineError::Option { option, .. }) => assert_eq!(option, "max_len"),
            other => panic!("expected an option error, got {other:?}"),
        }
    }
    // Exactly the special tokens: BOS, EOS.
    let e = expected();
    assert_eq!(
        tok.encode_padded(&["a bag"], 2).unwrap(),
        vec![vec![e.bos_id, e.eos_id]]
    );
    assert_eq!(tok.encode_padded(&[], 77).unwrap(), Vec::<Vec<u32>>::new());
}
