//! Bind parameters as values: what PostgreSQL itself would print for them.
//!
//! Text-format parameters are their own text. Binary ones are decoded by their type (from
//! the Parse's parameter types or the server's ParameterDescription) for the built-in
//! types drivers send in binary, and printed the way PostgreSQL's output functions print
//! them (`0` for an int2 zero, `t` for true, `2024-01-02 03:04:05.5+00` for a
//! timestamptz), so the trail reads like the server's own log. A type this module does
//! not know keeps the hex of its wire bytes, with its type OID.

use fallible_iterator::FallibleIterator;
use postgres_protocol::types;

use crate::encoding::ClientEncoding;

/// Type OIDs (pg_type.h).
mod oid {
    pub(super) const BOOL: u32 = 16;
    pub(super) const BYTEA: u32 = 17;
    pub(super) const CHAR: u32 = 18;
    pub(super) const NAME: u32 = 19;
    pub(super) const INT8: u32 = 20;
    pub(super) const INT2: u32 = 21;
    pub(super) const INT4: u32 = 23;
    pub(super) const TEXT: u32 = 25;
    pub(super) const OID: u32 = 26;
    pub(super) const JSON: u32 = 114;
    pub(super) const FLOAT4: u32 = 700;
    pub(super) const FLOAT8: u32 = 701;
    pub(super) const BPCHAR: u32 = 1042;
    pub(super) const VARCHAR: u32 = 1043;
    pub(super) const DATE: u32 = 1082;
    pub(super) const TIME: u32 = 1083;
    pub(super) const TIMESTAMP: u32 = 1114;
    pub(super) const TIMESTAMPTZ: u32 = 1184;
    pub(super) const INTERVAL: u32 = 1186;
    pub(super) const NUMERIC: u32 = 1700;
    pub(super) const UUID: u32 = 2950;
    pub(super) const JSONB: u32 = 3802;
    /// The array types of the above.
    pub(super) const ARRAYS: [u32; 22] = [
        1000, 1001, 1002, 1003, 1016, 1005, 1007, 1009, 1028, 199, 1021, 1022, 1014, 1015, 1182, 1183, 1115, 1185,
        1187, 1231, 2951, 3807,
    ];
}

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;
/// Days from the Unix epoch to PostgreSQL's.
const PG_EPOCH_OFFSET_DAYS: i64 = 10_957;

/// A parameter as text: `format` 0 is text, 1 binary; `type_oid` 0 when unknown. Text (in
/// either format) is in the session's client encoding.
pub(crate) fn render(value: &[u8], format: i16, type_oid: u32, encoding: ClientEncoding) -> String {
    if format == 0 {
        return encoding.decode(value).into_owned();
    }
    if matches!(type_oid, oid::NAME | oid::TEXT | oid::BPCHAR | oid::VARCHAR | oid::JSON) {
        return encoding.decode(value).into_owned();
    }
    decode(value, type_oid).unwrap_or_else(|| {
        let mut s = hex(value);
        if type_oid != 0 {
            s.push_str(&format!(" (type oid {type_oid})"));
        }
        s
    })
}

/// `\x` and the bytes in lowercase hex, as PostgreSQL prints a bytea (one allocation, not
/// one per byte).
fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("\\x");
    s.push_str(&::hex::encode(bytes));
    s
}

/// A binary value of a known type as PostgreSQL prints it; `None` when the type is not
/// known or the bytes are not a value of it.
fn decode(v: &[u8], type_oid: u32) -> Option<String> {
    Some(match type_oid {
        oid::BOOL => if types::bool_from_sql(v).ok()? { "t" } else { "f" }.to_owned(),
        oid::BYTEA => hex(types::bytea_from_sql(v)),
        oid::CHAR => char::from(types::char_from_sql(v).ok()? as u8).to_string(),
        oid::NAME | oid::TEXT | oid::BPCHAR | oid::VARCHAR | oid::JSON => types::text_from_sql(v).ok()?.to_owned(),
        oid::JSONB => match v.split_first() {
            Some((1, json)) => std::str::from_utf8(json).ok()?.to_owned(),
            _ => return None,
        },
        oid::INT2 => types::int2_from_sql(v).ok()?.to_string(),
        oid::INT4 => types::int4_from_sql(v).ok()?.to_string(),
        oid::INT8 => types::int8_from_sql(v).ok()?.to_string(),
        oid::OID => types::oid_from_sql(v).ok()?.to_string(),
        oid::FLOAT4 => float(f64::from(types::float4_from_sql(v).ok()?), true),
        oid::FLOAT8 => float(types::float8_from_sql(v).ok()?, false),
        oid::NUMERIC => numeric(v)?,
        oid::UUID => uuid(types::uuid_from_sql(v).ok()?),
        oid::DATE => date(types::date_from_sql(v).ok()?)?,
        oid::TIME => time_of_day(types::time_from_sql(v).ok()?),
        oid::TIMESTAMP => timestamp(types::timestamp_from_sql(v).ok()?, "")?,
        oid::TIMESTAMPTZ => timestamp(types::timestamp_from_sql(v).ok()?, "+00")?,
        oid::INTERVAL => interval(v)?,
        array if oid::ARRAYS.contains(&array) => self::array(v)?,
        _ => return None,
    })
}

/// PostgreSQL's float output: shortest round-trip digits, `Infinity`, `NaN`.
fn float(f: f64, single: bool) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity".into() } else { "-Infinity".into() }
    } else if single {
        format!("{}", f as f32)
    } else {
        format!("{f}")
    }
}

fn uuid(b: [u8; 16]) -> String {
    let h = hex(&b);
    let h = &h[2..];
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn date(days: i32) -> Option<String> {
    match days {
        i32::MAX => return Some("infinity".into()),
        i32::MIN => return Some("-infinity".into()),
        _ => {}
    }
    let date = chrono::DateTime::from_timestamp((i64::from(days) + PG_EPOCH_OFFSET_DAYS) * 86_400, 0)?.date_naive();
    Some(date.format("%Y-%m-%d").to_string())
}

/// `HH:MM:SS` with the fraction PostgreSQL prints (trailing zeros dropped).
fn time_of_day(micros: i64) -> String {
    let (seconds, fraction) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
    let text = format!("{:02}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60);
    with_fraction(text, fraction)
}

fn with_fraction(mut text: String, fraction_micros: i64) -> String {
    if fraction_micros != 0 {
        let digits = format!("{fraction_micros:06}");
        text.push('.');
        text.push_str(digits.trim_end_matches('0'));
    }
    text
}

fn timestamp(micros: i64, zone: &str) -> Option<String> {
    match micros {
        i64::MAX => return Some("infinity".into()),
        i64::MIN => return Some("-infinity".into()),
        _ => {}
    }
    let unix = micros.checked_add(PG_EPOCH_OFFSET_MICROS)?;
    let at = chrono::DateTime::from_timestamp_micros(unix)?.naive_utc();
    let fraction = unix.rem_euclid(1_000_000);
    Some(format!("{}{zone}", with_fraction(at.format("%Y-%m-%d %H:%M:%S").to_string(), fraction)))
}

/// PostgreSQL's default interval style: `1 year 2 mons 3 days 04:05:06.5`.
fn interval(v: &[u8]) -> Option<String> {
    let (micros, rest) = v.split_first_chunk::<8>()?;
    let (days, rest) = rest.split_first_chunk::<4>()?;
    let months: [u8; 4] = rest.try_into().ok()?;
    let (micros, days, months) = (i64::from_be_bytes(*micros), i32::from_be_bytes(*days), i32::from_be_bytes(months));
    let mut parts = Vec::new();
    let unit = |n: i32, one: &str, many: &str| format!("{n} {}", if n.abs() == 1 { one } else { many });
    if months / 12 != 0 {
        parts.push(unit(months / 12, "year", "years"));
    }
    if months % 12 != 0 {
        parts.push(unit(months % 12, "mon", "mons"));
    }
    if days != 0 {
        parts.push(unit(days, "day", "days"));
    }
    if micros != 0 || parts.is_empty() {
        let sign = if micros < 0 { "-" } else { "" };
        let abs = micros.unsigned_abs();
        let seconds = abs / 1_000_000;
        let text = format!("{sign}{:02}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60);
        parts.push(with_fraction(text, (abs % 1_000_000) as i64));
    }
    Some(parts.join(" "))
}

/// NUMERIC's binary form: digit count, weight, sign, display scale, base-10000 digits.
fn numeric(v: &[u8]) -> Option<String> {
    let word = |at: usize| v.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (ndigits, weight, sign, dscale) = (word(0)?, word(2)? as i16, word(4)?, word(6)?);
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => return None,
    }
    let digits: Vec<u16> = (0..usize::from(ndigits)).map(|i| word(8 + 2 * i)).collect::<Option<_>>()?;
    if digits.iter().any(|d| *d > 9999) {
        return None;
    }
    let digit_at = |weight_of: i32| -> u16 {
        let index = i32::from(weight) - weight_of;
        usize::try_from(index).ok().and_then(|i| digits.get(i)).copied().unwrap_or(0)
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        out.push_str(&digit_at(i32::from(weight)).to_string());
        for w in (0..i32::from(weight)).rev() {
            out.push_str(&format!("{:04}", digit_at(w)));
        }
    }
    if dscale > 0 {
        let mut fraction = String::new();
        let mut w = -1;
        while fraction.len() < usize::from(dscale) {
            fraction.push_str(&format!("{:04}", digit_at(w)));
            w -= 1;
        }
        fraction.truncate(usize::from(dscale));
        out.push('.');
        out.push_str(&fraction);
    }
    Some(out)
}

/// `{1,2,NULL}` (nested braces for more dimensions); elements decoded by their type,
/// quoted where PostgreSQL quotes them.
fn array(v: &[u8]) -> Option<String> {
    let array = types::array_from_sql(v).ok()?;
    let element_type = array.element_type();
    let dims: Vec<usize> = array.dimensions().map(|d| Ok(usize::try_from(d.len).unwrap_or(0))).collect().ok()?;
    let values: Vec<Option<String>> = array
        .values()
        .map(|value| Ok(value.map(|bytes| decode(bytes, element_type).unwrap_or_else(|| hex(bytes)))))
        .collect()
        .ok()?;
    if dims.is_empty() {
        return Some("{}".into());
    }
    let mut next = values.into_iter();
    Some(nest(&dims, &mut next))
}

fn nest(dims: &[usize], values: &mut impl Iterator<Item = Option<String>>) -> String {
    let (len, inner) = dims.split_first().map_or((0, &[][..]), |(l, rest)| (*l, rest));
    let items: Vec<String> = (0..len)
        .map(|_| {
            if inner.is_empty() {
                match values.next().flatten() {
                    None => "NULL".to_owned(),
                    Some(v) if needs_quotes(&v) => format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")),
                    Some(v) => v,
                }
            } else {
                nest(inner, values)
            }
        })
        .collect();
    format!("{{{}}}", items.join(","))
}

fn needs_quotes(v: &str) -> bool {
    v.is_empty()
        || v.eq_ignore_ascii_case("null")
        || v.chars().any(|c| matches!(c, '{' | '}' | ',' | '"' | '\\') || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_values_print_as_postgresql_prints_them() {
        assert_eq!(render(&0i16.to_be_bytes(), 1, oid::INT2, ClientEncoding::Utf8), "0");
        assert_eq!(render(&(-7i64).to_be_bytes(), 1, oid::INT8, ClientEncoding::Utf8), "-7");
        assert_eq!(render(&[1], 1, oid::BOOL, ClientEncoding::Utf8), "t");
        assert_eq!(render(&1.5f64.to_be_bytes(), 1, oid::FLOAT8, ClientEncoding::Utf8), "1.5");
        assert_eq!(render(&f32::INFINITY.to_be_bytes(), 1, oid::FLOAT4, ClientEncoding::Utf8), "Infinity");
        assert_eq!(render(b"caf\xc3\xa9", 1, oid::TEXT, ClientEncoding::Utf8), "café");
        assert_eq!(render(&[0xde, 0xad], 1, oid::BYTEA, ClientEncoding::Utf8), "\\xdead");
        // 12345.6700: 2 digits base 10000 before the point (1, 2345), 1 after (6700), scale 4.
        let numeric = [0, 3, 0, 1, 0, 0, 0, 4, 0, 1, 0x09, 0x29, 0x1a, 0x2c];
        assert_eq!(render(&numeric, 1, oid::NUMERIC, ClientEncoding::Utf8), "12345.6700");
        assert_eq!(
            render(&[0, 1, 0xff, 0xff, 0x40, 0, 0, 3, 0x01, 0xf4], 1, oid::NUMERIC, ClientEncoding::Utf8),
            "-0.050"
        );
        assert_eq!(render(&0i32.to_be_bytes(), 1, oid::DATE, ClientEncoding::Utf8), "2000-01-01");
        assert_eq!(
            render(&1_500_000i64.to_be_bytes(), 1, oid::TIMESTAMPTZ, ClientEncoding::Utf8),
            "2000-01-01 00:00:01.5+00"
        );
        let mut interval = 3_723_000_000i64.to_be_bytes().to_vec();
        interval.extend(3i32.to_be_bytes());
        interval.extend(14i32.to_be_bytes());
        assert_eq!(render(&interval, 1, oid::INTERVAL, ClientEncoding::Utf8), "1 year 2 mons 3 days 01:02:03");
        assert_eq!(render(&[1, b'{', b'}'], 1, oid::JSONB, ClientEncoding::Utf8), "{}");
        // Unknown: hex and the type.
        assert_eq!(render(&[1, 2], 1, 16385, ClientEncoding::Utf8), "\\x0102 (type oid 16385)");
        assert_eq!(render(&[1, 2], 1, 0, ClientEncoding::Utf8), "\\x0102");
        assert_eq!(render(b"as text", 0, oid::INT4, ClientEncoding::Utf8), "as text");
    }
}
