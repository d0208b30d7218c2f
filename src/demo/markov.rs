//! The demo's "AI": a word-level Markov chain (order 2) over Herald's own documentation,
//! embedded in the binary. It produces real text one token at a time, which is all the demo
//! needs to show token streaming; it knows nothing.

use std::collections::HashMap;
use std::sync::OnceLock;

/// The text the chain learns from.
const CORPUS: &[&str] = &[
    include_str!("../../README.md"),
    include_str!("../../docs/architecture.md"),
    include_str!("../../docs/channels.md"),
    include_str!("../../docs/scaling.md"),
    include_str!("../../docs/security.md"),
];

pub struct Chain {
    /// (word, word) → the words seen after them.
    next: HashMap<(u32, u32), Vec<u32>>,
    words: Vec<String>,
    /// Pairs that begin a sentence.
    starts: Vec<(u32, u32)>,
    /// Lowercased word → pairs it begins.
    by_word: HashMap<String, Vec<(u32, u32)>>,
}

/// The chain over the embedded docs, built on first use.
pub fn chain() -> &'static Chain {
    static CHAIN: OnceLock<Chain> = OnceLock::new();
    CHAIN.get_or_init(|| Chain::learn(CORPUS))
}

impl Chain {
    pub fn learn(texts: &[&str]) -> Self {
        let mut chain = Self { next: HashMap::new(), words: Vec::new(), starts: Vec::new(), by_word: HashMap::new() };
        let mut ids: HashMap<String, u32> = HashMap::new();
        for text in texts {
            let tokens: Vec<u32> = prose(text)
                .split_whitespace()
                .filter(|w| !looks_like_code(w))
                .map(|w| {
                    let n = ids.len() as u32;
                    *ids.entry(w.to_owned()).or_insert_with(|| {
                        chain.words.push(w.to_owned());
                        n
                    })
                })
                .collect();
            for (i, win) in tokens.windows(3).enumerate() {
                let key = (win[0], win[1]);
                chain.next.entry(key).or_default().push(win[2]);
                if i == 0 || chain.words[tokens[i - 1] as usize].ends_with('.') {
                    chain.starts.push(key);
                }
                let lower = chain.words[win[0] as usize].to_lowercase();
                let lower = lower.trim_matches(|c: char| !c.is_alphanumeric()).to_owned();
                if lower.len() >= 4 {
                    chain.by_word.entry(lower).or_default().push(key);
                }
            }
        }
        chain
    }

    /// Generates about `words` words (finishing the sentence, up to twice that), starting
    /// from a word of `prompt` the docs use when there is one. Each item is one token, with
    /// its leading space.
    pub fn generate(&self, prompt: &str, words: usize, rng: &mut fastrand::Rng) -> Vec<String> {
        let start = prompt
            .split_whitespace()
            .map(|w| w.to_lowercase().trim_matches(|c: char| !c.is_alphanumeric()).to_owned())
            .filter_map(|w| self.by_word.get(&w))
            .max_by_key(|v| v.len())
            .and_then(|pairs| pairs.get(rng.usize(..pairs.len())))
            .or_else(|| self.starts.get(rng.usize(..self.starts.len().max(1))))
            .copied();
        let Some((mut a, mut b)) = start else { return Vec::new() };
        let mut out = vec![self.words[a as usize].clone(), format!(" {}", self.words[b as usize])];
        while out.len() < words * 2 {
            if out.len() >= words && self.words[b as usize].ends_with('.') {
                break;
            }
            let Some(options) = self.next.get(&(a, b)) else {
                // A dead end (the last words of a document): an answer too short yet goes
                // on with a new sentence, so its length does not depend on where it ran out.
                if out.len() >= words || self.starts.is_empty() {
                    break;
                }
                (a, b) = self.starts[rng.usize(..self.starts.len())];
                out.push(format!(" {}", self.words[a as usize]));
                out.push(format!(" {}", self.words[b as usize]));
                continue;
            };
            let c = options[rng.usize(..options.len())];
            out.push(format!(" {}", self.words[c as usize]));
            (a, b) = (b, c);
        }
        out
    }
}

/// Identifiers, paths and calls read badly in a sentence: the chain skips them.
fn looks_like_code(word: &str) -> bool {
    word.contains(|c: char| "_:(){}=<>/$\\\"'".contains(c)) && !word.ends_with(':')
        || !word.contains(|c: char| c.is_alphanumeric())
}

/// The prose of a Markdown text: no code blocks, tables, headings markers, link targets or
/// inline-code backticks.
fn prose(markdown: &str) -> String {
    let mut out = String::with_capacity(markdown.len());
    let mut fenced = false;
    for line in markdown.lines() {
        let t = line.trim_start();
        if t.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || t.starts_with('|') || t.starts_with('#') || t.starts_with('<') {
            continue;
        }
        let t = t.trim_start_matches(|c: char| c == '-' || c == '*' || c == '>' || c.is_ascii_digit() || c == '.');
        let mut rest = t;
        // `[text](target)` → `text`
        while let Some(open) = rest.find("](") {
            let Some(close) = rest[open..].find(')') else { break };
            out.push_str(&rest[..open]);
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    out.replace(['`', '[', '*'], "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_only_says_what_the_docs_say_word_pair_by_word_pair() {
        let c = Chain::learn(&["Herald pushes events to subscribers. Herald keeps a history per channel."]);
        let mut rng = fastrand::Rng::with_seed(7);
        let text: String = c.generate("history please", 5, &mut rng).concat();
        assert!(text.starts_with("history per channel."), "{text}");
        let any: String = c.generate("", 3, &mut rng).concat();
        assert!(any.starts_with("Herald"), "{any}");
    }

    #[test]
    fn markdown_is_reduced_to_prose() {
        let p = prose("# Title\n\nSee [the docs](docs/a.md) and `code`.\n```sh\ncurl x\n```\n| a | b |\n- item");
        assert_eq!(p.split_whitespace().collect::<Vec<_>>(), ["See", "the", "docs", "and", "code.", "item"]);
        let words = ["history_ttl,", "user:<id>", "Event::chat(x).", "\"quoted\"", "—", "Note:", "plain."];
        let kept: Vec<_> = words.into_iter().filter(|w| !looks_like_code(w)).collect();
        assert_eq!(kept, ["Note:", "plain."]);
    }

    #[test]
    fn the_embedded_docs_give_a_useful_chain() {
        let mut rng = fastrand::Rng::with_seed(1);
        let tokens = chain().generate("How does resume work?", 40, &mut rng);
        assert!(tokens.len() >= 40, "{tokens:?}");
    }

    #[test]
    fn an_answer_is_never_shorter_than_asked_even_when_the_chain_reaches_a_dead_end() {
        for seed in 0..500 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let words = rng.usize(35..60);
            let tokens = chain().generate("How does resume work?", words, &mut rng);
            assert!(tokens.len() >= words, "seed {seed}: {} of {words}: {tokens:?}", tokens.len());
        }
    }
}
