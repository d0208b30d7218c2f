//! Channel policies: who may subscribe to and publish on each namespace, and its limits.
//!
//! [`Policies`] resolves the namespaces of the configuration over the built-in ones:
//!
//! | namespace | subscribe | publish | presence |
//! |---|---|---|---|
//! | `user:<id>` | the owner | API keys | off |
//! | `channel:<name>` | authenticated users | authenticated users | on |
//! | `system` | authenticated users | API keys | off |
//!
//! In dev mode (no authentication configured) `channel:` and `system` are open to anyone.
//! API keys with the `publish` scope may reach every channel their patterns cover; the `admin`
//! scope lets a key read the `admin:` channels (the admin view's stats) and nothing more. A
//! user's token may narrow what the user reaches with `subscribe`/`publish` grants; it can
//! never widen a namespace's rule.
//! Grants do not apply to channels a user owns (`user:<own id>`): a token cannot lock a user
//! out of their own channel.

use std::time::Duration;

use crate::auth::Principal;
use crate::channel::{ChannelError, ChannelName, ROOM_NAMESPACE, SYSTEM_CHANNEL, USER_NAMESPACE};
use crate::config::{Access, Config, NamespaceConfig, SlowConsumer};

/// The namespace of the admin view's channels (`admin:nodes`), present when `admin` is on.
pub const ADMIN_NAMESPACE: &str = "admin";

/// The resolved settings of one namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct Namespace {
    pub subscribe: Access,
    pub publish: Access,
    pub history_size: usize,
    pub history_ttl: Duration,
    pub presence: bool,
    /// How many of a channel's last events a new stream gets unless it asks otherwise.
    pub deliver_last: usize,
    /// `join`/`leave` events when a connection enters or leaves a channel.
    pub join_leave: bool,
    /// How long a finished AI token stream is kept for late joiners.
    pub ai_stream_retention: Duration,
    pub max_payload_bytes: usize,
    /// What a stream of this namespace's channels gets when its queue is full.
    pub slow_consumer: SlowConsumer,
}

/// Why an action on a channel was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("authentication required to {action} `{channel}`")]
    Unauthenticated { action: &'static str, channel: String },
    #[error("not allowed to {action} `{channel}`")]
    Forbidden { action: &'static str, channel: String },
}

#[derive(Clone, Copy)]
enum Action {
    Subscribe,
    Publish,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Self::Subscribe => "subscribe to",
            Self::Publish => "publish on",
        }
    }
}

/// Every namespace's policy.
#[derive(Clone, Debug)]
pub struct Policies {
    namespaces: NamespaceTable,
    pub dev_mode: bool,
}

/// The namespaces by name, in a list sorted by name: a configuration has a handful, and a
/// look through them compares a few short strings where a hash map would SipHash the name
/// first (about 300 instructions), which every publish did four times (its channel's parse,
/// the publish check, the payload limit, the history limits).
#[derive(Clone, Debug, Default)]
struct NamespaceTable(Vec<(String, Namespace)>);

impl NamespaceTable {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| n.as_str().cmp(name))
    }

    /// A look at each name in turn, lengths first: the names of a handful of namespaces
    /// nearly all differ in length, so about one comparison of bytes, where the binary
    /// search compared two or three names byte by byte (`Ord`, about 100 instructions each).
    fn get(&self, name: &str) -> Option<&Namespace> {
        self.get_named(name).map(|(_, ns)| ns)
    }

    /// [`NamespaceTable::get`] with the name as the table holds it.
    fn get_named(&self, name: &str) -> Option<(&str, &Namespace)> {
        self.0
            .iter()
            .find(|(n, _)| crate::channel::same_bytes(n.as_bytes(), name.as_bytes()))
            .map(|(n, ns)| (n.as_str(), ns))
    }

    fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The namespace `name`, inserted as `new()` makes it if missing.
    fn get_or_insert_with(&mut self, name: &str, new: impl FnOnce() -> Namespace) -> &mut Namespace {
        let i = match self.find(name) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (name.to_owned(), new()));
                i
            }
        };
        &mut self.0[i].1
    }

    fn insert(&mut self, name: &str, ns: Namespace) {
        match self.find(name) {
            Ok(i) => self.0[i].1 = ns,
            Err(i) => self.0.insert(i, (name.to_owned(), ns)),
        }
    }
}

impl Policies {
    pub fn from_config(cfg: &Config) -> Self {
        let dev_mode = !cfg.auth_configured();
        let open = if dev_mode { Access::Anyone } else { Access::Authenticated };
        let base = |subscribe, publish, presence| Namespace {
            subscribe,
            publish,
            history_size: cfg.history_size,
            history_ttl: cfg.history_ttl,
            presence,
            deliver_last: 0,
            join_leave: false,
            ai_stream_retention: cfg.ai_stream_retention,
            max_payload_bytes: cfg.max_payload_bytes,
            slow_consumer: SlowConsumer::default(),
        };
        let mut namespaces = NamespaceTable::default();
        namespaces.insert(USER_NAMESPACE, base(Access::Owner, Access::ApiKey, false));
        namespaces.insert(ROOM_NAMESPACE, base(open, open, true));
        let system_publish = if dev_mode { Access::Anyone } else { Access::ApiKey };
        namespaces.insert(SYSTEM_CHANNEL, base(open, system_publish, false));
        if cfg.admin {
            let mut admin = base(Access::ApiKey, Access::ApiKey, false);
            admin.history_size = 16;
            namespaces.insert(ADMIN_NAMESPACE, admin);
        }
        for (name, over) in &cfg.namespaces {
            let ns = namespaces.get_or_insert_with(name, || base(Access::Authenticated, Access::Authenticated, false));
            apply(ns, over);
        }
        Self { namespaces, dev_mode }
    }

    /// Parses a channel name whose namespace is configured.
    pub fn parse_channel(&self, raw: &str) -> Result<ChannelName, ChannelError> {
        ChannelName::parse_with(raw, |ns| self.namespaces.contains_key(ns))
    }

    /// [`Policies::parse_channel`] for the next channel of a request whose channel before it
    /// was `previous` (parsed here): a namespace known already is not looked up again, and a
    /// batch's channels nearly always share one.
    pub fn parse_channel_after(&self, raw: &str, previous: Option<&ChannelName>) -> Result<ChannelName, ChannelError> {
        ChannelName::parse_with(raw, |ns| {
            previous.is_some_and(|p| p.namespace() == ns) || self.namespaces.contains_key(ns)
        })
    }

    /// Parses a subscription: a channel or a pattern (`channel:incidents.*`).
    pub fn parse_subscription(&self, raw: &str) -> Result<ChannelName, ChannelError> {
        ChannelName::parse_subscription_with(raw, |ns| self.namespaces.contains_key(ns))
    }

    /// The policy of a channel's namespace.
    pub fn of(&self, channel: &ChannelName) -> Option<&Namespace> {
        self.namespaces.get(channel.namespace())
    }

    /// [`Policies::of`] with the namespace's name: a memo of the look-up knows the next
    /// channel of that namespace by it ([`ChannelName::is_in`]) without another.
    pub(crate) fn of_named(&self, channel: &ChannelName) -> Option<(&str, &Namespace)> {
        self.namespaces.get_named(channel.namespace())
    }

    /// The slow-consumer policy of a stream following `channels`: `drop_oldest` only if every
    /// one of their namespaces asks for it, since dropping events of a channel whose
    /// namespace wants its streams closed instead would break that namespace's promise.
    pub fn slow_consumer<'a>(&self, channels: impl IntoIterator<Item = &'a ChannelName>) -> SlowConsumer {
        let mut channels = channels.into_iter().peekable();
        let all_drop = channels.peek().is_some()
            && channels.all(|c| self.of(c).is_some_and(|ns| ns.slow_consumer == SlowConsumer::DropOldest));
        if all_drop { SlowConsumer::DropOldest } else { SlowConsumer::Disconnect }
    }

    pub fn can_subscribe(&self, who: &Principal, channel: &ChannelName) -> Result<(), Denied> {
        self.check(who, channel, Action::Subscribe)
    }

    pub fn can_publish(&self, who: &Principal, channel: &ChannelName) -> Result<(), Denied> {
        self.check(who, channel, Action::Publish)
    }

    /// A live join or leave of `channel` on a connection: the caller must be allowed to
    /// subscribe to it, and an API key must have the `publish` scope (a stats-only key
    /// changes no one's connection).
    pub fn can_change_subscription(&self, who: &Principal, channel: &ChannelName) -> Result<(), Denied> {
        if let Principal::ApiKey(key) = who
            && !key.has_publish_scope()
        {
            return Err(Denied::Forbidden { action: "change subscriptions to", channel: channel.to_string() });
        }
        self.check(who, channel, Action::Subscribe)
    }

    /// [`Policies::can_publish`] with the policy of the channel's namespace already looked up
    /// (`ns`, what [`Policies::of`] answers for it): a batch looks each namespace up once.
    pub fn can_publish_in(&self, who: &Principal, channel: &ChannelName, ns: Option<&Namespace>) -> Result<(), Denied> {
        self.check_in(who, channel, ns, Action::Publish)
    }

    fn check(&self, who: &Principal, channel: &ChannelName, action: Action) -> Result<(), Denied> {
        self.check_in(who, channel, self.of(channel), action)
    }

    fn check_in(
        &self,
        who: &Principal,
        channel: &ChannelName,
        ns: Option<&Namespace>,
        action: Action,
    ) -> Result<(), Denied> {
        let forbidden = || Denied::Forbidden { action: action.as_str(), channel: channel.to_string() };
        let Some(ns) = ns else {
            return Err(forbidden());
        };
        let access = match action {
            Action::Subscribe => ns.subscribe,
            Action::Publish => ns.publish,
        };
        match who {
            Principal::ApiKey(key) => {
                let stats = key.admin && matches!(action, Action::Subscribe) && channel.namespace() == ADMIN_NAMESPACE;
                if stats || key.channels.iter().any(|p| glob(p, channel.as_str())) { Ok(()) } else { Err(forbidden()) }
            }
            Principal::Anonymous => match access {
                Access::Anyone => Ok(()),
                _ => Err(Denied::Unauthenticated { action: action.as_str(), channel: channel.to_string() }),
            },
            Principal::User(user) => {
                let allowed = match access {
                    Access::Anyone | Access::Authenticated => {
                        let grants = match action {
                            Action::Subscribe => &user.subscribe,
                            Action::Publish => &user.publish,
                        };
                        grants.as_ref().is_none_or(|g| g.iter().any(|p| glob(p, channel.as_str())))
                    }
                    // A pattern would reach other owners' channels.
                    Access::Owner => {
                        !channel.is_pattern() && channel.as_str().split_once(':').is_some_and(|(_, id)| id == &*user.id)
                    }
                    Access::ApiKey => false,
                };
                if allowed { Ok(()) } else { Err(forbidden()) }
            }
        }
    }
}

fn apply(ns: &mut Namespace, over: &NamespaceConfig) {
    if let Some(v) = over.subscribe {
        ns.subscribe = v;
    }
    if let Some(v) = over.publish {
        ns.publish = v;
    }
    if let Some(v) = over.history_size {
        ns.history_size = v;
    }
    if let Some(v) = over.history_ttl {
        ns.history_ttl = v;
    }
    if let Some(v) = over.presence {
        ns.presence = v;
    }
    if let Some(v) = over.deliver_last {
        ns.deliver_last = v;
    }
    if let Some(v) = over.join_leave {
        ns.join_leave = v;
    }
    if let Some(v) = over.ai_stream_retention {
        ns.ai_stream_retention = v;
    }
    if let Some(v) = over.max_payload_bytes {
        ns.max_payload_bytes = v;
    }
    if let Some(v) = over.slow_consumer {
        ns.slow_consumer = v;
    }
}

/// Glob match where `*` stands for any run of characters (possibly empty).
///
/// Matched against a pattern subscription's text (`channel:incidents.*`, its `*` taken as
/// a character), a glob matches only if it matches every channel the pattern covers: the
/// pattern's trailing `*` can only be absorbed by a trailing `*` of the glob.
pub fn glob(pattern: &str, text: &str) -> bool {
    // `*` alone, an API key's usual channels, takes any text: one compare of the pattern,
    // once per channel an API key publishes to, before any scan.
    if pattern.as_bytes() == b"*" {
        return true;
    }
    // A byte scan for the first star: a pattern is a few bytes, where `split_once` sets up a
    // `memchr` search, once per event an API key publishes.
    let Some(star) = pattern.bytes().position(|b| b == b'*') else {
        return pattern == text;
    };
    let (first, after_first) = (&pattern[..star], &pattern[star + 1..]);
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    // A trailing star (`*`, `user:*`, a key's usual patterns) takes whatever is left.
    if after_first.is_empty() {
        return true;
    }
    let (middle, last) = match after_first.rsplit_once('*') {
        Some((middle, last)) => (Some(middle), last),
        None => (None, after_first),
    };
    for part in middle.into_iter().flat_map(|m| m.split('*')) {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::auth::{ApiKey, UserIdentity};

    fn user(id: &str, subscribe: Option<Vec<&str>>) -> Principal {
        Principal::User(Arc::new(UserIdentity {
            id: Arc::from(id),
            name: None,
            subscribe: subscribe.map(|v| v.into_iter().map(str::to_owned).collect()),
            publish: None,
            expires_at: None,
        }))
    }

    fn ch(p: &Policies, s: &str) -> ChannelName {
        p.parse_channel(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn secured() -> Policies {
        let cfg = Config {
            auth: crate::config::AuthConfig { jwt_secret: Some("x".repeat(32)), ..Default::default() },
            ..Config::default()
        };
        Policies::from_config(&cfg)
    }

    /// `*` matching by dynamic programming: the plain definition `glob` must agree with.
    fn glob_by_table(pattern: &[u8], text: &[u8]) -> bool {
        // matches[j]: the pattern so far matches text[..j].
        let mut matches = vec![false; text.len() + 1];
        matches[0] = true;
        for &p in pattern {
            let mut next = vec![false; text.len() + 1];
            for j in 0..=text.len() {
                next[j] = if p == b'*' {
                    matches[j] || (j > 0 && next[j - 1])
                } else {
                    j > 0 && matches[j - 1] && text[j - 1] == p
                };
            }
            matches = next;
        }
        matches[text.len()]
    }

    /// Every string of `alphabet` up to `max` long.
    fn strings(alphabet: &[u8], max: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..max {
            last = last.iter().flat_map(|s| alphabet.iter().map(move |&c| format!("{s}{}", c as char))).collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn glob_agrees_with_the_table_definition_on_every_short_pattern_and_text() {
        let patterns = strings(b"ab*", 5);
        let texts = strings(b"ab*", 5);
        for p in &patterns {
            for t in &texts {
                assert_eq!(glob(p, t), glob_by_table(p.as_bytes(), t.as_bytes()), "glob({p:?}, {t:?})");
            }
        }
    }

    #[test]
    fn globs_match_like_shell_stars() {
        assert!(glob("*", "anything"));
        assert!(glob("channel:team-*", "channel:team-a"));
        assert!(!glob("channel:team-*", "channel:other"));
        assert!(glob("channel:*.log", "channel:a.b.log"));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b*c", "aXcYb"));
        assert!(glob("exact", "exact") && !glob("exact", "exactly"));
        assert!(!glob("ab*ba", "aba"), "the parts may not overlap");
    }

    #[test]
    fn user_channels_belong_to_their_owner_and_api_keys() {
        let p = secured();
        let mine = ch(&p, "user:42");
        assert_eq!(p.can_subscribe(&user("42", None), &mine), Ok(()));
        assert!(matches!(p.can_subscribe(&user("43", None), &mine), Err(Denied::Forbidden { .. })));
        assert!(matches!(p.can_subscribe(&Principal::Anonymous, &mine), Err(Denied::Unauthenticated { .. })));
        assert!(p.can_publish(&user("42", None), &mine).is_err(), "users do not publish to user channels");
        let key = Principal::ApiKey(Arc::new(ApiKey::publisher("backend", vec!["*".into()])));
        assert_eq!(p.can_publish(&key, &mine), Ok(()));
    }

    #[test]
    fn grants_narrow_but_never_widen() {
        let p = secured();
        let narrow = user("1", Some(vec!["channel:team-*"]));
        assert_eq!(p.can_subscribe(&narrow, &ch(&p, "channel:team-a")), Ok(()));
        assert!(p.can_subscribe(&narrow, &ch(&p, "channel:general")).is_err());
        let wide = user("1", Some(vec!["*"]));
        assert!(p.can_subscribe(&wide, &ch(&p, "user:2")).is_err(), "a grant cannot open someone else's channel");
    }

    #[test]
    fn patterns_are_allowed_only_where_every_matching_channel_is() {
        let p = secured();
        let pat = |s: &str| p.parse_subscription(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(p.can_subscribe(&user("1", None), &pat("channel:incidents.*")), Ok(()));
        let narrow = user("1", Some(vec!["channel:team-*"]));
        assert_eq!(p.can_subscribe(&narrow, &pat("channel:team-a*")), Ok(()));
        assert!(p.can_subscribe(&narrow, &pat("channel:*")).is_err(), "wider than the grant");
        assert!(p.can_subscribe(&user("1", Some(vec!["channel:x"])), &pat("channel:x*")).is_err());
        assert!(p.can_subscribe(&user("1", None), &pat("user:1*")).is_err(), "would reach user:10, user:11, ...");
        assert!(p.can_subscribe(&Principal::Anonymous, &pat("channel:*")).is_err());
        let key = |c: &str| Principal::ApiKey(Arc::new(ApiKey::publisher("k", vec![c.into()])));
        assert_eq!(p.can_subscribe(&key("user:*"), &pat("user:*")), Ok(()));
        assert!(p.can_subscribe(&key("user:1"), &pat("user:1*")).is_err());
    }

    #[test]
    fn dev_mode_opens_rooms_and_system_to_anyone_but_not_user_channels() {
        let p = Policies::from_config(&Config::default());
        assert!(p.dev_mode);
        for c in ["channel:general", "system"] {
            assert_eq!(p.can_subscribe(&Principal::Anonymous, &ch(&p, c)), Ok(()));
            assert_eq!(p.can_publish(&Principal::Anonymous, &ch(&p, c)), Ok(()));
        }
        assert!(p.can_subscribe(&Principal::Anonymous, &ch(&p, "user:1")).is_err());
    }

    #[test]
    fn configured_namespaces_exist_and_override_defaults() {
        let cfg: Config = Config::from_toml(
            "[namespaces.incidents]\nsubscribe = \"anyone\"\nhistory_size = 7\n[namespaces.channel]\npresence = false\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let p = Policies::from_config(&cfg);
        let inc = ch(&p, "incidents:INC-1");
        assert_eq!(p.of(&inc).map(|n| (n.subscribe, n.history_size)), Some((Access::Anyone, 7)));
        assert_eq!(p.of(&ch(&p, "channel:x")).map(|n| n.presence), Some(false));
        assert!(p.parse_channel("unknown:x").is_err());
    }

    #[test]
    fn a_channel_parsed_after_another_is_refused_or_accepted_as_on_its_own() {
        let cfg = Config::from_toml("[namespaces.incidents]\n").unwrap_or_else(|e| panic!("{e}"));
        let p = Policies::from_config(&cfg);
        let names =
            ["user:1", "incidents:a", "system", "system:x", "rooms:x", "user:", "user:a b", "channel:b", "users:1"];
        for before in names {
            let previous = p.parse_channel(before).ok();
            for raw in names {
                assert_eq!(p.parse_channel_after(raw, previous.as_ref()), p.parse_channel(raw), "{raw} after {before}");
            }
        }
    }

    #[test]
    fn a_stream_drops_its_oldest_events_only_if_every_namespace_of_its_channels_asks_for_it() {
        let cfg = Config::from_toml(
            "[namespaces.ticker]\nslow_consumer = \"drop_oldest\"\n[namespaces.channel]\nslow_consumer = \"drop_oldest\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let p = Policies::from_config(&cfg);
        let (ticker, room, system) = (ch(&p, "ticker:eur"), ch(&p, "channel:x"), ch(&p, "system"));
        assert_eq!(p.slow_consumer([&ticker, &room]), SlowConsumer::DropOldest);
        assert_eq!(p.slow_consumer([&ticker, &system]), SlowConsumer::Disconnect, "system keeps the default");
        assert_eq!(p.slow_consumer([&system]), SlowConsumer::Disconnect);
        assert_eq!(p.slow_consumer(std::iter::empty()), SlowConsumer::Disconnect);
    }
}
