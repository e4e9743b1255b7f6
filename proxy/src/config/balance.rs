//! `pools.NAME.balance_factor`: the typed factor of "consistent hashing
//! with bounded loads" and its validation. What it does to a connection
//! is `routing::bounded`.

use std::fmt;

use super::{defaults, Validator};

/// A balance factor in thousandths (1250 is 1.25). An integer, so the
/// bound is computed exactly, with no floating point after the file is
/// read (ARCHITECTURE.md, "Hashing is a contract").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalanceFactor {
    permille: u32,
}

impl BalanceFactor {
    /// 1.0: every backend at most the mean, rounded up.
    pub const MIN_PERMILLE: u32 = 1000;
    /// 100: beyond this the bound never binds in practice.
    pub const MAX_PERMILLE: u32 = 100_000;

    /// The factor `permille / 1000`, if it is in range.
    pub fn from_permille(permille: u32) -> Option<BalanceFactor> {
        (Self::MIN_PERMILLE..=Self::MAX_PERMILLE)
            .contains(&permille)
            .then_some(BalanceFactor { permille })
    }

    pub fn permille(self) -> u32 {
        self.permille
    }
}

/// `1.25`, `2`, `1.005`: as the config file would write it.
impl fmt::Display for BalanceFactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (int, frac) = (self.permille / 1000, self.permille % 1000);
        if frac == 0 {
            return write!(f, "{int}");
        }
        let digits = format!("{frac:03}");
        write!(f, "{int}.{}", digits.trim_end_matches('0'))
    }
}

impl Validator<'_> {
    /// Validates `pools.NAME.balance_factor` at `path`: absent is off.
    pub(super) fn balance_factor(
        &mut self,
        path: &str,
        value: Option<f64>,
    ) -> Option<BalanceFactor> {
        let Some(value) = value else {
            return defaults::BALANCE_FACTOR;
        };
        // Exact for every value the file can write with three decimals;
        // the one float operation, done once at load.
        let scaled = value * 1000.0;
        let permille = scaled.round();
        let in_range = value.is_finite()
            && (f64::from(BalanceFactor::MIN_PERMILLE)..=f64::from(BalanceFactor::MAX_PERMILLE))
                .contains(&permille);
        if !in_range {
            self.problem(
                path,
                format!(
                    "{value} is not a factor from 1 to 100 (e.g. 1.25: no backend takes a new connection above 1.25 times the pool's mean); leave it out for pure hashing (the default: {})",
                    defaults::BALANCE_FACTOR_TEXT
                ),
            );
            return None;
        }
        if (scaled - permille).abs() > 1e-6 {
            self.problem(path, format!("{value} has more than three decimals"));
            return None;
        }
        // In range, checked above: the cast cannot truncate.
        BalanceFactor::from_permille(permille as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_as_written() {
        let f = |p| BalanceFactor::from_permille(p).unwrap().to_string();
        assert_eq!(f(1250), "1.25");
        assert_eq!(f(2000), "2");
        assert_eq!(f(1005), "1.005");
        assert_eq!(f(100_000), "100");
        assert_eq!(BalanceFactor::from_permille(999), None);
        assert_eq!(BalanceFactor::from_permille(100_001), None);
    }
}
