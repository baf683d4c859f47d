//! The statistics of drop and anomaly detection, pure and shared by both
//! (ADR 0004, `docs/adr/0004-drops-and-anomalies.md`): a noise model for a
//! merged figure, the significance of a change between two windows, and a
//! robust band from seasonal samples.
//!
//! The noise model: a counting figure (`count`, `uniq`) of level `v` varies
//! like a Poisson count plus a relative part, variance `v + (OVERDISPERSION·v)²`
//! (the negative-binomial form): small counts are dominated by the Poisson
//! part (3 → 4 events is noise), large ones by the relative part (a 0.5 %
//! move of a million is noise too). A value figure (`sum`, `min`, `max`) is
//! no count of anything; it gets a relative part only, wider:
//! `(VALUE_DISPERSION·v)²`.

use dc_config::registry::MetricKind;

/// Relative noise of a counting figure beyond Poisson: traffic moves a few
/// per cent between comparable windows for no reason worth an alert.
pub const OVERDISPERSION: f64 = 0.05;
/// Relative noise of a value figure (sum, min, max of a field): no counting
/// model applies, and such figures (latency maxima) move far more.
pub const VALUE_DISPERSION: f64 = 0.25;
/// A counting series whose larger figure is below this is not ranked or
/// flagged: at a handful of events any change is noise.
pub const MIN_VOLUME: f64 = 10.0;
/// Scales a median absolute deviation to a standard deviation (normal data).
pub const MAD_TO_SD: f64 = 1.4826;

/// True for the kinds that count something (Poisson-like noise).
pub fn is_counting(kind: MetricKind) -> bool {
    matches!(kind, MetricKind::Count | MetricKind::Uniq)
}

/// The variance of a figure of level `v` of `kind` under the noise model.
pub fn noise_variance(v: f64, kind: MetricKind) -> f64 {
    if is_counting(kind) {
        v.max(0.0) + (OVERDISPERSION * v).powi(2)
    } else {
        (VALUE_DISPERSION * v).powi(2)
    }
}

/// True when a figure pair is large enough to rank or flag: always for
/// value kinds, from [`MIN_VOLUME`] for counting kinds.
pub fn has_volume(a: f64, b: f64, kind: MetricKind) -> bool {
    !is_counting(kind) || a.max(b) >= MIN_VOLUME
}

/// The significance of a change from `reference` to `current`: the
/// difference over its standard deviation when both figures are draws of
/// the same level (so the variances add). Negative for a drop; 0 when both
/// are 0.
pub fn change_score(current: f64, reference: f64, kind: MetricKind) -> f64 {
    let var = noise_variance(current, kind) + noise_variance(reference, kind);
    if var > 0.0 {
        (current - reference) / var.sqrt()
    } else {
        0.0
    }
}

/// The median of `xs` (reordered); `None` when empty.
pub fn median(xs: &mut [f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// A prediction and its band.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Band {
    /// The expected figure.
    pub prediction: f64,
    /// Lowest figure that is not an anomaly.
    pub low: f64,
    /// Highest figure that is not an anomaly.
    pub high: f64,
}

impl Band {
    /// True when `v` lies outside the band.
    pub fn outside(&self, v: f64) -> bool {
        v < self.low || v > self.high
    }
}

/// The band from `samples` (the same slot in earlier seasons): median as
/// the prediction; the spread is the larger of the scaled median absolute
/// deviation and the noise model at the median (so a history of identical
/// figures does not flag the next Poisson wobble), times `width_sd`.
/// Counting figures cannot go below 0. `None` without samples.
pub fn band(samples: &[f64], kind: MetricKind, width_sd: f64) -> Option<Band> {
    let mut xs = samples.to_vec();
    let prediction = median(&mut xs)?;
    let mut dev: Vec<f64> = xs.iter().map(|x| (x - prediction).abs()).collect();
    let mad = median(&mut dev)?;
    let sd = (MAD_TO_SD * mad).max(noise_variance(prediction, kind).sqrt());
    let mut low = prediction - width_sd * sd;
    if is_counting(kind) {
        low = low.max(0.0);
    }
    Some(Band {
        prediction,
        low,
        high: prediction + width_sd * sd,
    })
}

/// Weight of a point: relative deviation × volume. For counting kinds the
/// volume is the prediction (at least 1), so the weight is the number of
/// events missing or extra; a value figure has no volume of its own (1):
/// its weight is its relative deviation.
pub fn weight(actual: f64, prediction: f64, kind: MetricKind) -> f64 {
    let scale = prediction.abs().max(1.0);
    let relative = (actual - prediction).abs() / scale;
    if is_counting(kind) {
        relative * scale
    } else {
        relative
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_changes_are_noise_large_ones_are_not() {
        let c = MetricKind::Count;
        // A 40 % jump on a handful of events is noise.
        assert!(change_score(7.0, 5.0, c).abs() < 1.0);
        // A halving of 10 000 events is not.
        assert!(change_score(5_000.0, 10_000.0, c) < -8.0);
        // A half-per-cent move of a million is noise again (overdispersion).
        assert!(change_score(995_000.0, 1_000_000.0, c).abs() < 0.2);
        assert_eq!(change_score(0.0, 0.0, c), 0.0);
        // Value figures: a doubled maximum of 3 ms scores below a count halving.
        assert!(change_score(6.0, 3.0, MetricKind::Max) < change_score(10_000.0, 5_000.0, c));
        assert!(!has_volume(9.0, 3.0, c));
        assert!(has_volume(10.0, 0.0, c));
        assert!(has_volume(1.0, 0.0, MetricKind::Sum));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn bands_are_robust_and_floored_by_noise() {
        let c = MetricKind::Count;
        // One outlier season does not move the prediction.
        let b = band(&[100.0, 104.0, 96.0, 1_000.0], c, 3.0).unwrap();
        assert_eq!(b.prediction, 102.0);
        assert!(b.outside(50.0) && !b.outside(110.0));
        // Identical history: the Poisson floor keeps 103 inside, 160 out.
        let b = band(&[100.0; 4], c, 3.0).unwrap();
        assert!(!b.outside(103.0) && b.outside(160.0));
        // Counting bands stop at 0.
        assert_eq!(band(&[1.0, 0.0, 2.0], c, 3.0).unwrap().low, 0.0);
        assert!(band(&[], c, 3.0).is_none());
    }

    #[test]
    fn weights() {
        assert_eq!(weight(40.0, 100.0, MetricKind::Count), 60.0);
        assert_eq!(weight(3.0, 0.0, MetricKind::Count), 3.0);
        assert_eq!(weight(200.0, 100.0, MetricKind::Max), 1.0);
    }

    proptest! {
        #[test]
        fn scores_are_antisymmetric_and_grow_with_volume(
            r in 1.0f64..1e6, ratio in 0.1f64..10.0, k in 2.0f64..100.0,
        ) {
            let c = r * ratio;
            let s = change_score(c, r, MetricKind::Count);
            prop_assert!((s + change_score(r, c, MetricKind::Count)).abs() < 1e-9);
            prop_assert_eq!(s > 0.0, c > r);
            // The same ratio on more volume is at least as significant.
            let big = change_score(c * k, r * k, MetricKind::Count);
            prop_assert!(big.abs() + 1e-9 >= s.abs());
        }

        #[test]
        fn bands_hold_their_prediction(xs in proptest::collection::vec(0.0f64..1e5, 1..12)) {
            let b = band(&xs, MetricKind::Count, 3.0).unwrap();
            prop_assert!(b.low <= b.prediction && b.prediction <= b.high);
            prop_assert!(!b.outside(b.prediction));
            let lo = xs.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            prop_assert!(lo <= b.prediction && b.prediction <= hi);
        }
    }
}
