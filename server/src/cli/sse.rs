//! An incremental Server-Sent Events parser, as the WHATWG "event stream interpretation"
//! describes it: lines end in CRLF, LF or CR; `data:` lines join with `\n`; a blank line
//! dispatches; the last event id persists across events; `retry:` takes digits only;
//! lines starting with `:` are comments (Herald's heartbeats).

use std::time::Duration;

/// What a chunk of the stream held, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// A dispatched event. `id` is the stream's last event id at dispatch time.
    Event { id: String, name: Option<String>, data: String },
    /// A `retry:` hint.
    Retry(Duration),
    /// A comment line (`: heartbeat`).
    Comment,
}

#[derive(Default)]
pub struct Parser {
    /// Bytes of an unfinished line.
    line: Vec<u8>,
    /// The previous chunk ended in CR: a leading LF of the next one belongs to it.
    after_cr: bool,
    data: String,
    has_data: bool,
    name: Option<String>,
    last_id: String,
}

impl Parser {
    /// Feeds a chunk of the body, returning what it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Item> {
        let mut out = Vec::new();
        for &b in chunk {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            match b {
                b'\r' | b'\n' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&String::from_utf8_lossy(&line), &mut out);
                }
                _ => self.line.push(b),
            }
        }
        out
    }

    fn line_done(&mut self, line: &str, out: &mut Vec<Item>) {
        if line.is_empty() {
            let name = self.name.take();
            if std::mem::take(&mut self.has_data) {
                let data = std::mem::take(&mut self.data);
                out.push(Item::Event { id: self.last_id.clone(), name, data });
            }
            return;
        }
        if line.starts_with(':') {
            out.push(Item::Comment);
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.name = Some(value.to_owned()),
            "id" if !value.contains('\0') => value.clone_into(&mut self.last_id),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse::<u64>() {
                    out.push(Item::Retry(Duration::from_millis(ms)));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, name: Option<&str>, data: &str) -> Item {
        Item::Event { id: id.to_owned(), name: name.map(str::to_owned), data: data.to_owned() }
    }

    #[test]
    fn herald_frames_parse_whatever_the_chunking() {
        let wire = "retry: 3000\n\nid: a:1\ndata: {\"type\":\"connected\"}\n\n: heartbeat\n\nid: a:2\nevent: chat\ndata: {\"n\":1}\n\n";
        let whole = Parser::default().feed(wire.as_bytes());
        let expected = vec![
            Item::Retry(Duration::from_millis(3000)),
            event("a:1", None, "{\"type\":\"connected\"}"),
            Item::Comment,
            event("a:2", Some("chat"), "{\"n\":1}"),
        ];
        assert_eq!(whole, expected);
        for size in 1..wire.len() {
            let mut p = Parser::default();
            let items: Vec<Item> = wire.as_bytes().chunks(size).flat_map(|c| p.feed(c)).collect();
            assert_eq!(items, expected, "chunks of {size}");
        }
    }

    #[test]
    fn crlf_and_cr_line_ends_multi_line_data_and_a_persisting_id() {
        let mut p = Parser::default();
        let items = p.feed(b"id: x\r\ndata: one\r\ndata:two\r\rdata: three\n\n");
        assert_eq!(items, vec![event("x", None, "one\ntwo"), event("x", None, "three")]);
        // A CR at the end of one chunk and the LF at the start of the next are one line end.
        let mut p = Parser::default();
        let mut items = p.feed(b"data: a\r");
        items.extend(p.feed(b"\n\r\n"));
        assert_eq!(items, vec![event("", None, "a")]);
    }

    #[test]
    fn blocks_without_data_dispatch_nothing_and_bad_retry_values_are_ignored() {
        let mut p = Parser::default();
        assert_eq!(p.feed(b"id: only\nevent: x\n\nretry: soon\nretry: 12a\n\n"), vec![]);
        assert_eq!(p.feed(b"data: d\n\n"), vec![event("only", None, "d")], "the id persists, the name does not");
    }
}
