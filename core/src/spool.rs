//! Orphan spool clean-up: which spool files may be deleted. Fails closed.

use core::time::Duration;
use std::collections::BTreeSet;

use crate::ids::MessageId;
use crate::io::SpoolFile;
use crate::time::Time;

/// Why nothing was deleted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CleanupRefusal {
    #[error("spool listing failed: {0}")]
    Listing(String),
    #[error("live set could not be read in full: {0}")]
    LiveSet(String),
}

/// Files older than `max_age` that no live message references. `in_memory` are messages
/// the engine holds (including submissions whose store write is not yet committed: their
/// spool file exists before their row does). If either the listing or the live set could
/// not be read in full, nothing is deleted.
pub fn orphans(
    now: Time,
    max_age: Duration,
    files: Result<Vec<SpoolFile>, String>,
    live: Result<Vec<MessageId>, String>,
    in_memory: &BTreeSet<MessageId>,
) -> Result<Vec<MessageId>, CleanupRefusal> {
    let files = files.map_err(CleanupRefusal::Listing)?;
    let live: BTreeSet<MessageId> = live.map_err(CleanupRefusal::LiveSet)?.into_iter().collect();
    let cutoff = now.minus(max_age);
    // A message with any recent file (a rewrite in progress) is kept whole.
    let young: BTreeSet<MessageId> = files
        .iter()
        .filter(|f| f.modified >= cutoff)
        .map(|f| f.message)
        .collect();
    let mut out: Vec<MessageId> = files
        .into_iter()
        .map(|f| f.message)
        .filter(|m| !young.contains(m) && !live.contains(m) && !in_memory.contains(m))
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn deletes_only_old_unreferenced_files() {
        let now = Time::from_secs(100 * 86_400);
        let f = |id: u128, age_days: u64| SpoolFile {
            message: MessageId(id),
            modified: now.minus(DAY * age_days as u32),
        };
        let files = vec![f(1, 8), f(2, 8), f(3, 1), f(4, 30)];
        let live = vec![MessageId(2)];
        let mem: BTreeSet<_> = [MessageId(4)].into();
        assert_eq!(
            orphans(now, 7 * DAY, Ok(files.clone()), Ok(live), &mem),
            Ok(vec![MessageId(1)])
        );
        assert!(orphans(now, 7 * DAY, Ok(files.clone()), Err("busy".into()), &mem).is_err());
        assert!(orphans(now, 7 * DAY, Err("eio".into()), Ok(vec![]), &mem).is_err());
    }

    proptest! {
        #[test]
        fn never_deletes_live_or_young(
            files in proptest::collection::vec((0u128..50, 0u64..20), 0..40),
            live in proptest::collection::btree_set(0u128..50, 0..30),
        ) {
            let now = Time::from_secs(1_000 * 86_400);
            let files: Vec<SpoolFile> = files.iter().map(|(id, d)| SpoolFile {
                message: MessageId(*id), modified: now.minus(DAY * *d as u32) }).collect();
            let del = orphans(now, 7 * DAY, Ok(files.clone()),
                Ok(live.iter().map(|i| MessageId(*i)).collect()), &BTreeSet::new());
            let del = del.unwrap_or_default();
            for id in del {
                prop_assert!(!live.contains(&id.0));
                prop_assert!(files.iter().filter(|f| f.message == id).all(|f| f.modified < now.minus(7 * DAY)));
            }
        }
    }
}
