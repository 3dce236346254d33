//! The load-balancing rule: among the ready instances not yet tried by this request,
//! pick the one with the fewest outstanding requests; ties go round-robin (the scan
//! starts at a rotating offset and keeps the first minimum it meets). Kept apart from
//! the router so the rule is a pure function that is easy to test.

use std::sync::Arc;

use crate::proxy::backend::{Backend, BackendId};

/// Index into `ready` of the backend to use, scanning from `start % len`, skipping
/// `exclude`. `load(i)` gives the outstanding requests of `ready[i]`.
pub(crate) fn pick_index(
    ready: &[Arc<Backend>],
    start: usize,
    exclude: &[BackendId],
    load: impl Fn(&Backend) -> usize,
) -> Option<usize> {
    let n = ready.len();
    let mut best: Option<(usize, usize)> = None;
    for k in 0..n {
        let i = (start.wrapping_add(k)) % n;
        let b = &ready[i];
        if exclude.contains(&b.id) {
            continue;
        }
        let l = load(b);
        if best.is_none_or(|(_, bl)| l < bl) {
            best = Some((i, l));
            if l == 0 {
                break;
            }
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::pool::Pool;
    use std::net::SocketAddr;
    use std::time::Duration;

    fn backends(n: u64) -> Vec<Arc<Backend>> {
        (0..n)
            .map(|i| {
                Arc::new(Backend::new(
                    BackendId(i),
                    SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16)),
                    Pool::new(1, Duration::from_secs(1)),
                ))
            })
            .collect()
    }

    #[test]
    fn empty_set_picks_nothing() {
        assert_eq!(pick_index(&[], 0, &[], |_| 0), None);
    }

    #[test]
    fn least_outstanding_wins() {
        let b = backends(3);
        let loads = [5, 1, 3];
        for start in 0..3 {
            let i = pick_index(&b, start, &[], |x| loads[x.id.0 as usize]);
            assert_eq!(i, Some(1));
        }
    }

    #[test]
    fn ties_rotate_with_the_start_offset() {
        let b = backends(3);
        let picks: Vec<_> = (0..6)
            .map(|s| pick_index(&b, s, &[], |_| 2).expect("some"))
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn excluded_backends_are_skipped() {
        let b = backends(2);
        assert_eq!(pick_index(&b, 0, &[BackendId(0)], |_| 0), Some(1));
        assert_eq!(
            pick_index(&b, 0, &[BackendId(0), BackendId(1)], |_| 0),
            None
        );
    }
}
