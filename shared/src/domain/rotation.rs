//! Taking turns: the orders of `round_robin` and `weighted` routing, from a
//! counter every instance shares (`ports::Rotation`), so that tasks routed
//! by many instances at once still go to the agents in turn.
//!
//! Both work on the candidates in a stable order (by id) and a turn (the
//! counter's value for this task), and give the order in which to take
//! them: the first `fanout` are called, the rest are the fallbacks.
//!
//! - `round_robin`: from position `turn mod n`, every candidate once, in
//!   turn. Over `n` consecutive turns each candidate is first once.
//! - `weighted`: the smooth weighted round-robin cycle of the candidates'
//!   weights (nginx's: each step every candidate gains its weight, the
//!   highest, first by id on a tie, is picked and loses the sum), walked
//!   from position `turn mod Σweights`; each candidate in the order of its
//!   first appearance. Over `Σweights` consecutive turns each candidate is
//!   first exactly its weight times, interleaved rather than in runs. An
//!   agent of weight 0 is never in the cycle: it comes after every agent
//!   with a weight (in turn among those of weight 0), so it is called only
//!   when fewer than `fanout` agents with a weight can serve the task, and
//!   is otherwise a fallback.
//!
//! Weights are divided by their greatest common divisor; a cycle still
//! longer than [`MAX_CYCLE`] is scaled down to about that length (each
//! weight kept at least 1), which keeps the proportions to within one part
//! in [`MAX_CYCLE`].

/// The longest weighted cycle walked (the cost of one task's order is the
/// cycle's length times the number of candidates).
pub const MAX_CYCLE: u64 = 10_000;

/// The order of `n` candidates at `turn`: `turn mod n` first, then the
/// others in turn.
pub fn round_robin(n: usize, turn: u64) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let start = (turn % n as u64) as usize;
    (0..n).map(|i| (start + i) % n).collect()
}

/// The order of candidates of these `weights` at `turn` (see the module's
/// documentation).
pub fn weighted(weights: &[u32], turn: u64) -> Vec<usize> {
    let cycle = cycle(weights);
    let mut order: Vec<usize> = Vec::with_capacity(weights.len());
    if !cycle.is_empty() {
        let start = (turn % cycle.len() as u64) as usize;
        for i in 0..cycle.len() {
            let pick = cycle[(start + i) % cycle.len()];
            if !order.contains(&pick) {
                order.push(pick);
            }
        }
    }
    let unweighted: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] == 0).collect();
    order.extend(
        round_robin(unweighted.len(), turn)
            .into_iter()
            .map(|i| unweighted[i]),
    );
    order
}

/// One smooth weighted round-robin cycle over `weights`: candidate indices,
/// each appearing its (reduced) weight times; empty when every weight is 0.
pub fn cycle(weights: &[u32]) -> Vec<usize> {
    let weights = reduced(weights);
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(usize::try_from(total).unwrap_or_default());
    for _ in 0..total {
        let mut best: Option<usize> = None;
        for (i, w) in weights.iter().enumerate() {
            if *w == 0 {
                continue;
            }
            current[i] += w;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            current[b] -= total;
            cycle.push(b);
        }
    }
    cycle
}

/// The weights divided by their greatest common divisor, and scaled to a
/// sum of about `MAX_CYCLE` if still longer (a weight above 0 stays at
/// least 1).
fn reduced(weights: &[u32]) -> Vec<i64> {
    let divisor = weights.iter().map(|w| u64::from(*w)).fold(0, gcd).max(1);
    let divided: Vec<u64> = weights.iter().map(|w| u64::from(*w) / divisor).collect();
    let total: u64 = divided.iter().sum();
    divided
        .into_iter()
        .map(|w| {
            let w = if total > MAX_CYCLE && w > 0 {
                (u128::from(w) * u128::from(MAX_CYCLE) / u128::from(total)).max(1) as u64
            } else {
                w
            };
            // At most MAX_CYCLE (scaled) or u32::MAX (divided): fits.
            i64::try_from(w).unwrap_or(i64::MAX)
        })
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_starts_at_the_turn_and_takes_every_candidate_once() {
        assert_eq!(round_robin(4, 0), [0, 1, 2, 3]);
        assert_eq!(round_robin(4, 6), [2, 3, 0, 1]);
        assert_eq!(round_robin(1, 99), [0]);
        assert!(round_robin(0, 5).is_empty());
        // Over n turns, each candidate first once.
        let firsts: Vec<usize> = (0..4).map(|t| round_robin(4, t)[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 3]);
    }

    #[test]
    fn a_weighted_cycle_picks_each_its_weight_times_interleaved() {
        // nginx's example: 5, 1, 1 gives a a b a c a a.
        assert_eq!(cycle(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        // Reduced by the common divisor: 20, 10 is 2, 1.
        assert_eq!(cycle(&[20, 10]), [0, 1, 0]);
        for weights in [vec![3u32, 2, 1], vec![1, 1, 1, 1], vec![7, 0, 2], vec![1]] {
            let cycle = cycle(&weights);
            for (i, w) in weights.iter().enumerate() {
                let n = cycle.iter().filter(|&&c| c == i).count();
                assert_eq!(n as u32, *w, "{weights:?}: {cycle:?}");
            }
        }
        assert!(cycle(&[0, 0]).is_empty());
        // Huge weights are scaled to a bounded cycle, proportions kept.
        let huge = cycle(&[u32::MAX, u32::MAX / 3, 1]);
        assert!(huge.len() as u64 <= MAX_CYCLE + 3, "{}", huge.len());
        let first = huge.iter().filter(|&&c| c == 0).count();
        let second = huge.iter().filter(|&&c| c == 1).count();
        assert!(first.abs_diff(3 * second) <= 3, "{first} {second}");
        assert_eq!(huge.iter().filter(|&&c| c == 2).count(), 1);
    }

    #[test]
    fn weighted_turns_are_exact_over_a_cycle_and_weight_zero_comes_last() {
        let weights = [3, 0, 1, 2];
        // Six turns (the weights' sum): each first its weight times.
        let mut firsts = [0u32; 4];
        for turn in 100..106 {
            let order = weighted(&weights, turn);
            // Every candidate, once; the one of weight 0 last.
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2, 3], "{order:?}");
            assert_eq!(order[3], 1, "{order:?}");
            firsts[order[0]] += 1;
        }
        assert_eq!(firsts, weights);
        // Every weight 0: in turn among them.
        assert_eq!(weighted(&[0, 0, 0], 4), [1, 2, 0]);
    }
}
