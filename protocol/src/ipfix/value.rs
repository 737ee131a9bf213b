//! Typed values of Information Elements: the bytes of one field decoded by
//! its abstract data type, as RFC 7011 section 6 encodes them.
//!
//! Decisions worth knowing:
//! - Reduced-size encoding (RFC 7011 section 6.2) is accepted for unsigned
//!   and signed integers (1 byte up to the type's size; signed values are
//!   sign-extended) and for float64 sent as a 4-byte float32. Every other
//!   fixed-size type must have exactly its size. A length the type cannot
//!   have is a [`ValueError`], never a panic.
//! - Strings (section 6.1.6) must be valid UTF-8; the section tells
//!   collectors to detect and ignore ill-formed values, so those are a
//!   [`ValueError::InvalidUtf8`] and the caller still holds the raw bytes.
//!   Trailing NUL bytes are dropped first: exporters (NetFlow v9 ones
//!   especially) pad names to a fixed field length with NULs.
//! - Booleans (section 6.1.5) are 1 for true and 2 for false; any other
//!   byte is an error.
//! - dateTimeMicroseconds/Nanoseconds (sections 6.1.9, 6.1.10) are NTP
//!   timestamps (seconds since 1900 and a binary fraction). The 32-bit NTP
//!   seconds wrap on 2036-02-07; as RFC 4330 section 3 suggests, a seconds
//!   value with its most significant bit clear is read as after that date
//!   (era 1), so times from 1968 to 2104 convert correctly.
//! - Structured types (basicList, subTemplateList, subTemplateMultiList,
//!   RFC 6313) and octetArray decode as [`Value::Bytes`].

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::registry::{self, AbstractDataType};

/// Seconds from the NTP epoch (1900-01-01) to the UNIX epoch (1970-01-01).
pub const NTP_UNIX_EPOCH_OFFSET_SECS: i64 = 2_208_988_800;

/// One decoded field value. Borrows strings and byte arrays from the record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// unsigned8/16/32/64, reduced size or not.
    Unsigned(u64),
    /// signed8/16/32/64, sign-extended from a reduced size.
    Signed(i64),
    /// float32 or float64.
    Float(f64),
    /// boolean: wire byte 1 is `true`, 2 is `false`.
    Boolean(bool),
    /// macAddress: the 6 bytes in wire order.
    Mac([u8; 6]),
    /// UTF-8 text without trailing NUL padding.
    String(&'a str),
    /// ipv4Address: 4 bytes in network order.
    Ipv4(Ipv4Addr),
    /// ipv6Address: 16 bytes in network order (displayed as RFC 5952
    /// text).
    Ipv6(Ipv6Addr),
    /// Seconds since the UNIX epoch.
    DateTimeSeconds(u32),
    /// Milliseconds since the UNIX epoch.
    DateTimeMilliseconds(u64),
    /// NTP timestamp: seconds since 1900 (see the module notes on eras) and
    /// a fraction of a second in units of 2^-32 s.
    DateTimeMicroseconds {
        /// NTP seconds since 1900-01-01 00:00 UTC, in the era the module
        /// notes explain.
        seconds: u32,
        /// Fraction of a second, units of 2^-32 s.
        fraction: u32,
    },
    /// NTP timestamp, as [`Value::DateTimeMicroseconds`].
    DateTimeNanoseconds {
        /// NTP seconds since 1900-01-01 00:00 UTC, in the era the module
        /// notes explain.
        seconds: u32,
        /// Fraction of a second, units of 2^-32 s.
        fraction: u32,
    },
    /// octetArray, unsigned256 and the structured list types.
    Bytes(&'a [u8]),
}

/// Why a field's bytes are not a valid value of its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// The field's length is not one its type can have (RFC 7011 §6.1,
    /// with §6.2's reduced sizes for integers and float64), e.g. a 3-byte
    /// ipv4Address or a 9-byte unsigned64.
    #[error("{data_type} value of {length} bytes; it takes {expected}")]
    InvalidLength {
        /// The type the value was decoded as.
        data_type: AbstractDataType,
        /// Bytes the field had.
        length: usize,
        /// The lengths the type allows, for the message ("1 to 8 bytes").
        expected: &'static str,
    },
    /// A boolean byte other than 1 (true) and 2 (false), the only values
    /// RFC 7011 §6.1 defines; carries the byte found.
    #[error("boolean value {0}; only 1 (true) and 2 (false) are defined")]
    InvalidBoolean(u8),
    /// A string that is not UTF-8 once trailing NULs are dropped. RFC 7011
    /// §6.1 tells collectors to detect and ignore such values; the caller
    /// still has the raw bytes.
    #[error("string value is not valid UTF-8 (valid up to byte {valid_up_to})")]
    InvalidUtf8 {
        /// Bytes from the start of the value that are valid UTF-8.
        valid_up_to: usize,
    },
}

impl ValueError {
    /// A short stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidLength { .. } => "invalid_length",
            Self::InvalidBoolean(_) => "invalid_boolean",
            Self::InvalidUtf8 { .. } => "invalid_utf8",
        }
    }
}

fn invalid_length(data_type: AbstractDataType, raw: &[u8], expected: &'static str) -> ValueError {
    ValueError::InvalidLength {
        data_type,
        length: raw.len(),
        expected,
    }
}

/// Big-endian unsigned integer of 1 to `max` bytes (reduced-size encoding).
fn reduced_unsigned(
    data_type: AbstractDataType,
    raw: &[u8],
    max: usize,
    expected: &'static str,
) -> Result<u64, ValueError> {
    if raw.is_empty() || raw.len() > max {
        return Err(invalid_length(data_type, raw, expected));
    }
    Ok(raw.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
}

/// Big-endian two's complement integer of 1 to `max` bytes, sign-extended.
fn reduced_signed(
    data_type: AbstractDataType,
    raw: &[u8],
    max: usize,
    expected: &'static str,
) -> Result<i64, ValueError> {
    let unsigned = reduced_unsigned(data_type, raw, max, expected)?;
    let unused_bits = 64 - 8 * raw.len() as u32;
    // Shift the sign bit of the short value into bit 63, then back with an
    // arithmetic shift to extend it.
    Ok(((unsigned << unused_bits) as i64) >> unused_bits)
}

fn exact<const N: usize>(
    data_type: AbstractDataType,
    raw: &[u8],
    expected: &'static str,
) -> Result<[u8; N], ValueError> {
    raw.try_into()
        .map_err(|_| invalid_length(data_type, raw, expected))
}

/// Decodes one field's bytes as a value of `data_type` (RFC 7011 section 6).
/// `raw` is the field's content, without a variable-length prefix.
pub fn decode_value(data_type: AbstractDataType, raw: &[u8]) -> Result<Value<'_>, ValueError> {
    use AbstractDataType as T;
    Ok(match data_type {
        T::Unsigned8 => Value::Unsigned(reduced_unsigned(data_type, raw, 1, "1 byte")?),
        T::Unsigned16 => Value::Unsigned(reduced_unsigned(data_type, raw, 2, "1 to 2 bytes")?),
        T::Unsigned32 => Value::Unsigned(reduced_unsigned(data_type, raw, 4, "1 to 4 bytes")?),
        T::Unsigned64 => Value::Unsigned(reduced_unsigned(data_type, raw, 8, "1 to 8 bytes")?),
        T::Signed8 => Value::Signed(reduced_signed(data_type, raw, 1, "1 byte")?),
        T::Signed16 => Value::Signed(reduced_signed(data_type, raw, 2, "1 to 2 bytes")?),
        T::Signed32 => Value::Signed(reduced_signed(data_type, raw, 4, "1 to 4 bytes")?),
        T::Signed64 => Value::Signed(reduced_signed(data_type, raw, 8, "1 to 8 bytes")?),
        T::Float32 => {
            Value::Float(f32::from_be_bytes(exact::<4>(data_type, raw, "4 bytes")?).into())
        }
        T::Float64 => match raw.len() {
            4 => Value::Float(f32::from_be_bytes(exact::<4>(data_type, raw, "")?).into()),
            _ => Value::Float(f64::from_be_bytes(exact::<8>(
                data_type,
                raw,
                "8 bytes (or 4 as float32)",
            )?)),
        },
        T::Boolean => match exact::<1>(data_type, raw, "1 byte")? {
            [1] => Value::Boolean(true),
            [2] => Value::Boolean(false),
            [other] => return Err(ValueError::InvalidBoolean(other)),
        },
        T::MacAddress => Value::Mac(exact::<6>(data_type, raw, "6 bytes")?),
        T::String => {
            let end = raw.iter().rposition(|&b| b != 0).map_or(0, |last| last + 1);
            let text = std::str::from_utf8(&raw[..end]).map_err(|e| ValueError::InvalidUtf8 {
                valid_up_to: e.valid_up_to(),
            })?;
            Value::String(text)
        }
        T::DateTimeSeconds => {
            Value::DateTimeSeconds(u32::from_be_bytes(exact::<4>(data_type, raw, "4 bytes")?))
        }
        T::DateTimeMilliseconds => {
            Value::DateTimeMilliseconds(u64::from_be_bytes(exact::<8>(data_type, raw, "8 bytes")?))
        }
        T::DateTimeMicroseconds | T::DateTimeNanoseconds => {
            let bytes = exact::<8>(data_type, raw, "8 bytes")?;
            let seconds = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            let fraction = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
            if data_type == T::DateTimeMicroseconds {
                Value::DateTimeMicroseconds { seconds, fraction }
            } else {
                Value::DateTimeNanoseconds { seconds, fraction }
            }
        }
        T::Ipv4Address => Value::Ipv4(Ipv4Addr::from(exact::<4>(data_type, raw, "4 bytes")?)),
        T::Ipv6Address => Value::Ipv6(Ipv6Addr::from(exact::<16>(data_type, raw, "16 bytes")?)),
        T::OctetArray | T::BasicList | T::SubTemplateList | T::SubTemplateMultiList => {
            Value::Bytes(raw)
        }
    })
}

/// Decodes a field by its Information Element: the registry gives the type.
/// Elements the registry does not know (enterprise-specific or unassigned)
/// decode as [`Value::Bytes`].
pub fn decode_element(enterprise: u32, id: u16, raw: &[u8]) -> Result<Value<'_>, ValueError> {
    match registry::lookup(enterprise, id) {
        Some(element) => decode_value(element.data_type, raw),
        None => Ok(Value::Bytes(raw)),
    }
}

/// UNIX seconds of an NTP seconds value, with the era rule of the module
/// notes (most significant bit clear: after 2036-02-07).
fn ntp_seconds_to_unix(seconds: u32) -> i64 {
    let since_1900 = if seconds & 0x8000_0000 != 0 {
        i64::from(seconds)
    } else {
        i64::from(seconds) + (1i64 << 32)
    };
    since_1900 - NTP_UNIX_EPOCH_OFFSET_SECS
}

/// `fraction` (units of 2^-32 s) in units of 1/`per_second` s, truncated.
fn scale_fraction(fraction: u32, per_second: u64) -> u64 {
    (u64::from(fraction) * per_second) >> 32
}

impl Value<'_> {
    /// The value as an unsigned integer: unsigned values, non-negative
    /// signed values, and the raw number of dateTimeSeconds/Milliseconds.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Unsigned(v) => Some(v),
            Value::Signed(v) => u64::try_from(v).ok(),
            Value::DateTimeSeconds(s) => Some(u64::from(s)),
            Value::DateTimeMilliseconds(ms) => Some(ms),
            _ => None,
        }
    }

    /// Milliseconds since the UNIX epoch for any dateTime variant (finer
    /// fractions are truncated); `None` for other values and for
    /// milliseconds beyond `i64`.
    pub fn to_unix_millis(&self) -> Option<i64> {
        match *self {
            Value::DateTimeSeconds(s) => Some(i64::from(s) * 1000),
            Value::DateTimeMilliseconds(ms) => i64::try_from(ms).ok(),
            Value::DateTimeMicroseconds { seconds, fraction }
            | Value::DateTimeNanoseconds { seconds, fraction } => {
                Some(ntp_seconds_to_unix(seconds) * 1000 + scale_fraction(fraction, 1000) as i64)
            }
            _ => None,
        }
    }
}

/// Civil date (year, month 1-12, day 1-31) of a day count since 1970-01-01,
/// proleptic Gregorian calendar. Works in 400-year eras of 146097 days,
/// counted from 0000-03-01 so that leap days fall at the end of a year.
fn civil_from_days(days_since_unix_epoch: i64) -> (i64, u32, u32) {
    let days = days_since_unix_epoch + 719_468; // days from 0000-03-01
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Writes `unix_seconds` as `YYYY-MM-DDTHH:MM:SS`, then `fraction_digits`
/// of `fraction` (already scaled to that many digits), then `Z`.
fn write_rfc3339(
    f: &mut fmt::Formatter<'_>,
    unix_seconds: i64,
    fraction: u64,
    fraction_digits: usize,
) -> fmt::Result {
    let (year, month, day) = civil_from_days(unix_seconds.div_euclid(86_400));
    let second_of_day = unix_seconds.rem_euclid(86_400);
    write!(
        f,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )?;
    if fraction_digits > 0 {
        write!(f, ".{fraction:0fraction_digits$}")?;
    }
    f.write_str("Z")
}

/// Human-readable form: decimal numbers, `true`/`false`, dotted IPv4,
/// RFC 5952 IPv6, MAC as `aa:bb:cc:dd:ee:ff`, strings as they are, times in
/// UTC as RFC 3339 with the precision of their type
/// (`2024-05-01T12:00:00.123Z`), bytes as `0x` and lower-case hex.
/// dateTimeMilliseconds beyond year 9999 print as a raw number plus `ms`.
impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Value::Unsigned(v) => write!(f, "{v}"),
            Value::Signed(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v}"),
            Value::Boolean(v) => write!(f, "{v}"),
            Value::Mac(m) => write!(
                f,
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ),
            Value::String(s) => f.write_str(s),
            Value::Ipv4(a) => write!(f, "{a}"),
            Value::Ipv6(a) => write!(f, "{a}"),
            Value::DateTimeSeconds(s) => write_rfc3339(f, i64::from(s), 0, 0),
            Value::DateTimeMilliseconds(ms) => {
                // 253402300800000 ms is 10000-01-01T00:00:00Z.
                if ms >= 253_402_300_800_000 {
                    write!(f, "{ms}ms")
                } else {
                    write_rfc3339(f, (ms / 1000) as i64, ms % 1000, 3)
                }
            }
            Value::DateTimeMicroseconds { seconds, fraction } => write_rfc3339(
                f,
                ntp_seconds_to_unix(seconds),
                scale_fraction(fraction, 1_000_000),
                6,
            ),
            Value::DateTimeNanoseconds { seconds, fraction } => write_rfc3339(
                f,
                ntp_seconds_to_unix(seconds),
                scale_fraction(fraction, 1_000_000_000),
                9,
            ),
            Value::Bytes(bytes) => {
                f.write_str("0x")?;
                bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AbstractDataType as T;

    #[test]
    fn unsigned_accepts_every_reduced_size_and_rejects_longer() {
        assert_eq!(
            decode_value(T::Unsigned64, &[0x12]),
            Ok(Value::Unsigned(0x12))
        );
        assert_eq!(
            decode_value(T::Unsigned64, &[0x01, 0x00, 0x00]),
            Ok(Value::Unsigned(0x1_0000))
        );
        assert_eq!(
            decode_value(T::Unsigned64, &[0xff; 8]),
            Ok(Value::Unsigned(u64::MAX))
        );
        assert_eq!(
            decode_value(T::Unsigned16, &[0xab, 0xcd]),
            Ok(Value::Unsigned(0xabcd))
        );
        let too_long = decode_value(T::Unsigned64, &[0; 9]).unwrap_err();
        assert!(matches!(
            too_long,
            ValueError::InvalidLength { length: 9, .. }
        ));
        assert!(decode_value(T::Unsigned16, &[0; 3]).is_err());
        assert!(
            decode_value(T::Unsigned8, &[]).is_err(),
            "zero bytes is no value"
        );
    }

    #[test]
    fn signed_reduced_size_is_sign_extended() {
        assert_eq!(decode_value(T::Signed64, &[0xff]), Ok(Value::Signed(-1)));
        assert_eq!(
            decode_value(T::Signed32, &[0x80, 0x00]),
            Ok(Value::Signed(-32768))
        );
        assert_eq!(
            decode_value(T::Signed32, &[0x7f, 0xff]),
            Ok(Value::Signed(32767))
        );
        assert_eq!(
            decode_value(T::Signed64, &i64::MIN.to_be_bytes()),
            Ok(Value::Signed(i64::MIN))
        );
        assert!(decode_value(T::Signed8, &[1, 2]).is_err());
    }

    #[test]
    fn float64_may_be_sent_as_float32() {
        assert_eq!(
            decode_value(T::Float64, &1.5f32.to_be_bytes()),
            Ok(Value::Float(1.5))
        );
        assert_eq!(
            decode_value(T::Float64, &(-2.25f64).to_be_bytes()),
            Ok(Value::Float(-2.25))
        );
        assert!(decode_value(T::Float64, &[0; 6]).is_err());
        assert!(
            decode_value(T::Float32, &[0; 2]).is_err(),
            "float32 has no reduced size"
        );
    }

    #[test]
    fn fixed_types_need_their_exact_length() {
        assert_eq!(
            decode_value(T::Ipv4Address, &[192, 0, 2, 1]),
            Ok(Value::Ipv4(Ipv4Addr::new(192, 0, 2, 1)))
        );
        let err = decode_value(T::Ipv4Address, &[192, 0, 2]).unwrap_err();
        assert_eq!(
            err,
            ValueError::InvalidLength {
                data_type: T::Ipv4Address,
                length: 3,
                expected: "4 bytes"
            }
        );
        assert!(decode_value(T::Ipv6Address, &[0; 15]).is_err());
        assert!(decode_value(T::MacAddress, &[0; 5]).is_err());
        assert!(decode_value(T::DateTimeSeconds, &[0; 3]).is_err());
        assert!(decode_value(T::DateTimeMilliseconds, &[0; 4]).is_err());
        assert!(decode_value(T::DateTimeNanoseconds, &[0; 9]).is_err());
    }

    #[test]
    fn booleans_are_one_and_two() {
        assert_eq!(decode_value(T::Boolean, &[1]), Ok(Value::Boolean(true)));
        assert_eq!(decode_value(T::Boolean, &[2]), Ok(Value::Boolean(false)));
        assert_eq!(
            decode_value(T::Boolean, &[0]),
            Err(ValueError::InvalidBoolean(0))
        );
    }

    #[test]
    fn strings_drop_nul_padding_and_reject_bad_utf8() {
        assert_eq!(
            decode_value(T::String, b"eth0\0\0\0\0"),
            Ok(Value::String("eth0"))
        );
        assert_eq!(
            decode_value(T::String, "Zürich".as_bytes()),
            Ok(Value::String("Zürich"))
        );
        assert_eq!(decode_value(T::String, b""), Ok(Value::String("")));
        assert_eq!(
            decode_value(T::String, b"ab\xffcd"),
            Err(ValueError::InvalidUtf8 { valid_up_to: 2 })
        );
    }

    #[test]
    fn structured_and_octet_arrays_stay_bytes() {
        for data_type in [
            T::OctetArray,
            T::BasicList,
            T::SubTemplateList,
            T::SubTemplateMultiList,
        ] {
            assert_eq!(
                decode_value(data_type, &[1, 2, 3]),
                Ok(Value::Bytes(&[1, 2, 3]))
            );
        }
    }

    #[test]
    fn decode_element_uses_the_registry() {
        assert_eq!(
            decode_element(0, 8, &[10, 0, 0, 1]),
            Ok(Value::Ipv4(Ipv4Addr::new(10, 0, 0, 1)))
        );
        assert_eq!(
            decode_element(0, 1, &[0, 0, 1, 0]),
            Ok(Value::Unsigned(256))
        );
        assert_eq!(decode_element(29305, 1, &[1, 2]), Ok(Value::Bytes(&[1, 2])));
    }

    #[test]
    fn times_convert_to_unix_milliseconds() {
        // 2024-01-01T00:00:00Z = 1704067200 s.
        assert_eq!(
            Value::DateTimeSeconds(1_704_067_200).to_unix_millis(),
            Some(1_704_067_200_000)
        );
        assert_eq!(
            Value::DateTimeMilliseconds(1_704_067_200_123).to_unix_millis(),
            Some(1_704_067_200_123)
        );
        let ntp_seconds = (1_704_067_200 + NTP_UNIX_EPOCH_OFFSET_SECS) as u32;
        // Half a second is 2^31 in the fraction.
        let micro = Value::DateTimeMicroseconds {
            seconds: ntp_seconds,
            fraction: 1 << 31,
        };
        assert_eq!(micro.to_unix_millis(), Some(1_704_067_200_500));
        // Era 1: NTP seconds 0 is 2036-02-07T06:28:16Z = 2085978496 s.
        let era1 = Value::DateTimeNanoseconds {
            seconds: 0,
            fraction: 0,
        };
        assert_eq!(era1.to_unix_millis(), Some(2_085_978_496_000));
        assert_eq!(Value::Unsigned(5).to_unix_millis(), None);
    }

    #[test]
    fn as_u64_covers_counters_and_raw_times() {
        assert_eq!(Value::Unsigned(7).as_u64(), Some(7));
        assert_eq!(Value::Signed(7).as_u64(), Some(7));
        assert_eq!(Value::Signed(-7).as_u64(), None);
        assert_eq!(Value::DateTimeMilliseconds(9).as_u64(), Some(9));
        assert_eq!(Value::String("7").as_u64(), None);
    }

    #[test]
    fn display_is_human_readable() {
        assert_eq!(
            Value::Ipv4(Ipv4Addr::new(192, 0, 2, 1)).to_string(),
            "192.0.2.1"
        );
        assert_eq!(
            Value::Ipv6("2001:db8::1".parse().unwrap()).to_string(),
            "2001:db8::1"
        );
        assert_eq!(
            Value::Mac([0x00, 0x1b, 0x21, 0xaa, 0xbb, 0xcc]).to_string(),
            "00:1b:21:aa:bb:cc"
        );
        assert_eq!(Value::Unsigned(42).to_string(), "42");
        assert_eq!(Value::Signed(-42).to_string(), "-42");
        assert_eq!(Value::Bytes(&[0xde, 0xad, 0x01]).to_string(), "0xdead01");
        assert_eq!(
            Value::DateTimeSeconds(0).to_string(),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            Value::DateTimeMilliseconds(1_709_210_096_789).to_string(),
            "2024-02-29T12:34:56.789Z"
        );
        let ntp_seconds = (951_782_400 + NTP_UNIX_EPOCH_OFFSET_SECS) as u32; // 2000-02-29
        assert_eq!(
            Value::DateTimeMicroseconds {
                seconds: ntp_seconds,
                fraction: 1 << 30
            }
            .to_string(),
            "2000-02-29T00:00:00.250000Z"
        );
        assert_eq!(
            Value::DateTimeNanoseconds {
                seconds: ntp_seconds,
                fraction: 1 << 31
            }
            .to_string(),
            "2000-02-29T00:00:00.500000000Z"
        );
        assert_eq!(
            Value::DateTimeMilliseconds(u64::MAX).to_string(),
            format!("{}ms", u64::MAX)
        );
    }

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(2_932_896), (9999, 12, 31));
    }
}
