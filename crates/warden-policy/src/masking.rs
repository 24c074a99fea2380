//! Inline masking of result values: content detectors and column rules.
//!
//! A value first meets one cheap pass over its bytes that records its [`Shape`]
//! (digit runs, `@`, colons, ...); only detectors the shape allows run their regex, so
//! most values never reach a regex, and a value that matches nothing is left alone
//! with no allocation. Regex matches are then checked where a checksum exists (Luhn for cards, mod-97 for IBANs, SSN number
//! ranges, IPv6 parsing) so look-alikes are not masked, overlapping matches resolve
//! to the earliest and longest, and only then is a new value built.

use aws_lc_rs::hmac;
use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use warden_core::{ColumnPlan, ColumnRef, ColumnRuleId, Masked, Masker, ValueKind};

use crate::glob;

/// Built-in content detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    Email,
    /// Payment card numbers, 13-19 digits with optional spaces/dashes, Luhn-checked.
    CardNumber,
    /// US social security numbers (`123-45-6789`), invalid ranges excluded.
    UsSsn,
    /// E.164 (`+14155550123`) and common national forms (`(415) 555-0123`, `030 1234 5678`).
    Phone,
    /// IBANs, mod-97 checked, with or without spaces.
    Iban,
    Ipv4,
    Ipv6,
    /// JSON Web Tokens.
    Jwt,
    /// AWS access key ids (`AKIA...`, `ASIA...`).
    AwsAccessKey,
    /// Token shapes of common services (GitHub, GitLab, Slack, Stripe, Google, Warden)
    /// and `password=...`/`api_key: ...` assignments.
    SecretToken,
    /// PEM private key blocks.
    PemPrivateKey,
}

impl Detector {
    pub const ALL: [Detector; 11] = [
        Detector::Email,
        Detector::CardNumber,
        Detector::UsSsn,
        Detector::Phone,
        Detector::Iban,
        Detector::Ipv4,
        Detector::Ipv6,
        Detector::Jwt,
        Detector::AwsAccessKey,
        Detector::SecretToken,
        Detector::PemPrivateKey,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::CardNumber => "card_number",
            Detector::UsSsn => "us_ssn",
            Detector::Phone => "phone",
            Detector::Iban => "iban",
            Detector::Ipv4 => "ipv4",
            Detector::Ipv6 => "ipv6",
            Detector::Jwt => "jwt",
            Detector::AwsAccessKey => "aws_access_key",
            Detector::SecretToken => "secret_token",
            Detector::PemPrivateKey => "pem_private_key",
        }
    }

    fn pattern(self) -> &'static str {
        match self {
            Detector::Email => {
                r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}"
            }
            Detector::CardNumber => r"\b\d(?:[ -]?\d){12,18}\b",
            Detector::UsSsn => r"\b\d{3}-\d{2}-\d{4}\b",
            Detector::Phone => {
                r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\b\d{2,4}[ .-])\d{3,4}[ .-]?\d{3,4}\b|\+\d{8,15}\b"
            }
            Detector::Iban => r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b",
            Detector::Ipv4 => {
                r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b"
            }
            // Eight groups, or a `::` form; times like 12:30:45 are neither.
            Detector::Ipv6 => {
                r"(?i)\b(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}\b|(?:\b[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,6})?::(?:[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,6}\b)?"
            }
            Detector::Jwt => r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
            Detector::AwsAccessKey => {
                r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA)[A-Z0-9]{16}\b"
            }
            Detector::SecretToken => {
                r#"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255}|glpat-[A-Za-z0-9_-]{20,}|xox[abposr]-[A-Za-z0-9-]{10,}|[sr]k_live_[A-Za-z0-9]{16,}|AIza[A-Za-z0-9_-]{35}|wdn_[a-z0-9]{1,32}_[0-9a-f]{64})\b|(?i:\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret)\s*[:=]\s*["']?[^\s"',;]{6,})"#
            }
            Detector::PemPrivateKey => {
                r"-----BEGIN [A-Z ]*PRIVATE KEY-----(?:[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----|[\s\S]*)"
            }
        }
    }

    /// Checksums and ranges that rule out look-alikes.
    fn accepts(self, m: &[u8]) -> bool {
        match self {
            Detector::CardNumber => luhn_valid(m),
            Detector::UsSsn => ssn_valid(m),
            Detector::Iban => iban_valid(m),
            Detector::Phone => {
                let digits = m.iter().filter(|b| b.is_ascii_digit()).count();
                (7..=15).contains(&digits)
            }
            Detector::Ipv6 => std::str::from_utf8(m).ok().is_some_and(|s| {
                s.chars().any(|c| c.is_ascii_hexdigit()) && s.parse::<std::net::Ipv6Addr>().is_ok()
            }),
            _ => true,
        }
    }
}

impl Detector {
    /// Whether a value of this shape could hold a match at all. Each test is implied
    /// by the detector's regex (a property test checks the two paths agree).
    fn candidate(self, s: &Shape) -> bool {
        match self {
            Detector::Email => s.at,
            Detector::CardNumber => s.digits >= 13,
            Detector::UsSsn => s.digits >= 9 && s.dashes >= 2,
            Detector::Phone => s.digits >= 7,
            Detector::Iban => s.len >= 15 && s.upper >= 2 && s.digits >= 2,
            Detector::Ipv4 => s.dots >= 3 && s.digits >= 4,
            Detector::Ipv6 => s.colons >= 2,
            Detector::Jwt => s.len >= 30 && s.dots >= 2,
            Detector::AwsAccessKey => s.len >= 20 && s.upper >= 4,
            Detector::SecretToken => {
                s.len >= 10 && (s.token_prefix || s.secret_assignment || s.aiza)
            }
            Detector::PemPrivateKey => s.dashes >= 10,
        }
    }
}

/// Facts about a value, each a simple count the compiler vectorizes, cheap enough
/// to compute for every value before deciding whether any regex needs to run.
#[derive(Debug, Default)]
struct Shape {
    len: usize,
    digits: usize,
    upper: usize,
    colons: usize,
    dots: usize,
    dashes: usize,
    at: bool,
    /// `AIza` (Google API keys) appears.
    aiza: bool,
    /// A known token prefix (`ghp_`, `wdn_`, `sk_live_`, `glpat-`, `xoxb-`, ...) appears.
    token_prefix: bool,
    /// A `:` or `=` follows a name like password, pwd, secret, key or token.
    secret_assignment: bool,
    /// It could be a number in another spelling than plain digits ([`plain_digits`]).
    spelled_number: bool,
}

/// What [`Shape::of`] counts per byte, each an 8-bit field of one `u128`: a byte's
/// entry in [`COUNTED`] has a 1 in the field of each count it adds to, so counting a
/// byte is one table load and one addition (fields cannot carry into each other
/// within [`COUNT_RUN`] bytes).
const DIGIT: u32 = 0;
const UPPER: u32 = 1;
const COLON: u32 = 2;
const DOT: u32 = 3;
const DASH: u32 = 4;
const UNDERSCORE: u32 = 5;
const EQUALS: u32 = 6;
const AT: u32 = 7;
/// What a number spelled otherwise than in plain digits has (`4.1e+15`, `4,111`).
const SPELLING: u32 = 8;
/// What such a number is made of.
const NUMERIC: u32 = 9;
const COUNTS: usize = 10;
/// Bytes counted into one accumulator before its fields are moved out.
const COUNT_RUN: usize = 255;

static COUNTED: [u128; 256] = {
    let mut t = [0u128; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let fields: &[u32] = if c.is_ascii_digit() {
            &[DIGIT, NUMERIC]
        } else if c == b'E' {
            &[UPPER, SPELLING, NUMERIC]
        } else if c.is_ascii_uppercase() {
            &[UPPER]
        } else {
            match c {
                b':' => &[COLON],
                b'=' => &[EQUALS],
                b'.' => &[DOT, SPELLING, NUMERIC],
                b'-' => &[DASH, NUMERIC],
                b'_' => &[UNDERSCORE, SPELLING, NUMERIC],
                b'@' => &[AT],
                b'e' | b',' | b'\'' => &[SPELLING, NUMERIC],
                b'+' => &[NUMERIC],
                _ => &[],
            }
        };
        let mut i = 0;
        while i < fields.len() {
            t[b] |= 1u128 << (8 * fields[i]);
            i += 1;
        }
        b += 1;
    }
    t
};

impl Shape {
    /// One pass over the value, a table load and an addition per byte: values are
    /// mostly short, so the cost is per value more than per byte, and one loop beats
    /// a pass per count. The secret-token facts (prefixes, assignments, `AIza`) are
    /// only looked for when that detector is on.
    fn of(value: &[u8], secrets: bool) -> Shape {
        let mut counts = [0usize; COUNTS];
        for run in value.chunks(COUNT_RUN) {
            let mut packed = 0u128;
            for &b in run {
                packed += COUNTED[usize::from(b)];
            }
            for (i, count) in counts.iter_mut().enumerate() {
                *count += usize::from((packed >> (8 * i)) as u8);
            }
        }
        let count = |field: u32| counts[field as usize];
        let (digits, upper, colons, dashes) =
            (count(DIGIT), count(UPPER), count(COLON), count(DASH));
        // The rarer checks look only at the few positions the classes point to.
        let positions = |of: &'static [u8]| {
            value
                .iter()
                .enumerate()
                .filter(move |(_, b)| of.contains(b))
                .map(|(i, _)| i)
        };
        let token_prefix = secrets
            && dashes + count(UNDERSCORE) > 0
            && positions(b"_-").any(|i| {
                let before = &value[..i];
                [
                    &b"ghp"[..],
                    b"gho",
                    b"ghu",
                    b"ghs",
                    b"ghr",
                    b"wdn",
                    b"live",
                    b"_pat",
                    b"glpat",
                ]
                .iter()
                .any(|p| before.ends_with(p))
                    || (before.len() >= 4 && &before[before.len() - 4..before.len() - 1] == b"xox")
            });
        let secret_assignment = secrets
            && colons + count(EQUALS) > 0
            && positions(b":=").any(|i| ends_like_secret_name(&value[..i]));
        Shape {
            len: value.len(),
            digits,
            upper,
            colons,
            dots: count(DOT),
            dashes,
            at: count(AT) > 0,
            aiza: secrets
                && upper > 0
                && value
                    .iter()
                    .enumerate()
                    .any(|(i, b)| *b == b'A' && value[i..].starts_with(b"AIza")),
            token_prefix,
            secret_assignment,
            spelled_number: count(SPELLING) > 0 && count(NUMERIC) == value.len() && digits > 0,
        }
    }
}

/// Whether the text before a `:` or `=` ends (spaces aside) like a name the
/// `secret_token` assignment form looks for: password, passwd, pwd, secret, key, token.
fn ends_like_secret_name(before: &[u8]) -> bool {
    let trimmed = before.trim_ascii_end();
    let tail = &trimmed[trimmed.len().saturating_sub(4)..];
    let mut lower = [0u8; 4];
    for (l, b) in lower.iter_mut().zip(tail) {
        *l = b.to_ascii_lowercase();
    }
    let lower = &lower[..tail.len()];
    [&b"wd"[..], b"word", b"cret", b"key", b"oken"]
        .iter()
        .any(|e| lower.ends_with(e))
}

impl FromStr for Detector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Detector::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| format!("unknown detector `{s}`"))
    }
}

pub fn luhn_valid(m: &[u8]) -> bool {
    let digits: Vec<u32> = m
        .iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| u32::from(b - b'0'))
        .collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                *d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn ssn_valid(m: &[u8]) -> bool {
    let s = String::from_utf8_lossy(m);
    let mut parts = s.split('-');
    let (Some(a), Some(g), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    a != "000" && a != "666" && !a.starts_with('9') && g != "00" && n != "0000"
}

pub fn iban_valid(m: &[u8]) -> bool {
    let compact: Vec<u8> = m.iter().copied().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u32 = 0;
    for b in tail.iter().chain(head) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// How a sensitive value is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskStyle {
    /// `[redacted:<what>]`: nothing of the value remains, not even its length.
    Full,
    /// Letters and digits become `*` except the last N; separators stay
    /// (`****-****-****-1111`).
    Partial(usize),
    /// A keyed hash (HMAC-SHA-256, 96 bits): equal values stay equal, so joins and
    /// GROUP BY still work, but the value cannot be recovered without the key.
    Hash,
    /// SQL NULL (a detector match nulls the whole value).
    Null,
}

impl FromStr for MaskStyle {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(MaskStyle::Full),
            "hash" => Ok(MaskStyle::Hash),
            "null" => Ok(MaskStyle::Null),
            _ => match s.strip_prefix("partial:").map(str::parse::<usize>) {
                Some(Ok(n)) if n <= 64 => Ok(MaskStyle::Partial(n)),
                _ => Err(format!(
                    "unknown mask style `{s}` (full, partial:N, hash, null)"
                )),
            },
        }
    }
}

impl fmt::Display for MaskStyle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaskStyle::Full => f.write_str("full"),
            MaskStyle::Partial(n) => write!(f, "partial:{n}"),
            MaskStyle::Hash => f.write_str("hash"),
            MaskStyle::Null => f.write_str("null"),
        }
    }
}

/// A column name pattern: `column`, `table.column` or `schema.table.column`, each
/// part a glob, case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPattern {
    schema: Option<String>,
    table: Option<String>,
    column: String,
}

impl ColumnPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<String> = text.split('.').map(|p| p.trim().to_lowercase()).collect();
        if parts.iter().any(String::is_empty) {
            return Err(format!("column pattern `{text}` has an empty part"));
        }
        match parts.as_slice() {
            [c] => Ok(Self {
                schema: None,
                table: None,
                column: c.clone(),
            }),
            [t, c] => Ok(Self {
                schema: None,
                table: Some(t.clone()),
                column: c.clone(),
            }),
            [s, t, c] => Ok(Self {
                schema: Some(s.clone()),
                table: Some(t.clone()),
                column: c.clone(),
            }),
            _ => Err(format!("column pattern `{text}` has more than three parts")),
        }
    }

    /// A part the pattern names must be known and match; `*` also matches unknown.
    pub fn matches(&self, c: &ColumnRef<'_>) -> bool {
        fn part(p: &Option<String>, v: Option<&str>) -> bool {
            match (p.as_deref(), v) {
                (None | Some("*"), _) => true,
                (Some(p), Some(v)) => glob::matches(p, &v.to_lowercase()),
                (Some(_), None) => false,
            }
        }
        glob::matches(&self.column, &c.column.to_lowercase())
            && part(&self.table, c.table)
            && part(&self.schema, c.schema)
    }
}

/// All finders' regexes in one automaton: one pass tells whether anything matches.
fn build_set(finders: &[Finder]) -> Result<RegexSet, String> {
    RegexSetBuilder::new(finders.iter().map(|f| f.regex.as_str()))
        .unicode(false)
        .size_limit(REGEX_SIZE_LIMIT * 4)
        .build()
        .or_else(|_| {
            // Custom patterns may need Unicode; build the set with it then.
            RegexSetBuilder::new(finders.iter().map(|f| f.regex.as_str()))
                .size_limit(REGEX_SIZE_LIMIT * 4)
                .build()
        })
        .map_err(|e| format!("detector set: {e}"))
}

struct Finder {
    label: String,
    regex: Regex,
    detector: Option<Detector>,
    style: MaskStyle,
}

/// A compiled set of masking rules; implements [`Masker`].
pub struct MaskingEngine {
    set: RegexSet,
    finders: Vec<Finder>,
    /// The secret-token detector is on: values' shapes include its (costlier) facts.
    secrets: bool,
    columns: Vec<(ColumnPattern, MaskStyle)>,
    key: hmac::Key,
}

/// What to build a [`MaskingEngine`] from.
pub struct MaskingRules {
    pub detectors: Vec<(Detector, MaskStyle)>,
    /// Name, regex, style.
    pub custom: Vec<(String, String, MaskStyle)>,
    pub columns: Vec<(ColumnPattern, MaskStyle)>,
}

const REGEX_SIZE_LIMIT: usize = 4 << 20;

impl MaskingEngine {
    /// `hash_key` keys the `hash` style; derive it from the gateway's master key.
    pub fn new(rules: MaskingRules, hash_key: &[u8]) -> Result<Self, String> {
        let mut finders = Vec::new();
        for (d, style) in rules.detectors {
            if finders.iter().any(|f: &Finder| f.detector == Some(d)) {
                continue;
            }
            let regex = RegexBuilder::new(d.pattern())
                .unicode(false)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| format!("detector {}: {e}", d.name()))?;
            finders.push(Finder {
                label: d.name().to_string(),
                regex,
                detector: Some(d),
                style,
            });
        }
        for (name, pattern, style) in rules.custom {
            let regex = RegexBuilder::new(&pattern)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| format!("custom detector `{name}`: {e}"))?;
            if regex.is_match(b"") {
                return Err(format!("custom detector `{name}` matches the empty string"));
            }
            finders.push(Finder {
                label: name,
                regex,
                detector: None,
                style,
            });
        }
        Ok(Self {
            set: build_set(&finders)?,
            secrets: finders
                .iter()
                .any(|f| f.detector == Some(Detector::SecretToken)),
            finders,
            columns: rules.columns,
            key: hmac::Key::new(hmac::HMAC_SHA256, hash_key),
        })
    }

    fn styled(&self, style: MaskStyle, label: &str, value: &[u8]) -> Option<Vec<u8>> {
        match style {
            MaskStyle::Full => Some(format!("[redacted:{label}]").into_bytes()),
            MaskStyle::Null => None,
            MaskStyle::Hash => {
                let tag = hmac::sign(&self.key, value);
                let hex: String = tag.as_ref()[..12]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                Some(format!("h:{hex}").into_bytes())
            }
            MaskStyle::Partial(keep) => {
                let text = String::from_utf8_lossy(value);
                let total = text.chars().filter(|c| c.is_alphanumeric()).count();
                let mut seen = 0;
                Some(
                    text.chars()
                        .map(|c| {
                            if c.is_alphanumeric() {
                                seen += 1;
                                if seen + keep > total { c } else { '*' }
                            } else {
                                c
                            }
                        })
                        .collect::<String>()
                        .into_bytes(),
                )
            }
        }
    }

    /// The accepted, non-overlapping matches in `value`, earliest (then longest) first.
    fn find(&self, value: &[u8], shape: &Shape, prefilter: bool) -> Vec<(usize, usize, usize)> {
        let mut spans: Vec<(usize, usize, usize)> = Vec::new();
        // Most values fit no detector's shape; of the rest, most match nothing, which
        // one pass of the combined automaton tells faster than each regex would.
        let any_candidate = self
            .finders
            .iter()
            .any(|f| f.detector.is_none_or(|d| d.candidate(shape)));
        if prefilter && (!any_candidate || !self.set.is_match(value)) {
            return spans;
        }
        for (idx, f) in self.finders.iter().enumerate() {
            if prefilter && f.detector.is_some_and(|d| !d.candidate(shape)) {
                continue;
            }
            for m in f.regex.find_iter(value) {
                if m.is_empty() {
                    continue;
                }
                if f.detector.is_none_or(|d| d.accepts(m.as_bytes())) {
                    spans.push((m.start(), m.end(), idx));
                }
            }
        }
        spans.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut kept: Vec<(usize, usize, usize)> = Vec::with_capacity(spans.len());
        for s in spans {
            if kept.last().is_none_or(|k| s.0 >= k.1) {
                kept.push(s);
            }
        }
        kept
    }

    /// Masks `value` and also names what was found (for recordings and tests).
    pub fn mask_explained(&self, plan: ColumnPlan, value: &[u8]) -> (Masked, Vec<String>) {
        self.mask_with(plan, value, true, true)
    }

    /// The same as [`Masker::mask`] but running every detector's regex on every value:
    /// the reference the shape prefilter is tested against. Slower; not for proxies.
    pub fn mask_without_prefilter(&self, value: &[u8]) -> Masked {
        self.mask_with(ColumnPlan::Detect, value, false, false).0
    }

    /// Masks `value`; names what was found only when `explain` (the proxies' path
    /// does not, and allocates nothing for it).
    fn mask_with(
        &self,
        plan: ColumnPlan,
        value: &[u8],
        prefilter: bool,
        explain: bool,
    ) -> (Masked, Vec<String>) {
        if plan == ColumnPlan::Skip {
            return (Masked::Unchanged, Vec::new());
        }
        if let ColumnPlan::Rule(ColumnRuleId(i)) = plan
            && let Some((_, style)) = self.columns.get(i)
        {
            let masked = match self.styled(*style, "column", value) {
                Some(v) => Masked::Replaced(v),
                None => Masked::Null,
            };
            let labels = if explain {
                vec!["column".into()]
            } else {
                Vec::new()
            };
            return (masked, labels);
        }
        let shape = Shape::of(value, self.secrets);
        let spans = self.find(value, &shape, prefilter);
        if spans.is_empty() {
            // A number in another spelling (`4.111111111111111e+15`, `4,111,...`)
            // is searched as its plain digits, and masked whole.
            if (shape.spelled_number || !prefilter)
                && let Some(digits) = plain_digits(value)
                && digits != value
            {
                return match self.mask_with(plan, &digits, prefilter, explain) {
                    (Masked::Unchanged, _) => (Masked::Unchanged, Vec::new()),
                    found => found,
                };
            }
            return (Masked::Unchanged, Vec::new());
        }
        let labels: Vec<String> = if explain {
            spans
                .iter()
                .map(|s| self.finders[s.2].label.clone())
                .collect()
        } else {
            Vec::new()
        };
        let mut out = Vec::with_capacity(value.len());
        let mut at = 0;
        for (start, end, idx) in spans {
            let f = &self.finders[idx];
            out.extend_from_slice(&value[at..start]);
            match self.styled(f.style, &f.label, &value[start..end]) {
                Some(rep) => out.extend_from_slice(&rep),
                None => return (Masked::Null, labels),
            }
            at = end;
        }
        out.extend_from_slice(&value[at..]);
        (Masked::Replaced(out), labels)
    }
}

/// The digits of a number written in scientific notation or with group
/// separators, as the integer it spells (`4.1111e+15` → `4111100000000000`); `None`
/// for anything that is not such a number. Fractional digits are kept in order, so
/// the digit run a detector looks for survives any spelling.
fn plain_digits(value: &[u8]) -> Option<Vec<u8>> {
    // Checked before anything is allocated: most values are no such number.
    let spelled = value
        .iter()
        .any(|c| matches!(c, b'e' | b'E' | b'.' | b',' | b'_' | b'\''));
    let numeric = value.iter().all(|c| {
        c.is_ascii_digit() || matches!(c, b'e' | b'E' | b'.' | b',' | b'_' | b'\'' | b'+' | b'-')
    });
    if !spelled || !numeric || value.len() > 64 || !value.iter().any(u8::is_ascii_digit) {
        return None;
    }
    let (mantissa, exponent) = match value.iter().position(|c| matches!(c, b'e' | b'E')) {
        Some(at) => {
            let exp = std::str::from_utf8(&value[at + 1..]).ok()?;
            (
                &value[..at],
                exp.trim_start_matches('+').parse::<i32>().ok()?,
            )
        }
        None => (value, 0),
    };
    let mantissa = mantissa
        .strip_prefix(b"-")
        .or_else(|| mantissa.strip_prefix(b"+"))
        .unwrap_or(mantissa);
    if !mantissa.iter().any(u8::is_ascii_digit)
        || !mantissa
            .iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b',' | b'_' | b'\''))
    {
        return None;
    }
    let mut digits: Vec<u8> = mantissa
        .iter()
        .copied()
        .filter(u8::is_ascii_digit)
        .collect();
    if exponent > 0 {
        // Digits after the decimal point move left of it; zeros fill the rest.
        let point = mantissa.iter().position(|c| *c == b'.');
        let fraction = point.map_or(0, |p| {
            mantissa[p + 1..]
                .iter()
                .filter(|c| c.is_ascii_digit())
                .count()
        });
        let zeros = usize::try_from(exponent)
            .ok()?
            .saturating_sub(fraction)
            .min(32);
        digits.extend(std::iter::repeat_n(b'0', zeros));
    }
    Some(digits)
}

impl Masker for MaskingEngine {
    fn plan(&self, column: &ColumnRef<'_>) -> ColumnPlan {
        if let Some(i) = self.columns.iter().position(|(p, _)| p.matches(column)) {
            return ColumnPlan::Rule(ColumnRuleId(i));
        }
        match column.kind {
            ValueKind::Temporal | ValueKind::Boolean | ValueKind::Uuid => ColumnPlan::Skip,
            ValueKind::Text | ValueKind::Number | ValueKind::Binary => ColumnPlan::Detect,
        }
    }

    fn mask(&self, plan: ColumnPlan, value: &[u8]) -> Masked {
        self.mask_with(plan, value, true, false).0
    }

    fn is_active(&self) -> bool {
        !self.finders.is_empty() || !self.columns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_counts_are_exact_past_a_counting_run() {
        let naive = |v: &[u8], f: &dyn Fn(u8) -> bool| v.iter().filter(|b| f(**b)).count();
        let mut values: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"2026-11-05 12:30:35+00".to_vec(),
            b"4.1111e+15".to_vec(),
            b"4,111,111,111,111,111".to_vec(),
            b"-4_111'111E+3".to_vec(),
            b"a@b.c: X=1 _-".to_vec(),
        ];
        // Longer than a counting run, every byte counted by several fields.
        values.push(b"9".repeat(3 * COUNT_RUN + 7));
        values.push((0..=255u8).cycle().take(2000).collect());
        for v in &values {
            let s = Shape::of(v, true);
            assert_eq!(s.len, v.len());
            assert_eq!(s.digits, naive(v, &|b| b.is_ascii_digit()));
            assert_eq!(s.upper, naive(v, &|b| b.is_ascii_uppercase()));
            assert_eq!(s.colons, naive(v, &|b| b == b':'));
            assert_eq!(s.dots, naive(v, &|b| b == b'.'));
            assert_eq!(s.dashes, naive(v, &|b| b == b'-'));
            assert_eq!(s.at, v.contains(&b'@'));
            // The prefilter may only skip what plain_digits would refuse.
            assert!(
                s.spelled_number || plain_digits(v).is_none(),
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    fn engine(style: MaskStyle) -> MaskingEngine {
        let rules = MaskingRules {
            detectors: Detector::ALL.iter().map(|d| (*d, style)).collect(),
            custom: vec![("employee_id".into(), r"EMP-\d{6}".into(), style)],
            columns: vec![
                (
                    ColumnPattern::parse("*.ssn").unwrap_or_else(|e| unreachable!("{e}")),
                    MaskStyle::Full,
                ),
                (
                    ColumnPattern::parse("*password*").unwrap_or_else(|e| unreachable!("{e}")),
                    MaskStyle::Null,
                ),
            ],
        };
        MaskingEngine::new(rules, b"test-key").unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn masked(e: &MaskingEngine, v: &str) -> String {
        match e.mask(ColumnPlan::Detect, v.as_bytes()) {
            Masked::Unchanged => v.to_string(),
            Masked::Replaced(b) => String::from_utf8_lossy(&b).into_owned(),
            Masked::Null => "NULL".into(),
        }
    }

    #[test]
    fn numbers_in_other_spellings_are_searched_as_digits() {
        let e = engine(MaskStyle::Full);
        for v in [
            "4.111111111111111e+15",
            "4.111111111111111E15",
            "-4.111111111111111e+15",
            "4,111,111,111,111,111",
            "4111111111111111.0",
        ] {
            assert_ne!(masked(&e, v), v, "{v}");
        }
        for v in ["1.5e+3", "3.14159", "1,234", "12e5", "e15", "4.1e+"] {
            assert_eq!(masked(&e, v), v, "{v}");
        }
        assert_eq!(
            plain_digits(b"4.1111e+15").as_deref(),
            Some(&b"4111100000000000"[..])
        );
    }

    #[test]
    fn detectors_mask_and_checksums_spare_lookalikes() {
        let e = engine(MaskStyle::Full);
        let cases = [
            ("mail alice@example.com now", "mail [redacted:email] now"),
            ("card 4111 1111 1111 1111.", "card [redacted:card_number]."),
            ("card 4111111111111112", "card 4111111111111112"),
            ("ssn 123-45-6789", "ssn [redacted:us_ssn]"),
            ("ssn 666-45-6789", "ssn 666-45-6789"),
            ("call +14155550123", "call [redacted:phone]"),
            ("call (415) 555-0123", "call [redacted:phone]"),
            ("call 030 1234 5678", "call [redacted:phone]"),
            ("iban DE89 3704 0044 0532 0130 00", "iban [redacted:iban]"),
            ("iban GB82WEST12345698765433", "iban GB82WEST12345698765433"),
            ("from 10.1.2.3", "from [redacted:ipv4]"),
            ("from 2001:db8::1 ok", "from [redacted:ipv6] ok"),
            ("at 12:30:45", "at 12:30:45"),
            ("use std::fs::File", "use std::fs::File"),
            ("fe80::1 and ::1", "[redacted:ipv6] and [redacted:ipv6]"),
            ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", "[redacted:ipv6]"),
            ("key AKIAIOSFODNN7EXAMPLE", "key [redacted:aws_access_key]"),
            (
                "ghp_0123456789abcdefghijklmnopqrstuvwxyz",
                "[redacted:secret_token]",
            ),
            ("password=hunter22", "[redacted:secret_token]"),
            ("id EMP-123456", "id [redacted:employee_id]"),
            ("nothing to see", "nothing to see"),
            ("order 1234 on 2026-11-29", "order 1234 on 2026-11-29"),
        ];
        for (input, want) in cases {
            assert_eq!(masked(&e, input), want, "{input}");
        }
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abcdefghijk";
        assert_eq!(masked(&e, jwt), "[redacted:jwt]");
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----";
        assert_eq!(masked(&e, pem), "[redacted:pem_private_key]");
    }

    #[test]
    fn styles() {
        let e = engine(MaskStyle::Partial(4));
        assert_eq!(masked(&e, "4111-1111-1111-1111"), "****-****-****-1111");
        let h = engine(MaskStyle::Hash);
        let a = masked(&h, "alice@example.com");
        assert!(a.starts_with("h:") && a.len() == 26, "{a}");
        assert_eq!(a, masked(&h, "alice@example.com"));
        assert_ne!(a, masked(&h, "bob@example.com"));
        let n = engine(MaskStyle::Null);
        assert_eq!(masked(&n, "x alice@example.com"), "NULL");
    }

    #[test]
    fn column_rules_mask_whatever_the_value() {
        let e = engine(MaskStyle::Full);
        let col = |s: Option<&'static str>, t: Option<&'static str>, c: &'static str| ColumnRef {
            kind: ValueKind::Text,
            schema: s,
            table: t,
            column: c,
        };
        let ssn = e.plan(&col(Some("public"), Some("people"), "SSN"));
        assert!(matches!(ssn, ColumnPlan::Rule(_)));
        assert_eq!(
            e.mask(ssn, b"42"),
            Masked::Replaced(b"[redacted:column]".to_vec())
        );
        let pw = e.plan(&col(None, None, "db_password_hash"));
        assert_eq!(e.mask(pw, b"x"), Masked::Null);
        // `*` matches an unknown table too; a named table must be known.
        assert!(matches!(
            e.plan(&col(None, None, "ssn")),
            ColumnPlan::Rule(_)
        ));
        assert_eq!(e.plan(&col(None, Some("t"), "name")), ColumnPlan::Detect);
        let when = ColumnRef {
            kind: ValueKind::Temporal,
            ..col(None, Some("t"), "created_at")
        };
        assert_eq!(e.plan(&when), ColumnPlan::Skip);
        assert_eq!(e.mask(ColumnPlan::Skip, b"2026-11-29"), Masked::Unchanged);
        let amount = ColumnRef {
            kind: ValueKind::Number,
            ..col(None, Some("t"), "card")
        };
        assert_eq!(
            e.plan(&amount),
            ColumnPlan::Detect,
            "numbers can hold card numbers"
        );
    }

    #[test]
    fn checksums() {
        assert!(luhn_valid(b"4111111111111111"));
        assert!(!luhn_valid(b"4111111111111112"));
        assert!(iban_valid(b"GB82WEST12345698765432"));
        assert!(!iban_valid(b"GB82WEST12345698765433"));
    }
}
