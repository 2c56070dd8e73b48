//! MX routing (RFC 5321 section 5.1, RFC 7505): which hosts to try, in which order.

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// The hosts to try for a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteDecision {
    /// Try these hosts in order (each resolved to addresses in turn).
    Hosts(Vec<String>),
    /// The domain publishes a null MX: it accepts no mail (bounce).
    NullMx,
}

/// Orders MX records by preference, shuffling hosts of equal preference with the engine's
/// seeded RNG (spreading load as RFC 5321 asks, reproducibly). A lone `.`/empty exchange
/// is a null MX; null entries mixed with real hosts are ignored. Duplicates are removed.
pub fn order_mx(mut records: Vec<(u16, String)>, rng: &mut ChaCha8Rng) -> RouteDecision {
    for r in records.iter_mut() {
        r.1 = r.1.trim_end_matches('.').to_ascii_lowercase();
    }
    let has_null = records.iter().any(|(_, h)| h.is_empty());
    records.retain(|(_, h)| !h.is_empty());
    if records.is_empty() {
        return if has_null {
            RouteDecision::NullMx
        } else {
            RouteDecision::Hosts(Vec::new())
        };
    }
    // Sort by (preference, host) first so that the shuffle's input order does not
    // depend on the order the DNS answer happened to list them in.
    records.sort();
    records.dedup_by(|a, b| a.1 == b.1);
    let mut out = Vec::with_capacity(records.len());
    let mut i = 0;
    while i < records.len() {
        let pref = records[i].0;
        let mut group: Vec<String> = records[i..]
            .iter()
            .take_while(|(p, _)| *p == pref)
            .map(|(_, h)| h.clone())
            .collect();
        i += group.len();
        // Fisher-Yates with the seeded RNG.
        for k in (1..group.len()).rev() {
            let j = rng.random_range(0..=k);
            group.swap(k, j);
        }
        for h in group {
            if !out.contains(&h) {
                out.push(h);
            }
        }
    }
    RouteDecision::Hosts(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn orders_by_preference_and_detects_null_mx() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let d = order_mx(
            vec![
                (20, "b.example.".into()),
                (10, "A.example".into()),
                (30, "c.example".into()),
            ],
            &mut rng,
        );
        assert_eq!(
            d,
            RouteDecision::Hosts(vec![
                "a.example".into(),
                "b.example".into(),
                "c.example".into()
            ])
        );
        assert_eq!(
            order_mx(vec![(0, ".".into())], &mut rng),
            RouteDecision::NullMx
        );
        assert_eq!(
            order_mx(vec![(0, "".into())], &mut rng),
            RouteDecision::NullMx
        );
        assert_eq!(order_mx(vec![], &mut rng), RouteDecision::Hosts(vec![]));
    }

    #[test]
    fn equal_preference_is_shuffled_reproducibly() {
        let recs: Vec<(u16, String)> = (0..8).map(|i| (10, format!("mx{i}.example"))).collect();
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..20 {
            let a = order_mx(recs.clone(), &mut ChaCha8Rng::seed_from_u64(seed));
            let b = order_mx(recs.clone(), &mut ChaCha8Rng::seed_from_u64(seed));
            assert_eq!(a, b);
            if let RouteDecision::Hosts(h) = a {
                assert_eq!(h.len(), 8);
                seen.insert(h);
            }
        }
        assert!(
            seen.len() > 1,
            "equal-preference hosts should not always come in one order"
        );
    }
}
