//! Ordering of DNS SRV answers for S2S connection attempts (RFC 2782, RFC 6120 §3.2.1,
//! XEP-0368).
//!
//! Pure logic: the DNS adapter resolves `_xmpps-server._tcp.D` (direct TLS) and
//! `_xmpp-server._tcp.D` (STARTTLS) and hands the records here; randomness is a
//! caller-supplied [`rand::Rng`], so tests are deterministic.
//!
//! RFC 2782: targets are tried lowest priority first; within one priority, a target is
//! chosen at random with probability proportional to its weight (weight-0 records
//! first in the running sum, so they are rarely chosen while heavier ones remain), then
//! removed, and the draw repeats. A single record whose target is `.` means the service
//! is decidedly not available (RFC 2782 "Target"; RFC 6120 §3.2.1 step 1): no fallback to
//! A/AAAA then.

use rand::Rng;

/// One SRV record (RFC 2782).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SrvRecord {
    /// Lower is tried first.
    pub priority: u16,
    /// Relative weight within a priority.
    pub weight: u16,
    /// TCP port.
    pub port: u16,
    /// Target host name (absolute, trailing dot optional); `"."` means no service.
    pub target: String,
}

/// A connection target in the order it should be tried.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Host to resolve to A/AAAA.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Direct TLS (`_xmpps-server`, XEP-0368) rather than STARTTLS.
    pub direct_tls: bool,
}

/// What the SRV look-ups say about a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Try these targets in order.
    Targets(Vec<Target>),
    /// No SRV records: fall back to the domain's own A/AAAA on port 5269
    /// (RFC 6120 §3.2.2).
    Fallback,
    /// The domain publishes `.` as its only target: it offers no XMPP server service.
    NoService,
}

/// Is this the "no service" target?
fn is_dot(target: &str) -> bool {
    target == "." || target.is_empty()
}

/// Orders one record set per RFC 2782.
pub fn order<R: Rng + ?Sized>(records: &[SrvRecord], rng: &mut R) -> Vec<SrvRecord> {
    let mut rest: Vec<SrvRecord> = records
        .iter()
        .filter(|r| !is_dot(&r.target))
        .cloned()
        .collect();
    rest.sort_by_key(|r| r.priority);
    let mut out = Vec::with_capacity(rest.len());
    while !rest.is_empty() {
        let prio = rest[0].priority;
        let n = rest.iter().take_while(|r| r.priority == prio).count();
        let mut group: Vec<SrvRecord> = rest.drain(..n).collect();
        // Zero-weight records first in the running sum (RFC 2782).
        group.sort_by_key(|r| r.weight != 0);
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = rng.random_range(0..=total);
            let mut sum = 0u32;
            let i = group
                .iter()
                .position(|r| {
                    sum += u32::from(r.weight);
                    sum >= pick
                })
                .unwrap_or(0);
            out.push(group.remove(i));
        }
    }
    out
}

/// Merges the `_xmpps-server` (direct TLS) and `_xmpp-server` answers into one target
/// list. Each set is ordered by [`order`]; the sets are merged by priority, direct TLS
/// first among equal priorities (XEP-0368 §3 treats both as one pool by priority).
/// `None` means the look-up had no answer (NXDOMAIN or no records).
pub fn resolve_targets<R: Rng + ?Sized>(
    xmpps: Option<&[SrvRecord]>,
    xmpp: Option<&[SrvRecord]>,
    rng: &mut R,
) -> Resolution {
    let only_dot =
        |s: Option<&[SrvRecord]>| s.is_some_and(|s| s.len() == 1 && is_dot(&s[0].target));
    let empty = |s: Option<&[SrvRecord]>| s.is_none_or(|s| s.is_empty());
    if (only_dot(xmpp) || empty(xmpp)) && (only_dot(xmpps) || empty(xmpps)) {
        if only_dot(xmpp) || only_dot(xmpps) {
            return Resolution::NoService;
        }
        return Resolution::Fallback;
    }
    let tls: Vec<(u16, Target)> = order(xmpps.unwrap_or(&[]), rng)
        .into_iter()
        .map(|r| (r.priority, target(r, true)))
        .collect();
    let plain: Vec<(u16, Target)> = order(xmpp.unwrap_or(&[]), rng)
        .into_iter()
        .map(|r| (r.priority, target(r, false)))
        .collect();
    let mut merged = Vec::with_capacity(tls.len() + plain.len());
    let (mut i, mut j) = (0, 0);
    while i < tls.len() || j < plain.len() {
        let take_tls = j >= plain.len() || (i < tls.len() && tls[i].0 <= plain[j].0);
        if take_tls {
            merged.push(tls[i].1.clone());
            i += 1;
        } else {
            merged.push(plain[j].1.clone());
            j += 1;
        }
    }
    Resolution::Targets(merged)
}

fn target(r: SrvRecord, direct_tls: bool) -> Target {
    let host = r
        .target
        .strip_suffix('.')
        .unwrap_or(&r.target)
        .to_ascii_lowercase();
    Target {
        host,
        port: r.port,
        direct_tls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn rec(priority: u16, weight: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port: 5269,
            target: target.into(),
        }
    }

    #[test]
    fn lowest_priority_first_whatever_the_weights() {
        let mut rng = StdRng::seed_from_u64(1);
        let recs = [
            rec(20, 1000, "c."),
            rec(10, 0, "a."),
            rec(10, 0, "b."),
            rec(5, 1, "z."),
        ];
        for _ in 0..100 {
            let o = order(&recs, &mut rng);
            assert_eq!(o[0].target, "z.");
            assert_eq!(o[3].target, "c.");
            assert!(o[1].priority == 10 && o[2].priority == 10);
        }
    }

    #[test]
    fn weights_are_proportional_within_a_priority() {
        let mut rng = StdRng::seed_from_u64(7);
        let recs = [rec(10, 60, "a."), rec(10, 30, "b."), rec(10, 10, "c.")];
        let mut first = std::collections::HashMap::new();
        let n = 20_000;
        for _ in 0..n {
            *first
                .entry(order(&recs, &mut rng)[0].target.clone())
                .or_insert(0u32) += 1;
        }
        let share = |t: &str| f64::from(first[t]) / f64::from(n);
        assert!((share("a.") - 0.6).abs() < 0.03, "{first:?}");
        assert!((share("b.") - 0.3).abs() < 0.03, "{first:?}");
        assert!((share("c.") - 0.1).abs() < 0.03, "{first:?}");
    }

    #[test]
    fn zero_weight_rarely_first_but_never_lost() {
        let mut rng = StdRng::seed_from_u64(3);
        let recs = [rec(1, 0, "zero."), rec(1, 100, "heavy.")];
        let mut zero_first = 0;
        for _ in 0..1000 {
            let o = order(&recs, &mut rng);
            assert_eq!(o.len(), 2);
            zero_first += u32::from(o[0].target == "zero.");
        }
        assert!(zero_first < 30, "{zero_first}");
    }

    #[test]
    fn dot_means_no_service_and_nothing_means_fallback() {
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(
            resolve_targets(None, Some(&[rec(0, 0, ".")]), &mut rng),
            Resolution::NoService
        );
        assert_eq!(resolve_targets(None, None, &mut rng), Resolution::Fallback);
        assert_eq!(
            resolve_targets(Some(&[]), Some(&[]), &mut rng),
            Resolution::Fallback
        );
    }

    #[test]
    fn direct_tls_and_starttls_merged_by_priority() {
        let mut rng = StdRng::seed_from_u64(0);
        let xmpps = [SrvRecord {
            priority: 5,
            weight: 0,
            port: 5270,
            target: "Xmpp.Gmail.test.".into(),
        }];
        let xmpp = [
            rec(5, 0, "xmpp.gmail.test."),
            rec(1, 0, "first.gmail.test."),
        ];
        let Resolution::Targets(t) = resolve_targets(Some(&xmpps), Some(&xmpp), &mut rng) else {
            panic!()
        };
        let got: Vec<(&str, u16, bool)> = t
            .iter()
            .map(|t| (t.host.as_str(), t.port, t.direct_tls))
            .collect();
        assert_eq!(
            got,
            vec![
                ("first.gmail.test", 5269, false),
                ("xmpp.gmail.test", 5270, true),
                ("xmpp.gmail.test", 5269, false)
            ]
        );
    }
}
