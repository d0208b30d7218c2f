//! Request templates: a URL or body with `{i}`, `{seq}`, `{ts}` and `{run}` filled in per
//! request. Any other brace is literal, so JSON bodies need no escaping.

use std::fmt::Write as _;

/// A parsed template: literal text and placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Lit(String),
    /// `{i}`: the channel index (a subscriber's channel, or an event's target channel).
    Index,
    /// `{seq}`: the event's sequence number on its channel, from 1.
    Seq,
    /// `{ts}`: microseconds since the Unix epoch when the request is sent.
    Ts,
    /// `{run}`: this run's id, so every run uses fresh channels.
    Run,
}

/// The values a template is filled with.
#[derive(Clone, Copy, Debug, Default)]
pub struct Vars<'a> {
    pub index: u64,
    pub seq: u64,
    pub ts: u64,
    pub run: &'a str,
}

const PLACEHOLDERS: [(&str, Part); 4] =
    [("{i}", Part::Index), ("{seq}", Part::Seq), ("{ts}", Part::Ts), ("{run}", Part::Run)];

impl Template {
    pub fn parse(text: &str) -> Self {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(pos) = rest.find('{') {
            lit.push_str(&rest[..pos]);
            let tail = &rest[pos..];
            match PLACEHOLDERS.iter().find(|(name, _)| tail.starts_with(name)) {
                Some((name, part)) => {
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(part.clone());
                    rest = &tail[name.len()..];
                }
                None => {
                    lit.push('{');
                    rest = &tail[1..];
                }
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Self { parts }
    }

    /// Appends the filled-in template to `out`.
    pub fn render_into(&self, vars: &Vars<'_>, out: &mut String) {
        for part in &self.parts {
            // Writing to a String cannot fail.
            let _ = match part {
                Part::Lit(s) => {
                    out.push_str(s);
                    Ok(())
                }
                Part::Index => write!(out, "{}", vars.index),
                Part::Seq => write!(out, "{}", vars.seq),
                Part::Ts => write!(out, "{}", vars.ts),
                Part::Run => {
                    out.push_str(vars.run);
                    Ok(())
                }
            };
        }
    }

    pub fn render(&self, vars: &Vars<'_>) -> String {
        let mut out = String::new();
        self.render_into(vars, &mut out);
        out
    }

    /// Whether the template has `{i}`, so that each channel gets its own URL.
    pub fn uses_index(&self) -> bool {
        self.parts.contains(&Part::Index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_and_other_braces_kept() {
        let t = Template::parse(r#"{"channel":"user:{run}-{i}","seq":{seq},"ts":{ts},"x":{}}"#);
        let got = t.render(&Vars { index: 7, seq: 3, ts: 99, run: "r1" });
        assert_eq!(got, r#"{"channel":"user:r1-7","seq":3,"ts":99,"x":{}}"#);
        assert!(t.uses_index());
        assert!(!Template::parse("http://127.0.0.1:1/sub/{run}").uses_index());
    }
}
