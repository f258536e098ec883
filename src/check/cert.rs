//! The one fact `check` needs from a certificate: when it stops being valid
//! (`tbsCertificate.validity.notAfter`).
//!
//! Why a DER walk and not a crate: rustls hands over the leaf as DER and
//! keeps no parsed form, and the crates that parse X.509 (x509-parser,
//! x509-cert) pull in an ASN.1 stack (nom/der, oid registries, time) that is
//! not in Cargo.lock, for one field at a fixed place in every certificate
//! (RFC 5280 §4.1): Certificate → tbsCertificate → [version], serialNumber,
//! signature, issuer, validity → notBefore, notAfter. The walk below reads
//! only tag-length-value headers, never trusts a length beyond the input,
//! and answers `None` for anything it does not recognise (the TLS row then
//! says the date is unknown; the handshake itself was verified by rustls).

use std::fmt;

/// A certificate time (always UTC in DER: `Z`, with seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CertTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl CertTime {
    /// Seconds since the Unix epoch.
    pub fn unix(&self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * 86_400
            + i64::from(self.hour) * 3_600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }

    /// `YYYY-MM-DD`.
    pub fn date(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl fmt::Display for CertTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:02}:{:02}:{:02} UTC",
            self.date(),
            self.hour,
            self.minute,
            self.second
        )
    }
}

const SEQUENCE: u8 = 0x30;
const VERSION: u8 = 0xa0; // [0] EXPLICIT, constructed
const INTEGER: u8 = 0x02;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// `notAfter` of a DER-encoded X.509 certificate.
pub fn not_after(der: &[u8]) -> Option<CertTime> {
    let cert = expect(der, SEQUENCE)?.0;
    let tbs = expect(cert, SEQUENCE)?.0;
    let mut rest = tbs;
    let (tag, _, after) = element(rest)?;
    if tag == VERSION {
        rest = after;
    }
    let (_serial, rest) = expect(rest, INTEGER)?;
    let (_signature, rest) = expect(rest, SEQUENCE)?;
    let (_issuer, rest) = expect(rest, SEQUENCE)?;
    let (validity, _) = expect(rest, SEQUENCE)?;
    let (_, _not_before, validity) = element(validity)?;
    let (tag, not_after, _) = element(validity)?;
    parse_time(tag, not_after)
}

/// The contents of the next element, which must have tag `tag`, and what
/// follows it.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match element(input)? {
        (t, contents, rest) if t == tag => Some((contents, rest)),
        _ => None,
    }
}

/// One DER element: its tag, its contents and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-byte tags never occur on this path
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None; // indefinite (not DER) or absurdly long
        }
        let (bytes, rest) = rest.split_at(n);
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// UTCTime `YYMMDDHHMMSSZ` (years 1950–2049) or GeneralizedTime
/// `YYYYMMDDHHMMSSZ`, the only forms DER allows in a certificate.
fn parse_time(tag: u8, text: &[u8]) -> Option<CertTime> {
    let text = std::str::from_utf8(text).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |range: std::ops::Range<usize>| digits.get(range)?.parse::<u32>().ok();
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy = i64::from(num(0..2)?);
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (GENERALIZED_TIME, 14) => (i64::from(num(0..4)?), 4),
        _ => return None,
    };
    let time = CertTime {
        year,
        month: num(rest..rest + 2)?,
        day: num(rest + 2..rest + 4)?,
        hour: num(rest + 4..rest + 6)?,
        minute: num(rest + 6..rest + 8)?,
        second: num(rest + 8..rest + 10)?,
    };
    let valid = (1..=12).contains(&time.month)
        && (1..=31).contains(&time.day)
        && time.hour < 24
        && time.minute < 60
        && time.second <= 60;
    valid.then_some(time)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    fn fixture(name: &str) -> CertificateDer<'static> {
        let path = format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"));
        CertificateDer::from_pem_file(path).expect("fixture certificate")
    }

    #[test]
    fn reads_not_after_from_the_test_certificates() {
        // `openssl x509 -noout -enddate` says: Nov  4 04:34:20 2126 GMT
        // (GeneralizedTime, as any date after 2049 must be).
        let expected = CertTime {
            year: 2126,
            month: 11,
            day: 4,
            hour: 4,
            minute: 34,
            second: 20,
        };
        assert_eq!(not_after(&fixture("server.pem")), Some(expected));
        assert_eq!(not_after(&fixture("ca.pem")), Some(expected));
        assert_eq!(expected.date(), "2126-11-04");
    }

    /// A minimal certificate-shaped DER with the given validity times.
    fn shaped(with_version: bool, not_after: (u8, &str)) -> Vec<u8> {
        fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            if contents.len() < 0x80 {
                out.push(contents.len() as u8);
            } else {
                out.push(0x82);
                out.extend_from_slice(&(contents.len() as u16).to_be_bytes());
            }
            out.extend_from_slice(contents);
            out
        }
        let validity = [
            tlv(UTC_TIME, b"240101000000Z"),
            tlv(not_after.0, not_after.1.as_bytes()),
        ]
        .concat();
        let mut tbs = Vec::new();
        if with_version {
            tbs.extend(tlv(VERSION, &tlv(INTEGER, &[2])));
        }
        tbs.extend(tlv(INTEGER, &[1; 20]));
        tbs.extend(tlv(SEQUENCE, &[0x06, 0x01, 0x2a]));
        // A long issuer, so a long-form length is on the path.
        tbs.extend(tlv(SEQUENCE, &[0x31; 300]));
        tbs.extend(tlv(SEQUENCE, &validity));
        tbs.extend(tlv(SEQUENCE, &[])); // subject
        let cert = [tlv(SEQUENCE, &tbs), tlv(SEQUENCE, &[]), tlv(0x03, &[0])].concat();
        tlv(SEQUENCE, &cert)
    }

    #[test]
    fn reads_utc_time_and_generalized_time_with_or_without_a_version() {
        let t = not_after(&shaped(true, (UTC_TIME, "491231235959Z"))).expect("UTCTime");
        assert_eq!(t.to_string(), "2049-12-31 23:59:59 UTC");
        let t = not_after(&shaped(false, (UTC_TIME, "500101000000Z"))).expect("UTCTime");
        assert_eq!(t.date(), "1950-01-01");
        let t = not_after(&shaped(true, (GENERALIZED_TIME, "20260315120000Z"))).expect("GT");
        assert_eq!(t.date(), "2026-03-15");
    }

    #[test]
    fn refuses_what_it_does_not_recognise() {
        for (tag, text) in [
            (UTC_TIME, "4912312359Z"),           // no seconds
            (UTC_TIME, "491231235959+0100"),     // not UTC
            (GENERALIZED_TIME, "491231235959Z"), // wrong length for its tag
            (UTC_TIME, "491331235959Z"),         // month 13
            (0x04, "491231235959Z"),             // not a time
        ] {
            assert_eq!(not_after(&shaped(true, (tag, text))), None, "{text}");
        }
        let good = shaped(true, (UTC_TIME, "491231235959Z"));
        for cut in 0..good.len() {
            assert_eq!(not_after(&good[..cut]), None, "cut at {cut}");
        }
        assert_eq!(not_after(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(not_after(&[0x30, 0x80, 0x00, 0x00]), None);
    }

    #[test]
    fn converts_dates_to_unix_time() {
        let at = |year, month, day| {
            CertTime {
                year,
                month,
                day,
                hour: 0,
                minute: 0,
                second: 0,
            }
            .unix()
        };
        assert_eq!(at(1970, 1, 1), 0);
        assert_eq!(at(2000, 3, 1), 951_868_800);
        assert_eq!(at(2024, 2, 29), 1_709_164_800);
        assert_eq!(at(2126, 11, 4) + 4 * 3600 + 34 * 60 + 20, 4_949_440_460);
    }
}
