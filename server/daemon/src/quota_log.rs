//! Log lines an operator can act on when a domain hits a quota.
//!
//! The core reports refusals ([`Core::take_quota_events`]); this turns them
//! into one line per domain and quota at most every `interval`, naming the
//! domain, the request, the quota with its value and limit, and the
//! command-line option that raises it. Refusals within the interval are
//! counted, and the count is logged once the interval is over. The clock is
//! the caller's (`now`), so the rate limiting is tested without waiting.
//!
//! [`Core::take_quota_events`]: rxenstored_core::Core::take_quota_events

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use engine::DomId;
use rxenstored_core::QuotaEvent;
use rxenstored_core::quota::Quota;

/// The option of `rxenstored` that sets a quota's global value (which each
/// domain copies when the daemon first tracks it).
pub fn option_for(q: Quota) -> &'static str {
    match q {
        Quota::Nodes => "--entry-nb N (-E), or --quota nodes=N",
        Quota::Watches => "--watch-nb N (-W), or --quota watches=N",
        Quota::Transactions => "--transaction N (-t), or --quota transactions=N",
        Quota::NodeSize => "--entry-size N (-S), or --quota node-size=N",
        Quota::NodePermissions => "--perm-nb N (-A), or --quota node-permissions=N",
        Quota::PathMax => "--quota path-max=N (--path-max/-M only lowers it)",
        Quota::TransactionNodes => "--quota transaction-nodes=N",
        Quota::Outstanding => "--quota outstanding=N",
        Quota::Memory => "--quota memory=N",
    }
}

/// The log line for a refusal.
pub fn describe(e: &QuotaEvent) -> String {
    let what = match e.op {
        Some(op) => format!("{} refused", op.name()),
        None => "watch event dropped".to_string(),
    };
    let mut line = format!(
        "domain {}: {what}: {} quota reached ({} {} with this request, limit {}); raise it with {}",
        e.domid.0,
        e.hit.quota.name(),
        e.hit.value,
        e.hit.quota.unit(),
        e.hit.limit,
        option_for(e.hit.quota)
    );
    if e.own_limit {
        line += &format!(" (domain {}'s own limit, set by SET_QUOTA: set it again there)", e.domid.0);
    }
    line
}

/// When a (domain, quota) was last logged, and the refusals since.
#[derive(Debug, Clone, Copy)]
struct Entry {
    logged: Instant,
    suppressed: u64,
}

/// Rate limiting of quota lines: see the module documentation.
#[derive(Debug)]
pub struct QuotaLog {
    interval: Duration,
    entries: BTreeMap<(DomId, Quota), Entry>,
}

impl QuotaLog {
    pub fn new(interval: Duration) -> QuotaLog {
        QuotaLog { interval, entries: BTreeMap::new() }
    }

    /// The lines to log now for refusals reported at `now`: the first of a
    /// (domain, quota) within an interval; the rest are counted.
    pub fn report(&mut self, events: &[QuotaEvent], now: Instant) -> Vec<String> {
        let mut lines = Vec::new();
        for e in events {
            let key = (e.domid, e.hit.quota);
            match self.entries.get_mut(&key) {
                Some(entry) if now.saturating_duration_since(entry.logged) < self.interval => {
                    entry.suppressed += u64::from(e.count);
                }
                _ => {
                    // Refusals the same turn reported together count as one line.
                    let suppressed = u64::from(e.count.saturating_sub(1));
                    let mut line = describe(e);
                    if suppressed > 0 {
                        line += &format!("; {suppressed} more such refusal(s) now");
                    }
                    lines.push(line);
                    self.entries.insert(key, Entry { logged: now, suppressed: 0 });
                }
            }
        }
        lines
    }

    /// At the end of an interval: a line for each (domain, quota) with
    /// refusals not yet logged, and forgets the quiet ones. Cheap when
    /// nothing was refused lately (the daemon calls it every turn).
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut lines = Vec::new();
        if self.entries.is_empty() {
            return lines;
        }
        let interval = self.interval;
        self.entries.retain(|(domid, quota), entry| {
            if now.saturating_duration_since(entry.logged) < interval {
                return true;
            }
            if entry.suppressed == 0 {
                return false;
            }
            lines.push(format!(
                "domain {}: {} more refusal(s) by the {} quota in the last {} s; raise it with {}",
                domid.0,
                entry.suppressed,
                quota.name(),
                now.saturating_duration_since(entry.logged).as_secs(),
                option_for(*quota)
            ));
            // Still limited: the next line comes an interval from now.
            *entry = Entry { logged: now, suppressed: 0 };
            true
        });
        lines
    }

    /// Whether anything waits for [`QuotaLog::expire`].
    pub fn is_idle(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rxenstored_core::quota::QuotaHit;
    use wire::Op;

    fn watch_refused(domid: u16, count: u32) -> QuotaEvent {
        QuotaEvent {
            domid: DomId(domid),
            op: Some(Op::Watch),
            hit: QuotaHit { quota: Quota::Watches, value: 128, limit: 128 },
            own_limit: false,
            count,
        }
    }

    #[test]
    fn a_line_names_domain_request_quota_use_limit_and_option() {
        let line = describe(&watch_refused(5, 1));
        assert_eq!(
            line,
            "domain 5: WATCH refused: watches quota reached (128 watches with this request, limit 128); \
             raise it with --watch-nb N (-W), or --quota watches=N"
        );
        let own = QuotaEvent { own_limit: true, op: None, ..watch_refused(5, 1) };
        let line = describe(&own);
        assert!(line.starts_with("domain 5: watch event dropped: watches quota"), "{line}");
        assert!(line.ends_with("(domain 5's own limit, set by SET_QUOTA: set it again there)"), "{line}");
    }

    #[test]
    fn one_line_per_domain_and_quota_per_interval_then_the_count() {
        let t0 = Instant::now();
        let mut log = QuotaLog::new(Duration::from_secs(60));
        assert_eq!(log.report(&[watch_refused(5, 1)], t0).len(), 1);
        // Within the interval: counted, not logged; another domain is logged.
        assert!(log.report(&[watch_refused(5, 3)], t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(log.report(&[watch_refused(6, 1)], t0 + Duration::from_secs(2)).len(), 1);
        // Another quota of the same domain is a line of its own.
        let tx = QuotaEvent {
            op: Some(Op::TransactionStart),
            hit: QuotaHit { quota: Quota::Transactions, value: 10, limit: 10 },
            ..watch_refused(5, 1)
        };
        assert_eq!(log.report(&[tx], t0 + Duration::from_secs(3)).len(), 1);
        assert!(log.expire(t0 + Duration::from_secs(59)).is_empty());
        // The interval is over: domain 5's three watch refusals are told;
        // the quiet entries go.
        let lines = log.expire(t0 + Duration::from_secs(61));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("domain 5: 3 more refusal(s) by the watches quota in the last 61 s"), "{lines:?}");
        assert!(log.expire(t0 + Duration::from_secs(62)).is_empty());
        // Still limited after the count was told; free again an interval later.
        assert!(log.report(&[watch_refused(5, 1)], t0 + Duration::from_secs(100)).is_empty());
        assert!(log.expire(t0 + Duration::from_secs(110)).is_empty());
        assert_eq!(log.expire(t0 + Duration::from_secs(122)).len(), 1);
        assert!(log.expire(t0 + Duration::from_secs(200)).is_empty());
        assert!(log.is_idle());
        assert_eq!(log.report(&[watch_refused(5, 1)], t0 + Duration::from_secs(201)).len(), 1);
    }

    #[test]
    fn refusals_of_one_turn_make_one_line() {
        let mut log = QuotaLog::new(Duration::from_secs(60));
        let lines = log.report(&[watch_refused(5, 4)], Instant::now());
        assert_eq!(lines.len(), 1);
        assert!(lines[0].ends_with("; 3 more such refusal(s) now"), "{lines:?}");
    }
}
