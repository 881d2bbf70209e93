//! CLIP's byte-level BPE tokenizer, computing the ids diffusers pipelines feed the text encoders.
//!
//! diffusers loads `CLIPTokenizer.from_pretrained(<repo>/tokenizer)` and calls it with
//! `padding="max_length", max_length=tok.model_max_length, truncation=True`. In transformers 5
//! `CLIPTokenizer` is the `tokenizers`-backed class: it takes only the vocabulary and merges from
//! the folder (tokenizer.json when present, else vocab.json + merges.txt) and always rebuilds the
//! same pipeline around them, which this module reproduces step by step:
//!
//! 1. added tokens (bos/eos/unk/pad and any configured extra token) are cut out of the raw text
//!    first, leftmost-longest; a token flagged `normalized` is instead looked for in the
//!    normalised text, so "<|ENDOFTEXT|>" matches it after lower-casing;
//! 2. the remaining text is normalised: NFC, every whitespace run to one space, lower-casing char
//!    by char (so a final capital sigma becomes "σ", not "ς"). There is no ftfy and no HTML
//!    unescaping: those belonged to the old pure-Python tokenizer;
//! 3. it is split into words with CLIP's pattern, whitespace dropped, and each word again with
//!    GPT-2's pattern (tokenizers' byte-level step). The second split only matters for the
//!    special token spellings CLIP's pattern keeps whole: "<|endoftext|>" as text becomes
//!    "<|", "endoftext", "|>";
//! 4. each word's UTF-8 bytes are mapped to GPT-2's printable byte alphabet, the last one with the
//!    `</w>` end-of-word suffix, and merged by BPE;
//! 5. bos + tokens + eos, truncated so that eos stays last, padded with the pad token.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

use regex::Regex;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use unicode_normalization::UnicodeNormalization;

use crate::error::{Error, Result};

/// What diffusers repositories set as `model_max_length`, and the length CLIP was trained with.
const DEFAULT_MAX_LENGTH: usize = 77;

/// Marks the last symbol of a word in CLIP's vocabulary ("cat</w>" vs "cat" inside "catalog").
const END_OF_WORD: &str = "</w>";

/// CLIP's word pattern, as transformers' CLIPTokenizer sets it. Alternation order matters: the
/// special token spellings and English contractions win over the generic classes.
const WORD_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+";

/// GPT-2's pattern as tokenizers' byte-level pre-tokenizer applies it, less its whitespace
/// alternatives (and the optional leading space of the others): CLIP words hold no whitespace.
const BYTE_LEVEL_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+";

/// The named special tokens transformers reads from the configs, in the order it registers them
/// (the order decides the ids of tokens missing from the vocabulary).
const NAMED_TOKENS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// CLIPTokenizer's own defaults for the tokens a folder leaves unset.
const DEFAULT_NAMED: [(&str, &str); 4] = [
    ("bos_token", "<|startoftext|>"),
    ("eos_token", "<|endoftext|>"),
    ("unk_token", "<|endoftext|>"),
    ("pad_token", "<|endoftext|>"),
];

/// A CLIP tokenizer loaded from a diffusers `tokenizer/` (or `tokenizer_2/`) folder.
pub struct ClipTokenizer {
    bpe: Bpe,
    added: AddedVocab,
    clip_words: Regex,
    byte_level_words: Regex,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    max_length: usize,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.bpe.vocab_size)
            .field("merges", &self.bpe.merges.len())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .field("max_length", &self.max_length)
            .finish()
    }
}

/// Where the BPE vocabulary and merges come from; everything else is read the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BpeSource {
    VocabAndMerges,
    TokenizerJson,
}

impl ClipTokenizer {
    /// A tokenizer folder: vocab.json + merges.txt (what real repos ship), or tokenizer.json when
    /// present (take the BPE vocab and merges from it: one BPE implementation, two sources);
    /// special_tokens_map.json / tokenizer_config.json for pad token and max length (default 77).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        // transformers prefers tokenizer.json whenever the folder has one.
        let source = if dir.join("tokenizer.json").is_file() {
            BpeSource::TokenizerJson
        } else {
            BpeSource::VocabAndMerges
        };
        Self::from_dir_with(dir, source)
    }

    /// Loads `dir` as transformers would if the folder held only the files `source` reads
    /// (with `VocabAndMerges`, tokenizer.json is ignored entirely, added tokens included).
    fn from_dir_with(dir: &Path, source: BpeSource) -> Result<Self> {
        let config: TokenizerConfig =
            read_optional_json(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
        let (merges_file, vocab, merges, json_added) = match source {
            BpeSource::TokenizerJson => {
                let path = dir.join("tokenizer.json");
                let file: TokenizerJson = read_json_file(&path)?;
                let merges = file
                    .model
                    .merges
                    .into_iter()
                    .map(MergeSpec::into_pair)
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|merge| {
                        Error::Model(format!(
                            "{}: merge '{merge}' is not two tokens",
                            path.display()
                        ))
                    })?;
                (path, file.model.vocab, merges, file.added_tokens)
            }
            BpeSource::VocabAndMerges => {
                let vocab = read_json_file(&dir.join("vocab.json"))?;
                let path = dir.join("merges.txt");
                let merges = read_merges_txt(&path)?;
                (path, vocab, merges, Vec::new())
            }
        };
        let (special, listed) = match &config.added_tokens_decoder {
            // A config that lists its added tokens is complete: transformers then ignores
            // special_tokens_map.json, added_tokens.json and tokenizer.json's list.
            Some(decoder) => (None, decoder_tokens(decoder)?),
            None => {
                let special: Option<SpecialTokensMap> =
                    read_optional_json(&dir.join("special_tokens_map.json"))?;
                let mut listed = legacy_added_tokens(dir, &config, special.as_ref())?;
                // tokenizer.json's entries replace added_tokens.json's for the same id.
                for token in json_added {
                    listed.retain(|(id, _)| *id != token.id);
                    listed.push((token.id, token.spec()));
                }
                (special, listed)
            }
        };
        let specs = TokenSpecs::new(&config, special.as_ref(), listed);
        let max_length = max_length(&config)?;

        let added = AddedVocab::new(&specs.added, &vocab);
        // Every named token has a default and every named token is registered as added.
        let named_id = |key| {
            let content = specs
                .named_content(key)
                .expect("named tokens have defaults");
            added.id_of(content).expect("named tokens are added tokens")
        };
        let (bos_id, eos_id, pad_id) = (
            named_id("bos_token"),
            named_id("eos_token"),
            named_id("pad_token"),
        );
        let bpe = Bpe::new(vocab, &merges, named_id("unk_token"))
            .map_err(|e| Error::Model(format!("{}: {e}", merges_file.display())))?;
        Ok(Self {
            bpe,
            added,
            clip_words: Regex::new(WORD_PATTERN).expect("CLIP's word pattern is valid"),
            byte_level_words: Regex::new(BYTE_LEVEL_PATTERN).expect("GPT-2's pattern is valid"),
            bos_id,
            eos_id,
            pad_id,
            max_length,
        })
    }

    /// bos + tokens + eos, truncated to max_length (eos kept last), padded with the pad id.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos_id);
        self.push_tokens(text, self.max_length - 1, &mut ids);
        ids.push(self.eos_id);
        ids.resize(self.max_length, self.pad_id);
        ids
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Appends the tokens of `text` to `out` until it holds `limit` ids. Stopping early is
    /// exact: a word's tokens never depend on the text after it, and each piece is normalised
    /// as a whole before any of its words is cut.
    fn push_tokens(&self, text: &str, limit: usize, out: &mut Vec<u32>) {
        'text: for piece in split_on(&self.added.raw, text) {
            let normalized = match piece {
                Piece::Added(id) => {
                    out.push(id);
                    continue;
                }
                Piece::Text(raw) => normalize(raw),
            };
            for piece in split_on(&self.added.normalized, &normalized) {
                if out.len() >= limit {
                    break 'text;
                }
                match piece {
                    Piece::Added(id) => out.push(id),
                    Piece::Text(text) => {
                        for clip_word in self.clip_words.find_iter(text) {
                            for word in self.byte_level_words.find_iter(clip_word.as_str()) {
                                if out.len() >= limit {
                                    break 'text;
                                }
                                self.bpe.push_word(word.as_str().as_bytes(), out);
                            }
                        }
                    }
                }
            }
        }
        out.truncate(limit);
    }
}

/// transformers' normaliser for CLIP: NFC, whitespace runs to one space, then per-char lower
/// case (the whole-string rules of `str::to_lowercase`, such as final sigma, do not apply).
fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.nfc() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            in_space = false;
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// A stretch of text, or an added token found in it.
#[derive(Debug, PartialEq)]
enum Piece<'a> {
    Text(&'a str),
    Added(u32),
}

/// Cuts `text` at every occurrence of the `tokens`, leftmost first and, among tokens starting at
/// the same place, longest first (tokenizers' matching rule for added tokens).
fn split_on<'a>(tokens: &[(String, u32)], text: &'a str) -> Vec<Piece<'a>> {
    let mut pieces = Vec::new();
    if tokens.is_empty() {
        pieces.push(Piece::Text(text));
        return pieces;
    }
    let mut start = 0;
    let mut pos = 0;
    while pos < text.len() {
        let rest = &text[pos..];
        let found = tokens
            .iter()
            .filter(|(content, _)| rest.starts_with(content.as_str()))
            .max_by_key(|(content, _)| content.len());
        match found {
            Some((content, id)) => {
                if start < pos {
                    pieces.push(Piece::Text(&text[start..pos]));
                }
                pieces.push(Piece::Added(*id));
                pos += content.len();
                start = pos;
            }
            None => pos += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    if start < text.len() {
        pieces.push(Piece::Text(&text[start..]));
    }
    pieces
}

/// The added tokens with their ids, split by where they are looked for.
struct AddedVocab {
    /// Matched in the raw text, before normalisation.
    raw: Vec<(String, u32)>,
    /// Matched in the normalised text; the content is normalised too.
    normalized: Vec<(String, u32)>,
    /// Every added token's original content and id.
    ids: HashMap<String, u32>,
}

impl AddedVocab {
    /// Gives each token its vocabulary id, or the next free id after the vocabulary and the
    /// added ids so far (tokenizers' rule; textual-inversion tokens live there). A content
    /// registered again keeps its id and takes the later `normalized` flag (tokenizers
    /// replaces the earlier AddedToken).
    fn new(specs: &[AddedSpec], vocab: &HashMap<String, u32>) -> Self {
        let mut ids: HashMap<String, u32> = HashMap::new();
        let mut order: Vec<(&str, bool)> = Vec::new();
        for spec in specs {
            if let Some(seen) = order.iter_mut().find(|(c, _)| *c == spec.content) {
                seen.1 = spec.normalized;
                continue;
            }
            let id = match vocab.get(&spec.content) {
                Some(id) => *id,
                None => {
                    let size = vocab.len() as u32;
                    match ids.values().max() {
                        Some(&max) if max >= size || size == 0 => max + 1,
                        _ => size,
                    }
                }
            };
            ids.insert(spec.content.clone(), id);
            order.push((&spec.content, spec.normalized));
        }
        let mut added = Self {
            raw: Vec::new(),
            normalized: Vec::new(),
            ids: HashMap::new(),
        };
        for (content, normalized) in order {
            let id = ids[content];
            // An empty pattern would match everywhere; tokenizers never matches it.
            if content.is_empty() {
                continue;
            }
            if normalized {
                added.normalized.push((normalize(content), id));
            } else {
                added.raw.push((content.to_string(), id));
            }
        }
        added.ids = ids;
        added
    }

    fn id_of(&self, content: &str) -> Option<u32> {
        self.ids.get(content).copied()
    }
}

/// The byte-pair encoder: vocabulary, ranked merges, and the per-byte start symbols.
struct Bpe {
    vocab_size: usize,
    /// (left id, right id) -> (rank, merged id). Ranks are the line order of the merges.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Id of each byte's symbol inside a word and at its end (with `</w>`), or unk if absent.
    byte_ids: [[u32; 2]; 256],
}

impl Bpe {
    /// Fails with the name of a merge token missing from the vocabulary.
    fn new(
        vocab: HashMap<String, u32>,
        merges: &[(String, String)],
        unk_id: u32,
    ) -> std::result::Result<Self, String> {
        let lookup = |token: &str| {
            vocab
                .get(token)
                .copied()
                .ok_or_else(|| format!("merge token '{token}' is not in the vocabulary"))
        };
        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, (left, right)) in merges.iter().enumerate() {
            let pair = (lookup(left)?, lookup(right)?);
            let merged = lookup(&format!("{left}{right}"))?;
            // A pair listed twice keeps its last rank, as tokenizers' map does.
            merge_map.insert(pair, (rank as u32, merged));
        }
        let mut byte_ids = [[unk_id; 2]; 256];
        for (byte, ids) in byte_ids.iter_mut().enumerate() {
            let symbol = byte_symbol(byte as u8);
            let forms = [symbol.to_string(), format!("{symbol}{END_OF_WORD}")];
            for (id, form) in ids.iter_mut().zip(forms) {
                if let Some(found) = vocab.get(&form) {
                    *id = *found;
                }
            }
        }
        Ok(Self {
            vocab_size: vocab.len(),
            merges: merge_map,
            byte_ids,
        })
    }

    /// Appends the BPE tokens of one word. Always merges the lowest-ranked adjacent pair,
    /// leftmost on ties, with a heap over a linked list of symbols: O(n log n) in the word's
    /// length, so a 10 000-letter word costs no more than its letters.
    fn push_word(&self, word: &[u8], out: &mut Vec<u32>) {
        let last = word.len() - 1;
        let mut symbols: Vec<Symbol> = word
            .iter()
            .enumerate()
            .map(|(i, &b)| Symbol {
                id: self.byte_ids[b as usize][usize::from(i == last)],
                prev: i.checked_sub(1),
                next: (i < last).then_some(i + 1),
                merged_away: false,
            })
            .collect();
        let mut queue = BinaryHeap::new();
        for pos in 0..last {
            self.queue_pair(&symbols, pos, &mut queue);
        }
        while let Some(Reverse((_, pos, merged))) = queue.pop() {
            let Some(right) = symbols[pos].next else {
                continue;
            };
            if symbols[pos].merged_away {
                continue;
            }
            // Entries go stale when a neighbour merges first; what counts is whether the pair
            // standing here now still produces the queued token.
            let pair = (symbols[pos].id, symbols[right].id);
            if self.merges.get(&pair).map(|&(_, id)| id) != Some(merged) {
                continue;
            }
            symbols[pos].id = merged;
            symbols[pos].next = symbols[right].next;
            symbols[right].merged_away = true;
            if let Some(next) = symbols[pos].next {
                symbols[next].prev = Some(pos);
            }
            if let Some(prev) = symbols[pos].prev {
                self.queue_pair(&symbols, prev, &mut queue);
            }
            self.queue_pair(&symbols, pos, &mut queue);
        }
        let mut at = Some(0);
        while let Some(pos) = at {
            out.push(symbols[pos].id);
            at = symbols[pos].next;
        }
    }

    /// Queues the pair starting at `pos` if it has a merge: ordered by rank, then position.
    fn queue_pair(&self, symbols: &[Symbol], pos: usize, queue: &mut MergeQueue) {
        if let Some(right) = symbols[pos].next {
            if let Some(&(rank, merged)) = self.merges.get(&(symbols[pos].id, symbols[right].id)) {
                queue.push(Reverse((rank, pos, merged)));
            }
        }
    }
}

/// Min-heap of candidate merges: (rank, position of the left symbol, merged id).
type MergeQueue = BinaryHeap<Reverse<(u32, usize, u32)>>;

/// One symbol of a word being merged, linked to its live neighbours.
struct Symbol {
    id: u32,
    prev: Option<usize>,
    next: Option<usize>,
    merged_away: bool,
}

/// GPT-2's reversible byte alphabet: printable Latin-1 bytes stand for themselves, the others
/// (controls, space, DEL, NBSP, soft hyphen) take the code points from 256 upwards in order.
fn byte_symbol(byte: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(byte) {
        return char::from(byte);
    }
    let rank = (0..byte).filter(|&b| !printable(b)).count() as u32;
    char::from_u32(256 + rank).expect("256..324 are valid code points")
}

/// A token as the configs write it: a bare string, or an AddedToken object.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum TokenSpec {
    Plain(String),
    Object {
        content: String,
        normalized: Option<bool>,
        special: Option<bool>,
        // Read only to tell tokens apart (see `same_as`); tessera does not strip.
        lstrip: Option<bool>,
        rstrip: Option<bool>,
        single_word: Option<bool>,
    },
}

impl TokenSpec {
    fn content(&self) -> &str {
        match self {
            TokenSpec::Plain(content) | TokenSpec::Object { content, .. } => content,
        }
    }

    /// Resolves the `normalized` flag of a token listed as an added token (tokenizer.json's
    /// list, `added_tokens_decoder`): as given, else AddedToken's default, normalised unless
    /// special.
    fn resolve_listed(&self) -> AddedSpec {
        match self {
            TokenSpec::Plain(content) => AddedSpec {
                content: content.clone(),
                normalized: false,
            },
            TokenSpec::Object {
                content,
                normalized,
                special,
                ..
            } => AddedSpec {
                content: content.clone(),
                normalized: normalized.unwrap_or(!special.unwrap_or(false)),
            },
        }
    }

    /// A named (bos, eos, ...) or extra special token as transformers 5 registers it: always
    /// special, so normalised only when the object says `"normalized": true`; a bare string
    /// never is.
    fn resolve_special(&self) -> AddedSpec {
        let normalized = match self {
            TokenSpec::Plain(_) => false,
            TokenSpec::Object { normalized, .. } => normalized.unwrap_or(false),
        };
        AddedSpec {
            content: self.content().to_string(),
            normalized,
        }
    }

    /// transformers' duplicate check when it registers the special tokens (`token in
    /// tokens_to_add`): a string equals a string of the same text, an AddedToken an AddedToken
    /// with the same content and flags, and a string never an AddedToken. The flags are those
    /// the AddedToken holds at that point: special_tokens_map.json's tokens (`from_map`) are
    /// special already, tokenizer_config.json's as written (they become special later); an
    /// AddedToken whose `normalized` is not written normalises unless it is special.
    fn same_as(&self, from_map: bool, other: &TokenSpec, other_from_map: bool) -> bool {
        let flags = |spec: &TokenSpec, from_map: bool| match spec {
            TokenSpec::Plain(_) => None,
            TokenSpec::Object {
                normalized,
                special,
                lstrip,
                rstrip,
                single_word,
                ..
            } => {
                let special = from_map || special.unwrap_or(false);
                Some([
                    normalized.unwrap_or(!special),
                    special,
                    lstrip.unwrap_or(false),
                    rstrip.unwrap_or(false),
                    single_word.unwrap_or(false),
                ])
            }
        };
        self.content() == other.content() && flags(self, from_map) == flags(other, other_from_map)
    }
}

/// An added token to register: its text and whether it is matched after normalisation.
#[derive(Clone, Debug)]
struct AddedSpec {
    content: String,
    normalized: bool,
}

/// Extra special tokens: a list, or (transformers 5) a map of model-specific names.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ExtraTokens {
    List(Vec<TokenSpec>),
    Named(HashMap<String, TokenSpec>),
}

impl ExtraTokens {
    fn specs(&self) -> Vec<&TokenSpec> {
        match self {
            ExtraTokens::List(list) => list.iter().collect(),
            ExtraTokens::Named(map) => {
                let mut named: Vec<_> = map.iter().collect();
                named.sort_by(|a, b| a.0.cmp(b.0));
                named.into_iter().map(|(_, spec)| spec).collect()
            }
        }
    }
}

/// The parts of tokenizer_config.json that change the ids.
#[derive(Debug, Default, Deserialize)]
struct TokenizerConfig {
    model_max_length: Option<serde_json::Value>,
    #[serde(flatten)]
    named: NamedTokens,
    added_tokens_decoder: Option<HashMap<String, TokenSpec>>,
}

/// special_tokens_map.json: the named tokens again, overriding tokenizer_config.json's.
type SpecialTokensMap = NamedTokens;

#[derive(Debug, Default, Deserialize)]
struct NamedTokens {
    bos_token: Option<TokenSpec>,
    eos_token: Option<TokenSpec>,
    unk_token: Option<TokenSpec>,
    sep_token: Option<TokenSpec>,
    pad_token: Option<TokenSpec>,
    cls_token: Option<TokenSpec>,
    mask_token: Option<TokenSpec>,
    additional_special_tokens: Option<ExtraTokens>,
    extra_special_tokens: Option<ExtraTokens>,
}

impl NamedTokens {
    fn get(&self, key: &str) -> Option<&TokenSpec> {
        match key {
            "bos_token" => self.bos_token.as_ref(),
            "eos_token" => self.eos_token.as_ref(),
            "unk_token" => self.unk_token.as_ref(),
            "sep_token" => self.sep_token.as_ref(),
            "pad_token" => self.pad_token.as_ref(),
            "cls_token" => self.cls_token.as_ref(),
            "mask_token" => self.mask_token.as_ref(),
            _ => None,
        }
    }

    fn extra(&self) -> Vec<&TokenSpec> {
        [&self.additional_special_tokens, &self.extra_special_tokens]
            .into_iter()
            .flatten()
            .flat_map(ExtraTokens::specs)
            .collect()
    }
}

/// The resolved token set: named tokens by key, and every added token in registration order.
struct TokenSpecs {
    named: Vec<(&'static str, AddedSpec)>,
    added: Vec<AddedSpec>,
}

impl TokenSpecs {
    /// Combines the configs the way transformers 5 (`TokenizersBackend.__init__`) does: named
    /// tokens from tokenizer_config.json (special_tokens_map.json overriding, when given),
    /// CLIPTokenizer's defaults for the rest. Registered are the `listed` added tokens in id
    /// order, then each named and extra special token in turn, skipping one whose content is
    /// listed or that equals one already taken ([`TokenSpec::same_as`]). Where a content is
    /// registered twice, the later flags win, as in tokenizers' added vocabulary: SDXL's
    /// first tokenizer has a normalised eos `<|endoftext|>` and then the plain string as
    /// pad, so "<|ENDOFTEXT|>" in a prompt is text, not eos.
    fn new(
        config: &TokenizerConfig,
        special: Option<&SpecialTokensMap>,
        mut listed: Vec<(u32, AddedSpec)>,
    ) -> Self {
        listed.sort_by_key(|(id, _)| *id);
        // (key, token, whether special_tokens_map.json gave it)
        let mut named_specs = Vec::new();
        for key in NAMED_TOKENS {
            let from_map = special.and_then(|s| s.get(key)).map(|t| (t.clone(), true));
            let from_config = config.named.get(key).map(|t| (t.clone(), false));
            let default = DEFAULT_NAMED
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, content)| (TokenSpec::Plain(content.to_string()), false));
            if let Some((spec, from_map)) = from_map.or(from_config).or(default) {
                named_specs.push((key, spec, from_map));
            }
        }
        let mut extra: Vec<(&TokenSpec, bool)> = config
            .named
            .extra()
            .into_iter()
            .map(|t| (t, false))
            .collect();
        if let Some(special) = special {
            extra.extend(special.extra().into_iter().map(|t| (t, true)));
        }

        let mut taken: Vec<(&TokenSpec, bool)> = Vec::new();
        let candidates = named_specs
            .iter()
            .map(|(_, spec, from_map)| (spec, *from_map));
        for (spec, from_map) in candidates.chain(extra) {
            let is_listed = listed.iter().any(|(_, l)| l.content == spec.content());
            let duplicate = taken.iter().any(|(t, m)| t.same_as(*m, spec, from_map));
            if !is_listed && !duplicate {
                taken.push((spec, from_map));
            }
        }
        let added = listed
            .into_iter()
            .map(|(_, spec)| spec)
            .chain(taken.into_iter().map(|(spec, _)| spec.resolve_special()))
            .collect();
        let named = named_specs
            .iter()
            .map(|(key, spec, _)| (*key, spec.resolve_special()))
            .collect();
        Self { named, added }
    }

    fn named_content(&self, key: &str) -> Option<&str> {
        self.named
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, spec)| spec.content.as_str())
    }
}

/// tokenizer_config.json's `added_tokens_decoder`: id (as a string) -> AddedToken object.
fn decoder_tokens(decoder: &HashMap<String, TokenSpec>) -> Result<Vec<(u32, AddedSpec)>> {
    decoder
        .iter()
        .map(|(id, spec)| {
            let id = id.parse::<u32>().map_err(|_| {
                Error::Model(format!(
                    "tokenizer_config.json: added_tokens_decoder key '{id}' is not a token id"
                ))
            })?;
            Ok((id, spec.resolve_listed()))
        })
        .collect()
}

/// added_tokens.json, the oldest way of listing added tokens: content -> id; its tokens are
/// normalised unless they are named or extra special tokens.
fn legacy_added_tokens(
    dir: &Path,
    config: &TokenizerConfig,
    special: Option<&SpecialTokensMap>,
) -> Result<Vec<(u32, AddedSpec)>> {
    let Some(file) = read_optional_json::<HashMap<String, u32>>(&dir.join("added_tokens.json"))?
    else {
        return Ok(Vec::new());
    };
    let special_contents: Vec<String> = NAMED_TOKENS
        .iter()
        .filter_map(|key| {
            special
                .and_then(|s| s.get(key))
                .or_else(|| config.named.get(key))
        })
        .chain(config.named.extra())
        .chain(special.map(NamedTokens::extra).unwrap_or_default())
        .map(|spec| spec.content().to_string())
        .collect();
    Ok(file
        .into_iter()
        .map(|(content, id)| {
            let normalized = !special_contents.contains(&content);
            (
                id,
                AddedSpec {
                    content,
                    normalized,
                },
            )
        })
        .collect())
}

/// `model_max_length`, 77 when the config does not say.
fn max_length(config: &TokenizerConfig) -> Result<usize> {
    let Some(value) = &config.model_max_length else {
        return Ok(DEFAULT_MAX_LENGTH);
    };
    match value.as_u64() {
        // At least bos and eos; far below the 1e30 transformers writes for "no limit", which
        // no text encoder takes and `encode` would try to allocate.
        Some(n) if (2..=1 << 20).contains(&n) => Ok(n as usize),
        _ => Err(Error::Model(format!(
            "tokenizer_config.json: model_max_length {value} is not a usable sequence length"
        ))),
    }
}

/// The parts of a tokenizers serialisation transformers takes for CLIP.
#[derive(Deserialize)]
struct TokenizerJson {
    #[serde(default)]
    added_tokens: Vec<TokenizerJsonAdded>,
    model: TokenizerJsonModel,
}

#[derive(Deserialize)]
struct TokenizerJsonModel {
    vocab: HashMap<String, u32>,
    merges: Vec<MergeSpec>,
}

#[derive(Deserialize)]
struct TokenizerJsonAdded {
    id: u32,
    content: String,
    normalized: Option<bool>,
    special: Option<bool>,
}

impl TokenizerJsonAdded {
    fn spec(self) -> AddedSpec {
        let Self {
            content,
            normalized,
            special,
            ..
        } = self;
        TokenSpec::Object {
            content,
            normalized,
            special,
            lstrip: None,
            rstrip: None,
            single_word: None,
        }
        .resolve_listed()
    }
}

/// A merge in tokenizer.json: "left right" (older files) or ["left", "right"].
#[derive(Deserialize)]
#[serde(untagged)]
enum MergeSpec {
    Joined(String),
    Pair(String, String),
}

impl MergeSpec {
    /// The pair, or the text that does not split into one.
    fn into_pair(self) -> std::result::Result<(String, String), String> {
        match self {
            MergeSpec::Pair(left, right) => Ok((left, right)),
            MergeSpec::Joined(text) => match text.split_once(' ') {
                Some((left, right)) if !right.contains(' ') => {
                    Ok((left.to_string(), right.to_string()))
                }
                _ => Err(text),
            },
        }
    }
}

/// merges.txt: an optional `#version` line, then one "left right" pair per line, by rank.
fn read_merges_txt(path: &Path) -> Result<Vec<(String, String)>> {
    let text = read_text(path)?;
    let mut merges = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.starts_with("#version") {
            continue;
        }
        // tokenizers rejects anything but exactly two space-separated parts, blank lines too.
        let parts: Vec<&str> = line.split(' ').collect();
        let [left, right] = parts[..] else {
            return Err(Error::Model(format!(
                "{} line {}: expected two tokens separated by one space, got '{line}'",
                path.display(),
                number + 1
            )));
        };
        merges.push((left.to_string(), right.to_string()));
    }
    Ok(merges)
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        Error::Model(format!(
            "cannot read tokenizer file {}: {e}",
            path.display()
        ))
    })
}

/// A required JSON file; missing or malformed is the model's fault and names the file.
fn read_json_file<T: DeserializeOwned>(path: &Path) -> Result<T> {
    crate::error::parse_json(&read_text(path)?).map_err(|e| {
        Error::Model(format!(
            "cannot parse tokenizer file {}: {e}",
            path.display()
        ))
    })
}

/// An optional JSON file: `None` when absent, an error naming it when unreadable or malformed.
fn read_optional_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if path.exists() {
        read_json_file(path).map(Some)
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_testkit::{fixtures_dir, parity_case_names};

    /// tests/fixtures/tokenizer/expected.json, written by generate.py with transformers.
    #[derive(Deserialize)]
    struct Expected {
        prompts: Vec<String>,
        tokenizers: Vec<ExpectedTokenizer>,
    }

    #[derive(Deserialize)]
    struct ExpectedTokenizer {
        dir: String,
        max_length: usize,
        pad_id: u32,
        eos_id: u32,
        ids: Vec<Vec<u32>>,
    }

    fn expected() -> Expected {
        let path = fixtures_dir().join("tokenizer/expected.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn assert_reproduces(tok: &ClipTokenizer, reference: &ExpectedTokenizer, prompts: &[String]) {
        assert_eq!(tok.max_length(), reference.max_length, "{}", reference.dir);
        assert_eq!(tok.pad_id(), reference.pad_id, "{}", reference.dir);
        assert_eq!(tok.eos_id(), reference.eos_id, "{}", reference.dir);
        assert_eq!(prompts.len(), reference.ids.len());
        for (prompt, ids) in prompts.iter().zip(&reference.ids) {
            assert_eq!(&tok.encode(prompt), ids, "{}: {prompt:?}", reference.dir);
        }
    }

    #[test]
    fn reproduces_transformers_on_every_reference_folder() {
        let expected = expected();
        assert_eq!(expected.tokenizers.len(), 7);
        for reference in &expected.tokenizers {
            let tok = ClipTokenizer::from_dir(&fixtures_dir().join(&reference.dir)).unwrap();
            assert_reproduces(&tok, reference, &expected.prompts);
        }
    }

    #[test]
    fn vocab_merges_and_tokenizer_json_give_the_same_ids() {
        let expected = expected();
        let mut compared = 0;
        for reference in &expected.tokenizers {
            let dir = fixtures_dir().join(&reference.dir);
            if !dir.join("tokenizer.json").is_file() {
                continue;
            }
            for source in [BpeSource::TokenizerJson, BpeSource::VocabAndMerges] {
                let tok = ClipTokenizer::from_dir_with(&dir, source).unwrap();
                assert_reproduces(&tok, reference, &expected.prompts);
            }
            compared += 1;
        }
        assert_eq!(
            compared, 4,
            "the diffusers-parity tokenizers and trained/ ship tokenizer.json"
        );
    }

    /// A diffusers-parity case: the prompt and the ids diffusers fed its text encoder(s).
    #[derive(Deserialize)]
    struct Case {
        model: String,
        params: CaseParams,
        tokens: Vec<u32>,
        tokens_2: Option<Vec<u32>>,
    }

    #[derive(Deserialize)]
    struct CaseParams {
        prompt: String,
    }

    #[test]
    fn reproduces_the_diffusers_parity_case_tokens() {
        let parity = fixtures_dir().join("diffusers-parity");
        let mut cases = 0;
        for name in parity_case_names() {
            let path = parity.join("cases").join(format!("{name}.json"));
            let case: Case =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let model = parity.join(&case.model);
            let tok = ClipTokenizer::from_dir(&model.join("tokenizer")).unwrap();
            assert_eq!(
                tok.encode(&case.params.prompt),
                case.tokens,
                "{}",
                path.display()
            );
            if let Some(tokens_2) = case.tokens_2 {
                let tok_2 = ClipTokenizer::from_dir(&model.join("tokenizer_2")).unwrap();
                assert_eq!(
                    tok_2.encode(&case.params.prompt),
                    tokens_2,
                    "{}",
                    path.display()
                );
            }
            cases += 1;
        }
        assert!(cases >= 9, "found only {cases} cases");
    }

    /// Copies the vocabulary of a fixture folder into a scratch folder to break things in.
    fn scratch_folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let source = fixtures_dir().join("tokenizer/bare");
        for file in ["vocab.json", "merges.txt"] {
            std::fs::copy(source.join(file), dir.path().join(file)).unwrap();
        }
        dir
    }

    fn model_error(dir: &Path) -> String {
        match ClipTokenizer::from_dir(dir) {
            Err(Error::Model(message)) => message,
            other => panic!("expected a model error, got {other:?}"),
        }
    }

    #[test]
    fn missing_or_broken_files_are_model_errors_naming_the_file() {
        let dir = scratch_folder();
        ClipTokenizer::from_dir(dir.path()).unwrap();

        std::fs::write(dir.path().join("tokenizer_config.json"), "{ not json").unwrap();
        assert!(model_error(dir.path()).contains("tokenizer_config.json"));
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"model_max_length": 1e30}"#,
        )
        .unwrap();
        assert!(model_error(dir.path()).contains("model_max_length"));
        std::fs::remove_file(dir.path().join("tokenizer_config.json")).unwrap();

        std::fs::write(dir.path().join("special_tokens_map.json"), "[]").unwrap();
        assert!(model_error(dir.path()).contains("special_tokens_map.json"));
        std::fs::remove_file(dir.path().join("special_tokens_map.json")).unwrap();

        let merges = std::fs::read_to_string(dir.path().join("merges.txt")).unwrap();
        std::fs::write(
            dir.path().join("merges.txt"),
            merges.replacen("i n\n", "i n x\n", 1),
        )
        .unwrap();
        assert!(model_error(dir.path()).contains("merges.txt line 2"));
        std::fs::write(
            dir.path().join("merges.txt"),
            merges.replacen("i n\n", "i nope\n", 1),
        )
        .unwrap();
        assert!(model_error(dir.path()).contains("'nope'"));
        std::fs::remove_file(dir.path().join("merges.txt")).unwrap();
        assert!(model_error(dir.path()).contains("merges.txt"));

        std::fs::remove_file(dir.path().join("vocab.json")).unwrap();
        assert!(model_error(dir.path()).contains("vocab.json"));

        std::fs::write(
            dir.path().join("tokenizer.json"),
            r#"{"model": {"vocab": {}}}"#,
        )
        .unwrap();
        assert!(model_error(dir.path()).contains("tokenizer.json"));
    }

    #[test]
    fn byte_alphabet_is_gpt2s() {
        // Printable bytes stand for themselves; the rest count up from U+0100 in byte order:
        // NUL, then newline and space (GPT-2's familiar "Ċ" and "Ġ"), DEL, NBSP, soft hyphen.
        assert_eq!(byte_symbol(b'a'), 'a');
        assert_eq!(byte_symbol(0xE9), 'é');
        assert_eq!(byte_symbol(0), '\u{100}');
        assert_eq!(byte_symbol(b'\n'), 'Ċ');
        assert_eq!(byte_symbol(b' '), 'Ġ');
        assert_eq!(byte_symbol(0x7F), '\u{121}');
        assert_eq!(byte_symbol(0xA0), '\u{142}');
        assert_eq!(byte_symbol(0xAD), '\u{143}');
        let distinct: std::collections::HashSet<char> = (0..=255).map(byte_symbol).collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn added_tokens_match_leftmost_then_longest() {
        let tokens = vec![
            ("ab".to_string(), 1),
            ("abc".to_string(), 2),
            ("bcd".to_string(), 3),
        ];
        assert_eq!(
            split_on(&tokens, "xabcdab"),
            vec![
                Piece::Text("x"),
                Piece::Added(2),
                Piece::Text("d"),
                Piece::Added(1)
            ]
        );
        assert_eq!(split_on(&tokens, "é"), vec![Piece::Text("é")]);
    }
}
