//! A synthetic CLIP BPE vocabulary with the real one's shape: 49408 entries, the byte alphabet
//! in GPT-2's order (ids 0..256), the same symbols with the end-of-word mark (256..512), 48894
//! merged tokens, then `<|startoftext|>` = 49406 and `<|endoftext|>` = 49407. OpenAI's merge
//! list is not ours to ship, so the merges are made up: lower-case letter strings, grown one
//! letter at a time, shortest first. Every merge joins two tokens that exist by then into a
//! new one, which is all a BPE loader checks, and prompts tokenize into plausible pieces.

use std::path::Path;

use anyhow::{Context, Result};

/// CLIP's vocabulary size (`vocab_size` of every SD text encoder config).
pub const VOCAB_SIZE: usize = 49408;
const END_OF_WORD: &str = "</w>";
const SPECIALS: [&str; 2] = ["<|startoftext|>", "<|endoftext|>"];

/// The 256 byte symbols in the order CLIP's vocabulary lists them: the printable Latin-1
/// bytes as themselves, then the others mapped to U+0100 upwards, in byte order.
fn byte_alphabet() -> Vec<char> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut symbols: Vec<char> = (0..=255u8)
        .filter(|&b| printable(b))
        .map(char::from)
        .collect();
    let others = (0..=255u8).filter(|&b| !printable(b)).count() as u32;
    symbols.extend((0..others).map(|i| char::from_u32(256 + i).expect("U+0100.. are chars")));
    symbols
}

/// The vocabulary in id order and the merges in priority order.
pub fn vocab_and_merges() -> (Vec<String>, Vec<(String, String)>) {
    let alphabet = byte_alphabet();
    let mut vocab: Vec<String> = alphabet.iter().map(char::to_string).collect();
    vocab.extend(alphabet.iter().map(|c| format!("{c}{END_OF_WORD}")));
    let merge_count = VOCAB_SIZE - vocab.len() - SPECIALS.len();
    let letters: Vec<String> = ('a'..='z').map(String::from).collect();
    let mut merges = Vec::with_capacity(merge_count);
    // Word-internal prefixes of the current length; each gets every letter appended, both
    // inside a word and at its end. Only the inner forms become the next length's prefixes.
    let mut prefixes = letters.clone();
    'grow: loop {
        let mut longer = Vec::with_capacity(prefixes.len() * letters.len());
        for prefix in &prefixes {
            for letter in &letters {
                for suffix in [letter.clone(), format!("{letter}{END_OF_WORD}")] {
                    if merges.len() == merge_count {
                        break 'grow;
                    }
                    let token = format!("{prefix}{suffix}");
                    if !suffix.ends_with(END_OF_WORD) {
                        longer.push(token.clone());
                    }
                    vocab.push(token);
                    merges.push((prefix.clone(), suffix));
                }
            }
        }
        prefixes = longer;
    }
    vocab.extend(SPECIALS.iter().map(|s| s.to_string()));
    (vocab, merges)
}

/// Writes `vocab.json` (token -> id) and `merges.txt` (with the `#version` header line that
/// CLIP's file has and loaders skip) into `dir`.
pub fn write(dir: &Path) -> Result<()> {
    let (vocab, merges) = vocab_and_merges();
    let entries: Vec<String> = vocab
        .iter()
        .enumerate()
        .map(|(id, token)| format!("{}: {id}", serde_json::Value::from(token.as_str())))
        .collect();
    let vocab_json = format!("{{{}}}", entries.join(", "));
    let mut merges_txt = String::from("#version: 0.2\n");
    for (a, b) in &merges {
        merges_txt.push_str(&format!("{a} {b}\n"));
    }
    for (name, text) in [("vocab.json", vocab_json), ("merges.txt", merges_txt)] {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn has_clips_shape_and_every_merge_is_buildable() {
        let (vocab, merges) = vocab_and_merges();
        assert_eq!(vocab.len(), VOCAB_SIZE);
        assert_eq!(vocab[49406], "<|startoftext|>");
        assert_eq!(vocab[49407], "<|endoftext|>");
        assert_eq!((vocab[0].as_str(), vocab[255].as_str()), ("!", "\u{143}"));
        assert_eq!(
            (vocab[256].as_str(), vocab[511].as_str()),
            ("!</w>", "\u{143}</w>")
        );
        assert_eq!(merges.len(), VOCAB_SIZE - 512 - 2);
        let ids: HashMap<&str, usize> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        assert_eq!(ids.len(), VOCAB_SIZE, "tokens are unique");
        // A merge may only use tokens that exist before it, and creates the next id.
        for (rank, (a, b)) in merges.iter().enumerate() {
            let made = 512 + rank;
            assert!(ids[a.as_str()] < made && ids[b.as_str()] < made, "{a} {b}");
            assert_eq!(ids[format!("{a}{b}").as_str()], made);
        }
    }
}
