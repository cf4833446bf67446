//! S3 input partitioning, as Bacalhau's `pkg/s3/partitioning.go` does it, so that a given key lands
//! in the same partition under Caravel as under Bacalhau: an `s3` input's `Partition` spreads the
//! objects under its prefix among the `Count` executions of a batch job, each execution taking the
//! objects whose partition is its `BACALHAU_PARTITION_INDEX`.
//!
//! | `Partition.Type` | the string hashed (FNV-1a 32, modulo the count)                         |
//! |------------------|--------------------------------------------------------------------------|
//! | `none` (or unset)| nothing: every execution gets every object                             |
//! | `object`         | the object's whole key                                                   |
//! | `regex`          | the key below the prefix: its capture groups joined by 0x1F, else the match; no match → partition 0 |
//! | `substring`      | characters `StartIndex..EndIndex` of the key below the prefix; too short → 0 |
//! | `date`           | the key below the prefix read with the Go layout `DateFormat` and written back; unparsable → 0 |
//!
//! With one partition every object goes to it. Directory placeholders (keys ending in `/`) are
//! never partitioned out.

use serde::{Deserialize, Serialize};

/// An input's `Partition` parameters (Bacalhau's `PartitionConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PartitionConfig {
    #[serde(rename = "Type")]
    pub kind: String,
    pub pattern: String,
    pub start_index: usize,
    pub end_index: usize,
    pub date_format: String,
}

/// The partition used for objects a rule cannot place.
const FALLBACK: usize = 0;

impl PartitionConfig {
    /// Reads the `Partition` parameter of an s3 source (any key case), if set.
    pub fn from_params(params: &crate::spec::Params) -> Result<Option<Self>, String> {
        let Some(v) = params.get("Partition").filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            let old = std::mem::take(m);
            for (k, val) in old {
                let canon = ["Type", "Pattern", "StartIndex", "EndIndex", "DateFormat"]
                    .into_iter()
                    .find(|c| c.eq_ignore_ascii_case(&k))
                    .map_or(k, String::from);
                m.insert(canon, val);
            }
        }
        let c: PartitionConfig =
            serde_json::from_value(v).map_err(|e| format!("Partition: {e}"))?;
        c.validate()?;
        Ok(Some(c))
    }

    /// Bacalhau's checks, with its wording where it has one.
    pub fn validate(&self) -> Result<(), String> {
        match self.kind.to_ascii_lowercase().as_str() {
            "" | "none" | "object" => Ok(()),
            "regex" => {
                if self.pattern.is_empty() {
                    return Err("Partition: regex pattern cannot be empty".into());
                }
                regex::Regex::new(&self.pattern)
                    .map(|_| ())
                    .map_err(|e| format!("Partition: invalid regex pattern: {e}"))
            }
            "substring" => {
                if self.end_index <= self.start_index {
                    return Err("Partition: end index must be greater than start index".into());
                }
                Ok(())
            }
            "date" => {
                if self.date_format.is_empty() {
                    return Err("Partition: date format cannot be empty".into());
                }
                GoLayout::parse(&self.date_format).map(|_| ())
            }
            other => Err(format!(
                "Partition: unsupported partition key type {other} (use none, object, regex, substring or date)"
            )),
        }
    }

    /// The partition (0‥count) of an object with this key, under an input whose `Key` is `prefix`.
    pub fn partition_of(&self, key: &str, prefix: &str, count: usize) -> usize {
        if count <= 1 {
            return 0;
        }
        let prefix = prefix.trim().trim_end_matches('*');
        let rel = key.strip_prefix(prefix).unwrap_or(key);
        let rel = rel.strip_prefix('/').unwrap_or(rel);
        let index = |s: &str| (fnv1a32(s.as_bytes()) % count as u32) as usize;
        match self.kind.to_ascii_lowercase().as_str() {
            "object" => index(key),
            "regex" => {
                let Ok(re) = regex::Regex::new(&self.pattern) else {
                    return FALLBACK;
                };
                match re.captures(rel) {
                    Some(c) if !c[0].is_empty() => {
                        let groups: Vec<&str> = c
                            .iter()
                            .skip(1)
                            .flatten()
                            .map(|m| m.as_str())
                            .filter(|s| !s.is_empty())
                            .collect();
                        if groups.is_empty() {
                            index(&c[0])
                        } else {
                            index(&groups.join("\u{1f}"))
                        }
                    }
                    _ => FALLBACK,
                }
            }
            "substring" => {
                let chars: Vec<char> = rel.chars().collect();
                if chars.len() < self.end_index {
                    FALLBACK
                } else {
                    index(
                        &chars[self.start_index..self.end_index]
                            .iter()
                            .collect::<String>(),
                    )
                }
            }
            "date" => {
                let Ok(layout) = GoLayout::parse(&self.date_format) else {
                    return FALLBACK;
                };
                let head = &rel.as_bytes()[..rel.len().min(self.date_format.len())];
                match std::str::from_utf8(head).ok().and_then(|h| layout.read(h)) {
                    Some(t) => index(&layout.write(&t)),
                    None => FALLBACK,
                }
            }
            // none / unset: every execution reads every object.
            _ => usize::MAX,
        }
    }

    /// Whether the object belongs to partition `index` of `count` (every object does without a
    /// partitioning rule, or with one partition).
    pub fn keeps(&self, key: &str, prefix: &str, index: usize, count: usize) -> bool {
        if count <= 1 || key.ends_with('/') {
            return true;
        }
        match self.partition_of(key, prefix, count) {
            usize::MAX => true,
            p => p == index,
        }
    }
}

/// FNV-1a, 32 bits (Go's `hash/fnv` `New32a`).
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// A Go time layout (`2006-01-02`, `20060102`, `Jan _2 15:04`…) reduced to what date keys use.
#[derive(Debug, Clone)]
struct GoLayout(Vec<Tok>);

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Lit(String),
    Year4,
    Year2,
    Month2,
    Month1,
    MonthAbbr,
    MonthFull,
    Day2,
    Day1,
    DaySpace,
    Hour24,
    Hour12Pad,
    Hour12,
    Minute2,
    Minute1,
    Second2,
    Second1,
    PmUpper,
    PmLower,
}

#[derive(Debug, Default, Clone, Copy)]
struct DateTime {
    year: i32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

impl GoLayout {
    fn parse(layout: &str) -> Result<Self, String> {
        // Longest tokens first, as Go's layout scanner reads them.
        const TOKENS: &[(&str, Tok)] = &[
            ("January", Tok::MonthFull),
            ("2006", Tok::Year4),
            ("Jan", Tok::MonthAbbr),
            ("Monday", Tok::Lit(String::new())),
            ("Mon", Tok::Lit(String::new())),
            ("MST", Tok::Lit(String::new())),
            ("_2", Tok::DaySpace),
            ("01", Tok::Month2),
            ("02", Tok::Day2),
            ("03", Tok::Hour12Pad),
            ("04", Tok::Minute2),
            ("05", Tok::Second2),
            ("06", Tok::Year2),
            ("15", Tok::Hour24),
            ("PM", Tok::PmUpper),
            ("pm", Tok::PmLower),
            ("1", Tok::Month1),
            ("2", Tok::Day1),
            ("3", Tok::Hour12),
            ("4", Tok::Minute1),
            ("5", Tok::Second1),
        ];
        let mut toks = Vec::new();
        let mut rest = layout;
        let mut lit = String::new();
        'outer: while !rest.is_empty() {
            for (t, tok) in TOKENS {
                if let Some(r) = rest.strip_prefix(t) {
                    if matches!(tok, Tok::Lit(_)) {
                        return Err(format!(
                            "Partition: invalid date format: {layout} (weekday and zone names are not supported in date keys)"
                        ));
                    }
                    if !lit.is_empty() {
                        toks.push(Tok::Lit(std::mem::take(&mut lit)));
                    }
                    toks.push(tok.clone());
                    rest = r;
                    continue 'outer;
                }
            }
            let c = rest.chars().next().expect("not empty");
            lit.push(c);
            rest = &rest[c.len_utf8()..];
        }
        if !lit.is_empty() {
            toks.push(Tok::Lit(lit));
        }
        if !toks.iter().any(|t| !matches!(t, Tok::Lit(_))) {
            return Err(format!("Partition: invalid date format: {layout}"));
        }
        Ok(GoLayout(toks))
    }

    /// Reads `s` exactly (as Go's `time.Parse`); `None` if it does not match or is no real date.
    fn read(&self, s: &str) -> Option<DateTime> {
        let mut t = DateTime {
            year: 0,
            month: 1,
            day: 1,
            ..Default::default()
        };
        let mut pm: Option<bool> = None;
        let mut rest = s;
        let num = |rest: &mut &str, min: usize, max: usize| -> Option<u32> {
            let n = rest
                .bytes()
                .take(max)
                .take_while(u8::is_ascii_digit)
                .count();
            if n < min {
                return None;
            }
            let v = rest[..n].parse().ok()?;
            *rest = &rest[n..];
            Some(v)
        };
        for tok in &self.0 {
            match tok {
                Tok::Lit(l) => rest = rest.strip_prefix(l.as_str())?,
                Tok::Year4 => t.year = num(&mut rest, 4, 4)? as i32,
                Tok::Year2 => {
                    let y = num(&mut rest, 2, 2)? as i32;
                    t.year = if y >= 69 { 1900 + y } else { 2000 + y };
                }
                Tok::Month2 => t.month = num(&mut rest, 2, 2)?,
                Tok::Month1 => t.month = num(&mut rest, 1, 2)?,
                Tok::MonthAbbr | Tok::MonthFull => {
                    let (i, len) = MONTHS.iter().enumerate().find_map(|(i, m)| {
                        let name = if *tok == Tok::MonthAbbr { &m[..3] } else { m };
                        rest.get(..name.len())
                            .filter(|h| h.eq_ignore_ascii_case(name))
                            .map(|_| (i, name.len()))
                    })?;
                    t.month = i as u32 + 1;
                    rest = &rest[len..];
                }
                Tok::Day2 => t.day = num(&mut rest, 2, 2)?,
                Tok::Day1 => t.day = num(&mut rest, 1, 2)?,
                Tok::DaySpace => {
                    rest = rest.strip_prefix(' ').unwrap_or(rest);
                    t.day = num(&mut rest, 1, 2)?;
                }
                Tok::Hour24 => t.hour = num(&mut rest, 2, 2)?,
                Tok::Hour12Pad => t.hour = num(&mut rest, 2, 2)?,
                Tok::Hour12 => t.hour = num(&mut rest, 1, 2)?,
                Tok::Minute2 => t.minute = num(&mut rest, 2, 2)?,
                Tok::Minute1 => t.minute = num(&mut rest, 1, 2)?,
                Tok::Second2 => t.second = num(&mut rest, 2, 2)?,
                Tok::Second1 => t.second = num(&mut rest, 1, 2)?,
                Tok::PmUpper | Tok::PmLower => {
                    let h = rest.get(..2)?;
                    pm = Some(match h.to_ascii_uppercase().as_str() {
                        "PM" => true,
                        "AM" => false,
                        _ => return None,
                    });
                    rest = &rest[2..];
                }
            }
        }
        if !rest.is_empty() {
            return None;
        }
        let twelve = self
            .0
            .iter()
            .any(|t| matches!(t, Tok::Hour12 | Tok::Hour12Pad));
        if twelve {
            if !(1..=12).contains(&t.hour) {
                return None;
            }
            if pm == Some(true) && t.hour < 12 {
                t.hour += 12;
            } else if pm != Some(true) && t.hour == 12 {
                t.hour = 0;
            }
        }
        let leap = (t.year % 4 == 0 && t.year % 100 != 0) || t.year % 400 == 0;
        let days = [
            31,
            if leap { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        let ok = (1..=12).contains(&t.month)
            && t.day >= 1
            && t.day <= days[t.month as usize - 1]
            && t.hour < 24
            && t.minute < 60
            && t.second < 60;
        ok.then_some(t)
    }

    /// Writes `t` with this layout (Go's `Time.Format`).
    fn write(&self, t: &DateTime) -> String {
        let mut s = String::new();
        let h12 = match t.hour % 12 {
            0 => 12,
            h => h,
        };
        for tok in &self.0 {
            match tok {
                Tok::Lit(l) => s.push_str(l),
                Tok::Year4 => s.push_str(&format!("{:04}", t.year)),
                Tok::Year2 => s.push_str(&format!("{:02}", t.year % 100)),
                Tok::Month2 => s.push_str(&format!("{:02}", t.month)),
                Tok::Month1 => s.push_str(&t.month.to_string()),
                Tok::MonthAbbr => s.push_str(&MONTHS[t.month as usize - 1][..3]),
                Tok::MonthFull => s.push_str(MONTHS[t.month as usize - 1]),
                Tok::Day2 => s.push_str(&format!("{:02}", t.day)),
                Tok::Day1 => s.push_str(&t.day.to_string()),
                Tok::DaySpace => s.push_str(&format!("{:>2}", t.day)),
                Tok::Hour24 => s.push_str(&format!("{:02}", t.hour)),
                Tok::Hour12Pad => s.push_str(&format!("{h12:02}")),
                Tok::Hour12 => s.push_str(&h12.to_string()),
                Tok::Minute2 => s.push_str(&format!("{:02}", t.minute)),
                Tok::Minute1 => s.push_str(&t.minute.to_string()),
                Tok::Second2 => s.push_str(&format!("{:02}", t.second)),
                Tok::Second1 => s.push_str(&t.second.to_string()),
                Tok::PmUpper => s.push_str(if t.hour >= 12 { "PM" } else { "AM" }),
                Tok::PmLower => s.push_str(if t.hour >= 12 { "pm" } else { "am" }),
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_go() {
        // Values of Go's hash/fnv New32a.
        assert_eq!(fnv1a32(b""), 0x811c9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9cf968);
    }

    #[test]
    fn go_layouts_read_real_dates_only_and_write_them_back() {
        let l = GoLayout::parse("2006-01-02").unwrap();
        let t = l.read("2024-02-29").unwrap();
        assert_eq!(l.write(&t), "2024-02-29");
        assert!(l.read("2023-02-29").is_none(), "not a leap year");
        assert!(l.read("2024-13-01").is_none());
        assert!(l.read("2024-1-01").is_none());
        let l = GoLayout::parse("Jan _2 3:04PM").unwrap();
        assert_eq!(l.write(&l.read("Mar  7 9:05PM").unwrap()), "Mar  7 9:05PM");
        assert!(GoLayout::parse("Monday").is_err());
        assert!(GoLayout::parse("yyyy-mm-dd").is_err());
    }
}
