//! The fast read of a publish request's JSON body: straight into the channels (as
//! [`ChannelName`]s), type and payload fields that `Herald::publish_as` takes, without a
//! `serde_json::Value` tree of the whole body to take apart again.
//!
//! It refuses nothing itself and decides nothing of its own: it reads only the bodies that
//! the `Value` path of `super` accepts, and builds from them exactly what that path builds
//! (the payload fields are the same `Map` of `Value`s, the same keys win when a key comes
//! twice, the same depth limit holds: the same `serde_json` deserializer reads the same
//! values; plain scalar fields are kept as the JSON text they are written as, which is that
//! map's, see `event::PayloadReader`). On anything else, malformed JSON, a value of the wrong type, a bad channel name,
//! it gives up and the caller runs the `Value` path on the same bytes, whose refusal (its
//! code, its message, and which of several faults it names first) is the answer. So a
//! refused body is read twice, an accepted one once.
//!
//! The usual body, an object of a type, a channel and a few plain strings and integers (or
//! an array of them), is read by hand first ([`Scan`]): the text of its fields is copied as
//! it is, where `serde_json` would parse each integer only for it to be written again.
//! Anything else in it makes the hand read give up and the `serde_json` read run instead.

use serde::Deserialize as _;
use serde::de::{self, DeserializeSeed, Deserializer as _, IntoDeserializer as _, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::channel::ChannelName;
use crate::event::{Event, IDEMPOTENCY_FIELD, PayloadReader, Scalar};
use crate::herald::Herald;

/// A publish body as read: one event object, or an array of them (a batch).
pub(super) enum Body {
    One(Item),
    Batch(Vec<Item>),
}

/// One event object of a body.
pub(super) struct Item {
    /// Its channels (`channel` or `channels`); empty for the body of
    /// `POST /api/channels/{channel}/events`, whose channel is the path's.
    pub channels: Vec<ChannelName>,
    pub event: Event,
    /// A batch item's own `idempotencyKey`, taken out of its payload. (In a single event's
    /// body the field stays in the payload, as on the `Value` path.)
    pub key: Option<String>,
}

/// The body of `POST /api/publish`, or `None` when the `Value` path must read it.
pub(super) fn publish(herald: &Herald, bytes: &[u8]) -> Option<Body> {
    Scan::publish(herald, bytes).or_else(|| read_publish(herald, bytes))
}

/// The body of `POST /api/channels/{channel}/events` (an object that names no channel), or
/// `None` when the `Value` path must read it.
pub(super) fn on_path(herald: &Herald, bytes: &[u8]) -> Option<Item> {
    Scan::on_path(herald, bytes).or_else(|| read_on_path(herald, bytes))
}

/// [`publish`] by `serde_json` alone.
fn read_publish(herald: &Herald, bytes: &[u8]) -> Option<Body> {
    read(bytes, |de| de.deserialize_any(BodyVisitor(Reader { herald, previous: &mut None })))
}

/// [`on_path`] by `serde_json` alone.
fn read_on_path(herald: &Herald, bytes: &[u8]) -> Option<Item> {
    let reader = Reader { herald, previous: &mut None };
    read(bytes, |de| de.deserialize_map(ItemVisitor { reader, in_batch: false, on_path: true }))
}

fn read<T>(
    bytes: &[u8],
    with: impl FnOnce(&mut serde_json::Deserializer<serde_json::de::StrRead<'_>>) -> Result<T, serde_json::Error>,
) -> Option<T> {
    // The body is checked as UTF-8 once, as a whole: read from a `&str`, `serde_json` does
    // not check each string again (about 100 instructions a string, six an event). A body
    // that is not UTF-8 is none that JSON takes, and the `Value` path refuses it.
    let text = std::str::from_utf8(bytes).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    let value = with(&mut de).ok()?;
    // Only whitespace may follow, as for `serde_json::from_slice`.
    de.end().ok()?;
    Some(value)
}

/// The hand read of the usual body: JSON of objects whose members are a `type` and a
/// `channel` (plain strings) and payload fields that `PayloadReader::written` keeps as text
/// (plain strings, integers, `true`, `false`, `null`), with JSON's whitespace anywhere
/// between. It takes only ASCII (so the body needs no UTF-8 check), only strings with no
/// escapes and no control characters, only integers in the one form `serde_json` writes
/// their value in, and no key twice; on anything else it gives up (`None`) and the
/// `serde_json` read starts over. What it takes it reads as that read does: the same
/// channels, parsed in the same order after the same channel; the same type, shared the
/// same way; the same payload text, written by the same `PayloadReader`.
struct Scan<'b> {
    bytes: &'b [u8],
    /// The body as a string, on `POST /api/publish`, whose channel names are parsed from
    /// it: checked as UTF-8 once, at about a tenth of an instruction a byte, not each name
    /// on its own, at over a hundred. (The body on the path names no channel, and its type
    /// is compared as bytes: it is not checked at all.)
    text: Option<&'b str>,
    at: usize,
}

impl<'b> Scan<'b> {
    fn on_path(herald: &Herald, bytes: &'b [u8]) -> Option<Item> {
        let mut scan = Scan { bytes, text: None, at: 0 };
        let item = scan.item(&mut Reader { herald, previous: &mut None }, true)?;
        scan.end()?;
        Some(item)
    }

    fn publish(herald: &Herald, bytes: &'b [u8]) -> Option<Body> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut scan = Scan { bytes, text: Some(text), at: 0 };
        let mut previous = None;
        let mut reader = Reader { herald, previous: &mut previous };
        let body = if scan.next_is(b'[') {
            let mut items = Vec::new();
            if !scan.next_is(b']') {
                loop {
                    items.push(scan.item(&mut reader, false)?);
                    match scan.token()? {
                        b',' => {}
                        b']' => break,
                        _ => return None,
                    }
                }
            }
            Body::Batch(items)
        } else {
            Body::One(scan.item(&mut reader, false)?)
        };
        scan.end()?;
        Some(body)
    }

    /// One event object.
    fn item(&mut self, reader: &mut Reader<'_>, on_path: bool) -> Option<Item> {
        let (mut channel, mut event_type) = (None, None);
        let mut fields = PayloadReader::new();
        if self.token()? != b'{' {
            return None;
        }
        if !self.next_is(b'}') {
            loop {
                let key = self.string()?;
                if self.token()? != b':' {
                    return None;
                }
                match key {
                    b"type" if event_type.is_none() => {
                        event_type = Some(crate::event::shared_type_of(self.string()?)?);
                    }
                    b"channel" if channel.is_none() && !on_path => {
                        let len = self.string()?.len();
                        let raw = self.text?.get(self.at - 1 - len..self.at - 1)?;
                        let parsed =
                            reader.herald.policies().parse_channel_after(raw, reader.previous.as_ref()).ok()?;
                        *reader.previous = Some(parsed.clone());
                        channel = Some(parsed);
                    }
                    // A key twice, a list of channels, a channel on the path, an item's own
                    // idempotency key: the `serde_json` read's.
                    b"type" | b"channel" | b"channels" | b"idempotencyKey" => return None,
                    _ => {
                        let (value_at, value) = self.scalar()?;
                        // The key's quotes, its colon and its value, with nothing between them.
                        let member_at = value_at - key.len() - 3;
                        let taken = if self.bytes[member_at..value_at].ends_with(b"\":") {
                            fields.written_member(key, &self.bytes[member_at..self.at])
                        } else {
                            fields.written(key, value)
                        };
                        if !taken {
                            return None;
                        }
                    }
                }
                match self.token()? {
                    b',' => {}
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        let channels = match channel {
            Some(channel) => vec![channel],
            None if on_path => Vec::new(),
            None => return None,
        };
        Some(Item { channels, event: fields.into_event(event_type?), key: None })
    }

    /// The next byte after whitespace, taken.
    fn token(&mut self) -> Option<u8> {
        self.skip_whitespace();
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    /// Whether the next byte after whitespace is `b`; taken if it is.
    fn next_is(&mut self, b: u8) -> bool {
        self.skip_whitespace();
        let is = self.bytes.get(self.at) == Some(&b);
        self.at += usize::from(is);
        is
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// Only whitespace to the end, as `serde_json` requires.
    fn end(&mut self) -> Option<()> {
        self.skip_whitespace();
        (self.at == self.bytes.len()).then_some(())
    }

    /// A string after whitespace with no escape, no control character and nothing but
    /// ASCII in it: its characters, between the quotes. Inlined: it is called three to four
    /// times an event, and inlined it cost about 80 fewer instructions an event (measured).
    #[inline(always)]
    fn string(&mut self) -> Option<&'b [u8]> {
        if self.token()? != b'"' {
            return None;
        }
        let start = self.at;
        let end = self.first(start, string_ends);
        if self.bytes.get(end) != Some(&b'"') {
            return None;
        }
        self.at = end + 1;
        Some(&self.bytes[start..end])
    }

    /// A payload value after whitespace that is written as it is read: where its JSON text
    /// starts, and the text.
    fn scalar(&mut self) -> Option<(usize, &'b [u8])> {
        self.skip_whitespace();
        let start = self.at;
        match *self.bytes.get(start)? {
            b'"' => {
                self.string()?;
            }
            b'-' | b'0'..=b'9' => self.integer()?,
            first => {
                let word: &[u8] = match first {
                    b't' => b"true",
                    b'f' => b"false",
                    b'n' => b"null",
                    _ => return None,
                };
                if !self.bytes[start..].starts_with(word) {
                    return None;
                }
                self.at += word.len();
            }
        }
        Some((start, &self.bytes[start..self.at]))
    }

    /// An integer in the one form `serde_json` writes its value in: no leading zero, no
    /// `-0` (a float to `serde_json`), and few enough digits to be a `u64` (19) or, below
    /// zero, an `i64` (18); followed by no fraction or exponent (a float).
    fn integer(&mut self) -> Option<()> {
        let negative = self.bytes.get(self.at) == Some(&b'-');
        let start = self.at + usize::from(negative);
        let end = self.first(start, non_digits);
        let digits = end - start;
        let most = if negative { 18 } else { 19 };
        if digits == 0 || digits > most || (self.bytes[start] == b'0' && (digits > 1 || negative)) {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = self.bytes.get(end) {
            return None;
        }
        self.at = end;
        Some(())
    }

    /// The first byte from `at` on that `ends` marks (the end of the body if none): eight
    /// bytes at a time, where a byte at a time costs five to ten instructions a byte (a
    /// timestamp in microseconds has sixteen digits).
    fn first(&self, mut at: usize, ends: fn(u64) -> u64) -> usize {
        loop {
            let Some(rest) = self.bytes.get(at..) else { return at };
            let word = match rest.first_chunk::<8>() {
                Some(word) => *word,
                None => {
                    // The last bytes, padded with bytes that end every scan.
                    let mut word = [0xff; 8];
                    word[..rest.len()].copy_from_slice(rest);
                    word
                }
            };
            let marks = ends(u64::from_le_bytes(word));
            if marks != 0 {
                return at + (marks.trailing_zeros() / 8) as usize;
            }
            at += 8;
        }
    }
}

/// The high bit of each byte.
const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
/// The low seven bits of each byte.
const LOW: u64 = u64::from_ne_bytes([0x7f; 8]);
/// One in each byte of a word.
const ONES: u64 = u64::from_ne_bytes([1; 8]);

/// The high bit of each byte of `word` (eight bytes of a body, the first lowest) that ends a
/// plain string: `"`, `\\`, a control character, a byte of a non-ASCII character. Each byte
/// is tested on its own low seven bits, whose sums with a constant below 0x81 never carry
/// into the next byte, so the marks are exact, not only the lowest.
fn string_ends(word: u64) -> u64 {
    let low = word & LOW;
    let printable = low + ONES * (0x80 - 0x20);
    let not_quote = (low ^ (ONES * u64::from(b'"'))) + LOW;
    let not_backslash = (low ^ (ONES * u64::from(b'\\'))) + LOW;
    (word | !(printable & not_quote & not_backslash)) & HIGH
}

/// The high bit of each byte of `word` that is not an ASCII digit (as in [`string_ends`]).
fn non_digits(word: u64) -> u64 {
    let low = word & LOW;
    let from_zero = low + ONES * (0x80 - u64::from(b'0'));
    let past_nine = low + ONES * (0x80 - u64::from(b'9') - 1);
    (word | !from_zero | past_nine) & HIGH
}

/// Why the fast read gave up; never shown (the `Value` path's refusal is).
fn give_up<E: de::Error>() -> E {
    E::custom("read by the Value path")
}

/// What every part of one body's read needs: the node, for its namespaces, and the last
/// channel read, whose namespace is known (see [`Policies::parse_channel_after`]).
///
/// [`Policies::parse_channel_after`]: crate::policy::Policies::parse_channel_after
struct Reader<'a> {
    herald: &'a Herald,
    previous: &'a mut Option<ChannelName>,
}

impl Reader<'_> {
    /// The reader, lent to the read of one value.
    fn lend(&mut self) -> Reader<'_> {
        Reader { herald: self.herald, previous: &mut *self.previous }
    }
}

/// A whole body.
struct BodyVisitor<'a>(Reader<'a>);

impl<'de> Visitor<'de> for BodyVisitor<'_> {
    type Value = Body;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an event object or an array of them")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Body, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(ItemSeed(self.0.lend()))? {
            items.push(item);
        }
        Ok(Body::Batch(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Body, A::Error> {
        ItemVisitor { reader: self.0, in_batch: false, on_path: false }.visit_map(map).map(Body::One)
    }
}

/// An item of a batch.
struct ItemSeed<'a>(Reader<'a>);

impl<'de> DeserializeSeed<'de> for ItemSeed<'_> {
    type Value = Item;

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<Item, D::Error> {
        de.deserialize_map(ItemVisitor { reader: self.0, in_batch: true, on_path: false })
    }
}

struct ItemVisitor<'a> {
    reader: Reader<'a>,
    in_batch: bool,
    on_path: bool,
}

impl<'de> Visitor<'de> for ItemVisitor<'_> {
    type Value = Item;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Item, A::Error> {
        let (mut channel, mut channels, mut event_type, mut key) = (None, None, None, None);
        let mut fields = PayloadReader::new();
        // A key that comes twice: the last one counts, as in a `Value`'s map.
        while let Some(name) = map.next_key::<Key<'de>>()? {
            match name {
                Key::Channel | Key::Channels if self.on_path => return Err(give_up()),
                Key::Channel => channel = Some(map.next_value_seed(ChannelSeed(self.reader.lend()))?),
                Key::Channels => channels = Some(map.next_value_seed(ChannelsSeed(self.reader.lend()))?),
                Key::Type => event_type = Some(map.next_value_seed(TypeSeed)?),
                Key::Idempotency if self.in_batch => key = Some(map.next_value::<String>()?),
                Key::Idempotency => map.next_value_seed(Field { fields: &mut fields, key: IDEMPOTENCY_FIELD })?,
                Key::Plain(name) => map.next_value_seed(Field { fields: &mut fields, key: name })?,
                Key::Other(name) => map.next_value_seed(Field { fields: &mut fields, key: &name })?,
            }
        }
        let channels = match (channel, channels) {
            (Some(channel), None) => vec![channel],
            (None, Some(list)) if !list.is_empty() => list,
            (None, None) if self.on_path => Vec::new(),
            _ => return Err(give_up()),
        };
        let event_type = event_type.ok_or_else(give_up)?;
        Ok(Item { channels, event: fields.into_event(event_type), key })
    }
}

/// A key of an event object: one the publish reads, or a payload field's (as it is in the
/// body, or unescaped).
enum Key<'de> {
    Channel,
    Channels,
    Type,
    Idempotency,
    Plain(&'de str),
    Other(String),
}

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl KeyVisitor {
    fn known<'de>(name: &str) -> Option<Key<'de>> {
        match name {
            "channel" => Some(Key::Channel),
            "channels" => Some(Key::Channels),
            "type" => Some(Key::Type),
            IDEMPOTENCY_FIELD => Some(Key::Idempotency),
            _ => None,
        }
    }
}

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a field name")
    }

    // A name with escapes arrives unescaped, so `"\u0074ype"` is `type`, as in a `Value`.
    fn visit_str<E: de::Error>(self, name: &str) -> Result<Key<'de>, E> {
        Ok(Self::known(name).unwrap_or_else(|| Key::Other(name.to_owned())))
    }

    fn visit_borrowed_str<E: de::Error>(self, name: &'de str) -> Result<Key<'de>, E> {
        Ok(Self::known(name).unwrap_or(Key::Plain(name)))
    }

    fn visit_string<E: de::Error>(self, name: String) -> Result<Key<'de>, E> {
        Ok(Self::known(&name).unwrap_or(Key::Other(name)))
    }
}

/// The value of payload field `key`, added to `fields`: a scalar as what it is, anything
/// else as the `Value` that `Value`'s own deserializer makes of it (the same visitor, called
/// from within the same `deserialize_any`, so under the same depth limit).
struct Field<'a, 'k> {
    fields: &'a mut PayloadReader,
    key: &'k str,
}

impl Field<'_, '_> {
    fn scalar<E>(self, value: Scalar<'_>) -> Result<(), E> {
        self.fields.scalar(self.key, value);
        Ok(())
    }

    fn value<'de, D: de::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        let value = Value::deserialize(de)?;
        self.fields.insert(self.key.to_owned(), value);
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Field<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Field<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
        self.scalar(Scalar::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<(), E> {
        self.scalar(Scalar::I64(n))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<(), E> {
        self.scalar(Scalar::U64(n))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<(), E> {
        self.value(n.into_deserializer())
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.scalar(Scalar::Str(s))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar(Scalar::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        self.value(de::value::SeqAccessDeserializer::new(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.value(de::value::MapAccessDeserializer::new(map))
    }
}

/// An event's type, read as the string shared with the events before it of that type
/// (`event::shared_type`): no `String` per event.
struct TypeSeed;

impl<'de> DeserializeSeed<'de> for TypeSeed {
    type Value = std::sync::Arc<str>;

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_str(self)
    }
}

impl Visitor<'_> for TypeSeed {
    type Value = std::sync::Arc<str>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an event type")
    }

    fn visit_str<E: de::Error>(self, event_type: &str) -> Result<Self::Value, E> {
        Ok(crate::event::shared_type(event_type))
    }
}

/// A channel name, parsed from the body's text where it has no escapes (no `String` first).
struct ChannelSeed<'a>(Reader<'a>);

impl<'de> DeserializeSeed<'de> for ChannelSeed<'_> {
    type Value = ChannelName;

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<ChannelName, D::Error> {
        de.deserialize_str(self)
    }
}

impl Visitor<'_> for ChannelSeed<'_> {
    type Value = ChannelName;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a channel name")
    }

    fn visit_str<E: de::Error>(self, raw: &str) -> Result<ChannelName, E> {
        let Reader { herald, previous } = self.0;
        let channel = herald.policies().parse_channel_after(raw, previous.as_ref()).map_err(|_| give_up())?;
        *previous = Some(channel.clone());
        Ok(channel)
    }
}

/// The `channels` array.
struct ChannelsSeed<'a>(Reader<'a>);

impl<'de> DeserializeSeed<'de> for ChannelsSeed<'_> {
    type Value = Vec<ChannelName>;

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<Vec<ChannelName>, D::Error> {
        de.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ChannelsSeed<'_> {
    type Value = Vec<ChannelName>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of channel names")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Vec<ChannelName>, A::Error> {
        let mut list = Vec::new();
        while let Some(channel) = seq.next_element_seed(ChannelSeed(self.0.lend()))? {
            list.push(channel);
        }
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use proptest::test_runner::{TestCaseError, TestRunner};

    use super::super::{Events, events_of, events_read, parse_event, parse_json};
    use super::*;
    use crate::Config;

    fn herald() -> Herald {
        Herald::new(Config::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// What the `Value` path makes of `body` on `POST /api/publish`, refusal as code and text.
    fn value_path(herald: &Herald, body: &[u8], header: Option<&str>) -> Result<Events, (String, String)> {
        parse_json(body)
            .and_then(|v| events_of(herald, "scope", header, v))
            .map_err(|e| (e.code().to_owned(), e.message().to_owned()))
    }

    /// What the fast read makes of it, or `None` where it leaves the body to the `Value` path.
    fn fast_path(herald: &Herald, body: &[u8], header: Option<&str>) -> Option<Result<Events, (String, String)>> {
        let read = publish(herald, body)?;
        Some(events_read(herald, "scope", header, read).map_err(|e| (e.code().to_owned(), e.message().to_owned())))
    }

    /// An event on its channels.
    type Parsed = (Vec<ChannelName>, Event);

    /// The body of `POST /api/channels/channel:path/events`, both ways.
    fn on_path_both(herald: &Herald, body: &[u8]) -> (Option<Parsed>, Result<Parsed, String>) {
        let channel = || herald.parse_channel("channel:path").unwrap_or_else(|e| panic!("{e}"));
        let fast = on_path(herald, body).map(|item| (vec![channel()], item.event));
        let slow =
            parse_json(body).and_then(|v| parse_event(herald, v, Some(channel()))).map_err(|e| e.code().to_owned());
        (fast, slow)
    }

    /// Whatever the fast read takes, it reads as the `Value` path does: the same events,
    /// channels, fields and idempotency keys, or the same refusal of a key.
    fn agrees(herald: &Herald, body: &[u8]) -> Result<bool, TestCaseError> {
        let shown = String::from_utf8_lossy(body);
        let mut taken = false;
        for header in [None, Some("h-1")] {
            if let Some(fast) = fast_path(herald, body, header) {
                let slow = value_path(herald, body, header);
                prop_assert_eq!(&fast, &slow, "{} with header {:?}", shown, header);
                taken = true;
            }
        }
        let (fast, slow) = on_path_both(herald, body);
        if let Some(fast) = fast {
            prop_assert_eq!(Ok(fast), slow, "{} on the path", shown);
        }
        Ok(taken)
    }

    #[tokio::test]
    async fn the_fast_read_takes_the_usual_bodies_and_reads_them_as_the_value_path() {
        let h = herald();
        let bodies = [
            r#"{"channel":"channel:a","type":"chat","content":"hi"}"#,
            r#"{"channels":["channel:a","user:42","channel:a"],"type":"chat","n":1}"#,
            r#"[{"channel":"user:1","type":"bench","seq":1,"ts":2},{"channel":"user:2","type":"bench","seq":3}]"#,
            // An item's own key, a non-string key in a single event (a payload field there).
            r#"[{"channel":"user:1","type":"t","idempotencyKey":"own"},{"channel":"user:2","type":"t"}]"#,
            r#"{"channel":"user:1","type":"t","idempotencyKey":5}"#,
            // Escapes in a channel name, a key and a type spell what they decode to.
            r#"{"channel":"channel:\u0067eneral","\u0074ype":"ch\u0061t"}"#,
            r#"{"channels":["\u0075ser:42"],"type":"chat","quote\"d":"a\nb"}"#,
            // A key given twice: the last value counts.
            r#"{"channel":"channel:a","channel":"channel:b","type":"x","type":"chat","n":1,"n":2}"#,
            // Reserved and unknown fields stay in the payload (dropped or kept on the wire later).
            r#"{"channel":"channel:a","type":"chat","id":"forged","userId":"spoof","anything":{"deep":[1,{"a":null}]}}"#,
            // Numbers past u64 are floats, as in a `Value`; nesting well under the limit.
            r#"{"channel":"channel:a","type":"chat","big":18446744073709551616,"neg":-9223372036854775809,"f":1e300}"#,
            "[]",
            " \n{\"channel\":\"channel:a\",\"type\":\"chat\"}\t ",
        ];
        for body in bodies {
            let taken = agrees(&h, body.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            assert!(taken, "the fast read gave up on {body}");
        }
        let deep = format!(r#"{{"channel":"channel:a","type":"chat","d":{}1{}}}"#, "[".repeat(125), "]".repeat(125));
        assert!(agrees(&h, deep.as_bytes()).unwrap_or_else(|e| panic!("{e}")), "125 arrays deep");
        let (fast, slow) = on_path_both(&h, br#"{"type":"chat","idempotencyKey":"k","n":1}"#);
        assert_eq!(fast.map(Ok), Some(slow));
    }

    #[tokio::test]
    async fn the_fast_read_leaves_every_refused_body_to_the_value_path() {
        let h = herald();
        let too_deep =
            format!(r#"{{"channel":"channel:a","type":"chat","d":{}1{}}}"#, "[".repeat(127), "]".repeat(127));
        let bodies = [
            too_deep.as_str(),
            r#"{"channel":"channel:a","type":"chat","n":1e400}"#,
            r#"{"channel":"channel:a","type":"chat"} x"#,
            r#"{"channel":"channel:a b","type":"chat"}"#,
            r#"{"channel":"channel:\u0020","type":"chat"}"#,
            r#"{"channel":"channel:\ud800","type":"chat"}"#,
            r#"{"channel":5,"type":"chat"}"#,
            r#"{"channels":[],"type":"chat"}"#,
            r#"{"channels":["channel:a",null],"type":"chat"}"#,
            r#"{"channel":"channel:a","channels":["channel:b"],"type":"chat"}"#,
            r#"{"channel":"channel:a","type":5}"#,
            r#"{"channel":"channel:a"}"#,
            r#"{"type":"chat"}"#,
            r#"[{"channel":"channel:a","type":"chat"},{"channel":"channel:a","type":"chat","idempotencyKey":1}]"#,
            r#"[{"channel":"channel:a","type":"chat"},42]"#,
            r#"[{"channel":"user:1","type":"chat"},{"channels":["user:2","users:3"],"type":"chat"}]"#,
            r#"[{"channel":"system","type":"chat"},{"channel":"system:x","type":"chat"}]"#,
            "42",
            "\"x\"",
        ];
        for body in bodies {
            assert!(fast_path(&h, body.as_bytes(), None).is_none(), "the fast read took {body}");
            assert!(value_path(&h, body.as_bytes(), None).is_err(), "the Value path took {body}");
        }
        // Bytes that are not UTF-8, in a string or between values.
        for body in [
            &b"{\"channel\":\"channel:a\",\"type\":\"chat\",\"s\":\"\xff\"}"[..],
            b"{\"channel\":\"channel:a\",\"type\":\"chat\"}\xc3",
        ] {
            let shown = String::from_utf8_lossy(body);
            assert!(fast_path(&h, body, None).is_none(), "the fast read took {shown}");
            assert!(value_path(&h, body, None).is_err(), "the Value path took {shown}");
            let (fast, slow) = on_path_both(&h, body);
            assert!(fast.is_none() && slow.is_err(), "{shown} on the path");
        }
        // On the path, a body that names a channel is the Value path's to refuse.
        for body in [r#"{"channel":"channel:a","type":"chat"}"#, r#"{"channels":["channel:a"],"type":"chat"}"#, "[]"] {
            let (fast, slow) = on_path_both(&h, body.as_bytes());
            assert!(fast.is_none() && slow.is_err(), "{body}");
        }
    }

    /// JSON text of event-like objects, written out (not through a `Value`, which would
    /// merge repeated keys), from the keys and values that decide a publish.
    fn body_text() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            r#""channel""#,
            r#""channels""#,
            r#""type""#,
            r#""idempotencyKey""#,
            r#""\u0063hannel""#,
            r#""typ\u0065""#,
            r#""content""#,
            r#""id""#,
            r#""n""#,
        ]);
        let value = prop::sample::select(vec![
            r#""channel:a""#,
            r#""user:42""#,
            r#""system""#,
            r#""system:x""#,
            r#""users:1""#,
            r#""channel:\u0062""#,
            r#""bad""#,
            r#""channel:a b""#,
            r#""chat""#,
            r#""""#,
            r#""connected""#,
            "5",
            "null",
            "true",
            r#"["channel:a"]"#,
            r#"["user:1","channel:a"]"#,
            "[]",
            r#"["channel:a",5]"#,
            r#"{"x":[1,2.5,"s"]}"#,
            "18446744073709551616",
            "1e400",
            r#""k\"1""#,
        ]);
        let object = prop::collection::vec((key, value), 0..7).prop_map(|members| {
            let inner: Vec<String> = members.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("{{{}}}", inner.join(","))
        });
        prop_oneof![
            3 => object.clone(),
            3 => prop::collection::vec(object, 0..4).prop_map(|items| format!("[{}]", items.join(","))),
            1 => prop::sample::select(vec!["42", "null", "\"x\"", "[1]", "{", "[{}"]).prop_map(str::to_owned),
        ]
    }

    #[tokio::test]
    async fn any_body_the_fast_read_takes_is_read_as_the_value_path_reads_it() {
        let h = herald();
        let mut runner =
            TestRunner::new(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() });
        let taken = std::cell::Cell::new(0);
        let result = runner.run(&body_text(), |body| {
            taken.set(taken.get() + usize::from(agrees(&h, body.as_bytes())?));
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        assert!(taken.get() > 100, "the fast read took only {} of the bodies", taken.get());
    }

    /// The event JSON (the members after `id` and `channel`, at a fixed time) of every
    /// event of a body, or the refusal of each.
    fn written(events: &Events) -> Vec<Result<String, crate::event::EventError>> {
        let list: Vec<&(Vec<ChannelName>, Event)> = match events {
            Events::One(one) => vec![one],
            Events::Batch(all) => all.iter().collect(),
        };
        let me = crate::event::Publisher { user_id: Some("u1".into()), user_name: None };
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_764_863_051_123);
        list.into_iter().map(|(_, e)| crate::event::body_at(e, &me, 200, at)).collect()
    }

    /// Payload members written out as JSON text (keys and values as a publisher may spell
    /// them), with `channel` and `type` somewhere among them.
    fn item_text() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            r#""a""#,
            r#""b""#,
            r#""ab""#,
            r#""B""#,
            r#""z""#,
            r#""é""#,
            r#""\u0061""#,
            r#""k\"q""#,
            r#""tab\t""#,
            r#""id""#,
            r#""userId""#,
            r#""timestamp""#,
            r#""idempotencyKey""#,
            r#""$serde_json::private::RawValue""#,
        ]);
        let value = prop::sample::select(vec![
            r#""""#,
            r#""x""#,
            r#""hello world""#,
            r#""café 🎉""#,
            "\"\u{7f}\u{2028}\"",
            r#""a\"b""#,
            r#""line\nbreak""#,
            r#""\u0041\u00e9""#,
            r#""\ud83c\udf89""#,
            r#""<\/script>""#,
            "0",
            "-0",
            "1",
            "-1",
            "42",
            "9223372036854775807",
            "-9223372036854775808",
            "-9223372036854775809",
            "18446744073709551615",
            "18446744073709551616",
            "1.0",
            "-0.0",
            "2.50",
            "1e2",
            "1E+2",
            "0.1",
            "123456789012345678901234567890",
            "1e400",
            "true",
            "false",
            "null",
            "[]",
            "{}",
            r#"[1,"a",{"b":null}]"#,
            r#"{"b":{"a":1},"a":[2.5]}"#,
            r#"{"$serde_json::private::RawValue":"[1]"}"#,
        ]);
        let colon = prop::sample::select(vec![":", " : ", ":\n"]);
        let members = prop::collection::vec((key, colon, value), 0..9);
        (members, 0..10usize, 0..10usize).prop_map(|(members, c, t)| {
            let mut inner: Vec<String> = members.iter().map(|(k, colon, v)| format!("{k}{colon}{v}")).collect();
            inner.insert(c.min(inner.len()), r#""channel":"user:1""#.to_owned());
            inner.insert(t.min(inner.len()), r#""type":"t""#.to_owned());
            format!("{{{}}}", inner.join(","))
        })
    }

    #[tokio::test]
    async fn an_event_whose_fields_are_kept_as_text_is_written_byte_for_byte_as_from_its_map() {
        let h = herald();
        let mut runner =
            TestRunner::new(ProptestConfig { cases: 4096, failure_persistence: None, ..ProptestConfig::default() });
        let (text, map) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
        let bodies = prop_oneof![
            2 => item_text(),
            1 => prop::collection::vec(item_text(), 1..4).prop_map(|items| format!("[{}]", items.join(","))),
        ];
        let result = runner.run(&bodies, |body| {
            for header in [None, Some("h-1")] {
                let Some(fast) = fast_path(&h, body.as_bytes(), header) else { continue };
                let slow = value_path(&h, body.as_bytes(), header);
                let (Ok(fast), Ok(slow)) = (fast, slow) else { continue };
                prop_assert_eq!(written(&fast), written(&slow), "{}", body);
                let events = match &fast {
                    Events::One(one) => vec![&one.1],
                    Events::Batch(all) => all.iter().map(|(_, e)| e).collect(),
                };
                for e in events {
                    let count = if e.is_written() { &text } else { &map };
                    count.set(count.get() + 1);
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        assert!(text.get() > 1000 && map.get() > 1000, "{} events as text, {} as maps", text.get(), map.get());
    }

    /// An item as it is read, byte for byte: channels, type, payload (its text, if held as
    /// text, and its fields), idempotency key.
    type Parts = (Vec<ChannelName>, String, Option<Vec<u8>>, serde_json::Map<String, Value>, Option<String>);

    fn parts(item: &Item) -> Parts {
        let e = &item.event;
        (
            item.channels.clone(),
            e.event_type().to_owned(),
            e.written_text().map(<[u8]>::to_vec),
            e.fields().clone(),
            item.key.clone(),
        )
    }

    fn body_parts(body: &Body) -> (bool, Vec<Parts>) {
        match body {
            Body::One(item) => (false, vec![parts(item)]),
            Body::Batch(items) => (true, items.iter().map(parts).collect()),
        }
    }

    /// Whatever the hand read takes, `serde_json`'s read takes and reads the same, byte for
    /// byte; whether the hand read took it, on `POST /api/publish` and on the path.
    fn scan_agrees(h: &Herald, body: &[u8]) -> Result<(bool, bool), TestCaseError> {
        let shown = String::from_utf8_lossy(body);
        let scanned = Scan::publish(h, body).map(|b| body_parts(&b));
        if let Some(scanned) = &scanned {
            let read = read_publish(h, body).map(|b| body_parts(&b));
            prop_assert_eq!(Some(scanned), read.as_ref(), "{}", shown);
        }
        let on_path = Scan::on_path(h, body).map(|i| parts(&i));
        if let Some(on_path) = &on_path {
            let read = read_on_path(h, body).map(|i| parts(&i));
            prop_assert_eq!(Some(on_path), read.as_ref(), "{} on the path", shown);
        }
        Ok((scanned.is_some(), on_path.is_some()))
    }

    #[tokio::test]
    async fn the_hand_read_takes_the_bench_bodies_and_reads_them_as_serde_json_does() {
        let h = herald();
        for body in [
            r#"{"type":"bench","seq":1,"ts":1764863051123456}"#,
            r#"{"channel":"user:b1-2","type":"bench","seq":18446744073,"ts":0}"#,
            r#"[{"channel":"user:b1-2","type":"bench","seq":1,"ts":2},{"channel":"user:b1-3","type":"bench","seq":3,"ts":4}]"#,
            " [ ] ",
            "{ \"type\" : \"chat\" ,\n\t\"text\":\"hi there\", \"n\" : -12 , \"ok\":true,\"no\":false,\"z\":null }\r\n",
        ] {
            let (publish, on_path) = scan_agrees(&h, body.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            assert!(publish || on_path, "the hand read gave up on {body}");
        }
    }

    /// JSON text (or nearly) of bodies the hand read takes, or nearly takes: its keys and
    /// values, and what it must leave to `serde_json`.
    fn scan_text() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            r#""type""#,
            r#""type""#,
            r#""channel""#,
            r#""channels""#,
            r#""idempotencyKey""#,
            r#""typ\u0065""#,
            r#""a""#,
            r#""seq""#,
            r#""ts""#,
            r#""B""#,
            r#""id""#,
            r#""userId""#,
            r#""é""#,
            r#""k\"q""#,
            "\"tab\t\"",
            r#""""#,
            "a",
        ]);
        let value = prop::sample::select(vec![
            r#""bench""#,
            r#""user:1""#,
            r#""user:2""#,
            r#""channel:a b""#,
            r#""system:x""#,
            r#""""#,
            r#""hello world""#,
            "\"\u{7f}\"",
            r#""café""#,
            r#""a\"b""#,
            r#""\u0041""#,
            "\"raw\nline\"",
            r#""unterminated"#,
            "0",
            "-0",
            "00",
            "01",
            "-01",
            "1",
            "-1",
            "42",
            "1764863051123456",
            "999999999999999999",
            "9999999999999999999",
            "10000000000000000000",
            "18446744073709551615",
            "18446744073709551616",
            "-999999999999999999",
            "-1000000000000000000",
            "-9223372036854775808",
            "1.5",
            "1.",
            "1e3",
            "1E3",
            "-",
            "+1",
            "true",
            "false",
            "null",
            "tru",
            "nul",
            "truex",
            "[]",
            r#"["user:1"]"#,
            "{}",
            r#"{"a":1}"#,
        ]);
        let space = prop::sample::select(vec!["", "", "", " ", "\n", "\t", "\r\n ", "\u{a0}"]);
        let member = (space.clone(), key, space.clone(), value, space.clone())
            .prop_map(|(s1, k, s2, v, s3)| format!("{s1}{k}{s2}:{s2}{v}{s3}"));
        let object = (prop::collection::vec(member, 0..6), 0..8usize, 0..8usize, any::<bool>()).prop_map(
            |(members, c, t, channel)| {
                let mut members = members;
                if channel {
                    members.insert(c.min(members.len()), r#""channel":"user:1""#.to_owned());
                }
                members.insert(t.min(members.len()), r#""type":"bench""#.to_owned());
                format!("{{{}}}", members.join(","))
            },
        );
        let ending = prop::sample::select(vec!["", "", "", " \n", ",", "}", "x", "\u{a0}"]);
        prop_oneof![
            3 => (object.clone(), ending.clone()).prop_map(|(o, e)| format!("{o}{e}")),
            2 => (prop::collection::vec(object, 0..4), ending)
                .prop_map(|(items, e)| format!("[{}]{e}", items.join(","))),
        ]
    }

    #[tokio::test]
    async fn any_body_the_hand_read_takes_is_read_as_serde_json_reads_it() {
        let h = herald();
        let mut runner =
            TestRunner::new(ProptestConfig { cases: 8192, failure_persistence: None, ..ProptestConfig::default() });
        let (publish, on_path) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
        let result = runner.run(&scan_text(), |body| {
            let (p, o) = scan_agrees(&h, body.as_bytes())?;
            publish.set(publish.get() + usize::from(p));
            on_path.set(on_path.get() + usize::from(o));
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        assert!(
            publish.get() > 300 && on_path.get() > 100,
            "taken: {} published, {} on the path",
            publish.get(),
            on_path.get()
        );
    }

    /// A scan of eight bytes at a time, and the bytes it marks, tested one at a time.
    type WordScan<'a> = (fn(u64) -> u64, &'a dyn Fn(u8) -> bool);

    #[test]
    fn the_word_scans_mark_exactly_the_bytes_a_byte_scan_marks() {
        let ends_string = |b: u8| !(0x20..0x80).contains(&b) || b == b'"' || b == b'\\';
        let ends_digits = |b: u8| !b.is_ascii_digit();
        let check = |word: [u8; 8]| {
            let scans: [WordScan<'_>; 2] = [(string_ends, &ends_string), (non_digits, &ends_digits)];
            for (scan, by_byte) in scans {
                let marks = scan(u64::from_le_bytes(word));
                let want = word.iter().enumerate().fold(0, |m, (i, &b)| m | (u64::from(by_byte(b)) << (8 * i + 7)));
                assert_eq!(marks, want, "{word:?}");
            }
        };
        let backgrounds = [
            0x00, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x2f, 0x30, 0x39, 0x3a, 0x41, 0x5b, 0x5c, 0x5d, 0x7f, 0x80, 0xa2, 0xdc,
            0xff,
        ];
        for background in backgrounds {
            for b in 0..=u8::MAX {
                for at in 0..8 {
                    let mut word = [background; 8];
                    word[at] = b;
                    check(word);
                }
            }
        }
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            check(x.to_le_bytes());
        }
    }
}
