#![allow(dead_code)]
//! CLIP's real vocabulary, built at test time from OpenAI's BPE file as open-clip-torch ships
//! it (tests/fixtures/tokenizer/clip-vocab/bpe_simple_vocab_16e6.txt.gz), the way CLIP's
//! SimpleTokenizer builds it and the Hub's `vocab.json` / `merges.txt` hold it: merges are
//! lines 1 to 48894 of the file; the vocabulary is GPT-2's 256 byte symbols, the same with
//! `</w>`, one token per merge, then `<|startoftext|>` and `<|endoftext|>`.
//! `generate.py` next to the file builds the same and checked it against a real repo's files.

use std::io::Read;
use std::path::{Path, PathBuf};

pub const VOCAB_SIZE: usize = 49408;
const MERGES: usize = 49152 - 256 - 2;

pub struct ClipVocab {
    /// Tokens in id order.
    pub tokens: Vec<String>,
    /// Merges in rank order.
    pub merges: Vec<(String, String)>,
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// A repo folder of tests/fixtures/real-configs, failing loudly (not skipping) when its config
/// files have not been put there (see that folder's SOURCES.md).
pub fn real_config_folder(folder: &str) -> PathBuf {
    let dir = fixtures_dir().join("real-configs").join(folder);
    assert!(
        dir.join("model_index.json").is_file(),
        "{} holds no model_index.json: the real repos' config files are missing from \
         tests/fixtures/real-configs (see SOURCES.md there for where they come from)",
        dir.display()
    );
    dir
}

/// GPT-2's byte symbols in CLIP's order: the printable Latin-1 bytes as themselves, then the
/// other bytes, in byte order, as the code points from 256 up.
fn byte_symbols() -> Vec<char> {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut symbols: Vec<char> = (0..256u32)
        .filter(|&b| printable(b))
        .filter_map(char::from_u32)
        .collect();
    let others = (0..256u32).filter(|&b| !printable(b)).count() as u32;
    symbols.extend((256..256 + others).filter_map(char::from_u32));
    symbols
}

/// Reads a gzipped fixture file.
pub fn gunzip(path: &Path) -> Vec<u8> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    out
}

pub fn build() -> ClipVocab {
    let path = fixtures_dir().join("tokenizer/clip-vocab/bpe_simple_vocab_16e6.txt.gz");
    let text = String::from_utf8(gunzip(&path)).expect("the BPE file is UTF-8");
    let merges: Vec<(String, String)> = text
        .split('\n')
        .skip(1)
        .take(MERGES)
        .map(|line| {
            let (left, right) = line.split_once(' ').expect("a merge is two symbols");
            (left.to_string(), right.to_string())
        })
        .collect();
    assert_eq!(merges.len(), MERGES, "{}", path.display());
    let symbols = byte_symbols();
    let mut tokens: Vec<String> = symbols.iter().map(char::to_string).collect();
    tokens.extend(symbols.iter().map(|c| format!("{c}</w>")));
    tokens.extend(merges.iter().map(|(l, r)| format!("{l}{r}")));
    tokens.extend(["<|startoftext|>".to_string(), "<|endoftext|>".to_string()]);
    ClipVocab { tokens, merges }
}

impl ClipVocab {
    /// Writes `vocab.json` and `merges.txt` into `dir` as the Hub's repositories hold them.
    pub fn write(&self, dir: &Path) {
        let vocab: serde_json::Map<String, serde_json::Value> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.clone(), id.into()))
            .collect();
        std::fs::write(
            dir.join("vocab.json"),
            serde_json::Value::Object(vocab).to_string(),
        )
        .unwrap();
        let mut merges = String::from("#version: 0.2\n");
        for (left, right) in &self.merges {
            merges.push_str(&format!("{left} {right}\n"));
        }
        std::fs::write(dir.join("merges.txt"), merges).unwrap();
    }
}
