//! CLAP's RoBERTa tokenizer, from `tokenizer.json` or `vocab.json` + `merges.txt`,
//! padded and truncated as the reference processor does.

use std::path::Path;

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

use crate::error::{ClapError, Result};

/// Token ids and attention masks of a batch, right-padded to its longest row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    pub input_ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u32>>,
}

/// Byte-level BPE tokenizer with RoBERTa's `<s> … </s>` framing.
#[derive(Clone)]
pub struct ClapTokenizer {
    inner: Tokenizer,
    max_tokens: usize,
}

impl ClapTokenizer {
    /// Loads from a model directory. `max_tokens` is the longest sequence the
    /// text tower accepts (special tokens included); the tokenizer's own
    /// `model_max_length` lowers it further when smaller.
    pub fn from_dir(dir: &Path, max_tokens: usize, pad_token_id: u32) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let mut inner = if json.is_file() {
            Tokenizer::from_file(&json)
                .map_err(|e| ClapError::Tokenizer(format!("{}: {e}", json.display())))?
        } else {
            Self::from_vocab_merges(dir)?
        };
        let max_tokens = read_model_max_length(dir).map_or(max_tokens, |m| m.min(max_tokens));
        let pad_token = inner
            .id_to_token(pad_token_id)
            .unwrap_or_else(|| "<pad>".to_string());
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| ClapError::Tokenizer(e.to_string()))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id: pad_token_id,
            pad_type_id: 0,
            pad_token,
        }));
        Ok(Self { inner, max_tokens })
    }

    /// Rebuilds what `RobertaTokenizer` does from the two classic files.
    fn from_vocab_merges(dir: &Path) -> Result<Tokenizer> {
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if !vocab.is_file() || !merges.is_file() {
            return Err(ClapError::MissingFile {
                dir: dir.to_path_buf(),
                what: "tokenizer",
                expected: "tokenizer.json, or vocab.json and merges.txt".into(),
            });
        }
        let path_str = |p: &Path| p.to_string_lossy().into_owned();
        let bpe = BPE::from_file(&path_str(&vocab), &path_str(&merges))
            .build()
            .map_err(|e| ClapError::Tokenizer(format!("{}: {e}", vocab.display())))?;
        let mut tok = Tokenizer::new(bpe);
        let id = |t: &str| {
            tok.token_to_id(t).ok_or_else(|| {
                ClapError::Tokenizer(format!("{} has no `{t}` token", vocab.display()))
            })
        };
        let (bos, eos) = (id("<s>")?, id("</s>")?);
        tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tok.with_decoder(Some(ByteLevel::default()));
        tok.with_post_processor(Some(
            RobertaProcessing::new(("</s>".into(), eos), ("<s>".into(), bos))
                .trim_offsets(true)
                .add_prefix_space(false),
        ));
        let specials: Vec<AddedToken> = ["<s>", "<pad>", "</s>", "<unk>"]
            .into_iter()
            .map(|t| AddedToken::from(t, true))
            .chain(std::iter::once(
                AddedToken::from("<mask>", true).lstrip(true),
            ))
            .collect();
        tok.add_special_tokens(&specials);
        Ok(tok)
    }

    /// Tokenises a batch, truncating each text to the model's limit and
    /// padding to the longest.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<TokenBatch> {
        let encodings = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| ClapError::Tokenizer(e.to_string()))?;
        Ok(TokenBatch {
            input_ids: encodings.iter().map(|e| e.get_ids().to_vec()).collect(),
            attention_mask: encodings
                .iter()
                .map(|e| e.get_attention_mask().to_vec())
                .collect(),
        })
    }

    /// Token ids of one text, unpadded.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| ClapError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Longest sequence produced, special tokens included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }
}

/// `model_max_length` from `tokenizer_config.json`, when it is a sane number
/// (transformers writes 1e30 for "no limit").
fn read_model_max_length(dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let m = v.get("model_max_length")?.as_f64()?;
    (1.0..1e9).contains(&m).then_some(m as usize)
}
