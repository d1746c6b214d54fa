//! [`ClipTokenizer`]: the CLIP BPE tokenizer of a text-to-image model's `tokenizer/`
//! directory, producing exactly the ids of transformers' `CLIPTokenizer` as the Stable
//! Diffusion pipelines call it:
//! `tokenizer(prompts, padding="max_length", max_length=77, truncation=True)`.
//!
//! The directory is read as transformers 5.25 reads it:
//!
//! - `tokenizer.json` (the `tokenizers` library's serialisation: normaliser, pre-tokeniser,
//!   BPE model, post-processor) when present; otherwise `vocab.json` + `merges.txt` (the
//!   layout of the Stable Diffusion 1.x/2.x repositories), from which the pipeline of
//!   transformers' `CLIPTokenizer` is built: NFC → whitespace runs to one space →
//!   lowercase; CLIP's split regex then byte-level symbols; BPE with the `</w>`
//!   end-of-word suffix; `<|startoftext|> … <|endoftext|>` added around the text;
//! - `tokenizer_config.json`, then `special_tokens_map.json` for the keys the first lacks
//!   (both optional): `model_max_length` (default 77, CLIP's context length), the special
//!   tokens `bos_token`, `eos_token`, `unk_token`, `pad_token` (strings or transformers'
//!   `AddedToken` objects; defaults `<|startoftext|>`, `<|endoftext|>`, `<|endoftext|>`,
//!   `<|endoftext|>`), `additional_special_tokens` / `extra_special_tokens` and
//!   `added_tokens_decoder`. Like transformers, every special token is registered as a
//!   special added token, so it is matched in the raw text before normalisation (with
//!   Stable Diffusion 2.x's pad token `!`, a `!` typed in a prompt becomes the pad id).
//!   `padding_side` / `truncation_side`, when present, must be `right`.
//!
//! Any unreadable or inconsistent file is a [`PipelineError::File`] naming the file and the
//! key. Unknown `tokenizer_config.json` keys are ignored: they configure transformers'
//! Python object (`is_local`, `clean_up_tokenization_spaces`, ...), not the ids.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    AddedToken, PostProcessor, SplitDelimiterBehavior, Tokenizer, TruncationDirection,
};

use crate::error::{PipelineError, Result, file_err};

/// The `tokenizers` serialisation of a tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// transformers' tokenizer settings.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// transformers' older home of the special tokens.
pub const SPECIAL_TOKENS_MAP_FILE: &str = "special_tokens_map.json";
/// BPE vocabulary (token → id), used without `tokenizer.json`.
pub const VOCAB_FILE: &str = "vocab.json";
/// BPE merges in rank order, used without `tokenizer.json`.
pub const MERGES_FILE: &str = "merges.txt";
/// CLIP's context length: `model_max_length` when the configs do not give one.
pub const CLIP_CONTEXT_LENGTH: usize = 77;
/// Largest accepted `model_max_length` (transformers writes `1e30` for "no limit", which is
/// no context length a text encoder has).
pub const MAX_MODEL_MAX_LENGTH: usize = 1 << 20;

/// CLIP's pre-tokenisation regex (transformers' `CLIPTokenizer`): the special tokens,
/// English contractions, letter runs, single digits, other non-space runs.
const CLIP_SPLIT_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
const DEFAULT_BOS: &str = "<|startoftext|>";
const DEFAULT_EOS: &str = "<|endoftext|>";

/// A CLIP BPE tokenizer with Stable Diffusion's padding and truncation
/// ([module docs](self)).
#[derive(Clone, Debug)]
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    pad_id: u32,
    model_max_length: usize,
    /// The file the tokenizer was built from (named in encoding errors).
    source: PathBuf,
}

/// A token a config declares: the token, the id `added_tokens_decoder` gives it (if any),
/// and the file and key it came from.
struct Declared {
    token: AddedToken,
    id: Option<u32>,
    path: PathBuf,
    field: String,
}

/// The special tokens and settings read from the two config files.
struct Settings {
    /// `(value, file it came from)` per key.
    values: HashMap<&'static str, (Value, PathBuf)>,
}

const SETTING_KEYS: [&str; 10] = [
    "model_max_length",
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "additional_special_tokens",
    "extra_special_tokens",
    "added_tokens_decoder",
    "padding_side",
    "truncation_side",
];

/// The files a tokenizer is read from, in the order they are looked for.
pub const TOKENIZER_FILES: [&str; 5] = [
    TOKENIZER_FILE,
    TOKENIZER_CONFIG_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    VOCAB_FILE,
    MERGES_FILE,
];

/// Where a tokenizer's files come from: a directory, or their contents (a quantized model
/// file carries them), each under the name errors show for it.
#[derive(Clone, Copy)]
enum Source<'a> {
    Dir(&'a Path),
    Files {
        origin: &'a Path,
        files: &'a BTreeMap<String, Vec<u8>>,
    },
}

impl Source<'_> {
    /// The path errors name for file `name`.
    fn path(&self, name: &str) -> PathBuf {
        match self {
            Self::Dir(d) => d.join(name),
            Self::Files { origin, .. } => {
                PathBuf::from(format!("{}:tokenizer/{name}", origin.display()))
            }
        }
    }

    /// The bytes of file `name`, `None` when there is no such file.
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Self::Dir(d) => match std::fs::read(d.join(name)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(file_err(self.path(name), "read", e.to_string())),
            },
            Self::Files { files, .. } => Ok(files.get(name).cloned()),
        }
    }

    /// The bytes of file `name`, which must exist.
    fn require(&self, name: &str) -> Result<Vec<u8>> {
        self.read(name)?
            .ok_or_else(|| file_err(self.path(name), "read", "no such file"))
    }
}

fn read_json_object(src: Source<'_>, name: &str) -> Result<Option<Map<String, Value>>> {
    let path = src.path(name);
    let path = path.as_path();
    let Some(bytes) = src.read(name)? else {
        return Ok(None);
    };
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(other) => Err(file_err(
            path,
            "JSON",
            format!("expected an object, got {other}"),
        )),
        Err(e) => Err(file_err(path, "JSON", format!("invalid JSON: {e}"))),
    }
}

impl Settings {
    fn read(src: Source<'_>) -> Result<Self> {
        let mut values = HashMap::new();
        for name in [TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE] {
            let path = src.path(name);
            let Some(map) = read_json_object(src, name)? else {
                continue;
            };
            for key in SETTING_KEYS {
                if let Some(v) = map.get(key) {
                    values
                        .entry(key)
                        .or_insert_with(|| (v.clone(), path.clone()));
                }
            }
        }
        Ok(Self { values })
    }

    fn get(&self, key: &str) -> Option<&(Value, PathBuf)> {
        self.values.get(key)
    }

    /// A special token: `Some(token)`, `None` when the key is absent, an error when it is
    /// `null` or malformed.
    fn token(&self, key: &str) -> Result<Option<AddedToken>> {
        match self.get(key) {
            None => Ok(None),
            Some((v, path)) => added_token(v, true)
                .map(Some)
                .ok_or_else(|| file_err(path, key, format!("expected a token, got {v}"))),
        }
    }

    fn model_max_length(&self) -> Result<usize> {
        let Some((v, path)) = self.get("model_max_length") else {
            return Ok(CLIP_CONTEXT_LENGTH);
        };
        v.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| (1..=MAX_MODEL_MAX_LENGTH).contains(n))
            .ok_or_else(|| {
                file_err(
                    path,
                    "model_max_length",
                    format!(
                        "{v} is not a context length (an integer in 1..={MAX_MODEL_MAX_LENGTH})"
                    ),
                )
            })
    }

    fn check_sides(&self) -> Result<()> {
        for key in ["padding_side", "truncation_side"] {
            if let Some((v, path)) = self.get(key)
                && v != "right"
            {
                return Err(file_err(
                    path,
                    key,
                    format!("{v} is not supported (only \"right\", as CLIP tokenizers use)"),
                ));
            }
        }
        Ok(())
    }

    /// Every special and added token the configs declare, with the id the
    /// `added_tokens_decoder` entry expects (if any).
    fn added_tokens(&self) -> Result<Vec<Declared>> {
        let mut out = Vec::new();
        for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            if let (Some(t), Some((_, path))) = (self.token(key)?, self.get(key)) {
                out.push(Declared {
                    token: t,
                    id: None,
                    path: path.clone(),
                    field: key.to_string(),
                });
            }
        }
        for key in ["additional_special_tokens", "extra_special_tokens"] {
            let Some((v, path)) = self.get(key) else {
                continue;
            };
            let items: Vec<&Value> = match v {
                Value::Array(a) => a.iter().collect(),
                // transformers 5 may write named extra tokens as a map.
                Value::Object(m) => m.values().collect(),
                Value::Null => Vec::new(),
                other => return Err(file_err(path, key, format!("expected a list, got {other}"))),
            };
            for item in items {
                let t = added_token(item, true)
                    .ok_or_else(|| file_err(path, key, format!("expected a token, got {item}")))?;
                out.push(Declared {
                    token: t,
                    id: None,
                    path: path.clone(),
                    field: key.to_string(),
                });
            }
        }
        if let Some((v, path)) = self.get("added_tokens_decoder") {
            let map = v.as_object().ok_or_else(|| {
                file_err(
                    path,
                    "added_tokens_decoder",
                    format!("expected a map, got {v}"),
                )
            })?;
            for (id, item) in map {
                let field = format!("added_tokens_decoder.{id}");
                let bad = |why: &str| file_err(path, &field, why.to_string());
                let id: u32 = id.parse().map_err(|_| bad("the key is not a token id"))?;
                let special = item
                    .get("special")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let t = added_token(item, special).ok_or_else(|| bad("expected a token object"))?;
                out.push(Declared {
                    token: t,
                    id: Some(id),
                    path: path.clone(),
                    field,
                });
            }
        }
        Ok(out)
    }
}

/// A token from a config value: a string, or transformers' `AddedToken` object
/// (`content` plus the `lstrip`/`rstrip`/`normalized`/`single_word` flags). `special`
/// tokens default to not normalised, as transformers registers them.
fn added_token(v: &Value, special: bool) -> Option<AddedToken> {
    match v {
        Value::String(s) => Some(AddedToken::from(s.clone(), special)),
        Value::Object(m) => {
            let content = m.get("content")?.as_str()?;
            let flag =
                |k: &str, default: bool| m.get(k).and_then(Value::as_bool).unwrap_or(default);
            Some(
                AddedToken::from(content.to_string(), special)
                    .lstrip(flag("lstrip", false))
                    .rstrip(flag("rstrip", false))
                    .normalized(flag("normalized", !special))
                    .single_word(flag("single_word", false)),
            )
        }
        _ => None,
    }
}

/// The tokenizer serialised in `tokenizer.json`.
fn from_tokenizer_json(path: &Path, bytes: &[u8]) -> Result<Tokenizer> {
    Tokenizer::from_bytes(bytes).map_err(|e| {
        file_err(
            path,
            TOKENIZER_FILE,
            format!("not a tokenizers serialisation: {e}"),
        )
    })
}

/// transformers' `CLIPTokenizer` pipeline over `vocab.json` + `merges.txt`.
fn from_vocab_and_merges(src: Source<'_>, settings: &Settings) -> Result<Tokenizer> {
    let vocab_path = src.path(VOCAB_FILE);
    let merges_path = src.path(MERGES_FILE);
    let vocab_bytes = src.require(VOCAB_FILE)?;
    let vocab: HashMap<String, u32> = serde_json::from_slice(&vocab_bytes).map_err(|e| {
        file_err(
            &vocab_path,
            "JSON",
            format!("expected a map of token → id: {e}"),
        )
    })?;
    let text = String::from_utf8(src.require(MERGES_FILE)?)
        .map_err(|e| file_err(&merges_path, "read", e.to_string()))?;
    let mut merges = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("#version") || line.is_empty() {
            continue;
        }
        match line.split(' ').collect::<Vec<_>>()[..] {
            [a, b] => merges.push((a.to_string(), b.to_string())),
            _ => {
                return Err(file_err(
                    &merges_path,
                    format!("line {}", i + 1),
                    format!("'{line}' is not two symbols separated by one space"),
                ));
            }
        }
    }
    let text_token = |key: &str, default: &str| -> Result<String> {
        Ok(settings
            .token(key)?
            .map_or_else(|| default.to_string(), |t| t.content))
    };
    let bos = text_token("bos_token", DEFAULT_BOS)?;
    let eos = text_token("eos_token", DEFAULT_EOS)?;
    let unk = text_token("unk_token", DEFAULT_EOS)?;
    let id = |token: &str, key: &str| {
        vocab.get(token).copied().ok_or_else(|| {
            file_err(
                &vocab_path,
                key,
                format!("the {key} '{token}' is not in the vocabulary"),
            )
        })
    };
    let (bos_id, eos_id) = (id(&bos, "bos_token")?, id(&eos, "eos_token")?);
    let vocab: Vocab = vocab.into_iter().collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unk)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".to_string())
        .fuse_unk(false)
        .build()
        .map_err(|e| file_err(&merges_path, "merges", e.to_string()))?;
    let internal = |e: tokenizers::Error| file_err(&vocab_path, "CLIP pipeline", e.to_string());
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(Some(NormalizerSequence::new(vec![
            NFC.into(),
            Replace::new(
                tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
                " ",
            )
            .map_err(internal)?
            .into(),
            Lowercase.into(),
        ])))
        .map_err(internal)?;
    tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
        Split::new(
            SplitPattern::Regex(CLIP_SPLIT_PATTERN.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(internal)?
        .into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    tokenizer.with_post_processor(Some(
        RobertaProcessing::new((eos, eos_id), (bos, bos_id))
            .trim_offsets(false)
            .add_prefix_space(false),
    ));
    Ok(tokenizer)
}

impl ClipTokenizer {
    /// Reads a tokenizer directory ([module docs](self)): `tokenizer.json`, or
    /// `vocab.json` + `merges.txt` without it; `tokenizer_config.json` and
    /// `special_tokens_map.json` when present. Errors name the file and the key.
    pub fn from_dir(tokenizer_dir: &Path) -> Result<Self> {
        Self::from_source(Source::Dir(tokenizer_dir))
    }

    /// The tokenizer of the files `files` (name → contents, names from
    /// [`TOKENIZER_FILES`]), read as [`Self::from_dir`] reads a directory; errors name
    /// `origin:tokenizer/<file>`.
    pub fn from_files(origin: &Path, files: &BTreeMap<String, Vec<u8>>) -> Result<Self> {
        Self::from_source(Source::Files { origin, files })
    }

    /// The files of a tokenizer directory that [`Self::from_dir`] reads (name → contents),
    /// for carrying the tokenizer elsewhere ([`Self::from_files`]).
    pub fn read_files(tokenizer_dir: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
        let src = Source::Dir(tokenizer_dir);
        let mut files = BTreeMap::new();
        for name in TOKENIZER_FILES {
            if let Some(bytes) = src.read(name)? {
                files.insert(name.to_string(), bytes);
            }
        }
        Ok(files)
    }

    fn from_source(src: Source<'_>) -> Result<Self> {
        let settings = Settings::read(src)?;
        settings.check_sides()?;
        let model_max_length = settings.model_max_length()?;
        let json_path = src.path(TOKENIZER_FILE);
        let (mut tokenizer, source) = match src.read(TOKENIZER_FILE)? {
            Some(bytes) => (from_tokenizer_json(&json_path, &bytes)?, json_path),
            None => {
                if src.read(VOCAB_FILE)?.is_none() {
                    return Err(file_err(
                        &json_path,
                        TOKENIZER_FILE,
                        format!("not found, and no {VOCAB_FILE} + {MERGES_FILE} beside it either"),
                    ));
                }
                (from_vocab_and_merges(src, &settings)?, src.path(VOCAB_FILE))
            }
        };
        // transformers overrides the file's own truncation/padding on every call.
        tokenizer
            .with_truncation(None)
            .map_err(|e| file_err(&source, "truncation", e.to_string()))?;
        tokenizer.with_padding(None);

        for Declared {
            token,
            id: want_id,
            path,
            field,
        } in settings.added_tokens()?
        {
            let content = token.content.clone();
            let result = if token.special {
                tokenizer.add_special_tokens([token])
            } else {
                tokenizer.add_tokens([token])
            };
            result.map_err(|e| file_err(&path, &field, e.to_string()))?;
            let got = tokenizer.token_to_id(&content);
            if let Some(want) = want_id
                && got != Some(want)
            {
                return Err(file_err(
                    &path,
                    &field,
                    format!("'{content}' has id {got:?} in the tokenizer, the config says {want}"),
                ));
            }
        }

        let pad = match settings.token("pad_token")? {
            Some(t) => t.content,
            None => DEFAULT_EOS.to_string(),
        };
        let pad_id = tokenizer.token_to_id(&pad).ok_or_else(|| {
            let path = settings
                .get("pad_token")
                .map_or_else(|| source.clone(), |(_, p)| p.clone());
            file_err(
                path,
                "pad_token",
                format!("the pad token '{pad}' is not in the vocabulary"),
            )
        })?;
        Ok(Self {
            tokenizer,
            pad_id,
            model_max_length,
            source,
        })
    }

    /// `model_max_length`: the length Stable Diffusion pads and truncates prompts to (77).
    pub fn max_length(&self) -> usize {
        self.model_max_length
    }

    /// Id of the pad token.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Id of `token` (a vocabulary or added token), if any.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Vocabulary size, added tokens included (ids are below it).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Ids of each prompt as `tokenizer(prompts, padding="max_length", max_length=max_len,
    /// truncation=True)["input_ids"]`: the text's tokens cut to `max_len − n` (n = the
    /// special tokens the post-processor adds: BOS and EOS for CLIP), the special tokens
    /// added (`BOS … EOS`, so EOS stays last after truncation), then the pad id up to
    /// `max_len`. Every row has `max_len` ids. `max_len` below `n` (or 0) is a
    /// [`PipelineError::Option`].
    pub fn encode_padded(&self, prompts: &[&str], max_len: usize) -> Result<Vec<Vec<u32>>> {
        let added = self
            .tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        if max_len == 0 || max_len < added {
            return Err(PipelineError::Option {
                option: "max_len".into(),
                reason: format!(
                    "{max_len} leaves no room for the {added} special tokens every prompt gets"
                ),
            });
        }
        let encode_err = |prompt: &str, e: tokenizers::Error| {
            file_err(&self.source, "encode", format!("prompt {prompt:?}: {e}"))
        };
        prompts
            .iter()
            .map(|&prompt| {
                let mut enc = self
                    .tokenizer
                    .encode(prompt, false)
                    .map_err(|e| encode_err(prompt, e))?;
                enc.truncate(max_len - added, 0, TruncationDirection::Right);
                let enc = self
                    .tokenizer
                    .post_process(enc, None, true)
                    .map_err(|e| encode_err(prompt, e))?;
                let mut ids = enc.get_ids().to_vec();
                ids.resize(max_len, self.pad_id);
                Ok(ids)
            })
            .collect()
    }
}
