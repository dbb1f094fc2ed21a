//! Weighted first picks ([`Failover::weights`](super::Failover::weights)): which upstream a
//! request tries first, by smooth weighted round-robin (nginx's), so that over any run of
//! requests each upstream is tried first in proportion to its weight, spread evenly rather
//! than in bursts, with no randomness (the same sequence every time, which tests can check).
//!
//! Only the first attempt is weighted: after a failure the others follow in the list's
//! order of preference. An upstream of weight 0 is never tried first, only as a fallback.

use std::sync::Mutex;

/// The weights of one layer's upstreams and the round-robin's running state (shared by the
/// layer's clones).
#[derive(Debug)]
pub(crate) struct Weights {
    weights: Box<[i64]>,
    current: Mutex<Box<[i64]>>,
}

impl Weights {
    /// One weight per upstream, in list order: missing ones weigh 0, extra ones are ignored.
    pub(crate) fn new(weights: impl IntoIterator<Item = u32>, upstreams: usize) -> Self {
        let mut weights: Vec<i64> = weights.into_iter().take(upstreams).map(i64::from).collect();
        weights.resize(upstreams, 0);
        Self {
            current: Mutex::new(vec![0; upstreams].into_boxed_slice()),
            weights: weights.into_boxed_slice(),
        }
    }

    /// The upstream to try first among `open` (indexes, in list order), or `None` when every
    /// one of them weighs 0.
    pub(crate) fn pick(&self, open: &[usize]) -> Option<usize> {
        // A poisoned lock only means a panic elsewhere mid-update: the numbers are still
        // numbers, keep using them.
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for &i in open {
            let (Some(&weight), Some(_)) = (self.weights.get(i), current.get(i)) else {
                continue;
            };
            if weight == 0 {
                continue;
            }
            total = total.saturating_add(weight);
            current[i] = current[i].saturating_add(weight);
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        current[best] = current[best].saturating_sub(total);
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firsts(weights: &Weights, open: &[usize], n: usize) -> Vec<usize> {
        (0..n).map(|_| weights.pick(open).unwrap()).collect()
    }

    #[test]
    fn first_picks_follow_the_weights_evenly_spread() {
        let weights = Weights::new([3, 1], 2);
        assert_eq!(firsts(&weights, &[0, 1], 4), [0, 0, 1, 0]);
        // nginx's example: {5, 1, 1} gives a a b a c a a.
        let weights = Weights::new([5, 1, 1], 3);
        assert_eq!(firsts(&weights, &[0, 1, 2], 7), [0, 0, 1, 0, 2, 0, 0]);
        let counts = firsts(&weights, &[0, 1, 2], 700)
            .into_iter()
            .fold([0; 3], |mut c, i| {
                c[i] += 1;
                c
            });
        assert_eq!(counts, [500, 100, 100]);
    }

    #[test]
    fn zero_weights_are_fallbacks_only_and_missing_weights_are_zero() {
        let weights = Weights::new([0, 2], 3);
        assert_eq!(firsts(&weights, &[0, 1, 2], 5), [1; 5]);
        assert_eq!(weights.pick(&[0, 2]), None, "only zero weights open");
        let weights = Weights::new([1, 1, 1, 1], 2);
        assert_eq!(
            firsts(&weights, &[0, 1], 4),
            [0, 1, 0, 1],
            "extra weights ignored"
        );
    }

    #[test]
    fn an_upstream_left_out_does_not_take_its_share() {
        let weights = Weights::new([1, 1, 1], 3);
        // Upstream 1 skipped (its breaker open): the others share the first picks.
        assert_eq!(firsts(&weights, &[0, 2], 4), [0, 2, 0, 2]);
    }
}
