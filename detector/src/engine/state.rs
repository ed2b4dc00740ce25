//! Correlation state: per IP, per user name and per ban prefix. Times are Unix seconds of log
//! time. Every collection is bounded (caps from [`EngineConfig`](super::EngineConfig)).
//!
//! Memory: the per-address state is kept compact, because a botnet rotating IPv6 addresses
//! shows the engine millions of sources (`cargo xtask bench engine` measures it from the
//! allocator's own counters, part by part). User names and recipients are interned
//! ([`Name`]: an 8-byte pointer to one allocation per distinct name); times are [`Ts`] (u32
//! seconds); lists are packed pointers with a 16-bit length ([`Tiny`], 10 bytes); evidence is
//! a line reference plus what is needed to describe it ([`Cite`]), not a copy of text; ban
//! notes share their sentence ([`Note`]); what few addresses have (successful logins, a held
//! ban, alerts, open transactions) lives in one optional box ([`Extra`]). The records and
//! their table are in `table.rs`. The worst case per IP is bounded by the per-IP caps (64
//! failures, 8 evidence lines, 16 users, 4 probes with the defaults).
//!
//! The snapshot form (serde) is the one of snapshot version 1 where it could stay so: a
//! version-1 file loads into these types (times as integers are clamped into [`Ts`], session
//! names are hashed into [`SessionKey`], evidence text is kept as text).
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::ops::Deref;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::decision::{Evidence, Rule};
pub use super::tiny::Tiny;
use crate::event::{Event, EventKind, Protocol};

/// Longest user name or recipient kept (bytes); longer attacker-supplied names are cut.
pub const MAX_NAME_LEN: usize = 128;
/// Successful-login users remembered per IP.
pub const MAX_SUCCESS_USERS: usize = 16;
/// Accepted recipients remembered per IP while their transaction is open.
pub const MAX_PENDING_RCPTS: usize = 8;
/// Aborted transactions remembered per IP.
pub const MAX_PROBES: usize = 4;
/// Recipients remembered per aborted transaction.
pub const MAX_PROBE_RCPTS: usize = 4;

/// A log time in whole Unix seconds, as u32 (1970 to 2106); times outside are clamped (the
/// engine's own clock stays i64). Compares with i64 seconds directly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ts(u32);

impl Ts {
    pub fn of(secs: i64) -> Ts {
        Ts(secs.clamp(0, i64::from(u32::MAX)) as u32)
    }
    pub fn get(self) -> i64 {
        i64::from(self.0)
    }
    /// The later of this and `secs`.
    pub fn max_with(self, secs: i64) -> Ts {
        self.max(Ts::of(secs))
    }
}

impl From<Ts> for i64 {
    fn from(t: Ts) -> i64 {
        t.get()
    }
}

impl PartialEq<i64> for Ts {
    fn eq(&self, o: &i64) -> bool {
        self.get() == *o
    }
}
impl PartialOrd<i64> for Ts {
    fn partial_cmp(&self, o: &i64) -> Option<std::cmp::Ordering> {
        self.get().partial_cmp(o)
    }
}
impl PartialEq<Ts> for i64 {
    fn eq(&self, o: &Ts) -> bool {
        *self == o.get()
    }
}
impl PartialOrd<Ts> for i64 {
    fn partial_cmp(&self, o: &Ts) -> Option<std::cmp::Ordering> {
        self.partial_cmp(&o.get())
    }
}
impl std::ops::Sub<Ts> for i64 {
    type Output = i64;
    fn sub(self, o: Ts) -> i64 {
        self - o.get()
    }
}
impl std::ops::Sub<i64> for Ts {
    type Output = i64;
    fn sub(self, o: i64) -> i64 {
        self.get() - o
    }
}
impl std::ops::Sub for Ts {
    type Output = i64;
    fn sub(self, o: Ts) -> i64 {
        self.get() - o.get()
    }
}

impl Serialize for Ts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}
impl<'de> Deserialize<'de> for Ts {
    /// Any integer (version 1 wrote i64 seconds), clamped.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ts, D::Error> {
        i64::deserialize(d).map(Ts::of)
    }
}

/// An interned user name or recipient: every record naming it shares one allocation. A thin
/// pointer (8 bytes, and `Option<Name>` too) to a shared boxed string: records name users
/// and recipients far more often than there are distinct names, so the pointer's size counts
/// and the second indirection does not.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<Box<str>>);

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}
impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}
impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self.0, f)
    }
}
impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl PartialEq<str> for Name {
    fn eq(&self, o: &str) -> bool {
        &**self.0 == o
    }
}
impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}
impl<'de> Deserialize<'de> for Name {
    /// Not interned yet: [`Names::intern_name`] shares it on restore.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Name(Arc::new(bounded_name(&s))))
    }
}

/// A decision note as the engine remembers it (the last ban of a prefix, a held ban): its
/// sentence with every run of digits cut out, interned, and the digit runs beside it. Bans
/// of one campaign say the same sentence with other counts ("failed on info@, a mailbox
/// under attack (7 distinct IPs ...)"), so a million bans share a few sentences instead of
/// holding a million copies. [`fmt::Display`] gives the note back exactly.
#[derive(Clone, PartialEq, Eq)]
pub struct Note {
    /// The text with each digit run replaced by [`Note::RUN`] (a control character: names
    /// in notes have theirs replaced by `?`, and the engine's own words have none).
    skeleton: Name,
    /// The digit runs in order, separated by spaces.
    digits: Box<str>,
}

impl Note {
    const RUN: char = '\u{1}';
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut runs = self.digits.split(' ');
        for part in self.skeleton.split_inclusive(Note::RUN) {
            match part.strip_suffix(Note::RUN) {
                Some(text) => {
                    f.write_str(text)?;
                    f.write_str(runs.next().unwrap_or_default())?;
                }
                None => f.write_str(part)?,
            }
        }
        Ok(())
    }
}
impl fmt::Debug for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}
impl Serialize for Note {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
impl<'de> Deserialize<'de> for Note {
    /// Whole (not cut like a name); not shared yet: [`Names::intern_note`] does it on
    /// restore.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Note, D::Error> {
        let text = String::deserialize(d)?;
        Ok(Names::default().note(&text))
    }
}

/// The engine's name interner. Names nobody refers to any more are dropped at each sweep.
#[derive(Debug, Default)]
pub struct Names(HashSet<Name>);

impl Names {
    /// The shared copy of `raw` cut to [`MAX_NAME_LEN`] with control characters replaced.
    pub fn intern(&mut self, raw: &str) -> Name {
        self.share(bounded_name(raw))
    }

    /// The shared copy of `text`, made if there is none.
    fn share(&mut self, text: Box<str>) -> Name {
        if let Some(n) = self.0.get(&*text) {
            return n.clone();
        }
        let n = Name(Arc::new(text));
        self.0.insert(n.clone());
        n
    }

    /// Replaces `name` by the shared copy (after a restore).
    pub fn intern_name(&mut self, name: &mut Name) {
        *name = self.intern(&name.0);
    }

    /// A decision note, its sentence shared ([`Note`]).
    pub fn note(&mut self, text: &str) -> Note {
        let mut skeleton = String::with_capacity(text.len());
        let mut digits = String::new();
        let mut in_run = false;
        for c in text.chars() {
            if c.is_ascii_digit() {
                if !in_run {
                    skeleton.push(Note::RUN);
                    if !digits.is_empty() {
                        digits.push(' ');
                    }
                    in_run = true;
                }
                digits.push(c);
            } else {
                in_run = false;
                // Never the marker itself: a note could not be told back.
                skeleton.push(if c == Note::RUN { '?' } else { c });
            }
        }
        Note {
            skeleton: self.share(skeleton.into_boxed_str()),
            digits: digits.into_boxed_str(),
        }
    }

    /// Shares the sentence of `note` again (after a restore).
    pub fn intern_note(&mut self, note: &mut Note) {
        *note = self.note(&note.to_string());
    }

    /// Forgets names that only the interner still holds.
    pub fn collect(&mut self) {
        self.0.retain(|n| Arc::strong_count(&n.0) > 1);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An SMTP session id (`smtpd:1234`, a queue id) kept as a 64-bit FNV-1a hash: only compared
/// for equality, and 8 bytes instead of a string. Server-written, so not chosen by a client.
/// Never zero, so `Option<SessionKey>` is 8 bytes too (a zero hash is taken as 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey(std::num::NonZeroU64);

impl SessionKey {
    pub fn of(session: &str) -> SessionKey {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in session.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        SessionKey::from_hash(h)
    }

    fn from_hash(h: u64) -> SessionKey {
        SessionKey(std::num::NonZeroU64::new(h).unwrap_or(std::num::NonZeroU64::MIN))
    }
}
impl Serialize for SessionKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0.get())
    }
}
impl<'de> Deserialize<'de> for SessionKey {
    /// A number, or the session's text as version 1 wrote it.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SessionKey, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Hash(u64),
            Text(String),
        }
        Ok(match Repr::deserialize(d)? {
            Repr::Hash(h) => SessionKey::from_hash(h),
            Repr::Text(t) => SessionKey::of(&t),
        })
    }
}

/// One counted failed login.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub time: Ts,
    /// Attempts this line counted (`Event::failures`).
    pub count: u32,
    pub line: u64,
    pub user: Option<Name>,
    /// The mailbox does not exist (`auth_unknown_user`).
    pub unknown_user: bool,
    /// The IP has logged in successfully as this user (before or after): only the lenient
    /// burst applies.
    pub lenient: bool,
    /// Which half of an SMTP AUTH attempt this is, if any (see [`SaslSide`]).
    #[serde(default)]
    pub sasl: Option<SaslSide>,
    /// Already matched with the other half of the same SMTP AUTH attempt.
    #[serde(default)]
    pub paired: bool,
}

/// One SMTP AUTH attempt is logged twice: Postfix's `SASL ... authentication failed` warning
/// and Dovecot's session-less `passwd-file(user,ip)` auth line. When Postfix and Dovecot are
/// read from different sources, each parser counts its own line, so the engine pairs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslSide {
    Postfix,
    Dovecot,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Success {
    pub user: Name,
    pub time: Ts,
    /// False when the login looked like a guessed password (possible compromise): it makes
    /// the address neither a known client nor shared.
    #[serde(default = "yes")]
    pub trusted: bool,
}

fn yes() -> bool {
    true
}

/// A ban held for the grace period: weak evidence that a successful login from the same
/// address cancels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// Log time at which the ban is made if nothing cancelled it.
    pub deadline: i64,
    pub rule: Rule,
    pub note: Note,
    /// The address the decision names (inside an IPv6 /64 it may differ from the key).
    pub addr: IpAddr,
}

/// A probe of a mailbox, remembered by mailbox so a login from another address can be tied
/// to it (split roles).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeMark {
    pub time: Ts,
    /// State key of the prober.
    pub prober: IpAddr,
    /// The prober's own address.
    pub addr: IpAddr,
    pub recipient: Name,
}

/// An accepted RCPT whose transaction has not ended yet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingRcpt {
    pub session: Option<SessionKey>,
    pub recipient: Name,
    pub time: Ts,
    /// Whether the RCPT line's client looked like a mail server (`None`: not told).
    #[serde(default)]
    pub peer: Option<bool>,
}

/// An SMTP transaction that named a recipient and ended without an accepted message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub time: Ts,
    /// The client looked like a mail server verifying a sender (see `SmtpPeer`): such a
    /// probe is weak evidence only and never ties other addresses to it.
    #[serde(default)]
    pub mta_like: bool,
    /// The RCPT line told what the client looked like (`mta_like` is a finding, not a default).
    #[serde(default)]
    pub peer_known: bool,
    pub line: u64,
    pub session: Option<SessionKey>,
    pub recipients: Tiny<Name>,
}

/// What a cited line was, enough to describe it again (see [`Cite::evidence`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CiteKind {
    Rcpt,
    MessageAccepted,
    Aborted,
    Lost,
    DisconnectAfterMessage,
    Disconnect,
    Success,
    Failure,
    UnknownUser,
    /// Any other kind: the name holds its description.
    Other,
    /// Evidence restored from a version-1 snapshot: the name holds its description.
    Text,
}

/// One evidence line by reference: its number and time, what it was and the name it named.
/// The description is made when a decision or `explain` needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Cite {
    pub line: u64,
    pub name: Option<Name>,
    pub time: Ts,
    pub kind: CiteKind,
    pub protocol: Option<Protocol>,
}

impl Cite {
    /// The evidence of `ev` (names interned in `names`).
    pub fn of(ev: &Event, names: &mut Names) -> Cite {
        let (kind, name) = match ev.kind {
            EventKind::Rcpt => (CiteKind::Rcpt, ev.recipient.as_deref()),
            EventKind::MessageAccepted => (CiteKind::MessageAccepted, None),
            EventKind::TransactionAborted => (CiteKind::Aborted, None),
            EventKind::LostConnection => (CiteKind::Lost, None),
            EventKind::Disconnect if ev.smtp.is_some_and(|c| c.data_ok > 0) => {
                (CiteKind::DisconnectAfterMessage, None)
            }
            EventKind::Disconnect => (CiteKind::Disconnect, None),
            EventKind::AuthSuccess => (CiteKind::Success, ev.user.as_deref()),
            EventKind::AuthFailure => (CiteKind::Failure, ev.user.as_deref()),
            EventKind::AuthUnknownUser => (CiteKind::UnknownUser, ev.user.as_deref()),
            other => (CiteKind::Other, Some(other.name())),
        };
        Cite {
            line: ev.line,
            name: name.map(|n| names.intern(n)),
            time: Ts::of(ev.time.timestamp()),
            kind,
            protocol: ev.protocol,
        }
    }

    /// The evidence as decisions carry it (the same words as ever).
    pub fn evidence(&self) -> Evidence {
        let name = self.name.as_deref().unwrap_or("?");
        let login = self.protocol.map_or("login".to_string(), |p| {
            format!("{} login", super::rules::protocol_name(p))
        });
        let what = match self.kind {
            CiteKind::Rcpt => format!("RCPT to <{name}>"),
            CiteKind::MessageAccepted => "message accepted".into(),
            CiteKind::Aborted => "SMTP transaction aborted without a message".into(),
            CiteKind::Lost => "SMTP connection lost".into(),
            CiteKind::DisconnectAfterMessage => "SMTP disconnect after a message".into(),
            CiteKind::Disconnect => "SMTP disconnect without a message".into(),
            CiteKind::Success => format!("{login} as {name} succeeded"),
            CiteKind::Failure => format!("{login} as {name} failed"),
            CiteKind::UnknownUser => format!("{login} as non-existent {name} failed"),
            CiteKind::Other | CiteKind::Text => name.to_string(),
        };
        Evidence {
            line: self.line,
            time: DateTime::from_timestamp(self.time.get(), 0).unwrap_or_default(),
            what,
        }
    }
}

/// The snapshot form of a [`Cite`]: version 2 writes the reference, version 1 wrote the
/// description (`what`) with an RFC 3339 time.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum CiteRepr {
    Ref {
        line: u64,
        t: Ts,
        k: CiteKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        p: Option<Protocol>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        n: Option<Name>,
    },
    Text {
        line: u64,
        time: DateTime<Utc>,
        what: String,
    },
}

impl Serialize for Cite {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        CiteRepr::Ref {
            line: self.line,
            t: self.time,
            k: self.kind,
            p: self.protocol,
            n: self.name.clone(),
        }
        .serialize(s)
    }
}
impl<'de> Deserialize<'de> for Cite {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cite, D::Error> {
        Ok(match CiteRepr::deserialize(d)? {
            CiteRepr::Ref { line, t, k, p, n } => Cite {
                line,
                name: n,
                time: t,
                kind: k,
                protocol: p,
            },
            CiteRepr::Text { line, time, what } => Cite {
                line,
                // Cut like any name: the description of a version-1 line is short anyway.
                name: Some(Name(Arc::new(what.into()))),
                time: Ts::of(time.timestamp()),
                kind: CiteKind::Text,
                protocol: None,
            },
        })
    }
}

/// What only some addresses have: successful logins, open transactions, a held ban, alerts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extra {
    pub successes: Tiny<Success>,
    pub pending_rcpts: Tiny<PendingRcpt>,
    /// A ban waiting out the grace period (boxed: few addresses hold one).
    pub pending: Option<Box<Pending>>,
    /// Last log time the address was tied to a campaign (a login linked to a probe, a
    /// failure on a mailbox under attack): a success from it is not trusted.
    pub campaign: Option<Ts>,
    /// Last log time a shared-address alert was raised for it.
    pub shared_noticed: Option<Ts>,
    /// Last possible-compromise alert: log time, user.
    pub compromise: Option<(Ts, Name)>,
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.successes.is_empty()
            && self.pending_rcpts.is_empty()
            && self.pending.is_none()
            && self.campaign.is_none()
            && self.shared_noticed.is_none()
            && self.compromise.is_none()
    }
}

/// Everything the engine remembers about one address (IPv4, or an IPv6 /64).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IpState {
    pub first_seen: Ts,
    pub last_seen: Ts,
    pub failures: Tiny<Failure>,
    pub probes: Tiny<Probe>,
    pub evidence: Tiny<Cite>,
    extra: Option<Box<Extra>>,
}

impl IpState {
    pub fn new(t: i64) -> IpState {
        IpState {
            first_seen: Ts::of(t),
            last_seen: Ts::of(t),
            ..IpState::default()
        }
    }

    /// The rarely present parts, if any.
    pub fn extra(&self) -> Option<&Extra> {
        self.extra.as_deref()
    }

    /// The rarely present parts, for a change; boxed on first use. [`IpState::tidy`] frees
    /// the box again once it is empty.
    pub fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// The rarely present parts for a change, if there are any (nothing is boxed).
    pub fn extra_mut_if_any(&mut self) -> Option<&mut Extra> {
        self.extra.as_deref_mut()
    }

    /// Something in it is older than `cutoff` (successful logins: than `lenient`).
    pub fn needs_expiry(&self, cutoff: i64, lenient: i64) -> bool {
        self.failures.iter().any(|f| f.time < cutoff)
            || self.probes.iter().any(|p| p.time < cutoff)
            || self.evidence.iter().any(|e| e.time < cutoff)
            || self.pending_rcpts().iter().any(|p| p.time < cutoff)
            || self.successes().iter().any(|x| x.time < lenient)
    }

    /// Forgets what is older than `cutoff` (successful logins: than `lenient`).
    pub fn expire(&mut self, cutoff: i64, lenient: i64) {
        self.failures.retain(|f| f.time >= cutoff);
        self.probes.retain(|p| p.time >= cutoff);
        self.evidence.retain(|e| e.time >= cutoff);
        if let Some(x) = self.extra_mut_if_any() {
            x.pending_rcpts.retain(|p| p.time >= cutoff);
            x.successes.retain(|x| x.time >= lenient);
        }
        self.tidy();
    }

    /// Drops the rarely present parts (for measurement).
    pub fn clear_extra(&mut self) {
        self.extra = None;
    }

    /// Frees the extra box when nothing is left in it.
    pub fn tidy(&mut self) {
        if self.extra.as_deref().is_some_and(Extra::is_empty) {
            self.extra = None;
        }
    }

    pub fn successes(&self) -> &[Success] {
        self.extra().map_or(&[], |x| &x.successes)
    }
    pub fn pending_rcpts(&self) -> &[PendingRcpt] {
        self.extra().map_or(&[], |x| &x.pending_rcpts)
    }
    pub fn pending(&self) -> Option<&Pending> {
        self.extra()?.pending.as_deref()
    }
    pub fn campaign(&self) -> Option<Ts> {
        self.extra()?.campaign
    }
    pub fn shared_noticed(&self) -> Option<Ts> {
        self.extra()?.shared_noticed
    }
    pub fn compromise(&self) -> Option<&(Ts, Name)> {
        self.extra()?.compromise.as_ref()
    }

    /// Drops a held ban (if any).
    pub fn clear_pending(&mut self) {
        if let Some(x) = self.extra.as_deref_mut() {
            x.pending = None;
        }
        self.tidy();
    }

    /// Takes the held ban if its deadline is `deadline`.
    pub fn take_pending_at(&mut self, deadline: i64) -> Option<Pending> {
        let x = self.extra.as_deref_mut()?;
        let p = x.pending.take_if(|p| p.deadline == deadline);
        self.tidy();
        p.map(|p| *p)
    }

    pub fn push_evidence(&mut self, ev: Cite, cap: usize) {
        // Duplicate descriptions of one line (same number) are kept once.
        if self
            .evidence
            .back()
            .is_some_and(|e| e.line == ev.line && e.time == ev.time)
        {
            return;
        }
        if cap > 0 && self.evidence.len() >= cap {
            // One reallocation: drop the oldest ones and add the new one together.
            let keep = cap - 1;
            let mut v: Vec<Cite> = Vec::with_capacity(cap);
            let skip = self.evidence.len() - keep;
            v.extend(self.evidence.iter().skip(skip).cloned());
            v.push(ev);
            self.evidence = v.into();
            return;
        }
        if cap == 0 {
            return;
        }
        self.evidence.push(ev);
    }

    /// The evidence as decisions carry it, oldest first.
    pub fn evidence_list(&self) -> Vec<Evidence> {
        self.evidence.iter().map(Cite::evidence).collect()
    }

    /// Did this IP log in successfully as `user` at or after `since`?
    pub fn succeeded_as(&self, user: &str, since: i64) -> bool {
        self.successes()
            .iter()
            .any(|s| &*s.user == user && s.time >= since)
    }

    /// Distinct users with a trusted successful login at or after `since`.
    pub fn success_users_since(&self, since: i64) -> usize {
        self.successes()
            .iter()
            .filter(|s| s.trusted && s.time >= since)
            .count()
    }

    /// Users this address logged in as (trusted) at or after `since`.
    pub fn known_users(&self, since: i64) -> impl Iterator<Item = &str> {
        self.successes()
            .iter()
            .filter(move |s| s.trusted && s.time >= since)
            .map(|s| &*s.user)
    }

    /// How much this address's state is worth keeping when the state is full: what it
    /// would cost to lose. Cheap events that never ban alone (a lost connection, a probe)
    /// count for little; counted failures, a held ban, a campaign tie and a customer's
    /// successful login (its leniency) count for much. Eviction drops the lowest first.
    pub fn evidence_weight(&self) -> u32 {
        let failures: u32 = (self.failures.iter())
            .filter(|f| !f.lenient)
            .map(|f| f.count.min(16))
            .sum();
        let probes = self.probes.iter().filter(|p| !p.mta_like).count() as u32;
        let mut w = failures.saturating_mul(4) + probes;
        if let Some(x) = self.extra() {
            if !x.successes.is_empty() {
                w += 32;
            }
            if x.pending.is_some() || x.campaign.is_some() || x.compromise.is_some() {
                w += 64;
            }
        }
        w
    }

    /// The weight from which an address's state counts as evidence toward a ban (a counted
    /// failed login, a held ban, a campaign tie) or a customer's leniency: evicting it is
    /// churn that costs detection (`evicted_with_evidence`).
    pub const WEIGHTY: u32 = 4;

    /// Replaces every name by its interned copy (after a restore).
    pub fn intern(&mut self, names: &mut Names) {
        for f in self.failures.iter_mut() {
            if let Some(u) = &mut f.user {
                names.intern_name(u);
            }
        }
        for p in self.probes.iter_mut() {
            for r in p.recipients.iter_mut() {
                names.intern_name(r);
            }
        }
        for c in self.evidence.iter_mut() {
            if let Some(n) = &mut c.name {
                names.intern_name(n);
            }
        }
        if let Some(x) = self.extra.as_deref_mut() {
            for s in x.successes.iter_mut() {
                names.intern_name(&mut s.user);
            }
            for r in x.pending_rcpts.iter_mut() {
                names.intern_name(&mut r.recipient);
            }
            if let Some((_, u)) = &mut x.compromise {
                names.intern_name(u);
            }
            if let Some(p) = &mut x.pending {
                names.intern_note(&mut p.note);
            }
        }
    }

    /// Heap plus inline bytes (names counted in full, although they are shared), for tests.
    pub fn approx_bytes(&self) -> usize {
        use std::mem::size_of;
        let name = |n: &Option<Name>| n.as_ref().map_or(0, |s| s.len());
        let x = self.extra.as_deref();
        size_of::<IpAddr>()
            + size_of::<Self>()
            + self.failures.heap_bytes()
            + self.failures.iter().map(|f| name(&f.user)).sum::<usize>()
            + self.probes.heap_bytes()
            + (self.probes.iter())
                .map(|p| {
                    p.recipients.heap_bytes() + p.recipients.iter().map(|r| r.len()).sum::<usize>()
                })
                .sum::<usize>()
            + self.evidence.heap_bytes()
            + self.evidence.iter().map(|e| name(&e.name)).sum::<usize>()
            + x.map_or(0, |x| {
                size_of::<Extra>()
                    + x.successes.heap_bytes()
                    + x.pending_rcpts.heap_bytes()
                    + x.pending.as_ref().map_or(0, |p| p.note.digits.len())
            })
    }
}

/// The snapshot form of an [`IpState`]: the field names of version 1, the extra parts
/// flattened back into it.
#[derive(Serialize, Deserialize)]
struct IpStateRepr {
    first_seen: Ts,
    last_seen: Ts,
    #[serde(default)]
    failures: Tiny<Failure>,
    #[serde(default)]
    successes: Tiny<Success>,
    #[serde(default)]
    pending_rcpts: Tiny<PendingRcpt>,
    #[serde(default)]
    probes: Tiny<Probe>,
    #[serde(default)]
    evidence: Tiny<Cite>,
    #[serde(default)]
    pending: Option<Box<Pending>>,
    #[serde(default)]
    campaign: Option<Ts>,
    #[serde(default)]
    shared_noticed: Option<Ts>,
    #[serde(default)]
    compromise: Option<(Ts, Name)>,
}

impl Serialize for IpState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let empty = Extra::default();
        let x = self.extra().unwrap_or(&empty);
        let mut st = s.serialize_struct("IpState", 11)?;
        st.serialize_field("first_seen", &self.first_seen)?;
        st.serialize_field("last_seen", &self.last_seen)?;
        st.serialize_field("failures", &self.failures)?;
        st.serialize_field("successes", &x.successes)?;
        st.serialize_field("pending_rcpts", &x.pending_rcpts)?;
        st.serialize_field("probes", &self.probes)?;
        st.serialize_field("evidence", &self.evidence)?;
        st.serialize_field("pending", &x.pending)?;
        st.serialize_field("campaign", &x.campaign)?;
        st.serialize_field("shared_noticed", &x.shared_noticed)?;
        st.serialize_field("compromise", &x.compromise)?;
        st.end()
    }
}
impl<'de> Deserialize<'de> for IpState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<IpState, D::Error> {
        let r = IpStateRepr::deserialize(d)?;
        let mut s = IpState {
            first_seen: r.first_seen,
            last_seen: r.last_seen,
            failures: r.failures,
            probes: r.probes,
            evidence: r.evidence,
            extra: Some(Box::new(Extra {
                successes: r.successes,
                pending_rcpts: r.pending_rcpts,
                pending: r.pending,
                campaign: r.campaign,
                shared_noticed: r.shared_noticed,
                compromise: r.compromise,
            })),
        };
        s.tidy();
        Ok(s)
    }
}

/// A failure on a user name, for `target-campaign`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserFailure {
    /// State key (see `Engine::state_key`).
    pub ip: IpAddr,
    pub time: Ts,
    /// The address itself (differs from `ip` inside an IPv6 /64), for decisions.
    #[serde(default)]
    pub addr: Option<IpAddr>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UserState {
    pub last_seen: Ts,
    /// One entry per failing IP (latest failure time), oldest first.
    pub failures: Tiny<UserFailure>,
    /// Log time until which the name counts as under attack (set when the campaign threshold
    /// is reached, extended by the horizon on each later crossing).
    pub attacked_until: Option<Ts>,
    /// Addresses whose failed login on this mailbox was tied to a probe (own or split-role),
    /// latest first kept; `campaign_probe_ips` of them within `campaign_window` put the
    /// mailbox under a probe campaign (aborts that probe it are banned).
    #[serde(default)]
    pub linked: Tiny<UserFailure>,
    /// Last trusted successful login as this mailbox, from any address: it has an owner who
    /// may mistype during an attack.
    #[serde(default)]
    pub owner_seen: Option<Ts>,
}

/// The banned prefixes inside one IPv6 site, with their ban times, oldest first.
pub type SiteOffenders = Tiny<(ipnet::IpNet, Ts)>;

/// Bans and offences of one ban prefix (an IPv4 address or an IPv6 /64 by default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefixState {
    pub offences: u32,
    pub last_offence: Ts,
    /// End of the ban (a ban past 2106 ends then).
    pub banned_until: Ts,
    pub last_rule: Rule,
    pub last_note: Note,
}

/// Cuts an attacker-supplied name to [`MAX_NAME_LEN`] bytes on a char boundary and replaces
/// control characters (they end up in notes that admins read on a terminal).
pub fn bounded_name(s: &str) -> Box<str> {
    let mut end = s.len().min(MAX_NAME_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let s = &s[..end];
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

/// Removes the entries with the oldest `last_seen` until `map` holds at most 90% of `cap`
/// (so eviction runs rarely). Ties break on the key for determinism.
pub fn evict_oldest<K, V>(
    map: &mut HashMap<K, V>,
    cap: usize,
    last_seen: impl Fn(&V) -> i64,
    keep: impl Fn(&K, &V) -> bool,
) -> usize
where
    K: std::hash::Hash + Eq + Ord + Clone,
{
    if map.len() <= cap {
        return 0;
    }
    let target = cap - cap / 10;
    let mut order: Vec<(i64, K)> = map
        .iter()
        .filter(|(k, v)| !keep(k, v))
        .map(|(k, v)| (last_seen(v), k.clone()))
        .collect();
    order.sort_unstable();
    let excess = map.len().saturating_sub(target).min(order.len());
    for (_, k) in order.into_iter().take(excess) {
        map.remove(&k);
    }
    excess
}

/// Evicts addresses until `map` holds at most 90% of `cap`: those with the least evidence
/// first ([`IpState::evidence_weight`]), the least recently seen among equals, ties broken
/// on the key. Oldest-first alone would evict exactly the slow bots, and let a flood of
/// cheap events from fresh addresses push out the evidence against them. What was evicted:
/// (addresses, how many of them carried evidence that counts toward a ban).
pub fn evict_least_evidence(map: &mut super::table::AddressTable, cap: usize) -> (usize, usize) {
    if map.len() <= cap {
        return (0, 0);
    }
    let target = cap - cap / 10;
    let excess = map.len() - target;
    let mut order: Vec<(u32, Ts, IpAddr)> = map
        .iter()
        .map(|(k, v)| (v.evidence_weight(), v.last_seen, k))
        .collect();
    if excess < order.len() {
        order.select_nth_unstable(excess);
        order.truncate(excess);
    }
    let weighty = (order.iter())
        .filter(|(w, _, _)| *w >= IpState::WEIGHTY)
        .count();
    let gone: HashSet<IpAddr> = order.into_iter().map(|(_, _, k)| k).collect();
    map.retain(|k, _| !gone.contains(&k));
    (excess, weighty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_reads_back_exactly_and_campaign_notes_share_their_sentence() {
        let mut names = Names::default();
        for text in [
            "failed on guess36876, a mailbox under attack (3 distinct IPs failed on it within 1day)",
            "",
            "2001:db8:7::/48 has 3 offending /64s",
            "007 leading zeros 0 and 10 20",
            "ends with 42",
            "no digits at all",
            "a marker \u{1} in the text",
        ] {
            let note = names.note(text);
            let expected = text.replace('\u{1}', "?");
            assert_eq!(note.to_string(), expected);
            let json = serde_json::to_string(&note).unwrap();
            let back: Note = serde_json::from_str(&json).unwrap();
            assert_eq!(back.to_string(), expected, "snapshot form");
        }
        let a = names.note("failed on guess1, a mailbox under attack (3 distinct IPs)");
        let b = names.note("failed on guess22, a mailbox under attack (17 distinct IPs)");
        assert!(
            Arc::ptr_eq(&a.skeleton.0, &b.skeleton.0),
            "one sentence, shared"
        );
        assert_eq!(
            b.to_string(),
            "failed on guess22, a mailbox under attack (17 distinct IPs)"
        );
    }
}
