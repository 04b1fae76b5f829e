//! The Qwen2 tokenizer as transformers' `Qwen2Tokenizer` (tokenizers backend) loads it from a
//! `tokenizer/` or `processor/` folder: `tokenizer.json` when present, else `vocab.json` +
//! `merges.txt` built into the same pipeline (NFC, Qwen2's split regex, byte-level BPE), with the
//! added tokens of `tokenizer_config.json` matched whole before BPE.

use std::path::Path;

use qie_runtime::Tensor;
use serde_json::{json, Map, Value};
use tokenizers::{AddedToken, Tokenizer};

use crate::ModelError;

/// Qwen2's pre-tokenizer regex (transformers `models/qwen2/tokenization_qwen2.py`).
pub const QWEN2_PRETOKENIZE_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaddingSide {
    Left,
    Right,
}

pub struct QwenTokenizer {
    pub tokenizer: Tokenizer,
    pub pad_id: u32,
    pub padding_side: PaddingSide,
}

/// Ids and 0/1 mask of a padded batch, row-major `[batch, len]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedBatch {
    pub batch: usize,
    pub len: usize,
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
}

impl EncodedBatch {
    /// `(input_ids, attention_mask)` as i64 `[batch, len]` tensors.
    pub fn to_tensors(&self) -> (Tensor, Tensor) {
        let shape = [self.batch, self.len];
        (
            Tensor::from_i64(&shape, self.ids.clone()).expect("shape matches data"),
            Tensor::from_i64(&shape, self.mask.clone()).expect("shape matches data"),
        )
    }
}

impl QwenTokenizer {
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, ModelError> {
        let dir = dir.as_ref();
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            read_json(&config_path)?
        } else {
            Value::Object(Map::new())
        };
        let added = added_tokens(dir, &config)?;
        let json_path = dir.join("tokenizer.json");
        let mut tokenizer = if json_path.is_file() {
            Tokenizer::from_file(&json_path)
                .map_err(|e| ModelError::new(format!("{}: {e}", json_path.display())))?
        } else {
            from_vocab_merges(dir, &added)?
        };
        // transformers adds tokens listed in added_tokens_decoder that tokenizer.json lacks.
        for (id, token) in &added {
            if tokenizer.token_to_id(&token.content).is_none() {
                let n = add_one(&mut tokenizer, token);
                if tokenizer.token_to_id(&token.content) != Some(*id) || n != 1 {
                    return Err(ModelError::new(format!(
                        "{}: added token {:?} would not get id {id}",
                        dir.display(),
                        token.content
                    )));
                }
            }
        }
        let pad_token = special_content(config.get("pad_token")).unwrap_or("<|endoftext|>".into());
        let pad_id = tokenizer.token_to_id(&pad_token).ok_or_else(|| {
            ModelError::new(format!(
                "{}: pad token {pad_token:?} is not in the vocabulary",
                dir.display()
            ))
        })?;
        let padding_side = match config.get("padding_side").and_then(Value::as_str) {
            None | Some("right") => PaddingSide::Right,
            Some("left") => PaddingSide::Left,
            Some(other) => {
                return Err(ModelError::new(format!(
                    "{}: padding_side {other:?} is neither left nor right",
                    config_path.display()
                )))
            }
        };
        Ok(QwenTokenizer {
            tokenizer,
            pad_id,
            padding_side,
        })
    }

    /// Token ids of one text (no BOS/EOS: Qwen2 adds none).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| ModelError::new(format!("tokenizer: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// `tokenizer(texts, padding=True)`: pads to the longest text with the pad token on the
    /// configured side (right unless tokenizer_config.json says otherwise).
    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S]) -> Result<EncodedBatch, ModelError> {
        let rows = texts
            .iter()
            .map(|t| self.encode(t.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let len = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * len);
        let mut mask = Vec::with_capacity(rows.len() * len);
        for row in &rows {
            let pad = len - row.len();
            let push_pad = |ids: &mut Vec<i64>, mask: &mut Vec<i64>| {
                ids.resize(ids.len() + pad, self.pad_id as i64);
                mask.resize(mask.len() + pad, 0);
            };
            if self.padding_side == PaddingSide::Left {
                push_pad(&mut ids, &mut mask);
            }
            ids.extend(row.iter().map(|&i| i as i64));
            mask.resize(mask.len() + row.len(), 1);
            if self.padding_side == PaddingSide::Right {
                push_pad(&mut ids, &mut mask);
            }
        }
        Ok(EncodedBatch {
            batch: rows.len(),
            len,
            ids,
            mask,
        })
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }
}

fn add_one(tokenizer: &mut Tokenizer, token: &AddedToken) -> usize {
    if token.special {
        tokenizer.add_special_tokens(std::slice::from_ref(token))
    } else {
        tokenizer.add_tokens(std::slice::from_ref(token))
    }
}

fn special_content(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// `(id, token)` in id order: `added_tokens_decoder` of tokenizer_config.json, else added_tokens.json.
fn added_tokens(dir: &Path, config: &Value) -> Result<Vec<(u32, AddedToken)>, ModelError> {
    let mut out = Vec::new();
    if let Some(decoder) = config
        .get("added_tokens_decoder")
        .and_then(Value::as_object)
    {
        for (id, entry) in decoder {
            let bad = || {
                ModelError::new(format!(
                    "{}: bad added_tokens_decoder entry {id}",
                    dir.display()
                ))
            };
            let id: u32 = id.parse().map_err(|_| bad())?;
            let content = entry
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(bad)?;
            let flag = |k: &str, d: bool| entry.get(k).and_then(Value::as_bool).unwrap_or(d);
            let token = AddedToken::from(content.to_string(), flag("special", false))
                .single_word(flag("single_word", false))
                .lstrip(flag("lstrip", false))
                .rstrip(flag("rstrip", false))
                .normalized(flag("normalized", !flag("special", false)));
            out.push((id, token));
        }
    } else {
        let path = dir.join("added_tokens.json");
        if path.is_file() {
            let v = read_json(&path)?;
            let map = v.as_object().ok_or_else(|| {
                ModelError::new(format!("{}: expected an object", path.display()))
            })?;
            let specials = special_strings(config);
            for (content, id) in map {
                let id = id.as_u64().ok_or_else(|| {
                    ModelError::new(format!(
                        "{}: id of {content:?} is not an integer",
                        path.display()
                    ))
                })? as u32;
                let special = specials.iter().any(|s| s == content);
                let token = AddedToken::from(content.clone(), special).normalized(false);
                out.push((id, token));
            }
        }
    }
    out.sort_by_key(|(id, _)| *id);
    Ok(out)
}

fn special_strings(config: &Value) -> Vec<String> {
    let mut out: Vec<String> = ["eos_token", "pad_token", "bos_token", "unk_token"]
        .iter()
        .filter_map(|k| special_content(config.get(*k)))
        .collect();
    if let Some(list) = config
        .get("additional_special_tokens")
        .and_then(Value::as_array)
    {
        out.extend(list.iter().filter_map(|v| special_content(Some(v))));
    }
    out
}

/// Builds the tokenizer.json transformers' Qwen2Tokenizer would produce from vocab.json +
/// merges.txt, with the added tokens at their configured ids.
fn from_vocab_merges(dir: &Path, added: &[(u32, AddedToken)]) -> Result<Tokenizer, ModelError> {
    let vocab_path = dir.join("vocab.json");
    let merges_path = dir.join("merges.txt");
    if !vocab_path.is_file() || !merges_path.is_file() {
        return Err(ModelError::new(format!(
            "{}: no tokenizer.json and no vocab.json + merges.txt",
            dir.display()
        )));
    }
    let mut vocab = read_json(&vocab_path)?;
    let vocab_map = vocab
        .as_object_mut()
        .ok_or_else(|| ModelError::new(format!("{}: expected an object", vocab_path.display())))?;
    let merges_text = std::fs::read_to_string(&merges_path)
        .map_err(|e| ModelError::new(format!("{}: {e}", merges_path.display())))?;
    let mut merges = Vec::new();
    for (n, line) in merges_text.lines().enumerate() {
        if line.starts_with("#version") || line.trim().is_empty() {
            continue;
        }
        let (a, b) = line.split_once(' ').ok_or_else(|| {
            ModelError::new(format!(
                "{}:{}: expected two symbols",
                merges_path.display(),
                n + 1
            ))
        })?;
        merges.push(json!([a, b]));
    }
    // Added tokens live in the model vocab too, so they keep their configured ids.
    for (id, token) in added {
        vocab_map.entry(token.content.clone()).or_insert(json!(id));
    }
    let added_json: Vec<Value> = added
        .iter()
        .map(|(id, t)| {
            json!({"id": id, "content": t.content, "single_word": t.single_word, "lstrip": t.lstrip,
                   "rstrip": t.rstrip, "normalized": t.normalized, "special": t.special})
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_json,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_PRETOKENIZE_REGEX}, "behavior": "Isolated", "invert": false},
            byte_level,
        ]},
        "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    });
    let text = serde_json::to_string(&spec).expect("json serialises");
    text.parse::<Tokenizer>().map_err(|e| {
        ModelError::new(format!(
            "{}: cannot build the BPE tokenizer: {e}",
            dir.display()
        ))
    })
}

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ModelError::new(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| ModelError::new(format!("{}: malformed JSON: {e}", path.display())))
}
