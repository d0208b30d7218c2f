//! Channel names: parsing and validation of `namespace:name`.
//!
//! A [`ChannelName`] is a validated, cheaply clonable channel name. Every channel that
//! enters Herald (a subscribe query, a publish body, a library call) passes through
//! [`ChannelName::parse`], so the rest of the crate never sees a malformed name.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::OnceLock;

use smol_str::SmolStr;

/// Longest channel name accepted, namespace included.
pub const MAX_CHANNEL_LEN: usize = 160;

/// The namespaces Herald knows without configuration.
pub const USER_NAMESPACE: &str = "user";
/// Rooms: `channel:<name>`.
pub const ROOM_NAMESPACE: &str = "channel";
/// The channel every client may receive: server-wide announcements.
pub const SYSTEM_CHANNEL: &str = "system";

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    #[error("channel name must look like `namespace:name` (for example `channel:general` or `user:42`)")]
    MissingNamespace,
    #[error("unknown channel namespace `{0}`")]
    UnknownNamespace(String),
    #[error("channel name has no name after the namespace")]
    EmptyName,
    #[error("channel name may contain only ASCII letters, digits and `_ - . @ = +` after the namespace")]
    BadCharacter,
    #[error("a pattern is a channel prefix ending in one `*`, like `channel:incidents.*`")]
    BadPattern,
}

/// A validated channel name such as `channel:general`, `user:42` or `system`.
///
/// It carries its hash, computed once when the name is parsed (SipHash under a key drawn when
/// the process starts, so that no client can choose names that collide): the node's maps of
/// channels ([`ChannelMap`]: the hub's registry, the engine's logs) take it as it is instead
/// of hashing the name again at each lookup. Hence no `Borrow<str>`: a `&str` hashes otherwise.
///
/// A name of up to 23 bytes (`user:12345`, `channel:general`) is held in the value itself,
/// a longer one in a shared allocation: a map's look-up then compares the name it finds
/// without reading another cache line (among 10,000 channels, that line is cold), and a
/// copy of the name takes no atomic count.
#[derive(Clone)]
pub struct ChannelName {
    name: SmolStr,
    hash: u64,
}

/// A map keyed by channel, hashed by the hash each [`ChannelName`] carries.
pub type ChannelMap<V> = HashMap<ChannelName, V, BuildHasherDefault<CarriedHash>>;

/// The hasher of a [`ChannelMap`]: the channel's own hash, as it is.
#[derive(Clone, Copy, Default)]
pub struct CarriedHash(u64);

impl Hasher for CarriedHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 ^= hash;
    }

    // Only a `ChannelName` is hashed here, with `write_u64`; any other bytes are folded in
    // all the same.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
}

impl ChannelName {
    /// A name as given, not validated, to look a [`ChannelMap`] up with (a name that came as a
    /// string from another node); never kept.
    pub(crate) fn key(raw: &str) -> Self {
        Self::new(raw)
    }

    fn new(name: &str) -> Self {
        static KEY: OnceLock<(u64, u64)> = OnceLock::new();
        // Two words SipHash wrote under a key drawn for this process: a key no client can
        // know, as `RandomState`'s own.
        let key = KEY.get_or_init(|| {
            let random = RandomState::new();
            (random.hash_one(0u64), random.hash_one(1u64))
        });
        Self { name: SmolStr::new(name), hash: sip13(*key, name.as_bytes()) }
    }

    /// Parses and validates a channel name against the built-in namespaces.
    pub fn parse(raw: &str) -> Result<Self, ChannelError> {
        Self::parse_with(raw, |ns| ns == USER_NAMESPACE || ns == ROOM_NAMESPACE)
    }

    /// Parses with a caller-supplied namespace check (configured namespaces).
    pub fn parse_with(raw: &str, known: impl Fn(&str) -> bool) -> Result<Self, ChannelError> {
        if raw.is_empty() {
            return Err(ChannelError::Empty);
        }
        if raw.len() > MAX_CHANNEL_LEN {
            return Err(ChannelError::TooLong);
        }
        if raw == SYSTEM_CHANNEL {
            return Ok(Self::new(raw));
        }
        // The namespace's bytes are checked as the colon is looked for, in one scan: a byte
        // that is neither is a missing namespace whether a colon comes after it or not.
        let bytes = raw.as_bytes();
        let colon = bytes.iter().position(|&b| !NAMESPACE_BYTES[usize::from(b)]);
        let colon = match colon {
            Some(colon) if colon > 0 && bytes[colon] == b':' => colon,
            _ => return Err(ChannelError::MissingNamespace),
        };
        let (ns, name) = (&raw[..colon], &bytes[colon + 1..]);
        // `system` is a channel, not a namespace: `system:x` is no channel at all.
        if ns == SYSTEM_CHANNEL || !known(ns) {
            return Err(ChannelError::UnknownNamespace(ns.to_owned()));
        }
        if name.is_empty() {
            return Err(ChannelError::EmptyName);
        }
        if !name.iter().all(|&b| is_name_byte(b)) {
            return Err(ChannelError::BadCharacter);
        }
        Ok(Self::new(raw))
    }

    /// Parses a subscription: a channel, or a pattern (`channel:incidents.*`: every channel
    /// of the namespace whose name starts with `incidents.`), which only subscriptions take.
    pub fn parse_subscription_with(raw: &str, known: impl Fn(&str) -> bool) -> Result<Self, ChannelError> {
        let Some(prefix) = raw.strip_suffix('*') else {
            return Self::parse_with(raw, known);
        };
        if raw.len() > MAX_CHANNEL_LEN {
            return Err(ChannelError::TooLong);
        }
        let (ns, name) = prefix.split_once(':').ok_or(ChannelError::BadPattern)?;
        if ns.is_empty() || !ns.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(ChannelError::BadPattern);
        }
        if ns == SYSTEM_CHANNEL || !known(ns) {
            return Err(ChannelError::UnknownNamespace(ns.to_owned()));
        }
        if !name.bytes().all(is_name_byte) {
            return Err(ChannelError::BadPattern);
        }
        Ok(Self::new(raw))
    }

    /// Whether this is a pattern subscription rather than a channel.
    pub fn is_pattern(&self) -> bool {
        self.name.ends_with('*')
    }

    /// Whether this pattern matches `channel` (never true for a plain channel).
    pub fn matches(&self, channel: &ChannelName) -> bool {
        self.name.strip_suffix('*').is_some_and(|prefix| channel.name.starts_with(prefix) && !channel.is_pattern())
    }

    /// The private channel of one user.
    pub fn user(user_id: &str) -> Result<Self, ChannelError> {
        Self::parse(&format!("{USER_NAMESPACE}:{user_id}"))
    }

    /// The `system` channel.
    pub fn system() -> Self {
        Self::new(SYSTEM_CHANNEL)
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// Whether this channel's namespace is `ns`, a name with no colon (as every namespace
    /// [`ChannelName::namespace`] answers): the same as `namespace() == ns`, by one compare
    /// of the name's first bytes, where `namespace` looks for the colon first.
    pub(crate) fn is_in(&self, ns: &str) -> bool {
        let name = self.name.as_bytes();
        name.get(..ns.len()).is_some_and(|head| same_bytes(head, ns.as_bytes()))
            && name.get(ns.len()).is_none_or(|&b| b == b':')
    }

    /// The namespace (`user`, `channel`, ...; `system` for the system channel).
    pub fn namespace(&self) -> &str {
        // A plain byte scan: a namespace is a few bytes, where `split_once` sets up a
        // `memchr` search (about 130 instructions), and this is asked several times per
        // publish.
        let name = self.name.as_str();
        name.bytes().position(|b| b == b':').map_or(name, |i| &name[..i])
    }
}

fn is_name_byte(b: u8) -> bool {
    NAME_BYTES[usize::from(b)]
}

/// The bytes a channel's name may hold, by value: one look-up a byte where the tests of
/// `is_name_byte` were a chain of comparisons, for every byte of every channel published to.
const NAME_BYTES: [bool; 256] = crate::ascii::alphanumeric_and(b"_-.@=+");

/// The bytes a namespace may hold (ASCII lowercase letters and `_`), by value.
const NAMESPACE_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = b'a';
    while b <= b'z' {
        table[b as usize] = true;
        b += 1;
    }
    table[b'_' as usize] = true;
    table
};

/// SipHash-1-3 of `bytes` under `key`: the function `RandomState`'s hasher computes over
/// the bytes written to it, here over one slice with nothing of the general hasher's
/// buffering of writes, and without the `0xff` that hashing a `str` appends (a channel map
/// is keyed by channels alone, so no other value's bytes follow the name's). About half the
/// instructions of `hash_one` for a channel's name, computed once per channel parsed.
fn sip13((k0, k1): (u64, u64), bytes: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut m = [0u8; 8];
        m.copy_from_slice(word);
        compress(&mut v, u64::from_le_bytes(m));
    }
    // The last word: the bytes left over, and the length's low byte at the top.
    let mut last = (bytes.len() as u64) << 56;
    for (i, &b) in words.remainder().iter().enumerate() {
        last |= u64::from(b) << (8 * i);
    }
    compress(&mut v, last);
    v[2] ^= 0xff;
    sip_round(&mut v);
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// One word into the state: one round (the "1" of SipHash-1-3).
fn compress(v: &mut [u64; 4], m: u64) {
    v[3] ^= m;
    sip_round(v);
    v[0] ^= m;
}

fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

impl PartialEq for ChannelName {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
            && if self.name.is_heap_allocated() {
                same_bytes(self.name.as_bytes(), other.name.as_bytes())
            } else {
                // Two names held in themselves compare as their lengths and bytes, in place
                // (`SmolStr`'s own comparison), without making a `&str` of either.
                self.name == other.name
            }
    }
}

/// Whether two short byte strings are equal, compared eight bytes at a time: a channel's
/// name or a namespace is a few bytes, where `==` on slices calls `memcmp`, whose call costs
/// more than such a compare (a channel map's look-up compares the names of the channel
/// found, a publish's namespaces are compared a few times).
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut a_words, mut b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    (&mut a_words).zip(&mut b_words).all(|(x, y)| word(x) == word(y))
        && a_words.remainder().iter().zip(b_words.remainder()).all(|(x, y)| x == y)
}

/// Eight bytes as one word.
fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(bytes);
    u64::from_ne_bytes(w)
}

impl Eq for ChannelName {}

impl Hash for ChannelName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialOrd for ChannelName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ChannelName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name.as_str().cmp(other.name.as_str())
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.name.as_str(), f)
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_builtin_namespaces_and_system() {
        for ok in ["channel:general", "user:u_abc123", "system", "channel:a.b-c@d=e+f"] {
            assert_eq!(ChannelName::parse(ok).map(|c| c.to_string()), Ok(ok.to_owned()));
        }
        assert_eq!(ChannelName::parse("user:42").map(|c| c.namespace().to_owned()), Ok("user".into()));
    }

    #[test]
    fn a_names_bytes_are_ascii_letters_digits_and_six_marks() {
        for b in 0..=u8::MAX {
            let allowed = b.is_ascii_alphanumeric() || b"_-.@=+".contains(&b);
            assert_eq!(is_name_byte(b), allowed, "{b}");
        }
    }

    /// The parse before namespace bytes and the colon were found in one scan.
    fn parse_before(raw: &str, known: impl Fn(&str) -> bool) -> Result<String, ChannelError> {
        if raw.is_empty() {
            return Err(ChannelError::Empty);
        }
        if raw.len() > MAX_CHANNEL_LEN {
            return Err(ChannelError::TooLong);
        }
        if raw == SYSTEM_CHANNEL {
            return Ok(raw.to_owned());
        }
        let colon = raw.bytes().position(|b| b == b':').ok_or(ChannelError::MissingNamespace)?;
        let (ns, name) = (&raw[..colon], &raw[colon + 1..]);
        if ns.is_empty() || !ns.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(ChannelError::MissingNamespace);
        }
        if ns == SYSTEM_CHANNEL || !known(ns) {
            return Err(ChannelError::UnknownNamespace(ns.to_owned()));
        }
        if name.is_empty() {
            return Err(ChannelError::EmptyName);
        }
        if !name.bytes().all(is_name_byte) {
            return Err(ChannelError::BadCharacter);
        }
        Ok(raw.to_owned())
    }

    proptest::proptest! {
        #[test]
        fn a_name_is_parsed_or_refused_as_before(raw in "([a-z_:A-Z0-9 .*é-]{0,12}|system|user:[a-z0-9]{1,8})") {
            let known = |ns: &str| ns == "user" || ns == "channel" || ns == "a_b";
            let parsed = ChannelName::parse_with(&raw, known).map(|c| c.as_str().to_owned());
            proptest::prop_assert_eq!(parsed, parse_before(&raw, known));
        }

        #[test]
        fn the_hash_is_siphash_1_3_of_the_name(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            // `DefaultHasher::new` is SipHash-1-3 under the zero key.
            let mut std = std::hash::DefaultHasher::new();
            std.write(&bytes);
            proptest::prop_assert_eq!(sip13((0, 0), &bytes), std.finish());
        }

        #[test]
        fn same_bytes_is_slice_equality(a in "[ab]{0,20}", b in "[ab]{0,20}") {
            proptest::prop_assert_eq!(same_bytes(a.as_bytes(), b.as_bytes()), a == b);
        }

        #[test]
        fn a_channel_is_in_the_namespace_it_names(raw in "[a-z:]{0,6}", ns in "[a-z]{0,4}") {
            let channel = ChannelName::key(&raw);
            proptest::prop_assert_eq!(channel.is_in(&ns), channel.namespace() == ns);
        }
    }

    #[test]
    fn a_namespaces_bytes_are_ascii_lowercase_letters_and_underscore() {
        for b in 0..=u8::MAX {
            assert_eq!(NAMESPACE_BYTES[usize::from(b)], b.is_ascii_lowercase() || b == b'_', "{b}");
        }
    }

    #[test]
    fn a_name_of_up_to_23_bytes_is_held_inline_and_a_longer_one_shared() {
        let short = ChannelName::parse("user:123456789012345678").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(short.as_str().len(), 23);
        assert!(!short.name.is_heap_allocated());
        let long = ChannelName::parse("user:1234567890123456789").unwrap_or_else(|e| panic!("{e}"));
        assert!(long.name.is_heap_allocated());
        assert_eq!(long.clone(), long);
        assert_ne!(short, ChannelName::parse("user:123456789012345679").unwrap_or_else(|e| panic!("{e}")));
        // Four words: a map slot keyed by a channel holds its name.
        assert_eq!(std::mem::size_of::<ChannelName>(), 32);
    }

    #[test]
    fn refuses_malformed_names_with_the_reason() {
        assert_eq!(ChannelName::parse(""), Err(ChannelError::Empty));
        assert_eq!(ChannelName::parse("general"), Err(ChannelError::MissingNamespace));
        assert_eq!(ChannelName::parse("rooms:x"), Err(ChannelError::UnknownNamespace("rooms".into())));
        assert_eq!(ChannelName::parse("channel:"), Err(ChannelError::EmptyName));
        assert_eq!(ChannelName::parse("channel:a b"), Err(ChannelError::BadCharacter));
        assert_eq!(ChannelName::parse("channel:a\nb"), Err(ChannelError::BadCharacter));
        assert_eq!(ChannelName::parse("channel:a*"), Err(ChannelError::BadCharacter));
        let long = format!("channel:{}", "x".repeat(MAX_CHANNEL_LEN));
        assert_eq!(ChannelName::parse(&long), Err(ChannelError::TooLong));
    }

    #[test]
    fn a_channel_map_finds_a_name_however_it_was_made_and_only_that_name() {
        let parsed = |s: &str| ChannelName::parse(s).unwrap_or_else(|e| panic!("{e}"));
        let mut map = ChannelMap::default();
        for (i, name) in ["user:1", "user:2", "channel:a", "system"].into_iter().enumerate() {
            map.insert(parsed(name), i);
        }
        for (i, name) in ["user:1", "user:2", "channel:a", "system"].into_iter().enumerate() {
            assert_eq!(map.get(&ChannelName::key(name)), Some(&i), "{name}");
            assert_eq!(map.get(&parsed(name)), Some(&i), "{name}");
        }
        assert_eq!(ChannelName::system(), parsed("system"));
        for other in ["user:3", "user:1 ", "channel:A", "", "channel:a*"] {
            assert_eq!(map.get(&ChannelName::key(other)), None, "{other:?}");
        }
        let mut sorted = [parsed("user:2"), parsed("channel:b"), parsed("channel:a")];
        sorted.sort();
        assert_eq!(sorted.iter().map(ChannelName::as_str).collect::<Vec<_>>(), ["channel:a", "channel:b", "user:2"]);
    }

    #[test]
    fn patterns_are_subscriptions_only_and_match_by_prefix() {
        let known = |ns: &str| ns == "channel" || ns == "user";
        let p = ChannelName::parse_subscription_with("channel:incidents.*", known).unwrap_or_else(|e| panic!("{e}"));
        assert!(p.is_pattern());
        assert!(p.matches(&ChannelName::parse("channel:incidents.INC-1").unwrap_or_else(|e| panic!("{e}"))));
        assert!(!p.matches(&ChannelName::parse("channel:other").unwrap_or_else(|e| panic!("{e}"))));
        assert!(!p.matches(&ChannelName::parse("user:incidents.1").unwrap_or_else(|e| panic!("{e}"))));
        assert!(ChannelName::parse("channel:incidents.*").is_err(), "a pattern is not a channel to publish to");
        for bad in ["channel:a*b*", "channel:a b*", "*", ":x*", "rooms:x*", "system:*"] {
            assert!(ChannelName::parse_subscription_with(bad, known).is_err(), "{bad}");
        }
        let plain = ChannelName::parse_subscription_with("channel:x", known).unwrap_or_else(|e| panic!("{e}"));
        assert!(!plain.is_pattern() && !plain.matches(&plain));
    }
}
