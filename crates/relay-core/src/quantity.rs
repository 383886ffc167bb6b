//! The one numeric type of the limiter's ledgers: a non-negative amount of nano-USD, tokens or
//! requests. It is 128 bits wide, so sums of any number of `u64` estimates that can be in
//! flight at once (at most 2³² per key) are exact, and every operation saturates (at zero below,
//! at the top above), so no input can make a sum wrap and turn a limit's check around.

use std::ops::{AddAssign, SubAssign};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(u128);

impl Quantity {
    pub const ZERO: Self = Self(0);

    pub fn from_u64(value: u64) -> Self {
        Self(u128::from(value))
    }

    /// A signed amount (as costs are stored); a negative one counts as zero.
    pub fn from_i64(value: i64) -> Self {
        Self(u128::try_from(value).unwrap_or(0))
    }

    /// The amount as `i64`, saturating at `i64::MAX`.
    pub fn to_i64(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }

    /// The amount as `u64`, saturating at `u64::MAX`.
    pub fn to_u64(self) -> u64 {
        u64::try_from(self.0).unwrap_or(u64::MAX)
    }

    #[must_use]
    pub fn plus(self, other: Self) -> Self {
        Self(self.0.saturating_add(other.0))
    }

    #[must_use]
    pub fn minus(self, other: Self) -> Self {
        Self(self.0.saturating_sub(other.0))
    }

    /// Whether `more` on top of `self` would pass `limit` (or `self` already reached it).
    /// Nothing more (a free request) never does.
    pub fn would_exceed(self, more: Self, limit: Self) -> bool {
        more > Self::ZERO && (self >= limit || self.plus(more) > limit)
    }
}

impl AddAssign for Quantity {
    fn add_assign(&mut self, other: Self) {
        *self = self.plus(other);
    }
}

impl SubAssign for Quantity {
    fn sub_assign(&mut self, other: Self) {
        *self = self.minus(other);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_at_the_extremes_neither_wraps_nor_goes_negative() {
        let max = Quantity::from_u64(u64::MAX);
        let sum = max.plus(max);
        assert_eq!(sum.to_u64(), u64::MAX, "reads saturate");
        assert_eq!(sum.minus(max), max, "but the sum itself is exact");
        assert_eq!(Quantity::from_i64(i64::MIN), Quantity::ZERO);
        assert_eq!(Quantity::from_i64(i64::MAX).to_i64(), i64::MAX);
        assert_eq!(max.to_i64(), i64::MAX);
        assert_eq!(Quantity::ZERO.minus(max), Quantity::ZERO);
        let mut top = Quantity(u128::MAX);
        top += max;
        assert_eq!(top, Quantity(u128::MAX));
        top -= Quantity(u128::MAX);
        assert_eq!(top, Quantity::ZERO);
    }

    #[test]
    fn a_limit_is_exceeded_by_any_amount_that_does_not_fit() {
        let limit = Quantity::from_i64(10);
        assert!(!Quantity::from_u64(4).would_exceed(Quantity::from_u64(6), limit));
        assert!(Quantity::from_u64(4).would_exceed(Quantity::from_u64(7), limit));
        assert!(Quantity::from_u64(10).would_exceed(Quantity::from_u64(1), limit));
        assert!(
            !Quantity::from_u64(99).would_exceed(Quantity::ZERO, limit),
            "free"
        );
        assert!(Quantity::from_u64(1).would_exceed(Quantity::from_u64(u64::MAX), limit));
        assert!(Quantity::from_u64(u64::MAX)
            .would_exceed(Quantity::from_u64(u64::MAX), Quantity::from_u64(u64::MAX)));
    }
}
